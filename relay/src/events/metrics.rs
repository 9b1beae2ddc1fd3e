//! The webhooks' backlog and results, for Prometheus.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
