//! `/metrics`, `/healthz` and `/readyz` for Prometheus and the kubelet,
//! and the queue admin API (loopback only): `/queue…` and
//! `/queue/destinations`; and the signed internal API (`/internal/…`,
//! see `ops::internal`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::ops::admin::{self, QueueCommand};
use crate::ops::destinations::QueueControl;
use crate::ops::internal::{Internal, is_internal};
use crate::ops::metrics::Metrics;
use crate::spool::Spool;

/// Readiness: set once the spool is loaded, cleared when draining.
#[derive(Clone, Default)]
pub(crate) struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if health.is_ready() => respond(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// A queue command from `METHOD /queue[/ID[/ACTION]]`, or `None`.
fn queue_command(method: &hyper::Method, path: &str) -> Option<Result<QueueCommand, String>> {
    let rest = path.strip_prefix("/queue")?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let id = |s: &str| s.parse().map_err(|_| format!("{s:?} is not a queue id"));
    let get = method == hyper::Method::GET;
    let post = method == hyper::Method::POST;
    Some(match parts.as_slice() {
        [] if get => Ok(QueueCommand::List),
        ["flush"] if post => Ok(QueueCommand::Flush(None)),
        [one] if get => id(one).map(QueueCommand::Show),
        [one, "flush"] if post => id(one).map(|i| QueueCommand::Flush(Some(i))),
        [one, "hold"] if post => id(one).map(QueueCommand::Hold),
        [one, "release"] if post => id(one).map(QueueCommand::Release),
        [one, "delete"] if post => id(one).map(QueueCommand::Delete),
        _ => Err("use GET /queue, GET /queue/ID, GET /queue/destinations, POST /queue/flush or POST /queue/ID/{flush,hold,release,delete}".into()),
    })
}

/// The queue holds people's addresses and mail: only from inside the pod
/// (kubectl port-forward arrives on loopback too), never from the network.
fn forbidden(peer: std::net::SocketAddr) -> Option<Response<Full<Bytes>>> {
    (!peer.ip().is_loopback()).then(|| {
        respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "the queue endpoints answer on loopback only\n".into(),
        )
    })
}

/// `GET /queue/destinations`: each destination's state, as JSON.
fn destinations(manager: &dyn QueueControl, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
    if let Some(refused) = forbidden(peer) {
        return refused;
    }
    let rows = manager.destinations();
    match serde_json::to_string_pretty(&rows) {
        Ok(json) => respond(StatusCode::OK, "application/json", json + "\n"),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

async fn queue(
    spool: &Spool,
    manager: &dyn QueueControl,
    peer: std::net::SocketAddr,
    command: Result<QueueCommand, String>,
) -> Response<Full<Bytes>> {
    if let Some(refused) = forbidden(peer) {
        return refused;
    }
    let command = match command {
        Ok(c) => c,
        Err(e) => return respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let done = admin::execute_live(spool, &command, jiff::Timestamp::now().as_second()).await;
    if done.is_ok() {
        // The manager learns of changes made behind its back only here.
        match command {
            QueueCommand::Flush(None) => manager.look_all(),
            QueueCommand::Flush(Some(id)) | QueueCommand::Release(id) => manager.look(id),
            _ => {}
        }
    }
    match done {
        Ok(text) => respond(StatusCode::OK, "text/plain", text),
        Err(e @ admin::AdminError::NoSuchMessage { .. }) => {
            respond(StatusCode::NOT_FOUND, "text/plain", format!("{e}\n"))
        }
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

/// Serve until the task is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    spool: Spool,
    manager: Arc<dyn QueueControl>,
    internal: Option<Arc<Internal>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                continue;
            }
        };
        let (metrics, health, spool, manager, internal) = (
            Arc::clone(&metrics),
            health.clone(),
            spool.clone(),
            Arc::clone(&manager),
            internal.clone(),
        );
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (metrics, health, spool, manager, internal) = (
                    Arc::clone(&metrics),
                    health.clone(),
                    spool.clone(),
                    Arc::clone(&manager),
                    internal.clone(),
                );
                async move {
                    if is_internal(req.uri().path()) {
                        return Ok(crate::ops::internal::serve(
                            internal.as_deref(),
                            req,
                            peer.ip(),
                            health.is_ready(),
                        )
                        .await);
                    }
                    let path = req.uri().path();
                    let response = if path == "/queue/destinations"
                        && req.method() == hyper::Method::GET
                    {
                        destinations(manager.as_ref(), peer)
                    } else {
                        match queue_command(req.method(), path) {
                            Some(command) => queue(&spool, manager.as_ref(), peer, command).await,
                            None => route(path, &metrics, &health),
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_flag() {
        let (m, h) = (Metrics::new(), Health::default());
        assert_eq!(
            route("/readyz", &m, &h).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.set_ready(true);
        assert_eq!(route("/readyz", &m, &h).status(), StatusCode::OK);
        assert_eq!(route("/healthz", &m, &h).status(), StatusCode::OK);
        assert_eq!(route("/nope", &m, &h).status(), StatusCode::NOT_FOUND);
        m.messages_accepted
            .get_or_create(&crate::ops::metrics::ListenerLabel { listener: "smtp" })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("mailrelay_messages_accepted_total{listener=\"smtp\"} 1"),
            "{text}"
        );
    }
}
