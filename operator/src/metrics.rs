//! Prometheus metrics of the operator, per kind (`Relay`, `MailDomain`,
//! `Blocklist`): reconciles, failures, how long they take, how many run.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: &'static str,
}

/// The kinds the operator reconciles, as the `kind` label gives them.
const KINDS: [&str; 3] = ["Relay", "MailDomain", "Blocklist"];

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    failures: Family<KindLabel, Counter>,
    controller_errors: Family<KindLabel, Counter>,
    duration: Family<KindLabel, Histogram>,
    in_flight: Family<KindLabel, Gauge>,
    pending: Family<KindLabel, Gauge>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mailrelay_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles started, by kind",
            reconciles.clone(),
        );
        let failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, by kind",
            failures.clone(),
        );
        let controller_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "controller_errors",
            "Errors of the controller machinery (watches, lost objects), by kind",
            controller_errors.clone(),
        );
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take, by kind",
            duration.clone(),
        );
        let in_flight = Family::<KindLabel, Gauge>::default();
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, by kind",
            in_flight.clone(),
        );
        let pending = Family::<KindLabel, Gauge>::default();
        registry.register(
            "reconciles_pending",
            "Objects whose current version has not been reconciled yet, by kind",
            pending.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (or runs without election)",
            leader.clone(),
        );
        // Every kind's counters and gauges at zero from the start: a family
        // without a child is not exported at all, and rate() over reconcile
        // errors should read 0 before the first failure, not no data.
        for kind in KINDS {
            let label = KindLabel { kind };
            reconciles.get_or_create(&label).inc_by(0);
            failures.get_or_create(&label).inc_by(0);
            controller_errors.get_or_create(&label).inc_by(0);
            in_flight.get_or_create(&label).set(0);
            pending.get_or_create(&label).set(0);
        }
        Self {
            registry,
            reconciles,
            failures,
            controller_errors,
            duration,
            in_flight,
            pending,
            leader,
        }
    }

    /// Count a reconcile of `kind`; its duration is observed when the
    /// returned guard drops.
    pub(crate) fn reconcile(&self, kind: &'static str) -> ReconcileTimer<'_> {
        let label = KindLabel { kind };
        self.reconciles.get_or_create(&label).inc();
        self.in_flight.get_or_create(&label).inc();
        ReconcileTimer {
            metrics: self,
            label,
            start: Instant::now(),
        }
    }

    pub(crate) fn controller_error(&self, kind: &'static str) {
        self.controller_errors
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub(crate) fn set_pending(&self, kind: &'static str, n: usize) {
        self.pending
            .get_or_create(&KindLabel { kind })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Observes one reconcile's duration when dropped.
pub(crate) struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    label: KindLabel,
    start: Instant,
}

impl ReconcileTimer<'_> {
    /// Mark the reconcile failed.
    pub(crate) fn failed(&self) {
        self.metrics.failures.get_or_create(&self.label).inc();
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.label)
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.get_or_create(&self.label).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_exported_at_zero_before_its_first_reconcile() {
        let text = Metrics::new().encode();
        for kind in KINDS {
            for series in [
                format!("mailrelay_operator_reconciles_total{{kind=\"{kind}\"}} 0"),
                format!("mailrelay_operator_reconcile_errors_total{{kind=\"{kind}\"}} 0"),
                format!("mailrelay_operator_controller_errors_total{{kind=\"{kind}\"}} 0"),
                format!("mailrelay_operator_reconciles_pending{{kind=\"{kind}\"}} 0"),
            ] {
                assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
            }
        }
    }

    #[test]
    fn reconciles_are_counted_timed_and_failures_kept_apart() {
        let m = Metrics::new();
        {
            let t = m.reconcile("Relay");
            t.failed();
        }
        drop(m.reconcile("Relay"));
        let text = m.encode();
        assert!(
            text.contains("mailrelay_operator_reconciles_total{kind=\"Relay\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mailrelay_operator_reconcile_errors_total{kind=\"Relay\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mailrelay_operator_reconcile_duration_seconds_count{kind=\"Relay\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mailrelay_operator_reconciles_in_flight{kind=\"Relay\"} 0"),
            "{text}"
        );
    }
}
