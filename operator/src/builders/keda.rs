//! The KEDA `ScaledObject` (keda.sh/v1alpha1) of a Relay with
//! `autoscaling.engine: Keda`. KEDA then runs its own HPA against the
//! Relay's scale subresource, as [`hpa`](super::hpa) would.
//!
//! Triggers: `cpu` (utilisation, like the HPA), and with `targetQueueDepth`
//! a `prometheus` trigger on the pending recipients of this Relay's pods,
//! summed; KEDA divides by the threshold to get the replicas, which makes
//! the threshold a per-pod average, as for the HPA's Pods metric.
//!
//! The query assumes Prometheus scrapes the pods with `namespace` and `pod`
//! target labels (PodMonitor/ServiceMonitor and the usual `kubernetes-pods`
//! job do). The pod-name pattern matches this Relay's pods only, not those
//! of a Relay whose name merely starts with this one's.

use kube::Resource;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use mailrelay_crds::Relay;
use mailrelay_crds::config::AutoscalingConfig;
use serde_json::{Value, json};

use super::hpa::{QUEUE_METRIC, QUEUE_STATE, scale_down};
use super::object_meta;
use crate::model::Model;

/// Group, version and kind of the ScaledObject.
pub(crate) fn gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject")
}

/// The Relay's ScaledObject.
pub(crate) fn build(model: &Model, a: &AutoscalingConfig) -> DynamicObject {
    let mut triggers = vec![json!({
        "type": "cpu",
        "metricType": "Utilization",
        "metadata": { "value": a.target_cpu_utilization.to_string() },
    })];
    if let Some(depth) = a.target_queue_depth {
        triggers.push(json!({
            "type": "prometheus",
            "metadata": {
                "serverAddress": model.prometheus_url,
                "query": queue_query(model),
                "threshold": depth.to_string(),
            },
        }));
    }
    let behavior = serde_json::to_value(scale_down()).unwrap_or(Value::Null);
    let mut object = DynamicObject::new(&model.relay.name, &ApiResource::from_gvk(&gvk()));
    object.metadata = object_meta(model, &model.relay.name);
    object.data = json!({
        "spec": {
            "scaleTargetRef": {
                "apiVersion": Relay::api_version(&()),
                "kind": Relay::kind(&()),
                "name": model.relay.name,
            },
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": { "scaleDown": behavior },
                },
            },
            "triggers": triggers,
        }
    });
    object
}

/// PromQL for the Relay's pending recipients across its pods.
pub(crate) fn queue_query(model: &Model) -> String {
    let name = &model.relay.name;
    // Deployment pods are NAME-HASH-SUFFIX, StatefulSet pods NAME-ORDINAL.
    // PromQL regexes are anchored, and neither part holds a '-', so
    // `edge` never matches the pods of `edge-eu`.
    let pods = match model.config.queue.storage {
        Some(_) => format!("{name}-[0-9]+"),
        None => format!("{name}-[a-z0-9]+-[a-z0-9]+"),
    };
    format!(
        "sum({QUEUE_METRIC}{{namespace=\"{}\",pod=~\"{pods}\",{}=\"{}\"}})",
        model.relay.namespace, QUEUE_STATE.0, QUEUE_STATE.1
    )
}
