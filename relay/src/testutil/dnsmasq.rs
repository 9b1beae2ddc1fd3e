//! A real dnsmasq on loopback for unit tests (PEERS.md, "DNS on loopback"):
//! our child, in the foreground, killed and reaped on drop. Never skipped:
//! without dnsmasq the test fails and says why.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailrelay_crds::config::DnsConfig;

use crate::policy::{Dns, HickoryDns, resolver};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// Answered by every instance, to know when it is up.
const PROBE: &str = "probe.dnsmasq.test.";

pub(crate) struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both UDP and TCP right now.
pub(crate) fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for both UDP and TCP");
}

impl Dnsmasq {
    /// Start serving `records` (dnsmasq config lines); unknown `.test`
    /// names get NXDOMAIN. Returns once it answers.
    pub(crate) async fn start(records: &str) -> Dnsmasq {
        assert!(
            Path::new(DNSMASQ).exists(),
            "dnsmasq not installed: run tests/run (it installs the test peers)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("dnsmasq.conf");
        std::fs::write(
            &conf,
            format!(
                "address=/{}/127.0.0.1\n{records}\n",
                PROBE.trim_end_matches('.')
            ),
        )
        .expect("write dnsmasq.conf");
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
                "--local=/test/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start dnsmasq");
        let mut server = Dnsmasq {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        server.wait_until_answering().await;
        server
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A resolver asking only this server.
    pub(crate) fn resolver(&self, timeout_ms: u64) -> HickoryDns {
        resolver(
            &DnsConfig {
                nameservers: vec![self.addr],
                timeout_ms,
            },
            None,
        )
        .expect("resolver")
    }

    /// Each probe uses a fresh resolver so no state from before it
    /// listened carries over.
    async fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dnsmasq exited ({status}):\n{}", self.log());
            }
            if self.resolver(200).lookup_a(PROBE).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer on {} within 10 s:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
