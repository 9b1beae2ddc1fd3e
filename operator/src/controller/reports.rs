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
    #[error("pods {0} are draining or have no address yet; their counts are not all in one place")]
    Moving(String),
    #[error("the Relay has {0} replicas but no pod was found")]
    NoPods(i32),
    #[error("the Relay's pods changed while their counts were read")]
    Changed,
    #[error("pod {0} did not give its counts: {1}")]
    Silent(String, FleetError),
}

/// Failure lines kept in `status.reports.failures`: the status must stay
/// small (a Relay may deliver to thousands of domains a day).
const LISTED_FAILURES: usize = 20;

/// The starts of the periods of `len` seconds to send now: every period
/// over (by `grace` seconds) since `last_end` (or, the first time, the one
/// that just ended), at most a week back.
pub(crate) fn due(last_end: Option<i64>, now: i64, len: i64, grace: i64) -> Vec<i64> {
    let len = len.max(1);
    let current = now.div_euclid(len) * len;
    let oldest = (now - HISTORY_SECS).div_euclid(len) * len;
    // Aligned up: after a change of period length, the first start of
    // the new length after the last period sent (the pods count by it).
    let first = last_end.unwrap_or(current - len).max(oldest);
    let first = (first + len - 1).div_euclid(len) * len;
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
    // Statuses not written yet (the API server refused): the reports went
    // out, so they are never sent again; the status is written later.
    let mut unwritten: HashMap<(String, String), ReportsStatus> = HashMap::new();
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
            if let Some(status) = unwritten.get(&key) {
                match write(&ctx, &relay, status).await {
                    Ok(()) => {
                        unwritten.remove(&key);
                    }
                    Err(e) => {
                        tracing::warn!(relay = %shown, error = %e, "cannot write status.reports; will try again");
                        continue;
                    }
                }
            }
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
                    Ok(status) => {
                        sent.insert(key.clone(), start + len);
                        if let Err(e) = write(&ctx, &relay, &status).await {
                            tracing::warn!(relay = %shown, error = %e, "cannot write status.reports; will try again");
                            unwritten.insert(key.clone(), status);
                            break;
                        }
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

async fn write(
    ctx: &Context,
    relay: &Relay,
    status: &ReportsStatus,
) -> Result<(), crate::apply::ApiError> {
    ctx.cluster
        .apply_status_as(relay, &serde_json::json!({ "reports": status }), MANAGER)
        .await
}

/// The pods whose counts cannot be read in one go now: draining (their
/// counts are moving to a peer) or not yet addressed.
fn moving(pods: &[RelayPod]) -> Vec<&str> {
    pods.iter()
        .filter(|p| p.terminating || p.addr.is_none())
        .map(|p| p.name.as_str())
        .collect()
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
) -> Result<ReportsStatus, ReportError> {
    let client = ctx.cluster.client();
    let (ns, name) = (relay.namespace().unwrap_or_default(), relay.name_any());
    let patient = now < start + len + PATIENCE_SECS;
    let pods = fleet::pods(client, &ns, &name).await?;
    let busy = moving(&pods);
    if !busy.is_empty() && patient {
        return Err(ReportError::Moving(busy.join(", ")));
    }
    let replicas = relay.status.as_ref().map_or(0, |s| s.replicas);
    if pods.is_empty() && replicas > 0 && patient {
        return Err(ReportError::NoPods(replicas));
    }
    let api = PodApi::new(fleet::key(client, &ns, &name).await?);
    let mut merged = PeriodAggregates::new(start, start + len);
    let mut failures = Vec::new();
    for pod in &pods {
        match api.reports(pod, start).await {
            Ok(agg) => merged.merge(&agg),
            Err(e) if patient => return Err(ReportError::Silent(pod.name.clone(), e)),
            Err(e) => failures.push(format!("pod {}: counts missing: {e}", pod.name)),
        }
    }
    // A pod that began draining while the others were read may have
    // handed its counts to one read before it (counted twice) or after
    // (counted not at all): read again later.
    if fleet::pods(client, &ns, &name).await? != pods && patient {
        return Err(ReportError::Changed);
    }
    let who = Reporter::new(spec, &format!("{ns}/{name}"));
    let mut sent = 0u32;
    let at = Timestamp::from_second(now).unwrap_or_else(|_| Timestamp::now());
    let mut outbox = Outbox {
        api: &api,
        pods: &pods,
        spec,
        queued: 0,
        failures: &mut failures,
    };
    if spec.kinds.contains(&ReportKind::Dmarc) {
        for report in dmarc_reports(&merged, &who) {
            let what = format!("DMARC {}", report.domain);
            let Some(dests) = destinations(
                dmarc_destinations(&out.dns, &report.domain).await,
                &what,
                outbox.failures,
            ) else {
                continue;
            };
            let build = |to: &[String]| dmarc_mail(&report, &who, to, at);
            if outbox.mail(&dests, build, &what).await? {
                sent += 1;
            }
        }
    }
    if spec.kinds.contains(&ReportKind::TlsRpt) {
        for report in tls_reports(&merged, &who) {
            let what = format!("TLS-RPT {}", report.domain);
            let Some(dests) = destinations(
                tlsrpt_destinations(&out.dns, &report.domain).await,
                &what,
                outbox.failures,
            ) else {
                continue;
            };
            let build = |to: &[String]| tlsrpt_mail(&report, &who, to, at);
            let mut delivered = outbox.mail(&dests, build, &what).await?;
            let body = report_format::gzip(report.json.as_bytes());
            for url in Recipients::for_size(&dests, 0).https {
                match post(&url, &body, out.https.clone()).await {
                    Ok(()) => delivered = true,
                    Err(e) => outbox
                        .failures
                        .push(format!("{what}: {}: {e}", shown_url(&url))),
                }
            }
            if delivered {
                sent += 1;
            }
        }
    }
    let listed = failures.len();
    if listed > LISTED_FAILURES {
        failures.truncate(LISTED_FAILURES);
        failures.push(format!("and {} more", listed - LISTED_FAILURES));
    }
    tracing::info!(relay = %format!("{ns}/{name}"), period_start = start, sent, failures = listed, "fleet reports sent");
    Ok(ReportsStatus {
        last_period_start: Some(rfc3339(start)),
        last_period_end: Some(rfc3339(start + len)),
        sent,
        failures,
    })
}

/// The destinations of a report, or `None`: a domain that publishes no
/// record asked for no report (most domains, for TLS-RPT) and is not a
/// failure; anything else is.
fn destinations(
    found: Result<Vec<Destination>, report_format::RuaError>,
    what: &str,
    failures: &mut Vec<String>,
) -> Option<Vec<Destination>> {
    match found {
        Ok(d) => Some(d),
        Err(report_format::RuaError::NoRecord { .. }) => None,
        Err(e) => {
            failures.push(format!("{what}: {e}"));
            None
        }
    }
}

/// An `https` destination as the status shows it: without its path and
/// query, which may carry a token.
fn shown_url(url: &str) -> String {
    match WebhookUrl::parse(url) {
        Ok(u) => format!("https://{}:{}/…", u.host, u.port),
        Err(_) => "an https destination".into(),
    }
}

/// The report mails of one period, queued through the Relay's pods.
struct Outbox<'a> {
    api: &'a PodApi,
    pods: &'a [RelayPod],
    spec: &'a ReportsSpec,
    /// Mails queued so far this period.
    queued: usize,
    failures: &'a mut Vec<String>,
}

impl Outbox<'_> {
    /// Queue the report mail to the mailto destinations it fits (`true`
    /// when queued). When no pod takes it: `Err` if nothing was queued
    /// yet this period (the period is tried again, nothing is sent
    /// twice), a failure line otherwise (what went out stays out).
    async fn mail(
        &mut self,
        dests: &[Destination],
        build: impl Fn(&[String]) -> Vec<u8>,
        what: &str,
    ) -> Result<bool, ReportError> {
        let everyone = Recipients::addresses(dests);
        if everyone.is_empty() {
            return Ok(false);
        }
        let mut message = build(&everyone);
        let fits = Recipients::for_size(dests, message.len() as u64);
        for t in &fits.too_large {
            self.failures.push(format!("{what}: {t}"));
        }
        if fits.mailto.is_empty() {
            return Ok(false);
        }
        if fits.mailto.len() < everyone.len() {
            message = build(&fits.mailto);
        }
        let submission = Submission {
            from: self.spec.from.clone(),
            to: fits.mailto,
            message: base64::engine::general_purpose::STANDARD.encode(&message),
        };
        let mut last = String::from("the Relay has no pods");
        // Ready pods first; any pod with a spool will do.
        let mut order: Vec<&RelayPod> = self.pods.iter().filter(|p| !p.terminating).collect();
        order.sort_by_key(|p| !p.ready);
        for pod in order {
            match self.api.submit(pod, &submission).await {
                Ok(queued) => {
                    tracing::info!(pod = %pod.name, queue_id = %queued.queue_id, report = what, "report mail queued");
                    self.queued += 1;
                    return Ok(true);
                }
                Err(e) => last = e.to_string(),
            }
        }
        if self.queued == 0 {
            return Err(ReportError::NotQueued(last));
        }
        self.failures.push(format!("{what}: not queued: {last}"));
        Ok(false)
    }
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
        // The period grew from an hour to a day: the next whole day.
        assert_eq!(
            due(Some(99 * day + 3600), now + day, day, 60),
            vec![100 * day]
        );
    }
}
