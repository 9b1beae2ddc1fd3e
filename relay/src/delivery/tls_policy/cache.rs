//! The MTA-STS policy cache (RFC 8461 §3.3, §5.1): policies kept for
//! their `max_age`, the TXT record looked at again at most every
//! [`RECHECK`], a new policy fetched when the record's id changes, and a
//! cached policy kept when DNS or the fetch fails (an attacker who blocks
//! them must not turn protection off). The clock is passed in.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sts::Policy;

/// How long a TXT answer (or its absence) is taken as current. Short
/// enough that a new policy id is noticed within minutes, long enough
/// that a busy destination costs one TXT lookup per interval, not one per
/// message.
pub(crate) const RECHECK: Duration = Duration::from_secs(300);

/// Domains remembered at most (policies and "has none" alike).
pub(crate) const CAPACITY: usize = 10_000;

/// Where policies come from: DNS and HTTPS in production, a fake in tests.
pub(crate) trait StsSource: Send + Sync {
    /// The id of the domain's `_mta-sts` TXT record; `Ok(None)` when it
    /// has no (usable) record.
    fn record_id(
        &self,
        domain: &str,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// The domain's policy file, fetched and parsed.
    fn fetch(&self, domain: &str) -> impl Future<Output = Result<Policy, String>> + Send;
}

/// A policy with what identifies it and when it was fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cached {
    id: String,
    policy: Policy,
    fetched: Instant,
}

impl Cached {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.fetched) >= Duration::from_secs(self.policy.max_age)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    policy: Option<Cached>,
    /// When the TXT record was last looked at.
    checked: Instant,
}

/// How the policy for one delivery was found, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// From the cache, without DNS.
    Cached,
    /// The TXT record is unchanged (or gone) and the cached policy is kept.
    Confirmed,
    /// No TXT record and nothing cached: the domain has no policy.
    NoRecord,
    /// Fetched now.
    Fetched,
    /// The TXT lookup or the fetch failed; `kept` when a cached policy
    /// stays in force.
    Failed { error: String, kept: bool },
}

impl Found {
    /// A bounded label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Found::Cached => "cached",
            Found::Confirmed => "confirmed",
            Found::NoRecord => "no_record",
            Found::Fetched => "fetched",
            Found::Failed { kept: true, .. } => "failed_kept_cached",
            Found::Failed { kept: false, .. } => "failed_no_policy",
        }
    }
}

#[derive(Default)]
pub(crate) struct StsCache {
    entries: Mutex<HashMap<String, Entry>>,
    /// One refresh per domain at a time: the workers of a busy
    /// destination that find the cache cold wait for the first one's
    /// lookup instead of each fetching the policy.
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl StsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy in force for `domain` (lower-case) at `now`, if any
    /// (a policy of mode `none` is returned as such), and how it was found.
    pub(crate) async fn policy<S: StsSource>(
        &self,
        source: &S,
        domain: &str,
        now: Instant,
    ) -> (Option<Policy>, Found) {
        if let Some(answer) = self.current(domain, now) {
            return answer;
        }
        let gate = {
            let mut gates = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(gates.entry(domain.to_string()).or_default())
        };
        let answer = {
            let _turn = gate.lock().await;
            // Another task may have refreshed it while this one waited.
            match self.current(domain, now) {
                Some(answer) => answer,
                None => self.lookup(source, domain, now).await,
            }
        };
        let mut gates = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else waits on it.
        if Arc::strong_count(&gate) <= 2 {
            gates.remove(domain);
        }
        answer
    }

    /// The answer from the cache alone, when it is recent enough.
    fn current(&self, domain: &str, now: Instant) -> Option<(Option<Policy>, Found)> {
        let entries = self.lock();
        let e = entries.get(domain)?;
        if now.saturating_duration_since(e.checked) >= RECHECK {
            return None;
        }
        match &e.policy {
            Some(c) if !c.expired(now) => Some((Some(c.policy.clone()), Found::Cached)),
            // Expired since the last check: look again now.
            Some(_) => None,
            None => Some((None, Found::NoRecord)),
        }
    }

    async fn lookup<S: StsSource>(
        &self,
        source: &S,
        domain: &str,
        now: Instant,
    ) -> (Option<Policy>, Found) {
        let previous = self.lock().get(domain).cloned();
        let cached = previous
            .as_ref()
            .and_then(|e| e.policy.clone())
            .filter(|c| !c.expired(now));
        self.refresh(source, domain, cached, now).await
    }

    async fn refresh<S: StsSource>(
        &self,
        source: &S,
        domain: &str,
        cached: Option<Cached>,
        now: Instant,
    ) -> (Option<Policy>, Found) {
        let (kept, found) = match source.record_id(domain).await {
            // §3.3: a cached, unexpired policy outlives a missing record
            // or a failed lookup.
            Ok(None) if cached.is_some() => (cached, Found::Confirmed),
            Ok(None) => (None, Found::NoRecord),
            Err(error) => {
                let kept = cached.is_some();
                (cached, Found::Failed { error, kept })
            }
            Ok(Some(id)) if cached.as_ref().is_some_and(|c| c.id == id) => {
                (cached, Found::Confirmed)
            }
            Ok(Some(id)) => match source.fetch(domain).await {
                Ok(policy) => (
                    Some(Cached {
                        id,
                        policy,
                        fetched: now,
                    }),
                    Found::Fetched,
                ),
                // §3.3: without a usable cached policy, as if none.
                Err(error) => {
                    let kept = cached.is_some();
                    (cached, Found::Failed { error, kept })
                }
            },
        };
        let policy = kept.as_ref().map(|c| c.policy.clone());
        self.store(
            domain,
            Entry {
                policy: kept,
                checked: now,
            },
        );
        (policy, found)
    }

    fn store(&self, domain: &str, entry: Entry) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY && !entries.contains_key(domain) {
            let now = entry.checked;
            entries.retain(|_, e| e.policy.as_ref().is_some_and(|c| !c.expired(now)));
            if entries.len() >= CAPACITY {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.checked)
                    .map(|(d, _)| d.clone());
                if let Some(d) = oldest {
                    entries.remove(&d);
                }
            }
        }
        entries.insert(domain.to_string(), entry);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
