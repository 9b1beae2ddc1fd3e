//! One task per webhook: batches of durable events POSTed as a JSON
//! array, signed (see `sign`), in log order — so in order per queue id —
//! each batch until the receiver answers 2xx (at least once), with
//! exponential back-off while it does not. An event older than the
//! retention is dropped unsent and counted.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use mailrelay_crds::config::WebhookConfig;
use mailrelay_crds::events::WebhookUrl;
use ring::hmac;
use tokio::net::TcpStream;
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
        tracing::info!(webhook = %name, url = %self.config.url, from = cursor, "event webhook sender started");
        loop {
            self.gauge();
            let batch = self.next_batch(cursor).await;
            let now = jiff::Timestamp::now().as_second();
            let oldest = now.saturating_sub(i64::try_from(self.retention_secs).unwrap_or(i64::MAX));
            let (live, expired): (Vec<&Entry>, Vec<&Entry>) =
                batch.entries.iter().partition(|e| e.time >= oldest);
            let taken = batch.entries.len() as u64;
            if !live.is_empty()
                && let Err(e) = self.post(&live).await
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
    async fn next_batch(&self, mut cursor: u64) -> Batch {
        let name = &self.config.name;
        let size = self.config.batch_size as usize;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let grew = self.backlog.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            let pending = usize::try_from(self.backlog.pending(name)).unwrap_or(usize::MAX);
            if pending > 0 {
                let until = *deadline.get_or_insert_with(|| {
                    tokio::time::Instant::now() + Duration::from_millis(self.config.batch_window_ms)
                });
                if pending < size && tokio::time::Instant::now() < until {
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

    async fn post(&self, events: &[&Entry]) -> Result<(), PostError> {
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
        let shown = self.config.url.clone();
        match tokio::time::timeout(limit, self.send(body, signature)).await {
            Ok(result) => result,
            Err(_) => Err(PostError::Timeout(shown, limit)),
        }
    }

    async fn send(&self, body: Vec<u8>, signature: String) -> Result<(), PostError> {
        let u = &self.url;
        let shown = &self.config.url;
        let tcp = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|e| PostError::Connect(shown.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        let request = Request::post(u.path.as_str())
            .header(header::HOST, host_header(u))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "mailrelay")
            .header(sign::HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PostError::Http(shown.clone(), e.to_string()))?;
        if u.https {
            let name = ServerName::try_from(u.host.clone())
                .map_err(|e| PostError::Tls(shown.clone(), e.to_string()))?;
            let tls = TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| PostError::Tls(shown.clone(), e.to_string()))?;
            exchange(TokioIo::new(tls), request, shown).await
        } else {
            exchange(TokioIo::new(tcp), request, shown).await
        }
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

async fn exchange<I>(io: I, request: Request<Full<Bytes>>, shown: &str) -> Result<(), PostError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| PostError::Http(shown.to_string(), e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        // Read the answer so the receiver sees its reply taken.
        let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(shown.to_string(), status.as_u16()))
        }
    }
    .await;
    driver.abort();
    result
}
