//! One HTTP/1.1 request, plain or over TLS, with a deadline: what the
//! operator says to its pods' internal API and to `https` TLS-RPT
//! endpoints. A new connection each time: these are a few requests a
//! minute, not a data path.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use mailrelay_crds::events::WebhookUrl;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Bytes of an answer read at most (a day's aggregates of a busy pod fit).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP with {0}: {1}")]
    Http(String, String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

/// An answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// What to send.
pub struct Call<'a> {
    pub url: &'a WebhookUrl,
    pub method: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    /// For `https`: the roots to trust; the Web PKI's when `None`.
    pub tls: Option<Arc<ClientConfig>>,
}

/// Web PKI roots for `https` endpoints, built once.
fn web_pki() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| trusting(Vec::new())).clone()
}

fn trusting(extra: Vec<CertificateDer<'static>>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Only certificates rustls can use as anchors are kept; the caller
    // checked there is at least one.
    roots.add_parsable_certificates(extra);
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The Web PKI's roots and the CA certificates of the PEM file `path`
/// (a private PKI's, for `https` report destinations inside it).
pub fn with_extra_roots(path: &std::path::Path) -> Result<Arc<ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(trusting(certs))
}

pub async fn send(call: Call<'_>) -> Result<Answer, HttpError> {
    let shown = format!(
        "{}://{}:{}{}",
        if call.url.https { "https" } else { "http" },
        call.url.host,
        call.url.port,
        call.url.path
    );
    let limit = call.timeout;
    match tokio::time::timeout(limit, exchange(call, &shown)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout(shown, limit)),
    }
}

async fn exchange(call: Call<'_>, shown: &str) -> Result<Answer, HttpError> {
    let u = call.url;
    let tcp = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|e| HttpError::Connect(shown.to_string(), e))?;
    let host = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    let mut request = Request::builder()
        .method(call.method)
        .uri(u.path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "mailrelay-operator");
    for (name, value) in call.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(call.body)))
        .map_err(|e| HttpError::Http(shown.to_string(), e.to_string()))?;
    if u.https {
        let name = ServerName::try_from(u.host.clone())
            .map_err(|e| HttpError::Tls(shown.to_string(), e.to_string()))?;
        let stream = TlsConnector::from(call.tls.unwrap_or_else(web_pki))
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Tls(shown.to_string(), e.to_string()))?;
        roundtrip(TokioIo::new(stream), request, shown).await
    } else {
        roundtrip(TokioIo::new(tcp), request, shown).await
    }
}

async fn roundtrip<I>(
    io: I,
    request: Request<Full<Bytes>>,
    shown: &str,
) -> Result<Answer, HttpError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |e: String| HttpError::Http(shown.to_string(), e);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        Ok(Answer { status, body })
    }
    .await;
    driver.abort();
    result
}
