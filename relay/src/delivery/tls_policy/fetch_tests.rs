//! The policy lookup against real peers on loopback: dnsmasq for the TXT
//! and address records, and a small HTTPS server (test CA) answering as
//! each domain's policy host would — well, with a redirect, with the
//! wrong media type, with too much, with garbage — on a port of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::cache::StsSource;
use super::fetch::HttpsSource;
use super::sts::Mode;
use super::{https_client, root_store};
use crate::testutil::dnsmasq::Dnsmasq;

const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.ok.test\r\nmax_age: 600\r\n";

const RECORDS: &str = "txt-record=_mta-sts.ok.test,\"v=STSv1; id=abc1;\"\n\
                       txt-record=_mta-sts.two.test,\"v=STSv1; id=1;\"\n\
                       txt-record=_mta-sts.two.test,\"v=STSv1; id=2;\"\n\
                       txt-record=_mta-sts.spf.test,\"v=spf1 -all\"\n\
                       host-record=mta-sts.ok.test,127.0.0.1\n\
                       host-record=mta-sts.redirect.test,127.0.0.1\n\
                       host-record=mta-sts.html.test,127.0.0.1\n\
                       host-record=mta-sts.big.test,127.0.0.1\n\
                       host-record=mta-sts.garbage.test,127.0.0.1\n\
                       host-record=mta-sts.missing.test,127.0.0.1";

/// A CA and a server config for `names` it issued: (CA DER, config).
fn pki(names: &[&str]) -> (Vec<u8>, Arc<ServerConfig>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fetch test CA");
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    let config = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    (ca_cert.der().to_vec(), Arc::new(config))
}

/// Serve `responses` (full HTTP responses by Host header) on a free port.
async fn https_server(tls: Arc<ServerConfig>, responses: HashMap<String, String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let responses = Arc::new(responses);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, responses) = (TlsAcceptor::from(tls.clone()), responses.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("host: "))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let wanted = head.starts_with("get /.well-known/mta-sts.txt ");
                let response = match responses.get(&host) {
                    Some(r) if wanted => r.clone(),
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn ok(media: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {media}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn records_and_policies_are_found_only_as_rfc_8461_section_3_allows() {
    let dns = Dnsmasq::start(RECORDS).await;
    let names = [
        "mta-sts.ok.test",
        "mta-sts.redirect.test",
        "mta-sts.html.test",
        "mta-sts.big.test",
        "mta-sts.garbage.test",
    ];
    let (ca, tls) = pki(&names);
    let responses = HashMap::from([
        ("mta-sts.ok.test".to_string(), ok("text/plain; charset=utf-8", POLICY)),
        (
            "mta-sts.redirect.test".to_string(),
            "HTTP/1.1 301 Moved Permanently\r\nLocation: https://mta-sts.ok.test/.well-known/mta-sts.txt\r\nContent-Length: 0\r\n\r\n".to_string(),
        ),
        ("mta-sts.html.test".to_string(), ok("text/html", POLICY)),
        ("mta-sts.big.test".to_string(), ok("text/plain", &"x".repeat(70_000))),
        ("mta-sts.garbage.test".to_string(), ok("text/plain", "hello\r\n")),
    ]);
    let port = https_server(tls, responses).await.port();
    let client = https_client(Arc::new(root_store(&[ca]).expect("roots"))).expect("client");
    let source = HttpsSource::new(dns.resolver(1000), client, port);

    assert_eq!(source.record_id("ok.test").await, Ok(Some("abc1".into())));
    assert_eq!(source.record_id("spf.test").await, Ok(None));
    assert_eq!(source.record_id("nothing.test").await, Ok(None));
    let two = source.record_id("two.test").await.expect_err("two records");
    assert!(two.contains("more than one"), "{two}");

    let policy = source.fetch("ok.test").await.expect("the policy");
    assert_eq!((policy.mode, policy.max_age), (Mode::Enforce, 600));
    assert_eq!(policy.mx, ["mx.ok.test"]);
    for (domain, why) in [
        ("redirect.test", "301"),
        ("html.test", "not text/plain"),
        ("big.test", "body"),
        ("garbage.test", "colon"),
        // The certificate does not name it.
        ("missing.test", "TLS with"),
        ("nowhere.test", "no address for mta-sts.nowhere.test"),
    ] {
        let err = source.fetch(domain).await.expect_err(domain);
        assert!(err.contains(why), "{domain}: {err}");
    }

    // A certificate from a CA the relay does not trust.
    let (_, other_tls) = pki(&["mta-sts.ok.test"]);
    let other = https_server(other_tls, HashMap::new()).await.port();
    let client = https_client(Arc::new(root_store(&[]).expect("roots"))).expect("client");
    let untrusted = HttpsSource::new(dns.resolver(1000), client, other);
    let err = untrusted.fetch("ok.test").await.expect_err("untrusted");
    assert!(
        err.contains("TLS with") && err.contains("UnknownIssuer"),
        "{err}"
    );
}
