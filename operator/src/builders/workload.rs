//! The relay pods' controller: a StatefulSet when the Relay asks for
//! persistent queue storage (`spec.queue.storage`: one claim per pod, kept
//! across restarts), otherwise a Deployment with the spool on an emptyDir.
//!
//! `spec.replicas` is set from [`Model::replicas`] unless an autoscaler
//! owns the count: then it is left out of the applied object (so the
//! operator's field manager never owns it) and the reconciler writes the
//! autoscaler's decision through the workload's scale subresource.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mailrelay_crds::config::QueueStorageConfig;

use super::volumes::SPOOL_VOLUME;
use super::{object_meta, peers_service_name, pod, pod_selector};
use crate::model::Model;

/// The workload of a Relay.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
}

/// The workload, mounting `config_maps` (in order) as the config.
pub(crate) fn build(model: &Model, config_maps: &[String]) -> Workload {
    match &model.config.queue.storage {
        Some(storage) => Workload::StatefulSet(stateful_set(model, config_maps, storage)),
        None => Workload::Deployment(deployment(model, config_maps)),
    }
}

fn applied_replicas(model: &Model) -> Option<i32> {
    (!model.autoscaled).then_some(model.replicas)
}

fn deployment(model: &Model, config_maps: &[String]) -> Deployment {
    Deployment {
        metadata: object_meta(model, &model.relay.name),
        spec: Some(DeploymentSpec {
            replicas: applied_replicas(model),
            selector: pod_selector(model),
            template: pod::template(model, config_maps, false),
            // Bring the new pod up before an old one starts draining, so
            // capacity never drops during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn stateful_set(
    model: &Model,
    config_maps: &[String],
    storage: &QueueStorageConfig,
) -> StatefulSet {
    StatefulSet {
        metadata: object_meta(model, &model.relay.name),
        spec: Some(StatefulSetSpec {
            replicas: applied_replicas(model),
            selector: pod_selector(model),
            service_name: Some(peers_service_name(&model.relay.name)),
            template: pod::template(model, config_maps, true),
            volume_claim_templates: Some(vec![spool_claim(model, storage)]),
            // Relay pods do not depend on each other: start and stop them
            // together rather than one by one.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: None,
            }),
            // A claim may hold queued mail: scaling down or deleting the
            // Relay never deletes it. A pod that comes back with the same
            // ordinal picks its queue up again.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn spool_claim(model: &Model, storage: &QueueStorageConfig) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(SPOOL_VOLUME.into()),
            labels: Some(model.relay.labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                limits: None,
            }),
            storage_class_name: storage.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}
