//! The internal API between the operator and the pods, on the HTTP port
//! (see `mailrelay_crds::reports` for the paths and the signature):
//! `GET /internal/reports?start=UNIX`, `GET /internal/status` and
//! `POST /internal/submit`. Every request is signed with a key derived
//! from the Relay's hand-off secret; a relay without one answers 404, a
//! request without a valid signature 401 with the reason.
//!
//! Anyone in the cluster can reach the port, so nothing is buffered for a
//! stranger: the signature header must be there and its time fresh before
//! a body is read (the MAC, which covers the body, is checked after);
//! only `POST /internal/submit` may have a body, at most [`body_limit`];
//! and at most [`MAX_AT_ONCE`] requests are served at once (503 past it).

mod submit;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use mailrelay_crds::reports::{
    PodStatus, REPORTS_PATH, SIGNATURE_HEADER, STATUS_PATH, SUBMIT_PATH, Submission,
    fresh_signature, verify_request,
};
use ring::hmac;
use tokio::sync::Semaphore;

use crate::config::Current;
use crate::events::metrics::EventMetrics;
use crate::ops::reports::Reports;
use crate::spool::Spool;

/// Requests served at once: the operator asks one pod a few questions
/// per period; more at once is somebody else.
pub(crate) const MAX_AT_ONCE: usize = 4;
/// Room in a submission's body beyond its base64 message: the JSON
/// around it and the recipients.
const SUBMIT_SLACK: u64 = 1 << 20;
/// Time allowed for a body to arrive: a permit is not held by a trickle.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
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
    /// What bounds the API's work: requests at once, recent submissions.
    pub guard: Guard,
}

/// The API's own state.
pub(crate) struct Guard {
    busy: Semaphore,
    submitted: submit::Recent,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            busy: Semaphore::new(MAX_AT_ONCE),
            submitted: submit::Recent::default(),
        }
    }
}

/// The largest body of a submission to a relay whose messages may be
/// `max_message_size` bytes: base64 makes 3 bytes 4.
pub(crate) fn body_limit(max_message_size: u64) -> u64 {
    (max_message_size / 3 + 1)
        .saturating_mul(4)
        .saturating_add(SUBMIT_SLACK)
}

/// What may be read of a request's body, decided from its head alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyAllowed {
    None,
    UpTo(u64),
}

/// Whether a request may go on to have its body read: the signature
/// header present and fresh at `now`, and a body only where one belongs
/// (`has_body`: the request announced one), within `submit_limit`.
/// `Err` is the answer.
pub(crate) fn admit(
    method: &Method,
    path: &str,
    header: Option<&str>,
    content_length: Option<u64>,
    has_body: bool,
    now: i64,
    submit_limit: u64,
) -> Result<BodyAllowed, Answer> {
    fresh_signature(header, now).map_err(|e| text(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if method == Method::POST && path == SUBMIT_PATH {
        return match content_length {
            Some(n) if n > submit_limit => Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a submission is at most {submit_limit} bytes"),
            )),
            _ => Ok(BodyAllowed::UpTo(submit_limit)),
        };
    }
    if has_body {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("{method} {path} takes no body"),
        ));
    }
    Ok(BodyAllowed::None)
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

/// Answer one request to `/internal/…`; `ready`: whether the relay
/// takes mail (not starting, not draining).
pub(crate) async fn serve(
    internal: Option<&Internal>,
    req: Request<Incoming>,
    peer: IpAddr,
    ready: bool,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match internal {
        None => text(StatusCode::NOT_FOUND, "not found"),
        Some(api) => match api.guard.busy.try_acquire() {
            Ok(_permit) => answer(api, req, peer, ready).await,
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("busy: {MAX_AT_ONCE} requests at once; try again"),
            ),
        },
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn answer(api: &Internal, req: Request<Incoming>, peer: IpAddr, ready: bool) -> Answer {
    let (parts, body) = req.into_parts();
    let header = parts
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let content_length = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let now = jiff::Timestamp::now().as_second();
    let limits = api.current.get().config.limits.clone();
    let allowed = admit(
        &parts.method,
        parts.uri.path(),
        header,
        content_length,
        !body.is_end_stream(),
        now,
        body_limit(limits.max_message_size),
    );
    let body = match allowed {
        Err(refused) => {
            tracing::warn!(%peer, path = parts.uri.path(), reason = %refused.2.trim_end(), "internal API request refused before its body");
            return refused;
        }
        Ok(BodyAllowed::None) => Bytes::new(),
        Ok(BodyAllowed::UpTo(limit)) => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body refused: {e}"),
                    );
                }
                Err(_) => {
                    return text(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("the body took more than {BODY_TIMEOUT:?}"),
                    );
                }
            }
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
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
        (&Method::POST, SUBMIT_PATH) if !ready => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not taking mail (starting or draining); try another pod",
        ),
        (&Method::POST, SUBMIT_PATH) => match serde_json::from_slice::<Submission>(&body) {
            Ok(sub) => match submit::submit_once(api, &sub, &body, peer).await {
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
