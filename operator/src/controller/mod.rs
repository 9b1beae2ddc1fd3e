//! The three controllers and what they share.
//!
//! The `Relay` is the unit of reconciliation: its reconcile compiles the
//! MailDomains and Blocklists it selects, applies its objects and writes
//! its status. MailDomain and Blocklist reconciles only write status: what
//! Relays serve them, what is wrong with them. They read it from the
//! `Outcome` each Relay reconcile leaves behind, and are all re-run when
//! an outcome changes.

pub mod blocklist;
mod cluster;
pub mod domain;
mod fleet;
mod outcomes;
mod pending;
pub mod relay;
mod reports;
mod statuses;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use mailrelay_crds::compile::selector::Selector;
use mailrelay_crds::{Blocklist, MailDomain, Relay};
use tokio::sync::mpsc;

pub use cluster::Cluster;
pub use fleet::FleetSettings;
pub(crate) use outcomes::Outcome;
pub use outcomes::Selected;

use crate::apply::ApiError;
use crate::metrics::Metrics;
use crate::model::{Settings, common_labels};
use crate::mx::MxChecker;
use outcomes::OutcomeBook;
use pending::Pending;
use statuses::StatusCache;

/// Why a reconcile failed; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Everything a reconcile needs; shared by the three controllers.
pub struct Context {
    cluster: Cluster,
    settings: Settings,
    metrics: Arc<Metrics>,
    mx: Option<MxChecker>,
    outcomes: OutcomeBook,
    statuses: StatusCache,
    pending: Pending,
    handoff: relay::HandoffSecrets,
    /// What the pods say of their event webhooks.
    pub(crate) webhook_health: crate::fleet::health::HealthBook,
}

impl Context {
    /// `changed` wakes the MailDomain and Blocklist controllers when a
    /// Relay's outcome changes.
    pub fn new(
        cluster: Cluster,
        settings: Settings,
        metrics: Arc<Metrics>,
        mx: Option<MxChecker>,
        changed: Vec<mpsc::UnboundedSender<()>>,
    ) -> Self {
        Self {
            cluster,
            settings,
            metrics,
            mx,
            outcomes: OutcomeBook::new(changed),
            statuses: StatusCache::default(),
            pending: Pending::default(),
            handoff: relay::HandoffSecrets::default(),
            webhook_health: crate::fleet::health::HealthBook::default(),
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Refresh the pending gauges.
    pub fn update_pending(&self) {
        let c = &self.cluster;
        let p = &self.pending;
        self.metrics
            .set_pending("Relay", p.count("Relay", c.relays()));
        self.metrics
            .set_pending("MailDomain", p.count("MailDomain", c.domains()));
        self.metrics
            .set_pending("Blocklist", p.count("Blocklist", c.blocklists()));
    }

    /// Drop the DKIM series of MailDomains no longer in the cluster: a
    /// deleted object is not reconciled again, and its last 0 would keep
    /// alerting.
    pub fn forget_deleted_domains(&self) {
        let store = self.cluster.domains();
        self.metrics.retain_dkim(|ns, name| {
            store
                .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                .is_some()
        });
    }

    /// The Relays of the object's namespace whose domain (or blocklist)
    /// selector matches its labels, or whose last outcome involves it: so a
    /// relabelled MailDomain reaches both the Relay that gains it and the
    /// one that loses it.
    pub fn relays_for(
        &self,
        kind: Selected,
        meta: &kube::api::ObjectMeta,
    ) -> Vec<ObjectRef<Relay>> {
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let involved = self.outcomes.involving(&ns, kind, &name);
        self.cluster
            .relays()
            .state()
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
            .filter(|r| {
                let selector = match kind {
                    Selected::MailDomain => r.spec.domain_selector.as_ref(),
                    Selected::Blocklist => r.spec.blocklist_selector.as_ref(),
                };
                // A malformed selector selects nothing; the Relay's own
                // status says why.
                let selects =
                    Selector::parse(selector).is_ok_and(|s| s.matches(meta.labels.as_ref()));
                selects || involved.contains(&r.name_any())
            })
            .map(|r| ObjectRef::from_obj(&**r))
            .collect()
    }
}

/// Label selector of the objects the operator makes (for its watches).
pub(crate) fn managed_selector() -> String {
    let labels = common_labels("");
    let managed_by = labels
        .get("app.kubernetes.io/managed-by")
        .cloned()
        .unwrap_or_default();
    format!("app.kubernetes.io/managed-by={managed_by}")
}

/// Back off on errors: the error is already counted and logged.
pub(crate) fn error_policy<K>(_obj: Arc<K>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(15))
}

/// Run the three controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    mx: Option<MxChecker>,
    fleet: FleetSettings,
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

    let cluster = Cluster::new(
        client.clone(),
        reporter,
        relay_controller.store(),
        domain_controller.store(),
        blocklist_controller.store(),
    );
    let changed = vec![domain_tx.clone(), blocklist_tx];
    let (health_tx, health_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context::new(cluster, settings, metrics, mx, changed));
    let pods = {
        let ctx = Arc::clone(&ctx);
        async move {
            let health =
                fleet::poll_webhooks(Arc::clone(&ctx), fleet.interval, health_tx, domain_tx);
            match fleet.resolver {
                Some(dns) => {
                    tokio::join!(
                        health,
                        reports::run(ctx, fleet.interval, dns, fleet.report_tls)
                    );
                }
                None => health.await,
            }
        }
    };
    let gauges = {
        let ctx = Arc::clone(&ctx);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                ctx.update_pending();
                ctx.forget_deleted_domains();
            }
        }
    };

    let (for_domain, for_blocklist) = (Arc::clone(&ctx), Arc::clone(&ctx));
    let relay_run = owns_children(relay_controller, &client, &owned)
        .watches(domains_api.clone(), all.clone(), move |d: MailDomain| {
            for_domain.relays_for(Selected::MailDomain, &d.metadata)
        })
        .watches(blocklists_api.clone(), all.clone(), move |b: Blocklist| {
            for_blocklist.relays_for(Selected::Blocklist, &b.metadata)
        })
        .reconcile_all_on(tokio_stream(health_rx))
        .graceful_shutdown_on(stop(&shutdown_tx))
        .run(relay::reconcile, error_policy, Arc::clone(&ctx))
        .for_each(report("Relay", Arc::clone(&ctx)));

    let domains_store = ctx.cluster.domains().clone();
    let blocklists_store = ctx.cluster.blocklists().clone();
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
        () = pods => {}
    }
}

/// The Relay controller, woken by changes to the objects it makes.
fn owns_children(
    controller: Controller<Relay>,
    client: &Client,
    owned: &watcher::Config,
) -> Controller<Relay> {
    fn all<K: Resource<DynamicType = ()>>(client: &Client) -> Api<K> {
        Api::all(client.clone())
    }
    controller
        .owns(all::<ConfigMap>(client), owned.clone())
        .owns(all::<Service>(client), owned.clone())
        .owns(all::<ServiceAccount>(client), owned.clone())
        .owns(all::<Role>(client), owned.clone())
        .owns(all::<RoleBinding>(client), owned.clone())
        .owns(all::<Deployment>(client), owned.clone())
        .owns(all::<StatefulSet>(client), owned.clone())
        .owns(all::<PodDisruptionBudget>(client), owned.clone())
        .owns(all::<NetworkPolicy>(client), owned.clone())
        .owns(all::<HorizontalPodAutoscaler>(client), owned.clone())
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

fn tokio_stream<T: Send>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
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
                    ctx.outcomes.record(&ns, &gone.name, None);
                }
                // A deleted MailDomain's last DKIM 0 would keep alerting.
                if kind == "MailDomain" {
                    ctx.metrics.dkim_key(&ns, &gone.name, None);
                }
                ctx.pending.forget(kind, ns, gone.name.clone());
            }
            Err(e) => {
                ctx.metrics.controller_error(kind);
                tracing::warn!(kind, error = %e, "controller");
            }
        }
        futures::future::ready(())
    }
}
