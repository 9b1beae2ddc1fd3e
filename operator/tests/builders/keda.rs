use mailrelay_operator::builders::Autoscaler;
use serde_json::json;

use crate::common::Fixture;

fn scaled_object(spec: &str) -> serde_json::Value {
    match Fixture::relay(spec).objects().autoscaler {
        Some(Autoscaler::Keda(k)) => serde_json::to_value(&k).unwrap(),
        other => panic!("expected a ScaledObject, got {other:?}"),
    }
}

#[test]
fn the_scaled_object_targets_the_relay_with_cpu_and_queue_depth_triggers() {
    let so = scaled_object(
        "hostname: mx.example.com
autoscaling: {engine: Keda, minReplicas: 2, maxReplicas: 8, targetCpuUtilization: 65, targetQueueDepth: 400}",
    );
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["kind"], "ScaledObject");
    assert_eq!(so["metadata"]["name"], "edge");
    let spec = &so["spec"];
    assert_eq!(
        spec["scaleTargetRef"],
        json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "name": "edge"})
    );
    assert_eq!(
        (
            spec["minReplicaCount"].clone(),
            spec["maxReplicaCount"].clone()
        ),
        (json!(2), json!(8))
    );
    assert_eq!(
        spec["triggers"][0],
        json!({"type": "cpu", "metricType": "Utilization", "metadata": {"value": "65"}})
    );
    let prom = &spec["triggers"][1];
    assert_eq!(prom["type"], "prometheus");
    assert_eq!(
        prom["metadata"]["serverAddress"],
        "http://prometheus.test:9090"
    );
    assert_eq!(prom["metadata"]["threshold"], "400");
    assert_eq!(
        prom["metadata"]["query"],
        "sum(mailrelay_queue_recipients{namespace=\"mail\",pod=~\"edge-[a-z0-9]+-[a-z0-9]+\",state=\"pending\"})"
    );
    assert_eq!(
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
}

#[test]
fn statefulset_pods_are_matched_by_ordinal_and_without_a_depth_only_cpu_counts() {
    let so = scaled_object(
        "hostname: mx.example.com
queue: {storage: {size: 1Gi}}
autoscaling: {engine: Keda, maxReplicas: 8}",
    );
    let triggers = so["spec"]["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 1);
    assert_eq!(triggers[0]["type"], "cpu");

    let so = scaled_object(
        "hostname: mx.example.com
queue: {storage: {size: 1Gi}}
autoscaling: {engine: Keda, maxReplicas: 8, targetQueueDepth: 10}",
    );
    let query = so["spec"]["triggers"][1]["metadata"]["query"]
        .as_str()
        .unwrap();
    assert!(query.contains("pod=~\"edge-[0-9]+\""), "{query}");
}
