//! Dovecot as a hosted domain's mailbox server (PEERS.md, "Dovecot"): LMTP
//! in, IMAP and POP3 out, on free loopback ports, with its config, state,
//! log and mail in a temporary directory of its own. Users come from a
//! passwd-file, each with the password [`PASSWORD`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::LOCALHOST;
use super::mailbox::{Protocol, read_mailbox};
use super::peers::require;
use super::process::{Guard, free_ports};

pub const DOVECOT: &str = "/usr/sbin/dovecot";
const LMTPD: &str = "/usr/lib/dovecot/lmtp";
const IMAPD: &str = "/usr/lib/dovecot/imap";
const POP3D: &str = "/usr/lib/dovecot/pop3";

/// Every user's password.
pub const PASSWORD: &str = "secret";
/// The owner of the mail Dovecot keeps (`nobody`): Dovecot refuses to
/// access mail as root.
pub const MAIL_UID: u32 = 65534;

/// Where Dovecot keeps its users' mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// Its own tree, `mail/DOMAIN/USER`: mail arrives over LMTP.
    Own,
    /// `maildirs/USER`, the layout of the relay's maildir delivery
    /// (`mail_location = maildir:PATH/%n`): the relay writes, Dovecot reads.
    RelayMaildirs,
}

/// A running Dovecot; stopped (SIGTERM, then SIGKILL) and reaped when
/// dropped, before its directory is removed.
pub struct Dovecot {
    process: Guard,
    pub lmtp: SocketAddr,
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    store: Store,
    dir: tempfile::TempDir,
}

impl Dovecot {
    /// Start Dovecot for `users` (full addresses, `alice@hosted.test`) and
    /// wait until LMTP, IMAP and POP3 all listen. A port taken between our
    /// probe and Dovecot's bind makes it exit: then it starts again on
    /// other ports.
    pub fn start(users: &[&str], store: Store) -> Dovecot {
        for binary in [DOVECOT, LMTPD, IMAPD, POP3D] {
            require(
                binary,
                "Dovecot (dovecot-core, dovecot-lmtpd, dovecot-imapd, dovecot-pop3d)",
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("mailrelay-dovecot-")
            .tempdir()
            .expect("a temporary directory");
        let d = dir.path();
        for sub in ["mail", "maildirs"] {
            let path = d.join(sub);
            std::fs::create_dir(&path).expect("create a mail directory");
            std::os::unix::fs::chown(&path, Some(MAIL_UID), Some(MAIL_UID))
                .expect("chown the mail directory");
        }
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}{PASSWORD}::::::\n"))
            .collect();
        std::fs::write(d.join("passwd"), passwd).expect("write the passwd-file");
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let ports = free_ports(&[LOCALHOST, LOCALHOST, LOCALHOST]);
            let addrs: Vec<SocketAddr> = ports
                .iter()
                .map(|p| SocketAddr::new(LOCALHOST, *p))
                .collect();
            let conf = d.join("dovecot.conf");
            std::fs::write(&conf, config(d, store, &ports)).expect("write dovecot.conf");
            let stderr = std::fs::File::create(d.join("stderr.log")).expect("stderr log");
            let mut command = Command::new(DOVECOT);
            command
                .arg("-F")
                .arg("-c")
                .arg(&conf)
                .stdout(stderr.try_clone().expect("stderr log"))
                .stderr(stderr);
            let mut process = Guard::spawn("dovecot", &mut command);
            match wait_listening(&mut process, &addrs, || log_text(d)) {
                Ok(()) => {
                    return Dovecot {
                        process,
                        lmtp: addrs[0],
                        imap: addrs[1],
                        pop3: addrs[2],
                        store,
                        dir,
                    };
                }
                Err(log) if attempt < ATTEMPTS && log.contains("in use") => {
                    eprintln!("dovecot exited: a port was taken; trying other ports");
                    process.stop(Duration::from_secs(5));
                }
                Err(log) => panic!("dovecot exited before it listened:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Every message in `user`'s INBOX, read over IMAP or POP3 as a mail
    /// client would (nothing is deleted or marked seen).
    pub fn read(&self, protocol: Protocol, user: &str) -> Vec<String> {
        let addr = match protocol {
            Protocol::Imap => self.imap,
            Protocol::Pop3 => self.pop3,
        };
        read_mailbox(protocol, addr, user, PASSWORD)
    }

    /// The `delivery` of a MailDomain whose mail goes to this Dovecot.
    pub fn lmtp_delivery(&self) -> String {
        format!(
            "{{lmtp: {{host: {}, port: {}}}}}",
            self.lmtp.ip(),
            self.lmtp.port()
        )
    }

    /// The root of the maildirs that Dovecot reads with
    /// [`Store::RelayMaildirs`]: the relay's maildir delivery path.
    pub fn maildirs(&self) -> PathBuf {
        self.dir.path().join("maildirs")
    }

    /// The `new/` directory of `user` (a full address).
    pub fn new_dir(&self, user: &str) -> PathBuf {
        let (local, domain) = user.split_once('@').expect("a full address");
        match self.store {
            Store::Own => self.dir.path().join("mail").join(domain).join(local),
            Store::RelayMaildirs => self.maildirs().join(local),
        }
        .join("new")
    }

    /// Give the mail the relay wrote (as root) to the user Dovecot reads
    /// it as.
    pub fn adopt_relay_maildirs(&self) {
        chown_tree(&self.maildirs(), MAIL_UID);
    }

    pub fn log_text(&self) -> String {
        log_text(self.dir.path())
    }
}

/// What Dovecot said on stderr and in its log.
fn log_text(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    format!("{err}{log}")
}

/// Wait until every one of `addrs` accepts connections; `Err(log)` when
/// Dovecot exited first.
fn wait_listening(
    process: &mut Guard,
    addrs: &[SocketAddr],
    log: impl Fn() -> String,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in addrs {
        while std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
            if process.exited().is_some() {
                return Err(log());
            }
            assert!(
                Instant::now() < deadline,
                "dovecot does not listen on {addr} after 30 s:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// `chown -R uid:uid path`.
fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read a mail directory") {
            chown_tree(&entry.expect("a directory entry").path(), uid);
        }
    }
}

/// dovecot.conf: everything in `dir`, plain-text auth (loopback only),
/// LMTP, IMAP and POP3 on `ports` in that order.
fn config(dir: &Path, store: Store, ports: &[u16]) -> String {
    let d = dir.display();
    let (location, home) = match store {
        Store::Own => (format!("{d}/mail/%d/%n"), format!("{d}/mail/%d/%n")),
        Store::RelayMaildirs => (format!("{d}/maildirs/%n"), format!("{d}/maildirs/%n")),
    };
    let (lmtp, imap, pop3) = (ports[0], ports[1], ports[2]);
    format!(
        "base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
protocols = imap pop3 lmtp
listen = 127.0.0.1
mail_location = maildir:{location}
first_valid_uid = 100
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
  default_fields = uid={MAIL_UID} gid={MAIL_UID} home={home}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@hosted.test
}}
"
    )
}
