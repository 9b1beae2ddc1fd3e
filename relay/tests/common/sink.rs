//! Remote MX hosts: Postfix's smtp-sink on `127.0.0.N:25` (PEERS.md), each
//! saving every message it takes as one file in a directory of its own.
//! Port 25 because that is where the relay looks for an MX; `N` is unique
//! per test across the suite, so tests running at once never share a host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::peers::require;
use super::process::Guard;
use super::smtp::Smtp;

pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// The port the relay delivers to for an MX host.
pub const MX_PORT: u16 = 25;

/// How a sink answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Takes every message.
    Accept,
    /// Soft-rejects every RCPT (`450 4.3.0 Error: command failed`).
    DeferRcpt,
}

/// A running smtp-sink; killed and reaped when dropped. Its messages stay
/// in `dir` (the caller's) after it stops.
pub struct Sink {
    process: Guard,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Sink {
    /// `smtp-sink -u root -d DIR/ 127.0.0.N:25 100`, saving into `dir`
    /// (created if missing), and wait until it greets.
    pub fn start(ip: Ipv4Addr, dir: &Path, answer: Answer) -> Sink {
        require(SMTP_SINK, "Postfix's smtp-sink (package postfix)");
        std::fs::create_dir_all(dir).expect("create the sink's directory");
        let addr = SocketAddr::new(IpAddr::V4(ip), MX_PORT);
        let log = dir.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("sink log");
        let mut command = Command::new(SMTP_SINK);
        command
            .args(["-u", "root", "-d"])
            .arg(format!("{}/", dir.display()));
        if answer == Answer::DeferRcpt {
            command.args(["-r", "RCPT"]);
        }
        command
            .arg(addr.to_string())
            .arg("100")
            .stdout(log_file.try_clone().expect("sink log"))
            .stderr(log_file);
        let mut sink = Sink {
            process: Guard::spawn("smtp-sink", &mut command),
            addr,
            log,
        };
        sink.wait_until_greeting();
        sink
    }

    fn wait_until_greeting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.process.exited() {
                panic!(
                    "smtp-sink on {} exited ({status}):\n{}",
                    self.addr,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(stream) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                let mut smtp = Smtp::from_stream(stream, self.addr);
                if smtp.next_reply().is_some_and(|r| r.code == 220) {
                    smtp.send("QUIT\r\n");
                    let _ = smtp.next_reply();
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "smtp-sink does not greet on {} after 15 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop taking mail: SIGKILL, reaped. The address refuses connections.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Wait until the sink holds no open connection (none established,
    /// none closed by the client and not yet read to the end by the sink):
    /// everything a client sent before it went away has been processed.
    #[track_caller]
    pub fn wait_until_idle(&self, within: Duration) {
        super::wait_for(
            within,
            || (open_connections(self.addr) == 0).then_some(()),
            || format!("smtp-sink on {} still has connections open", self.addr),
        );
    }
}

/// The messages saved in `dir` (one file each, smtp-sink's own header
/// fields first, LF line endings).
pub fn saved(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// Connections to `addr` (an IPv4 listener) that its server has not yet
/// closed, from /proc/net/tcp: states ESTABLISHED, SYN_RECV and
/// CLOSE_WAIT. TIME_WAIT and the FIN states are closed on the server's side.
fn open_connections(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr}: only IPv4 sinks");
    };
    // The kernel prints the address as a host-order (little-endian) u32.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str())
                && matches!(fields.get(3), Some(&"01" | &"03" | &"08"))
        })
        .count()
}
