//! DNSBL and PTR lookups through hickory against a real dnsmasq on
//! loopback (PEERS.md, "DNS on loopback"), and a resolver that never
//! answers. Never skipped: without dnsmasq the test fails and says why.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailrelay_crds::blocklist::BlockAction;
use mailrelay_crds::common::ObjectRef;
use mailrelay_crds::config::{BlockRule, DnsConfig};

use super::*;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// dnsmasq in the foreground as our child; killed and reaped on drop, so a
/// failing assertion does not leave it running.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for both UDP and TCP");
}

fn start_dnsmasq() -> Dnsmasq {
    assert!(
        Path::new(DNSMASQ).exists(),
        "dnsmasq not installed: run tests/run (it installs the test peers)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("dnsmasq.conf");
    std::fs::write(
        &conf,
        "address=/2.0.0.127.bl.test/127.0.0.2\n\
         address=/3.0.0.127.bl.test/127.255.255.254\n\
         ptr-record=5.2.0.192.in-addr.arpa,Mail.Example.test\n\
         local=/2.0.192.in-addr.arpa/\n",
    )
    .expect("write conf");
    let log = dir.path().join("dnsmasq.log");
    let port = free_port();
    let child = Command::new(DNSMASQ)
        .arg("--no-daemon")
        .arg(format!("--conf-file={}", conf.display()))
        .args([
            "--no-resolv",
            "--no-hosts",
            "--pid-file",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .args([
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--user=root",
        ])
        .arg("--local=/test/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start dnsmasq");
    Dnsmasq {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
        _dir: dir,
    }
}

fn dns_config(timeout_ms: u64) -> DnsConfig {
    DnsConfig {
        nameservers: Vec::new(),
        timeout_ms,
    }
}

/// Wait until dnsmasq answers, each probe with a fresh resolver so that no
/// state from before it listened carries over.
async fn wait_until_answering(server: &mut Dnsmasq) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("dnsmasq exited ({status}):\n{}", server.log());
        }
        let probe = resolver(&dns_config(200), Some(server.addr)).expect("resolver");
        if probe.lookup_a("2.0.0.127.bl.test.").await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq did not answer on {} within 10 s:\n{}",
            server.addr,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bl_test_zone() -> DnsblZone {
    DnsblZone {
        zone: "bl.test".into(),
        return_codes: vec!["127.0.0.0/24".parse().expect("net")],
        message: None,
        rule: Arc::new(BlockRule {
            action: BlockAction::Reject,
            source: ObjectRef::new("Blocklist", "", "dnsbl"),
            message: None,
        }),
        rule_index: 0,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn dnsbl_and_ptr_lookups_against_a_real_dnsmasq() {
    let mut server = start_dnsmasq();
    wait_until_answering(&mut server).await;
    let dns = resolver(&dns_config(2_000), Some(server.addr)).expect("resolver");
    let checker = DnsblChecker::new(dns, 1_000);
    let zones = [bl_test_zone()];

    let hit = checker
        .check(&zones, ip("127.0.0.2"))
        .await
        .expect("lookup")
        .expect("127.0.0.2 is listed");
    assert_eq!(
        hit.reply().to_string(),
        "550 5.7.1 Client address 127.0.0.2 is listed by bl.test"
    );
    // Answered, but 127.255.255.254 is outside the return codes.
    assert_eq!(checker.check(&zones, ip("127.0.0.3")).await, Ok(None));
    // NXDOMAIN (`--local=/test/`).
    assert_eq!(checker.check(&zones, ip("127.0.0.4")).await, Ok(None));

    assert_eq!(
        reverse_name(checker.dns(), ip("192.0.2.5")).await,
        Ok(Some("mail.example.test".to_string()))
    );
    // NXDOMAIN (`local=/2.0.192.in-addr.arpa/`). Loopback addresses are
    // no use here: hickory answers their PTR itself (RFC 6761 localhost).
    assert_eq!(reverse_name(checker.dns(), ip("192.0.2.9")).await, Ok(None));

    // With dnsmasq gone, the listing still comes from the cache.
    drop(server);
    let hit = checker.check(&zones, ip("127.0.0.2")).await;
    assert!(matches!(hit, Ok(Some(_))), "{hit:?}");
}

#[tokio::test]
async fn a_resolver_that_never_answers_is_a_temporary_failure() {
    // Bound and never read: queries vanish, as with a dead resolver.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let dns = resolver(&dns_config(200), Some(addr)).expect("resolver");
    let started = Instant::now();
    let got = dns.lookup_a("2.0.0.127.bl.test.").await;
    assert!(matches!(got, Err(DnsError::Temporary(_))), "{got:?}");

    let checker = DnsblChecker::new(dns, 10);
    let got = checker.check(&[bl_test_zone()], ip("127.0.0.2")).await;
    assert!(matches!(got, Err(DnsblError::Temporary { .. })), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    drop(silent);
}
