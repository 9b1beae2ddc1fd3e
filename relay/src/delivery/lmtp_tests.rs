//! The LMTP client against a real Dovecot LMTP service (PEERS.md,
//! "Dovecot"), and against a scripted peer in memory for the replies
//! Dovecot will not produce on demand.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

use super::peers::{Peer, free_port, read_log, require};
use super::{LmtpClient, Outcome, Timeouts};

const DOVECOT: &str = "/usr/sbin/dovecot";
const DOVECOT_LMTP: &str = "/usr/lib/dovecot/lmtp";
/// Dovecot's mail processes run as nobody (PEERS.md).
const MAIL_UID: u32 = 65534;

struct Dovecot {
    _peer: Peer,
    port: u16,
    dir: tempfile::TempDir,
}

impl Dovecot {
    fn log(&self) -> String {
        read_log(&self.dir.path().join("dovecot.log"))
    }

    fn maildir_new(&self, user: &str) -> PathBuf {
        self.dir
            .path()
            .join("mail/example.test")
            .join(user)
            .join("new")
    }
}

fn start_dovecot() -> Dovecot {
    require("dovecot", DOVECOT);
    require("dovecot-lmtpd", DOVECOT_LMTP);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mail = d.join("mail");
    std::fs::create_dir(&mail).expect("mkdir mail");
    std::os::unix::fs::chown(&mail, Some(MAIL_UID), Some(MAIL_UID)).expect("chown mail");
    std::fs::write(
        d.join("passwd"),
        "alice@example.test:{PLAIN}secret::::::\nbob@example.test:{PLAIN}secret::::::\n",
    )
    .expect("write passwd");
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let p = d.display();
    let conf = format!(
        "base_dir = {p}/run\n\
         state_dir = {p}/state\n\
         log_path = {p}/dovecot.log\n\
         ssl = no\n\
         disable_plaintext_auth = no\n\
         auth_mechanisms = plain login\n\
         protocols = lmtp\n\
         listen = 127.0.0.1\n\
         mail_location = maildir:{p}/mail/%d/%n\n\
         first_valid_uid = 100\n\
         passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {p}/passwd\n}}\n\
         userdb {{\n  driver = passwd-file\n  args = username_format=%u {p}/passwd\n  \
           default_fields = uid={MAIL_UID} gid={MAIL_UID} home={p}/mail/%d/%n\n}}\n\
         service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n\
         protocol lmtp {{\n  postmaster_address = postmaster@example.test\n}}\n"
    );
    let conf_path = d.join("dovecot.conf");
    std::fs::write(&conf_path, conf).expect("write dovecot.conf");
    let log = d.join("dovecot.log");
    let mut peer = Peer::spawn(
        "dovecot",
        Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr.log")).expect("stderr log")),
    );
    let stderr = d.join("stderr.log");
    peer.wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)), || {
        format!("{}{}", read_log(&stderr), read_log(&log))
    });
    Dovecot {
        _peer: peer,
        port,
        dir,
    }
}

fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| read_log(&e.path()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn dovecot_answers_per_recipient_after_the_dot() {
    let dovecot = start_dovecot();
    let timeouts = Timeouts::uniform(Duration::from_secs(10));
    let mut client = LmtpClient::connect("127.0.0.1", dovecot.port, "relay.test", timeouts)
        .await
        .unwrap_or_else(|o| panic!("connect: {o:?}\n{}", dovecot.log()));
    let body = b"From: carol@x.test\r\nSubject: lmtp test\r\n\r\nhello\r\n.a line with a dot\r\nbare lf\nend\r\n";
    let rcpts = [
        "alice@example.test",
        "bob@example.test",
        "nobody@example.test",
    ];
    let outcomes = client.send("carol@x.test", &rcpts, body).await;
    assert_eq!(outcomes.len(), 3);
    assert!(
        matches!(&outcomes[0], Outcome::Delivered { reply } if reply.starts_with("250 2.0.0 <alice@example.test>")),
        "{outcomes:?}\n{}",
        dovecot.log()
    );
    assert!(
        matches!(&outcomes[1], Outcome::Delivered { reply } if reply.starts_with("250 2.0.0 <bob@example.test>")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], Outcome::PermFail { reason } if reason.starts_with("550 5.1.1 <nobody@example.test>")),
        "{outcomes:?}"
    );
    // The same connection again, with the null sender of a bounce.
    let outcomes = client
        .send("", &["alice@example.test"], b"Subject: second\r\n\r\nx\r\n")
        .await;
    assert!(
        matches!(&outcomes[0], Outcome::Delivered { .. }),
        "{outcomes:?}"
    );
    client.quit().await;

    let alice = files(&dovecot.maildir_new("alice"));
    assert_eq!(alice.len(), 2, "{alice:?}\n{}", dovecot.log());
    let first = alice
        .iter()
        .find(|m| m.contains("Subject: lmtp test"))
        .expect("first message");
    assert!(first.contains("Return-Path: <carol@x.test>"), "{first}");
    assert!(
        first.contains("\nhello\n.a line with a dot\nbare lf\nend\n"),
        "{first:?}"
    );
    let second = alice
        .iter()
        .find(|m| m.contains("Subject: second"))
        .expect("second message");
    assert!(second.contains("Return-Path: <>"), "{second}");
    assert_eq!(files(&dovecot.maildir_new("bob")).len(), 1);
}

#[tokio::test]
async fn nobody_listening_is_a_temporary_failure() {
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let got = LmtpClient::connect("127.0.0.1", port, "relay.test", Timeouts::default())
        .await
        .err();
    assert_eq!(
        got,
        Some(Outcome::temp(format!(
            "connection refused by 127.0.0.1:{port}"
        )))
    );
}

/// A scripted LMTP peer: RCPT for `reject...` gets a multiline 550; after
/// the dot it sends `after_dot` and, if `hang_up`, closes.
async fn scripted_peer(server: DuplexStream, after_dot: Vec<&'static str>) -> Vec<String> {
    let mut seen = Vec::new();
    let mut s = BufReader::new(server);
    let _ = s.write_all(b"220 lmtp.test LMTP ready\r\n").await;
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
            return seen;
        }
        seen.push(line.clone());
        let reply: String = match line.split([' ', ':', '\r']).next().unwrap_or_default() {
            "LHLO" => "250-lmtp.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n".into(),
            "RCPT" if line.contains("<reject") => {
                "550-5.1.1 no such user here\r\n550 5.1.1 <reject@x.test> try another\r\n".into()
            }
            "MAIL" | "RCPT" | "RSET" => "250 2.1.0 Ok\r\n".into(),
            "DATA" => {
                let _ = s.write_all(b"354 go on\r\n").await;
                loop {
                    line.clear();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return seen;
                    }
                    seen.push(line.clone());
                    if line == ".\r\n" {
                        break;
                    }
                }
                let replies: String = after_dot.iter().map(|r| format!("{r}\r\n")).collect();
                if after_dot.len() < 2 {
                    let _ = s.write_all(replies.as_bytes()).await;
                    return seen;
                }
                replies
            }
            "QUIT" => "221 bye\r\n".into(),
            _ => "500 what\r\n".into(),
        };
        let _ = s.write_all(reply.as_bytes()).await;
    }
}

#[tokio::test]
async fn one_reply_per_accepted_recipient_in_rcpt_order() {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let after = vec![
        "250 2.0.0 <a@x.test> Saved",
        "452 4.2.2 <b@x.test> Mailbox full",
        "250 2.0.0 <c@x.test> Saved",
    ];
    let server = tokio::spawn(scripted_peer(server_end, after));
    let timeouts = Timeouts::uniform(Duration::from_secs(5));
    let mut client = LmtpClient::start(client_end, "memory".into(), "relay.test", timeouts)
        .await
        .expect("start");
    let rcpts = ["a@x.test", "reject@x.test", "b@x.test", "c@x.test"];
    let outcomes = client
        .send("s@x.test", &rcpts, b"Subject: x\n\n.dot\nend")
        .await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::Delivered {
                reply: "250 2.0.0 <a@x.test> Saved".into()
            },
            Outcome::perm("550 5.1.1 no such user here 5.1.1 <reject@x.test> try another"),
            Outcome::temp("452 4.2.2 <b@x.test> Mailbox full"),
            Outcome::Delivered {
                reply: "250 2.0.0 <c@x.test> Saved".into()
            },
        ]
    );
    // Every recipient refused: no DATA, an RSET, the connection reusable.
    let outcomes = client.send("s@x.test", &["reject@x.test"], b"x\r\n").await;
    assert!(matches!(&outcomes[0], Outcome::PermFail { .. }));
    assert_eq!(client.broken(), None);
    client.quit().await;
    let seen = server.await.expect("peer");
    let data_start = seen
        .iter()
        .position(|l| l == "DATA\r\n")
        .expect("DATA sent");
    assert_eq!(
        seen[data_start + 1..data_start + 6].concat(),
        "Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n"
    );
    assert_eq!(seen.iter().filter(|l| *l == "DATA\r\n").count(), 1);
    assert!(seen.contains(&"RSET\r\n".to_string()), "{seen:?}");
    assert!(
        seen.contains(&"MAIL FROM:<s@x.test>\r\n".to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_peer_that_hangs_up_after_the_dot_defers_the_rest() {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(scripted_peer(
        server_end,
        vec!["250 2.0.0 <a@x.test> Saved"],
    ));
    let timeouts = Timeouts::uniform(Duration::from_secs(5));
    let mut client = LmtpClient::start(client_end, "memory".into(), "relay.test", timeouts)
        .await
        .expect("start");
    let outcomes = client.send("", &["a@x.test", "b@x.test"], b"x\r\n").await;
    assert_eq!(
        outcomes[0],
        Outcome::Delivered {
            reply: "250 2.0.0 <a@x.test> Saved".into()
        }
    );
    assert!(
        matches!(&outcomes[1], Outcome::TempFail { reason } if reason.contains("closed")),
        "{outcomes:?}"
    );
    assert!(client.broken().is_some());
    // A broken connection refuses further work without touching the wire.
    let again = client.send("", &["c@x.test"], b"x\r\n").await;
    assert!(matches!(&again[0], Outcome::TempFail { .. }));
    drop(client);
    let seen = server.await.expect("peer");
    assert!(seen.contains(&"MAIL FROM:<>\r\n".to_string()), "{seen:?}");
}
