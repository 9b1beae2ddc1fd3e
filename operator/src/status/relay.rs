//! Status of a Relay, and the Events its changes are worth.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use mailrelay_crds::{Relay, RelayStatus};

use super::{Cond, State, entered, list_message, merge};
use crate::apply::Applied;
use crate::plan::{Invalid, Plan};

/// How many problems a condition message lists.
const LISTED: usize = 10;

/// The status of a Relay whose objects were applied.
pub fn ready_status(relay: &Relay, plan: &Plan, applied: &Applied, now: &Time) -> RelayStatus {
    let model = &plan.model;
    let config = &model.config;
    let desired = model.replicas;
    let w = &applied.workload;
    let domains = i32::try_from(config.domains.len()).unwrap_or(i32::MAX);
    let entries = i64::try_from(config.policy.entry_count()).unwrap_or(i64::MAX);

    let mut degraded: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
    degraded.extend(model.warnings.iter().map(ToString::to_string));
    let degraded_cond = if applied.keda_missing {
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
    };
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
    let conds = [
        Cond::new(
            "ConfigValid",
            State::True,
            "Compiled",
            format!("{domains} domains, {entries} blocklist entries"),
        ),
        degraded_cond,
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
    }
}

/// The status of a Relay whose spec is invalid: the figures of the last
/// good config stay (its pods still run it); the conditions say why.
pub fn invalid_status(relay: &Relay, invalid: &Invalid, now: &Time) -> RelayStatus {
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
        ..old
    }
}

/// The Events a status change is worth: (type, reason, note).
pub fn events(old: &RelayStatus, new: &RelayStatus) -> Vec<(EventType, &'static str, String)> {
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
