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
pub(crate) fn status(
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

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use serde_json::json;

    use super::*;

    fn blocklist(ips: &[&str]) -> Blocklist {
        let ips: Vec<serde_json::Value> = ips.iter().map(|i| json!({"value": i})).collect();
        serde_json::from_value(json!({
            "apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist",
            "metadata": {"name": "abuse", "namespace": "mail", "generation": 4},
            "spec": {"ips": ips},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn holding(names: &[&str]) -> Outcome {
        Outcome {
            blocklists: names.iter().map(ToString::to_string).collect(),
            ..Outcome::default()
        }
    }

    #[test]
    fn the_conditions_follow_the_entries_and_the_relays_that_hold_the_list() {
        let outcomes = BTreeMap::from([
            ("a".to_string(), holding(&["abuse"])),
            ("b".to_string(), holding(&["other"])),
            ("c".to_string(), holding(&["other", "abuse"])),
        ]);
        let nobody = BTreeMap::from([("b".to_string(), holding(&["other"]))]);
        let all_valid = ("EntriesValid", "True", "AllValid");
        let invalid = ("EntriesValid", "False", "InvalidEntries");
        let applied = ("Ready", "True", "Applied");
        let unused = ("Ready", "False", "NoRelay");
        #[rustfmt::skip]
        let cases = vec![
            ("valid and applied", vec!["192.0.2.0/24", "198.51.100.7"], &outcomes,
             [all_valid, applied], 2, vec!["a", "c"]),
            ("empty and applied", vec![], &outcomes, [all_valid, applied], 0, vec!["a", "c"]),
            ("valid, held by no Relay", vec!["192.0.2.1"], &nobody, [all_valid, unused], 1, vec![]),
            ("an invalid entry among valid ones", vec!["192.0.2.1", "not an address"], &outcomes,
             [invalid, applied], 1, vec!["a", "c"]),
            ("invalid, held by no Relay", vec!["999.1.1.1"], &nobody, [invalid, unused], 0, vec![]),
        ];
        for (name, ips, outcomes, expected, entries, relays) in cases {
            let s = status(&blocklist(&ips), outcomes, &Time(Timestamp::UNIX_EPOCH));
            let got: Vec<(&str, &str, &str)> = s
                .conditions
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                .collect();
            assert_eq!(got, expected, "{name}");
            assert_eq!(s.entries, entries, "{name}");
            assert_eq!(s.relays, relays, "{name}");
            assert_eq!(
                s.invalid.len(),
                usize::from(expected[0].1 == "False"),
                "{name}"
            );
            assert_eq!(s.observed_generation, Some(4), "{name}");
        }
    }

    #[test]
    fn an_invalid_entry_is_named_by_its_field() {
        let s = status(
            &blocklist(&["192.0.2.1", "not an address"]),
            &BTreeMap::new(),
            &Time(Timestamp::UNIX_EPOCH),
        );
        assert_eq!(s.invalid.len(), 1);
        assert_eq!(s.invalid[0].field, "spec.ips[1].value");
        let message = crate::status::find(&s.conditions, "EntriesValid")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            message.starts_with(
                "1 entries are invalid and left out; the others apply\n- spec.ips[1].value: "
            ),
            "{message}"
        );
    }
}
