//! The desired objects of one Relay, as pure functions of its [`Model`]:
//! no client, no I/O, the same model always gives the same objects.
//!
//! One file per kind; `pod` and `volumes` hold the pod template the two
//! workload kinds share. Every object carries the common labels, the
//! Relay's namespace and (when the Relay's uid is known) a controller
//! reference to it, so deleting the Relay deletes them.

pub mod configmap;
pub(crate) mod handoff;
pub(crate) mod hpa;
pub(crate) mod keda;
pub(crate) mod networkpolicy;
pub(crate) mod pdb;
pub(crate) mod pod;
pub(crate) mod rbac;
pub(crate) mod service;
pub(crate) mod serviceaccount;
pub(crate) mod volumes;
pub(crate) mod webhook_egress;
pub(crate) mod workload;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::core::DynamicObject;
use mailrelay_crds::relay::AutoscalingEngine;
use serde::Serialize;

use crate::model::Model;
pub use workload::Workload;

/// Why the objects of a Relay cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Relay {relay}: {source}")]
    Config {
        relay: String,
        source: mailrelay_crds::configformat::FormatError,
    },
}

/// What drives the replica count, when something does.
#[derive(Clone, Debug, PartialEq)]
pub enum Autoscaler {
    Hpa(Box<HorizontalPodAutoscaler>),
    /// A KEDA `ScaledObject` (a custom resource k8s-openapi has no type for).
    Keda(Box<DynamicObject>),
}

/// Every object the operator keeps for one Relay.
#[derive(Clone, Debug, PartialEq)]
pub struct Objects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_maps: Vec<ConfigMap>,
    pub service: Service,
    pub peers: Service,
    pub workload: Workload,
    pub pdb: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    pub autoscaler: Option<Autoscaler>,
}

/// One object of any kind, for serialising them in one stream.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Document<'a> {
    ServiceAccount(&'a ServiceAccount),
    Role(&'a Role),
    RoleBinding(&'a RoleBinding),
    ConfigMap(&'a ConfigMap),
    Service(&'a Service),
    Deployment(&'a Deployment),
    StatefulSet(&'a StatefulSet),
    PodDisruptionBudget(&'a PodDisruptionBudget),
    NetworkPolicy(&'a NetworkPolicy),
    HorizontalPodAutoscaler(&'a HorizontalPodAutoscaler),
    Dynamic(&'a DynamicObject),
}

impl Document<'_> {
    /// `Kind name`, for comments and messages.
    pub fn describe(&self) -> String {
        fn name(m: &ObjectMeta) -> &str {
            m.name.as_deref().unwrap_or_default()
        }
        let (kind, meta) = match self {
            Self::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Self::Role(o) => ("Role", &o.metadata),
            Self::RoleBinding(o) => ("RoleBinding", &o.metadata),
            Self::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Self::Service(o) => ("Service", &o.metadata),
            Self::Deployment(o) => ("Deployment", &o.metadata),
            Self::StatefulSet(o) => ("StatefulSet", &o.metadata),
            Self::PodDisruptionBudget(o) => ("PodDisruptionBudget", &o.metadata),
            Self::NetworkPolicy(o) => ("NetworkPolicy", &o.metadata),
            Self::HorizontalPodAutoscaler(o) => ("HorizontalPodAutoscaler", &o.metadata),
            Self::Dynamic(o) => (
                o.types.as_ref().map_or("Object", |t| t.kind.as_str()),
                &o.metadata,
            ),
        };
        format!("{kind} {}", name(meta))
    }
}

impl Objects {
    /// The objects in apply order: what others refer to comes first.
    pub fn documents(&self) -> Vec<Document<'_>> {
        let mut docs = vec![
            Document::ServiceAccount(&self.service_account),
            Document::Role(&self.role),
            Document::RoleBinding(&self.role_binding),
        ];
        docs.extend(self.config_maps.iter().map(Document::ConfigMap));
        docs.push(Document::Service(&self.service));
        docs.push(Document::Service(&self.peers));
        docs.push(match &self.workload {
            Workload::Deployment(d) => Document::Deployment(d),
            Workload::StatefulSet(s) => Document::StatefulSet(s),
        });
        docs.push(Document::PodDisruptionBudget(&self.pdb));
        docs.push(Document::NetworkPolicy(&self.network_policy));
        match &self.autoscaler {
            Some(Autoscaler::Hpa(h)) => docs.push(Document::HorizontalPodAutoscaler(h)),
            Some(Autoscaler::Keda(k)) => docs.push(Document::Dynamic(k)),
            None => {}
        }
        docs
    }
}

/// Build every object of the Relay.
pub fn build_all(model: &Model) -> Result<Objects, BuildError> {
    let config_maps = configmap::build(model).map_err(|source| BuildError::Config {
        relay: format!("{}/{}", model.relay.namespace, model.relay.name),
        source,
    })?;
    let config_map_names: Vec<String> = config_maps
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let autoscaler = model
        .config
        .scaling
        .autoscaling
        .as_ref()
        .map(|a| match a.engine {
            AutoscalingEngine::Hpa => Autoscaler::Hpa(Box::new(hpa::build(model, a))),
            AutoscalingEngine::Keda => Autoscaler::Keda(Box::new(keda::build(model, a))),
        });
    Ok(Objects {
        service_account: serviceaccount::build(model),
        role: rbac::role(model, &config_map_names),
        role_binding: rbac::role_binding(model),
        service: service::build(model),
        peers: service::build_peers(model),
        workload: workload::build(model, &config_map_names),
        pdb: pdb::build(model),
        network_policy: networkpolicy::build(model),
        config_maps,
        autoscaler,
    })
}

/// Metadata of an object named `name` made for the model's Relay.
pub(crate) fn object_meta(model: &Model, name: impl Into<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(model.relay.namespace.clone()),
        labels: Some(model.relay.labels.clone()),
        owner_references: model.relay.owner_reference().map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The selector of the Relay's pods.
pub(crate) fn pod_selector(model: &Model) -> LabelSelector {
    LabelSelector {
        match_labels: Some(model.relay.selector_labels()),
        match_expressions: None,
    }
}

/// Name of the headless Service of the relay pods.
pub(crate) fn peers_service_name(relay: &str) -> String {
    format!("{relay}-peers")
}
