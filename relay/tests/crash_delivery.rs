//! A crash in the middle of delivery loses nothing: 500 messages wait for
//! a remote host that is down, the host comes up, the relay is killed
//! with SIGKILL while it delivers them, and a new relay on the same spool
//! delivers the rest. Every message arrives; a message arrives twice only
//! when its transaction was in flight at the kill (the remote 250 came,
//! the relay had not yet recorded it: the unavoidable window of SMTP), so
//! duplicates are bounded by the concurrency to one destination.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::manifests::{REMOTE_SENDER, Setup};
use common::sink::{Answer, Sink, saved};
use common::spool::{self, states};
use common::{Env, LOCALHOST, wait_for};
use mailrelay::spool::RecipientState;

const MESSAGES: usize = 500;
/// Messages at the host when the relay is killed.
const KILL_AFTER: usize = MESSAGES / 5;
/// Sessions that queue them, side by side.
const SESSIONS: usize = 5;
/// The relay's limit of deliveries in flight to one destination
/// (`queue::manager::Concurrency::per_destination`): the most that can
/// have been accepted remotely but not yet recorded at the kill.
const IN_FLIGHT_PER_DESTINATION: usize = 20;

/// This file's MX hosts: unique in the suite.
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);
const MX_NO_CRASH: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 51);

fn marker(n: usize) -> String {
    format!("crash-marker-{n:04}")
}

/// A message whose last line names it: a copy cut off before that line
/// does not count.
fn content(marker: &str) -> String {
    format!("Subject: {marker}\r\n\r\nfirst line of {marker}\r\nEND {marker}\r\n")
}

/// How many complete copies of each marker the sink holds.
fn arrived(dir: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for message in saved(dir) {
        if let Some(line) = message.lines().find(|l| l.starts_with("END crash-marker-")) {
            *seen.entry(line["END ".len()..].to_string()).or_default() += 1;
        }
    }
    seen
}

/// A relay that retries every second, with `crash.test` at `mx`.
fn start(mx: Ipv4Addr) -> Env {
    Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec(
                "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
            )
            .dns_records(&format!(
                "mx-host=crash.test,mx.crash.test,10\nhost-record=mx.crash.test,{mx}"
            )),
    )
}

/// Wait until every message was tried once and deferred (the host is down).
fn wait_until_all_deferred(env: &Env) {
    wait_for(
        Duration::from_secs(60),
        || {
            let queued = states(&env.spool_dir());
            (queued.len() == MESSAGES
                && queued
                    .iter()
                    .all(|q| matches!(q.recipients[0], RecipientState::Deferred { .. })))
            .then_some(())
        },
        || {
            format!(
                "not all {MESSAGES} messages were deferred\n{}",
                env.relay.log_text()
            )
        },
    );
}

/// Queue every message over a few sessions side by side.
fn queue_all(env: &Env) {
    std::thread::scope(|scope| {
        for session in 0..SESSIONS {
            scope.spawn(move || {
                let mut smtp = env.smtp_from(LOCALHOST);
                for n in (session..MESSAGES).step_by(SESSIONS) {
                    let sent =
                        smtp.send_mail(REMOTE_SENDER, &["bob@crash.test"], &content(&marker(n)));
                    assert!(
                        sent.queue_id().is_some(),
                        "{} not queued: {sent:?}",
                        marker(n)
                    );
                }
                smtp.quit();
            });
        }
    });
}

#[test]
fn a_relay_killed_while_delivering_delivers_every_message_after_restart_with_few_duplicates() {
    let sink_root = tempfile::tempdir().unwrap();
    let mail = sink_root.path().join("mx");
    let mut env = start(MX);
    queue_all(&env);
    wait_until_all_deferred(&env);

    // The host comes up; kill the relay once a fifth of the messages landed.
    let mx = Sink::start(MX, &mail, Answer::Accept);
    wait_for(
        Duration::from_secs(60),
        || (arrived(&mail).len() >= KILL_AFTER).then_some(()),
        || {
            format!(
                "{KILL_AFTER} messages did not arrive\n{}",
                env.relay.log_text()
            )
        },
    );
    env.relay.kill();
    // What the relay sent before it died is still being read by the sink.
    mx.wait_until_idle(Duration::from_secs(30));
    let at_host = arrived(&mail);
    assert!(
        at_host.len() < MESSAGES,
        "all {MESSAGES} were delivered before the kill: the crash came too late to test anything"
    );
    let unrecorded = unrecorded(&env.spool_dir(), &at_host);
    eprintln!(
        "killed with {} messages at the host, {} of them not yet recorded as delivered",
        at_host.len(),
        unrecorded.len()
    );

    env.restart();
    env.wait_until_spool_is_empty(Duration::from_secs(60));
    let seen = arrived(&mail);
    let missing: Vec<String> = (0..MESSAGES)
        .map(marker)
        .filter(|m| !seen.contains_key(m))
        .collect();
    assert!(missing.is_empty(), "lost in the crash: {missing:?}");
    let duplicated: BTreeSet<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, _)| m.clone())
        .collect();
    eprintln!(
        "duplicates: {} of {MESSAGES} messages arrived twice: {duplicated:?}",
        duplicated.len()
    );
    assert!(
        seen.values().all(|n| *n <= 2),
        "a message is repeated at most once per crash: {seen:?}"
    );
    assert!(
        duplicated.is_subset(&unrecorded),
        "only messages in flight at the kill arrive twice: duplicated {duplicated:?}, in flight {unrecorded:?}"
    );
    assert!(
        duplicated.len() <= IN_FLIGHT_PER_DESTINATION,
        "more duplicates than transactions in flight to one destination: {duplicated:?}"
    );
}

/// The messages that reached the host but are not recorded as delivered
/// in the spool a crash left: the ones the restarted relay sends again.
fn unrecorded(spool_dir: &Path, at_host: &BTreeMap<String, usize>) -> BTreeSet<String> {
    let delivered: BTreeSet<String> = states(spool_dir)
        .into_iter()
        .filter(|q| matches!(q.recipients[0], RecipientState::Delivered { .. }))
        .map(|q| q.id.to_string())
        .collect();
    spool::messages(spool_dir)
        .iter()
        .filter(|q| !delivered.contains(&q.id))
        .filter_map(|q| {
            let text = q.body_text();
            let line = text.lines().find(|l| l.starts_with("END "))?;
            Some(line["END ".len()..].to_string())
        })
        .filter(|m| at_host.contains_key(m))
        .collect()
}

#[test]
fn without_a_crash_every_deferred_message_arrives_exactly_once() {
    let sink_root = tempfile::tempdir().unwrap();
    let mail = sink_root.path().join("mx");
    let env = start(MX_NO_CRASH);
    queue_all(&env);
    wait_until_all_deferred(&env);
    let _mx = Sink::start(MX_NO_CRASH, &mail, Answer::Accept);
    env.wait_until_spool_is_empty(Duration::from_secs(60));
    let seen = arrived(&mail);
    let duplicated: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(seen.len(), MESSAGES);
    assert!(
        duplicated.is_empty(),
        "{} duplicates without a crash: {duplicated:?}",
        duplicated.len()
    );
}
