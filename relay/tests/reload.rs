//! A running relay picks up a changed compiled config (as the operator's
//! ConfigMap update delivers it): new sessions follow the new Blocklist at
//! once, while a session opened before the change completes under the old one.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailrelay_crds::compile;
use mailrelay_crds::manifests::{Manifests, load_text};

const BLOCKED: &str = "127.0.0.7";

fn manifests(blocked: bool) -> String {
    let list = if blocked {
        format!("  ips: [{{value: {BLOCKED}}}]\n  message: \"Blocked after reload\"\n")
    } else {
        "  ips: [{value: 192.0.2.1}]\n".to_string()
    };
    manifests_with(&list)
}

/// The manifests with `list` as the Blocklist's spec.
fn manifests_with(list: &str) -> String {
    format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {{name: r}}\nspec:\n  hostname: mx.test\n  trustedNetworks: [127.0.0.0/8]\n  relayFromTrustedNetworks: true\n---\n\
         apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: h}}\nspec:\n  domain: hosted.test\n  inbound: {{localParts: [alice]}}\n  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}\n---\n\
         apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {{name: b}}\nspec:\n{list}"
    )
}

/// Compile the manifests as the operator would and write the JSON.
fn write_config(path: &Path, blocked: bool) {
    write_manifests(path, &manifests(blocked));
}

fn write_manifests(path: &Path, text: &str) {
    let mut m = Manifests::default();
    let mut errors = Vec::new();
    load_text(Path::new("test.yaml"), text, &mut m, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let compiled = compile(
        &m.relays[0].object,
        &m.domain_objects(),
        &m.blocklist_objects(),
    )
    .expect("compiles");
    let json = compiled.config.to_json().expect("json");
    // Replace atomically, as the kubelet's symlink swap does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(from: &str, to: SocketAddr) -> Option<Client> {
        let socket = connect_from(from, to)?;
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut c = Client {
            reader: BufReader::new(socket.try_clone().unwrap()),
            writer: socket,
        };
        let greeting = c.reply();
        greeting.starts_with("220").then_some(c)
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn send(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }
}

/// A TCP connection from a chosen loopback source address (std cannot
/// bind before connecting; tokio's TcpSocket can).
fn connect_from(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(format!("{from}:0").parse().ok()?).ok()?;
        let stream = socket.connect(to).await.ok()?;
        stream.into_std().ok().inspect(|s| {
            let _ = s.set_nonblocking(false);
        })
    })
}

/// `mailrelay run --config` on `config`, logging into `dir/relay.log`;
/// its SMTP address.
fn start(dir: &Path, config: &Path) -> (Relay, SocketAddr) {
    let (smtp, http) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{smtp}").parse().unwrap();
    let log = std::fs::File::create(dir.join("relay.log")).unwrap();
    let relay = Relay(
        Command::new(env!("CARGO_BIN_EXE_mailrelay"))
            .args(["run", "--config"])
            .arg(config)
            .args([
                "--listen",
                &format!("smtp={addr}"),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--spool",
            ])
            .arg(dir.join("spool"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mailrelay"),
    );
    (relay, addr)
}

const SUPPRESSED: &str = "  recipients:\n    - {value: bob@remote.test, comment: asked to stop}\n    - {value: \"*@gone.test\"}\n  message: \"Recipient suppressed\"\n";

/// RCPT for `to` in a new session from a trusted client (which may relay).
fn rcpt_reply(addr: SocketAddr, to: &str) -> String {
    let mut c = Client::connect("127.0.0.1", addr).expect("a session");
    assert!(c.send("EHLO client.test").starts_with("250"));
    assert!(c.send("MAIL FROM:<a@remote.test>").starts_with("250"));
    c.send(&format!("RCPT TO:<{to}>"))
}

#[test]
fn a_suppressed_recipient_is_refused_until_its_entry_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.json");
    write_manifests(&config, &manifests_with(SUPPRESSED));
    let (_relay, addr) = start(dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::connect("127.0.0.1", addr).is_none() {
        assert!(Instant::now() < deadline, "relay did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    for to in ["bob@remote.test", "BOB@Remote.Test", "anyone@gone.test"] {
        let reply = rcpt_reply(addr, to);
        assert!(
            reply.starts_with("550 5.7.1 Recipient suppressed"),
            "{to}: {reply}"
        );
    }
    let other = rcpt_reply(addr, "carol@remote.test");
    assert!(other.starts_with("250 2.1.5"), "{other}");

    // The entry goes (the operator writes the new config); no restart.
    write_manifests(
        &config,
        &manifests_with("  recipients: [{value: \"*@gone.test\"}]\n"),
    );
    let through = loop {
        let mut c = Client::connect("127.0.0.1", addr).expect("a session");
        c.send("EHLO client.test");
        c.send("MAIL FROM:<a@remote.test>");
        let reply = c.send("RCPT TO:<bob@remote.test>");
        if reply.starts_with("250") {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the new config never applied; last reply {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut c = through;
    assert!(c.send("DATA").starts_with("354"));
    let accepted = c.send("Subject: after\r\n\r\nwelcome again\r\n.");
    assert!(
        accepted.starts_with("250 2.0.0 Ok: queued as "),
        "{accepted}"
    );
    let still = rcpt_reply(addr, "x@gone.test");
    assert!(still.starts_with("550 5.7.1"), "{still}");
}

#[test]
fn a_changed_config_applies_to_new_sessions_while_open_ones_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.json");
    write_config(&config, false);
    let (smtp, http) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{smtp}").parse().unwrap();
    let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
    let _relay = Relay(
        Command::new(env!("CARGO_BIN_EXE_mailrelay"))
            .args(["run", "--config"])
            .arg(&config)
            .args([
                "--listen",
                &format!("smtp={addr}"),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--spool",
            ])
            .arg(dir.path().join("spool"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mailrelay"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut open = loop {
        if let Some(c) = Client::connect(BLOCKED, addr) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not start: see {}",
            dir.path().join("relay.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(open.send("EHLO before.test").starts_with("250"));
    assert!(
        open.send("MAIL FROM:<a@remote.test>")
            .starts_with("250 2.1.0")
    );

    // The operator writes a new config in which this client is blocked.
    write_config(&config, true);
    let refused = loop {
        let mut c = Client::connect(BLOCKED, addr).expect("new session");
        c.send("EHLO after.test");
        let reply = c.send("MAIL FROM:<a@remote.test>");
        if reply.starts_with("550") {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "the new config never applied; last reply {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(refused.contains("5.7.1 Blocked after reload"), "{refused}");

    // The session opened before the change still completes.
    assert!(
        open.send("RCPT TO:<alice@hosted.test>")
            .starts_with("250 2.1.5")
    );
    assert!(open.send("DATA").starts_with("354"));
    let accepted = open.send("Subject: old session\r\n\r\nstill welcome\r\n.");
    assert!(
        accepted.starts_with("250 2.0.0 Ok: queued as "),
        "{accepted}"
    );
    assert!(open.send("QUIT").starts_with("221"));

    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    assert!(log.contains("config reloaded"), "{log}");
}
