//! Delivery events (`spec.events` of a Relay, `spec.events.webhook` of a
//! MailDomain): the event types and where the events of a relay are sent.
//! The record itself is the relay's (`relay/src/events`); what users set
//! is here, shared by both kinds.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// What happened: one record per event (one per recipient for the
/// delivery side), sent to the log and to webhooks.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum EventType {
    /// A message was accepted (after the spool commit, before the 250).
    Reception,
    /// A recipient or a message was refused at RCPT or DATA.
    Rejection,
    /// A recipient was delivered (2xx).
    Delivery,
    /// A delivery attempt failed for now; the recipient stays queued.
    TransientFailure,
    /// A recipient failed for good (5xx, null MX, …).
    Bounce,
    /// A recipient's queue lifetime ran out.
    Expiration,
    /// A delay notice went to the sender.
    DelayWarning,
    /// A message was handed to a peer relay, or received from one.
    HandOff,
    /// An operator acted on the queue: delete, hold, release, flush.
    Admin,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        EventType::Reception,
        EventType::Rejection,
        EventType::Delivery,
        EventType::TransientFailure,
        EventType::Bounce,
        EventType::Expiration,
        EventType::DelayWarning,
        EventType::HandOff,
        EventType::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Reception => "Reception",
            EventType::Rejection => "Rejection",
            EventType::Delivery => "Delivery",
            EventType::TransientFailure => "TransientFailure",
            EventType::Bounce => "Bounce",
            EventType::Expiration => "Expiration",
            EventType::DelayWarning => "DelayWarning",
            EventType::HandOff => "HandOff",
            EventType::Admin => "Admin",
        }
    }
}

/// `Relay.spec.events`: where the relay's events go besides its log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayEvents {
    /// Webhooks that receive the relay's events (every domain's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = kube::core::Rule::new("self.all(w, self.exists_one(v, v.url == w.url))").message("each webhook url may appear only once"))]
    pub webhooks: Vec<Webhook>,

    /// How long an event waits for a webhook that does not take it
    /// (down, or answering errors); older events are dropped and counted
    /// (`mailrelay_event_deliveries_total{result="expired"}`).
    #[serde(default = "crate::defaults::event_retention")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 30s, 5m or 1h30m"))]
    pub retention: String,
}

impl Default for RelayEvents {
    fn default() -> Self {
        RelayEvents {
            webhooks: Vec::new(),
            retention: crate::defaults::event_retention(),
        }
    }
}

impl RelayEvents {
    pub fn is_default(&self) -> bool {
        *self == RelayEvents::default()
    }
}

/// `MailDomain.spec.events`: the domain's own webhook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainEvents {
    /// Receives only this domain's events: the sender's domain for mail
    /// submitted by its accounts, the recipient's for mail it receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

impl MailDomainEvents {
    pub fn is_default(&self) -> bool {
        self.webhook.is_none()
    }
}

/// One webhook: each request is a JSON array of events, signed with
/// `X-Mailrelay-Signature: t=UNIX,v1=HEX`, HEX being
/// HMAC-SHA256(key, t + "." + body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Where the events are POSTed (http or https).
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^https?://[^/?#]+')").message("must be an http:// or https:// URL with a host"))]
    pub url: String,

    /// The Secret key holding the signing key.
    pub secret: SecretKeyRef,

    /// The event types to send; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub types: Vec<EventType>,

    /// Most events in one request.
    #[serde(default = "crate::defaults::webhook_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: i32,

    /// Longest an event waits for others to fill a batch.
    #[serde(default = "crate::defaults::webhook_batch_window")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 100ms, 1s or 5s"))]
    pub batch_window: String,

    /// Longest a request may take before it is tried again.
    #[serde(default = "crate::defaults::webhook_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 10s or 1m"))]
    pub timeout: String,
}

/// A webhook URL taken apart: what the relay connects to and the operator
/// opens egress for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    pub https: bool,
    /// Host name or IP address (without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let bad = |why: &str| format!("{url:?}: {why}");
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not allowed: use the secret",
            ));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed [ in the host"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        {
            return Err(bad("needs a host name or IP address"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
            None if https => 443,
            None => 80,
        };
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Ok(WebhookUrl {
            https,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_taken_apart_or_refused_with_a_reason() {
        let ok = [
            (
                "http://127.0.0.1:8080/hook",
                false,
                "127.0.0.1",
                8080,
                "/hook",
            ),
            (
                "https://Events.Example.com",
                true,
                "events.example.com",
                443,
                "/",
            ),
            ("http://h.test?x=1", false, "h.test", 80, "/?x=1"),
            ("https://[::1]:9443/e", true, "::1", 9443, "/e"),
        ];
        for (url, https, host, port, path) in ok {
            let u = WebhookUrl::parse(url).unwrap();
            assert_eq!(
                (u.https, u.host.as_str(), u.port, u.path.as_str()),
                (https, host, port, path),
                "{url}"
            );
        }
        let bad = [
            ("ftp://h.test/", "http:// or https://"),
            ("http://", "host"),
            ("http://u:p@h.test/", "credentials"),
            ("http://h.test:0/", "port"),
            ("http://h.test:99999/", "port"),
            ("http://h test/", "host"),
        ];
        for (url, why) in bad {
            let e = WebhookUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
