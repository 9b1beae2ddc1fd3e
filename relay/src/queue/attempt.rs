//! One delivery attempt: recipients that share a route, over the transport
//! that route calls for. Every recipient gets its own [`Outcome`].

use std::path::Path;

use mailrelay_crds::config::SmarthostConfig;
use mailrelay_crds::maildomain::TlsMode;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::destination::Dest;
use super::health::Contact;
use super::pool::{Client, Kept, Pool};
use super::router::{Route, smarthost_of};
use crate::config::runtime::Runtime;
use crate::config::runtime::base_local_part;
use crate::delivery::tls_policy::{Check, OutboundTls};
use crate::delivery::{
    Credentials, LmtpClient, Maildir, MxDns, OutboundConfig, Outcome, Security, SmtpClient, Target,
    Timeouts, resolve_host, route as mx_route,
};
use crate::events::build::Peer;
use crate::ops::metrics::{Metrics, ResultLabel};
use crate::spool::QueueId;
use mailrelay_crds::config::ShapeConfig;

/// What an attempt needs besides the message.
pub(crate) struct AttemptCtx<'a, D> {
    pub runtime: &'a Runtime,
    pub dns: &'a D,
    pub timeouts: Timeouts,
    /// Port of remote MX hosts: 25, except in tests on loopback.
    pub mx_port: u16,
    /// Connections kept from earlier messages.
    pub pool: &'a Pool,
    /// The destination, whose connections the pool keeps, and its shaping.
    pub dest: &'a Dest,
    pub shape: &'a ShapeConfig,
    pub metrics: &'a Metrics,
    /// Outbound TLS policy for MX delivery (see `tls_policy`).
    pub outbound_tls: &'a OutboundTls,
    /// The message being delivered, for the policy's log events.
    pub queue_id: Option<QueueId>,
    /// Where TLS sessions are counted for the reports (see `ops::reports`).
    pub reports: Option<&'a crate::ops::reports::Reports>,
}

/// What one attempt gave: an outcome per recipient, and what it learnt
/// of the destination (for its health).
pub(crate) struct Attempted {
    pub outcomes: Vec<Outcome>,
    pub contact: Contact,
    /// The server reached, for the events.
    pub peer: Option<Peer>,
}

impl Attempted {
    fn reached(outcomes: Vec<Outcome>) -> Self {
        Self {
            outcomes,
            contact: Contact::Reached,
            peer: None,
        }
    }

    /// Every one of `n` recipients gets `outcome`.
    fn with_peer(mut self, peer: Peer) -> Self {
        self.peer = Some(peer);
        self
    }

    fn all(outcome: Outcome, n: usize, contact: Contact) -> Self {
        Self {
            outcomes: vec![outcome; n],
            contact,
            peer: None,
        }
    }
}

/// Deliver `body` from `sender` to `recipients` (all on `route`).
pub(crate) async fn attempt<D: MxDns>(
    ctx: &AttemptCtx<'_, D>,
    route: &Route,
    sender: &str,
    recipients: &[String],
    body: &[u8],
) -> Attempted {
    // MX delivery follows the destination's TLS policy (tls_policy).
    let check = match route {
        Route::Mx { domain } => Some(Check {
            tls: ctx.outbound_tls,
            plan: (ctx.outbound_tls)
                .plan(
                    &ctx.runtime.config.outbound_tls,
                    domain,
                    ctx.queue_id,
                    ctx.metrics,
                )
                .await,
            domain,
            queue_id: ctx.queue_id,
            metrics: ctx.metrics,
            reports: ctx
                .reports
                .zip(ctx.runtime.config.reports.as_ref().filter(|c| c.tls_rpt)),
        }),
        _ => None,
    };
    if let Some((outcomes, peer)) = reuse(ctx, check.as_ref(), sender, recipients, body).await {
        let tried = Attempted::reached(outcomes);
        return match peer {
            Some(p) => tried.with_peer(p),
            None => tried,
        };
    }
    let hostname = &ctx.runtime.config.hostname;
    let all = |o: Outcome| Attempted::all(o, recipients.len(), Contact::Unknown);
    match route {
        Route::Lmtp { host, port } => {
            before_connecting(ctx).await;
            match LmtpClient::connect(host, *port, hostname, ctx.timeouts).await {
                Ok(mut client) => {
                    let outcomes = client.send(sender, recipients, body).await;
                    put_back(ctx, Client::Lmtp(Box::new(client)), 1).await;
                    Attempted::reached(outcomes).with_peer(Peer {
                        host: Some(host.clone()),
                        ..Peer::default()
                    })
                }
                Err(o) => Attempted::all(o, recipients.len(), Contact::Failed),
            }
        }
        Route::Smtp { host, port, tls } => match resolve_host(ctx.dns, host, *port).await {
            Ok(targets) => {
                let cfg = OutboundConfig::new(hostname.clone(), *tls).with_timeouts(ctx.timeouts);
                try_targets(ctx, &targets, &cfg, None, sender, recipients, body).await
            }
            Err(e) => all(route_failed(ctx.metrics, e)),
        },
        Route::Maildir { path } => {
            Attempted::reached(maildir(ctx.runtime, path, sender, recipients, body).await)
        }
        Route::Smarthost { tenant } => {
            let Some(s) = smarthost_of(ctx.runtime, tenant.as_deref()) else {
                return all(Outcome::temp(
                    "smarthost route without a smarthost in the config",
                ));
            };
            // A private smarthost's CA is trusted as for MX hosts (`--tls-ca`).
            let mut cfg = ctx.outbound_tls.configured(s.tls, hostname, ctx.timeouts);
            match smarthost_credentials(s, &ctx.runtime.config.secrets_dir) {
                Ok(Some(c)) => cfg = cfg.with_auth(c),
                Ok(None) => {}
                Err(reason) => return all(Outcome::temp(reason)),
            }
            match resolve_host(ctx.dns, &s.host, s.port).await {
                Ok(targets) => {
                    try_targets(ctx, &targets, &cfg, None, sender, recipients, body).await
                }
                Err(e) => all(route_failed(ctx.metrics, e)),
            }
        }
        Route::Mx { domain } => {
            let mut rng = StdRng::from_os_rng();
            match mx_route(ctx.dns, domain, ctx.mx_port, &mut rng).await {
                Ok(targets) => {
                    let check = check.as_ref();
                    let cfg = match check {
                        Some(c) => {
                            ctx.outbound_tls
                                .outbound_config(&c.plan, hostname, ctx.timeouts)
                        }
                        None => OutboundConfig::new(hostname.clone(), TlsMode::Opportunistic)
                            .with_timeouts(ctx.timeouts),
                    };
                    try_targets(ctx, &targets, &cfg, check, sender, recipients, body).await
                }
                Err(e) => all(route_failed(ctx.metrics, e)),
            }
        }
    }
}

fn route_failed(metrics: &Metrics, e: crate::delivery::RouteError) -> Outcome {
    use crate::delivery::RouteError as R;
    // The enhanced code goes first so the DSN's Status says what happened
    // (RFC 7505 §4.2: 5.1.10 for a null MX; RFC 3463: 5.1.2 bad domain).
    let code = match &e {
        R::NullMx { .. } => Some("5.1.10"),
        R::NoSuchDomain { .. } | R::NoAddress { .. } => Some("5.1.2"),
        _ => None,
    };
    match (Outcome::from(e), code) {
        (Outcome::PermFail { reason }, Some(code)) => Outcome::perm(format!("{code} {reason}")),
        (outcome @ Outcome::TempFail { .. }, _) => {
            metrics.dns_failures.inc();
            outcome
        }
        (outcome, _) => outcome,
    }
}

fn count_security(metrics: &Metrics, security: &Security) {
    let result = match security {
        Security::Clear => "clear",
        Security::ClearAfterTlsFailure { .. } => "clear_after_tls_failure",
        Security::Encrypted => "encrypted",
        Security::Verified => "verified",
    };
    metrics
        .outbound_connections
        .get_or_create(&ResultLabel { result })
        .inc();
}

/// Keep `client` (which has now carried `sent` messages) for the next
/// message, or close it before the attempt ends (see `pool`).
async fn put_back<D>(ctx: &AttemptCtx<'_, D>, client: Client, sent: u32) {
    let kept = Kept { client, sent };
    if let Some(client) = ctx.pool.put(ctx.dest, kept, ctx.shape) {
        client.quit().await;
    }
}

/// Wait for the destination's next connection slot (`connectionRate`).
async fn before_connecting<D>(ctx: &AttemptCtx<'_, D>) {
    let Some(rate) = ctx.shape.connection_rate else {
        return;
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let wait = (ctx.pool).connect_slot(ctx.dest, Some(rate), now_ms);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Send over a kept connection, if there is one. A connection the server
/// closed while it sat idle fails the whole transaction before anything
/// was accepted: then `None`, and the caller connects afresh.
async fn reuse<D>(
    ctx: &AttemptCtx<'_, D>,
    check: Option<&Check<'_>>,
    sender: &str,
    recipients: &[String],
    body: &[u8],
) -> Option<(Vec<Outcome>, Option<Peer>)> {
    let taken = ctx.pool.take(ctx.dest);
    for stale in taken.close {
        stale.quit().await;
    }
    let Kept { client, sent } = taken.kept?;
    let mut peer = None;
    let out = match client {
        // Kept under a weaker policy than the one now in force, or for a
        // host this domain's policy does not allow.
        Client::Smtp(c) if check.is_some_and(|k| !k.reusable(&c)) => {
            c.quit().await;
            return None;
        }
        Client::Smtp(mut c) => {
            peer = Some(Peer::of_smtp(&c));
            let out = c.send(sender, recipients, body).await;
            let broken = c.broken().is_some();
            put_back(ctx, Client::Smtp(c), sent.saturating_add(1)).await;
            (out, broken)
        }
        Client::Lmtp(mut c) => {
            let out = c.send(sender, recipients, body).await;
            let broken = c.broken().is_some();
            put_back(ctx, Client::Lmtp(c), sent.saturating_add(1)).await;
            (out, broken)
        }
    };
    match out {
        (outcomes, true)
            if outcomes
                .iter()
                .all(|o| matches!(o, Outcome::TempFail { .. })) =>
        {
            None
        }
        (outcomes, _) => Some((outcomes, peer)),
    }
}

/// Try each target in order until one takes the transaction (RFC 5321
/// §5.1: every address of every MX before giving up for now). `check`
/// applies an MX destination's TLS policy to each host and connection.
#[allow(clippy::too_many_arguments)]
async fn try_targets<D: MxDns>(
    ctx: &AttemptCtx<'_, D>,
    targets: &[Target],
    cfg: &OutboundConfig,
    check: Option<&Check<'_>>,
    sender: &str,
    recipients: &[String],
    body: &[u8],
) -> Attempted {
    let mut last = Outcome::temp("no address to connect to");
    // Only a host that refused us, or TLS that policy requires failing,
    // says the destination cannot take mail; a policy that rules a host
    // out says nothing of the destination.
    let mut contact = Contact::Unknown;
    for target in targets {
        if let Some(Err(outcome)) = check.map(|c| c.admit(target)) {
            last = outcome;
            continue;
        }
        before_connecting(ctx).await;
        let own = check.and_then(|c| c.config_for(target, cfg));
        match SmtpClient::connect_checked(target, own.as_ref().unwrap_or(cfg)).await {
            Ok(mut client) => {
                count_security(ctx.metrics, client.security());
                if let Some(Err(outcome)) = check.map(|c| c.connected(&client)) {
                    client.quit().await;
                    last = outcome;
                    contact = Contact::Failed;
                    continue;
                }
                let peer = Peer::of_smtp(&client);
                let outcomes = client.send(sender, recipients, body).await;
                put_back(ctx, Client::Smtp(Box::new(client)), 1).await;
                return Attempted::reached(outcomes).with_peer(peer);
            }
            Err(failure) => {
                let outcome = match check {
                    Some(c) => c.failed(target, failure),
                    None => failure.outcome,
                };
                tracing::info!(host = %target.host, addr = %target.addr, reason = %outcome, "connection failed; trying the next host");
                last = outcome;
                contact = Contact::Failed;
            }
        }
    }
    // A host that refused us is not the domain refusing the mail: retry later.
    let reason = match last {
        Outcome::PermFail { reason } | Outcome::TempFail { reason } => reason,
        Outcome::Delivered { reply } => reply,
    };
    Attempted::all(Outcome::temp(reason), recipients.len(), contact)
}

async fn maildir(
    runtime: &Runtime,
    path: &str,
    sender: &str,
    recipients: &[String],
    body: &[u8],
) -> Vec<Outcome> {
    let maildir = Maildir::new(path, &runtime.config.hostname);
    let mut out = Vec::with_capacity(recipients.len());
    for rcpt in recipients {
        let Some((local, domain)) = rcpt.rsplit_once('@') else {
            out.push(Outcome::perm(format!("550 5.1.3 {rcpt} is not an address")));
            continue;
        };
        let delimiter = runtime
            .domain(domain)
            .and_then(|d| d.inbound.recipient_delimiter);
        let local = local.to_lowercase();
        out.push(
            maildir
                .deliver(sender, base_local_part(&local, delimiter), body)
                .await,
        );
    }
    out
}

fn smarthost_credentials(
    s: &SmarthostConfig,
    secrets_dir: &str,
) -> Result<Option<Credentials>, String> {
    let (Some(user), Some(pass)) = (&s.username, &s.password) else {
        return Ok(None);
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| format!("cannot read smarthost credentials {}: {e}", p.display()))
    };
    Ok(Some(Credentials {
        username: read(&user.path(secrets_dir))?,
        password: read(&pass.path(secrets_dir))?,
    }))
}
