//! The loops that talk to the Relays' pods rather than the API server:
//! the webhook health poll (here) and the fleet reports (`reports`).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use mailrelay_crds::Relay;
use tokio::sync::mpsc;

use super::Context;
use crate::fleet::{self, FleetError, PodApi, health::Seen};

/// What the pod loops need besides the context.
#[derive(Clone)]
pub struct FleetSettings {
    /// How often the pods are asked (webhook health, finished report periods).
    pub interval: Duration,
    /// Resolver for the reports' `rua` records; `None`: no reports are sent.
    pub resolver: Option<hickory_resolver::TokioResolver>,
    /// Roots for `https` report destinations; the Web PKI's when `None`.
    pub report_tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            interval: Duration::from_secs(30),
            resolver: None,
            report_tls: None,
        }
    }
}

/// Whether a Relay's pods may have event webhooks: its own, or a
/// MailDomain's of its namespace (which ones it serves is the compiled
/// config's business; asking a few pods too many is harmless).
fn may_have_webhooks(ctx: &Context, relay: &Relay) -> bool {
    let ns = relay.namespace();
    !relay.spec.events.webhooks.is_empty()
        || ctx
            .cluster
            .domains()
            .state()
            .iter()
            .any(|d| d.namespace() == ns && d.spec.events.webhook.is_some())
}

/// Ask every Relay's pods about their webhooks, every `interval`; when a
/// problem appears or goes, reconcile the Relays and the MailDomains so
/// their conditions say so (all of them: kube's trigger for one object is
/// still unstable, and a change of webhook health is rare).
pub(crate) async fn poll_webhooks(
    ctx: Arc<Context>,
    interval: Duration,
    relays: mpsc::UnboundedSender<()>,
    domains: mpsc::UnboundedSender<()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for relay in ctx.cluster.relays().state() {
            let (ns, name) = (relay.namespace().unwrap_or_default(), relay.name_any());
            let seen = if may_have_webhooks(&ctx, &relay) {
                match webhooks_of(&ctx, &ns, &name).await {
                    Ok(seen) => seen,
                    Err(e) => {
                        tracing::debug!(relay = %format!("{ns}/{name}"), error = %e, "cannot ask the pods about their webhooks");
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            if ctx.webhook_health.record(&ns, &name, seen) {
                tracing::info!(relay = %format!("{ns}/{name}"), "the pods' webhook health changed");
                let _ = relays.send(());
                let _ = domains.send(());
            }
        }
    }
}

async fn webhooks_of(ctx: &Context, ns: &str, relay: &str) -> Result<Seen, FleetError> {
    let client = ctx.cluster.client();
    let pods = fleet::pods(client, ns, relay).await?;
    if pods.is_empty() {
        return Ok(Vec::new());
    }
    let api = PodApi::new(fleet::key(client, ns, relay).await?);
    let mut seen = Vec::new();
    for pod in pods.iter().filter(|p| !p.terminating && p.addr.is_some()) {
        match api.status(pod).await {
            Ok(status) => seen.extend(status.webhooks.into_iter().map(|w| (pod.name.clone(), w))),
            // A pod starting or going: the next poll asks again.
            Err(e) => {
                tracing::debug!(pod = %pod.name, error = %e, "pod did not say how its webhooks are")
            }
        }
    }
    Ok(seen)
}
