//! The `autoscaling/v2` HorizontalPodAutoscaler of a Relay with
//! `autoscaling.engine: Hpa`.
//!
//! It scales the Relay itself, through its scale subresource (which reads
//! `spec.replicas`, `status.replicas` and `status.selector`), not the
//! workload: `kubectl get relay` and the HPA then agree on one replica
//! count, and the operator carries it to the workload.
//!
//! Metrics: CPU utilisation (needs a CPU request), and with
//! `targetQueueDepth` the average of the per-pod gauge
//! `mailrelay_queue_recipients{state="pending"}` — recipients waiting for a
//! delivery slot. Deferred ones wait for a remote host, which more pods
//! would not bring back sooner. The Pods metric needs the custom metrics
//! API (for example prometheus-adapter).

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Resource;
use mailrelay_crds::Relay;
use mailrelay_crds::config::AutoscalingConfig;

use super::object_meta;
use crate::model::Model;

/// The relay's queue gauge, as Prometheus (and so the metrics API) names it.
pub(crate) const QUEUE_METRIC: &str = "mailrelay_queue_recipients";
/// The gauge's label and value that count waiting work.
pub(crate) const QUEUE_STATE: (&str, &str) = ("state", "pending");

/// Scaling down drains a pod and hands its queue to a peer: one pod a
/// minute at most, after five minutes of lower load.
pub(crate) const SCALE_DOWN_WINDOW_SECONDS: i32 = 300;

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The Relay's HorizontalPodAutoscaler.
pub(crate) fn build(model: &Model, a: &AutoscalingConfig) -> HorizontalPodAutoscaler {
    let mut metrics = vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(to_i32(a.target_cpu_utilization)),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }];
    if let Some(depth) = a.target_queue_depth {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: QUEUE_METRIC.into(),
                    selector: Some(LabelSelector {
                        match_labels: Some([(QUEUE_STATE.0.into(), QUEUE_STATE.1.into())].into()),
                        match_expressions: None,
                    }),
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(depth.to_string())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    HorizontalPodAutoscaler {
        metadata: object_meta(model, &model.relay.name),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: scale_target(model),
            min_replicas: Some(to_i32(a.min_replicas)),
            max_replicas: to_i32(a.max_replicas),
            metrics: Some(metrics),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(scale_down()),
                scale_up: None,
            }),
        }),
        status: None,
    }
}

/// The Relay, through its scale subresource.
pub(crate) fn scale_target(model: &Model) -> CrossVersionObjectReference {
    CrossVersionObjectReference {
        api_version: Some(Relay::api_version(&()).into_owned()),
        kind: Relay::kind(&()).into_owned(),
        name: model.relay.name.clone(),
    }
}

/// Slow scale-down, shared with the KEDA ScaledObject's HPA.
pub(crate) fn scale_down() -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(SCALE_DOWN_WINDOW_SECONDS),
        select_policy: Some("Min".into()),
        policies: Some(vec![HPAScalingPolicy {
            type_: "Pods".into(),
            value: 1,
            period_seconds: 60,
        }]),
        ..HPAScalingRules::default()
    }
}
