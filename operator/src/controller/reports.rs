//! The fleet reports (`Relay.spec.reports`). A receiver expects one
//! report per reporting organisation and period, and a Relay is many
//! pods: once a period is over, this loop asks every pod of the Relay for
//! its aggregates of it (`/internal/reports`), merges them, and sends one
//! DMARC report and one TLS-RPT report per domain, as mail through the
//! Relay itself (a pod's `/internal/submit`, so it is queued, retried and
//! DKIM-signed like any other mail of the From domain), and TLS-RPT also
//! to `https` destinations. `status.reports` says which period was sent
//! last; it is what keeps a period from being sent twice, so it is
//! written under a field manager of its own that the reconcile never
//! touches.
//!
//! Pods scaled away in the meantime still count: a draining pod hands its
//! aggregates to a peer with its queue. While a pod is draining, its
//! counts are on their way, so the period waits for the next look.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hickory_resolver::TokioResolver;
use jiff::Timestamp;
use kube::ResourceExt;
use mailrelay_crds::Relay;
use mailrelay_crds::compile::normalize;
use mailrelay_crds::events::WebhookUrl;
use mailrelay_crds::reports::{
    PeriodAggregates, ReportKind, ReportsSpec, ReportsStatus, Submission,
};
use tokio_rustls::rustls::ClientConfig;

use super::Context;
use crate::fleet::{self, FleetError, PodApi, RelayPod};
use crate::report_format::{
    self, Destination, Recipients, Reporter, dmarc_destinations, dmarc_mail, dmarc_reports,
    tls_reports, tlsrpt_destinations, tlsrpt_mail,
};

/// The field manager of `status.reports`.
const MANAGER: &str = "mailrelay-operator-reports";
/// How far back a period is still sent (the pods keep a week of them).
const HISTORY_SECS: i64 = 7 * 86_400;
/// A pod that does not answer holds its period back this long; then the
/// report goes without its counts, and the status says so.
const PATIENCE_SECS: i64 = 600;
/// How long an `https` TLS-RPT POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("no pod of the Relay took the report mail: {0}")]
    NotQueued(String),
    #[error("pods {0} are draining; their counts are on the way to a peer")]
    Draining(String),
    #[error("pod {0} did not give its counts: {1}")]
    Silent(String, FleetError),
    #[error("cannot write status.reports: {0}")]
    Status(#[from] crate::apply::ApiError),
}

/// The starts of the periods of `len` seconds to send now: every period
/// over (by `grace` seconds) since `last_end` (or, the first time, the one
/// that just ended), at most a week back.
pub(crate) fn due(last_end: Option<i64>, now: i64, len: i64, grace: i64) -> Vec<i64> {
    let len = len.max(1);
    let current = now.div_euclid(len) * len;
    let oldest = (now - HISTORY_SECS).div_euclid(len) * len;
    let first = last_end.unwrap_or(current - len).max(oldest);
    (0..)
        .map(|i| first + i * len)
        .take_while(|start| start + len + grace <= now)
        .collect()
}

/// Every `interval`, send what is due for every Relay with reports.
pub(crate) async fn run(
    ctx: Arc<Context>,
    interval: Duration,
    dns: TokioResolver,
    https: Option<Arc<ClientConfig>>,
) {
    let out = Out { dns, https };
    let mut sent: HashMap<(String, String), i64> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for relay in ctx.cluster.relays().state() {
            let Some(spec) = relay.spec.reports.as_ref() else {
                continue;
            };
            let key = (relay.namespace().unwrap_or_default(), relay.name_any());
            let shown = format!("{}/{}", key.0, key.1);
            // A bad period is the reconcile's to report (ConfigValid).
            let Ok(period) = normalize::duration(&spec.period) else {
                continue;
            };
            let len = i64::try_from(period.as_secs()).unwrap_or(i64::MAX).max(10);
            let recorded = relay
                .status
                .as_ref()
                .and_then(|s| s.reports.as_ref())
                .and_then(|r| r.last_period_end.as_deref())
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| t.as_second());
            let last_end = recorded.max(sent.get(&key).copied());
            let now = Timestamp::now().as_second();
            // Pods flush and hand off within seconds; a day's period waits a minute.
            let grace = (len / 10).min(60);
            for start in due(last_end, now, len, grace) {
                match report_period(&ctx, &out, &relay, spec, start, len, now).await {
                    Ok(()) => {
                        sent.insert(key.clone(), start + len);
                    }
                    Err(e) => {
                        tracing::warn!(relay = %shown, period_start = start, error = %e, "fleet report not sent yet; will try again");
                        break;
                    }
                }
            }
        }
    }
}

/// Where reports go out: DNS for their destinations, TLS for `https`.
struct Out {
    dns: TokioResolver,
    https: Option<Arc<ClientConfig>>,
}

async fn report_period(
    ctx: &Context,
    out: &Out,
    relay: &Relay,
    spec: &ReportsSpec,
    start: i64,
    len: i64,
    now: i64,
) -> Result<(), ReportError> {
    let client = ctx.cluster.client();
    let (ns, name) = (relay.namespace().unwrap_or_default(), relay.name_any());
    let pods = fleet::pods(client, &ns, &name).await?;
    let draining: Vec<&str> = pods
        .iter()
        .filter(|p| p.terminating)
        .map(|p| p.name.as_str())
        .collect();
    if !draining.is_empty() && now < start + len + PATIENCE_SECS {
        return Err(ReportError::Draining(draining.join(", ")));
    }
    let api = PodApi::new(fleet::key(client, &ns, &name).await?);
    let mut merged = PeriodAggregates::new(start, start + len);
    let mut failures = Vec::new();
    for pod in &pods {
        match api.reports(pod, start).await {
            Ok(agg) => merged.merge(&agg),
            Err(e) if now < start + len + PATIENCE_SECS => {
                return Err(ReportError::Silent(pod.name.clone(), e));
            }
            Err(e) => failures.push(format!("pod {}: counts missing: {e}", pod.name)),
        }
    }
    let who = Reporter::new(spec, &format!("{ns}/{name}"));
    let mut sent = 0u32;
    let at = Timestamp::from_second(now).unwrap_or_else(|_| Timestamp::now());
    if spec.kinds.contains(&ReportKind::Dmarc) {
        for report in dmarc_reports(&merged, &who) {
            let what = format!("DMARC {}", report.domain);
            let dests = match dmarc_destinations(&out.dns, &report.domain).await {
                Ok(d) => d,
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            let build = |to: &[String]| dmarc_mail(&report, &who, to, at);
            if mail(&api, &pods, spec, &dests, build, &what, &mut failures).await? {
                sent += 1;
            }
        }
    }
    if spec.kinds.contains(&ReportKind::TlsRpt) {
        for report in tls_reports(&merged, &who) {
            let what = format!("TLS-RPT {}", report.domain);
            let dests = match tlsrpt_destinations(&out.dns, &report.domain).await {
                Ok(d) => d,
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            let build = |to: &[String]| tlsrpt_mail(&report, &who, to, at);
            let mut delivered =
                mail(&api, &pods, spec, &dests, build, &what, &mut failures).await?;
            let body = report_format::gzip(report.json.as_bytes());
            for url in Recipients::for_size(&dests, 0).https {
                match post(&url, &body, out.https.clone()).await {
                    Ok(()) => delivered = true,
                    Err(e) => failures.push(format!("{what}: {url}: {e}")),
                }
            }
            if delivered {
                sent += 1;
            }
        }
    }
    let status = ReportsStatus {
        last_period_start: Some(rfc3339(start)),
        last_period_end: Some(rfc3339(start + len)),
        sent,
        failures,
    };
    tracing::info!(relay = %format!("{ns}/{name}"), period_start = start, sent, failures = status.failures.len(), "fleet reports sent");
    ctx.cluster
        .apply_status_as(relay, &serde_json::json!({ "reports": status }), MANAGER)
        .await?;
    Ok(())
}

/// Queue the report mail to the mailto destinations it fits (`true` when
/// queued); `Err` only when no pod would take it, so the period is tried
/// again.
async fn mail(
    api: &PodApi,
    pods: &[RelayPod],
    spec: &ReportsSpec,
    dests: &[Destination],
    build: impl Fn(&[String]) -> Vec<u8>,
    what: &str,
    failures: &mut Vec<String>,
) -> Result<bool, ReportError> {
    let everyone = Recipients::addresses(dests);
    if everyone.is_empty() {
        return Ok(false);
    }
    let mut message = build(&everyone);
    let fits = Recipients::for_size(dests, message.len() as u64);
    for t in &fits.too_large {
        failures.push(format!("{what}: {t}"));
    }
    if fits.mailto.is_empty() {
        return Ok(false);
    }
    if fits.mailto.len() < everyone.len() {
        message = build(&fits.mailto);
    }
    let submission = Submission {
        from: spec.from.clone(),
        to: fits.mailto,
        message: base64::engine::general_purpose::STANDARD.encode(&message),
    };
    let mut last = String::from("the Relay has no pods");
    // Ready pods first; any pod with a spool will do.
    let mut order: Vec<&RelayPod> = pods.iter().filter(|p| !p.terminating).collect();
    order.sort_by_key(|p| !p.ready);
    for pod in order {
        match api.submit(pod, &submission).await {
            Ok(queued) => {
                tracing::info!(pod = %pod.name, queue_id = %queued.queue_id, report = what, "report mail queued");
                return Ok(true);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(ReportError::NotQueued(last))
}

/// RFC 8460 §5.4: POST the gzip'd report with its media type.
async fn post(url: &str, body: &[u8], tls: Option<Arc<ClientConfig>>) -> Result<(), String> {
    let parsed = WebhookUrl::parse(url)?;
    let answer = fleet::http::send(fleet::http::Call {
        url: &parsed,
        method: "POST",
        headers: vec![("content-type", "application/tlsrpt+gzip".into())],
        body: body.to_vec(),
        timeout: POST_TIMEOUT,
        tls,
    })
    .await
    .map_err(|e| e.to_string())?;
    if (200..300).contains(&answer.status) {
        Ok(())
    } else {
        Err(format!("HTTP {}", answer.status))
    }
}

fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_look_sends_the_period_just_over_and_later_looks_every_one_since() {
        let day = 86_400;
        let now = 100 * day + 3600;
        assert_eq!(due(None, now, day, 60), vec![99 * day]);
        // Within the grace after midnight: not yet.
        assert_eq!(due(None, 100 * day + 30, day, 60), Vec::<i64>::new());
        assert_eq!(
            due(Some(97 * day), now, day, 60),
            vec![97 * day, 98 * day, 99 * day]
        );
        assert_eq!(due(Some(100 * day), now, day, 60), Vec::<i64>::new());
        // Never more than a week back.
        assert_eq!(due(Some(0), now, day, 60).first(), Some(&(93 * day)));
        // Short periods, for tests.
        assert_eq!(due(Some(1000), 1065, 20, 2), vec![1000, 1020, 1040]);
    }
}
