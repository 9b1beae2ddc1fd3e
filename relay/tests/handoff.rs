//! Scale-in without loss: three relays of one Relay on loopback, sharing a
//! hand-off secret. Mail queued on one of them (its destination down) is
//! handed to the other two when it gets SIGTERM, keeps its retry state and
//! history there, and is delivered once the destination comes back.
//!
//! Hosts: 127.0.0.70 to .72 (unique in the suite, see common/sink.rs).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::dns::Dnsmasq;
use common::manifests::{REMOTE_SENDER, Setup};
use common::process::free_ports;
use common::sink::{Answer, Sink, saved};
use common::smtp::Smtp;
use common::spool::states;
use common::{LOCALHOST, RelayProcess, http_status, wait_for};
use mailrelay::spool::{Queued, RecipientState};

const WITHIN: Duration = Duration::from_secs(90);
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 70);
const DOMAIN: &str = "scalein.test";
/// For the test without peers, which runs at the same time.
const MX_ALONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 71);
const DOMAIN_ALONE: &str = "alone.test";
/// Mail of the drain-request test (never delivered: no sink there).
const DOMAIN_REQUEST: &str = "request.test";
const MX_REQUEST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 72);
const MESSAGES: usize = 30;
const SECRET: &str = "0123456789abcdef-test-handoff-secret";

fn setup() -> Setup {
    Setup::default()
        .relay_from_loopback()
        .relay_spec(
            "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
        )
        .dns_records(&format!(
            "mx-host={DOMAIN},mx.{DOMAIN},10\nhost-record=mx.{DOMAIN},{MX}\n\
             mx-host={DOMAIN_ALONE},mx.{DOMAIN_ALONE},10\nhost-record=mx.{DOMAIN_ALONE},{MX_ALONE}\n\
             mx-host={DOMAIN_REQUEST},mx.{DOMAIN_REQUEST},10\nhost-record=mx.{DOMAIN_REQUEST},{MX_REQUEST}"
        ))
}

/// What the relays of one test share: a directory, dnsmasq and the
/// hand-off secret. dnsmasq stops before the directory goes.
struct Site {
    dns: Dnsmasq,
    secret: std::path::PathBuf,
    root: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let root = tempfile::Builder::new()
            .prefix("mailrelay-handoff-")
            .tempdir()
            .unwrap();
        let dns = Dnsmasq::start(root.path(), &setup().dns_records);
        let secret = root.path().join("handoff-secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        Site { dns, secret, root }
    }
}

struct Pod {
    relay: RelayProcess,
    dir: std::path::PathBuf,
}

impl Pod {
    fn queued(&self) -> Vec<Queued> {
        states(&self.dir.join("spool"))
    }
}

/// Relay `name` on `root/name`, handing off on `me` to `peers`.
fn start(
    root: &Path,
    name: &str,
    dns: SocketAddr,
    me: SocketAddr,
    peers: &[SocketAddr],
    secret: &Path,
    more: &[&str],
) -> Pod {
    let dir = root.join(name);
    setup().write(&dir.join("manifests"));
    let mut extra = vec![
        "--handoff-listen".to_string(),
        me.to_string(),
        "--handoff-secret-file".into(),
        secret.display().to_string(),
        // Test-sized drain: the phases, not their lengths, are under test.
        "--drain-accept".into(),
        "0s".into(),
        "--drain-sessions".into(),
        "10s".into(),
        "--drain-deliver".into(),
        "2s".into(),
    ];
    for p in peers {
        extra.extend(["--peer".to_string(), p.to_string()]);
    }
    extra.extend(more.iter().map(|s| s.to_string()));
    let relay = RelayProcess::start_with(&dir, 0, LOCALHOST, dns, &extra);
    Pod { relay, dir }
}

/// Each message names itself in its subject: `scale-in N`.
fn marker(n: usize) -> String {
    format!("scale-in {n}")
}

#[test]
fn sigterm_hands_the_queue_to_peers_and_nothing_is_lost() {
    let site = Site::new();
    let (root, dns, secret) = (&site.root, &site.dns, &site.secret);
    let ports = free_ports(&[LOCALHOST, LOCALHOST, LOCALHOST]);
    let at: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::new(LOCALHOST, *p))
        .collect();
    let mut pods = ["a", "b", "c"].into_iter().enumerate().map(|(i, name)| {
        let peers: Vec<SocketAddr> = (0..3).filter(|&j| j != i).map(|j| at[j]).collect();
        start(root.path(), name, dns.addr, at[i], &peers, secret, &[])
    });
    let (mut a, b, c) = (
        pods.next().unwrap(),
        pods.next().unwrap(),
        pods.next().unwrap(),
    );

    // Mail for a destination that is down: it stays queued on a.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for n in 0..MESSAGES {
        let mut smtp = Smtp::hello(LOCALHOST, a.relay.addrs.smtp);
        let sent = smtp.send_mail(
            REMOTE_SENDER,
            &[
                &format!("user{}@{DOMAIN}", n % 3),
                &format!("other@{DOMAIN}"),
            ],
            &format!("Subject: {}\r\n\r\nbody {n}\r\n", marker(n)),
        );
        smtp.quit();
        let id = sent
            .queue_id()
            .unwrap_or_else(|| panic!("not queued: {sent:?}"));
        acked.insert(id, marker(n));
    }
    // Every message has been tried and deferred: it has retry state to keep.
    wait_for(
        WITHIN,
        || {
            let q = a.queued();
            let tried = q.len() == MESSAGES
                && q.iter().all(|m| {
                    m.recipients.iter().all(
                    |r| matches!(r, RecipientState::Deferred { attempts, .. } if *attempts >= 1),
                )
                });
            tried.then_some(())
        },
        || format!("a's queue: {:#?}\n{}", a.queued(), a.relay.log_text()),
    );

    let t = std::time::Instant::now();
    // A stranger without the secret cannot leave mail on a peer.
    assert_forged_handoff_is_refused(at[1]);

    let status = a.relay.terminate(WITHIN).expect("a exits");
    eprintln!("a drained and exited after {:?}", t.elapsed());
    assert!(
        status.success(),
        "a exited with {status}:\n{}",
        a.relay.log_text()
    );
    assert!(
        a.queued().is_empty(),
        "a's spool after the drain: {:#?}\n{}",
        a.queued(),
        a.relay.log_text()
    );

    // Every acknowledged message is on b or c, with its history.
    let moved: Vec<Queued> = b.queued().into_iter().chain(c.queued()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for m in &moved {
        let from = m
            .envelope
            .handed_off
            .as_ref()
            .and_then(|h| h.lineage.last())
            .unwrap_or_else(|| panic!("no lineage on {m:#?}"))
            .clone();
        *seen.entry(from).or_default() += 1;
        for r in &m.recipients {
            assert!(
                matches!(r, RecipientState::Deferred { attempts, .. } if *attempts >= 1),
                "retry state lost in the hand-off: {m:#?}"
            );
        }
    }
    let lost: Vec<&String> = acked.keys().filter(|id| !seen.contains_key(*id)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "hand-off: {} acknowledged on a, {} on b, {} on c, {} lost, {duplicates} duplicates",
        acked.len(),
        b.queued().len(),
        c.queued().len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost in the hand-off: {lost:?}\n{}",
        a.relay.log_text()
    );
    assert_eq!(duplicates, 0, "duplicates: {seen:?}");

    // The destination comes back: b and c deliver what they took.
    let sink = Sink::start(MX, &root.path().join("sink"), Answer::Accept);
    wait_for(
        WITHIN,
        || (b.queued().is_empty() && c.queued().is_empty()).then_some(()),
        || format!("b: {:#?}\nc: {:#?}", b.queued(), c.queued()),
    );
    eprintln!("b and c delivered everything after {:?}", t.elapsed());
    // Not `wait_until_idle`: b and c keep their connections to the sink
    // open for reuse. Every delivery is recorded, so every file is there.
    let delivered: Vec<String> = wait_for(
        WITHIN,
        || {
            let files = saved(&root.path().join("sink"));
            (files.len() >= MESSAGES).then_some(files)
        },
        || "the sink holds fewer files than messages delivered".into(),
    );
    drop(sink);
    let mut per_marker: BTreeMap<String, usize> = BTreeMap::new();
    for text in &delivered {
        if let Some(m) = acked.values().find(|m| {
            text.contains(&format!("Subject: {m}\r\n")) || text.contains(&format!("Subject: {m}\n"))
        }) {
            *per_marker.entry(m.clone()).or_default() += 1;
        }
    }
    let markers: BTreeSet<&String> = acked.values().collect();
    let missing: Vec<&&String> = markers
        .iter()
        .filter(|m| !per_marker.contains_key(**m))
        .collect();
    let delivered_twice: usize = per_marker.values().map(|n| n - 1).sum();
    eprintln!(
        "delivery: {} messages at the sink for {} acknowledged, {} missing, {delivered_twice} duplicates",
        delivered.len(),
        markers.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(delivered_twice, 0);
}

/// An XMESSAGE with a MAC made under another secret: refused with 535 and
/// nothing is queued.
fn assert_forged_handoff_is_refused(peer: SocketAddr) {
    let stream = TcpStream::connect(peer).unwrap();
    let mut smtp = Smtp::from_stream(stream, peer);
    let greeting = smtp.reply();
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let nonce = greeting
        .text()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let ehlo = smtp.command("EHLO stranger");
    assert!(ehlo.text().contains("XHANDOFF"), "{ehlo:?}");
    let transfer = mailrelay::lifecycle::handoff::wire::Transfer {
        id: "forged".into(),
        envelope: mailrelay::spool::Envelope {
            sender: "x@forged.test".into(),
            recipients: vec!["y@forged.test".into()],
            received_at: 0,
            client_ip: LOCALHOST,
            helo: "forged".into(),
            auth: None,
            tls: false,
            size: 4,
            smtputf8: false,
            body_8bit: false,
            handed_off: None,
        },
        recipients: vec![RecipientState::Pending],
        held: false,
        warned: false,
    };
    let encoded = mailrelay::lifecycle::handoff::wire::encode_transfer(&transfer).unwrap();
    let wrong = mailrelay::lifecycle::handoff::wire::key(b"not the relay's secret at all");
    let mac = mailrelay::lifecycle::handoff::wire::mac(&wrong, &nonce, 0, &encoded, b"x\r\n\r\n");
    let mut line = mailrelay::lifecycle::handoff::wire::command(5, &encoded, &mac);
    line.push_str("\r\nx\r\n\r\n");
    smtp.send(line.as_bytes());
    let reply = smtp.reply();
    assert!(reply.is(535, "5.7.8"), "forged hand-off: {reply:?}");
    let _ = TcpStream::connect(peer).map(|mut s| s.write_all(b"QUIT\r\n"));
}

/// With no peer to take it, a draining relay keeps its queue in the spool
/// and says how much it left; the next relay on that spool resumes it.
#[test]
fn without_a_peer_the_queue_stays_in_the_spool() {
    let site = Site::new();
    let (root, dns, secret) = (&site.root, &site.dns, &site.secret);
    let ports = free_ports(&[LOCALHOST, LOCALHOST]);
    let me = SocketAddr::new(LOCALHOST, ports[0]);
    // A peer address where nothing listens.
    let nobody = SocketAddr::new(LOCALHOST, ports[1]);
    // Hand-off is retried until the deadline: keep it short here.
    let mut a = start(
        root.path(),
        "a",
        dns.addr,
        me,
        &[nobody],
        secret,
        &["--drain-deadline", "5s"],
    );
    let mut smtp = Smtp::hello(LOCALHOST, a.relay.addrs.smtp);
    let sent = smtp.send_mail(
        REMOTE_SENDER,
        &[&format!("x@{DOMAIN_ALONE}")],
        "Subject: kept\r\n\r\nkept\r\n",
    );
    smtp.quit();
    let id = sent.queue_id().expect("queued");
    let status = a.relay.terminate(WITHIN).expect("a exits");
    assert!(status.success(), "{}", a.relay.log_text());
    let log = a.relay.log_text();
    assert!(
        log.contains("messages left in the spool") && log.contains("left=1"),
        "the drain reports what it left:\n{log}"
    );
    let kept: Vec<String> = a.queued().iter().map(|q| q.id.to_string()).collect();
    assert_eq!(kept, vec![id.clone()], "{log}");

    // The relay comes back on the same spool and delivers it.
    let sink = Sink::start(MX_ALONE, &root.path().join("sink"), Answer::Accept);
    let b = start(
        root.path(),
        "a",
        dns.addr,
        me,
        &[nobody],
        secret,
        &["--drain-deadline", "5s"],
    );
    wait_for(
        WITHIN,
        || b.queued().is_empty().then_some(()),
        || format!("{:#?}\n{}", b.queued(), b.relay.log_text()),
    );
    let files = wait_for(
        WITHIN,
        || {
            let f = saved(&root.path().join("sink"));
            (!f.is_empty()).then_some(f)
        },
        || "nothing at the sink".into(),
    );
    assert_eq!(files.len(), 1);
    assert!(files[0].contains("Subject: kept"));
    drop(sink);
}

/// An annotation on the pod (the downward-API file) drains the relay
/// without stopping it: the queue goes to the peer, /readyz fails, and the
/// process stays until it is stopped.
#[test]
fn a_drain_request_hands_the_queue_off_and_the_relay_stays_up_not_ready() {
    let site = Site::new();
    let (root, dns, secret) = (&site.root, &site.dns, &site.secret);
    let annotations = root.path().join("annotations");
    std::fs::write(&annotations, "kubernetes.io/config.seen=\"now\"\n").unwrap();
    let ports = free_ports(&[LOCALHOST, LOCALHOST]);
    let (at_a, at_b) = (
        SocketAddr::new(LOCALHOST, ports[0]),
        SocketAddr::new(LOCALHOST, ports[1]),
    );
    let annotations_arg = annotations.display().to_string();
    let request = ["--drain-request-file", annotations_arg.as_str()];
    let mut a = start(root.path(), "a", dns.addr, at_a, &[at_b], secret, &request);
    let b = start(root.path(), "b", dns.addr, at_b, &[at_a], secret, &[]);
    let mut smtp = Smtp::hello(LOCALHOST, a.relay.addrs.smtp);
    let sent = smtp.send_mail(
        REMOTE_SENDER,
        &[&format!("x@{DOMAIN_REQUEST}")],
        "Subject: requested\r\n\r\nrequested\r\n",
    );
    smtp.quit();
    let id = sent.queue_id().expect("queued");

    std::fs::write(
        &annotations,
        "kubernetes.io/config.seen=\"now\"\nmailrelay.io/drain=\"true\"\n",
    )
    .unwrap();
    let moved = wait_for(
        WITHIN,
        || {
            let q = b.queued();
            (!q.is_empty()).then_some(q)
        },
        || format!("nothing reached b:\n{}", a.relay.log_text()),
    );
    let lineage = moved[0]
        .envelope
        .handed_off
        .as_ref()
        .map(|h| h.lineage.clone());
    assert_eq!(lineage, Some(vec![id]), "{moved:#?}");
    wait_for(
        WITHIN,
        || a.queued().is_empty().then_some(()),
        || format!("a kept {:#?}", a.queued()),
    );
    assert_eq!(http_status(a.relay.addrs.http, "/readyz"), Some(503));
    assert_eq!(
        a.relay.exited(),
        None,
        "a drain request does not stop the relay"
    );
    let status = a.relay.terminate(WITHIN).expect("a exits");
    assert!(status.success(), "{}", a.relay.log_text());
}
