//! Child processes and loopback ports. Every daemon a test starts runs in
//! its own process group and is killed (the whole group) and reaped when
//! its guard drops, so a failed assertion never leaves one behind (PID 1
//! here does not reap orphans: PEERS.md, "Processes").

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process in its own process group.
pub struct Guard {
    child: Child,
    name: String,
    reaped: Option<ExitStatus>,
}

impl Guard {
    /// Start `command` as the leader of a new process group.
    pub fn spawn(name: &str, command: &mut Command) -> Guard {
        command.process_group(0).stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Guard {
            child,
            name: name.to_string(),
            reaped: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        }
        self.reaped
    }

    /// SIGKILL the process group and reap the leader. Idempotent: once
    /// reaped, the group id may be reused and is never signalled again.
    /// Never panics (it runs in `drop`, maybe while a test unwinds).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_some() {
            return self.reaped;
        }
        let group = format!("-{}", self.child.id());
        // The group leader is still unreaped here, so its id cannot have
        // been reused: this signals only our processes.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => self.reaped = Some(status),
            Err(e) => eprintln!("cannot reap {}: {e}", self.name),
        }
        self.reaped
    }
}

impl Guard {
    /// SIGTERM the leader and give it `grace` to end (a master process such
    /// as Dovecot's then stops and reaps its own children, which would
    /// otherwise be left as zombies under our PID 1), then SIGKILL whatever
    /// is left of the group and reap the leader. Never panics.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.reaped.is_some() {
            return self.reaped;
        }
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Reaped: a member left behind still holds the group id
                // (Linux reuses no id while its group has members), so the
                // group signal reaches only our processes, or none.
                let _ = Command::new("kill")
                    .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                self.reaped = Some(status);
                return self.reaped;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port free right now on each of `ips`, all distinct. The sockets
/// are held until all are chosen so the kernel cannot hand out one twice.
pub fn free_ports(ips: &[IpAddr]) -> Vec<u16> {
    let held: Vec<TcpListener> = ips
        .iter()
        .map(|ip| {
            TcpListener::bind(SocketAddr::new(*ip, 0))
                .unwrap_or_else(|e| panic!("cannot bind a free port on {ip}: {e}"))
        })
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A loopback port free for both UDP and TCP right now (for dnsmasq).
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP port");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}
