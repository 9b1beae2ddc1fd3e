//! The SMTP client against real Postfix smtp-sink peers on 127.0.0.2, and
//! against the scripted server for TLS, AUTH and per-recipient replies.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailrelay_crds::maildomain::TlsMode;

use super::peers::{Peer, free_port, read_log, require};
use super::test_server::{TestServer, TlsScript, pki};
use super::{Credentials, OutboundConfig, Outcome, Security, SmtpClient, Target, Timeouts};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
const SINK_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

struct Sink {
    peer: Peer,
    target: Target,
    dir: tempfile::TempDir,
    log: PathBuf,
}

/// `smtp-sink -u root -d DIR/ 127.0.0.2:PORT 100`, saving each message.
fn start_sink(extra: &[&str]) -> Sink {
    require("smtp-sink", SMTP_SINK);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sink.log");
    let spool = dir.path().join("mail");
    std::fs::create_dir(&spool).expect("mkdir");
    let port = free_port(SINK_IP);
    let mut peer = Peer::spawn(
        "smtp-sink",
        Command::new(SMTP_SINK)
            .args(["-u", "root", "-d"])
            .arg(format!("{}/", spool.display()))
            .args(extra)
            .arg(format!("{SINK_IP}:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    let addr = SocketAddr::new(SINK_IP, port);
    peer.wait_for_port(addr, || read_log(&log));
    Sink {
        peer,
        target: Target {
            host: "mx1.example.test".into(),
            addr,
        },
        dir,
        log,
    }
}

impl Sink {
    /// The saved messages, waiting up to 5 s for `n` of them.
    fn messages(&mut self, n: usize) -> Vec<String> {
        let spool = self.dir.path().join("mail");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&spool)
                .expect("read spool")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            if files.len() >= n || Instant::now() > deadline {
                files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
                // smtp-sink ends each saved message with an empty line.
                return files
                    .iter()
                    .map(|p| {
                        let text = read_log(p);
                        text.strip_suffix('\n').map(String::from).unwrap_or(text)
                    })
                    .collect();
            }
            self.peer.assert_running(&read_log(&self.log));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn config(tls: TlsMode) -> OutboundConfig {
    OutboundConfig::new("relay.test", tls).with_timeouts(Timeouts::uniform(Duration::from_secs(10)))
}

fn delivered(reply: &str) -> Outcome {
    Outcome::Delivered {
        reply: reply.into(),
    }
}

#[tokio::test]
async fn messages_reach_smtp_sink_intact_on_one_connection() {
    let mut sink = start_sink(&[]);
    let mut client = SmtpClient::connect(&sink.target, &config(TlsMode::Opportunistic))
        .await
        .expect("connect");
    // smtp-sink offers no STARTTLS: opportunistic TLS goes on in clear.
    assert_eq!(client.security(), &Security::Clear);
    let bounce = b"From: MAILER-DAEMON@relay.test\r\nSubject: bounce\r\n\r\n\
                   line one\r\n.starts with a dot\r\n..two dots\r\nbare lf\nbare cr\rend\r\n";
    let outcomes = client
        .send("", &["a@example.test", "b@example.test"], bounce)
        .await;
    assert_eq!(outcomes, vec![delivered("250 2.0.0 Ok"); 2]);
    let plain = b"Subject: second\r\n\r\nsecond message\r\n.\r\n";
    let outcomes = client
        .send("alice@relay.test", &["c@example.test"], plain)
        .await;
    assert_eq!(outcomes, vec![delivered("250 2.0.0 Ok")]);
    client.quit().await;

    let messages = sink.messages(2);
    assert_eq!(messages.len(), 2, "{messages:?}");
    let first = messages
        .iter()
        .find(|m| m.contains("Subject: bounce"))
        .expect("bounce saved");
    // The null sender went out as MAIL FROM:<>.
    assert!(first.contains("X-Mail-Args: <>\n"), "{first}");
    assert!(first.contains("X-Rcpt-Args: <a@example.test>\nX-Rcpt-Args: <b@example.test>\n"));
    // smtp-sink saves with LF endings; the body arrives un-stuffed and
    // every lone CR or LF became a line break.
    assert!(
        first.ends_with(
            "Subject: bounce\n\nline one\n.starts with a dot\n..two dots\nbare lf\nbare cr\nend\n"
        ),
        "{first:?}"
    );
    let second = messages
        .iter()
        .find(|m| m.contains("Subject: second"))
        .expect("second saved");
    assert!(
        second.contains("X-Mail-Args: <alice@relay.test>\n"),
        "{second}"
    );
    assert!(second.ends_with("\n\nsecond message\n.\n"), "{second:?}");
}

#[tokio::test]
async fn transaction_level_refusals_apply_to_every_recipient() {
    let mut sink = start_sink(&["-f", "RCPT", "-r", "MAIL"]);
    let mut client = SmtpClient::connect(&sink.target, &config(TlsMode::None))
        .await
        .expect("connect");
    let outcomes = client
        .send(
            "a@relay.test",
            &["x@example.test", "y@example.test"],
            b"x\r\n",
        )
        .await;
    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        assert!(
            matches!(o, Outcome::TempFail { reason } if reason.starts_with("450 ")),
            "{o:?}"
        );
    }
    client.quit().await;
    let mut sink_rcpt = start_sink(&["-f", "RCPT"]);
    let mut client = SmtpClient::connect(&sink_rcpt.target, &config(TlsMode::None))
        .await
        .expect("connect");
    let outcomes = client
        .send(
            "a@relay.test",
            &["x@example.test", "y@example.test"],
            b"x\r\n",
        )
        .await;
    for o in &outcomes {
        assert!(
            matches!(o, Outcome::PermFail { reason } if reason.starts_with("5")),
            "{o:?}"
        );
    }
    // Nothing accepted: RSET, and the connection stays usable.
    assert_eq!(client.broken(), None);
    client.quit().await;
    assert!(sink.messages(0).is_empty());
    assert!(sink_rcpt.messages(0).is_empty());
}

#[tokio::test]
async fn connect_failures_are_outcomes() {
    // A 5xx greeting is the server's word.
    let sink = start_sink(&["-f", "CONNECT"]);
    let got = SmtpClient::connect(&sink.target, &config(TlsMode::None))
        .await
        .err();
    assert!(
        matches!(&got, Some(Outcome::PermFail { reason }) if reason.starts_with("5")),
        "{got:?}"
    );
    // Required TLS from a server without STARTTLS: defer, never go in clear.
    let sink = start_sink(&[]);
    let got = SmtpClient::connect(&sink.target, &config(TlsMode::Required))
        .await
        .err();
    let want = format!(
        "TLS is required but mx1.example.test ({}) does not offer STARTTLS",
        sink.target.addr
    );
    assert_eq!(got, Some(Outcome::temp(want)));
    // Nobody listening.
    let addr = SocketAddr::new(SINK_IP, free_port(SINK_IP));
    let target = Target {
        host: "mx2.example.test".into(),
        addr,
    };
    let got = SmtpClient::connect(&target, &config(TlsMode::None))
        .await
        .err();
    assert_eq!(
        got,
        Some(Outcome::temp(format!(
            "connection refused by mx2.example.test ({addr})"
        )))
    );
    // A server that never greets: bounded by the timeouts.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = Target {
        host: "slow.test".into(),
        addr: silent.local_addr().expect("addr"),
    };
    let quick = config(TlsMode::None).with_timeouts(Timeouts::uniform(Duration::from_millis(300)));
    let got = SmtpClient::connect(&target, &quick).await.err();
    assert!(
        matches!(&got, Some(Outcome::TempFail { reason }) if reason.contains("did not complete greeting/EHLO")),
        "{got:?}"
    );
}

fn tls_target(server: &TestServer) -> Target {
    Target {
        host: "mx.tls.test".into(),
        addr: server.addr,
    }
}

#[tokio::test]
async fn each_recipient_gets_its_own_reply() {
    let server = TestServer::start(TlsScript::None, None).await;
    each_recipient_gets_its_own_reply_from(&server).await;
}

#[tokio::test]
async fn each_recipient_gets_its_own_reply_when_commands_are_pipelined() {
    let server = TestServer::start_with(TlsScript::None, None, true).await;
    each_recipient_gets_its_own_reply_from(&server).await;
    // RFC 2920 §3.1: MAIL, the RCPTs and DATA went out as one group, the
    // RCPT and DATA replies were read although MAIL or every RCPT failed.
    let seen = server.seen();
    let commands: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("C: "))
        .map(|c| c.split([' ', ':']).next().unwrap_or_default())
        .collect();
    assert_eq!(
        commands,
        [
            "EHLO", "EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA", "MAIL", "RCPT", "RCPT", "DATA",
            "RSET", "MAIL", "RCPT", "RCPT", "DATA", "RSET", "QUIT"
        ],
        "{seen:?}"
    );
}

async fn each_recipient_gets_its_own_reply_from(server: &TestServer) {
    let mut client = SmtpClient::connect(&tls_target(server), &config(TlsMode::Opportunistic))
        .await
        .expect("connect");
    let rcpts = [
        "ok@x.test",
        "reject@x.test",
        "defer@x.test",
        "bad\r\nRSET@x.test",
    ];
    let outcomes = client
        .send("a@relay.test", &rcpts, b"Subject: x\r\n\r\nhello\r\n")
        .await;
    assert_eq!(outcomes[0], delivered("250 2.0.0 Ok: queued as Q1"));
    assert_eq!(
        outcomes[1],
        Outcome::perm("550 5.1.1 <reject@x.test>: Recipient address rejected")
    );
    assert_eq!(
        outcomes[2],
        Outcome::temp("451 4.3.0 <defer@x.test>: try again later")
    );
    assert!(
        matches!(&outcomes[3], Outcome::PermFail { reason } if reason.contains("control character"))
    );
    // All refused: no DATA. A refused sender: every recipient.
    let outcomes = client
        .send(
            "a@relay.test",
            &["reject1@x.test", "reject2@x.test"],
            b"x\r\n",
        )
        .await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::PermFail { .. })),
        "{outcomes:?}"
    );
    let outcomes = client
        .send("reject@relay.test", &["ok@x.test", "ok2@x.test"], b"x\r\n")
        .await;
    assert_eq!(
        outcomes,
        vec![Outcome::perm("550 5.7.1 sender rejected"); 2]
    );
    client.quit().await;
    let seen = server.seen();
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("BODY: ")).count(),
        1,
        "one message went through: {seen:?}"
    );
    assert!(seen.contains(&"C: RSET".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("bad")), "{seen:?}");
    assert!(
        seen.contains(&"BODY: Subject: x\r\n\r\nhello\r\n".to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn opportunistic_tls_takes_any_certificate() {
    let pki = pki("mx.tls.test");
    let server = TestServer::start(TlsScript::StartTls(pki.server.clone()), None).await;
    let mut client = SmtpClient::connect(&tls_target(&server), &config(TlsMode::Opportunistic))
        .await
        .expect("connect");
    assert_eq!(client.security(), &Security::Encrypted);
    let outcomes = client.send("", &["ok@x.test"], b"x\r\n").await;
    assert_eq!(outcomes, vec![delivered("250 2.0.0 Ok: queued as Q1")]);
    client.quit().await;
    assert!(server.seen().contains(&"TLS".to_string()));
}

#[tokio::test]
async fn required_tls_verifies_the_certificate_against_the_mx_name() {
    let pki = pki("mx.tls.test");
    let server = TestServer::start(TlsScript::StartTls(pki.server.clone()), None).await;
    // Not signed by a webpki root: refused, deferred.
    let got = SmtpClient::connect(&tls_target(&server), &config(TlsMode::Required))
        .await
        .err();
    assert!(
        matches!(&got, Some(Outcome::TempFail { reason }) if reason.starts_with("STARTTLS with mx.tls.test") && reason.contains("UnknownIssuer")),
        "{got:?}"
    );
    // Trusting the test CA: verified.
    let trusted = config(TlsMode::Required).with_extra_root(pki.ca_der.clone());
    let mut client = SmtpClient::connect(&tls_target(&server), &trusted)
        .await
        .expect("connect");
    assert_eq!(client.security(), &Security::Verified);
    assert_eq!(
        client.send("", &["ok@x.test"], b"x\r\n").await,
        vec![delivered("250 2.0.0 Ok: queued as Q1")]
    );
    client.quit().await;
    // The right CA but another name: refused.
    let other = Target {
        host: "other.test".into(),
        addr: server.addr,
    };
    let got = SmtpClient::connect(&other, &trusted).await.err();
    assert!(
        matches!(&got, Some(Outcome::TempFail { reason }) if reason.contains("not valid for name")),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_failed_opportunistic_handshake_falls_back_to_clear_and_says_so() {
    let server = TestServer::start(TlsScript::BrokenStartTls, None).await;
    let mut client = SmtpClient::connect(&tls_target(&server), &config(TlsMode::Opportunistic))
        .await
        .expect("connect");
    assert!(
        matches!(client.security(), Security::ClearAfterTlsFailure { error } if error.starts_with("STARTTLS with mx.tls.test")),
        "{:?}",
        client.security()
    );
    assert_eq!(
        client.send("", &["ok@x.test"], b"x\r\n").await,
        vec![delivered("250 2.0.0 Ok: queued as Q1")]
    );
    client.quit().await;
    // Required: no second chance.
    let got = SmtpClient::connect(&tls_target(&server), &config(TlsMode::Required))
        .await
        .err();
    assert!(matches!(got, Some(Outcome::TempFail { .. })), "{got:?}");
}

#[tokio::test]
async fn implicit_tls_and_auth_for_a_smarthost() {
    let pki = pki("mx.tls.test");
    let server = TestServer::start(
        TlsScript::Implicit(pki.server.clone()),
        Some(("relay", "s3cret")),
    )
    .await;
    let creds = |password: &str| Credentials {
        username: "relay".into(),
        password: password.into(),
    };
    let smarthost = config(TlsMode::Implicit).with_extra_root(pki.ca_der.clone());
    let mut client = SmtpClient::connect(
        &tls_target(&server),
        &smarthost.clone().with_auth(creds("s3cret")),
    )
    .await
    .expect("connect");
    assert_eq!(client.security(), &Security::Verified);
    assert_eq!(
        client.send("a@relay.test", &["ok@x.test"], b"x\r\n").await,
        vec![delivered("250 2.0.0 Ok: queued as Q1")]
    );
    client.quit().await;
    assert!(
        server.seen().contains(&"AUTH ok".to_string()),
        "{:?}",
        server.seen()
    );
    // A wrong password defers (a rotated Secret must not bounce the queue).
    let got = SmtpClient::connect(&tls_target(&server), &smarthost.with_auth(creds("wrong")))
        .await
        .err();
    assert_eq!(
        got,
        Some(Outcome::temp(
            "535 5.7.8 Authentication credentials invalid"
        ))
    );
    // Credentials never go over a clear connection.
    let clear = TestServer::start(TlsScript::None, Some(("relay", "s3cret"))).await;
    let got = SmtpClient::connect(
        &tls_target(&clear),
        &config(TlsMode::Opportunistic).with_auth(creds("s3cret")),
    )
    .await
    .err();
    assert!(
        matches!(&got, Some(Outcome::TempFail { reason }) if reason.starts_with("not sending credentials")),
        "{got:?}"
    );
    assert!(
        !clear.seen().iter().any(|l| l.starts_with("C: AUTH")),
        "{:?}",
        clear.seen()
    );
}
