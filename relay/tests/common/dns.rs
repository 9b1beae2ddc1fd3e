//! DNS on loopback: a real dnsmasq answering from a config file in the
//! test's directory (PEERS.md, "DNS on loopback"), or a UDP socket that
//! never answers (for lookups that must time out).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::peers::require;
use super::process::{Guard, free_udp_tcp_port};

pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// The name the readiness probe asks for.
const PROBE_NAME: &str = "ready.test";

/// dnsmasq in the foreground as our child.
pub struct Dnsmasq {
    process: Guard,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Dnsmasq {
    /// Start dnsmasq on 127.0.0.1 and a free port with `records` (config
    /// file lines, such as `address=/6.0.0.127.bl.test/127.0.0.2`), and
    /// wait until it answers. Every `.test` name it does not know, and
    /// every reverse (PTR) name, gets NXDOMAIN from it: no lookup of the
    /// relay leaves the machine or waits on a missing server. `remote.test`
    /// has an MX on 127.0.0.254, where nothing listens: mail to it is
    /// deferred (connection refused) and stays queued for the tests to see.
    pub fn start(dir: &Path, records: &str) -> Dnsmasq {
        require(DNSMASQ, "dnsmasq");
        let conf = dir.join("dnsmasq.conf");
        let text = format!(
            "address=/{PROBE_NAME}/127.0.0.1\n\
             local=/test/\n\
             local=/in-addr.arpa/\n\
             local=/ip6.arpa/\n\
             mx-host=remote.test,mx.remote.test,10\n\
             host-record=mx.remote.test,127.0.0.254\n\
             {records}\n"
        );
        std::fs::write(&conf, text).expect("write dnsmasq.conf");
        let log = dir.join("dnsmasq.log");
        let port = free_udp_tcp_port();
        let mut command = Command::new(DNSMASQ);
        command
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
            .stdout(std::fs::File::create(&log).expect("dnsmasq log"))
            .stderr(std::fs::File::create(dir.join("dnsmasq.err")).expect("dnsmasq log"));
        let process = Guard::spawn("dnsmasq", &mut command);
        let mut server = Dnsmasq {
            process,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
        };
        server.wait_until_answering();
        server
    }

    fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.process.exited() {
                panic!("dnsmasq exited ({status}):\n{}", self.log_text());
            }
            if query_a(self.addr, PROBE_NAME).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer on {} within 15 s:\n{}",
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        let dir = self.log.parent().expect("log dir");
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(dir.join("dnsmasq.err")).unwrap_or_default();
        format!("{out}{err}")
    }
}

/// A UDP socket that receives DNS queries and never answers them.
pub struct SilentDns {
    _socket: UdpSocket,
    pub addr: SocketAddr,
}

impl SilentDns {
    pub fn bind() -> SilentDns {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP socket");
        let addr = socket.local_addr().expect("local address");
        SilentDns {
            _socket: socket,
            addr,
        }
    }
}

/// The A records of `name` from `server`, or `None` without an answer.
pub fn query_a(server: SocketAddr, name: &str) -> Option<Vec<Ipv4Addr>> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    let id: u16 = 0x4d52;
    // Header: id, RD set, one question (RFC 1035 §4.1.1).
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(u8::try_from(label.len()).ok()?);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    socket.send_to(&packet, server).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let answer = &buf[..n];
    if n < 12 || answer[..2] != id.to_be_bytes() || answer[3] & 0x0f != 0 {
        return None;
    }
    // The answers follow the echoed question, which is as long as ours.
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    let mut at = packet.len();
    let mut addrs = Vec::new();
    for _ in 0..count {
        // Name (a pointer, 2 bytes, or labels), type, class, ttl, rdlength.
        if answer.get(at)? & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while *answer.get(at)? != 0 {
                at += usize::from(answer[at]) + 1;
            }
            at += 1;
        }
        let rtype = u16::from_be_bytes([*answer.get(at)?, *answer.get(at + 1)?]);
        let len = usize::from(u16::from_be_bytes([
            *answer.get(at + 8)?,
            *answer.get(at + 9)?,
        ]));
        let data = answer.get(at + 10..at + 10 + len)?;
        if rtype == 1 && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    (!addrs.is_empty()).then_some(addrs)
}

/// A dnsmasq `txt-record=` line for `name`: the value in strings of at
/// most 255 octets, as a zone file would have it (a DKIM RSA key is longer).
pub fn txt_record(name: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("txt-record={name},{}", strings.join(","))
}
