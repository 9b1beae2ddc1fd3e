//! One task per webhook: batches of durable events POSTed as a JSON
//! array, signed (see `sign`), in log order — so in order per queue id —
//! each batch until the receiver answers 2xx (at least once), with
//! exponential back-off while it does not. An event older than the
//! retention is dropped unsent and counted. Batches go over one kept
//! HTTP/1.1 connection (see [`Link`]), opened again when the receiver
//! closed it, after a failure, or after [`MAX_IDLE`] unused.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use mailrelay_crds::config::WebhookConfig;
use mailrelay_crds::events::WebhookUrl;
use ring::hmac;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::log::{Backlog, Batch, Entry};
use super::metrics::EventMetrics;
use super::sign;

/// The first wait after a failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle sender looks at retention and its gauge.
const IDLE_LOOK: Duration = Duration::from_secs(5);
/// Bytes of a receiver's answer read (and thrown away) at most.
const MAX_ANSWER: usize = 64 * 1024;
/// How long a kept connection may sit unused before the sender closes it
/// itself. Under the 60 s after which common load balancers (and nginx at
/// 75 s) close an idle connection, so that usually the sender closes it
/// first and rarely sends into one the receiver is closing; far under the
/// minutes after which NAT tables and network load balancers forget a
/// quiet flow without a word, which only the timeout would find out. A
/// receiver that closes sooner (Node's and Apache's 5 s) costs one retry
/// on a fresh connection, not a failure.
const MAX_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP with {0}: {1}")]
    Http(String, String),
    #[error("{0} answered {1}")]
    Status(String, u16),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

pub(crate) struct Sender {
    pub config: WebhookConfig,
    pub url: WebhookUrl,
    pub key: hmac::Key,
    pub backlog: Arc<Backlog>,
    pub metrics: Arc<EventMetrics>,
    pub retention_secs: u64,
    pub tls: Arc<ClientConfig>,
}

impl Sender {
    /// Runs until aborted (the webhook left the config, or the relay stops).
    pub(crate) async fn run(self) {
        let name = self.config.name.clone();
        let mut cursor = self.backlog.register(&name);
        let mut backoff = FIRST_BACKOFF;
        // A new sender (a changed URL or config) starts with no connection.
        let mut link = Link::new(
            self.url.clone(),
            self.config.url.clone(),
            Arc::clone(&self.tls),
        );
        tracing::info!(webhook = %name, url = %self.config.url, from = cursor, "event webhook sender started");
        loop {
            self.gauge();
            let batch = self.next_batch(cursor, &mut link).await;
            let now = jiff::Timestamp::now().as_second();
            let oldest = now.saturating_sub(i64::try_from(self.retention_secs).unwrap_or(i64::MAX));
            let (live, expired): (Vec<&Entry>, Vec<&Entry>) =
                batch.entries.iter().partition(|e| e.time >= oldest);
            let taken = batch.entries.len() as u64;
            if !live.is_empty()
                && let Err(e) = self.post(&mut link, &live).await
            {
                self.metrics.count("failed", live.len());
                (self.metrics.health).failed(&name, &self.config.url, e.to_string(), now);
                tracing::warn!(webhook = %name, events = live.len(), error = %e, retry_in = ?backoff, "event webhook failed; will retry");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            backoff = FIRST_BACKOFF;
            if !live.is_empty() {
                (self.metrics.health).succeeded(&name, &self.config.url, now);
            }
            self.metrics.count("delivered", live.len());
            if !expired.is_empty() {
                self.metrics.count("expired", expired.len());
                tracing::warn!(webhook = %name, events = expired.len(), "events older than the retention dropped unsent");
            }
            self.backlog.ack(&name, batch.next, taken);
            cursor = batch.next;
        }
    }

    fn gauge(&self) {
        let pending = self.backlog.pending(&self.config.name);
        (self.metrics.health).pending(&self.config.name, &self.config.url, pending);
        self.metrics
            .pending(&self.config.name)
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// The next batch with at least one event: as soon as it is full, or
    /// once the batch window has passed since its first event was seen.
    /// While it fills, only the webhook's pending count is looked at, not
    /// the log.
    async fn next_batch(&self, mut cursor: u64, link: &mut Link) -> Batch {
        let name = &self.config.name;
        let size = self.config.batch_size as usize;
        let mut deadline: Option<Instant> = None;
        loop {
            link.expire_idle();
            let grew = self.backlog.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            let pending = usize::try_from(self.backlog.pending(name)).unwrap_or(usize::MAX);
            if pending > 0 {
                let until = *deadline.get_or_insert_with(|| {
                    Instant::now() + Duration::from_millis(self.config.batch_window_ms)
                });
                if pending < size && Instant::now() < until {
                    let _ = tokio::time::timeout_at(until, grew).await;
                    continue;
                }
            }
            let batch = self.backlog.batch(name, cursor, size);
            if !batch.entries.is_empty() {
                return batch;
            }
            if batch.next > cursor {
                // Nothing of ours up to here: skip it for good.
                self.backlog.ack(name, batch.next, 0);
                cursor = batch.next;
                continue;
            }
            if tokio::time::timeout(IDLE_LOOK, grew).await.is_err() {
                self.gauge();
            }
        }
    }

    async fn post(&self, link: &mut Link, events: &[&Entry]) -> Result<(), PostError> {
        let mut body =
            Vec::with_capacity(events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(e.json.as_bytes());
        }
        body.push(b']');
        let signature = sign::signature(&self.key, jiff::Timestamp::now().as_second(), &body);
        let limit = Duration::from_millis(self.config.timeout_ms);
        link.post(Bytes::from(body), &signature, limit).await
    }
}

fn host_header(u: &WebhookUrl) -> String {
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    match (u.https, u.port) {
        (true, 443) | (false, 80) => host,
        (_, port) => format!("{host}:{port}"),
    }
}

/// One HTTP/1.1 connection to a receiver (TCP, or TLS over it), kept
/// between batches so that a busy webhook pays for one handshake, not one
/// per batch.
struct Conn {
    http: SendRequest<Full<Bytes>>,
    /// Owns the socket and does its reading and writing: aborting it is
    /// what closes a connection the receiver has not.
    driver: JoinHandle<()>,
    last_used: Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How an exchange on a connection failed.
enum Attempt {
    /// The connection was closed before any answer came: on a kept
    /// connection, the receiver closing it while idle as the request went
    /// out, which a fresh connection gets past.
    Unanswered(PostError),
    Failed(PostError),
}

impl Attempt {
    fn into_error(self) -> PostError {
        match self {
            Attempt::Unanswered(e) | Attempt::Failed(e) => e,
        }
    }
}

/// A sender's way to its receiver, and the connection it keeps there.
struct Link {
    url: WebhookUrl,
    /// The URL as configured, for errors and logs.
    shown: String,
    tls: Arc<ClientConfig>,
    kept: Option<Conn>,
}

impl Link {
    fn new(url: WebhookUrl, shown: String, tls: Arc<ClientConfig>) -> Link {
        Link {
            url,
            shown,
            tls,
            kept: None,
        }
    }

    fn expire_idle(&mut self) {
        if self
            .kept
            .as_ref()
            .is_some_and(|c| c.last_used.elapsed() >= MAX_IDLE)
        {
            self.kept = None;
        }
    }

    /// POSTs `body`, the whole of it (connecting, TLS, request and answer,
    /// a retry included) within `limit`.
    async fn post(
        &mut self,
        body: Bytes,
        signature: &str,
        limit: Duration,
    ) -> Result<(), PostError> {
        match tokio::time::timeout(limit, self.deliver(body, signature)).await {
            Ok(result) => result,
            Err(_) => Err(PostError::Timeout(self.shown.clone(), limit)),
        }
    }

    /// The kept connection is taken out for the exchange and put back only
    /// after a 2xx answer read whole: any failure (or the timeout dropping
    /// this future) closes it.
    async fn deliver(&mut self, body: Bytes, signature: &str) -> Result<(), PostError> {
        self.expire_idle();
        if let Some(conn) = self.kept.take() {
            match self.reuse(conn, body.clone(), signature).await {
                Ok(conn) => {
                    self.kept = conn;
                    return Ok(());
                }
                Err(Attempt::Unanswered(e)) => {
                    tracing::debug!(url = %self.shown, error = %e, "kept webhook connection closed by the receiver; sending on a new one");
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        let conn = self.connect().await?;
        let request = self.request(body, signature)?;
        self.kept = exchange(conn, request, &self.shown)
            .await
            .map_err(Attempt::into_error)?;
        Ok(())
    }

    async fn reuse(
        &self,
        mut conn: Conn,
        body: Bytes,
        signature: &str,
    ) -> Result<Option<Conn>, Attempt> {
        // Ready once the previous answer is done with; an error here is the
        // connection found closed, with nothing sent on it.
        if let Err(e) = conn.http.ready().await {
            return Err(Attempt::Unanswered(self.http_error(&e)));
        }
        let request = self.request(body, signature).map_err(Attempt::Failed)?;
        exchange(conn, request, &self.shown).await
    }

    async fn connect(&self) -> Result<Conn, PostError> {
        let u = &self.url;
        let shown = &self.shown;
        let tcp = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|e| PostError::Connect(shown.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        if u.https {
            let name = ServerName::try_from(u.host.clone())
                .map_err(|e| PostError::Tls(shown.clone(), e.to_string()))?;
            let tls = TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| PostError::Tls(shown.clone(), e.to_string()))?;
            handshake(TokioIo::new(tls), shown).await
        } else {
            handshake(TokioIo::new(tcp), shown).await
        }
    }

    fn request(&self, body: Bytes, signature: &str) -> Result<Request<Full<Bytes>>, PostError> {
        Request::post(self.url.path.as_str())
            .header(header::HOST, host_header(&self.url))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "mailrelay")
            .header(sign::HEADER, signature)
            .body(Full::new(body))
            .map_err(|e| PostError::Http(self.shown.clone(), e.to_string()))
    }

    fn http_error(&self, e: &hyper::Error) -> PostError {
        PostError::Http(self.shown.clone(), e.to_string())
    }
}

async fn handshake<I>(io: I, shown: &str) -> Result<Conn, PostError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (http, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| PostError::Http(shown.to_string(), e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn {
        http,
        driver,
        last_used: Instant::now(),
    })
}

/// One request and its answer: the connection back if it may carry the
/// next request.
async fn exchange(
    mut conn: Conn,
    request: Request<Full<Bytes>>,
    shown: &str,
) -> Result<Option<Conn>, Attempt> {
    let response = conn.http.send_request(request).await.map_err(|e| {
        let error = PostError::Http(shown.to_string(), e.to_string());
        if closed_unanswered(&e) {
            Attempt::Unanswered(error)
        } else {
            Attempt::Failed(error)
        }
    })?;
    let status = response.status();
    // Read to its end (the receiver sees its reply taken, and the
    // connection is free for the next request); an answer too long or cut
    // short still counts by its status, but leaves the connection unusable.
    let whole = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .is_ok();
    if !status.is_success() {
        return Err(Attempt::Failed(PostError::Status(
            shown.to_string(),
            status.as_u16(),
        )));
    }
    conn.last_used = Instant::now();
    Ok(whole.then_some(conn))
}

/// Whether the connection was closed before any answer began: the request
/// not sent at all, or sent into a connection the receiver had closed
/// (end of stream, or a reset).
fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
