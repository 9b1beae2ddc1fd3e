//! Prometheus metrics of the relay. Labels come from fixed sets (listener
//! names, reply classes, enhanced codes we emit), never from client text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplyLabel {
    /// `2xx`, `4xx` or `5xx`.
    pub class: &'static str,
    /// The enhanced status code, or `none`.
    pub enhanced: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct Metrics {
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
}

impl Metrics {
    pub fn new() -> Self {
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
        Self {
            registry,
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

    pub fn reply(&self, code: u16, enhanced: Option<&'static str>) {
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
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
