//! The notice is checked by taking it apart again: a small, strict MIME
//! reader below splits it into header fields and parts, so each test says
//! what a receiving mail client would see.

use super::text::MAX_DIAGNOSTIC;
use super::*;

const ORIGINAL: &[u8] = b"Received: from laptop (client.example [192.0.2.10])\r\n\
\tby mx.relay.example (mailrelay) with ESMTPSA\r\n\
From: Alice <alice@example.com>\r\n\
To: Bob <bob@example.net>, Carol <carol@example.org>\r\n\
Subject: Quarterly report\r\n\
Message-ID: <q3@example.com>\r\n\
\r\n\
Hello Bob and Carol,\r\n\
--\r\n\
this body must not be returned.\r\n";

fn envelope(sender: &str) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: vec!["bob@example.net".into(), "carol@example.org".into()],
        received_at: 1_700_000_000,
        client_ip: "192.0.2.10".parse().unwrap(),
        helo: "laptop".into(),
        auth: Some("alice".into()),
        tls: true,
        size: ORIGINAL.len() as u64,
        smtputf8: false,
        body_8bit: false,
        handed_off: None,
    }
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn bob_failed() -> RecipientReport {
    RecipientReport {
        recipient: "bob@example.net".into(),
        action: Action::Failed,
        status: "5.1.1".into(),
        remote_mta: Some("mx1.example.net".into()),
        diagnostic: Some("550 5.1.1 <bob@example.net>: Recipient address rejected".into()),
        last_attempt: Some(at(65)),
        will_retry_until: None,
    }
}

fn carol_delayed() -> RecipientReport {
    RecipientReport {
        recipient: "carol@example.org".into(),
        action: Action::Delayed,
        status: "4.4.1".into(),
        remote_mta: None,
        diagnostic: Some("connect to mx.example.org[198.51.100.7]:25: Connection refused".into()),
        last_attempt: Some(at(4 * 3600)),
        will_retry_until: Some(at(5 * 86_400)),
    }
}

fn input<'a>(env: &'a Envelope, message: &'a [u8], rcpts: &'a [RecipientReport]) -> DsnInput<'a> {
    DsnInput {
        envelope: env,
        message,
        reporting_mta: "mx.relay.example",
        queue_id: QueueId::from_parts(1_700_000_000_000, 7, 12_345),
        arrival_date: at(0),
        now: at(4 * 3600 + 5),
        recipients: rcpts,
    }
}

fn dsn(rcpts: &[RecipientReport], message: &[u8]) -> Dsn {
    let env = envelope("alice@example.com");
    build(&input(&env, message, rcpts)).expect("a notice")
}

/// A header section, unfolded: (lower-case name, value).
fn fields(section: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in section.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            out.last_mut()
                .expect("continuation after a field")
                .1
                .push_str(line);
        } else {
            let (name, value) = line.split_once(':').expect("a field has a colon");
            out.push((name.to_ascii_lowercase(), value.trim_start().to_string()));
        }
    }
    out
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Split at the first empty line: (header section, body).
fn split_head(entity: &str) -> (&str, &str) {
    match entity.split_once("\r\n\r\n") {
        Some((head, body)) => (head, body),
        None => (entity.strip_suffix("\r\n").unwrap_or(entity), ""),
    }
}

struct Parsed {
    headers: Vec<(String, String)>,
    /// (part header fields, part body) in order.
    parts: Vec<(Vec<(String, String)>, String)>,
}

/// RFC 2046 §5.1.1: a delimiter is CRLF "--" boundary at a line start; the
/// CRLF belongs to the delimiter, not to the part before it.
fn parse(message: &[u8]) -> Parsed {
    let text = std::str::from_utf8(message).expect("UTF-8 notice");
    let (head, body) = split_head(text);
    let headers = fields(head);
    let ctype = field(&headers, "content-type").expect("a Content-Type");
    let boundary = ctype
        .split("boundary=\"")
        .nth(1)
        .and_then(|b| b.split('"').next())
        .expect("a quoted boundary");
    let (open, close) = (format!("--{boundary}"), format!("--{boundary}--"));
    let mut parts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    let mut closed = false;
    for line in body.split("\r\n") {
        if line == open || line == close {
            if let Some(lines) = current.take() {
                let entity = lines.join("\r\n");
                let (h, b) = split_head(&entity);
                parts.push((fields(h), b.to_string()));
            }
            closed = line == close;
            if !closed {
                current = Some(Vec::new());
            }
        } else if let Some(lines) = current.as_mut() {
            lines.push(line);
        } else {
            assert!(
                !closed || line.is_empty(),
                "text after the close delimiter: {line:?}"
            );
        }
    }
    assert!(closed, "no close delimiter");
    Parsed { headers, parts }
}

/// Wrapped text as one line: every run of whitespace one space.
fn flow(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn assert_lines_are_crlf_and_short(message: &[u8]) {
    assert!(message.ends_with(b"\r\n"));
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(
                message.get(i.wrapping_sub(1)),
                Some(&b'\r'),
                "bare LF at {i}"
            );
        }
        if b == b'\r' {
            assert_eq!(message.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for line in message.split(|b| *b == b'\n') {
        assert!(
            line.len() <= 999,
            "line of {} octets (998 + CR allowed)",
            line.len()
        );
    }
}

#[test]
fn a_bounce_is_a_multipart_report_with_three_parts() {
    let d = dsn(&[bob_failed()], ORIGINAL);
    assert_eq!(d.sender, "");
    assert_eq!(d.recipient, "alice@example.com");
    assert!(!d.needs_smtputf8() && !d.is_8bit());
    assert_lines_are_crlf_and_short(&d.message);
    let p = parse(&d.message);
    assert_eq!(
        field(&p.headers, "from"),
        Some("Mail Delivery System <MAILER-DAEMON@mx.relay.example>")
    );
    assert_eq!(field(&p.headers, "to"), Some("<alice@example.com>"));
    assert_eq!(
        field(&p.headers, "subject"),
        Some("Undelivered Mail Returned to Sender")
    );
    assert_eq!(field(&p.headers, "auto-submitted"), Some("auto-replied"));
    assert_eq!(field(&p.headers, "mime-version"), Some("1.0"));
    assert!(
        field(&p.headers, "message-id")
            .unwrap()
            .ends_with(".dsn@mx.relay.example>")
    );
    let ctype = field(&p.headers, "content-type").unwrap();
    assert!(
        ctype.starts_with("multipart/report; report-type=delivery-status;"),
        "{ctype}"
    );
    let types: Vec<&str> = p
        .parts
        .iter()
        .map(|(h, _)| field(h, "content-type").unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "text/plain; charset=us-ascii",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    let text = flow(&p.parts[0].1);
    assert!(text.contains("<bob@example.net>: failed (5.1.1)"), "{text}");
    assert!(
        text.contains(
            "mx1.example.net said: 550 5.1.1 <bob@example.net>: Recipient address rejected"
        ),
        "{text}"
    );
}

#[test]
fn the_report_has_per_message_then_per_recipient_blocks() {
    let d = dsn(&[bob_failed(), carol_delayed()], ORIGINAL);
    let p = parse(&d.message);
    let report = &p.parts[1].1;
    let blocks: Vec<Vec<(String, String)>> = report.split("\r\n\r\n").map(fields).collect();
    assert_eq!(blocks.len(), 3, "{report}");
    assert_eq!(
        field(&blocks[0], "reporting-mta"),
        Some("dns; mx.relay.example")
    );
    assert_eq!(
        field(&blocks[0], "arrival-date"),
        Some("Tue, 14 Nov 2023 22:13:20 +0000")
    );
    assert!(field(&blocks[0], "x-queue-id").is_some());
    let bob = &blocks[1];
    assert_eq!(
        field(bob, "final-recipient"),
        Some("rfc822; bob@example.net")
    );
    assert_eq!(field(bob, "action"), Some("failed"));
    assert_eq!(field(bob, "status"), Some("5.1.1"));
    assert_eq!(field(bob, "remote-mta"), Some("dns; mx1.example.net"));
    assert_eq!(
        field(bob, "diagnostic-code"),
        Some("smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected")
    );
    assert_eq!(
        field(bob, "last-attempt-date"),
        Some("Tue, 14 Nov 2023 22:14:25 +0000")
    );
    assert_eq!(field(bob, "will-retry-until"), None);
    let carol = &blocks[2];
    assert_eq!(field(carol, "action"), Some("delayed"));
    assert_eq!(field(carol, "status"), Some("4.4.1"));
    assert_eq!(field(carol, "remote-mta"), None);
    let diag = field(carol, "diagnostic-code").unwrap();
    assert!(
        diag.starts_with("X-mailrelay; connect to"),
        "not an SMTP reply: {diag}"
    );
    assert_eq!(
        field(carol, "will-retry-until"),
        Some("Sun, 19 Nov 2023 22:13:20 +0000")
    );
}

#[test]
fn the_headers_part_stops_at_the_header_body_separator() {
    let d = dsn(&[bob_failed()], ORIGINAL);
    let p = parse(&d.message);
    let (h, body) = &p.parts[2];
    assert_eq!(
        field(h, "content-description"),
        Some("Undelivered Message Headers")
    );
    let end = ORIGINAL.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    assert_eq!(body.as_bytes(), &ORIGINAL[..end]);
    assert!(!String::from_utf8_lossy(&d.message).contains("must not be returned"));
}

#[test]
fn a_null_sender_is_never_bounced_to() {
    for null in ["", "<>", "  "] {
        let env = envelope(null);
        assert_eq!(
            build(&input(&env, ORIGINAL, &[bob_failed()])),
            None,
            "{null:?}"
        );
    }
    let env = envelope("alice@example.com");
    assert_eq!(
        build(&input(&env, ORIGINAL, &[])),
        None,
        "nothing to report"
    );
    let env = envelope("alice@example.com\r\nBcc: x@y");
    assert_eq!(
        build(&input(&env, ORIGINAL, &[bob_failed()])),
        None,
        "header injection"
    );
}

#[test]
fn boundary_like_lines_in_the_original_do_not_break_the_structure() {
    let mut original =
        b"Subject: tricky\r\nX-Note: --=_mailrelay-dsn-0000000000000000-0\r\n\r\n".to_vec();
    original
        .extend_from_slice(b"--\r\n--=_mailrelay-dsn-0\r\n--=_mailrelay-dsn-0--\r\n\r\n--x--\r\n");
    let d = dsn(&[bob_failed()], &original);
    let p = parse(&d.message);
    assert_eq!(p.parts.len(), 3);
    assert_eq!(
        p.parts[2].1,
        "Subject: tricky\r\nX-Note: --=_mailrelay-dsn-0000000000000000-0\r\n"
    );
    // The boundary is chosen to miss every part, even one that holds the
    // first candidate verbatim.
    let first = choose_boundary(7, &[b""]);
    let clash = format!("x\r\n--{first}\r\n");
    let second = choose_boundary(7, &[b"", clash.as_bytes()]);
    assert_ne!(first, second);
    assert!(!clash.contains(&second));
}

#[test]
fn long_and_hostile_replies_are_folded_to_one_field() {
    let mut bad = bob_failed();
    let words = "word ".repeat(600);
    let blob = "x".repeat(1500);
    bad.diagnostic = Some(format!(
        "550-5.7.1 {blob}\r\nFinal-Recipient: rfc822; evil@x\n\u{7f}ü\r\n550 5.7.1 {words}"
    ));
    bad.status = "5.7.1\r\nX-Evil: 1".into();
    let d = dsn(&[bad], ORIGINAL);
    assert_lines_are_crlf_and_short(&d.message);
    let p = parse(&d.message);
    let report = &p.parts[1].1;
    let blocks: Vec<Vec<(String, String)>> = report.split("\r\n\r\n").map(fields).collect();
    assert_eq!(blocks.len(), 2);
    let f = &blocks[1];
    assert_eq!(f.iter().filter(|(n, _)| n == "final-recipient").count(), 1);
    assert_eq!(
        field(f, "status"),
        Some("5.0.0"),
        "a malformed code falls back"
    );
    let diag = field(f, "diagnostic-code").unwrap();
    assert!(diag.starts_with("smtp; 550-5.7.1 xxx"), "{diag}");
    assert!(
        diag.contains(" Final-Recipient: rfc822; evil@x ? 550 5.7.1 word word"),
        "{diag}"
    );
    assert!(diag.is_ascii() && diag.len() <= MAX_DIAGNOSTIC + 20);
    assert!(
        report.lines().any(|l| l.len() > 900),
        "an unbreakable word is split near the limit"
    );
}

#[test]
fn utf8_addresses_use_the_rfc6533_utf8_type_and_stay_7bit_in_the_report() {
    let env = Envelope {
        smtputf8: true,
        ..envelope("jörg@example.com")
    };
    let mut r = bob_failed();
    r.recipient = "zoë+tag@example.net".into();
    let d = build(&input(&env, ORIGINAL, &[r])).unwrap();
    assert!(d.needs_smtputf8() && d.is_8bit());
    assert_lines_are_crlf_and_short(&d.message);
    let p = parse(&d.message);
    assert_eq!(field(&p.headers, "to"), Some("<jörg@example.com>"));
    assert_eq!(field(&p.headers, "content-transfer-encoding"), Some("8bit"));
    assert_eq!(
        field(&p.parts[0].0, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    let report = &p.parts[1].1;
    assert!(report.is_ascii());
    assert!(
        report.contains("Final-Recipient: utf-8; zo\\x{EB}\\x{2B}tag@example.net\r\n"),
        "{report}"
    );
}

#[test]
fn a_delay_warning_says_so_and_names_the_retry_limit() {
    let d = dsn(&[carol_delayed()], ORIGINAL);
    let p = parse(&d.message);
    assert_eq!(
        field(&p.headers, "subject"),
        Some("Delayed Mail (still being retried)")
    );
    assert_eq!(
        field(&p.parts[2].0, "content-description"),
        Some("Delayed Message Headers")
    );
    let text = flow(&p.parts[0].1);
    assert!(text.contains("you do not need to send it again"), "{text}");
    assert!(
        text.contains("keep trying until Sun, 19 Nov 2023 22:13:20 +0000"),
        "{text}"
    );
}

#[test]
fn the_header_section_is_cleaned_and_bounded() {
    let long = format!("X-Long: {}\n", "a".repeat(2000));
    let original = format!("Subject: bare LF\nX-CR: a\rb\n{long}\nbody\n");
    let h = header_section(original.as_bytes());
    let text = String::from_utf8(h).unwrap();
    assert!(text.starts_with("Subject: bare LF\r\nX-CR: a b\r\nX-Long: aaa"));
    assert!(text.lines().all(|l| l.len() <= MAX_LINE));
    assert!(!text.contains("body"));
    assert_eq!(header_section(b"\r\nbody only\r\n"), b"");
    let huge = "X-H: y\r\n".repeat(20_000);
    assert!(header_section(huge.as_bytes()).len() <= MAX_HEADER_SECTION);
}

/// The whole notice for fixed inputs, against `testdata/dsn_golden.eml`
/// (stored with LF endings so no Git setting can change it; CRLF is
/// checked separately). `UPDATE_GOLDEN=1` rewrites the file.
#[test]
fn golden_notice_for_a_bounce_and_a_delay() {
    let d = dsn(&[bob_failed(), carol_delayed()], ORIGINAL);
    assert_lines_are_crlf_and_short(&d.message);
    let actual = String::from_utf8(d.message).unwrap().replace("\r\n", "\n");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/queue/testdata/dsn_golden.eml"
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        actual, expected,
        "the notice changed; rerun with UPDATE_GOLDEN=1 if intended"
    );
}
