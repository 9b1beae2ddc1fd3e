//! The entry points of mailrelay's fuzz targets, shared by the libFuzzer
//! binaries (`fuzz_targets/`) and by the corpus replay test
//! (`relay/tests/fuzz_corpus.rs`, which includes this file), so CI runs
//! every input in `corpus/` on stable Rust.
//!
//! Each function takes arbitrary bytes, drives one parser through its
//! public API and panics only when an invariant breaks: a panic here is a
//! bug in the code under test (or in the invariant), never a rejected input.

// A failed invariant is reported by panicking: that is what a fuzz target does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use mailrelay::config::runtime::Runtime;
use mailrelay::policy::limits::Limiter;
use mailrelay::server::proxy::{self, ProxyParse};
use mailrelay::smtp::ConnInfo;
use mailrelay::smtp::data::{BdatCollector, DataReader};
use mailrelay::smtp::reply::Reply;
use mailrelay::smtp::session::{Effect, Session};
use mailrelay::spool::check_segment;
use mailrelay_crds::compile;
use mailrelay_crds::config::RelayConfig;
use mailrelay_crds::manifests::{Manifests, load_text};
use mailrelay_crds::relay::ListenerName;

/// One fuzz target's entry: arbitrary bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory.
pub const TARGETS: [(&str, Target); 5] = [
    ("smtp_session", smtp_session),
    ("data_reader", data_reader),
    ("proxy_header", proxy_header),
    ("spool_record", spool_record),
    ("compile", compile_manifests),
];

/// The relay the session target talks to: a hosted domain, submission
/// accounts, trusted networks and a Blocklist, so policy paths are reachable.
const MANIFESTS: &str = r#"
apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata: {name: fuzz}
spec:
  hostname: mx.fuzz.test
  listeners: [{name: smtp}, {name: submission}, {name: submissions}]
  tls: {secretName: tls}
  trustedNetworks: [10.0.0.0/8]
  limits: {maxMessageSize: 4Ki, maxRecipients: 100}
---
apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata: {name: hosted}
spec:
  domain: hosted.example
  inbound: {localParts: [alice, postmaster]}
  delivery: {lmtp: {host: 127.0.0.1, port: 24}}
  submission:
    accounts: {name: accounts, key: passwd}
    suspended: [carol@hosted.example]
---
apiVersion: mailrelay.io/v1alpha1
kind: Blocklist
metadata: {name: block}
spec:
  ips: [{value: 192.0.2.0/24}]
  domains: [{value: "*.spam.example"}]
  senders: [{value: bad@remote.example}]
"#;

/// The configs of the Relays that compile, and every problem found.
fn compile_text(text: &str) -> (Vec<RelayConfig>, Vec<String>) {
    let mut m = Manifests::default();
    let mut errors = Vec::new();
    load_text(Path::new("fuzz.yaml"), text, &mut m, &mut errors);
    let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let domains = m.domain_objects();
    let blocklists = m.blocklist_objects();
    let mut configs = Vec::new();
    for relay in &m.relays {
        match compile(&relay.object, &domains, &blocklists) {
            Ok(compiled) => {
                problems.extend(compiled.problems.iter().map(|p| format!("{p:?}")));
                configs.push(compiled.config);
            }
            Err(refused) => problems.extend(refused.iter().map(|p| format!("{p:?}"))),
        }
    }
    (configs, problems)
}

fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    Arc::clone(RUNTIME.get_or_init(|| {
        let (mut configs, problems) = compile_text(MANIFESTS);
        assert!(problems.is_empty(), "the fuzz relay: {problems:?}");
        let config = configs.pop().expect("the fuzz relay compiles");
        Arc::new(Runtime::build(config, 0).0)
    }))
}

/// The reply to the first command of a transaction on a full spool.
fn is_mail(line: &[u8]) -> bool {
    line.get(..5)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"MAIL "))
}

/// Lines end with CRLF; content never carries a bare CR or LF.
fn assert_crlf_only(content: &[u8], what: &str) {
    for (i, b) in content.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && content[i - 1] == b'\r', "{what}: bare LF at {i}"),
            b'\r' => assert!(content.get(i + 1) == Some(&b'\n'), "{what}: bare CR at {i}"),
            _ => {}
        }
    }
}

fn assert_reply(reply: &Reply, after: &[u8]) {
    assert!(
        (200..600).contains(&reply.code),
        "reply {reply} to {:?}",
        String::from_utf8_lossy(after)
    );
    if reply.code >= 400 {
        assert!(
            reply.enhanced.is_some(),
            "a refusal without an enhanced code: {reply}"
        );
    }
}

/// The SMTP session (command parser, state machine, policy, AUTH, DATA
/// and BDAT hand-off) driven as the connection loop drives it. The first
/// byte picks the listener, TLS, the client and whether the spool is
/// full; the rest is what the client sends. Every command gets exactly
/// one reply, and QUIT still ends a session that was not closed.
pub fn smtp_session(data: &[u8]) {
    let Some((&setup, mut input)) = data.split_first() else {
        return;
    };
    let listener = match setup % 3 {
        0 => ListenerName::Smtp,
        1 => ListenerName::Submission,
        _ => ListenerName::Submissions,
    };
    let client_ip: IpAddr = match (setup >> 4) & 3 {
        0 => [198, 51, 100, 7].into(),
        1 => [10, 0, 0, 1].into(),
        2 => [192, 0, 2, 9].into(),
        _ => "2001:db8::25".parse().unwrap(),
    };
    let conn = ConnInfo {
        listener,
        client_ip,
        client_name: None,
        tls: setup & 4 != 0 || listener == ListenerName::Submissions,
        tls_info: None,
        connect_block: None,
    };
    let storage_full = setup & 8 != 0;
    let mut session = Session::new(runtime(), Limiter::system(), conn, setup & 64 != 0);
    assert_reply(&session.greeting(), b"");
    while let Some(end) = memchr(b'\n', input) {
        let line = &input[..=end];
        input = &input[end + 1..];
        let max = if session.in_auth() { 12288 } else { 512 };
        let outcome = if line.len() > max {
            session.line_too_long()
        } else {
            if is_mail(line) {
                session.set_storage_full(storage_full);
            }
            session.line(line)
        };
        let reply = match outcome.effect {
            Effect::None => outcome.reply,
            Effect::Close => {
                let reply = outcome.reply.expect("a reply before closing");
                assert_reply(&reply, line);
                return;
            }
            Effect::StartTls => {
                session.tls_started();
                outcome.reply
            }
            Effect::Verify(credentials) => {
                assert!(outcome.reply.is_none(), "a reply before the password check");
                let ok = credentials.password == "secret";
                Some(session.auth_result(ok))
            }
            Effect::ReceiveData(mut reader) => {
                assert_eq!(outcome.reply.as_ref().map(|r| r.code), Some(354));
                let Some(used) = reader.feed(input) else {
                    return; // The client went away inside the message.
                };
                input = &input[used..];
                Some(match session.data_end(reader.finish()) {
                    Ok(accepted) => {
                        assert_crlf_only(&accepted.content, "accepted DATA");
                        assert!(!accepted.transaction.recipients.is_empty());
                        Reply::new(250, "2.0.0", "Ok: queued")
                    }
                    Err(reply) => reply,
                })
            }
            Effect::ReceiveBdat { size, last } => {
                assert!(outcome.reply.is_none(), "BDAT answers after its chunk");
                let Some(chunk) = input.get(..size) else {
                    return; // The client went away inside the chunk.
                };
                session.bdat_data(chunk);
                input = &input[size..];
                Some(match session.bdat_done(last) {
                    Ok(None) => Reply::new(250, "2.0.0", "chunk received"),
                    Ok(Some(accepted)) => {
                        assert_crlf_only(&accepted.content, "accepted BDAT");
                        Reply::new(250, "2.0.0", "Ok: queued")
                    }
                    Err(reply) => reply,
                })
            }
        };
        let reply =
            reply.unwrap_or_else(|| panic!("no reply to {:?}", String::from_utf8_lossy(line)));
        assert_reply(&reply, line);
    }
    // A pending SASL exchange takes the next line as its answer: cancel it
    // (RFC 4954 §4), then QUIT must end the session.
    if session.in_auth() {
        let _ = session.line(b"*\r\n");
    }
    let quit = session.line(b"QUIT\r\n");
    assert!(
        matches!(quit.effect, Effect::Close)
            && quit
                .reply
                .as_ref()
                .is_some_and(|r| r.code == 221 || r.code == 421),
        "QUIT after the input: {:?}",
        quit.reply
    );
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

/// `stuff(body) + ".\r\n"`: what a client sends for `body` (RFC 5321 §4.5.2).
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// DATA and BDAT content readers. The first byte is the chunk size the
/// input arrives in, the second the size limit. However the input is cut
/// into reads, the reader ends data at the same place with the same
/// result; an accepted body has only CRLF line ends and reads back
/// unchanged when dot-stuffed again; BDAT applies the same line rules.
pub fn data_reader(data: &[u8]) {
    let [step, limit, input @ ..] = data else {
        return;
    };
    let step = usize::from(*step).max(1);
    let max = if *limit == 255 {
        1 << 20
    } else {
        usize::from(*limit) * 16
    };
    let read = |chunk: usize| {
        let mut reader = DataReader::new(max);
        let mut offset = 0;
        for piece in input.chunks(chunk) {
            if let Some(used) = reader.feed(piece) {
                assert!(used <= piece.len());
                return (Some(offset + used), reader.finish());
            }
            offset += piece.len();
        }
        (None, reader.finish())
    };
    let (whole_end, whole) = read(input.len().max(1));
    let (split_end, split) = read(step);
    assert_eq!(
        whole_end, split_end,
        "end of data depends on how it was read"
    );
    assert_eq!(whole, split, "the result depends on how it was read");
    if let (Some(end), Ok(body)) = (whole_end, &whole) {
        assert!(input[..end].ends_with(b"\r\n.\r\n") || input[..end] == *b".\r\n");
        assert_crlf_only(body, "DATA body");
        assert!(body.len() <= max);
        let again = dot_stuff(body);
        let mut reader = DataReader::new(max);
        assert_eq!(reader.feed(&again), Some(again.len()), "restuffed body");
        assert_eq!(reader.finish().as_ref(), Ok(body));
    }

    let mut bdat = BdatCollector::new(max);
    for piece in input.chunks(step) {
        bdat.push(piece);
    }
    assert_eq!(bdat.size(), input.len());
    if let Ok(body) = bdat.finish() {
        assert_crlf_only(&body, "BDAT body");
        assert!(body.is_empty() || body.ends_with(b"\r\n"));
    }
}

/// The PROXY protocol v1/v2 header parser, over a buffer that grows as
/// bytes arrive: a complete header is complete at exactly one length,
/// every shorter prefix of it is incomplete, and it never claims more
/// bytes than it was given.
pub fn proxy_header(data: &[u8]) {
    let result = proxy::parse(data);
    match result {
        Ok(ProxyParse::Complete { consumed, .. }) => {
            assert!(consumed <= data.len() && consumed > 0);
            assert_eq!(proxy::parse(&data[..consumed]), result);
            for cut in 0..consumed {
                assert_eq!(
                    proxy::parse(&data[..cut]),
                    Ok(ProxyParse::Incomplete),
                    "prefix of {cut} of a {consumed}-byte header"
                );
            }
        }
        Ok(ProxyParse::Incomplete) => {
            assert!(
                data.len() <= 16 + 216 + proxy::V2_MAX_TLVS,
                "unbounded header"
            );
            for cut in 0..data.len() {
                assert_eq!(proxy::parse(&data[..cut]), Ok(ProxyParse::Incomplete));
            }
        }
        Err(_) => {}
    }
}

/// The salt the framed records of `spool_record` are written with.
const SALT: u64 = 0x5eed;

/// A segment as the writer lays it out: header, then each record framed
/// `[magic][kind][len u32][crc32][payload]` with a valid CRC (see
/// `relay/src/spool/record.rs`).
fn segment_of(records: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = b"MRSPOOL1".to_vec();
    out.extend_from_slice(&SALT.to_le_bytes());
    for (kind, payload) in records {
        let len = u32::try_from(payload.len()).unwrap();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&SALT.to_le_bytes());
        crc.update(&[*kind]);
        crc.update(&len.to_le_bytes());
        crc.update(payload);
        out.extend_from_slice(&0xC3D2_E1F0u32.to_le_bytes());
        out.push(*kind);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

/// The spool's recovery decoder (segment scan, frame check, record
/// payloads, index replay). An even first byte: the rest is a segment
/// file as found on disk. An odd one: the rest is records `[kind u8]
/// [len u16 LE][payload]`, framed with valid CRCs, so the payload parser
/// and the index see arbitrary payloads; every one of those frames must
/// be found, none skipped as damage.
pub fn spool_record(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let check = check_segment(rest);
        if !check.header {
            assert_eq!(check, Default::default());
        }
        assert!(check.torn_bytes <= rest.len() as u64);
        assert!(check.messages <= check.records);
        return;
    }
    let mut records = Vec::new();
    let mut input = rest;
    while let [kind, lo, hi, tail @ ..] = input {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        records.push((*kind, &tail[..len]));
        input = &tail[len..];
    }
    let segment = segment_of(&records);
    let check = check_segment(&segment);
    assert!(check.header);
    assert_eq!(check.records + check.unreadable, records.len(), "{check:?}");
    assert_eq!((check.damaged, check.torn_bytes), (0, 0), "{check:?}");
    assert!(check.messages <= check.records);
}

/// `compile()` on manifests as `mailrelay run --manifests` reads them:
/// any YAML compiles or is refused without a panic, a compiled config
/// survives the JSON the operator stores it as, and the relay can build
/// its runtime from it.
pub fn compile_manifests(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for config in compile_text(&text).0 {
        let json = config.to_json().expect("a compiled config serialises");
        let back = RelayConfig::from_json(&json).expect("and loads back");
        assert_eq!(back, config, "the JSON round trip changed the config");
        let _ = Runtime::build(config, 0);
    }
}
