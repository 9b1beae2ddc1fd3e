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
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutboundTlsLabel {
    /// `opportunistic`, `required`, `mta_sts_enforce` or `mta_sts_testing`.
    pub policy: &'static str,
    /// `verified`, `encrypted`, `clear`, `failed_deferred` (the policy kept
    /// the message) or `failed_reported` (MTA-STS testing: delivered anyway).
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
    pub messages_accepted: Counter,
    pub message_bytes: Counter,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub auth_failures: Counter,
    pub spool_messages: Gauge,
    pub spool_bytes: Gauge,
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
        }
    }

    pub(crate) fn probe(&self, result: &'static str) {
        self.probes.get_or_create(&ResultLabel { result }).inc();
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mailrelay");
        let sessions = reg(
            &mut registry,
            "smtp_sessions",
            "SMTP sessions started, by listener",
            Family::<ListenerLabel, Counter>::default(),
        );
        let sessions_open = reg(
            &mut registry,
            "smtp_sessions_open",
            "SMTP sessions open now",
            Gauge::default(),
        );
        let connections_refused = reg(
            &mut registry,
            "smtp_connections_refused",
            "Connections refused before the greeting, by reason",
            Family::<ResultLabel, Counter>::default(),
        );
        let replies = reg(
            &mut registry,
            "smtp_replies",
            "SMTP replies sent, by class and enhanced status code",
            Family::<ReplyLabel, Counter>::default(),
        );
        let messages_accepted = reg(
            &mut registry,
            "messages_accepted",
            "Messages accepted into the spool",
            Counter::default(),
        );
        let message_bytes = reg(
            &mut registry,
            "message_bytes",
            "Bytes of messages accepted into the spool",
            Counter::default(),
        );
        let tls_handshakes = reg(
            &mut registry,
            "tls_handshakes",
            "TLS handshakes, by result",
            Family::<ResultLabel, Counter>::default(),
        );
        let auth_failures = reg(
            &mut registry,
            "auth_failures",
            "Failed AUTH attempts",
            Counter::default(),
        );
        let spool_messages = reg(
            &mut registry,
            "spool_messages",
            "Messages in the spool",
            Gauge::default(),
        );
        let spool_bytes = reg(
            &mut registry,
            "spool_bytes",
            "Bytes of messages in the spool",
            Gauge::default(),
        );
        let deliveries = reg(
            &mut registry,
            "deliveries",
            "Delivery results per recipient, by route and result",
            Family::<DeliveryLabel, Counter>::default(),
        );
        // Seconds from acceptance to a final result: 1 s to about 4.5 days.
        let delivery_latency = reg(
            &mut registry,
            "delivery_latency_seconds",
            "Time from acceptance to a recipient's final result",
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1.0, 3.0, 12,
            )),
        );
        let queue_recipients = reg(
            &mut registry,
            "queue_recipients",
            "Queued recipients by state (held counts messages)",
            Family::<StateLabel, Gauge>::default(),
        );
        let oldest_message_age = reg(
            &mut registry,
            "queue_oldest_message_age_seconds",
            "Age of the oldest queued message",
            Gauge::default(),
        );
        let dns_failures = reg(
            &mut registry,
            "dns_failures",
            "Delivery DNS lookups that failed temporarily",
            Counter::default(),
        );
        let outbound_connections = reg(
            &mut registry,
            "outbound_connections",
            "Outbound SMTP connections by security: clear, clear_after_tls_failure, encrypted, verified",
            Family::<ResultLabel, Counter>::default(),
        );
        let outbound_tls = reg(
            &mut registry,
            "outbound_tls",
            "Outbound TLS policy decisions for MX delivery, by policy and outcome",
            Family::<OutboundTlsLabel, Counter>::default(),
        );
        let mta_sts_lookups = reg(
            &mut registry,
            "mta_sts_lookups",
            "MTA-STS policy lookups: cached, confirmed, fetched, no_record, failed_kept_cached, failed_no_policy",
            Family::<ResultLabel, Counter>::default(),
        );
        let inbound_auth = crate::smtp::inbound_auth::AuthMetrics::register(&mut registry);
        let destinations = DestinationMetrics::register(&mut registry);
        Self {
            registry,
            destinations,
            outbound_tls,
            mta_sts_lookups,
            inbound_auth,
            dns_failures,
            outbound_connections,
            deliveries,
            delivery_latency,
            queue_recipients,
            oldest_message_age,
            sessions,
            sessions_open,
            connections_refused,
            replies,
            messages_accepted,
            message_bytes,
            tls_handshakes,
            auth_failures,
            spool_messages,
            spool_bytes,
        }
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
    /// `bounced`; `age` is seconds since the message arrived.
    pub(crate) fn delivery(&self, route: &'static str, result: &'static str, age: i64) {
        self.deliveries
            .get_or_create(&DeliveryLabel { route, result })
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

    pub(crate) fn queue_state(
        &self,
        by_state: &std::collections::BTreeMap<&'static str, i64>,
        oldest: i64,
    ) {
        for state in ["pending", "deferred", "delivered", "failed", "held"] {
            let n = by_state.get(state).copied().unwrap_or(0);
            self.queue_recipients
                .get_or_create(&StateLabel { state })
                .set(n);
        }
        self.oldest_message_age.set(oldest);
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
