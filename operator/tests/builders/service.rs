use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::common::{Fixture, MINIMAL, WITH_TLS};

#[test]
fn the_listener_service_maps_well_known_ports_onto_the_pods_named_ports() {
    let svc = Fixture::relay(WITH_TLS).objects().service;
    assert_eq!(svc.metadata.name.as_deref(), Some("edge"));
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(spec.external_traffic_policy.is_none());
    let ports: Vec<(String, i32, IntOrString)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.target_port.unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            ("smtp".into(), 25, IntOrString::String("smtp".into())),
            (
                "submission".into(),
                587,
                IntOrString::String("submission".into())
            ),
            (
                "submissions".into(),
                465,
                IntOrString::String("submissions".into())
            ),
        ]
    );
    assert_eq!(spec.selector.unwrap().len(), 2);
    assert!(svc.metadata.annotations.is_none());
}

#[test]
fn type_traffic_policy_annotations_and_custom_ports_come_from_the_spec() {
    let svc = Fixture::relay(
        "hostname: mx.example.com
listeners: [{name: smtp, port: 2600, servicePort: 2525}]
service:
  type: LoadBalancer
  externalTrafficPolicy: Local
  annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}",
    )
    .objects()
    .service;
    let annotations = svc.metadata.annotations.unwrap();
    assert_eq!(
        annotations["service.beta.kubernetes.io/aws-load-balancer-type"],
        "nlb"
    );
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.port, 2525);
    assert_eq!(port.target_port, Some(IntOrString::String("smtp".into())));
}

#[test]
fn the_peers_service_is_headless_publishes_only_ready_pods_and_uses_pod_ports() {
    let peers = Fixture::relay(MINIMAL).objects().peers;
    assert_eq!(peers.metadata.name.as_deref(), Some("edge-peers"));
    let spec = peers.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_ne!(spec.publish_not_ready_addresses, Some(true));
    let ports: Vec<(String, i32)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("smtp".into(), 2525),
            ("handoff".into(), 10025),
            ("http".into(), 9090)
        ]
    );
}
