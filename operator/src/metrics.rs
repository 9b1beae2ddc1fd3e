//! Prometheus metrics of the operator, per kind (`Relay`, `MailDomain`,
//! `Blocklist`): reconciles, failures, how long they take, how many run;
//! and whether each MailDomain's DKIM key is ready.

use std::collections::BTreeSet;
use std::sync::Mutex;
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

/// One MailDomain. Not `namespace`: Prometheus would rename that label of
/// the scraped series (the target's own namespace wins) and break alerts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub(crate) struct DomainLabel {
    pub maildomain_namespace: String,
    pub maildomain: String,
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
    dkim_ready: Family<DomainLabel, Gauge>,
    /// The domains `dkim_ready` has a series for: the family cannot list
    /// them, and deleted domains must lose theirs.
    dkim_domains: Mutex<BTreeSet<DomainLabel>>,
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
        let dkim_ready = Family::<DomainLabel, Gauge>::default();
        registry.register(
            "dkim_key_ready",
            "1 when a MailDomain's DKIM signing key is in its Secret and usable, 0 when not (domains with spec.dkim)",
            dkim_ready.clone(),
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
            dkim_ready,
            dkim_domains: Mutex::default(),
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

    /// Whether the DKIM key of the MailDomain `namespace/name` is ready;
    /// `None` (no `spec.dkim`, or being deleted) drops its series.
    pub(crate) fn dkim_key(&self, namespace: &str, name: &str, ready: Option<bool>) {
        let label = DomainLabel {
            maildomain_namespace: namespace.to_string(),
            maildomain: name.to_string(),
        };
        let mut known = self.dkim_domains.lock().unwrap_or_else(|p| p.into_inner());
        match ready {
            Some(ready) => {
                self.dkim_ready.get_or_create(&label).set(i64::from(ready));
                known.insert(label);
            }
            None => {
                self.dkim_ready.remove(&label);
                known.remove(&label);
            }
        }
    }

    /// Drop the DKIM series of domains `exists` no longer knows: a deleted
    /// domain is not reconciled again, and a stale 0 would keep alerting.
    pub(crate) fn retain_dkim(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut known = self.dkim_domains.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|label| {
            let keep = exists(&label.maildomain_namespace, &label.maildomain);
            if !keep {
                self.dkim_ready.remove(label);
            }
            keep
        });
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
        // The other kinds are there before their first reconcile or error.
        for line in [
            "mailrelay_operator_reconciles_total{kind=\"MailDomain\"} 0",
            "mailrelay_operator_reconcile_errors_total{kind=\"Blocklist\"} 0",
            "mailrelay_operator_controller_errors_total{kind=\"MailDomain\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
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

    #[test]
    fn dkim_readiness_is_one_series_per_domain_and_goes_with_the_domain() {
        let m = Metrics::new();
        m.dkim_key("mail", "example", Some(true));
        m.dkim_key("mail", "broken", Some(false));
        m.dkim_key("other", "gone", Some(false));
        let text = m.encode();
        for line in [
            r#"mailrelay_operator_dkim_key_ready{maildomain_namespace="mail",maildomain="example"} 1"#,
            r#"mailrelay_operator_dkim_key_ready{maildomain_namespace="mail",maildomain="broken"} 0"#,
            r#"mailrelay_operator_dkim_key_ready{maildomain_namespace="other",maildomain="gone"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // The key got fixed; one domain dropped spec.dkim; one was deleted.
        m.dkim_key("mail", "broken", Some(true));
        m.dkim_key("mail", "example", None);
        m.retain_dkim(|ns, name| !(ns == "other" && name == "gone"));
        let text = m.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mailrelay_operator_dkim_key_ready{"))
            .collect();
        assert_eq!(
            series,
            [
                r#"mailrelay_operator_dkim_key_ready{maildomain_namespace="mail",maildomain="broken"} 1"#
            ],
            "{text}"
        );
    }
}
