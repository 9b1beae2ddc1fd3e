//! The PodDisruptionBudget: voluntary disruptions (node drains, cluster
//! upgrades) take relay pods one at a time, so each can drain its sessions
//! and hand over its queue while the others keep accepting mail.
//!
//! `maxUnavailable: 1` rather than a `minAvailable`: with one replica a
//! minimum would block every node drain for good.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{object_meta, pod_selector};
use crate::model::Model;

/// The Relay's PodDisruptionBudget.
pub(crate) fn build(model: &Model) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(model, &model.relay.name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            min_available: None,
            selector: Some(pod_selector(model)),
            // A pod that is not running (crash-looping, unschedulable)
            // serves no mail: evicting it costs nothing, and it must not
            // block a drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    }
}
