//! The webhooks' backlog and results, for Prometheus.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use std::collections::BTreeMap;
use std::sync::Mutex;

use mailrelay_crds::reports::WebhookHealth;

use crate::ops::metrics::ResultLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WebhookLabel {
    /// The webhook's name from the config (`relay:URL`, `domain:NAME`):
    /// as many values as webhooks configured.
    pub webhook: String,
}

#[derive(Default)]
pub(crate) struct EventMetrics {
    pending: Family<WebhookLabel, Gauge>,
    deliveries: Family<ResultLabel, Counter>,
    /// Each webhook's health, for the internal API's `/internal/status`.
    pub health: WebhookBoard,
}

/// What each webhook sender last saw: the operator reports a webhook that
/// stopped taking events in the Relay's conditions (it learns of it from
/// the pods). Written by the senders, read by the internal API.
#[derive(Default)]
pub(crate) struct WebhookBoard {
    hooks: Mutex<BTreeMap<String, WebhookHealth>>,
}

impl WebhookBoard {
    fn with(&self, name: &str, url: &str, f: impl FnOnce(&mut WebhookHealth)) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        let h = hooks
            .entry(name.to_string())
            .or_insert_with(|| WebhookHealth {
                name: name.to_string(),
                ..WebhookHealth::default()
            });
        if h.url != url {
            h.url = url.to_string();
        }
        f(h);
    }

    pub(crate) fn pending(&self, name: &str, url: &str, pending: u64) {
        self.with(name, url, |h| h.pending = pending);
    }

    pub(crate) fn succeeded(&self, name: &str, url: &str, now: i64) {
        self.with(name, url, |h| {
            h.consecutive_failures = 0;
            h.last_success = Some(now);
            h.failing_since = None;
        });
    }

    pub(crate) fn failed(&self, name: &str, url: &str, error: String, now: i64) {
        self.with(name, url, |h| {
            h.consecutive_failures += 1;
            h.last_error = Some(error);
            h.failing_since.get_or_insert(now);
        });
    }

    /// The webhooks named in `names` (those configured now), in order.
    pub(crate) fn status<'a>(
        &self,
        names: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<WebhookHealth> {
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        names
            .into_iter()
            .map(|(name, url)| {
                hooks.get(name).cloned().unwrap_or_else(|| WebhookHealth {
                    name: name.to_string(),
                    url: url.to_string(),
                    ..WebhookHealth::default()
                })
            })
            .collect()
    }
}

impl EventMetrics {
    pub(crate) fn register(registry: &mut Registry) -> EventMetrics {
        let m = EventMetrics::default();
        registry.register(
            "events_pending",
            "Events durable in the event log and not yet acknowledged by the webhook",
            m.pending.clone(),
        );
        registry.register(
            "event_deliveries",
            "Events sent to webhooks: delivered (2xx), failed (in a request that failed, to be retried) or expired (older than the retention, dropped)",
            m.deliveries.clone(),
        );
        m
    }

    pub(crate) fn pending(&self, webhook: &str) -> Gauge {
        self.pending
            .get_or_create(&WebhookLabel {
                webhook: webhook.to_string(),
            })
            .clone()
    }

    pub(crate) fn count(&self, result: &'static str, events: usize) {
        self.deliveries
            .get_or_create(&ResultLabel { result })
            .inc_by(events as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_failing_from_its_first_failure_until_a_success() {
        let board = WebhookBoard::default();
        board.pending("relay:a", "http://a/", 3);
        board.failed("relay:a", "http://a/", "connection refused".into(), 100);
        board.failed("relay:a", "http://a/", "HTTP 500".into(), 130);
        let names = [("relay:a", "http://a/"), ("domain:b", "http://b/")];
        let [a, b] = board.status(names).try_into().unwrap();
        assert_eq!(
            (
                a.pending,
                a.consecutive_failures,
                a.failing_since,
                a.last_error.as_deref()
            ),
            (3, 2, Some(100), Some("HTTP 500"))
        );
        assert_eq!(
            b,
            WebhookHealth {
                name: "domain:b".into(),
                url: "http://b/".into(),
                ..WebhookHealth::default()
            }
        );
        board.succeeded("relay:a", "http://a/", 200);
        let [a] = board.status([("relay:a", "http://a/")]).try_into().unwrap();
        assert_eq!(
            (a.consecutive_failures, a.failing_since, a.last_success),
            (0, None, Some(200))
        );
        // Removed from the config: no longer reported.
        assert!(board.status([]).is_empty());
    }
}
