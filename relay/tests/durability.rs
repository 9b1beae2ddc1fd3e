//! A 250 is a promise: twenty sessions send while the relay is killed
//! with SIGKILL, and every message it acknowledged is in the spool with
//! its complete body, both read as the crash left it and after a restart
//! recovered it. Nothing half-written is ever loaded.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::manifests::{ALICE, Setup};
use common::smtp::{Fallible, data_payload};
use common::spool::{self, Queued};
use common::{Env, LOCALHOST};

const SESSIONS: usize = 20;
/// Acknowledged messages to wait for before the kill: enough that the
/// kill lands in the middle of the load.
const KILL_AFTER: usize = 1000;

/// The content of the message with `marker`: its last line names it, so
/// a body cut short anywhere no longer ends with that line.
fn content(marker: &str) -> String {
    let mut text = format!("Subject: durability {marker}\r\nX-Marker: {marker}\r\n\r\n");
    for n in 0..24 {
        text.push_str(&format!(
            "{marker} line {n:02}: the quick brown fox jumps over the lazy dog\r\n"
        ));
    }
    text.push_str(&format!("END {marker}\r\n"));
    text
}

/// The marker in a queued body's X-Marker header.
fn marker_of(m: &Queued) -> Option<String> {
    let text = m.body_text();
    let line = text.lines().find(|l| l.starts_with("X-Marker: "))?;
    Some(line["X-Marker: ".len()..].to_string())
}

/// One message; the queue id of its 250.
fn message(s: &mut Fallible, sender: &str, marker: &str) -> io::Result<String> {
    s.command(&format!("MAIL FROM:<{sender}>"), 250)?;
    s.command(&format!("RCPT TO:<{ALICE}>"), 250)?;
    s.command("DATA", 354)?;
    s.send(&data_payload(&content(marker)))?;
    let reply = s.expect(250)?;
    reply
        .queue_id()
        .ok_or_else(|| io::Error::other(format!("no queue id in {reply}")))
}

/// Send until the connection breaks; record (queue id, marker) of every
/// acknowledged message as soon as its 250 is read.
fn load(
    addr: SocketAddr,
    session: usize,
    acked: &Mutex<Vec<(String, String)>>,
    count: &AtomicUsize,
) -> io::Error {
    let sender = format!("load-{session}@remote.test");
    let mut s = match Fallible::open(addr, "load.test") {
        Ok(s) => s,
        Err(e) => return e,
    };
    for n in 0.. {
        let marker = format!("m-{session:02}-{n:05}");
        match message(&mut s, &sender, &marker) {
            Ok(id) => {
                acked.lock().unwrap().push((id, marker));
                count.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => return e,
        }
    }
    unreachable!("the loop ends with the connection")
}

/// Every acknowledged message is present and complete; every message
/// present is complete. Returns how many are present.
#[track_caller]
fn assert_intact(messages: &[Queued], acked: &[(String, String)], when: &str) -> usize {
    let by_id: HashMap<&str, &Queued> = messages.iter().map(|m| (m.id.as_str(), m)).collect();
    for (id, marker) in acked {
        let m = by_id.get(id.as_str()).unwrap_or_else(|| {
            panic!("{when}: {id} ({marker}) was acknowledged but is not in the spool")
        });
        assert_eq!(
            marker_of(m).as_deref(),
            Some(marker.as_str()),
            "{when}: {id} holds another message"
        );
    }
    for m in messages {
        let Some(marker) = marker_of(m) else {
            continue; // Not from the load (the message sent after the restart).
        };
        assert!(
            m.body.ends_with(content(&marker).as_bytes()),
            "{when}: {} ({marker}) is not complete:\n{}",
            m.id,
            m.body_text()
        );
        assert_eq!(
            m.envelope.size,
            m.body.len() as u64,
            "{when}: {} size",
            m.id
        );
    }
    messages.len()
}

#[test]
fn every_message_acknowledged_before_a_sigkill_survives_complete() {
    let mut env = Env::start(Setup::default());
    let addr = env.addrs().smtp;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|session| {
            let (acked, count) = (Arc::clone(&acked), Arc::clone(&count));
            std::thread::spawn(move || load(addr, session, &acked, &count))
        })
        .collect();

    // Not a timing assertion: only a bound on a relay that stopped accepting.
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "the load never reached {KILL_AFTER} messages:\n{}",
            env.relay.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    env.relay.kill();
    for t in threads {
        let ended = t.join().expect("a load thread panicked");
        println!("session ended: {ended}");
    }
    let acked = acked.lock().unwrap().clone();

    // As the crash left it, read without repairs.
    let (messages, recovery) = spool::read(&env.spool_dir());
    let present = assert_intact(&messages, &acked, "after the kill");
    assert_eq!(recovery.skipped_records, 0, "damaged records: {recovery:?}");
    let torn = recovery.truncated_bytes;

    // A relay restarted on the spool recovers the same messages and takes more.
    env.restart();
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(
        "after@remote.test",
        &[ALICE],
        "Subject: after\r\n\r\nafter the restart\r\n",
    );
    assert!(sent.queue_id().is_some(), "after the restart: {sent:?}");
    smtp.quit();
    let (messages, recovery) = spool::read(&env.spool_dir());
    let after = assert_intact(&messages, &acked, "after the restart");
    assert_eq!(after, present + 1, "recovery lost or invented messages");
    assert_eq!(
        recovery.skipped_records, 0,
        "damaged records after the restart: {recovery:?}"
    );

    println!(
        "acknowledged before the SIGKILL: {}; in the spool: {present} (the others were stored but \
         their 250 was not read); torn tail left by the kill: {torn} bytes",
        acked.len()
    );
    assert!(acked.len() >= KILL_AFTER);
}
