//! Status of a Blocklist: its valid entries, the invalid ones with the
//! reason, and the Relays that apply it.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use mailrelay_crds::blocklist::InvalidEntry;
use mailrelay_crds::compile::check_blocklist;
use mailrelay_crds::{Blocklist, BlocklistStatus};

use super::{Context, Error, Outcome, apply_status};
use crate::status::{Cond, State, entered, find, list_message, merge};

pub async fn reconcile(blocklist: Arc<Blocklist>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("Blocklist");
    ctx.begin("Blocklist", &*blocklist);
    let mut blocklist = (*blocklist).clone();
    if let Some(newest) = ctx.newest_status(&blocklist) {
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
    let (outcomes, missing) = ctx.outcomes_in(&ns);
    if !missing.is_empty()
        && let Some(later) = ctx.settling()
    {
        return Ok(Action::requeue(later));
    }
    let status = status(blocklist, &outcomes, &Time(Timestamp::now()));
    let old = blocklist.status.clone().unwrap_or_default();
    if blocklist.status.as_ref() != Some(&status) {
        apply_status(&ctx.client, blocklist, &status).await?;
        ctx.wrote(blocklist, &status);
        if entered(
            &old.conditions,
            &status.conditions,
            "EntriesValid",
            State::False,
        ) {
            let note = find(&status.conditions, "EntriesValid")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ctx.event(
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

/// The Blocklist's status: its own entries checked (the same whichever
/// Relay applies them) and the Relays whose config holds it.
pub fn status(
    blocklist: &Blocklist,
    outcomes: &BTreeMap<String, Outcome>,
    now: &Time,
) -> BlocklistStatus {
    let name = blocklist.name_any();
    let (entries, problems) = check_blocklist(blocklist);
    let invalid: Vec<InvalidEntry> = problems
        .iter()
        .map(|p| InvalidEntry {
            field: p.field.clone(),
            reason: p.message.clone(),
        })
        .collect();
    let relays: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| o.blocklists.contains(&name))
        .map(|(r, _)| r.clone())
        .collect();
    let valid = if invalid.is_empty() {
        Cond::new(
            "EntriesValid",
            State::True,
            "AllValid",
            format!("{entries} entries"),
        )
    } else {
        let lines: Vec<String> = invalid
            .iter()
            .map(|i| format!("{}: {}", i.field, i.reason))
            .collect();
        Cond::new(
            "EntriesValid",
            State::False,
            "InvalidEntries",
            list_message(
                "entries are invalid and left out; the others apply",
                &lines,
                10,
            ),
        )
    };
    let ready = if relays.is_empty() {
        Cond::new(
            "Ready",
            State::False,
            "NoRelay",
            "no Relay in this namespace applies this Blocklist (see the Relays' spec.blocklistSelector)",
        )
    } else {
        Cond::new(
            "Ready",
            State::True,
            "Applied",
            format!("applied by {}", relays.join(", ")),
        )
    };
    let generation = blocklist.metadata.generation;
    let old = blocklist.status.clone().unwrap_or_default();
    BlocklistStatus {
        observed_generation: generation,
        entries,
        invalid,
        relays,
        conditions: merge(&old.conditions, &[valid, ready], generation, now),
    }
}
