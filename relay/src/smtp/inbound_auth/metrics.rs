//! Counters of inbound authentication results and decisions. Labels are
//! fixed words (method, RFC 8601 result, action), never message text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::results::AuthResults;
use super::verdict::Action;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabel {
    /// `spf_helo`, `spf_mailfrom`, `dkim`, `dmarc` or `arc`.
    pub method: &'static str,
    /// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`, `permerror`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabel {
    /// `accept`, `quarantine`, `reject`, `defer`, or `unchecked` (policy Accept).
    pub action: &'static str,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct AuthMetrics {
    pub results: Family<MethodLabel, Counter>,
    pub actions: Family<ActionLabel, Counter>,
}

impl AuthMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "inbound_auth_results",
            "Inbound SPF/DKIM/DMARC/ARC results on the smtp listener, by method and result (one per DKIM signature)",
            m.results.clone(),
        );
        registry.register(
            "inbound_auth_actions",
            "What inbound authentication decided per message",
            m.actions.clone(),
        );
        m
    }

    pub(crate) fn record(&self, r: &AuthResults, action: &Action) {
        let count = |method, result| {
            self.results
                .get_or_create(&MethodLabel { method, result })
                .inc();
        };
        count("spf_helo", r.spf_helo.result.as_str());
        count("spf_mailfrom", r.spf_mailfrom.result.as_str());
        if r.dkim.is_empty() {
            count("dkim", "none");
        }
        for d in &r.dkim {
            count("dkim", d.result.as_str());
        }
        count("dmarc", r.dmarc.result.as_str());
        count("arc", r.arc.result.as_str());
        self.action(action.as_str());
    }

    pub(crate) fn action(&self, action: &'static str) {
        self.actions.get_or_create(&ActionLabel { action }).inc();
    }
}
