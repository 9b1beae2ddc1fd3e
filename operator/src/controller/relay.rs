//! Reconcile of a Relay: read → compile → build → apply → prune → status.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use mailrelay_crds::{Blocklist, MailDomain, Relay, RelayStatus};

use super::{Context, Error, Outcome, apply_status};
use crate::apply::{self, Applied, Keep, WorkloadState};
use crate::builders::{Autoscaler, Workload};
use crate::plan::{Plan, plan};
use crate::status::relay::{events, invalid_status, ready_status};

/// How often a settled Relay is looked at again, to repair anything a
/// missed watch event left behind.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(relay: Arc<Relay>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("Relay");
    ctx.begin("Relay", &*relay);
    let mut relay = (*relay).clone();
    if let Some(newest) = ctx.newest_status(&relay) {
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

/// Every object of kind `K` in namespace `ns`.
async fn list<K>(ctx: &Context, ns: &str) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: kube::Api<K> = kube::Api::namespaced(ctx.client.clone(), ns);
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| crate::apply::ApiError::new("list", format!("{} in {ns}", K::kind(&())), e))?;
    Ok(list.items)
}

async fn reconcile_relay(relay: &Relay, ctx: &Context) -> Result<Action, Error> {
    let ns = relay.namespace().unwrap_or_default();
    let name = relay.name_any();
    if relay.meta().deletion_timestamp.is_some() {
        // Its objects go with it through their owner references.
        ctx.set_outcome(&ns, &name, None);
        return Ok(Action::await_change());
    }
    // Read from the API, not from a watch cache: the event that woke this
    // reconcile may have come through another watch than the cache's, and
    // a cache one event behind would compile a stale config that nothing
    // corrects until the next resync. A list is never older than the event.
    let domains = list::<MailDomain>(ctx, &ns).await?;
    let blocklists = list::<Blocklist>(ctx, &ns).await?;
    let now = Time(Timestamp::now());
    match plan(relay, &domains, &blocklists, &ctx.settings) {
        Err(invalid) => {
            tracing::info!(relay = %key(relay), problems = ?invalid.lines(), "Relay is invalid; its running config is kept");
            let status = invalid_status(relay, &invalid, &now);
            write_status(ctx, relay, status).await?;
            // The pods keep running the last good config: what it serves
            // has not changed.
            let mut outcome = previous_outcome(ctx, &ns, &name);
            outcome.invalid = true;
            outcome.ready = false;
            ctx.set_outcome(&ns, &name, Some(outcome));
            // Nothing to retry: the next change to the Relay wakes it.
            Ok(Action::await_change())
        }
        Ok(plan) => {
            let applied = apply_plan(ctx, &plan).await?;
            if let Some(uid) = relay.uid() {
                let selector = plan.model.relay.selector();
                let keep = keep_until_ready(&applied, &plan.model);
                let deleted = apply::prune(&ctx.client, &ns, &selector, &uid, &keep).await?;
                if !deleted.is_empty() {
                    tracing::info!(relay = %key(relay), ?deleted, "pruned objects the Relay no longer needs");
                }
            }
            let status = ready_status(relay, &plan, &applied, &now);
            let ready = crate::status::find(&status.conditions, "Ready")
                .is_some_and(|c| c.status == "True");
            write_status(ctx, relay, status).await?;
            ctx.set_outcome(&ns, &name, Some(outcome_of(&plan, &applied, ready)));
            Ok(Action::requeue(RESYNC))
        }
    }
}

fn previous_outcome(ctx: &Context, ns: &str, name: &str) -> Outcome {
    ctx.outcomes
        .read()
        .ok()
        .and_then(|m| m.get(&(ns.to_string(), name.to_string())).cloned())
        .unwrap_or_default()
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
    let client = &ctx.client;
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

/// Create the Relay's hand-off Secret unless it is known to exist.
async fn ensure_handoff_secret(ctx: &Context, model: &crate::model::Model) -> Result<(), Error> {
    use crate::builders::handoff;
    let key = (
        model.relay.namespace.clone(),
        handoff::secret_name(&model.relay.name),
    );
    let known = |k: &(String, String)| {
        ctx.secrets
            .lock()
            .ok()
            .and_then(|m| m.get(k).copied())
            .is_some_and(|at| at.elapsed() < super::SECRET_RECHECK)
    };
    if known(&key) {
        return Ok(());
    }
    let secret = handoff::secret(model, &rand::random());
    if apply::create_if_missing(&ctx.client, &secret).await? {
        tracing::info!(relay = %model.relay.name, secret = %key.1, "created the hand-off secret");
    }
    if let Ok(mut m) = ctx.secrets.lock() {
        m.insert(key, std::time::Instant::now());
    }
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
    if relay.status.as_ref() == Some(&status) {
        return Ok(());
    }
    apply_status(&ctx.client, relay, &status).await?;
    ctx.wrote(relay, &status);
    for (type_, reason, note) in events(&old, &status) {
        ctx.event(relay, type_, reason, "Reconcile", note).await;
    }
    Ok(())
}
