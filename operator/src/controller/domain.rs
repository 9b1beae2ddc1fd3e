//! Status of a MailDomain: which Relays serve it, what is wrong with it,
//! whether its MX records lead to a serving Relay.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use mailrelay_crds::compile::normalize;
use mailrelay_crds::compile::selector::Selector;
use mailrelay_crds::maildomain::DnsCheck;
use mailrelay_crds::{MailDomain, MailDomainStatus};

use super::{Context, Error, Outcome, apply_status};
use crate::status::{Cond, State, entered, find, list_message, merge};

pub async fn reconcile(domain: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("MailDomain");
    ctx.begin("MailDomain", &*domain);
    let result = reconcile_domain(&domain, &ctx).await;
    if let Err(e) = &result {
        timer.failed();
        tracing::warn!(maildomain = %domain.name_any(), error = %e, "reconcile failed");
    }
    result
}

async fn reconcile_domain(domain: &MailDomain, ctx: &Context) -> Result<Action, Error> {
    if domain.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = domain.namespace().unwrap_or_default();
    // A Relay not reconciled yet: its outcome will wake this again.
    let Some(outcomes) = ctx.outcomes_in(&ns) else {
        return Ok(Action::await_change());
    };
    let selecting: Vec<String> = ctx
        .relays
        .state()
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str()) && r.metadata.deletion_timestamp.is_none()
        })
        .filter(|r| {
            Selector::parse(r.spec.domain_selector.as_ref())
                .is_ok_and(|s| s.matches(domain.metadata.labels.as_ref()))
        })
        .map(|r| r.name_any())
        .collect();
    let view = View::new(domain, &outcomes, selecting);
    let dns = match (&ctx.mx, view.serving.is_empty()) {
        (Some(mx), false) => {
            let name = normalize::domain_name(&domain.spec.domain).unwrap_or_default();
            Some(mx.check(&name, &view.external).await)
        }
        _ => None,
    };
    let status = status(domain, &view, dns, &Time(Timestamp::now()));
    let old = domain.status.clone().unwrap_or_default();
    if domain.status.as_ref() != Some(&status) {
        apply_status(&ctx.client, domain, &status).await?;
        if entered(
            &old.conditions,
            &status.conditions,
            "Accepted",
            State::False,
        ) {
            let c = find(&status.conditions, "Accepted");
            let reason = c.map_or("NotAccepted", |c| {
                if c.reason == "InvalidSpec" {
                    "InvalidSpec"
                } else {
                    "NotServed"
                }
            });
            ctx.event(
                domain,
                EventType::Warning,
                reason,
                "Validate",
                c.map(|c| c.message.clone()).unwrap_or_default(),
            )
            .await;
        }
        if entered(&old.conditions, &status.conditions, "Accepted", State::True) {
            ctx.event(
                domain,
                EventType::Normal,
                "Accepted",
                "Validate",
                format!("served by {}", status.relays.join(", ")),
            )
            .await;
        }
    }
    Ok(if ctx.mx.is_some() && !view.serving.is_empty() {
        Action::requeue(crate::mx::INTERVAL)
    } else {
        Action::await_change()
    })
}

/// What the Relays of the namespace say about one MailDomain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Relays whose config holds it.
    pub serving: Vec<String>,
    /// Of those, the ones that are Ready.
    pub ready: Vec<String>,
    /// Relays whose selector matches it.
    pub selecting: Vec<String>,
    /// Its problems, as the Relays reported them (once each).
    pub problems: Vec<String>,
    /// External addresses of the serving Relays.
    pub external: Vec<String>,
}

impl View {
    pub fn new(
        domain: &MailDomain,
        outcomes: &BTreeMap<String, Outcome>,
        selecting: Vec<String>,
    ) -> Self {
        let name = domain.name_any();
        let mut view = Self {
            selecting,
            ..Self::default()
        };
        for (relay, o) in outcomes {
            if o.domains.contains(&name) {
                view.serving.push(relay.clone());
                if o.ready {
                    view.ready.push(relay.clone());
                }
                view.external.extend(o.external.iter().cloned());
            }
            for p in o
                .problems
                .iter()
                .filter(|p| p.object.kind == "MailDomain" && p.object.name == name)
            {
                view.problems.push(format!("{}: {}", p.field, p.message));
            }
        }
        view.problems.sort();
        view.problems.dedup();
        view.external.sort();
        view.external.dedup();
        view
    }
}

/// The MailDomain's status from what the Relays say and the MX check.
pub fn status(
    domain: &MailDomain,
    view: &View,
    dns: Option<DnsCheck>,
    now: &Time,
) -> MailDomainStatus {
    let old = domain.status.clone().unwrap_or_default();
    let accepted = if !view.problems.is_empty() {
        // A domain can be partly served (a bad alias dropped) or not at all.
        let reason = if view.serving.is_empty() {
            "InvalidSpec"
        } else {
            "PartlyServed"
        };
        let state = State::of(!view.serving.is_empty());
        Cond::new(
            "Accepted",
            state,
            reason,
            list_message("problems", &view.problems, 10),
        )
    } else if view.serving.is_empty() && view.selecting.is_empty() {
        Cond::new(
            "Accepted",
            State::False,
            "NoRelay",
            "no Relay in this namespace selects this MailDomain (see the Relays' spec.domainSelector)",
        )
    } else if view.serving.is_empty() {
        Cond::new(
            "Accepted",
            State::False,
            "Pending",
            format!(
                "selected by {}, not yet in a config",
                view.selecting.join(", ")
            ),
        )
    } else {
        Cond::new(
            "Accepted",
            State::True,
            "Served",
            format!("served by {}", view.serving.join(", ")),
        )
    };
    let ready = if view.ready.is_empty() {
        Cond::new(
            "Ready",
            State::False,
            "NoReadyRelay",
            "no Relay serving this domain is Ready",
        )
    } else {
        Cond::new(
            "Ready",
            State::True,
            "Served",
            format!("served by Ready Relay {}", view.ready.join(", ")),
        )
    };
    let dns_cond = match &dns {
        None => Cond::new(
            "DnsConfigured",
            State::Unknown,
            "NotChecked",
            "checked once a Relay serves this domain",
        ),
        Some(d) if d.points_at_relay => Cond::new(
            "DnsConfigured",
            State::True,
            "MxPointsAtRelay",
            d.message.clone(),
        ),
        Some(d) => Cond::new(
            "DnsConfigured",
            State::False,
            "MxElsewhere",
            d.message.clone(),
        ),
    };
    let generation = domain.metadata.generation;
    MailDomainStatus {
        observed_generation: generation,
        relays: view.serving.clone(),
        dns,
        dkim_record: old.dkim_record.clone(),
        conditions: merge(
            &old.conditions,
            &[accepted, ready, dns_cond],
            generation,
            now,
        ),
    }
}
