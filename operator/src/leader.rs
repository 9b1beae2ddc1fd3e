//! Leader election on a `coordination.k8s.io` Lease, so two operator
//! replicas never reconcile at once. The client-go scheme: the holder
//! renews well within `leaseDurationSeconds`; a candidate takes a Lease
//! that has not changed for a whole lease duration *as measured on its own
//! monotonic clock* since it first saw that version — never by comparing
//! the holder's `renewTime` with its own wall clock, so skewed node clocks
//! cannot make two leaders. Writes carry the `resourceVersion` they read,
//! so two candidates cannot both win. Every attempt has a timeout; a holder
//! that cannot renew before its deadline (counted from when its last
//! successful renewal was *sent*) gives up, and the process exits at once
//! rather than finish work a new leader may already be redoing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::apply::ApiError;

/// Timing of the election (client-go's defaults).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a Lease is valid after its last renewal.
    pub lease: Duration,
    /// How long the holder keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// How often candidates retry and the holder renews.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a candidate should do with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write it with us as holder (taking it over when `takeover`).
    Take { takeover: bool },
    /// Someone else holds it; try again later.
    Wait,
}

/// Decide from the Lease's spec (`None`: there is no Lease yet) and how
/// long this candidate has seen it unchanged.
pub(crate) fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    timing: &Timing,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take { takeover: false };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Take { takeover: false };
    }
    if holder.is_empty() {
        return Decision::Take { takeover: true };
    }
    let duration = spec.lease_duration_seconds.map_or(timing.lease, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    if unchanged_for > duration {
        Decision::Take { takeover: true }
    } else {
        Decision::Wait
    }
}

/// The spec to write when taking or renewing.
pub(crate) fn next_spec(
    old: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    takeover: bool,
    timing: &Timing,
) -> LeaseSpec {
    let old = old.cloned().unwrap_or_default();
    let fresh = takeover || old.holder_identity.as_deref() != Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(timing.lease.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if fresh {
            Some(MicroTime(now))
        } else {
            old.acquire_time.clone()
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: if fresh && old.holder_identity.is_some() {
            Some(old.lease_transitions.unwrap_or(0).saturating_add(1))
        } else {
            old.lease_transitions.or(Some(0))
        },
        ..old
    }
}

/// A candidate for one Lease.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    me: String,
    timing: Timing,
    /// The Lease version last seen and when it was first seen.
    observed: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, timing: Timing) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            me: me.into(),
            timing,
            observed: std::sync::Mutex::new(None),
        }
    }

    /// How long the Lease has been at `version`, by our own clock.
    fn unchanged_for(&self, version: Option<&str>) -> Duration {
        let version = version.unwrap_or_default().to_string();
        let Ok(mut seen) = self.observed.lock() else {
            return Duration::ZERO;
        };
        match seen.as_ref() {
            Some((v, at)) if *v == version => at.elapsed(),
            _ => {
                *seen = Some((version, std::time::Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// [`Self::try_once`], given up after `limit`.
    async fn attempt(&self, limit: Duration) -> Result<bool, String> {
        match tokio::time::timeout(limit, self.try_once()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// One attempt to take or renew the Lease: `Ok(true)` when we hold it.
    pub async fn try_once(&self) -> Result<bool, ApiError> {
        let what = || format!("Lease {}", self.name);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| ApiError::new("get", what(), e))?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let version = current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.as_deref());
        let unchanged = self.unchanged_for(version);
        let Decision::Take { takeover } = decide(spec, &self.me, unchanged, &self.timing) else {
            return Ok(false);
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..current
                    .as_ref()
                    .map(|l| l.metadata.clone())
                    .unwrap_or_default()
            },
            spec: Some(next_spec(spec, &self.me, now, takeover, &self.timing)),
        };
        let result = match current {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Someone else wrote first: not ours this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(ApiError::new("write", what(), e)),
        }
    }

    /// Wait until we hold the Lease.
    pub(crate) async fn acquire(&self) {
        loop {
            match self.attempt(self.timing.renew_deadline).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renew until someone else holds the Lease or no renewal succeeded
    /// within the deadline; returns then: leadership is lost. The deadline
    /// counts from when the last successful renewal was sent, and each
    /// attempt is cut off where the deadline would pass.
    pub(crate) async fn hold(&self) {
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            let sent = tokio::time::Instant::now();
            let left = self.timing.renew_deadline.saturating_sub(sent - renewed_at);
            if left.is_zero() {
                tracing::error!(lease = %self.name, "could not renew the leader lease in time");
                return;
            }
            match self.attempt(left).await {
                Ok(true) => renewed_at = sent,
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the leader lease");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
            }
        }
    }

    /// Give the Lease up on a clean shutdown, so a standby takes over at
    /// once instead of after the lease duration.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "cannot release the leader lease");
        }
    }
}

/// This process's leadership, for as long as it runs: with an election,
/// the Lease it holds and the task renewing it.
pub struct Leadership {
    held: Option<Held>,
}

struct Held {
    elector: Arc<Elector>,
    /// Renews the Lease; finishes when leadership is lost.
    renewing: JoinHandle<()>,
}

impl Leadership {
    /// Leadership without an election, for a single replica: never lost.
    pub fn unelected() -> Self {
        Self { held: None }
    }

    /// Wait until `elector` holds its Lease, then keep renewing it in the
    /// background; `None` when `stop` resolves first.
    pub async fn elect(elector: Elector, stop: impl Future<Output = ()>) -> Option<Self> {
        tracing::info!(lease = %elector.name, namespace = %elector.namespace, "waiting for the leader lease");
        tokio::select! {
            () = elector.acquire() => {}
            () = stop => return None,
        }
        tracing::info!(lease = %elector.name, "leading");
        let elector = Arc::new(elector);
        let renewing = tokio::spawn({
            let elector = Arc::clone(&elector);
            async move { elector.hold().await }
        });
        Some(Self {
            held: Some(Held { elector, renewing }),
        })
    }

    /// Resolves when the Lease is lost: another replica took it, or no
    /// renewal succeeded in time. Without an election, never.
    pub async fn lost(&mut self) {
        match &mut self.held {
            Some(held) => {
                let _ = (&mut held.renewing).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Stop renewing and give the Lease up (a clean shutdown), so a
    /// standby takes over at once.
    pub async fn release(self) {
        if let Some(held) = self.held {
            held.renewing.abort();
            held.elector.release().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            acquire_time: Some(MicroTime(t(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_holder_is_left_alone() {
        let timing = Timing::default();
        let secs = Duration::from_secs;
        assert_eq!(
            decide(Some(&held_by("a", 100)), "b", secs(10), &timing),
            Decision::Wait
        );
        // Unchanged for longer than its duration, by the candidate's clock
        // (whatever the renewTime says).
        assert_eq!(
            decide(Some(&held_by("a", 100)), "b", secs(16), &timing),
            Decision::Take { takeover: true }
        );
        assert_eq!(
            decide(Some(&held_by("a", 1_000_000)), "b", secs(16), &timing),
            Decision::Take { takeover: true },
            "a renewTime in the future (clock skew) does not keep a dead holder"
        );
        assert_eq!(
            decide(Some(&held_by("b", 100)), "b", secs(10), &timing),
            Decision::Take { takeover: false }
        );
        assert_eq!(
            decide(None, "b", secs(0), &timing),
            Decision::Take { takeover: false }
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("a", 100)
        };
        assert_eq!(
            decide(Some(&released), "b", Duration::ZERO, &timing),
            Decision::Take { takeover: true }
        );
    }

    #[test]
    fn renewing_keeps_the_acquire_time_and_taking_over_counts_a_transition() {
        let timing = Timing::default();
        let mine = held_by("b", 100);
        let renewed = next_spec(Some(&mine), "b", t(105), false, &timing);
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(t(105))));
        assert_eq!(renewed.lease_transitions, Some(3));
        let taken = next_spec(Some(&held_by("a", 100)), "b", t(120), true, &timing);
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(t(120))));
        assert_eq!(taken.lease_transitions, Some(4));
        let first = next_spec(None, "b", t(1), false, &timing);
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
    }

    #[tokio::test]
    async fn without_an_election_leadership_is_never_lost() {
        let mut leadership = Leadership::unelected();
        let lost = tokio::time::timeout(Duration::from_millis(50), leadership.lost()).await;
        assert!(lost.is_err(), "lost() resolved");
        leadership.release().await;
    }
}
