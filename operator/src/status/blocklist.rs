//! Status of a Blocklist: its valid entries, the invalid ones with the
//! reason, and the Relays that apply it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use mailrelay_crds::blocklist::InvalidEntry;
use mailrelay_crds::compile::check_blocklist;
use mailrelay_crds::{Blocklist, BlocklistStatus};

use super::{Cond, State, list_message, merge};
use crate::controller::Outcome;

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
