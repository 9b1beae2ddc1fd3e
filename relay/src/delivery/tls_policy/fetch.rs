//! Finding a domain's MTA-STS policy on the network (RFC 8461 §3.3): the
//! `_mta-sts` TXT record through the relay's resolver, and the policy
//! file over HTTPS from `mta-sts.DOMAIN`, whose address comes from the
//! same resolver and whose certificate must be valid for that name
//! against the trusted roots. No redirects are followed (§3.3), the body
//! must be `text/plain` and at most 64 KiB.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::cache::StsSource;
use super::sts::{Policy, parse_policy, record_id};
use crate::delivery::MxDns;
use crate::policy::HickoryDns;

/// The largest policy file taken (policies are a few lines).
const MAX_BODY: usize = 64 * 1024;
/// A whole fetch: connect, handshake, request and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// §3.3: the policy is at this path of `mta-sts.DOMAIN`.
const WELL_KNOWN: &str = "/.well-known/mta-sts.txt";

/// DNS and HTTPS behind [`StsSource`].
pub(crate) struct HttpsSource {
    dns: HickoryDns,
    tls: Arc<ClientConfig>,
    /// 443; another port only where a test serves the policy.
    port: u16,
}

impl HttpsSource {
    pub(crate) fn new(dns: HickoryDns, tls: Arc<ClientConfig>, port: u16) -> Self {
        Self { dns, tls, port }
    }

    pub(crate) fn tls(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.tls)
    }

    async fn txt(&self, domain: &str) -> Result<Option<String>, String> {
        let name = format!("_mta-sts.{domain}.");
        let lookup = match self.dns.inner().txt_lookup(name.as_str()).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
            Err(e) => return Err(format!("TXT lookup of {name} failed: {e}")),
        };
        let records: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        record_id(&records).map_err(|e| format!("{name}: {e}"))
    }

    async fn get(&self, domain: &str) -> Result<Policy, String> {
        let host = format!("mta-sts.{domain}");
        let addrs = self
            .dns
            .addrs(&host)
            .await
            .map_err(|e| format!("no address for {host}: {e}"))?;
        let mut last = format!("no address for {host}");
        for ip in addrs {
            match self.get_from(&host, SocketAddr::new(ip, self.port)).await {
                Ok(text) => {
                    return parse_policy(&text).map_err(|e| format!("{host}: {e}"));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The policy text from one address.
    async fn get_from(&self, host: &str, addr: SocketAddr) -> Result<String, String> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| format!("{what} https://{host} ({addr}): {e}");
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| fail("bad name", &e))?;
        let tls = TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| fail("TLS with", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail("HTTP with", &e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let result = async {
            let request = Request::get(WELL_KNOWN)
                .header(header::HOST, host)
                .header(header::USER_AGENT, "mailrelay")
                .body(Empty::<Bytes>::new())
                .map_err(|e| fail("request to", &e))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| fail("request to", &e))?;
            // §3.3: a redirect is a failure, like any status but 200.
            if response.status() != StatusCode::OK {
                return Err(fail("status from", &response.status()));
            }
            let media = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase();
            if media.split(';').next().map(str::trim) != Some("text/plain") {
                return Err(fail("media type (not text/plain) from", &media));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fail("body from", &e))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|e| fail("body from", &e))
        }
        .await;
        driver.abort();
        result
    }
}

impl StsSource for HttpsSource {
    async fn record_id(&self, domain: &str) -> Result<Option<String>, String> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.txt(domain)).await {
            Ok(result) => result,
            Err(_) => Err(format!("TXT lookup of _mta-sts.{domain} timed out")),
        }
    }

    async fn fetch(&self, domain: &str) -> Result<Policy, String> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.get(domain)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "fetching the MTA-STS policy of {domain} took longer than {}s",
                FETCH_TIMEOUT.as_secs()
            )),
        }
    }
}
