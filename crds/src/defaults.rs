//! Default values of optional fields. Serde and the generated schema both
//! use these, so `kubectl explain` and the relay agree on them.

use crate::maildomain::TlsMode;
use crate::relay::{Listener, ListenerName};

pub(crate) fn r#true() -> bool {
    true
}
pub(crate) fn one() -> i32 {
    1
}
pub(crate) fn recipient_delimiter() -> String {
    "+".into()
}
pub(crate) fn smtp_port() -> i32 {
    25
}
pub(crate) fn submission_port() -> i32 {
    587
}
pub(crate) fn tls_required() -> TlsMode {
    TlsMode::Required
}
pub(crate) fn cpu_target() -> i32 {
    70
}
pub(crate) fn listeners() -> Vec<Listener> {
    vec![Listener {
        name: ListenerName::Smtp,
        port: None,
        service_port: None,
        proxy_protocol: None,
    }]
}
pub(crate) fn max_message_size() -> String {
    "25Mi".into()
}
pub(crate) fn max_recipients() -> i32 {
    100
}
pub(crate) fn max_connections() -> i32 {
    10000
}
pub(crate) fn max_connections_per_ip() -> i32 {
    20
}
pub(crate) fn messages_per_minute_per_ip() -> i32 {
    600
}
pub(crate) fn max_auth_failures_per_ip() -> i32 {
    5
}
pub(crate) fn command_timeout() -> String {
    "5m".into()
}
pub(crate) fn data_timeout() -> String {
    "3m".into()
}
pub(crate) fn session_timeout() -> String {
    "30m".into()
}
/// RFC 5321 §4.5.4.1: retry within the first hour, then every hour or
/// two; with the default 50% jitter the last wait lands between 1 and 3 hours.
pub(crate) fn retry_schedule() -> Vec<String> {
    ["5m", "10m", "15m", "30m", "2h"]
        .into_iter()
        .map(String::from)
        .collect()
}
pub(crate) fn jitter_percent() -> i32 {
    50
}
pub(crate) fn queue_lifetime() -> String {
    "5d".into()
}
pub(crate) fn delay_warning() -> String {
    "4h".into()
}
pub(crate) fn suspend_after_failures() -> i32 {
    5
}
pub(crate) fn probe_interval() -> String {
    "30s".into()
}
pub(crate) fn max_probe_interval() -> String {
    "30m".into()
}
pub(crate) fn dns_timeout() -> String {
    "5s".into()
}

impl Default for crate::relay::Limits {
    fn default() -> Self {
        Self {
            max_message_size: max_message_size(),
            max_recipients: max_recipients(),
            max_connections: max_connections(),
            max_connections_per_ip: max_connections_per_ip(),
            messages_per_minute_per_ip: messages_per_minute_per_ip(),
            max_auth_failures_per_ip: max_auth_failures_per_ip(),
            timeouts: Default::default(),
        }
    }
}

impl Default for crate::relay::Timeouts {
    fn default() -> Self {
        Self {
            command: command_timeout(),
            data: data_timeout(),
            session: session_timeout(),
        }
    }
}

impl Default for crate::relay::Queue {
    fn default() -> Self {
        Self {
            storage: None,
            retry_schedule: retry_schedule(),
            jitter_percent: jitter_percent(),
            lifetime: queue_lifetime(),
            delay_warning: delay_warning(),
            destinations: Default::default(),
        }
    }
}

impl Default for crate::relay::DestinationHealth {
    fn default() -> Self {
        Self {
            suspend_after_failures: suspend_after_failures(),
            probe_interval: probe_interval(),
            max_probe_interval: max_probe_interval(),
        }
    }
}

impl Default for crate::relay::Dns {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: dns_timeout(),
        }
    }
}
pub(crate) fn event_retention() -> String {
    "3d".into()
}
pub(crate) fn webhook_batch_size() -> i32 {
    100
}
pub(crate) fn webhook_batch_window() -> String {
    "1s".into()
}
pub(crate) fn webhook_timeout() -> String {
    "10s".into()
}
