//! Real peers for the delivery tests (PEERS.md): each daemon runs in the
//! foreground as our child, leader of its own process group, and the whole
//! group is killed and the leader reaped when its guard drops, so a failed
//! assertion never leaves one behind.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Panic, never skip, when a peer is missing.
pub(crate) fn require(name: &str, path: &str) {
    assert!(
        Path::new(path).exists(),
        "{name} not installed: run tests/run (it installs the test peers)"
    );
}

/// A child process in its own process group.
pub(crate) struct Peer {
    child: Child,
    name: String,
    reaped: bool,
}

impl Peer {
    pub(crate) fn spawn(name: &str, command: &mut Command) -> Peer {
        command.process_group(0).stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Peer {
            child,
            name: name.to_string(),
            reaped: false,
        }
    }

    /// Panic with `log` if the process has already exited.
    pub(crate) fn assert_running(&mut self, log: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.reaped = true;
            panic!("{} exited ({status}):\n{log}", self.name);
        }
    }

    /// Wait until `addr` accepts TCP connections.
    pub(crate) fn wait_for_port(&mut self, addr: SocketAddr, log: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            self.assert_running(&log());
            assert!(
                Instant::now() < deadline,
                "{} does not listen on {addr} after 10 s:\n{}",
                self.name,
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // First ask the leader: a master process (Dovecot) then stops and
        // reaps its own children, which would otherwise end as zombies
        // under a PID 1 that does not reap (PEERS.md, "Processes").
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Then whatever is left of the group. Linux does not reuse an id
        // while a process group of that id has members, so this signals
        // only our processes (or no one).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port free right now on `ip`.
pub(crate) fn free_port(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap_or_else(|e| panic!("cannot bind a free port on {ip}: {e}"));
    listener.local_addr().expect("local address").port()
}

/// A loopback port free for both UDP and TCP right now (for dnsmasq).
pub(crate) fn free_udp_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// The text of a log file, or nothing.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
