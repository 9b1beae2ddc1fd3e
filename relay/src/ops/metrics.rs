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
    pub spool_live_bytes: Gauge,
    pub spool_disk_bytes: Gauge,
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
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mailrelay");
        let sessions = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "smtp_sessions",
            "SMTP sessions started, by listener",
            sessions.clone(),
        );
        let sessions_open = Gauge::default();
        registry.register(
            "smtp_sessions_open",
            "SMTP sessions open now",
            sessions_open.clone(),
        );
        let connections_refused = Family::<ResultLabel, Counter>::default();
        registry.register(
            "smtp_connections_refused",
            "Connections refused before the greeting, by reason",
            connections_refused.clone(),
        );
        let replies = Family::<ReplyLabel, Counter>::default();
        registry.register(
            "smtp_replies",
            "SMTP replies sent, by class and enhanced status code",
            replies.clone(),
        );
        let messages_accepted = Counter::default();
        registry.register(
            "messages_accepted",
            "Messages accepted into the spool",
            messages_accepted.clone(),
        );
        let message_bytes = Counter::default();
        registry.register(
            "message_bytes",
            "Bytes of messages accepted into the spool",
            message_bytes.clone(),
        );
        let tls_handshakes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by result",
            tls_handshakes.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Failed AUTH attempts",
            auth_failures.clone(),
        );
        let spool_messages = Gauge::default();
        registry.register(
            "spool_messages",
            "Messages in the spool",
            spool_messages.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes of messages in the spool",
            spool_bytes.clone(),
        );
        let spool_live_bytes = Gauge::default();
        registry.register(
            "spool_live_bytes",
            "Bytes of the spool records the queued messages need (messages and their latest states)",
            spool_live_bytes.clone(),
        );
        let spool_disk_bytes = Gauge::default();
        registry.register(
            "spool_disk_bytes",
            "Bytes of the spool's segment files; compaction keeps the closed ones under twice the live bytes",
            spool_disk_bytes.clone(),
        );
        let deliveries = Family::<DeliveryLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery results per recipient, by route and result",
            deliveries.clone(),
        );
        // Seconds from acceptance to a final result: 1 s to about 4.5 days.
        let delivery_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 3.0, 12),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from acceptance to a recipient's final result",
            delivery_latency.clone(),
        );
        let queue_recipients = Family::<StateLabel, Gauge>::default();
        registry.register(
            "queue_recipients",
            "Queued recipients by state (held counts messages)",
            queue_recipients.clone(),
        );
        let oldest_message_age = Gauge::default();
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest queued message",
            oldest_message_age.clone(),
        );
        let dns_failures = Counter::default();
        registry.register(
            "dns_failures",
            "Delivery DNS lookups that failed temporarily",
            dns_failures.clone(),
        );
        let outbound_connections = Family::<ResultLabel, Counter>::default();
        registry.register(
            "outbound_connections",
            "Outbound SMTP connections by security: clear, clear_after_tls_failure, encrypted, verified",
            outbound_connections.clone(),
        );
        let outbound_tls = Family::<OutboundTlsLabel, Counter>::default();
        registry.register(
            "outbound_tls",
            "Outbound TLS policy decisions for MX delivery, by policy and outcome",
            outbound_tls.clone(),
        );
        let mta_sts_lookups = Family::<ResultLabel, Counter>::default();
        registry.register(
            "mta_sts_lookups",
            "MTA-STS policy lookups: cached, confirmed, fetched, no_record, failed_kept_cached, failed_no_policy",
            mta_sts_lookups.clone(),
        );
        let inbound_auth = crate::smtp::inbound_auth::AuthMetrics::register(&mut registry);
        Self {
            registry,
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
            spool_live_bytes,
            spool_disk_bytes,
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
