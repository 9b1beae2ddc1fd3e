//! `spec.events` of a Relay and `spec.events.webhook` of its MailDomains:
//! webhooks checked and compiled into [`EventsConfig`]. A Relay's broken
//! webhook stops the Relay's compile (like any of its own fields); a
//! MailDomain's is left out and reported, and the domain still serves.

use super::{Problem, Report, normalize};
use crate::MailDomain;
use crate::common::ObjectRef;
use crate::config::{DomainConfig, EventsConfig, WebhookConfig};
use crate::events::{RelayEvents, Webhook, WebhookUrl};

/// Most events in one request (the CRD says the same).
const MAX_BATCH: i32 = 10_000;

/// The Relay's own webhooks and retention.
pub(super) fn relay_events(r: &mut Report<'_>, events: &RelayEvents) -> Option<EventsConfig> {
    let retention = r.check(
        "spec.events.retention",
        normalize::duration(&events.retention),
    );
    let mut webhooks = Vec::new();
    for (i, w) in events.webhooks.iter().enumerate() {
        let field = format!("spec.events.webhooks[{i}]");
        let name = format!("relay:{}", w.url);
        if webhooks.iter().any(|c: &WebhookConfig| c.name == name) {
            r.add(
                format!("{field}.url"),
                "each webhook url may appear only once",
            );
            continue;
        }
        if let Some(c) = webhook(r, &field, w, name, None) {
            webhooks.push(c);
        }
    }
    Some(EventsConfig {
        webhooks,
        retention_secs: retention?.as_secs(),
    })
}

/// Add the webhooks of the MailDomains that compiled, by domain name.
/// With no webhook at all the events config is left empty: a retention
/// with nothing to retain would only change the config's bytes.
pub(super) fn add_domain_webhooks(
    events: &mut EventsConfig,
    selected: &[&MailDomain],
    compiled: &[DomainConfig],
    problems: &mut Vec<Problem>,
) {
    let mut out = Vec::new();
    for md in selected {
        let Some(w) = &md.spec.events.webhook else {
            continue;
        };
        let Ok(name) = normalize::domain_name(&md.spec.domain) else {
            continue;
        };
        // A domain left out (a broken spec, a name another owns) gets no
        // webhook either: its events do not happen here.
        if !compiled.iter().any(|d| d.name == name) {
            continue;
        }
        let object = ObjectRef::of(*md);
        let mut r = Report {
            object: &object,
            problems,
        };
        if let Some(c) = webhook(
            &mut r,
            "spec.events.webhook",
            w,
            format!("domain:{name}"),
            Some(name),
        ) {
            out.push(c);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    events.webhooks.extend(out);
    if events.webhooks.is_empty() {
        *events = EventsConfig::default();
    }
}

fn webhook(
    r: &mut Report<'_>,
    field: &str,
    w: &Webhook,
    name: String,
    domain: Option<String>,
) -> Option<WebhookConfig> {
    let url = r.check(
        format!("{field}.url"),
        WebhookUrl::parse(&w.url).map(|_| ()),
    );
    let secret = r.secret(&format!("{field}.secret"), &w.secret);
    let window = r.check(
        format!("{field}.batchWindow"),
        normalize::duration(&w.batch_window),
    );
    let timeout = r.check(format!("{field}.timeout"), normalize::duration(&w.timeout));
    let timeout = timeout.filter(|t| {
        let ok = !t.is_zero();
        if !ok {
            r.add(format!("{field}.timeout"), "must be longer than 0s");
        }
        ok
    });
    let batch_size = u32::try_from(w.batch_size)
        .ok()
        .filter(|n| (1..=MAX_BATCH.unsigned_abs()).contains(n));
    if batch_size.is_none() {
        r.add(
            format!("{field}.batchSize"),
            format!("must be between 1 and {MAX_BATCH}"),
        );
    }
    let mut types = w.types.clone();
    types.sort();
    types.dedup();
    url?;
    Some(WebhookConfig {
        name,
        url: w.url.clone(),
        secret: secret?,
        types,
        domain,
        batch_size: batch_size?,
        batch_window_ms: u64::try_from(window?.as_millis()).unwrap_or(u64::MAX),
        timeout_ms: u64::try_from(timeout?.as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
