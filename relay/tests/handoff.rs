//! Scale-in without loss: three relays of one Relay on loopback, sharing a
//! hand-off secret. Mail queued on one of them (its destination down) is
//! handed to the other two when it gets SIGTERM, keeps its retry state and
//! history there, and is delivered once the destination comes back.
//!
//! Hosts: 127.0.0.70 to .73 (unique in the suite, see common/sink.rs).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
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
/// Mail of the large hand-off (never delivered: no sink there).
const DOMAIN_LARGE: &str = "large.test";
const MX_LARGE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 73);
const MESSAGES: usize = 30;
/// The large hand-off: enough to keep a pipelined window full many times.
const LARGE: usize = 2_000;
const SECRET: &str = "0123456789abcdef-test-handoff-secret";

fn setup() -> Setup {
    setup_with("queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}")
}

/// The suite's Relay with `queue` as its queue settings.
fn setup_with(queue: &str) -> Setup {
    Setup::default()
        .relay_from_loopback()
        .relay_spec(queue)
        .dns_records(&format!(
            "mx-host={DOMAIN},mx.{DOMAIN},10\nhost-record=mx.{DOMAIN},{MX}\n\
             mx-host={DOMAIN_ALONE},mx.{DOMAIN_ALONE},10\nhost-record=mx.{DOMAIN_ALONE},{MX_ALONE}\n\
             mx-host={DOMAIN_REQUEST},mx.{DOMAIN_REQUEST},10\nhost-record=mx.{DOMAIN_REQUEST},{MX_REQUEST}\n\
             mx-host={DOMAIN_LARGE},mx.{DOMAIN_LARGE},10\nhost-record=mx.{DOMAIN_LARGE},{MX_LARGE}"
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
    start_as(&setup(), root, name, dns, me, peers, secret, more)
}

/// `start` with another setup.
#[allow(clippy::too_many_arguments)]
fn start_as(
    setup: &Setup,
    root: &Path,
    name: &str,
    dns: SocketAddr,
    me: SocketAddr,
    peers: &[SocketAddr],
    secret: &Path,
    more: &[&str],
) -> Pod {
    let dir = root.join(name);
    setup.write(&dir.join("manifests"));
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

/// A queue of thousands goes to the peer over the pipelined dialogue:
/// nothing lost, nothing left, nothing on both relays, and the drain's log
/// line and metric count exactly what the peer acknowledged and holds.
#[test]
fn a_large_queue_is_handed_off_pipelined_and_counted() {
    let site = Site::new();
    let (root, dns, secret) = (&site.root, &site.dns, &site.secret);
    let annotations = root.path().join("annotations");
    std::fs::write(&annotations, "").unwrap();
    let ports = free_ports(&[LOCALHOST, LOCALHOST]);
    let (at_a, at_b) = (
        SocketAddr::new(LOCALHOST, ports[0]),
        SocketAddr::new(LOCALHOST, ports[1]),
    );
    // One try each, then nothing until the hand-off: the retry state
    // stays as it was when the drain began.
    let large = setup_with(
        "queue: {retrySchedule: [1h], jitterPercent: 0, lifetime: 1d, delayWarning: 0s}",
    );
    let annotations_arg = annotations.display().to_string();
    // Drained on request, so that a stays up and its metrics can be read.
    let request = ["--drain-request-file", annotations_arg.as_str()];
    let a = start_as(
        &large,
        root.path(),
        "a",
        dns.addr,
        at_a,
        &[at_b],
        secret,
        &request,
    );
    let b = start_as(&large, root.path(), "b", dns.addr, at_b, &[], secret, &[]);
    assert!(
        ehlo_lines(at_b).iter().any(|l| l == "PIPELINING"),
        "the peer offers pipelining: {:?}",
        ehlo_lines(at_b)
    );

    // Filled by a few clients at once, each over one session.
    const CLIENTS: usize = 4;
    let smtp = a.relay.addrs.smtp;
    // About 1 KiB, in lines of a legal length.
    let body = format!("{}\r\n", "x".repeat(62)).repeat(16);
    let body = body.as_str();
    let acked: BTreeSet<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                scope.spawn(move || {
                    let mut session = Smtp::hello(LOCALHOST, smtp);
                    let ids: Vec<String> = (c..LARGE)
                        .step_by(CLIENTS)
                        .map(|n| {
                            let sent = session.send_mail(
                                REMOTE_SENDER,
                                &[&format!("user{n}@{DOMAIN_LARGE}")],
                                &format!("Subject: large {n}\r\n\r\n{body}"),
                            );
                            sent.queue_id()
                                .unwrap_or_else(|| panic!("not queued: {sent:?}"))
                        })
                        .collect();
                    session.quit();
                    ids
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    assert_eq!(acked.len(), LARGE, "distinct queue ids");
    wait_for(
        WITHIN,
        || {
            let q = a.queued();
            let tried = q.len() == LARGE
                && q.iter().all(|m| {
                    m.recipients
                        .iter()
                        .all(|r| matches!(r, RecipientState::Deferred { .. }))
                });
            tried.then_some(())
        },
        || {
            format!(
                "a's queue is not {LARGE} deferred messages yet:\n{}",
                a.relay.log_text()
            )
        },
    );

    let before: BTreeMap<String, Vec<RecipientState>> = a
        .queued()
        .into_iter()
        .map(|q| (q.id.to_string(), q.recipients))
        .collect();
    std::fs::write(&annotations, "mailrelay.io/drain=\"true\"\n").unwrap();
    let drained = wait_for(
        WITHIN,
        || {
            a.relay
                .log_text()
                .lines()
                .find(|l| l.contains("drained:"))
                .map(str::to_string)
        },
        || format!("a did not finish draining:\n{}", a.relay.log_text()),
    );
    let logged = |field: &str| -> usize {
        drained
            .split_whitespace()
            .find_map(|w| w.strip_prefix(field)?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {drained:?}"))
    };
    let (handed, left) = (logged("handed_off="), logged("left="));

    let on_a: Vec<String> = a.queued().iter().map(|q| q.id.to_string()).collect();
    let on_b = b.queued();
    let mut from: BTreeMap<String, usize> = BTreeMap::new();
    for m in &on_b {
        let lineage = m.envelope.handed_off.as_ref().map(|h| h.lineage.clone());
        let Some([id]) = lineage.as_deref() else {
            panic!("one hand-off in the lineage: {m:#?}");
        };
        *from.entry(id.clone()).or_default() += 1;
        // Exactly as on a: b took over the retry state and made no attempt
        // of its own (its retry schedule says an hour).
        assert_eq!(
            Some(&m.recipients),
            before.get(id),
            "retry state changed in the hand-off: {m:#?}"
        );
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !from.contains_key(*id)).collect();
    let twice: Vec<(&String, &usize)> = from.iter().filter(|(_, n)| **n > 1).collect();
    let kept_though_taken: Vec<&String> = on_a.iter().filter(|id| from.contains_key(*id)).collect();
    let removed_lines = a
        .relay
        .log_text()
        .lines()
        .filter(|l| l.contains("handed off to a peer"))
        .count();
    eprintln!(
        "large hand-off: {} acknowledged on a, {} on b, {} left on a, {} lost, {} duplicates; \
         drain log: handed_off={handed} left={left}; {removed_lines} removals logged",
        acked.len(),
        on_b.len(),
        on_a.len(),
        lost.len(),
        twice.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}\n{}", a.relay.log_text());
    assert!(twice.is_empty(), "taken twice by b: {twice:?}");
    assert!(
        on_a.is_empty(),
        "left on a: {on_a:?}\n{}",
        a.relay.log_text()
    );
    assert!(
        kept_though_taken.is_empty(),
        "on both: {kept_though_taken:?}"
    );
    assert_eq!(
        handed,
        on_b.len(),
        "the drain log counts what the peer holds"
    );
    assert_eq!(left, 0);
    assert_eq!(
        removed_lines,
        on_b.len(),
        "every acknowledged message removed from a"
    );
    assert_eq!(
        metric(
            a.relay.addrs.http,
            "mailrelay_handoff_messages_total{direction=\"sent\"}"
        ),
        on_b.len() as u64
    );
    assert_eq!(
        metric(
            b.relay.addrs.http,
            "mailrelay_handoff_messages_total{direction=\"received\"}"
        ),
        on_b.len() as u64
    );
}

/// The lines of a hand-off listener's EHLO reply, without their codes.
fn ehlo_lines(listener: SocketAddr) -> Vec<String> {
    let mut smtp = Smtp::from_stream(TcpStream::connect(listener).unwrap(), listener);
    assert_eq!(smtp.reply().code, 220);
    let ehlo = smtp.command("EHLO probe");
    smtp.quit();
    ehlo.lines
}

/// `NAME{LABELS}` from a relay's /metrics, 0 when absent.
fn metric(http: SocketAddr, name_and_labels: &str) -> u64 {
    let mut stream = TcpStream::connect(http).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Pipelined, each message is still checked in its place: a replay of an
/// earlier message of the session in a later slot gets 535 and closes the
/// session; what came before it is stored, nothing after it is read.
#[test]
fn a_replay_inside_a_pipelined_window_is_refused_in_place() {
    use mailrelay::lifecycle::handoff::wire;
    let site = Site::new();
    let (root, dns, secret) = (&site.root, &site.dns, &site.secret);
    let ports = free_ports(&[LOCALHOST]);
    let at_b = SocketAddr::new(LOCALHOST, ports[0]);
    let large = setup_with(
        "queue: {retrySchedule: [1h], jitterPercent: 0, lifetime: 1d, delayWarning: 0s}",
    );
    let b = start_as(&large, root.path(), "b", dns.addr, at_b, &[], secret, &[]);

    let mut smtp = Smtp::from_stream(TcpStream::connect(at_b).unwrap(), at_b);
    let greeting = smtp.reply();
    let nonce = greeting
        .text()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let ehlo = smtp.command("EHLO sender");
    assert!(ehlo.lines.iter().any(|l| l == "PIPELINING"), "{ehlo:?}");
    let key = wire::key(SECRET.as_bytes());
    let message = |n: usize| {
        let body = format!("Subject: pipelined {n}\r\n\r\nbody {n}\r\n").into_bytes();
        let transfer = wire::Transfer {
            id: format!("pipelined-{n}"),
            envelope: mailrelay::spool::Envelope {
                sender: REMOTE_SENDER.into(),
                recipients: vec![format!("x@{DOMAIN_LARGE}")],
                // Now, not long ago: a message past its lifetime would be
                // bounced (and gone from b's queue) as soon as it lands.
                received_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64,
                client_ip: LOCALHOST,
                helo: "client.test".into(),
                auth: None,
                tls: false,
                size: body.len() as u64,
                smtputf8: false,
                body_8bit: false,
                handed_off: None,
            },
            recipients: vec![RecipientState::Pending],
            held: false,
            warned: false,
        };
        (wire::encode_transfer(&transfer).unwrap(), body)
    };
    let signed = |(transfer, body): &(String, Vec<u8>), seq: u64| {
        let mac = wire::mac(&key, &nonce, seq, transfer, body);
        let mut bytes = wire::command(body.len(), transfer, &mac).into_bytes();
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        bytes
    };
    let (first, second, fourth) = (message(0), message(1), message(3));
    let replayed = signed(&first, 0);
    // All in one write: slots 0 and 1 genuine, slot 2 the replay of slot
    // 0 (its MAC is for slot 0), slot 3 genuine again.
    let mut window = replayed.clone();
    window.extend(signed(&second, 1));
    window.extend(replayed);
    window.extend(signed(&fourth, 3));
    smtp.send(&window);
    let replies = smtp.replies_until_close();
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![250, 250, 535], "{replies:?}");
    assert!(replies[2].is(535, "5.7.8"), "{replies:?}");

    let mut lineages: Vec<String> = b
        .queued()
        .iter()
        .flat_map(|q| {
            q.envelope
                .handed_off
                .clone()
                .map(|h| h.lineage)
                .unwrap_or_default()
        })
        .collect();
    lineages.sort();
    assert_eq!(lineages, vec!["pipelined-0", "pipelined-1"]);
}

/// A peer that acknowledges some messages and then goes silent: at the
/// deadline the sender stops, the messages the peer acknowledged are gone
/// from its spool and counted in the drain's log line, and the rest stay.
#[test]
fn what_a_peer_acknowledged_before_the_deadline_is_removed_and_counted() {
    const SENT: usize = 40;
    const TAKEN: usize = 15;
    let site = Site::new();
    let peer = FakePeer::start(true, TAKEN);
    let (mut a, acked) = queue_for(&site, peer.addr, SENT, &["--drain-deadline", "6s"]);
    let status = a.relay.terminate(WITHIN).expect("a exits");
    assert!(status.success(), "{}", a.relay.log_text());
    let seen = peer.stop();
    let taken: BTreeSet<String> = seen.taken.iter().cloned().collect();
    let drained = drain_line(&a);
    let on_a: BTreeSet<String> = a.queued().iter().map(|q| q.id.to_string()).collect();
    eprintln!("silent peer: took {} of {SENT}; a: {drained}", taken.len());
    assert!(seen.overlapped, "messages were pipelined");
    assert_eq!(
        taken.len(),
        TAKEN,
        "the peer acknowledged its share:\n{}",
        a.relay.log_text()
    );
    assert!(taken.is_subset(&acked));
    assert!(
        drained.contains(&format!("handed_off={TAKEN} "))
            && drained.contains(&format!("left={}", SENT - TAKEN)),
        "the drain counts what the peer acknowledged: {drained}"
    );
    let expected: BTreeSet<String> = acked.difference(&taken).cloned().collect();
    assert_eq!(
        on_a, expected,
        "a keeps exactly what the peer did not acknowledge"
    );
}

/// A peer from before pipelining (no PIPELINING in its EHLO) still takes
/// the whole queue, one message at a time.
#[test]
fn a_peer_without_pipelining_is_sent_one_message_at_a_time() {
    const SENT: usize = 10;
    let site = Site::new();
    let peer = FakePeer::start(false, usize::MAX);
    let (mut a, acked) = queue_for(&site, peer.addr, SENT, &[]);
    let status = a.relay.terminate(WITHIN).expect("a exits");
    assert!(status.success(), "{}", a.relay.log_text());
    let seen = peer.stop();
    let taken: BTreeSet<String> = seen.taken.iter().cloned().collect();
    assert!(!seen.overlapped, "a message went out before the last reply");
    assert_eq!(taken, acked, "{}", a.relay.log_text());
    assert!(a.queued().is_empty());
    let drained = drain_line(&a);
    assert!(
        drained.contains(&format!("handed_off={SENT} ")),
        "{drained}"
    );
}

/// Relay a, handing off to `peer`, with `count` messages queued for a
/// destination that is down; their queue ids.
fn queue_for(
    site: &Site,
    peer: SocketAddr,
    count: usize,
    more: &[&str],
) -> (Pod, BTreeSet<String>) {
    let ports = free_ports(&[LOCALHOST]);
    let at_a = SocketAddr::new(LOCALHOST, ports[0]);
    let large = setup_with(
        "queue: {retrySchedule: [1h], jitterPercent: 0, lifetime: 1d, delayWarning: 0s}",
    );
    let a = start_as(
        &large,
        site.root.path(),
        "a",
        site.dns.addr,
        at_a,
        &[peer],
        &site.secret,
        more,
    );
    let mut smtp = Smtp::hello(LOCALHOST, a.relay.addrs.smtp);
    let acked = (0..count)
        .map(|n| {
            let sent = smtp.send_mail(
                REMOTE_SENDER,
                &[&format!("x{n}@{DOMAIN_LARGE}")],
                &format!("Subject: fake peer {n}\r\n\r\nbody\r\n"),
            );
            sent.queue_id().expect("queued")
        })
        .collect();
    smtp.quit();
    (a, acked)
}

/// The drain's last log line.
fn drain_line(pod: &Pod) -> String {
    let log = pod.relay.log_text();
    log.lines()
        .find(|l| l.contains("drained:"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no drain line:\n{log}"))
}

/// A hand-off listener that speaks the protocol (without checking MACs),
/// offers PIPELINING or not, acknowledges the first `take` messages and
/// then reads on but never answers again.
struct FakePeer {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

/// What a fake peer saw.
#[derive(Debug, Default)]
struct Seen {
    /// The ids of the messages it acknowledged.
    taken: Vec<String>,
    /// Bytes of a next command were there before a message's reply went.
    overlapped: bool,
}

impl FakePeer {
    fn start(pipelining: bool, take: usize) -> FakePeer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => fake_session(stream, pipelining, take, &mut seen, &stopping),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            seen
        });
        FakePeer { addr, stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn fake_session(
    stream: TcpStream,
    pipelining: bool,
    take: usize,
    seen: &mut Seen,
    stop: &std::sync::atomic::AtomicBool,
) {
    use mailrelay::lifecycle::handoff::wire;
    use std::io::BufRead;
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut write = stream.try_clone().unwrap();
    let mut read = std::io::BufReader::new(stream);
    write
        .write_all(b"220 fake.test mailrelay hand-off 00112233\r\n")
        .unwrap();
    let mut line = Vec::new();
    loop {
        match read.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {}
            Ok(_) => continue,
            Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => return,
            // A read timeout: whatever was read stays in `line`.
            Err(_) => continue,
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        line.clear();
        let mut words = text.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("EHLO") if pipelining => write
                .write_all(b"250-fake.test\r\n250-PIPELINING\r\n250 XHANDOFF\r\n")
                .unwrap(),
            Some("EHLO") => write
                .write_all(b"250-fake.test\r\n250 XHANDOFF\r\n")
                .unwrap(),
            Some("XMESSAGE") => {
                let len: usize = words.next().unwrap().parse().unwrap();
                let transfer = wire::decode_transfer(words.next().unwrap()).unwrap();
                let mut body = vec![0; len];
                read_fully(&mut read, &mut body, stop);
                seen.overlapped |= more_waiting(&read);
                if seen.taken.len() < take {
                    seen.taken.push(transfer.id.clone());
                    let reply = format!(
                        "250 2.0.0 FAKE{} queued (handed off from {})\r\n",
                        seen.taken.len(),
                        transfer.id
                    );
                    write.write_all(reply.as_bytes()).unwrap();
                }
            }
            Some("QUIT") => {
                let _ = write.write_all(b"221 2.0.0 bye\r\n");
                return;
            }
            _ => write.write_all(b"500 5.5.1 what\r\n").unwrap(),
        }
    }
}

/// Whether the client has sent more already (buffered here or waiting in
/// the socket).
fn more_waiting(read: &std::io::BufReader<TcpStream>) -> bool {
    if !read.buffer().is_empty() {
        return true;
    }
    let socket = read.get_ref();
    socket.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let waiting = matches!(socket.peek(&mut byte), Ok(n) if n > 0);
    socket.set_nonblocking(false).unwrap();
    waiting
}

/// `read_exact` through read timeouts.
fn read_fully(read: &mut impl Read, mut buf: &mut [u8], stop: &std::sync::atomic::AtomicBool) {
    while !buf.is_empty() {
        match read.read(buf) {
            Ok(0) => panic!("closed inside a body"),
            Ok(n) => buf = &mut buf[n..],
            Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => return,
            Err(_) => {}
        }
    }
}
