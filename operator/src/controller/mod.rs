//! The three controllers and what they share.
//!
//! The `Relay` is the unit of reconciliation: its reconcile compiles the
//! MailDomains and Blocklists it selects, applies its objects and writes
//! its status. MailDomain and Blocklist reconciles only write status: what
//! Relays serve them, what is wrong with them. They read it from the
//! [`Outcome`] each Relay reconcile leaves behind, and are all re-run when
//! an outcome changes.

pub mod blocklist;
pub mod domain;
pub mod relay;

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use mailrelay_crds::compile::Problem;
use mailrelay_crds::compile::selector::Selector;
use mailrelay_crds::{Blocklist, MailDomain, Relay};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::apply::{ApiError, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::model::{Settings, common_labels};
use crate::mx::MxChecker;

/// Why a reconcile failed; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// What one Relay's last reconcile found, for the status of the
/// MailDomains and Blocklists (and for mapping their changes to Relays).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The Relay's spec is invalid: its running config was kept.
    pub invalid: bool,
    /// Names of the MailDomains in its config.
    pub domains: BTreeSet<String>,
    /// Names of the Blocklists in its config.
    pub blocklists: BTreeSet<String>,
    /// Problems of the MailDomains and Blocklists it left out.
    pub problems: Vec<Problem>,
    pub ready: bool,
    /// External addresses of its Service (load-balancer IPs and host
    /// names, external IPs), for the MX check.
    pub external: Vec<String>,
}

/// The kinds a Relay selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selected {
    MailDomain,
    Blocklist,
}

impl Selected {
    fn kind(self) -> &'static str {
        match self {
            Self::MailDomain => "MailDomain",
            Self::Blocklist => "Blocklist",
        }
    }
}

impl Outcome {
    /// Does this Relay's config (or its problem list) involve `kind/name`?
    fn involves(&self, kind: Selected, name: &str) -> bool {
        let listed = match kind {
            Selected::MailDomain => self.domains.contains(name),
            Selected::Blocklist => self.blocklists.contains(name),
        };
        listed
            || self
                .problems
                .iter()
                .any(|p| p.object.kind == kind.kind() && p.object.name == name)
    }
}

/// Everything a reconcile needs; shared by the three controllers.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub relays: Store<Relay>,
    pub domains: Store<MailDomain>,
    pub blocklists: Store<Blocklist>,
    /// Per Relay (namespace, name), its last [`Outcome`].
    pub outcomes: RwLock<BTreeMap<(String, String), Outcome>>,
    /// Wakes the MailDomain and Blocklist controllers when an outcome
    /// changes, so they re-read it.
    pub changed: Vec<mpsc::UnboundedSender<()>>,
    pub metrics: Arc<Metrics>,
    pub mx: Option<MxChecker>,
    /// The resourceVersion each object had when its last reconcile began,
    /// by (kind, namespace, name): what the pending gauge compares with.
    pub reconciled: Mutex<HashMap<(&'static str, String, String), String>>,
    /// The status last written per object uid. The cache a reconcile reads
    /// its object from can lag the operator's own status write (the next
    /// reconcile often starts before the watch delivers it): comparing with
    /// this too keeps that pass from writing — and announcing — it twice.
    pub written: Mutex<HashMap<String, serde_json::Value>>,
    /// When the controllers started: until a grace period has passed, a
    /// Relay without an outcome is one not reconciled *yet*.
    pub started: std::time::Instant,
    /// Hand-off Secrets known to exist (created, or found), by (namespace,
    /// name), and when: the operator may not watch Secrets, so it asks the
    /// API again only after [`SECRET_RECHECK`].
    pub secrets: Mutex<HashMap<(String, String), std::time::Instant>>,
}

/// How long a hand-off Secret known to exist is not asked for again: one
/// deleted by hand is recreated within this time.
pub const SECRET_RECHECK: std::time::Duration = std::time::Duration::from_secs(600);

impl Context {
    /// The newest status known for `obj`: the one last written, when the
    /// cache has not caught up with it.
    pub fn newest_status<K: Resource, S: serde::de::DeserializeOwned>(&self, obj: &K) -> Option<S> {
        let uid = obj.meta().uid.clone()?;
        let w = self.written.lock().ok()?;
        serde_json::from_value(w.get(&uid)?.clone()).ok()
    }

    /// Remember the status written for `obj`.
    pub fn wrote<K: Resource, S: Serialize>(&self, obj: &K, status: &S) {
        if let (Some(uid), Ok(json), Ok(mut w)) = (
            obj.meta().uid.clone(),
            serde_json::to_value(status),
            self.written.lock(),
        ) {
            w.insert(uid, json);
        }
    }

    /// Note that a reconcile of `obj` begins at its current version.
    pub fn begin<K: Resource>(&self, kind: &'static str, obj: &K) {
        let meta = obj.meta();
        let key = (
            kind,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        if let Ok(mut map) = self.reconciled.lock() {
            map.insert(key, meta.resource_version.clone().unwrap_or_default());
        }
    }

    /// Objects of `store` whose version no reconcile has begun with.
    fn pending<K: Resource<DynamicType = ()> + Clone>(
        &self,
        kind: &'static str,
        store: &Store<K>,
    ) -> usize {
        let Ok(map) = self.reconciled.lock() else {
            return 0;
        };
        store
            .state()
            .iter()
            .filter(|o| {
                let meta = o.meta();
                let key = (
                    kind,
                    meta.namespace.clone().unwrap_or_default(),
                    meta.name.clone().unwrap_or_default(),
                );
                let current = meta.resource_version.clone().unwrap_or_default();
                map.get(&key) != Some(&current)
            })
            .count()
    }

    /// Refresh the pending gauges.
    pub fn update_pending(&self) {
        self.metrics
            .set_pending("Relay", self.pending("Relay", &self.relays));
        self.metrics
            .set_pending("MailDomain", self.pending("MailDomain", &self.domains));
        self.metrics
            .set_pending("Blocklist", self.pending("Blocklist", &self.blocklists));
    }

    /// Record a Relay's outcome; wake the status controllers if it changed.
    pub fn set_outcome(&self, ns: &str, name: &str, outcome: Option<Outcome>) {
        let key = (ns.to_string(), name.to_string());
        let changed = match self.outcomes.write() {
            Ok(mut map) => match outcome {
                Some(o) => map.insert(key, o.clone()).as_ref() != Some(&o),
                None => map.remove(&key).is_some(),
            },
            Err(_) => false,
        };
        if changed {
            for tx in &self.changed {
                let _ = tx.send(());
            }
        }
    }

    /// Outcomes of the Relays of `ns` that still exist, by name, and the
    /// names of those without one (not reconciled yet, or failing).
    pub fn outcomes_in(&self, ns: &str) -> (BTreeMap<String, Outcome>, Vec<String>) {
        let (mut out, mut missing) = (BTreeMap::new(), Vec::new());
        let Ok(map) = self.outcomes.read() else {
            return (out, missing);
        };
        for relay in self.relays.state() {
            if relay.namespace().as_deref() != Some(ns) || relay.meta().deletion_timestamp.is_some()
            {
                continue;
            }
            let name = relay.name_any();
            match map.get(&(ns.to_string(), name.clone())) {
                Some(o) => {
                    out.insert(name, o.clone());
                }
                None => missing.push(name),
            }
        }
        (out, missing)
    }

    /// Right after start-up Relays without an outcome are simply not
    /// reconciled yet: status written now would flap. The caller looks
    /// again after this long instead.
    pub fn settling(&self) -> Option<std::time::Duration> {
        let grace = std::time::Duration::from_secs(60);
        grace
            .checked_sub(self.started.elapsed())
            .map(|left| left.max(std::time::Duration::from_secs(5)))
    }

    /// Publish an Event about `obj`. Events are advisory: a failure is
    /// logged, never fails the reconcile.
    pub async fn event<K: Resource<DynamicType = ()>>(
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

/// The Relays of `ns` whose domain (or blocklist) selector matches
/// `labels`, or whose last outcome involves the object: so a relabelled
/// MailDomain reaches both the Relay that gains it and the one that loses it.
pub fn relays_for(
    relays: &Store<Relay>,
    outcomes: &RwLock<BTreeMap<(String, String), Outcome>>,
    kind: Selected,
    meta: &kube::api::ObjectMeta,
) -> Vec<ObjectRef<Relay>> {
    let ns = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let outcomes = outcomes.read().ok();
    relays
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .filter(|r| {
            let selector = match kind {
                Selected::MailDomain => r.spec.domain_selector.as_ref(),
                Selected::Blocklist => r.spec.blocklist_selector.as_ref(),
            };
            // A malformed selector selects nothing; the Relay's own status
            // says why.
            let selects = Selector::parse(selector).is_ok_and(|s| s.matches(meta.labels.as_ref()));
            let involved = outcomes.as_ref().is_some_and(|o| {
                o.get(&(ns.clone(), r.name_any()))
                    .is_some_and(|o| o.involves(kind, &name))
            });
            selects || involved
        })
        .map(|r| ObjectRef::from_obj(&**r))
        .collect()
}

/// Label selector of the objects the operator makes (for its watches).
pub fn managed_selector() -> String {
    let labels = common_labels("");
    let managed_by = labels
        .get("app.kubernetes.io/managed-by")
        .cloned()
        .unwrap_or_default();
    format!("app.kubernetes.io/managed-by={managed_by}")
}

/// Server-side apply of a status: only the `status` stanza, with the
/// operator's field manager, so fields it no longer sets are removed.
pub async fn apply_status<K, S>(client: &Client, obj: &K, status: &S) -> Result<(), ApiError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
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

/// Back off on errors: the error is already counted and logged.
pub fn error_policy<K>(_obj: Arc<K>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(15))
}

/// Run the three controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    mx: Option<MxChecker>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;

    let relays_api: Api<Relay> = Api::all(client.clone());
    let domains_api: Api<MailDomain> = Api::all(client.clone());
    let blocklists_api: Api<Blocklist> = Api::all(client.clone());
    let owned = watcher::Config::default().labels(&managed_selector());
    let all = watcher::Config::default();

    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stop = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    let relay_controller = Controller::new(relays_api.clone(), all.clone());
    let domain_controller = Controller::new(domains_api.clone(), all.clone());
    let blocklist_controller = Controller::new(blocklists_api.clone(), all.clone());
    let (domain_tx, domain_rx) = mpsc::unbounded_channel();
    let (blocklist_tx, blocklist_rx) = mpsc::unbounded_channel();

    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings,
        relays: relay_controller.store(),
        domains: domain_controller.store(),
        blocklists: blocklist_controller.store(),
        outcomes: RwLock::default(),
        changed: vec![domain_tx, blocklist_tx],
        metrics: metrics.clone(),
        mx,
        reconciled: Mutex::default(),
        written: Mutex::default(),
        started: std::time::Instant::now(),
        secrets: Mutex::default(),
    });
    let gauges = {
        let ctx = Arc::clone(&ctx);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                ctx.update_pending();
            }
        }
    };

    let (relays, outcomes) = (ctx.relays.clone(), Arc::clone(&ctx));
    let (relays2, outcomes2) = (ctx.relays.clone(), Arc::clone(&ctx));
    let relay_run = relay_controller
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned.clone())
        .owns(Api::<Role>::all(client.clone()), owned.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), owned.clone())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned.clone(),
        )
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            owned.clone(),
        )
        .watches(domains_api.clone(), all.clone(), move |d: MailDomain| {
            relays_for(
                &relays,
                &outcomes.outcomes,
                Selected::MailDomain,
                &d.metadata,
            )
        })
        .watches(blocklists_api.clone(), all.clone(), move |b: Blocklist| {
            relays_for(
                &relays2,
                &outcomes2.outcomes,
                Selected::Blocklist,
                &b.metadata,
            )
        })
        .graceful_shutdown_on(stop(&shutdown_tx))
        .run(relay::reconcile, error_policy, Arc::clone(&ctx))
        .for_each(report("Relay", Arc::clone(&ctx)));

    let (domains_store, blocklists_store) = (ctx.domains.clone(), ctx.blocklists.clone());
    let domain_run = domain_controller
        .watches(relays_api.clone(), all.clone(), move |r: Relay| {
            in_namespace(&domains_store, r.namespace().as_deref())
        })
        .reconcile_all_on(tokio_stream(domain_rx))
        .graceful_shutdown_on(stop(&shutdown_tx))
        .run(domain::reconcile, error_policy, Arc::clone(&ctx))
        .for_each(report("MailDomain", Arc::clone(&ctx)));
    let blocklist_run = blocklist_controller
        .watches(relays_api, all, move |r: Relay| {
            in_namespace(&blocklists_store, r.namespace().as_deref())
        })
        .reconcile_all_on(tokio_stream(blocklist_rx))
        .graceful_shutdown_on(stop(&shutdown_tx))
        .run(blocklist::reconcile, error_policy, Arc::clone(&ctx))
        .for_each(report("Blocklist", Arc::clone(&ctx)));

    let trigger = async move {
        shutdown.await;
        let _ = shutdown_tx.send(());
    };
    tokio::select! {
        _ = async { tokio::join!(relay_run, domain_run, blocklist_run, trigger) } => {}
        () = gauges => {}
    }
}

fn in_namespace<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    ns: Option<&str>,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == ns)
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

fn tokio_stream(mut rx: mpsc::UnboundedReceiver<()>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What to do with each result of a controller's stream.
/// One result of a controller's stream.
type Reported<K, E1, E2> = Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E1, E2>>;

fn report<K, E1, E2>(
    kind: &'static str,
    ctx: Arc<Context>,
) -> impl FnMut(Reported<K, E1, E2>) -> futures::future::Ready<()>
where
    K: Resource,
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    use kube::runtime::controller::Error as E;
    move |result| {
        match &result {
            // Counted and logged by the reconcile itself.
            Err(E::ReconcilerFailed(..)) | Ok(_) => {}
            // An object deleted since it was queued: forget what we kept
            // about it (the Relay's outcome, so its MailDomains and
            // Blocklists stop naming it; the version last reconciled).
            Err(E::ObjectNotFound(gone)) => {
                let ns = gone.namespace.clone().unwrap_or_default();
                if kind == "Relay" {
                    ctx.set_outcome(&ns, &gone.name, None);
                }
                if let Ok(mut m) = ctx.reconciled.lock() {
                    m.remove(&(kind, ns, gone.name.clone()));
                }
            }
            Err(e) => {
                ctx.metrics.controller_error(kind);
                tracing::warn!(kind, error = %e, "controller");
            }
        }
        futures::future::ready(())
    }
}
