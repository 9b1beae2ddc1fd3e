//! The crash battery: twenty SIGKILLs at random moments while the relay
//! both accepts (eight sessions sending all the time) and delivers (to
//! smtp-sink, up the whole time), each followed by a restart on the same
//! spool. Once the load stops and the queue drains, every message any
//! sender got a 250 for must have reached the sink: zero lost. A message
//! may arrive twice when its delivery was in flight at a kill (the remote
//! took it, the relay had not recorded it); duplicates are counted and
//! printed, not failed.
//!
//! The same again with an event webhook whose receiver never answers, so
//! every event stays in the event log: after the drain and one more
//! restart (which takes back what the spool carried), every acknowledged
//! message has its Reception and its Delivery event there.
//!
//! Hosts: 127.0.0.66 and 127.0.0.67 (unique in the suite). The seed of the
//! kill times is printed; `CRASH_BATTERY_SEED=N` replays one.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::manifests::{REMOTE_SENDER, Setup};
use common::sink::{Answer, Sink, saved};
use common::smtp::{Fallible, data_payload};
use common::{Env, spool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
const MX_WITH_WEBHOOK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 67);
const ITERATIONS: usize = 20;
const SENDERS: usize = 8;
/// Each kill comes this long (uniformly) after the relay was ready again.
const KILL_AFTER_MS: std::ops::Range<u64> = 100..1500;
const DRAIN: Duration = Duration::from_secs(120);

fn content(marker: &str) -> String {
    format!(
        "Subject: {marker}\r\nMessage-ID: <{marker}@battery.test>\r\n\r\nfirst line of {marker}\r\nEND {marker}\r\n"
    )
}

/// How many complete copies of each marker the sink holds.
fn arrived(dir: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for message in saved(dir) {
        if let Some(line) = message.lines().find(|l| l.starts_with("END battery-")) {
            *seen.entry(line["END ".len()..].to_string()).or_default() += 1;
        }
    }
    seen
}

/// One message; Ok once its 250 was read.
fn message(s: &mut Fallible, marker: &str) -> io::Result<()> {
    s.command(&format!("MAIL FROM:<{REMOTE_SENDER}>"), 250)?;
    s.command("RCPT TO:<bob@battery.test>", 250)?;
    s.command("DATA", 354)?;
    s.send(&data_payload(&content(marker)))?;
    s.expect(250).map(|_| ())
}

/// What the senders share: where the relay is now, and what it acknowledged.
struct Load {
    addr: RwLock<SocketAddr>,
    stop: AtomicBool,
    acked: Mutex<Vec<String>>,
    /// Messages whose 250 never came (the kill cut the session).
    unanswered: AtomicUsize,
}

/// Send until told to stop, reconnecting to wherever the relay is after
/// each kill.
fn sender(load: &Load, n: usize) {
    let mut count = 0;
    while !load.stop.load(Ordering::SeqCst) {
        let addr = *load.addr.read().unwrap();
        let Ok(mut session) = Fallible::open(addr, "load.test") else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        while !load.stop.load(Ordering::SeqCst) {
            let marker = format!("battery-{n}-{count:06}");
            count += 1;
            match message(&mut session, &marker) {
                Ok(()) => load.acked.lock().unwrap().push(marker),
                Err(_) => {
                    load.unanswered.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
}

#[test]
fn twenty_sigkills_under_load_lose_no_acknowledged_message() {
    battery(MX, Setup::default());
}

#[test]
fn twenty_sigkills_with_an_event_webhook_lose_no_acknowledged_message_nor_its_events() {
    // Nothing listens there: the sender retries, the events stay.
    let hook = format!(
        "events:\n  webhooks:\n  - {{url: 'http://{MX_WITH_WEBHOOK}:9/events', secret: {{name: hook, key: signing}}}}"
    );
    let (acked, mut env) = battery(
        MX_WITH_WEBHOOK,
        Setup::default()
            .relay_spec(&hook)
            .secret("hook", &[("signing", "battery-key")]),
    );
    // Start once more: the carried lines are taken back at start-up.
    env.restart();
    env.relay.kill();
    // Receptions by queue id (one rebuilt at start-up from the spool has
    // no Message-ID), Deliveries by marker, and which queue id is which.
    let mut received = BTreeMap::<String, usize>::new();
    let mut delivered = BTreeMap::<String, usize>::new();
    let mut queue_ids = BTreeMap::<String, String>::new();
    for entry in std::fs::read_dir(env.spool_dir().join("events")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let json = line.splitn(3, '\t').nth(2).expect("a line of three fields");
            let event: serde_json::Value = serde_json::from_str(json).unwrap();
            let queue_id = event["queueId"].as_str().unwrap_or_default().to_string();
            let marker = event["messageId"]
                .as_str()
                .and_then(|m| m.trim_matches(['<', '>']).strip_suffix("@battery.test"));
            if let Some(marker) = marker {
                queue_ids.insert(marker.to_string(), queue_id.clone());
            }
            match (event["type"].as_str(), marker) {
                (Some("Reception"), _) => *received.entry(queue_id).or_default() += 1,
                (Some("Delivery"), Some(marker)) => {
                    *delivered.entry(marker.to_string()).or_default() += 1
                }
                _ => {}
            }
        }
    }
    let received: BTreeMap<String, usize> = queue_ids
        .iter()
        .filter_map(|(marker, id)| Some((marker.clone(), *received.get(id)?)))
        .collect();
    let no_reception: Vec<&String> = acked
        .iter()
        .filter(|m| !received.contains_key(*m))
        .collect();
    let no_delivery: Vec<&String> = acked
        .iter()
        .filter(|m| !delivered.contains_key(*m))
        .collect();
    println!(
        "crash battery with a webhook: {} acknowledged; events in the log: {} Receptions ({} extra), \
         {} Deliveries ({} extra); acknowledged without a Reception: {}, without a Delivery: {}",
        acked.len(),
        received.len(),
        received.values().map(|n| n - 1).sum::<usize>(),
        delivered.len(),
        delivered.values().map(|n| n - 1).sum::<usize>(),
        no_reception.len(),
        no_delivery.len(),
    );
    assert!(
        no_reception.is_empty(),
        "no Reception event: {no_reception:?}"
    );
    assert!(no_delivery.is_empty(), "no Delivery event: {no_delivery:?}");
}

/// The battery against smtp-sink on `mx`, with the relay of `setup`:
/// returns what was acknowledged, and the environment, its relay killed.
fn battery(mx_ip: Ipv4Addr, setup: Setup) -> (Vec<String>, Env) {
    let seed = std::env::var("CRASH_BATTERY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash battery seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let sink_root = tempfile::tempdir().unwrap();
    let mail = sink_root.path().join("mx");
    let mx = Sink::start(mx_ip, &mail, Answer::Accept);
    let mut env = Env::start(
        setup
            .relay_from_loopback()
            .relay_spec(
                "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
            )
            .dns_records(&format!(
                "mx-host=battery.test,mx.battery.test,10\nhost-record=mx.battery.test,{mx_ip}"
            )),
    );
    let load = Arc::new(Load {
        addr: RwLock::new(env.addrs().smtp),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        unanswered: AtomicUsize::new(0),
    });
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            let load = Arc::clone(&load);
            std::thread::spawn(move || sender(&load, n))
        })
        .collect();

    let mut torn_bytes = 0;
    for iteration in 1..=ITERATIONS {
        let wait = rng.random_range(KILL_AFTER_MS);
        std::thread::sleep(Duration::from_millis(wait));
        let acked = load.acked.lock().unwrap().len();
        env.relay.kill();
        // As the kill left it, read without repairs: nothing damaged.
        let (_, recovery) = spool::read(&env.spool_dir());
        assert_eq!(
            recovery.skipped_records, 0,
            "iteration {iteration}: {recovery:?}"
        );
        torn_bytes += recovery.truncated_bytes;
        env.restart();
        *load.addr.write().unwrap() = env.addrs().smtp;
        eprintln!("kill {iteration:2} after {wait:4} ms: {acked} acknowledged so far");
    }
    // A last stretch of load on the last relay, then stop and drain.
    std::thread::sleep(Duration::from_millis(500));
    load.stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().expect("a sender panicked");
    }
    env.wait_until_spool_is_empty(DRAIN);
    // The relay keeps idle connections to the sink: end it, so that the
    // sink has read everything anyone sent it.
    env.relay.kill();
    mx.wait_until_idle(Duration::from_secs(30));

    let acked = load.acked.lock().unwrap().clone();
    let seen = arrived(&mail);
    let lost: Vec<&String> = acked.iter().filter(|m| !seen.contains_key(*m)).collect();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let extra_copies: usize = seen.values().map(|n| n - 1).sum();
    let unacked_delivered = seen.len() - (acked.len() - lost.len());
    println!(
        "crash battery: {ITERATIONS} SIGKILLs, {} messages acknowledged (250), {} distinct received, \
         {} lost, {duplicated} duplicated ({extra_copies} extra copies), {} sessions cut before a 250 \
         ({unacked_delivered} of those messages delivered anyway), {torn_bytes} torn bytes cut at restarts",
        acked.len(),
        seen.len(),
        lost.len(),
        load.unanswered.load(Ordering::SeqCst),
    );
    assert!(
        acked.len() > ITERATIONS,
        "the load barely ran: {} messages",
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    (acked, env)
}
