//! Session transcripts: `c:` lines are what the client sends, `s:` lines the
//! start of what the server must answer (code, enhanced code, text).

use std::sync::Arc;

use mailrelay_crds::relay::ListenerName;

use super::*;
use crate::policy::limits::Limiter;
use crate::smtp::ConnInfo;
use crate::testutil;

struct Driver {
    session: Session,
    accepted: Vec<Accepted>,
    /// Secrets stay on disk as long as the session may read them.
    _dir: tempfile::TempDir,
}

impl Driver {
    fn new(listener: ListenerName, ip: &str, tls: bool) -> Self {
        Self::with(listener, ip, tls, None)
    }

    fn with(listener: ListenerName, ip: &str, tls: bool, connect_block: Option<Reply>) -> Self {
        let (rt, dir) = testutil::runtime();
        let conn = ConnInfo {
            listener,
            client_ip: ip.parse().unwrap(),
            client_name: None,
            tls,
            tls_info: None,
            connect_block,
        };
        Self {
            session: Session::new(Arc::new(rt), Limiter::system(), conn, true),
            accepted: Vec::new(),
            _dir: dir,
        }
    }

    /// Send one line and follow the effect like the connection loop would;
    /// returns every reply produced.
    fn send(&mut self, line: &str) -> Vec<Reply> {
        let out = self.session.line(format!("{line}\r\n").as_bytes());
        let mut replies: Vec<Reply> = out.reply.into_iter().collect();
        match out.effect {
            Effect::Verify(c) => {
                let hash = self.session_rt().accounts.hash_of(&c.login);
                let ok = crate::policy::accounts::verify(hash.as_deref(), &c.password);
                replies.push(self.session.auth_result(ok));
            }
            Effect::StartTls => self.session.tls_started(),
            Effect::ReceiveBdat { .. } => {}
            Effect::ReceiveData(_) | Effect::None | Effect::Close => {}
        }
        replies
    }

    fn session_rt(&self) -> &Runtime {
        &self.session.rt
    }

    /// DATA content (already dot-stuffed, ending with CRLF.CRLF).
    fn content(&mut self, raw: &[u8]) -> Reply {
        let mut reader = DataReader::new(1 << 20);
        let end = reader.feed(raw);
        assert_eq!(
            end,
            Some(raw.len()),
            "the content must end exactly at its CRLF.CRLF"
        );
        match self.session.data_end(reader.finish()) {
            Ok(a) => {
                self.accepted.push(a);
                Reply::new(250, "2.0.0", "Ok: queued")
            }
            Err(r) => r,
        }
    }

    /// Replay a transcript.
    fn play(&mut self, script: &str) {
        let mut pending: Vec<Reply> = Vec::new();
        for raw in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(cmd) = raw.strip_prefix("c: ") {
                pending.extend(self.send(cmd));
            } else if let Some(content) = raw.strip_prefix("d: ") {
                let bytes = content.replace("\\r", "\r").replace("\\n", "\n");
                pending.push(self.content(bytes.as_bytes()));
            } else if let Some(want) = raw.strip_prefix("s: ") {
                assert!(!pending.is_empty(), "expected a reply {want:?}, got none");
                let got = pending.remove(0).to_string();
                let last_line = got.lines().last().unwrap_or_default().to_string();
                assert!(
                    got.starts_with(want) || last_line.starts_with(want),
                    "expected {want:?}, got {got:?}"
                );
            } else {
                panic!("bad transcript line {raw:?}");
            }
        }
        assert!(pending.is_empty(), "unexpected replies: {pending:?}");
    }
}

#[test]
fn inbound_mail_for_a_hosted_user_is_accepted() {
    let mut d = Driver::new(ListenerName::Smtp, "198.51.100.7", false);
    d.play(
        "c: EHLO client.example
         s: 250-mx.test
         c: MAIL FROM:<someone@remote.example> BODY=8BITMIME
         s: 250 2.1.0
         c: RCPT TO:<Alice+news@Hosted.Example>
         s: 250 2.1.5
         c: RCPT TO:<nobody@hosted.example>
         s: 550 5.1.1
         c: DATA
         s: 354
         d: Subject: hi\\r\\n\\r\\nhello\\r\\n.\\r\\n
         s: 250 2.0.0
         c: QUIT
         s: 221 2.0.0",
    );
    let a = &d.accepted[0];
    assert_eq!(a.transaction.recipients.len(), 1);
    assert!(a.transaction.body_8bit);
    assert_eq!(a.content, b"Subject: hi\r\n\r\nhello\r\n");
}

#[test]
fn a_full_spool_refuses_mail_with_452_4_3_1_until_it_has_room_again() {
    let mut d = Driver::new(ListenerName::Smtp, "198.51.100.7", false);
    d.session.set_storage_full(true);
    d.play(
        "c: EHLO client.example
         s: 250-mx.test
         c: MAIL FROM:<someone@remote.example>
         s: 452 4.3.1 Insufficient system storage
         c: RCPT TO:<alice@hosted.example>
         s: 503 5.5.1",
    );
    d.session.set_storage_full(false);
    d.play(
        "c: MAIL FROM:<someone@remote.example>
         s: 250 2.1.0
         c: RCPT TO:<alice@hosted.example>
         s: 250 2.1.5",
    );
}

#[test]
fn the_smtp_listener_is_not_an_open_relay() {
    for listener in [
        ListenerName::Smtp,
        ListenerName::Submission,
        ListenerName::Submissions,
    ] {
        let mut d = Driver::new(listener, "198.51.100.7", true);
        d.send("EHLO client.example");
        let mail = d.send("MAIL FROM:<a@remote.example>");
        if listener == ListenerName::Smtp {
            assert!(mail[0].is_positive());
            for rcpt in [
                "<victim@remote.example>",
                "<user%remote.example@hosted.example>",
                "<\"user@remote.example\"@hosted.example>",
                "<@hosted.example:user@remote.example>",
                "<user@remote.example@hosted.example>",
                "<remote.example!user>",
                "<user@remote.example.>",
                "<user@[192.0.2.1]>",
            ] {
                let r = d.send(&format!("RCPT TO:{rcpt}"));
                assert!(
                    r[0].code == 550 && r[0].enhanced == Some("5.7.1"),
                    "{rcpt}: {}",
                    r[0]
                );
            }
        } else {
            assert_eq!(mail[0].code, 530, "submission without AUTH: {}", mail[0]);
        }
    }
}

#[test]
fn auth_is_only_offered_and_accepted_over_tls() {
    let mut d = Driver::new(ListenerName::Submission, "198.51.100.7", false);
    let ehlo = d.send("EHLO laptop")[0].to_string();
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    d.play(
        "c: AUTH PLAIN AGFsaWNlQGhvc3RlZC5leGFtcGxlAHNlY3JldA==
         s: 538 5.7.11
         c: STARTTLS
         s: 220 2.0.0",
    );
    // After TLS the client must greet again; everything before is forgotten.
    let ehlo = d.send("EHLO laptop")[0].to_string();
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    d.play(
        "c: AUTH PLAIN AGFsaWNlQGhvc3RlZC5leGFtcGxlAHdyb25n
         s: 535 5.7.8
         c: AUTH PLAIN AGFsaWNlQGhvc3RlZC5leGFtcGxlAHNlY3JldA==
         s: 235 2.7.0
         c: MAIL FROM:<bob@hosted.example>
         s: 553 5.7.1
         c: MAIL FROM:<alice@hosted.example>
         s: 250 2.1.0
         c: RCPT TO:<anyone@remote.example>
         s: 250 2.1.5",
    );
}

#[test]
fn auth_login_and_suspended_accounts() {
    let mut d = Driver::new(ListenerName::Submissions, "198.51.100.8", true);
    d.play(
        "c: EHLO laptop
         s: 250-mx.test
         c: AUTH LOGIN
         s: 334 VXNlcm5hbWU6
         c: YWxpY2VAaG9zdGVkLmV4YW1wbGU=
         s: 334 UGFzc3dvcmQ6
         c: c2VjcmV0
         s: 235 2.7.0",
    );
    let mut d = Driver::new(ListenerName::Submissions, "198.51.100.8", true);
    // carol is suspended: the right password gets 525, a wrong one 535.
    d.play(
        "c: EHLO laptop
         s: 250
         c: AUTH PLAIN AGNhcm9sQGhvc3RlZC5leGFtcGxlAHNlY3JldA==
         s: 525 5.7.13
         c: AUTH PLAIN *
         s: 501",
    );
}

#[test]
fn commands_out_of_sequence_get_503() {
    let mut d = Driver::new(ListenerName::Smtp, "198.51.100.7", false);
    d.play(
        "c: MAIL FROM:<a@remote.example>
         s: 503 5.5.1
         c: HELO client.example
         s: 250 mx.test
         c: RCPT TO:<alice@hosted.example>
         s: 503 5.5.1
         c: DATA
         s: 503 5.5.1
         c: MAIL FROM:<a@remote.example>
         s: 250
         c: MAIL FROM:<a@remote.example>
         s: 503 5.5.1
         c: DATA
         s: 554 5.5.1
         c: RSET
         s: 250 2.0.0
         c: VRFY alice
         s: 252 2.5.0
         c: FOO
         s: 500 5.5.2
         c: NOOP
         s: 250 2.0.0",
    );
}

#[test]
fn size_and_recipient_limits() {
    let mut d = Driver::new(ListenerName::Smtp, "198.51.100.7", false);
    d.play(
        "c: EHLO c.example
         s: 250
         c: MAIL FROM:<a@remote.example> SIZE=999999999
         s: 552 5.3.4
         c: MAIL FROM:<a@remote.example> SIZE=100
         s: 250",
    );
    for i in 0..100 {
        assert!(d.send(&format!("RCPT TO:<alice+{i}@hosted.example>"))[0].is_positive());
    }
    d.play(
        "c: RCPT TO:<alice+100@hosted.example>
         s: 452 4.5.3",
    );
}

#[test]
fn bare_line_feeds_in_content_are_refused() {
    let mut d = Driver::new(ListenerName::Smtp, "198.51.100.7", false);
    d.play(
        "c: EHLO c.example
         s: 250
         c: MAIL FROM:<a@remote.example>
         s: 250
         c: RCPT TO:<alice@hosted.example>
         s: 250
         c: DATA
         s: 354
         d: x\\n.\\nMAIL FROM:<evil@x>\\r\\n.\\r\\n
         s: 554 5.6.0
         c: MAIL FROM:<a@remote.example>
         s: 250",
    );
    assert!(d.accepted.is_empty());
}

#[test]
fn a_block_found_at_connect_is_given_at_mail() {
    let block = Reply::new(550, "5.7.1", "Client address 192.0.2.66 is blocked");
    let mut d = Driver::with(ListenerName::Smtp, "192.0.2.66", false, Some(block));
    d.play(
        "c: EHLO c.example
         s: 250
         c: MAIL FROM:<a@remote.example>
         s: 550 5.7.1 Client address 192.0.2.66 is blocked
         c: QUIT
         s: 221",
    );
}

#[test]
fn trusted_networks_relay_only_when_the_relay_says_so() {
    // testutil's Relay trusts 10.0.0.0/8 but does not let it relay.
    let mut d = Driver::new(ListenerName::Smtp, "10.1.2.3", false);
    d.play(
        "c: EHLO app.internal
         s: 250
         c: MAIL FROM:<app@hosted.example>
         s: 250
         c: RCPT TO:<someone@remote.example>
         s: 550 5.7.1",
    );
}

#[test]
fn bdat_chunks_make_one_message() {
    let mut d = Driver::new(ListenerName::Smtp, "198.51.100.7", false);
    d.play(
        "c: EHLO c.example
         s: 250
         c: MAIL FROM:<a@remote.example>
         s: 250
         c: RCPT TO:<alice@hosted.example>
         s: 250",
    );
    assert!(d.send("BDAT 5").is_empty());
    d.session.bdat_data(b"a\r\n");
    d.session.bdat_data(b"b\r");
    assert!(d.session.bdat_done(false).unwrap().is_none());
    assert!(d.send("BDAT 1 LAST").is_empty());
    d.session.bdat_data(b"\n");
    let accepted = d.session.bdat_done(true).unwrap().expect("message");
    assert_eq!(accepted.content, b"a\r\nb\r\n");
    // BDAT without a transaction: the chunk is read, then refused.
    assert!(d.send("BDAT 3 LAST").is_empty());
    d.session.bdat_data(b"abc");
    assert_eq!(d.session.bdat_done(true).unwrap_err().code, 503);
}

proptest::proptest! {
    /// Whatever a client sends, the session answers with a reply and never
    /// panics; after any input, QUIT still closes cleanly.
    #[test]
    fn arbitrary_lines_never_panic(lines in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            proptest::sample::select(vec![
                b"EHLO x".to_vec(), b"MAIL FROM:<a@remote.example>".to_vec(),
                b"RCPT TO:<alice@hosted.example>".to_vec(), b"DATA".to_vec(), b"BDAT 3".to_vec(),
                b"AUTH PLAIN".to_vec(), b"AUTH LOGIN".to_vec(), b"STARTTLS".to_vec(), b"RSET".to_vec(),
            ]),
        ], 0..30)) {
        let mut d = Driver::new(ListenerName::Submission, "198.51.100.7", true);
        for mut line in lines {
            line.extend_from_slice(b"\r\n");
            let out = d.session.line(&line);
            if out.reply.is_none() && !matches!(out.effect, Effect::Verify(_) | Effect::ReceiveBdat { .. }) {
                proptest::prop_assert!(false, "no reply to {:?}", String::from_utf8_lossy(&line));
            }
            if let Effect::Close = out.effect {
                // Too many errors: the loop hangs up here.
                return Ok(());
            }
            if let Effect::Verify(_) = out.effect {
                let _ = d.session.auth_result(false);
            }
            if let Effect::ReceiveBdat { .. } | Effect::ReceiveData(_) = out.effect {
                // The loop would read content now; end it as a client would.
                let _ = d.session.data_end(Ok(Vec::new()));
            }
        }
        // A pending SASL exchange takes the next line as its response:
        // cancel it first (RFC 4954 §4), as a client would.
        let _ = d.session.line(b"*\r\n");
        let quit = d.session.line(b"QUIT\r\n");
        proptest::prop_assert!(quit.reply.is_some_and(|r| r.code == 221 || r.code == 421), "QUIT after arbitrary input");
    }
}
