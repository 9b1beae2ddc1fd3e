//! Status of a Relay, and the Events its changes are worth.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use mailrelay_crds::{Relay, RelayStatus};

use super::{Cond, State, entered, list_message, merge};
use crate::apply::{Applied, WorkloadState};
use crate::plan::{Invalid, Plan};

/// How many problems a condition message lists.
const LISTED: usize = 10;

/// The status of a Relay whose objects were applied.
pub(crate) fn ready_status(
    relay: &Relay,
    plan: &Plan,
    applied: &Applied,
    now: &Time,
) -> RelayStatus {
    let model = &plan.model;
    let config = &model.config;
    let desired = model.replicas;
    let w = &applied.workload;
    let domains = i32::try_from(config.domains.len()).unwrap_or(i32::MAX);
    let entries = i64::try_from(config.policy.entry_count()).unwrap_or(i64::MAX);

    let [progressing, ready] = rollout(desired, w);
    let conds = [
        Cond::new(
            "ConfigValid",
            State::True,
            "Compiled",
            format!("{domains} domains, {entries} blocklist entries"),
        ),
        degraded(plan, applied),
        progressing,
        ready,
    ];
    let old = relay.status.clone().unwrap_or_default();
    RelayStatus {
        observed_generation: relay.metadata.generation,
        replicas: w.replicas,
        ready_replicas: w.ready,
        selector: Some(model.relay.selector()),
        config_hash: Some(model.config_hash.clone()),
        domains,
        blocklist_entries: entries,
        conditions: merge(&old.conditions, &conds, relay.metadata.generation, now),
        // The reporter's, under a field manager of its own: left out here
        // so a reconcile never writes back a stale copy.
        reports: None,
    }
}

/// Progressing and Ready, from the workload's pods: a rollout is done when
/// the workload has seen its generation and every pod is of it.
fn rollout(desired: i32, w: &WorkloadState) -> [Cond; 2] {
    let rolling =
        w.observed_generation < w.generation || w.updated < desired || w.replicas > desired;
    let progressing = if rolling {
        Cond::new(
            "Progressing",
            State::True,
            "RollingOut",
            format!(
                "{} of {desired} pods updated, {} pods exist",
                w.updated, w.replicas
            ),
        )
    } else {
        Cond::new(
            "Progressing",
            State::False,
            "RolloutComplete",
            format!("{desired} pods up to date"),
        )
    };
    let ready = if w.ready >= desired && !rolling {
        Cond::new(
            "Ready",
            State::True,
            "ReplicasReady",
            format!("{} of {desired} pods ready", w.ready),
        )
    } else {
        Cond::new(
            "Ready",
            State::False,
            "ReplicasNotReady",
            format!("{} of {desired} pods ready", w.ready),
        )
    };
    [progressing, ready]
}

/// Is anything wrong beside the rollout: KEDA missing, MailDomains or
/// Blocklists left out, warnings?
fn degraded(plan: &Plan, applied: &Applied) -> Cond {
    let model = &plan.model;
    let mut degraded: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
    degraded.extend(model.warnings.iter().map(ToString::to_string));
    if applied.keda_missing {
        let mut items = vec!["spec.autoscaling.engine: KEDA is not installed (no keda.sh/v1alpha1 ScaledObject in the cluster); the Relay is not autoscaled".to_string()];
        items.extend(degraded);
        Cond::new(
            "Degraded",
            State::True,
            "AutoscalerMissing",
            list_message("problems", &items, LISTED),
        )
    } else if !plan.problems.is_empty() {
        Cond::new(
            "Degraded",
            State::True,
            "ObjectsLeftOut",
            list_message(
                "problems; what they name is left out of the config, everything else is served",
                &degraded,
                LISTED,
            ),
        )
    } else if !degraded.is_empty() {
        Cond::new(
            "Degraded",
            State::True,
            "Misconfigured",
            list_message("warnings", &degraded, LISTED),
        )
    } else {
        Cond::new("Degraded", State::False, "AsExpected", "")
    }
}

/// The status of a Relay whose spec is invalid: the figures of the last
/// good config stay (its pods still run it); the conditions say why.
pub(crate) fn invalid_status(relay: &Relay, invalid: &Invalid, now: &Time) -> RelayStatus {
    let old = relay.status.clone().unwrap_or_default();
    let message = list_message("problems", &invalid.lines(), LISTED);
    let conds = [
        Cond::new("ConfigValid", State::False, "InvalidSpec", message.clone()),
        Cond::new(
            "Degraded",
            State::True,
            "InvalidSpec",
            "the Relay's spec is invalid; running pods keep their last good config",
        ),
        Cond::new(
            "Progressing",
            State::False,
            "InvalidSpec",
            "nothing is rolled out until the spec is fixed",
        ),
        Cond::new("Ready", State::False, "InvalidSpec", message),
    ];
    RelayStatus {
        observed_generation: relay.metadata.generation,
        conditions: merge(&old.conditions, &conds, relay.metadata.generation, now),
        reports: None,
        ..old
    }
}

/// The Events a status change is worth: (type, reason, note).
pub(crate) fn events(
    old: &RelayStatus,
    new: &RelayStatus,
) -> Vec<(EventType, &'static str, String)> {
    let mut out = Vec::new();
    let message = |t: &str| {
        crate::status::find(&new.conditions, t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    if entered(
        &old.conditions,
        &new.conditions,
        "ConfigValid",
        State::False,
    ) {
        out.push((EventType::Warning, "InvalidSpec", message("ConfigValid")));
    }
    if new.config_hash.is_some() && new.config_hash != old.config_hash {
        out.push((
            EventType::Normal,
            "ConfigApplied",
            format!(
                "config {} ({} domains, {} blocklist entries)",
                new.config_hash
                    .as_deref()
                    .unwrap_or_default()
                    .get(..12)
                    .unwrap_or_default(),
                new.domains,
                new.blocklist_entries
            ),
        ));
    }
    if entered(&old.conditions, &new.conditions, "Degraded", State::True)
        && crate::status::find(&new.conditions, "Degraded")
            .is_some_and(|c| c.reason != "InvalidSpec")
    {
        out.push((EventType::Warning, "Degraded", message("Degraded")));
    }
    // Only on becoming Ready, not when the message changes while Ready.
    if entered(&old.conditions, &new.conditions, "Ready", State::True)
        && crate::status::find(&old.conditions, "Ready").is_none_or(|c| c.status != "True")
    {
        out.push((EventType::Normal, "Ready", message("Ready")));
    }
    out
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use mailrelay_crds::MailDomain;
    use serde_json::{Value, json};

    use super::*;
    use crate::model::Settings;
    use crate::plan::plan;

    fn at() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    fn relay(spec: Value) -> Relay {
        serde_json::from_value(json!({
            "apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay",
            "metadata": {"name": "edge", "namespace": "mail", "uid": "u1", "generation": 3},
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn domain(name: &str, domain: &str) -> MailDomain {
        serde_json::from_value(json!({
            "apiVersion": "mailrelay.io/v1alpha1", "kind": "MailDomain",
            "metadata": {"name": name, "namespace": "mail"},
            "spec": {
                "domain": domain,
                "inbound": {"catchAll": true},
                "delivery": {"lmtp": {"host": "dovecot", "port": 24}},
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn planned(relay: &Relay, domains: &[MailDomain]) -> Plan {
        plan(relay, domains, &[], &Settings::default())
            .unwrap_or_else(|e| panic!("{:?}", e.lines()))
    }

    /// A workload at generation 2 with `desired` pods of which `ready` are
    /// ready, `updated` up to date, `observed` the generation it reports.
    fn workload(observed: i64, replicas: i32, ready: i32, updated: i32) -> WorkloadState {
        WorkloadState {
            generation: Some(2),
            observed_generation: Some(observed),
            replicas,
            ready,
            updated,
        }
    }

    /// (type, status, reason) of each condition, in order.
    fn conditions(s: &RelayStatus) -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn want(c: [(&str, &str, &str); 4]) -> Vec<(String, String, String)> {
        c.iter()
            .map(|(t, s, r)| (t.to_string(), s.to_string(), r.to_string()))
            .collect()
    }

    #[test]
    fn the_conditions_of_an_applied_relay_follow_its_plan_and_its_workload() {
        let plain = json!({"hostname": "mx.example.com", "replicas": 2});
        let autoscaled = json!({"hostname": "mx.example.com", "autoscaling": {"maxReplicas": 3}});
        let good = vec![domain("d", "example.com")];
        let with_bad = vec![domain("d", "example.com"), domain("bad", "not a domain")];
        let steady = workload(2, 2, 2, 2);
        let valid = ("ConfigValid", "True", "Compiled");
        let fine = ("Degraded", "False", "AsExpected");
        let done = ("Progressing", "False", "RolloutComplete");
        let rolling = ("Progressing", "True", "RollingOut");
        let ready = ("Ready", "True", "ReplicasReady");
        let unready = ("Ready", "False", "ReplicasNotReady");
        #[rustfmt::skip]
        let cases = vec![
            ("all pods ready and current", &plain, &good, steady.clone(), false,
             [valid, fine, done, ready]),
            ("the workload has not seen its new generation", &plain, &good, workload(1, 2, 2, 2), false,
             [valid, fine, rolling, unready]),
            ("not every pod is of the current template", &plain, &good, workload(2, 2, 2, 1), false,
             [valid, fine, rolling, unready]),
            ("old pods still exist beside the new ones", &plain, &good, workload(2, 3, 2, 2), false,
             [valid, fine, rolling, unready]),
            ("a pod is not ready", &plain, &good, workload(2, 2, 1, 2), false,
             [valid, fine, done, unready]),
            ("a MailDomain is left out", &plain, &with_bad, steady.clone(), false,
             [valid, ("Degraded", "True", "ObjectsLeftOut"), done, ready]),
            ("a warning only", &autoscaled, &good, workload(2, 1, 1, 1), false,
             [valid, ("Degraded", "True", "Misconfigured"), done, ready]),
            ("KEDA is missing", &plain, &good, steady.clone(), true,
             [valid, ("Degraded", "True", "AutoscalerMissing"), done, ready]),
            ("KEDA is missing and a MailDomain is left out", &plain, &with_bad, steady, true,
             [valid, ("Degraded", "True", "AutoscalerMissing"), done, ready]),
        ];
        for (name, spec, domains, workload, keda_missing, expected) in cases {
            let r = relay(spec.clone());
            let plan = planned(&r, domains.as_slice());
            let applied = Applied {
                workload,
                keda_missing,
                ..Applied::default()
            };
            let s = ready_status(&r, &plan, &applied, &at());
            assert_eq!(conditions(&s), want(expected), "{name}");
            assert_eq!(s.observed_generation, Some(3), "{name}");
            assert_eq!(
                s.config_hash.as_ref(),
                Some(&plan.model.config_hash),
                "{name}"
            );
        }
    }

    #[test]
    fn the_counts_of_an_applied_relay_are_those_of_its_config_and_workload() {
        let r = relay(json!({"hostname": "mx.example.com", "replicas": 2}));
        let plan = planned(&r, &[domain("a", "a.example"), domain("b", "b.example")]);
        let applied = Applied {
            workload: workload(2, 3, 1, 2),
            ..Applied::default()
        };
        let s = ready_status(&r, &plan, &applied, &at());
        assert_eq!((s.domains, s.blocklist_entries), (2, 0));
        assert_eq!((s.replicas, s.ready_replicas), (3, 1));
        let message = |t: &str| {
            crate::status::find(&s.conditions, t)
                .map(|c| c.message.clone())
                .unwrap_or_default()
        };
        assert_eq!(message("ConfigValid"), "2 domains, 0 blocklist entries");
        assert_eq!(message("Progressing"), "2 of 2 pods updated, 3 pods exist");
        assert_eq!(message("Ready"), "1 of 2 pods ready");
    }

    #[test]
    fn an_invalid_relay_keeps_the_figures_of_its_last_good_config() {
        let mut r = relay(json!({"hostname": "mx.example.com", "replicas": 2}));
        let plan = planned(&r, &[domain("d", "example.com")]);
        let applied = Applied {
            workload: workload(2, 2, 2, 2),
            ..Applied::default()
        };
        let good = ready_status(&r, &plan, &applied, &at());
        r.status = Some(good.clone());
        let invalid = Invalid::Problems(Vec::new());
        let s = invalid_status(&r, &invalid, &at());
        assert_eq!(
            conditions(&s),
            want([
                ("ConfigValid", "False", "InvalidSpec"),
                ("Degraded", "True", "InvalidSpec"),
                ("Progressing", "False", "InvalidSpec"),
                ("Ready", "False", "InvalidSpec"),
            ])
        );
        assert_eq!(
            (s.domains, s.replicas, s.config_hash.as_ref()),
            (good.domains, good.replicas, good.config_hash.as_ref())
        );
    }

    fn status(
        hash: Option<&str>,
        conds: &[(&'static str, State, &'static str, &str)],
    ) -> RelayStatus {
        let conds: Vec<Cond> = conds
            .iter()
            .map(|(t, s, r, m)| Cond::new(t, *s, r, *m))
            .collect();
        RelayStatus {
            config_hash: hash.map(Into::into),
            domains: 1,
            conditions: merge(&[], &conds, Some(1), &at()),
            ..RelayStatus::default()
        }
    }

    #[test]
    fn events_mark_transitions_not_states() {
        use State::{False, True};
        let hash = Some("0123456789abcdef");
        let ready = ("Ready", True, "ReplicasReady", "2 of 2 pods ready");
        let unready = ("Ready", False, "ReplicasNotReady", "0 of 2 pods ready");
        let invalid = ("ConfigValid", False, "InvalidSpec", "1 problems");
        let left_out = ("Degraded", True, "ObjectsLeftOut", "1 problems");
        let spec_degraded = ("Degraded", True, "InvalidSpec", "spec");
        #[rustfmt::skip]
        let cases = vec![
            ("nothing changed", status(hash, &[ready]), status(hash, &[ready]), vec![]),
            ("first config, not ready yet", status(None, &[]), status(hash, &[unready]),
             vec![(EventType::Normal, "ConfigApplied")]),
            ("pods became ready", status(hash, &[unready]), status(hash, &[ready]),
             vec![(EventType::Normal, "Ready")]),
            ("ready with another message", status(hash, &[ready]),
             status(hash, &[("Ready", True, "ReplicasReady", "3 of 3 pods ready")]), vec![]),
            ("the spec turned invalid", status(hash, &[ready]), status(hash, &[invalid, spec_degraded]),
             vec![(EventType::Warning, "InvalidSpec")]),
            ("a MailDomain was left out", status(hash, &[ready]), status(hash, &[left_out, ready]),
             vec![(EventType::Warning, "Degraded")]),
        ];
        for (name, old, new, expected) in cases {
            let got: Vec<(EventType, &str)> = events(&old, &new)
                .into_iter()
                .map(|(t, r, _)| (t, r))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    }
}
