use crate::common::{Fixture, WITH_TLS};
use mailrelay_operator::builders::Autoscaler;

fn hpa(spec: &str) -> k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler {
    match Fixture::relay(spec).objects().autoscaler {
        Some(Autoscaler::Hpa(h)) => *h,
        other => panic!("expected an HPA, got {other:?}"),
    }
}

#[test]
fn the_hpa_scales_the_relay_through_its_scale_subresource() {
    let h = hpa(&format!(
        "{WITH_TLS}\nautoscaling: {{minReplicas: 2, maxReplicas: 10}}"
    ));
    let spec = h.spec.unwrap();
    let target = spec.scale_target_ref;
    assert_eq!(target.api_version.as_deref(), Some("mailrelay.io/v1alpha1"));
    assert_eq!(target.kind, "Relay");
    assert_eq!(target.name, "edge");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
}

#[test]
fn cpu_utilisation_is_always_a_metric_and_queue_depth_only_when_set() {
    let h =
        hpa("hostname: mx.example.com\nautoscaling: {maxReplicas: 3, targetCpuUtilization: 60}");
    let metrics = h.spec.unwrap().metrics.unwrap();
    assert_eq!(metrics.len(), 1);
    let cpu = metrics[0].resource.as_ref().unwrap();
    assert_eq!(cpu.name, "cpu");
    assert_eq!(cpu.target.type_, "Utilization");
    assert_eq!(cpu.target.average_utilization, Some(60));

    let h = hpa("hostname: mx.example.com\nautoscaling: {maxReplicas: 3, targetQueueDepth: 500}");
    let metrics = h.spec.unwrap().metrics.unwrap();
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[1].type_, "Pods");
    let pods = metrics[1].pods.as_ref().unwrap();
    assert_eq!(pods.metric.name, "mailrelay_queue_recipients");
    let selector = pods
        .metric
        .selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selector["state"], "pending");
    assert_eq!(pods.target.type_, "AverageValue");
    assert_eq!(pods.target.average_value.as_ref().unwrap().0, "500");
}

#[test]
fn scaling_down_is_one_pod_a_minute_after_five_quiet_minutes() {
    let h = hpa("hostname: mx.example.com\nautoscaling: {maxReplicas: 3}");
    let down = h.spec.unwrap().behavior.unwrap().scale_down.unwrap();
    assert_eq!(down.stabilization_window_seconds, Some(300));
    let p = &down.policies.unwrap()[0];
    assert_eq!(
        (p.type_.as_str(), p.value, p.period_seconds),
        ("Pods", 1, 60)
    );
}

#[test]
fn without_autoscaling_there_is_no_autoscaler() {
    assert!(Fixture::relay(WITH_TLS).objects().autoscaler.is_none());
}
