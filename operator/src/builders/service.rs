//! The Services of a Relay:
//!
//! - `RELAY`: the listeners, as clients and MX records reach them — the
//!   well-known ports (25/587/465) onto the pods' unprivileged ones, with
//!   the type, external traffic policy and annotations of `spec.service`.
//! - `RELAY-peers`: headless, for the pods to find each other (queue
//!   hand-off when a pod drains) and as the StatefulSet's governing
//!   Service. Only ready pods are published: a draining pod must hand its
//!   queue to a peer that accepts mail, never to another draining one.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mailrelay_crds::relay::{ExternalTrafficPolicy, ServiceType};

use super::{handoff, object_meta, peers_service_name, pod};
use crate::model::Model;

/// The listeners' Service.
pub(crate) fn build(model: &Model) -> Service {
    let mut metadata = object_meta(model, &model.relay.name);
    if !model.service.annotations.is_empty() {
        metadata.annotations = Some(model.service.annotations.clone());
    }
    let ports = model
        .config
        .listeners
        .iter()
        .map(|l| ServicePort {
            name: Some(l.name.as_str().into()),
            port: i32::from(l.service_port),
            target_port: Some(IntOrString::String(l.name.as_str().into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        })
        .collect();
    let type_ = match model.service.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    // Only meaningful (and only accepted) for traffic from outside.
    let external_traffic_policy = match model.service.type_ {
        ServiceType::ClusterIP => None,
        _ => model.service.external_traffic_policy.map(|p| match p {
            ExternalTrafficPolicy::Cluster => "Cluster".to_string(),
            ExternalTrafficPolicy::Local => "Local".to_string(),
        }),
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            external_traffic_policy,
            selector: Some(model.relay.selector_labels()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The headless Service of the pods.
pub(crate) fn build_peers(model: &Model) -> Service {
    let mut ports: Vec<ServicePort> = model
        .config
        .listeners
        .iter()
        .map(|l| port(l.name.as_str(), i32::from(l.address.port())))
        .collect();
    ports.push(port(handoff::PORT_NAME, handoff::PORT));
    ports.push(port(pod::HTTP_PORT_NAME, pod::HTTP_PORT));
    Service {
        metadata: object_meta(model, peers_service_name(&model.relay.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(model.relay.selector_labels()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// A headless port: the pod's own port number, by name.
fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}
