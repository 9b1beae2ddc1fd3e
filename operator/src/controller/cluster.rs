//! The client and the watch caches the controllers share: what every
//! step that needs the cluster goes through.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use mailrelay_crds::{Blocklist, MailDomain, Relay};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::{ApiError, FIELD_MANAGER};

/// The API client, the Event recorder and the caches of the three kinds.
pub struct Cluster {
    client: Client,
    recorder: Recorder,
    relays: Store<Relay>,
    domains: Store<MailDomain>,
    blocklists: Store<Blocklist>,
}

impl Cluster {
    /// `client` and the caches of the controllers' watches; Events are
    /// published as `reporter`.
    pub fn new(
        client: Client,
        reporter: Reporter,
        relays: Store<Relay>,
        domains: Store<MailDomain>,
        blocklists: Store<Blocklist>,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            relays,
            domains,
            blocklists,
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The cached Relays.
    pub fn relays(&self) -> &Store<Relay> {
        &self.relays
    }

    pub(crate) fn domains(&self) -> &Store<MailDomain> {
        &self.domains
    }

    pub(crate) fn blocklists(&self) -> &Store<Blocklist> {
        &self.blocklists
    }

    /// Every object of kind `K` in namespace `ns`, from the API (not the
    /// cache).
    pub(crate) async fn list<K>(&self, ns: &str) -> Result<Vec<K>, ApiError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| ApiError::new("list", format!("{} in {ns}", K::kind(&())), e))?;
        Ok(list.items)
    }

    /// Server-side apply of a status: only the `status` stanza, with the
    /// operator's field manager, so fields it no longer sets are removed.
    pub(crate) async fn apply_status<K, S>(&self, obj: &K, status: &S) -> Result<(), ApiError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        self.apply_status_as(obj, status, FIELD_MANAGER).await
    }

    /// [`Self::apply_status`] under another field manager: for status
    /// fields another loop than the reconcile owns (so neither removes the
    /// other's by leaving them out).
    pub(crate) async fn apply_status_as<K, S>(
        &self,
        obj: &K,
        status: &S,
        manager: &str,
    ) -> Result<(), ApiError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &kube::api::PatchParams::apply(manager).force(),
            &kube::api::Patch::Apply(&body),
        )
        .await
        .map(drop)
        .map_err(|e| {
            ApiError::new(
                "update status of",
                format!("{} {ns}/{name}", K::kind(&())),
                e,
            )
        })
    }

    /// Publish an Event about `obj`. Events are advisory: a failure is
    /// logged, never fails the reconcile.
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, object = %obj.name_any(), reason, "cannot publish event");
        }
    }
}
