//! Destination health against a running relay: an MX that greets every
//! connection with 421 is suspended after a few failures; its mail (two
//! domains on the same MX host, so one site) gets no attempt but one probe
//! per back-off step, is deferred with the site's last error, and does not
//! count as pending; `mailrelay queue destinations` and the admin API show
//! it; when the host takes mail again the first probe releases everything.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use common::manifests::Setup;
use common::remote::{Remote, Step};
use common::sink::{Answer, Sink, saved};
use common::spool::states;
use common::{Env, LOCALHOST, MAILRELAY, http_get, metric, wait_for};
use mailrelay::spool::RecipientState;

/// This test's MX host: unique in the suite.
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 72);
const WAIT: Duration = Duration::from_secs(60);
/// The relay's default concurrency per destination (`queue::Limits`).
const PER_DESTINATION: usize = 20;
const SUSPEND_AFTER: usize = 3;

fn send_many(env: &Env, to: &[&str], count: usize) {
    let mut smtp = env.smtp_from(LOCALHOST);
    for n in 0..count {
        let rcpt = to[n % to.len()];
        let sent = smtp.send_mail(
            "app@relay.test",
            &[rcpt],
            &format!("Subject: {n}\r\n\r\nmessage {n}\r\n"),
        );
        assert!(
            sent.queue_id().is_some(),
            "message {n} not queued: {sent:?}"
        );
    }
    smtp.quit();
}

/// Every queued recipient deferred, none pending.
fn all_deferred(env: &Env) -> Option<Vec<String>> {
    let queued = states(&env.spool_dir());
    let replies: Vec<String> = queued
        .iter()
        .flat_map(|q| q.recipients.iter())
        .map(|s| match s {
            RecipientState::Deferred { last_reply, .. } => Some(last_reply.clone()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    Some(replies)
}

#[test]
fn a_dead_mx_is_suspended_probed_and_released() {
    let dead = Remote::start(MX, &[Step::Refuse421]);
    let env = Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec(
                "queue: {retrySchedule: [1h], jitterPercent: 0, lifetime: 1d, delayWarning: 0s, \
                 destinations: {suspendAfterFailures: 3, probeInterval: 1s, maxProbeInterval: 2s}}",
            )
            .dns_records(&format!(
                "mx-host=one.test,mx.dead.test,10\nmx-host=two.test,mx.dead.test,10\nhost-record=mx.dead.test,{MX}"
            )),
    );
    send_many(&env, &["a@one.test", "b@two.test"], 100);

    // Suspended, every message deferred without one connection each.
    let replies = wait_for(
        WAIT,
        || all_deferred(&env).filter(|r| r.len() == 100),
        || {
            format!(
                "not all deferred: {:#?}\n{}",
                states(&env.spool_dir()),
                env.relay.log_text()
            )
        },
    );
    let suspended_replies = replies
        .iter()
        .filter(|r| r.contains("destination suspended"))
        .count();
    assert!(suspended_replies > 0, "{replies:?}");
    assert!(
        replies.iter().all(|r| r.contains("421")),
        "every deferral names the host's 421: {replies:?}"
    );
    let probes = || {
        metric(
            &env,
            "mailrelay_queue_destination_probes_total{result=\"failed\"}",
        )
        .unwrap_or(0.0)
    };
    let before = probes();
    let connections = dead.seen(|s| s.connections.len());
    let after = probes();
    println!("connections to the dead MX for 100 messages: {connections} ({after} failed probes)");
    assert!(
        connections <= SUSPEND_AFTER + PER_DESTINATION + after as usize + 1,
        "{connections} connections, {before}..{after} probes"
    );
    wait_for(
        WAIT,
        || (metric(&env, "mailrelay_queue_destinations_suspended ") == Some(1.0)).then_some(()),
        || "the suspended gauge does not show the site".into(),
    );
    wait_for(
        WAIT,
        || {
            (metric(&env, "mailrelay_queue_recipients{state=\"pending\"}") == Some(0.0))
                .then_some(())
        },
        || "pending is not 0 with only a suspended destination's mail".into(),
    );

    // The CLI shows the site (both domains in one line) and why.
    let out = Command::new(MAILRELAY)
        .args([
            "queue",
            "destinations",
            "--http",
            &env.addrs().http.to_string(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "one destination:\n{table}");
    assert!(
        lines[1].starts_with("mx:mx.dead.test  suspended"),
        "{table}"
    );
    assert!(lines[1].contains("421"), "{table}");
    let json = http_get(env.addrs().http, "/queue/destinations").unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["destination"], "mx:mx.dead.test");
    assert_eq!(rows[0]["state"], "suspended");
    // All 100 wait there (one may be out as the probe).
    assert!(rows[0]["depth"].as_u64().unwrap() >= 99, "{json}");
    assert!(rows[0]["nextProbe"].is_string(), "{json}");

    // The host comes back: the next probe gets through and releases all
    // of it, although every message's own retry is an hour away.
    drop(dead);
    let mail = tempfile::tempdir().unwrap();
    let _sink = Sink::start(MX, mail.path(), Answer::Accept);
    env.wait_until_spool_is_empty(WAIT);
    assert_eq!(saved(mail.path()).len(), 100);
    assert!(
        metric(
            &env,
            "mailrelay_queue_destination_probes_total{result=\"released\"}"
        ) >= Some(1.0)
    );
    wait_for(
        WAIT,
        || (metric(&env, "mailrelay_queue_destinations_suspended ") == Some(0.0)).then_some(()),
        || "the site is still shown suspended".into(),
    );
}

#[test]
fn the_destinations_command_explains_a_relay_it_cannot_reach() {
    let out = Command::new(MAILRELAY)
        .args(["queue", "destinations", "--http", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the relay's admin endpoint at 127.0.0.1:9"),
        "{err}"
    );
}
