//! The fleet reports' test set-up, shared by `reports.rs` (the relays'
//! side) and `fleet_reports.rs` (with the operator): a Relay with reports
//! on, a remote domain whose MX is a sink without STARTTLS (TLS-RPT rows),
//! a sender domain with SPF and DMARC records (DMARC rows), a hosted
//! domain with a DKIM key that sends the reports, and the signed internal
//! API as a client sees it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use mailrelay_crds::reports::{
    PeriodAggregates, REPORTS_PATH, SIGNATURE_HEADER, TlsPolicyType, sign_request,
};

use super::manifests::Setup;
use super::{LOCALHOST, RelayProcess};

pub const REMOTE: &str = "tlsrpt.test";
pub const SENDER_DOMAIN: &str = "dmarc-sender.test";
pub const REPORTS_DOMAIN: &str = "reports.test";
pub const SECRET: &str = "0123456789abcdef-test-reports-secret";
const ED_KEY: &str = include_str!("../../src/dkim/testdata/ed25519.pem");
const ED_PUBLIC: &str = include_str!("../../src/dkim/testdata/ed25519.pub.b64");

/// A test's own hosts.
#[derive(Clone, Copy)]
pub struct Hosts {
    /// The MX of the remote and the sender domain (a sink on port 25).
    pub mx: Ipv4Addr,
    /// Where inbound mail from the sender domain comes from.
    pub client: IpAddr,
    /// An `https` TLS-RPT destination of the remote domain, besides its
    /// mail address.
    pub https_rua: Option<SocketAddr>,
}

/// The Relay, domains and DNS records, reports counted over `period`;
/// `relay_spec` adds lines to the Relay's spec.
pub fn setup(hosts: Hosts, period: &str, relay_spec: &str) -> Setup {
    let Hosts {
        mx,
        client,
        https_rua,
    } = hosts;
    let https = https_rua
        .map(|a| format!(",https://{a}/tlsrpt"))
        .unwrap_or_default();
    let pem: String = ED_KEY.lines().map(|l| format!("    {l}\n")).collect();
    Setup::default()
        .relay_spec(&format!(
            "trustedNetworks: [127.0.0.1/32]\nrelayFromTrustedNetworks: true\n\
             queue: {{retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}}\n\
             reports: {{organization: Test, contact: postmaster@hosted.test, from: reports@{REPORTS_DOMAIN}, period: {period}}}\n\
             {relay_spec}"
        ))
        .dns_records(&format!(
            "mx-host={REMOTE},mx.{REMOTE},10\nhost-record=mx.{REMOTE},{mx}\n\
             mx-host={SENDER_DOMAIN},mx.{REMOTE},10\n\
             txt-record={SENDER_DOMAIN},\"v=spf1 ip4:{client} -all\"\n\
             txt-record=_dmarc.{SENDER_DOMAIN},\"v=DMARC1; p=none; rua=mailto:agg@{SENDER_DOMAIN}\"\n\
             txt-record=_smtp._tls.{REMOTE},\"v=TLSRPTv1; rua=mailto:tlsrpt@{REMOTE}{https}\"\n\
             txt-record=ed._domainkey.{REPORTS_DOMAIN},\"v=DKIM1; k=ed25519; p={}\"",
            ED_PUBLIC.trim()
        ))
        .domain(&format!(
            "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: reports
spec:
  domain: {REPORTS_DOMAIN}
  inbound: {{catchAll: true}}
  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}
  dkim:
    selector: ed
    algorithm: ed25519-sha256
    privateKey: {{name: reports-dkim, key: private.pem}}
---
apiVersion: v1
kind: Secret
metadata:
  name: reports-dkim
type: Opaque
stringData:
  private.pem: |
{pem}"
        ))
}

/// Relay `name` of the fleet, in `root/name`, with the hand-off secret of
/// `root/secret`, its hand-off listener at `me`, draining to `peers`.
pub fn start(
    root: &Path,
    name: &str,
    setup: &Setup,
    dns: SocketAddr,
    me: SocketAddr,
    peers: &[SocketAddr],
) -> RelayProcess {
    let dir = root.join(name);
    setup.write(&dir.join("manifests"));
    let mut extra = vec![
        "--handoff-listen".to_string(),
        me.to_string(),
        "--handoff-secret-file".into(),
        root.join("secret").display().to_string(),
        "--drain-accept".into(),
        "0s".into(),
        "--drain-sessions".into(),
        "10s".into(),
        "--drain-deliver".into(),
        "1s".into(),
    ];
    for p in peers {
        extra.extend(["--peer".to_string(), p.to_string()]);
    }
    RelayProcess::start_with(&dir, 0, LOCALHOST, dns, &extra)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// How a test request is signed.
pub enum Signed<'a> {
    With(&'a ring::hmac::Key),
    /// Signed as if at this Unix time.
    At(&'a ring::hmac::Key, i64),
    Not,
}

/// `METHOD path_and_query` with `body` to `addr`: status and body.
pub fn request(
    addr: SocketAddr,
    signed: Signed,
    method: &str,
    pq: &str,
    body: &[u8],
) -> (u16, String) {
    exchange(addr, signed, method, pq, body.len(), body)
}

/// A request whose head announces `content_length` bytes of body and
/// which sends `body` (maybe fewer, maybe none) after it: status and body
/// of the answer, which must come within the read timeout.
pub fn exchange(
    addr: SocketAddr,
    signed: Signed,
    method: &str,
    pq: &str,
    content_length: usize,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "{method} {pq} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {content_length}\r\n",
    );
    let at = match signed {
        Signed::With(key) => Some((key, now())),
        Signed::At(key, t) => Some((key, t)),
        Signed::Not => None,
    };
    if let Some((key, t)) = at {
        let sig = sign_request(key, t, method, pq, body);
        head.push_str(&format!("{SIGNATURE_HEADER}: {sig}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The aggregates of every period of `period` seconds from `since` to
/// now, merged.
pub fn aggregates(
    addr: SocketAddr,
    key: &ring::hmac::Key,
    since: i64,
    period: i64,
) -> PeriodAggregates {
    let mut all = PeriodAggregates::default();
    let mut start = since - since.rem_euclid(period);
    while start <= now() {
        let (status, body) = request(
            addr,
            Signed::With(key),
            "GET",
            &format!("{REPORTS_PATH}?start={start}"),
            b"",
        );
        assert_eq!(status, 200, "{body}");
        let p: PeriodAggregates = serde_json::from_str(&body).unwrap();
        assert_eq!((p.start, p.end), (start, start + period));
        all.merge(&p);
        start += period;
    }
    all
}

/// (TLS sessions that succeeded, failed as starttls-not-supported at
/// `mx`) for the remote domain, and the DMARC messages counted for the
/// sender domain.
pub fn counts(p: &PeriodAggregates, mx: Ipv4Addr) -> (u64, u64, u64) {
    let tls = p.tls.iter().filter(|r| r.policy_domain == REMOTE);
    let (mut ok, mut clear) = (0, 0);
    for r in tls {
        assert_eq!(r.policy_type, TlsPolicyType::NoPolicyFound, "{r:?}");
        ok += r.successes;
        clear += r
            .failures
            .iter()
            .filter(|f| {
                f.result_type == "starttls-not-supported" && f.receiving_ip == Some(IpAddr::V4(mx))
            })
            .map(|f| f.count)
            .sum::<u64>();
    }
    let dmarc = p
        .dmarc
        .iter()
        .filter(|r| r.header_from == SENDER_DOMAIN)
        .map(|r| r.count)
        .sum();
    (ok, clear, dmarc)
}

/// The period files a relay keeps in its spool.
pub fn period_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("spool/reports"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|n: &String| n.starts_with("period-") && n.ends_with(".json"))
        .collect()
}
