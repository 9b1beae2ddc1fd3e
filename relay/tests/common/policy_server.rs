//! MTA-STS peers for tests: a test CA that issues server certificates,
//! and an HTTPS server of policies (`https://mta-sts.DOMAIN/.well-known/
//! mta-sts.txt`). Shared by the MTA-STS and DANE tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA, and server certificates it issues.
pub struct Pki {
    pub ca_pem: String,
    pub issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mailrelay MTA-STS test CA");
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server config whose certificate names `names`.
    pub fn server(&self, names: &[&str]) -> Arc<ServerConfig> {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .expect("leaf params")
            .signed_by(&key, &self.issuer)
            .expect("leaf cert");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        Arc::new(config)
    }
}

/// `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` for several domains
/// on one address: the policy by Host header, 404 for anything else.
pub struct PolicyServer {
    /// `Host path` of every request.
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyServer {
    pub async fn start(
        addr: SocketAddr,
        tls: Arc<ServerConfig>,
        policies: HashMap<String, String>,
    ) -> PolicyServer {
        let listener = TcpListener::bind(addr).await.expect("bind the HTTPS port");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let policies = Arc::new(policies);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log, policies) = (
                    TlsAcceptor::from(tls.clone()),
                    log.clone(),
                    policies.clone(),
                );
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    let host = head
                        .lines()
                        .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    log.lock().expect("log").push(format!("{host} {path}"));
                    let response = match policies.get(&host) {
                        Some(body) if path == "/.well-known/mta-sts.txt" => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        PolicyServer { requests, task }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("log").clone()
    }
}

pub fn policy(mode: &str, mx: &[&str]) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str("max_age: 86400\r\n");
    text
}

/// A runtime for the policy server's tasks (the tests themselves are
/// synchronous).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One request an [`HttpsCollector`] took.
#[derive(Clone, Debug)]
pub struct Posted {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// An HTTPS endpoint that takes every POST (200) and keeps it: a TLS-RPT
/// `https` destination.
pub struct HttpsCollector {
    posted: Arc<Mutex<Vec<Posted>>>,
    task: JoinHandle<()>,
}

impl Drop for HttpsCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsCollector {
    pub async fn start(addr: SocketAddr, tls: Arc<ServerConfig>) -> HttpsCollector {
        let listener = TcpListener::bind(addr).await.expect("bind the HTTPS port");
        let posted = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&posted);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log) = (TlsAcceptor::from(tls.clone()), log.clone());
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    let split = loop {
                        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => data.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&data[..split]).to_string();
                    let field = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let length: usize = field("content-length").parse().unwrap_or(0);
                    while data.len() < split + length {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => data.extend_from_slice(&buf[..n]),
                        }
                    }
                    log.lock().expect("log").push(Posted {
                        path: head
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or_default()
                            .to_string(),
                        content_type: field("content-type"),
                        body: data[split..split + length].to_vec(),
                    });
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HttpsCollector { posted, task }
    }

    pub fn posted(&self) -> Vec<Posted> {
        self.posted.lock().expect("log").clone()
    }
}
