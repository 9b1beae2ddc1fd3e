//! Reconcile of a MailDomain: gather what its status needs (the Relays'
//! outcomes, the MX check, the DKIM key), write the status
//! (`crate::status::domain`) and announce its changes.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use mailrelay_crds::compile::normalize;
use mailrelay_crds::compile::selector::Selector;
use mailrelay_crds::{MailDomain, MailDomainStatus};

use super::{Context, Error};
use crate::dkim::KeyState;
use crate::status::domain::{DKIM_CONDITION, View, status};
use crate::status::{State, entered, find};

pub async fn reconcile(domain: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile("MailDomain");
    ctx.pending.begin("MailDomain", &*domain);
    let mut domain = (*domain).clone();
    if let Some(newest) = ctx.statuses.newest(&domain) {
        domain.status = Some(newest);
    }
    let result = reconcile_domain(&domain, &ctx).await;
    if let Err(e) = &result {
        timer.failed();
        tracing::warn!(maildomain = %domain.name_any(), error = %e, "reconcile failed");
    }
    result
}

async fn reconcile_domain(domain: &MailDomain, ctx: &Context) -> Result<Action, Error> {
    let ns = domain.namespace().unwrap_or_default();
    if domain.metadata.deletion_timestamp.is_some() {
        ctx.metrics.dkim_key(&ns, &domain.name_any(), None);
        return Ok(Action::await_change());
    }
    // A Relay not reconciled yet: its outcome will wake this again.
    let (outcomes, missing) = ctx.outcomes.in_namespace(ctx.cluster.relays(), &ns);
    if !missing.is_empty()
        && let Some(later) = ctx.outcomes.settling()
    {
        return Ok(Action::requeue(later));
    }
    let selecting: Vec<String> = ctx
        .cluster
        .relays()
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
    let mut view = View::new(domain, &outcomes, selecting);
    view.unknown = missing
        .into_iter()
        .filter(|r| view.selecting.contains(r))
        .collect();
    let dns = match (&ctx.mx, view.serving.is_empty()) {
        (Some(mx), false) => {
            let name = normalize::domain_name(&domain.spec.domain).unwrap_or_default();
            Some(mx.check_cached(&name, &view.external).await)
        }
        _ => None,
    };
    let dkim = dkim_key(domain, ctx, &ns).await;
    publish_dkim(domain, ctx, &ns, dkim.as_ref());
    let now = Time(Timestamp::now());
    let mut status = status(domain, &view, dns, dkim.as_ref(), &now);
    let old = domain.status.clone().unwrap_or_default();
    let webhook = webhook_condition(domain, ctx, &ns).await;
    let webhook_problem = webhook.as_ref().is_some_and(|c| c.state == State::False);
    crate::status::webhooks::add(
        &mut status.conditions,
        &old.conditions,
        webhook,
        domain.metadata.generation,
        &now,
    );
    if domain.status.as_ref() != Some(&status) {
        ctx.cluster.apply_status(domain, &status).await?;
        ctx.statuses.wrote(domain, &status);
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
            ctx.cluster
                .event(
                    domain,
                    EventType::Warning,
                    reason,
                    "Validate",
                    c.map(|c| c.message.clone()).unwrap_or_default(),
                )
                .await;
        }
        announce_dkim(domain, ctx, &old, &status, dkim.as_ref()).await;
        if entered(&old.conditions, &status.conditions, "Accepted", State::True) {
            ctx.cluster
                .event(
                    domain,
                    EventType::Normal,
                    "Accepted",
                    "Validate",
                    format!("served by {}", status.relays.join(", ")),
                )
                .await;
        }
    }
    let mx = (ctx.mx.is_some() && !view.serving.is_empty()).then_some(crate::mx::INTERVAL);
    // Secrets are not watched (that would cache every Secret of the
    // cluster): a DKIM key is looked at again after a while.
    let key = dkim.as_ref().map(|k| match k {
        KeyState::Ready { .. } => DKIM_RECHECK,
        KeyState::Problem { .. } => DKIM_RETRY,
    });
    // A missing webhook key is looked for again like a DKIM key.
    let key = key.into_iter().chain(webhook_problem.then_some(DKIM_RETRY));
    Ok(match mx.into_iter().chain(key).min() {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// How soon a DKIM key is read again: after a problem, and otherwise (a
/// rotated key changes the record).
const DKIM_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
const DKIM_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);

/// The domain's DKIM key, generated when asked for and missing — client.
async fn dkim_key(domain: &MailDomain, ctx: &Context, ns: &str) -> Option<KeyState> {
    let dkim = domain.spec.dkim.as_ref()?;
    let name = normalize::domain_name(&domain.spec.domain).ok()?;
    let state =
        crate::dkim::ensure(ctx.cluster.client(), ns, &domain.name_any(), &name, dkim).await;
    if let KeyState::Problem { reason, message } = &state {
        tracing::warn!(maildomain = %domain.name_any(), reason, %message, "DKIM key not usable");
    }
    Some(state)
}

/// The `EventWebhookReady` condition of the domain's webhook — client.
async fn webhook_condition(
    domain: &MailDomain,
    ctx: &Context,
    ns: &str,
) -> Option<crate::status::Cond> {
    let w = domain.spec.events.webhook.as_ref()?;
    let refs = [("spec.events.webhook.secret".to_string(), w.secret.clone())];
    let checks = crate::webhook_keys::check(ctx.cluster.client(), ns, &refs).await;
    // The relays name a domain's webhook by the domain (see compile).
    let name = format!(
        "domain:{}",
        normalize::domain_name(&domain.spec.domain).unwrap_or_default()
    );
    let unreachable = ctx.webhook_health.problems(ns, None, |n| n == name);
    crate::status::webhooks::condition(&checks, &unreachable)
}

/// The DKIM readiness gauge of this domain (deleted domains lose theirs
/// in `Context::forget_deleted_domains`).
fn publish_dkim(domain: &MailDomain, ctx: &Context, ns: &str, dkim: Option<&KeyState>) {
    let ready = dkim.map(|k| matches!(k, KeyState::Ready { .. }));
    ctx.metrics.dkim_key(ns, &domain.name_any(), ready);
}

/// Events for what happened to the DKIM key.
async fn announce_dkim(
    domain: &MailDomain,
    ctx: &Context,
    old: &MailDomainStatus,
    new: &MailDomainStatus,
    dkim: Option<&KeyState>,
) {
    match dkim {
        Some(KeyState::Ready {
            generated: true, ..
        }) => {
            let secret = domain
                .spec
                .dkim
                .as_ref()
                .map(|d| d.private_key.name.clone())
                .unwrap_or_default();
            ctx.cluster.event(
                domain,
                EventType::Normal,
                "DkimKeyGenerated",
                "GenerateKey",
                format!("generated a DKIM key into Secret {secret}; publish the record in status.dkimRecord"),
            )
            .await;
        }
        Some(KeyState::Problem { reason, message })
            if entered(
                &old.conditions,
                &new.conditions,
                DKIM_CONDITION,
                State::False,
            ) =>
        {
            ctx.cluster
                .event(
                    domain,
                    EventType::Warning,
                    reason,
                    "ReadKey",
                    message.clone(),
                )
                .await;
        }
        _ => {}
    }
}
