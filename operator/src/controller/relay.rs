//! Reconcile of a Relay: read → compile → build → apply → prune → status.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use mailrelay_crds::{Blocklist, MailDomain, Relay, RelayStatus};

use super::{Context, Error, Outcome};
use crate::apply::{self, Applied, Keep, WorkloadState};
use crate::builders::{Autoscaler, Workload};
use crate::plan::{Plan, plan};
use crate::status::relay::{events, invalid_status, ready_status};

/// How often a settled Relay is looked at again, to repair anything a
/// missed watch event left behind.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(relay: Arc<Relay>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("Relay");
    ctx.pending.begin("Relay", &*relay);
    let mut relay = (*relay).clone();
    if let Some(newest) = ctx.statuses.newest(&relay) {
        relay.status = Some(newest);
    }
    let result = reconcile_relay(&relay, &ctx).await;
    if let Err(e) = &result {
        timer.failed();
        tracing::warn!(relay = %key(&relay), error = %e, "reconcile failed");
    }
    result
}

fn key(relay: &Relay) -> String {
    format!(
        "{}/{}",
        relay.namespace().unwrap_or_default(),
        relay.name_any()
    )
}

async fn reconcile_relay(relay: &Relay, ctx: &Context) -> Result<Action, Error> {
    let ns = relay.namespace().unwrap_or_default();
    let name = relay.name_any();
    if relay.meta().deletion_timestamp.is_some() {
        // Its objects go with it through their owner references.
        ctx.outcomes.record(&ns, &name, None);
        return Ok(Action::await_change());
    }
    // Read from the API, not from a watch cache: the event that woke this
    // reconcile may have come through another watch than the cache's, and
    // a cache one event behind would compile a stale config that nothing
    // corrects until the next resync. A list is never older than the event.
    let domains = ctx.cluster.list::<MailDomain>(&ns).await?;
    let blocklists = ctx.cluster.list::<Blocklist>(&ns).await?;
    let now = Time(Timestamp::now());
    match plan(relay, &domains, &blocklists, &ctx.settings) {
        Err(invalid) => {
            tracing::info!(relay = %key(relay), problems = ?invalid.lines(), "Relay is invalid; its running config is kept");
            let status = invalid_status(relay, &invalid, &now);
            write_status(ctx, relay, status).await?;
            // The pods keep running the last good config: what it serves
            // has not changed.
            let mut outcome = ctx.outcomes.get(&ns, &name).unwrap_or_default();
            outcome.invalid = true;
            outcome.ready = false;
            ctx.outcomes.record(&ns, &name, Some(outcome));
            // Nothing to retry: the next change to the Relay wakes it.
            Ok(Action::await_change())
        }
        Ok(plan) => {
            let applied = apply_plan(ctx, &plan).await?;
            if let Some(uid) = relay.uid() {
                let selector = plan.model.relay.selector();
                let keep = keep_until_ready(&applied, &plan.model);
                let deleted =
                    apply::prune(ctx.cluster.client(), &ns, &selector, &uid, &keep).await?;
                if !deleted.is_empty() {
                    tracing::info!(relay = %key(relay), ?deleted, "pruned objects the Relay no longer needs");
                }
            }
            let mut status = ready_status(relay, &plan, &applied, &now);
            webhook_condition(ctx, relay, &ns, &mut status, &now).await;
            let ready = crate::status::find(&status.conditions, "Ready")
                .is_some_and(|c| c.status == "True");
            write_status(ctx, relay, status).await?;
            ctx.outcomes
                .record(&ns, &name, Some(outcome_of(&plan, &applied, ready)));
            Ok(Action::requeue(RESYNC))
        }
    }
}

/// The `EventWebhookReady` condition of the Relay's own webhooks — client
/// (their Secrets are read).
async fn webhook_condition(
    ctx: &Context,
    relay: &Relay,
    ns: &str,
    status: &mut RelayStatus,
    now: &Time,
) {
    let refs: Vec<_> = relay
        .spec
        .events
        .webhooks
        .iter()
        .enumerate()
        .map(|(i, w)| {
            (
                format!("spec.events.webhooks[{i}].secret"),
                w.secret.clone(),
            )
        })
        .collect();
    let checks = crate::webhook_keys::check(ctx.cluster.client(), ns, &refs).await;
    let unreachable = ctx
        .webhook_health
        .problems(ns, Some(&relay.name_any()), |n| n.starts_with("relay:"));
    let old = relay
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    crate::status::webhooks::add(
        &mut status.conditions,
        old,
        crate::status::webhooks::condition(&checks, &unreachable),
        relay.metadata.generation,
        now,
    );
}

fn outcome_of(plan: &Plan, applied: &Applied, ready: bool) -> Outcome {
    let config = &plan.model.config;
    Outcome {
        invalid: false,
        domains: config
            .domains
            .iter()
            .map(|d| d.source.name.clone())
            .collect(),
        blocklists: config
            .policy
            .rules
            .iter()
            .map(|r| r.source.name.clone())
            .collect(),
        problems: plan.problems.clone(),
        ready,
        external: applied.external.clone(),
    }
}

async fn apply_plan(ctx: &Context, plan: &Plan) -> Result<Applied, Error> {
    let client = ctx.cluster.client();
    let objects = &plan.objects;
    let model = &plan.model;
    let mut applied = Applied::default();
    apply::apply(client, &objects.service_account).await?;
    apply::apply(client, &objects.role).await?;
    apply::apply(client, &objects.role_binding).await?;
    for cm in &objects.config_maps {
        apply::apply(client, cm).await?;
        applied.keep.config_maps.extend(cm.metadata.name.clone());
    }
    let service = apply::apply(client, &objects.service).await?;
    applied.external = external_addresses(&service);
    apply::apply(client, &objects.peers).await?;
    // Before the workload: its pods mount it.
    ensure_handoff_secret(ctx, model).await?;
    let name = &model.relay.name;
    match &objects.workload {
        Workload::Deployment(d) => {
            let placed = replicas_first::<Deployment>(client, model).await?;
            let live = apply::apply(client, d).await?;
            applied.workload = WorkloadState::of_deployment(&live);
            replicas_after::<Deployment>(client, model, placed).await?;
            applied.keep.deployments.insert(name.clone());
        }
        Workload::StatefulSet(s) => {
            let placed = replicas_first::<StatefulSet>(client, model).await?;
            let live = apply::apply(client, s).await?;
            applied.workload = WorkloadState::of_stateful_set(&live);
            replicas_after::<StatefulSet>(client, model, placed).await?;
            applied.keep.stateful_sets.insert(name.clone());
        }
    }
    apply::apply(client, &objects.pdb).await?;
    apply::apply(client, &objects.network_policy).await?;
    match &objects.autoscaler {
        Some(Autoscaler::Hpa(h)) => {
            apply::apply(client, h.as_ref()).await?;
            applied.keep.hpas.extend(h.metadata.name.clone());
        }
        Some(Autoscaler::Keda(k)) => match apply::apply_dynamic(client, k).await {
            Ok(()) => {
                applied.keep.scaled_objects.extend(k.metadata.name.clone());
            }
            Err(e) if e.is_not_found() => applied.keda_missing = true,
            Err(e) => return Err(e.into()),
        },
        None => {}
    }
    Ok(applied)
}

/// How long a hand-off Secret known to exist is not asked for again: one
/// deleted by hand is recreated within this time.
const SECRET_RECHECK: Duration = Duration::from_secs(600);

/// Hand-off Secrets known to exist (created, or found), by (namespace,
/// name), and since when: the operator may not watch Secrets, so it asks
/// the API again only after [`SECRET_RECHECK`].
#[derive(Default)]
pub(crate) struct HandoffSecrets {
    seen: Mutex<HashMap<(String, String), Instant>>,
}

impl HandoffSecrets {
    fn known(&self, key: &(String, String)) -> bool {
        self.seen
            .lock()
            .ok()
            .and_then(|m| m.get(key).copied())
            .is_some_and(|at| at.elapsed() < SECRET_RECHECK)
    }

    fn saw(&self, key: (String, String)) {
        if let Ok(mut m) = self.seen.lock() {
            m.insert(key, Instant::now());
        }
    }
}

/// Create the Relay's hand-off Secret unless it is known to exist.
async fn ensure_handoff_secret(ctx: &Context, model: &crate::model::Model) -> Result<(), Error> {
    use crate::builders::handoff;
    let key = (
        model.relay.namespace.clone(),
        handoff::secret_name(&model.relay.name),
    );
    if ctx.handoff.known(&key) {
        return Ok(());
    }
    let secret = handoff::secret(model, &rand::random());
    if apply::create_if_missing(ctx.cluster.client(), &secret).await? {
        tracing::info!(relay = %model.relay.name, secret = %key.1, "created the hand-off secret");
    }
    ctx.handoff.saw(key);
    Ok(())
}

/// What to keep from pruning. When queue storage was switched on or off,
/// the workload of the other kind stays until the new one has all its pods
/// ready: deleting it at once would drain every old pod together, which
/// the PodDisruptionBudget does not prevent. The new workload's status
/// change wakes the reconcile that prunes it.
fn keep_until_ready(applied: &Applied, model: &crate::model::Model) -> Keep {
    let mut keep = applied.keep.clone();
    let w = &applied.workload;
    let ready = w.ready >= model.replicas && w.observed_generation >= w.generation;
    if !ready {
        let name = model.relay.name.clone();
        keep.deployments.insert(name.clone());
        keep.stateful_sets.insert(name);
    }
    keep
}

/// With an autoscaler, `spec.replicas` belongs to a field manager of its
/// own, applied *before* the main apply (which leaves the field out): the
/// field then never loses its last owner, so a Relay turning autoscaling on
/// never sees its workload defaulted to one replica. `true` when it was
/// placed (the workload exists).
async fn replicas_first<K>(
    client: &kube::Client,
    model: &crate::model::Model,
) -> Result<bool, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if !model.autoscaled {
        return Ok(false);
    }
    let (ns, name) = (&model.relay.namespace, &model.relay.name);
    Ok(apply::apply_replicas::<K>(client, ns, name, model.replicas).await?)
}

/// A workload just created by the main apply gets its replicas now.
async fn replicas_after<K>(
    client: &kube::Client,
    model: &crate::model::Model,
    placed: bool,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if model.autoscaled && !placed {
        let (ns, name) = (&model.relay.namespace, &model.relay.name);
        apply::apply_replicas::<K>(client, ns, name, model.replicas).await?;
    }
    Ok(())
}

/// Load-balancer IPs and host names, and external IPs, of a Service.
fn external_addresses(service: &Service) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Some(spec) = &service.spec {
        out.extend(spec.external_ips.iter().flatten().cloned());
    }
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for i in ingress.into_iter().flatten() {
        out.extend(i.ip.clone());
        out.extend(i.hostname.clone());
    }
    out.into_iter().collect()
}

/// Write the status if it changed, and publish an Event for each notable
/// transition.
async fn write_status(ctx: &Context, relay: &Relay, status: RelayStatus) -> Result<(), Error> {
    let old = relay.status.clone().unwrap_or_default();
    let unchanged = RelayStatus {
        reports: old.reports.clone(),
        ..status.clone()
    };
    if old == unchanged && relay.status.is_some() {
        return Ok(());
    }
    ctx.cluster.apply_status(relay, &status).await?;
    ctx.statuses.wrote(relay, &status);
    for (type_, reason, note) in events(&old, &status) {
        ctx.cluster
            .event(relay, type_, reason, "Reconcile", note)
            .await;
    }
    Ok(())
}
