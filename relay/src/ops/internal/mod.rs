//! The internal API between the operator and the pods, on the HTTP port
//! (see `mailrelay_crds::reports` for the paths and the signature):
//! `GET /internal/reports?start=UNIX`, `GET /internal/status` and
//! `POST /internal/submit`. Every request is signed with a key derived
//! from the Relay's hand-off secret; a relay without one answers 404, a
//! request without a valid signature 401 with the reason.

mod submit;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use mailrelay_crds::reports::{
    PodStatus, REPORTS_PATH, SIGNATURE_HEADER, STATUS_PATH, SUBMIT_PATH, Submission, verify_request,
};
use ring::hmac;

use crate::config::Current;
use crate::events::metrics::EventMetrics;
use crate::ops::reports::Reports;
use crate::spool::Spool;

/// Largest request body: a submitted report, base64, with room.
pub(crate) const MAX_BODY: usize = 25 << 20;
/// The period length assumed when the config names none (a relay whose
/// reports were switched off still serves what it counted).
const DEFAULT_PERIOD: u64 = 86_400;

/// What the internal API works with.
pub(crate) struct Internal {
    pub key: hmac::Key,
    pub current: Current,
    pub spool: Spool,
    pub reports: Reports,
    pub events: Arc<EventMetrics>,
    pub dkim: crate::dkim::DkimKeys,
}

/// Whether `path` is the internal API's.
pub(crate) fn is_internal(path: &str) -> bool {
    path.starts_with("/internal/")
}

type Answer = (StatusCode, &'static str, String);

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    body.push('\n');
    (status, "text/plain", body)
}

fn json<T: serde::Serialize>(value: &T) -> Answer {
    match serde_json::to_string(value) {
        Ok(j) => (StatusCode::OK, "application/json", j),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Check a request's signature at `now`: `Err` is the 401 to answer.
pub(crate) fn authorize(
    key: &hmac::Key,
    header: Option<&str>,
    now: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), Answer> {
    verify_request(key, header, now, method, path_and_query, body)
        .map_err(|e| text(StatusCode::UNAUTHORIZED, e.to_string()))
}

/// Answer one request to `/internal/…`.
pub(crate) async fn serve(
    internal: Option<&Internal>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match internal {
        None => text(StatusCode::NOT_FOUND, "not found"),
        Some(api) => answer(api, req, peer).await,
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn answer(api: &Internal, req: Request<Incoming>, peer: IpAddr) -> Answer {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body refused: {e}"),
            );
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let header = parts
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let now = jiff::Timestamp::now().as_second();
    if let Err(refused) = authorize(
        &api.key,
        header,
        now,
        parts.method.as_str(),
        path_and_query,
        &body,
    ) {
        tracing::warn!(%peer, path = parts.uri.path(), reason = %refused.2.trim_end(), "internal API request refused");
        return refused;
    }
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, REPORTS_PATH) => match start_of(parts.uri.query()) {
            Some(start) => {
                let rt = api.current.get();
                let period = rt
                    .config
                    .reports
                    .as_ref()
                    .map_or(DEFAULT_PERIOD, |c| c.period_secs);
                json(&api.reports.period(start, period))
            }
            None => text(StatusCode::BAD_REQUEST, "use ?start=UNIX"),
        },
        (&Method::GET, STATUS_PATH) => {
            let rt = api.current.get();
            let hooks = rt.config.events.webhooks.iter();
            json(&PodStatus {
                webhooks: (api.events.health)
                    .status(hooks.map(|w| (w.name.as_str(), w.url.as_str()))),
            })
        }
        (&Method::POST, SUBMIT_PATH) => match serde_json::from_slice::<Submission>(&body) {
            Ok(sub) => match submit::submit(api, &sub, peer).await {
                Ok(done) => json(&done),
                Err(e) => text(e.status(), e.to_string()),
            },
            Err(e) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not a submission: {e}"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `start=UNIX` from a query string.
fn start_of(query: Option<&str>) -> Option<i64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("start="))
        .and_then(|v| v.parse().ok())
}
