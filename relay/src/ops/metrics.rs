//! Prometheus metrics of the relay. Labels come from fixed sets (listener
//! names, reply classes, enhanced codes we emit), never from client text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReplyLabel {
    /// `2xx`, `4xx` or `5xx`.
    pub class: &'static str,
    /// The enhanced status code, or `none`.
    pub enhanced: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeliveryLabel {
    /// `lmtp`, `smtp`, `maildir`, `smarthost` or `mx`.
    pub route: &'static str,
    /// `delivered`, `deferred` or `bounced`.
    pub result: &'static str,
    /// The bounce class of a deferral or bounce (`BounceClass`), empty for
    /// a delivery.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutboundTlsLabel {
    /// `opportunistic`, `required`, `mta_sts_enforce`, `mta_sts_testing`
    /// or `dane` (a host with a secure TLSA RRset).
    pub policy: &'static str,
    /// `verified`, `encrypted`, `clear`, `failed_deferred` (the policy kept
    /// the message), `failed_reported` (MTA-STS testing: delivered anyway)
    /// or `dnssec_failed` (DANE: a bogus or failed MX or TLSA lookup).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub state: &'static str,
}

pub(crate) struct Metrics {
    pub registry: Registry,
    pub sessions: Family<ListenerLabel, Counter>,
    pub sessions_open: Gauge,
    pub connections_refused: Family<ResultLabel, Counter>,
    pub replies: Family<ReplyLabel, Counter>,
    pub messages_accepted: Family<ListenerLabel, Counter>,
    /// From the end of a message's data to its 250: checks, signing and
    /// the spool's fsync.
    pub acceptance_latency: Histogram,
    pub message_bytes: Counter,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub auth_failures: Counter,
    pub spool_messages: Gauge,
    pub spool_bytes: Gauge,
    pub spool_live_bytes: Gauge,
    pub spool_disk_bytes: Gauge,
    pub spool_disk_free_bytes: Gauge,
    pub spool_disk_total_bytes: Gauge,
    pub deliveries: Family<DeliveryLabel, Counter>,
    pub delivery_latency: Histogram,
    pub queue_recipients: Family<StateLabel, Gauge>,
    pub oldest_message_age: Gauge,
    pub dns_failures: Counter,
    pub outbound_connections: Family<ResultLabel, Counter>,
    pub outbound_tls: Family<OutboundTlsLabel, Counter>,
    pub mta_sts_lookups: Family<ResultLabel, Counter>,
    /// SPF/DKIM/DMARC results and decisions on the smtp listener.
    pub inbound_auth: crate::smtp::inbound_auth::AuthMetrics,
    /// Destination health (queue at scale).
    pub destinations: DestinationMetrics,
}

/// A new metric registered under `name`.
fn new_in<M: prometheus_client::registry::Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    reg(registry, name, help, M::default())
}

/// Register `metric` under `name` and hand it back.
fn reg<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Destinations by health. Counts, never one series per destination: a
/// relay may send to hundreds of thousands of domains.
pub(crate) struct DestinationMetrics {
    pub suspended: Gauge,
    pub parked: Gauge,
    pub waiting: Gauge,
    pub suspensions: Counter,
    pub probes: Family<ResultLabel, Counter>,
    /// Destinations under a throttle rule now, by action.
    pub throttled_now: Family<ActionLabel, Gauge>,
    /// Replies that matched a throttle rule, by action.
    pub throttles: Family<ActionLabel, Counter>,
    /// Destinations waiting for their next message-rate slot.
    pub paced: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabel {
    pub action: &'static str,
}

impl DestinationMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            suspended: reg(
                registry,
                "queue_destinations_suspended",
                "Destinations suspended after repeated connection failures (only probes go out)",
                Gauge::default(),
            ),
            parked: reg(
                registry,
                "queue_parked_messages",
                "Messages deferred while their destination is suspended, due again at its release",
                Gauge::default(),
            ),
            waiting: reg(
                registry,
                "queue_waiting_messages",
                "Messages waiting for a retry time",
                Gauge::default(),
            ),
            suspensions: reg(
                registry,
                "queue_destination_suspensions",
                "Times a destination was suspended",
                Counter::default(),
            ),
            probes: reg(
                registry,
                "queue_destination_probes",
                "Probes of suspended destinations, by result: released or failed",
                Family::default(),
            ),
            throttled_now: reg(
                registry,
                "queue_destinations_throttled",
                "Destinations under a throttle rule, by action: suspend or slow",
                Family::default(),
            ),
            throttles: reg(
                registry,
                "queue_throttle_triggers",
                "Remote replies that matched a throttle rule, by action: suspend or slow",
                Family::default(),
            ),
            paced: reg(
                registry,
                "queue_destinations_paced",
                "Destinations waiting for their next message-rate slot (spec.delivery.shaping)",
                Gauge::default(),
            ),
        }
    }

    pub(crate) fn throttle(&self, action: &'static str) {
        self.throttles.get_or_create(&ActionLabel { action }).inc();
    }

    pub(crate) fn throttled(&self, suspended: usize, slowed: usize) {
        for (action, n) in [("suspend", suspended), ("slow", slowed)] {
            self.throttled_now
                .get_or_create(&ActionLabel { action })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn probe(&self, result: &'static str) {
        self.probes.get_or_create(&ResultLabel { result }).inc();
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mailrelay");
        let r = &mut registry;
        // Seconds from acceptance to a final result: 1 s to about 4.5 days.
        let latency_buckets =
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 3.0, 12);
        let inbound_auth = crate::smtp::inbound_auth::AuthMetrics::register(r);
        let destinations = DestinationMetrics::register(r);
        let metrics = Self {
            sessions: new_in(r, "smtp_sessions", "SMTP sessions started, by listener"),
            sessions_open: new_in(r, "smtp_sessions_open", "SMTP sessions open now"),
            connections_refused: new_in(
                r,
                "smtp_connections_refused",
                "Connections refused before the greeting, by reason",
            ),
            replies: new_in(
                r,
                "smtp_replies",
                "SMTP replies sent, by class and enhanced status code",
            ),
            messages_accepted: new_in(
                r,
                "messages_accepted",
                "Messages accepted into the spool, by listener",
            ),
            acceptance_latency: reg(
                r,
                "acceptance_latency_seconds",
                "Time from the end of a message's data to its 250 (inbound checks, DKIM signing, the spool's fsync)",
                // 100 µs to about 13 s.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.0001, 2.0, 18,
                )),
            ),
            message_bytes: new_in(
                r,
                "message_bytes",
                "Bytes of messages accepted into the spool",
            ),
            tls_handshakes: new_in(r, "tls_handshakes", "TLS handshakes, by result"),
            auth_failures: new_in(r, "auth_failures", "Failed AUTH attempts"),
            spool_messages: new_in(r, "spool_messages", "Messages in the spool"),
            spool_bytes: new_in(r, "spool_bytes", "Bytes of messages in the spool"),
            deliveries: new_in(
                r,
                "deliveries",
                "Delivery results per recipient, by route and result",
            ),
            delivery_latency: reg(
                r,
                "delivery_latency_seconds",
                "Time from acceptance to a recipient's final result",
                Histogram::new(latency_buckets),
            ),
            queue_recipients: new_in(
                r,
                "queue_recipients",
                "Queued recipients by state (held counts messages)",
            ),
            oldest_message_age: new_in(
                r,
                "queue_oldest_message_age_seconds",
                "Age of the oldest queued message",
            ),
            dns_failures: new_in(
                r,
                "dns_failures",
                "Delivery DNS lookups that failed temporarily",
            ),
            outbound_connections: new_in(
                r,
                "outbound_connections",
                "Outbound SMTP connections by security: clear, clear_after_tls_failure, encrypted, verified",
            ),
            outbound_tls: new_in(
                r,
                "outbound_tls",
                "Outbound TLS policy decisions for MX delivery, by policy and outcome",
            ),
            mta_sts_lookups: new_in(
                r,
                "mta_sts_lookups",
                "MTA-STS policy lookups: cached, confirmed, fetched, no_record, failed_kept_cached, failed_no_policy",
            ),
            spool_live_bytes: new_in(
                r,
                "spool_live_bytes",
                "Bytes of the spool records the queued messages need (messages and their latest states)",
            ),
            spool_disk_bytes: new_in(
                r,
                "spool_disk_bytes",
                "Bytes of the spool's segment files; compaction keeps the closed ones under twice the live bytes",
            ),
            spool_disk_free_bytes: new_in(
                r,
                "spool_disk_free_bytes",
                "Bytes the relay may still write on the spool's filesystem",
            ),
            spool_disk_total_bytes: new_in(
                r,
                "spool_disk_total_bytes",
                "Size of the spool's filesystem in bytes",
            ),
            inbound_auth,
            destinations,
            registry,
        };
        metrics.zero_fixed_labels();
        metrics
    }

    /// The series of fixed label values at zero from the start. A family
    /// without a child is not exported at all, so until its first event
    /// Prometheus, the dashboard and rate() would see no data instead of 0
    /// (Prometheus's "avoid missing metrics"). Outbound TLS: the outcomes of
    /// the default, opportunistic, policy only; the other policies' series
    /// appear with a Relay or domain that uses them.
    fn zero_fixed_labels(&self) {
        for name in mailrelay_crds::relay::ListenerName::ALL {
            self.messages_accepted
                .get_or_create(&ListenerLabel {
                    listener: name.as_str(),
                })
                .inc_by(0);
        }
        for result in ["ok", "failed"] {
            self.tls_handshakes
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        for result in ["proxy", "total", "per_ip"] {
            self.connections_refused
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        for result in ["clear", "clear_after_tls_failure", "encrypted", "verified"] {
            self.outbound_connections
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        for outcome in ["verified", "encrypted", "clear"] {
            self.outbound_tls
                .get_or_create(&OutboundTlsLabel {
                    policy: "opportunistic",
                    outcome,
                })
                .inc_by(0);
        }
        for result in ["released", "failed"] {
            self.destinations
                .probes
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        for action in ["suspend", "slow"] {
            self.destinations
                .throttles
                .get_or_create(&ActionLabel { action })
                .inc_by(0);
        }
        self.destinations.throttled(0, 0);
    }

    pub(crate) fn reply(&self, code: u16, enhanced: Option<&'static str>) {
        let class = match code {
            200..=399 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.replies
            .get_or_create(&ReplyLabel {
                class,
                enhanced: enhanced.unwrap_or("none"),
            })
            .inc();
    }

    /// One recipient's attempt: `result` is `delivered`, `deferred` or
    /// `bounced`, `class` its bounce class (empty for a delivery); `age`
    /// is seconds since the message arrived.
    pub(crate) fn delivery(
        &self,
        route: &'static str,
        result: &'static str,
        class: &'static str,
        age: i64,
    ) {
        self.deliveries
            .get_or_create(&DeliveryLabel {
                route,
                result,
                class,
            })
            .inc();
        if result != "deferred" {
            self.delivery_latency.observe(age as f64);
        }
    }

    /// One outbound TLS policy decision (see [`OutboundTlsLabel`]).
    pub(crate) fn outbound_tls(&self, policy: &'static str, outcome: &'static str) {
        self.outbound_tls
            .get_or_create(&OutboundTlsLabel { policy, outcome })
            .inc();
    }

    /// One MTA-STS policy lookup, by how it was answered.
    pub(crate) fn mta_sts_lookup(&self, result: &'static str) {
        self.mta_sts_lookups
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The spool's gauges: its size and the queued recipients by state
    /// (`oldest`: age of the oldest queued message, seconds).
    pub(crate) fn spool(&self, s: &crate::spool::SpoolStats, t: &crate::spool::Tally, oldest: i64) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.spool_messages.set(n(s.messages as u64));
        self.spool_bytes.set(n(s.bytes));
        self.spool_live_bytes.set(n(s.live_bytes));
        self.spool_disk_bytes.set(n(s.disk_bytes));
        for (state, v) in [
            ("pending", t.pending),
            ("deferred", t.deferred),
            ("delivered", t.delivered),
            ("failed", t.failed),
            ("held", t.held),
        ] {
            self.queue_recipients
                .get_or_create(&StateLabel { state })
                .set(n(v));
        }
        self.oldest_message_age.set(oldest);
    }

    /// Free and total space of the spool's filesystem.
    pub(crate) fn spool_disk(&self, space: &crate::ops::disk::DiskSpace) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.spool_disk_free_bytes.set(n(space.free));
        self.spool_disk_total_bytes.set(n(space.total));
    }

    /// Publish the listener certificate's expiry, a gauge the TLS loader
    /// keeps (it is loaded before the metrics exist, and reloaded later).
    pub(crate) fn tls_expiry(&mut self, expiry: Gauge) {
        self.registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the listeners' TLS certificate expires (its notAfter), Unix seconds",
            expiry,
        );
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_and_certificate_expiry_are_exported_under_the_alerted_names() {
        let mut m = Metrics::new();
        m.spool_disk(&crate::ops::disk::DiskSpace {
            free: 1_500,
            total: 10_000,
        });
        let expiry = Gauge::default();
        m.tls_expiry(expiry.clone());
        expiry.set(1_952_467_200);
        let text = m.encode();
        for line in [
            "mailrelay_spool_disk_free_bytes 1500",
            "mailrelay_spool_disk_total_bytes 10000",
            "mailrelay_tls_certificate_expiry_timestamp_seconds 1952467200",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn families_with_fixed_labels_are_exported_at_zero_before_any_event() {
        let text = Metrics::new().encode();
        for series in [
            "mailrelay_tls_handshakes_total{result=\"failed\"} 0",
            "mailrelay_smtp_connections_refused_total{result=\"per_ip\"} 0",
            "mailrelay_outbound_connections_total{result=\"verified\"} 0",
            "mailrelay_outbound_tls_total{policy=\"opportunistic\",outcome=\"clear\"} 0",
            "mailrelay_queue_destination_probes_total{result=\"released\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
        }
    }
}
