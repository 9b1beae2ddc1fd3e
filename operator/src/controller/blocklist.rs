//! Reconcile of a Blocklist: its status from the Relays' outcomes
//! (`crate::status::blocklist`), an Event when entries turn invalid.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use mailrelay_crds::Blocklist;

use super::{Context, Error};
use crate::status::blocklist::status;
use crate::status::{State, entered, find};

pub async fn reconcile(blocklist: Arc<Blocklist>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("Blocklist");
    ctx.pending.begin("Blocklist", &*blocklist);
    let mut blocklist = (*blocklist).clone();
    if let Some(newest) = ctx.statuses.newest(&blocklist) {
        blocklist.status = Some(newest);
    }
    let result = reconcile_blocklist(&blocklist, &ctx).await;
    if let Err(e) = &result {
        timer.failed();
        tracing::warn!(blocklist = %blocklist.name_any(), error = %e, "reconcile failed");
    }
    result
}

async fn reconcile_blocklist(blocklist: &Blocklist, ctx: &Context) -> Result<Action, Error> {
    if blocklist.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = blocklist.namespace().unwrap_or_default();
    let (outcomes, missing) = ctx.outcomes.in_namespace(ctx.cluster.relays(), &ns);
    if !missing.is_empty()
        && let Some(later) = ctx.outcomes.settling()
    {
        return Ok(Action::requeue(later));
    }
    let status = status(blocklist, &outcomes, &Time(Timestamp::now()));
    let old = blocklist.status.clone().unwrap_or_default();
    if blocklist.status.as_ref() != Some(&status) {
        ctx.cluster.apply_status(blocklist, &status).await?;
        ctx.statuses.wrote(blocklist, &status);
        if entered(
            &old.conditions,
            &status.conditions,
            "EntriesValid",
            State::False,
        ) {
            let note = find(&status.conditions, "EntriesValid")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ctx.cluster
                .event(
                    blocklist,
                    EventType::Warning,
                    "InvalidEntries",
                    "Validate",
                    note,
                )
                .await;
        }
    }
    Ok(Action::await_change())
}
