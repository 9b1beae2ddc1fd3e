//! Compaction under SIGKILL: four sessions send all the time, one message
//! in five to a destination that is down (nothing listens at its MX) and
//! the rest to smtp-sink. With 32 KiB spool segments the relay compacts
//! every few segments, copying the deferred messages forward. Ten times
//! the relay is killed (SIGKILL), each time as soon as its log shows a
//! compaction pass under way (or after a while without one), and started
//! again on the same spool. Then the load stops, and once the live mail
//! has drained, every message a sender got a 250 for is either at the
//! sink (live destination) or still queued, exactly once (dead one); a
//! last restart on the same spool finds the same queue.
//!
//! Hosts: 127.0.0.80 (sink) and 127.0.0.81 (dead), unique in the suite.
//! The seed of the kill times is printed; `CRASH_COMPACTION_SEED=N`
//! replays one.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::manifests::{REMOTE_SENDER, Setup};
use common::sink::{Answer, Sink, saved};
use common::smtp::{Fallible, data_payload};
use common::{Env, spool, wait_for};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LIVE_MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 80);
const DEAD_MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 81);
const ITERATIONS: usize = 10;
const SENDERS: usize = 4;
/// One message in this many goes to the dead destination.
const DEAD_EVERY: usize = 5;
/// Small segments, so that many close and get compacted in a short run.
const SEGMENT_BYTES: u64 = 32 << 10;
/// Each kill waits this long (uniformly) after the relay was ready, then
/// for a compaction pass to be under way, for at most `PASS_WAIT`.
const KILL_AFTER_MS: std::ops::Range<u64> = 200..800;
const PASS_WAIT: Duration = Duration::from_millis(1500);
const DRAIN: Duration = Duration::from_secs(90);

const PASS_STARTED: &str = "spool: compacting segments";
const PASS_FINISHED: &str = "spool: compacted segments";

/// About a kilobyte, named by its marker on the last line.
fn content(marker: &str) -> String {
    let filler = "compaction keeps the spool small. ".repeat(28);
    format!("Subject: {marker}\r\n\r\n{filler}\r\nEND {marker}\r\n")
}

fn marker_in(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("END cmp-"))?;
    Some(line["END ".len()..].to_string())
}

/// How many complete copies of each marker the sink holds.
fn arrived(dir: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for message in saved(dir) {
        if let Some(marker) = marker_in(&message) {
            *seen.entry(marker).or_default() += 1;
        }
    }
    seen
}

/// The queue ids the relay's Received headers name at the sink.
fn arrived_ids(dir: &Path) -> BTreeSet<String> {
    saved(dir)
        .iter()
        .flat_map(|m| {
            m.lines()
                .map(str::trim)
                .filter_map(|l| l.strip_prefix("id "))
        })
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|id| id.trim_end_matches(';').to_string())
        .collect()
}

/// How many queued copies of each marker the spool holds.
fn queued(spool_dir: &Path) -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    for message in spool::messages(spool_dir) {
        if let Some(marker) = marker_in(&message.body_text()) {
            *found.entry(marker).or_default() += 1;
        }
    }
    found
}

/// A message the relay acknowledged.
#[derive(Clone, Debug)]
struct Acked {
    marker: String,
    queue_id: String,
    dead: bool,
}

struct Load {
    addr: RwLock<SocketAddr>,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
}

fn message(s: &mut Fallible, marker: &str, dead: bool) -> io::Result<String> {
    let domain = if dead { "dead.test" } else { "live.test" };
    s.command(&format!("MAIL FROM:<{REMOTE_SENDER}>"), 250)?;
    s.command(&format!("RCPT TO:<bob@{domain}>"), 250)?;
    s.command("DATA", 354)?;
    s.send(&data_payload(&content(marker)))?;
    let reply = s.expect(250)?;
    Ok(reply.queue_id().unwrap_or_default())
}

fn sender(load: &Load, n: usize) {
    let mut count = 0;
    while !load.stop.load(Ordering::SeqCst) {
        let addr = *load.addr.read().unwrap();
        let Ok(mut session) = Fallible::open(addr, "load.test") else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        while !load.stop.load(Ordering::SeqCst) {
            let marker = format!("cmp-{n}-{count:06}");
            let dead = count % DEAD_EVERY == n % DEAD_EVERY;
            count += 1;
            match message(&mut session, &marker, dead) {
                Ok(queue_id) => load.acked.lock().unwrap().push(Acked {
                    marker,
                    queue_id,
                    dead,
                }),
                Err(_) => break,
            }
        }
    }
}

/// Follows a relay's log: how many compaction passes it started and
/// finished, and the records they copied.
#[derive(Default)]
struct Passes {
    read: u64,
    partial: String,
    started: usize,
    finished: usize,
    records: u64,
    bytes: u64,
}

impl Passes {
    fn follow(&mut self, log: &Path) {
        let Ok(mut file) = std::fs::File::open(log) else {
            return;
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.read)).is_err() || file.read_to_string(&mut text).is_err()
        {
            return;
        }
        self.read += text.len() as u64;
        let text = std::mem::take(&mut self.partial) + &text;
        let (whole, rest) = text.rsplit_once('\n').unwrap_or(("", &text));
        self.partial = rest.to_string();
        for line in whole.lines() {
            if line.contains(PASS_STARTED) {
                self.started += 1;
            } else if line.contains(PASS_FINISHED) {
                self.finished += 1;
                self.records += field(line, "records=");
                self.bytes += field(line, "bytes=");
            }
        }
    }

    fn in_pass(&self) -> bool {
        self.started > self.finished
    }
}

fn field(line: &str, name: &str) -> u64 {
    line.split_once(name)
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A gauge's value from the relay's /metrics.
fn gauge(addr: SocketAddr, name: &str) -> Option<u64> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn sigkills_during_compaction_lose_no_acknowledged_message() {
    let seed = std::env::var("CRASH_COMPACTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash compaction seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let sink_root = tempfile::tempdir().unwrap();
    let mail = sink_root.path().join("mx");
    let mx = Sink::start(LIVE_MX, &mail, Answer::Accept);
    let mut env = Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec(
                "queue: {retrySchedule: [2s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
            )
            .relay_arg(format!("--spool-segment-size={SEGMENT_BYTES}"))
            .dns_records(&format!(
                "mx-host=live.test,mx.live.test,10\nhost-record=mx.live.test,{LIVE_MX}\n\
                 mx-host=dead.test,mx.dead.test,10\nhost-record=mx.dead.test,{DEAD_MX}"
            )),
    );
    let load = Arc::new(Load {
        addr: RwLock::new(env.addrs().smtp),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
    });
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            let load = Arc::clone(&load);
            std::thread::spawn(move || sender(&load, n))
        })
        .collect();

    let (mut kills_in_pass, mut passes, mut finished, mut copied, mut copied_bytes) =
        (0, 0, 0, 0, 0);
    for iteration in 1..=ITERATIONS {
        let wait = rng.random_range(KILL_AFTER_MS);
        std::thread::sleep(Duration::from_millis(wait));
        let mut log = Passes::default();
        let deadline = Instant::now() + PASS_WAIT;
        loop {
            log.follow(env.relay.log_path());
            if log.in_pass() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        env.relay.kill();
        log.follow(env.relay.log_path());
        let in_pass = log.in_pass();
        kills_in_pass += usize::from(in_pass);
        (passes, finished, copied, copied_bytes) = (
            passes + log.started,
            finished + log.finished,
            copied + log.records,
            copied_bytes + log.bytes,
        );
        // As the kill left it, read without repairs: nothing damaged.
        let (_, recovery) = spool::read(&env.spool_dir());
        assert_eq!(
            recovery.skipped_records, 0,
            "iteration {iteration}: {recovery:?}"
        );
        let acked = load.acked.lock().unwrap().len();
        eprintln!(
            "kill {iteration:2} after {wait:3} ms{}: {} passes started, {} finished ({} records copied); {acked} acknowledged so far",
            if in_pass {
                ", during a compaction pass"
            } else {
                ""
            },
            log.started,
            log.finished,
            log.records,
        );
        env.restart();
        *load.addr.write().unwrap() = env.addrs().smtp;
    }
    std::thread::sleep(Duration::from_millis(500));
    load.stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().expect("a sender panicked");
    }
    let acked = load.acked.lock().unwrap().clone();
    let (dead, live): (Vec<Acked>, Vec<Acked>) = acked.iter().cloned().partition(|a| a.dead);

    // The live mail drains (what the sink holds decides: a read of the
    // spool beside a running relay can miss a record written meanwhile);
    // the dead destination's stays.
    let for_live = |q: &spool::Queued| {
        q.envelope
            .recipients
            .iter()
            .any(|r| r.ends_with("@live.test"))
    };
    wait_for(
        DRAIN,
        || {
            let seen = arrived(&mail);
            let drained = live.iter().all(|a| seen.contains_key(&a.marker))
                && !spool::messages(&env.spool_dir()).iter().any(for_live);
            drained.then_some(())
        },
        || {
            let seen = arrived(&mail);
            let missing: Vec<&Acked> = live
                .iter()
                .filter(|a| !seen.contains_key(&a.marker))
                .collect();
            format!(
                "acknowledged live mail not at the sink: {missing:?}\n{}",
                env.relay.log_text()
            )
        },
    );
    let mut last = Passes::default();
    last.follow(env.relay.log_path());
    (passes, finished, copied, copied_bytes) = (
        passes + last.started,
        finished + last.finished,
        copied + last.records,
        copied_bytes + last.bytes,
    );
    let live_bytes = wait_for(
        Duration::from_secs(30),
        || gauge(env.addrs().http, "mailrelay_spool_live_bytes").filter(|b| *b > 0),
        || "no mailrelay_spool_live_bytes".into(),
    );
    let disk_bytes = gauge(env.addrs().http, "mailrelay_spool_disk_bytes").unwrap();
    env.relay.kill();
    mx.wait_until_idle(Duration::from_secs(30));

    let seen = arrived(&mail);
    let seen_ids = arrived_ids(&mail);
    let in_spool = queued(&env.spool_dir());
    let queued_ids: BTreeSet<String> = spool::messages(&env.spool_dir())
        .into_iter()
        .map(|q| q.id)
        .collect();
    // Every 250'd queue id (and the message it named) is at the sink or
    // still queued.
    let lost_live: Vec<&Acked> = live
        .iter()
        .filter(|a| !seen.contains_key(&a.marker) || !seen_ids.contains(&a.queue_id))
        .collect();
    let lost_dead: Vec<&Acked> = dead
        .iter()
        .filter(|a| !in_spool.contains_key(&a.marker) || !queued_ids.contains(&a.queue_id))
        .collect();
    let queued_twice: Vec<(&String, &usize)> = in_spool.iter().filter(|(_, n)| **n > 1).collect();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let segments = std::fs::read_dir(env.spool_dir().join("queue"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .count();
    println!(
        "crash compaction: {ITERATIONS} SIGKILLs ({kills_in_pass} during a compaction pass), \
         {} acknowledged ({} live, {} dead destination); {} distinct at the sink ({duplicated} \
         duplicated), {} queued; lost: {} live, {} dead; queued twice: {}; compaction: {passes} \
         passes started, {finished} finished, {copied} records ({copied_bytes} bytes) copied; spool at the end: \
         {segments} segments, {disk_bytes} bytes on disk, {live_bytes} live bytes",
        acked.len(),
        live.len(),
        dead.len(),
        seen.len(),
        in_spool.len(),
        lost_live.len(),
        lost_dead.len(),
        queued_twice.len(),
    );
    assert!(
        dead.len() > ITERATIONS && live.len() > ITERATIONS,
        "the load barely ran: {} live, {} dead",
        live.len(),
        dead.len()
    );
    assert!(
        lost_live.is_empty(),
        "acknowledged but never delivered: {lost_live:?}"
    );
    assert!(
        lost_dead.is_empty(),
        "acknowledged for the dead destination but no longer queued: {lost_dead:?}"
    );
    assert!(queued_twice.is_empty(), "queued twice: {queued_twice:?}");
    assert!(
        kills_in_pass > 0,
        "no kill landed during a compaction pass: the test proved nothing about them"
    );
    assert!(
        finished > 0 && copied > 0,
        "compaction never ran: {passes} passes started, {finished} finished, {copied} records copied"
    );

    // A last start on the same spool finds the same queue.
    env.restart();
    env.relay.kill();
    assert_eq!(queued(&env.spool_dir()), in_spool);
}
