//! Writing a Relay's objects: server-side apply with one field manager,
//! pruning what the Relay no longer needs, and carrying an autoscaler's
//! decision to the workload's scale subresource.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The one field manager of every write the operator makes.
pub(crate) const FIELD_MANAGER: &str = "mailrelay-operator";

/// A failed API call, naming what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {source}")]
pub struct ApiError {
    action: &'static str,
    object: String,
    #[source]
    source: kube::Error,
}

impl ApiError {
    pub(crate) fn new(
        action: &'static str,
        object: impl Into<String>,
        source: kube::Error,
    ) -> Self {
        Self {
            action,
            object: object.into(),
            source,
        }
    }

    /// The API does not know the kind (a CRD such as KEDA's not installed).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(&self.source, kube::Error::Api(s) if s.code == 404)
    }
}

fn params() -> PatchParams {
    // force: the operator is the only writer of what it applies; a field
    // someone else set by hand is taken back rather than left conflicting.
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side apply of a namespaced object of a built-in kind.
pub(crate) async fn apply<K>(client: &Client, obj: &K) -> Result<K, ApiError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map_err(|e| ApiError::new("apply", describe::<K>(&ns, &name), e))
}

/// Create `obj` unless an object of that name exists, which is left as
/// it is: for objects whose content must not be replaced once made (a
/// generated key). `true` when this call created it.
pub(crate) async fn create_if_missing<K>(client: &Client, obj: &K) -> Result<bool, ApiError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let params = kube::api::PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..kube::api::PostParams::default()
    };
    match api.create(&params, obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(ApiError::new("create", describe::<K>(&ns, &name), e)),
    }
}

/// The KEDA `ScaledObject` API (a CRD; absent where KEDA is not installed).
pub(crate) fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

/// Server-side apply of a KEDA `ScaledObject`.
pub(crate) async fn apply_dynamic(client: &Client, obj: &DynamicObject) -> Result<(), ApiError> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &scaled_object_resource());
    api.patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map(drop)
        .map_err(|e| ApiError::new("apply", format!("ScaledObject {ns}/{name}"), e))
}

/// The field manager that owns a workload's `spec.replicas` while an
/// autoscaler decides the count: separate from [`FIELD_MANAGER`], so the
/// main apply can leave `replicas` out without the API server removing the
/// field (and defaulting it to 1) when ownership moves.
pub(crate) const REPLICAS_MANAGER: &str = "mailrelay-operator-replicas";

/// Apply only `spec.replicas` of workload `K` `ns/name`, as
/// [`REPLICAS_MANAGER`]. `Ok(false)` when the workload does not exist yet
/// (the partial object cannot create it: the API server refuses it as
/// invalid).
pub(crate) async fn apply_replicas<K>(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
) -> Result<bool, ApiError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name, "namespace": ns },
        "spec": { "replicas": replicas },
    });
    let params = PatchParams::apply(REPLICAS_MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(&body)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => Ok(false),
        Err(e) => Err(ApiError::new(
            "apply replicas of",
            describe::<K>(ns, name),
            e,
        )),
    }
}

fn describe<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> String {
    format!("{} {ns}/{name}", K::kind(&()))
}

/// The kinds a Relay may stop needing while it lives: shards of a config
/// that shrank, the workload of the other kind after queue storage was
/// turned on or off, the autoscaler after autoscaling changed. Services,
/// the PDB, the ServiceAccount and the NetworkPolicy always exist and go
/// with the Relay through their owner reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Keep {
    pub config_maps: BTreeSet<String>,
    pub deployments: BTreeSet<String>,
    pub stateful_sets: BTreeSet<String>,
    pub hpas: BTreeSet<String>,
    pub scaled_objects: BTreeSet<String>,
}

/// What the workload reported back from its apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkloadState {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// Pods that exist, ready, and of the current template.
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
}

impl WorkloadState {
    pub(crate) fn of_deployment(d: &Deployment) -> Self {
        let s = d.status.clone().unwrap_or_default();
        Self {
            generation: d.metadata.generation,
            observed_generation: s.observed_generation,
            replicas: s.replicas.unwrap_or(0),
            ready: s.ready_replicas.unwrap_or(0),
            updated: s.updated_replicas.unwrap_or(0),
        }
    }

    pub(crate) fn of_stateful_set(s: &StatefulSet) -> Self {
        let st = s.status.clone().unwrap_or_default();
        Self {
            generation: s.metadata.generation,
            observed_generation: st.observed_generation,
            replicas: st.replicas,
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
        }
    }
}

/// What applying the plan found out.
#[derive(Clone, Debug, Default)]
pub(crate) struct Applied {
    pub workload: WorkloadState,
    pub external: Vec<String>,
    /// The Relay chose KEDA but the cluster has no ScaledObject kind.
    pub keda_missing: bool,
    pub keep: Keep,
}

/// Delete the objects of the prunable kinds that the Relay with `uid`
/// controls and no longer needs. Only objects with the Relay's labels and
/// a controller reference to its uid are ever deleted.
pub(crate) async fn prune(
    client: &Client,
    ns: &str,
    selector: &str,
    uid: &str,
    keep: &Keep,
) -> Result<Vec<String>, ApiError> {
    let mut deleted = Vec::new();
    deleted.extend(prune_kind::<ConfigMap>(client, ns, selector, uid, &keep.config_maps).await?);
    deleted.extend(prune_kind::<Deployment>(client, ns, selector, uid, &keep.deployments).await?);
    deleted
        .extend(prune_kind::<StatefulSet>(client, ns, selector, uid, &keep.stateful_sets).await?);
    deleted.extend(
        prune_kind::<HorizontalPodAutoscaler>(client, ns, selector, uid, &keep.hpas).await?,
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &scaled_object_resource());
    match prune_in(
        &api,
        "ScaledObject",
        ns,
        selector,
        uid,
        &keep.scaled_objects,
    )
    .await
    {
        Ok(names) => deleted.extend(names),
        // KEDA not installed: there is nothing of that kind to prune.
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    Ok(deleted)
}

async fn prune_kind<K>(
    client: &Client,
    ns: &str,
    selector: &str,
    uid: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, ApiError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    prune_in(&api, &K::kind(&()), ns, selector, uid, keep).await
}

async fn prune_in<K>(
    api: &Api<K>,
    kind: &str,
    ns: &str,
    selector: &str,
    uid: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, ApiError>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await
        .map_err(|e| ApiError::new("list", format!("{kind} in {ns}"), e))?;
    let mut deleted = Vec::new();
    for item in list.items {
        let name = item.metadata.name.clone().unwrap_or_default();
        let controlled = item
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        if keep.contains(&name) || !controlled {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(format!("{kind} {name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(ApiError::new("delete", format!("{kind} {ns}/{name}"), e)),
        }
    }
    Ok(deleted)
}
