//! Stopping without stranding mail. On SIGTERM: /readyz fails at once;
//! listeners keep accepting for `--drain-accept` (endpoints and load
//! balancers catch up), then close; open sessions get `--drain-sessions`
//! to finish; delivery goes on until `--drain-deliver` after the signal,
//! or less when nothing is due before then; then every queued message is
//! handed to a peer (see `handoff`) until `--drain-deadline`. What no peer
//! took stays in the spool — a persistent volume keeps it for the pod's
//! return — and is logged and exported as `mailrelay_drain_left_messages`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use ring::hmac;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lifecycle::handoff::{self, DrainArgs, client};
use crate::ops::http::Health;
use crate::policy::limits::Limiter;
use crate::queue::manager::Manager;
use crate::spool::Spool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabel {
    /// `sent` (to a peer, while draining) or `received` (from one).
    pub direction: &'static str,
}

/// Hand-off and drain figures, registered beside the relay's metrics.
#[derive(Clone, Default)]
pub(crate) struct DrainMetrics {
    pub handoffs: Family<DirectionLabel, Counter>,
    pub left: Gauge,
}

impl DrainMetrics {
    pub(crate) fn register(registry: &mut Registry) -> DrainMetrics {
        let m = DrainMetrics::default();
        registry.register(
            "handoff_messages",
            "Messages moved between relays of one Relay while one drained, by direction",
            m.handoffs.clone(),
        );
        registry.register(
            "drain_left_messages",
            "Messages still in this relay's spool when its drain ended",
            m.left.clone(),
        );
        // Exported at zero before the first hand-off (a family without a
        // child is not exported at all).
        for direction in ["sent", "received"] {
            m.handoffs
                .get_or_create(&DirectionLabel { direction })
                .inc_by(0);
        }
        m
    }
}

/// A started relay (see `app::run`): what drain works on.
pub(crate) struct Running {
    pub health: Health,
    pub accepting: Vec<JoinHandle<()>>,
    /// The hand-off listener: a draining relay takes no one else's queue.
    pub handoff_listener: Option<JoinHandle<()>>,
    pub limiter: Arc<Limiter>,
    pub manager: Arc<Manager>,
    pub spool: Spool,
    pub key: Option<hmac::Key>,
    pub hostname: String,
    pub metrics: DrainMetrics,
    /// This relay's report aggregates: handed off with the queue.
    pub reports: crate::ops::reports::Reports,
    /// A standalone run's private secrets directory, kept while it runs.
    pub _secrets: Option<tempfile::TempDir>,
}

const POLL: Duration = Duration::from_millis(100);

/// The annotation that asks a relay to drain.
pub(crate) const DRAIN_ANNOTATION: &str = "mailrelay.io/drain";

/// Whether a downward-API annotations file asks for a drain: a line
/// `mailrelay.io/drain="true"` (the kubelet writes `key="value"` lines,
/// values quoted and escaped as Go strings).
pub(crate) fn drain_requested(annotations: &str) -> bool {
    annotations.lines().any(|line| {
        line.split_once('=')
            .is_some_and(|(k, v)| k.trim() == DRAIN_ANNOTATION && v.trim() == "\"true\"")
    })
}

/// Wait until `path` asks for a drain (looked at every two seconds; the
/// kubelet refreshes the file within its sync period). A missing or
/// unreadable file asks for nothing.
pub(crate) async fn until_requested(path: &std::path::Path) {
    loop {
        if let Ok(text) = tokio::fs::read_to_string(path).await
            && drain_requested(&text)
        {
            tracing::info!(file = %path.display(), "drain requested by the pod's annotation");
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

impl Running {
    /// Drain, from the moment the signal arrived: stop taking mail,
    /// finish or hand off the queue.
    pub(crate) async fn drain(self, args: &DrainArgs) {
        let start = Instant::now();
        self.health.set_ready(false);
        if let Some(h) = &self.handoff_listener {
            h.abort();
        }
        tracing::info!(
            accept_for = ?args.drain_accept, queued = self.spool.stats().messages,
            "draining: not ready; still accepting while endpoints update"
        );
        tokio::time::sleep(args.drain_accept).await;
        for task in &self.accepting {
            task.abort();
        }
        let sessions_until = Instant::now() + args.drain_sessions;
        while self.limiter.open_connections() > 0 && Instant::now() < sessions_until {
            tokio::time::sleep(POLL).await;
        }
        tracing::info!(
            open_sessions = self.limiter.open_connections(),
            "draining: listeners closed"
        );
        self.deliver(start + args.drain_deliver).await;
        self.manager.stop();
        let deadline = start + args.drain_deadline;
        while self.manager.busy() > 0 && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        let report = self.hand_off(args, deadline).await;
        self.hand_off_reports(args, deadline).await;
        self.metrics
            .left
            .set(i64::try_from(report.left).unwrap_or(i64::MAX));
        if report.left > 0 {
            tracing::warn!(
                handed_off = report.handed,
                left = report.left,
                "drained: messages left in the spool; they are delivered when a relay opens it again"
            );
        } else {
            tracing::info!(handed_off = report.handed, left = 0, "drained: spool empty");
        }
    }

    /// Let delivery go on until `until`, or until nothing more can happen
    /// before then.
    async fn deliver(&self, until: Instant) {
        let until_unix = jiff::Timestamp::now().as_second()
            + i64::try_from(until.saturating_duration_since(Instant::now()).as_secs())
                .unwrap_or(i64::MAX);
        while Instant::now() < until {
            if self.spool.stats().messages == 0 {
                return;
            }
            // The whole queue is copied to look: once a second is enough.
            if self.manager.busy() == 0 && !self.spool.anything_due(until_unix) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Hand the report aggregates to a peer (see `handoff::reports`), or
    /// keep them on disk.
    async fn hand_off_reports(&self, args: &DrainArgs, deadline: Instant) {
        let peers = match &self.key {
            Some(_) => handoff::peers(args).await,
            None => Vec::new(),
        };
        let handed = match &self.key {
            Some(key) if !peers.is_empty() => {
                // A few seconds past the queue's deadline at most.
                let until = deadline.max(Instant::now()) + Duration::from_secs(5);
                handoff::reports::hand_off(&self.reports, &peers, key, &self.hostname, until).await
            }
            _ => false,
        };
        if !handed && let Err(e) = self.reports.flush() {
            tracing::warn!(error = %e, "cannot write the report aggregates");
        }
    }

    async fn hand_off(&self, args: &DrainArgs, deadline: Instant) -> client::Report {
        let queued = self.spool.stats().messages;
        if queued == 0 {
            return client::Report::default();
        }
        let Some(key) = &self.key else {
            tracing::warn!(
                queued,
                "no hand-off secret (--handoff-secret-file): the queue stays in the spool"
            );
            return client::Report {
                handed: 0,
                left: queued,
            };
        };
        let peers = handoff::peers(args).await;
        if peers.is_empty() {
            tracing::warn!(queued, "no peer to hand the queue to (--peer, --peers-dns)");
            return client::Report {
                handed: 0,
                left: queued,
            };
        }
        tracing::info!(queued, peers = ?peers, "handing the queue off");
        let report = client::hand_off(&self.spool, &peers, key, &self.hostname, deadline).await;
        self.metrics
            .handoffs
            .get_or_create(&DirectionLabel { direction: "sent" })
            .inc_by(report.handed as u64);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_annotation_asks_for_a_drain_only_when_true() {
        assert!(drain_requested(
            "kubernetes.io/config.seen=\"x\"\nmailrelay.io/drain=\"true\"\n"
        ));
        assert!(!drain_requested("mailrelay.io/drain=\"false\"\n"));
        assert!(!drain_requested("mailrelay.io/drain-later=\"true\"\n"));
        assert!(!drain_requested(
            "other=\"mailrelay.io/drain=\\\"true\\\"\"\n"
        ));
        assert!(!drain_requested(""));
    }
}
