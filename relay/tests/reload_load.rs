//! Hot reload under load: while twenty senders deliver at least 20,000
//! messages in sessions of 50, the compiled config (`--config`) is
//! rewritten 100 times with alternating content (a Blocklist entry and the
//! banner host name change), one swap per 200 messages acknowledged, and
//! each new config is seen applied (a "config reloaded" log line) before
//! the next is written. The relay polls the file every 50 ms here
//! (`MAILRELAY_CONFIG_POLL_MS`). Every session
//! completes: greeted, every message acknowledged with 250, QUIT answered
//! 221 — none fails, none is cut.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{Guard, free_ports};
use common::smtp::{Fallible, data_payload};
use common::{LOCALHOST, MAILRELAY, http_status, wait_for};
use mailrelay_crds::compile;
use mailrelay_crds::manifests::{Manifests, load_text};

const SWAPS: usize = 100;
const MESSAGES: usize = 20_000;
const SENDERS: usize = 20;
const PER_SESSION: usize = 50;

/// The relay here has no test DNS server (no `--dns`): `inboundAuth:
/// Accept` keeps SPF/DMARC lookups of 20,000 messages off the system's
/// resolver, which is not what this test measures.
fn manifests(variant: usize) -> String {
    let blocked = format!("192.0.2.{}", 1 + variant % 2);
    format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {{name: r}}\nspec:\n  hostname: mx{}.reload.test\n\
         \x20 limits: {{maxConnectionsPerIp: 1000, messagesPerMinutePerIp: 10000000}}\n---\n\
         apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: h}}\nspec:\n  domain: hosted.test\n\
         \x20 inbound: {{localParts: [alice]}}\n  inboundAuth: {{policy: Accept}}\n  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}\n---\n\
         apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {{name: b}}\nspec:\n  ips: [{{value: {blocked}}}]\n",
        variant % 2
    )
}

/// Compile as the operator would and replace the file atomically (as the
/// kubelet's symlink swap does).
fn write_config(path: &Path, variant: usize) {
    let mut m = Manifests::default();
    let mut errors = Vec::new();
    load_text(
        Path::new("t.yaml"),
        &manifests(variant),
        &mut m,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let compiled = compile(
        &m.relays[0].object,
        &m.domain_objects(),
        &m.blocklist_objects(),
    )
    .expect("compiles");
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, compiled.config.to_json().unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A whole session of `messages` messages, QUIT included.
fn session(addr: SocketAddr, messages: usize) -> io::Result<()> {
    let mut s = Fallible::open(addr, "load.reload.test")?;
    let content = data_payload("Subject: reload\r\n\r\nunder load\r\n");
    for _ in 0..messages {
        s.command("MAIL FROM:<a@remote.test>", 250)?;
        s.command("RCPT TO:<alice@hosted.test>", 250)?;
        s.command("DATA", 354)?;
        s.send(&content)?;
        s.expect(250)?;
    }
    s.command("QUIT", 221).map(drop)
}

#[derive(Default)]
struct Tally {
    sessions: AtomicUsize,
    messages: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

#[test]
fn a_hundred_config_swaps_during_a_20000_message_load_fail_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.json");
    write_config(&config, 0);
    let ports = free_ports(&[LOCALHOST, LOCALHOST]);
    let smtp = SocketAddr::new(LOCALHOST, ports[0]);
    let http = SocketAddr::new(LOCALHOST, ports[1]);
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(MAILRELAY);
    command
        .args(["run", "--config"])
        .arg(&config)
        .args([
            "--listen",
            &format!("smtp={smtp}"),
            "--http",
            &http.to_string(),
            "--spool",
        ])
        .arg(dir.path().join("spool"))
        .env(mailrelay::config::reload::POLL_ENV, "50")
        .env("RUST_LOG", "info")
        .env("TMPDIR", dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _relay = Guard::spawn("mailrelay", &mut command);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for(
        Duration::from_secs(60),
        || (http_status(http, "/readyz") == Some(200)).then_some(()),
        || format!("the relay did not get ready:\n{}", log_text()),
    );
    let reloads = || log_text().matches("config reloaded").count();

    let tally = Arc::new(Tally::default());
    let swapping = Arc::new(AtomicBool::new(true));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (tally, swapping) = (Arc::clone(&tally), Arc::clone(&swapping));
            std::thread::spawn(move || {
                // Until both: the swaps are done and the load is complete.
                while swapping.load(Ordering::SeqCst)
                    || tally.messages.load(Ordering::SeqCst) < MESSAGES
                {
                    match session(smtp, PER_SESSION) {
                        Ok(()) => {
                            tally.messages.fetch_add(PER_SESSION, Ordering::SeqCst);
                        }
                        Err(e) => tally.failures.lock().unwrap().push(e.to_string()),
                    }
                    tally.sessions.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Spread over the load: swap n once n/100 of the messages are in.
    let mut during = Vec::with_capacity(SWAPS);
    for swap in 1..=SWAPS {
        let due = (swap - 1) * MESSAGES / SWAPS;
        wait_for(
            Duration::from_secs(120),
            || (tally.messages.load(Ordering::SeqCst) >= due).then_some(()),
            || format!("the load stalled before {due} messages:\n{}", log_text()),
        );
        write_config(&config, swap);
        wait_for(
            Duration::from_secs(30),
            || (reloads() >= swap).then_some(()),
            || format!("swap {swap} was not applied:\n{}", log_text()),
        );
        during.push(tally.messages.load(Ordering::SeqCst));
    }
    swapping.store(false, Ordering::SeqCst);
    for s in senders {
        s.join().expect("a sender panicked");
    }

    let failures = tally.failures.lock().unwrap().clone();
    let sessions = tally.sessions.load(Ordering::SeqCst);
    let messages = tally.messages.load(Ordering::SeqCst);
    println!(
        "{SWAPS} config swaps applied ({} reload lines); {sessions} sessions, {messages} messages \
         acknowledged, {} failed sessions; messages acknowledged at the first swap {}, at the last {}",
        reloads(),
        failures.len(),
        during[0],
        during[SWAPS - 1],
    );
    assert!(failures.is_empty(), "failed sessions: {failures:#?}");
    assert!(messages >= MESSAGES);
    assert!(
        during[SWAPS - 1] < messages,
        "the load went on past the last swap"
    );
}
