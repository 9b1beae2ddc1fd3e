//! The kept connection against a small in-process receiver that counts
//! the connections it accepts and treats each the way the test asks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use mailrelay_crds::events::WebhookUrl;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{Link, MAX_IDLE, PostError};
use crate::delivery::test_server::pki;

/// Generous: nothing here waits on anything slower than loopback.
const LIMIT: Duration = Duration::from_secs(10);
const BATCHES: usize = 5;

/// What the receiver does on each connection.
#[derive(Clone, Copy)]
enum Manner {
    /// Answers every request and keeps the connection, as HTTP/1.1 does.
    Keep,
    /// Answers with `Connection: close`, and closes.
    CloseEach,
    /// Answers, then closes without a word: an idle timeout as short as
    /// can be.
    CloseSilently,
    /// Takes the second request on a connection and closes unanswered:
    /// the idle close racing the sender's next request, made certain.
    DropSecond,
    /// Takes every request and closes unanswered.
    DropAll,
}

struct Receiver {
    url: WebhookUrl,
    accepted: Arc<AtomicUsize>,
    /// The bodies of the requests answered, in order.
    answered: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(manner: Manner, tls: Option<Arc<ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = WebhookUrl::parse(&format!("{scheme}://127.0.0.1:{port}/events")).expect("url");
        let accepted = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (count, bodies) = (Arc::clone(&accepted), Arc::clone(&answered));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (tls, bodies) = (tls.clone(), Arc::clone(&bodies));
                tokio::spawn(async move {
                    match tls {
                        Some(config) => {
                            if let Ok(stream) = TlsAcceptor::from(config).accept(tcp).await {
                                serve(stream, manner, bodies).await;
                            }
                        }
                        None => serve(tcp, manner, bodies).await,
                    }
                });
            }
        });
        Receiver {
            url,
            accepted,
            answered,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn answered(&self) -> Vec<Vec<u8>> {
        self.answered.lock().expect("lock").clone()
    }

    fn link(&self, roots: &[Vec<u8>]) -> Link {
        Link::new(self.url.clone(), "the test receiver".into(), client(roots))
    }
}

async fn serve<S>(stream: S, manner: Manner, bodies: Arc<Mutex<Vec<Vec<u8>>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    let mut served = 0;
    while let Some(body) = read_request(&mut stream).await {
        served += 1;
        let drop = match manner {
            Manner::DropAll => true,
            Manner::DropSecond => served == 2,
            _ => false,
        };
        if drop {
            return;
        }
        bodies.lock().expect("lock").push(body);
        let close = matches!(manner, Manner::CloseEach);
        let answer = if close {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if close || matches!(manner, Manner::CloseSilently) {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// One request's body; `None` at the end of the connection.
async fn read_request<S>(stream: &mut BufReader<S>) -> Option<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut length = 0;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(body)
}

fn client(roots: &[Vec<u8>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for der in roots {
        store.add(CertificateDer::from(der.clone())).expect("root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

fn batch(i: usize) -> Vec<u8> {
    format!("[{{\"batch\":{i}}}]").into_bytes()
}

/// POSTs `BATCHES` batches, each of which must succeed.
async fn post_all(link: &mut Link) {
    for i in 0..BATCHES {
        if let Err(e) = link.post(Bytes::from(batch(i)), "t=0,v1=00", LIMIT).await {
            panic!("batch {i}: {e}");
        }
    }
}

fn all_batches() -> Vec<Vec<u8>> {
    (0..BATCHES).map(batch).collect()
}

#[tokio::test]
async fn batches_go_over_one_kept_connection() {
    let receiver = Receiver::start(Manner::Keep, None).await;
    let mut link = receiver.link(&[]);
    post_all(&mut link).await;
    assert_eq!(receiver.answered(), all_batches());
    assert_eq!(
        receiver.accepted(),
        1,
        "one connection for {BATCHES} batches"
    );
}

#[tokio::test]
async fn batches_go_over_one_kept_tls_connection() {
    let pki = pki("127.0.0.1");
    let receiver = Receiver::start(Manner::Keep, Some(pki.server)).await;
    let mut link = receiver.link(&[pki.ca_der]);
    post_all(&mut link).await;
    assert_eq!(receiver.answered(), all_batches());
    assert_eq!(
        receiver.accepted(),
        1,
        "one TLS connection for {BATCHES} batches"
    );
}

#[tokio::test]
async fn a_receiver_closing_after_each_answer_gets_every_batch_on_a_new_connection() {
    for manner in [Manner::CloseEach, Manner::CloseSilently] {
        let receiver = Receiver::start(manner, None).await;
        let mut link = receiver.link(&[]);
        post_all(&mut link).await;
        assert_eq!(receiver.answered(), all_batches());
        assert_eq!(receiver.accepted(), BATCHES);
    }
}

#[tokio::test]
async fn a_kept_connection_closed_under_a_request_is_retried_on_a_new_one() {
    let receiver = Receiver::start(Manner::DropSecond, None).await;
    let mut link = receiver.link(&[]);
    post_all(&mut link).await;
    assert_eq!(receiver.answered(), all_batches());
    // Every batch after the first went on a kept connection, was dropped
    // there, and went again on a new one.
    assert_eq!(receiver.accepted(), BATCHES);
}

#[tokio::test]
async fn a_new_connection_closed_unanswered_is_a_failure_not_retried() {
    let receiver = Receiver::start(Manner::DropAll, None).await;
    let mut link = receiver.link(&[]);
    let result = link.post(Bytes::from(batch(0)), "t=0,v1=00", LIMIT).await;
    assert!(matches!(result, Err(PostError::Http(..))), "{result:?}");
    assert_eq!(receiver.accepted(), 1);
    assert!(receiver.answered().is_empty());
}

#[tokio::test]
async fn a_connection_idle_too_long_is_not_used_again() {
    let receiver = Receiver::start(Manner::Keep, None).await;
    let mut link = receiver.link(&[]);
    post_all(&mut link).await;
    let kept = link.kept.as_mut().expect("a kept connection");
    kept.last_used = kept
        .last_used
        .checked_sub(MAX_IDLE)
        .expect("a clock past MAX_IDLE");
    link.expire_idle();
    assert!(link.kept.is_none());
    post_all(&mut link).await;
    assert_eq!(receiver.accepted(), 2);
}
