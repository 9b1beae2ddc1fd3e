//! The end-to-end harness: the real `mailrelay` binary run on its own
//! temporary directory, free loopback ports and a dnsmasq of its own, and
//! the real peers that talk to it. Every process is killed and reaped when
//! its guard drops.

// A panic in the harness is a test failure, with its message: unwrap and
// expect are how these helpers fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test file uses its part of the harness.
#![allow(dead_code)]

pub mod bind9;
pub mod counting_mx;
pub mod deliveries;
pub mod dkimpy;
pub mod dns;
pub mod dovecot;
pub mod headers;
pub mod mailbox;
pub mod manifests;
pub mod mount;
pub mod peers;
pub mod policy_server;
pub mod process;
pub mod remote;
pub mod reports;
pub mod sink;
pub mod smtp;
pub mod spool;
pub mod webhook;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dns::{Dnsmasq, SilentDns};
use manifests::Setup;
use process::{Guard, free_ports};
use smtp::Smtp;

/// The binary under test.
pub const MAILRELAY: &str = env!("CARGO_BIN_EXE_mailrelay");

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A loopback source address of the test's choosing: `127.0.0.N`.
pub fn client_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The addresses a relay listens on.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub smtp: SocketAddr,
    pub submission: SocketAddr,
    pub submissions: SocketAddr,
    pub http: SocketAddr,
}

impl Addrs {
    /// Free ports on loopback; smtp on `smtp_ip`.
    pub fn free(smtp_ip: IpAddr) -> Addrs {
        let ports = free_ports(&[smtp_ip, LOCALHOST, LOCALHOST, LOCALHOST]);
        Addrs {
            smtp: SocketAddr::new(smtp_ip, ports[0]),
            submission: SocketAddr::new(LOCALHOST, ports[1]),
            submissions: SocketAddr::new(LOCALHOST, ports[2]),
            http: SocketAddr::new(LOCALHOST, ports[3]),
        }
    }
}

/// A running `mailrelay run`.
pub struct RelayProcess {
    process: Guard,
    pub addrs: Addrs,
    log: PathBuf,
}

impl RelayProcess {
    /// Start the relay (the `n`th on this directory) on `dir/manifests`
    /// and `dir/spool`, logging to `dir/relay-N-ATTEMPT.log`, with smtp on `smtp_ip` and the rest on 127.0.0.1,
    /// and wait until /readyz answers 200 and the smtp listener greets.
    /// Its temporary files (the Secrets it writes) go into `dir` too, so
    /// they are removed with it even after a SIGKILL.
    ///
    /// A free port can be taken by another process between our probe and
    /// the relay's bind: then the relay says so and exits, and it is
    /// started again on other ports.
    pub fn start(dir: &Path, n: usize, smtp_ip: IpAddr, dns: SocketAddr) -> RelayProcess {
        RelayProcess::start_with(dir, n, smtp_ip, dns, &[])
    }

    /// `start` with more `mailrelay run` arguments.
    pub fn start_with(
        dir: &Path,
        n: usize,
        smtp_ip: IpAddr,
        dns: SocketAddr,
        extra: &[String],
    ) -> RelayProcess {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let log = dir.join(format!("relay-{n}-{attempt}.log"));
            let mut relay = RelayProcess::spawn(dir, &log, Addrs::free(smtp_ip), dns, extra);
            match relay.wait_ready() {
                Ok(()) => return relay,
                Err(status) if attempt < ATTEMPTS && relay.log_text().contains("cannot listen") => {
                    eprintln!("mailrelay exited ({status}): a port was taken; trying other ports");
                }
                Err(status) => panic!(
                    "mailrelay exited ({status}) before it was ready:\n{}",
                    relay.log_text()
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(
        dir: &Path,
        log: &Path,
        addrs: Addrs,
        dns: SocketAddr,
        extra: &[String],
    ) -> RelayProcess {
        let log_file = std::fs::File::create(log).expect("relay log file");
        let mut command = Command::new(MAILRELAY);
        command
            .arg("run")
            .arg("--manifests")
            .arg(dir.join("manifests"))
            .arg("--listen")
            .arg(format!("smtp={}", addrs.smtp))
            .arg("--listen")
            .arg(format!("submission={}", addrs.submission))
            .arg("--listen")
            .arg(format!("submissions={}", addrs.submissions))
            .arg("--spool")
            .arg(dir.join("spool"))
            .arg("--http")
            .arg(addrs.http.to_string())
            .arg("--dns")
            .arg(dns.to_string())
            .args(extra)
            .env("TMPDIR", dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        RelayProcess {
            process: Guard::spawn("mailrelay", &mut command),
            addrs,
            log: log.to_path_buf(),
        }
    }

    /// `Err(status)` when the relay exited first.
    fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.exited() {
                return Err(status);
            }
            if http_status(self.addrs.http, "/readyz") == Some(200) && greets(self.addrs.smtp) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "mailrelay was not ready within 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown, no flushing; what was acknowledged must survive.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The exit status, if the relay has ended (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    /// SIGTERM, as Kubernetes stops a pod, and wait up to `grace` for the
    /// relay to exit (SIGKILL after that); its exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.process.stop(grace)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file the relay logs to (for following it as it grows).
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// The whole response to `GET path`, or `None` when nothing answers.
fn http_response(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The status code of `GET path`, or `None` when nothing answers.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let response = http_response(addr, path)?;
    let status = response.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    status.parse().ok()
}

/// The body of `GET path` when it answers 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let response = http_response(addr, path)?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of the first metric line of the relay's /metrics that
/// starts with `line_start` (name and labels).
pub fn metric(env: &Env, line_start: &str) -> Option<f64> {
    let text = http_get(env.addrs().http, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The SMTP listener at `addr` sends a 220 greeting.
fn greets(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let mut smtp = Smtp::from_stream(stream, addr);
    match smtp.next_reply() {
        Some(r) if r.code == 220 => {
            // End the session politely, so it does not linger in limits.
            smtp.send("QUIT\r\n");
            let _ = smtp.next_reply();
            true
        }
        _ => false,
    }
}

/// Poll `probe` every 20 ms until it gives a value, for up to `within`;
/// then fail with what `explain` says. For waiting on real peers: the
/// deadline is generous and never asserted as a timing.
#[track_caller]
pub fn wait_for<T>(
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("not within {within:?}: {}", explain());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The DNS server a test's relay asks.
pub enum DnsServer {
    Dnsmasq(Dnsmasq),
    Silent(SilentDns),
    /// A server the test runs itself (bind9 for DNSSEC).
    External(SocketAddr),
}

impl DnsServer {
    pub fn addr(&self) -> SocketAddr {
        match self {
            DnsServer::Dnsmasq(d) => d.addr,
            DnsServer::Silent(s) => s.addr,
            DnsServer::External(addr) => *addr,
        }
    }
}

/// One test's relay, with its directory and DNS. Fields drop in order:
/// the spool's own filesystem (if any) first, then the relay, the
/// directory last.
pub struct Env {
    pub spool_mount: Option<mount::Tmpfs>,
    pub relay: RelayProcess,
    pub dns: DnsServer,
    pub setup: Setup,
    starts: usize,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn start(setup: Setup) -> Env {
        Env::start_with_spool_on(setup, None)
    }

    /// Like `start`, with the spool on a tmpfs of `size` of its own (to
    /// fill it up for real).
    pub fn start_on_tmpfs(setup: Setup, size: &str) -> Env {
        Env::start_with_spool_on(setup, Some(size))
    }

    fn start_with_spool_on(setup: Setup, tmpfs: Option<&str>) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("mailrelay-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let spool_mount = tmpfs.map(|size| mount::Tmpfs::mount(&dir.path().join("spool"), size));
        setup.write(&dir.path().join("manifests"));
        let dns = if let Some(addr) = setup.dns_server {
            DnsServer::External(addr)
        } else if setup.silent_dns {
            DnsServer::Silent(SilentDns::bind())
        } else {
            DnsServer::Dnsmasq(Dnsmasq::start(dir.path(), &setup.dns_records))
        };
        let relay = Env::launch(dir.path(), &setup, dns.addr(), 0);
        Env {
            spool_mount,
            relay,
            dns,
            setup,
            starts: 1,
            dir,
        }
    }

    fn launch(dir: &Path, setup: &Setup, dns: SocketAddr, n: usize) -> RelayProcess {
        let smtp_ip = if setup.smtp_on_ipv6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            LOCALHOST
        };
        RelayProcess::start_with(dir, n, smtp_ip, dns, &setup.relay_args)
    }

    /// Kill the relay if it still runs and start a new one on the same
    /// spool (on new ports).
    pub fn restart(&mut self) {
        self.relay.kill();
        self.relay = Env::launch(self.dir.path(), &self.setup, self.dns.addr(), self.starts);
        self.starts += 1;
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn spool(&self) -> Vec<spool::Queued> {
        spool::messages(&self.spool_dir())
    }

    /// Wait until the spool is empty (every message delivered or bounced,
    /// and every bounce delivered), for up to `within`.
    #[track_caller]
    pub fn wait_until_spool_is_empty(&self, within: Duration) {
        wait_for(
            within,
            || self.spool().is_empty().then_some(()),
            || {
                let left = spool::states(&self.spool_dir());
                format!("the spool still holds {left:#?}\n{}", self.relay.log_text())
            },
        );
    }

    pub fn addrs(&self) -> Addrs {
        self.relay.addrs
    }

    /// A session on the smtp listener from `source`, greeted and past EHLO.
    pub fn smtp_from(&self, source: IpAddr) -> Smtp {
        Smtp::hello(source, self.relay.addrs.smtp)
    }
}

/// `mailrelay_NAME{LABELS}` (all of its labels) from /metrics as a
/// count, 0 when absent.
pub fn count(env: &Env, name_and_labels: &str) -> u64 {
    metric(env, &format!("{name_and_labels} ")).map_or(0, |v| v as u64)
}
