//! A scripted SMTP server for the TLS, AUTH and per-recipient tests that
//! smtp-sink cannot do (it has neither STARTTLS nor per-address replies).
//! Replies depend on the address: a local part starting with `reject`
//! gets 550, `defer` 451, anything else 250.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How the server does TLS.
#[derive(Clone)]
pub(crate) enum TlsScript {
    None,
    /// Offer STARTTLS and do it properly.
    StartTls(Arc<ServerConfig>),
    /// Offer STARTTLS, say 220, then send garbage instead of a handshake.
    BrokenStartTls,
    /// TLS from the first byte.
    Implicit(Arc<ServerConfig>),
}

/// A test CA and a server certificate for `host` it issued.
pub(crate) struct TestPki {
    pub ca_der: Vec<u8>,
    pub server: Arc<ServerConfig>,
}

pub(crate) fn pki(host: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailrelay test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![host.to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let chain = vec![leaf.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    TestPki {
        ca_der: CertificateDer::as_ref(ca_cert.der()).to_vec(),
        server: Arc::new(server),
    }
}

/// The server: what it saw, per connection, as lines (`C: ...` for
/// commands, `TLS` when a handshake completed, `BODY: ...` for a message).
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub(crate) async fn start(tls: TlsScript, auth: Option<(&str, &str)>) -> TestServer {
        Self::start_with(tls, auth, false).await
    }

    /// `pipelining`: offer PIPELINING (RFC 2920) in the EHLO reply.
    pub(crate) async fn start_with(
        tls: TlsScript,
        auth: Option<(&str, &str)>,
        pipelining: bool,
    ) -> TestServer {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_at(any, tls, auth, pipelining).await
    }

    /// On `addr` (an MX on `127.0.0.N:25` for the end-to-end tests).
    pub(crate) async fn start_at(
        addr: SocketAddr,
        tls: TlsScript,
        auth: Option<(&str, &str)>,
        pipelining: bool,
    ) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let auth = auth.map(|(u, p)| (u.to_string(), p.to_string()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tls, auth, log) = (tls.clone(), auth.clone(), log.clone());
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = Box::new(stream);
                    let stream = match &tls {
                        TlsScript::Implicit(config) => {
                            match TlsAcceptor::from(config.clone()).accept(stream).await {
                                Ok(s) => {
                                    push(&log, "TLS");
                                    Box::new(s) as Box<dyn Io>
                                }
                                Err(_) => return,
                            }
                        }
                        _ => stream,
                    };
                    session(stream, tls, auth, log, pipelining).await;
                });
            }
        });
        TestServer { addr, seen, task }
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn push(log: &Mutex<Vec<String>>, line: &str) {
    if let Ok(mut log) = log.lock() {
        log.push(line.to_string());
    }
}

fn rcpt_reply(line: &str) -> String {
    let addr = line
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a)
        .unwrap_or_default();
    if addr.starts_with("reject") {
        format!("550 5.1.1 <{addr}>: Recipient address rejected\r\n")
    } else if addr.starts_with("defer") {
        format!("451 4.3.0 <{addr}>: try again later\r\n")
    } else {
        "250 2.1.5 Ok\r\n".to_string()
    }
}

async fn session(
    stream: Box<dyn Io>,
    tls: TlsScript,
    auth: Option<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
    pipelining: bool,
) {
    let mut reader = BufReader::new(stream);
    // The transaction so far, so that RCPT without MAIL and DATA without
    // an accepted RCPT are refused as RFC 5321 §4.1.4 / RFC 2920 §3.1 say
    // (a pipelining client sends them anyway).
    let mut mail_ok = false;
    let mut rcpts_ok = 0;
    let mut encrypted = matches!(tls, TlsScript::Implicit(_));
    let mut queued = 0;
    if reader
        .write_all(b"220 mx.tls.test ESMTP test\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_string();
        push(&log, &format!("C: {command}"));
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                let mut r = String::from("250-mx.tls.test\r\n250-8BITMIME\r\n");
                if pipelining {
                    r.push_str("250-PIPELINING\r\n");
                }
                if !encrypted && !matches!(tls, TlsScript::None | TlsScript::Implicit(_)) {
                    r.push_str("250-STARTTLS\r\n");
                }
                if encrypted || auth.is_some() {
                    r.push_str("250-AUTH PLAIN LOGIN\r\n");
                }
                r.push_str("250 ENHANCEDSTATUSCODES\r\n");
                r
            }
            "STARTTLS" => {
                if reader.write_all(b"220 2.0.0 go ahead\r\n").await.is_err() {
                    return;
                }
                match &tls {
                    TlsScript::StartTls(config) => {
                        let acceptor = TlsAcceptor::from(config.clone());
                        match acceptor.accept(reader.into_inner()).await {
                            Ok(s) => {
                                push(&log, "TLS");
                                encrypted = true;
                                reader = BufReader::new(Box::new(s));
                                continue;
                            }
                            Err(_) => return,
                        }
                    }
                    _ => {
                        let _ = reader.write_all(b"this is not a TLS handshake\r\n").await;
                        return;
                    }
                }
            }
            "AUTH" => {
                let given = command.split_whitespace().nth(2).unwrap_or_default();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(given)
                    .unwrap_or_default();
                let want = auth
                    .as_ref()
                    .map(|(u, p)| format!("\0{u}\0{p}").into_bytes());
                if Some(decoded) == want {
                    push(&log, "AUTH ok");
                    "235 2.7.0 Authentication successful\r\n".into()
                } else {
                    "535 5.7.8 Authentication credentials invalid\r\n".into()
                }
            }
            "MAIL" if command.contains("<reject") => {
                mail_ok = false;
                "550 5.7.1 sender rejected\r\n".into()
            }
            "MAIL" | "RSET" | "NOOP" => {
                if verb != "NOOP" {
                    mail_ok = verb == "MAIL";
                    rcpts_ok = 0;
                }
                "250 2.0.0 Ok\r\n".into()
            }
            "RCPT" if !mail_ok => "503 5.5.1 Error: need MAIL command\r\n".into(),
            "RCPT" => {
                let reply = rcpt_reply(&command);
                if reply.starts_with('2') {
                    rcpts_ok += 1;
                }
                reply
            }
            "DATA" if rcpts_ok == 0 => "554 5.5.1 Error: no valid recipients\r\n".into(),
            "DATA" => {
                mail_ok = false;
                rcpts_ok = 0;
                if reader
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut body = String::new();
                loop {
                    let mut l = String::new();
                    match reader.read_line(&mut l).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if l == ".\r\n" => break,
                        Ok(_) => body.push_str(&l),
                    }
                }
                push(&log, &format!("BODY: {body}"));
                queued += 1;
                format!("250 2.0.0 Ok: queued as Q{queued}\r\n")
            }
            "QUIT" => {
                let _ = reader.write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            _ => "502 5.5.2 Error: command not recognized\r\n".into(),
        };
        if reader.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
