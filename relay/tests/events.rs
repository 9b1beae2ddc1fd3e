//! Delivery events end to end, with real processes: a relay whose Relay
//! has a webhook and whose tenant MailDomain has one of its own, two
//! Python receivers that check every request's signature and every
//! event against the committed schema, smtp-sink as the MX, dnsmasq with
//! a null MX. 200 messages go through; in the middle the Relay's receiver
//! is down for 20 s and the relay is killed with SIGKILL once. At the end
//! the receiver has a Reception for every message that got a 250 and a
//! Delivery or Bounce for every recipient; duplicates are counted.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::manifests::{REMOTE_SENDER, Setup, maildomain};
use common::process::free_ports;
use common::sink::{Answer, Sink};
use common::webhook::{Receiver, Request, check_signatures};
use common::{Env, LOCALHOST, http_get, metric, wait_for};
use serde_json::Value;

/// This file's addresses: unique in the suite.
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);
const RELAY_HOOK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 101);
const TENANT_HOOK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 102);
const WRONG_KEY_HOOK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 103);
const WRONG_KEY_MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 104);

const MESSAGES: usize = 200;
const SESSIONS: usize = 4;
const KEY: &str = "relay-signing-key";
const TENANT_KEY: &str = "tenant-signing-key";
const TENANT: &str = "tenant.test";
const TENANT_SENDER: &str = "app@tenant.test";
/// The Relay's receiver is down this long.
const RECEIVER_DOWN: Duration = Duration::from_secs(20);
/// Generous bounds for real processes; never a timing claim.
const SETTLE: Duration = Duration::from_secs(120);

fn records(mx: Ipv4Addr) -> String {
    format!(
        "mx-host=events-mx.test,mx.events-mx.test,10\n\
         host-record=mx.events-mx.test,{mx}\n\
         mx-host=events-null.test,.,0"
    )
}

fn webhook(url: &str, secret: &str) -> String {
    format!(
        "{{url: '{url}', secret: {{name: {secret}, key: signing}}, batchSize: 50, batchWindow: 200ms, timeout: 5s}}"
    )
}

fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    let ip = IpAddr::V4(ip);
    SocketAddr::new(ip, free_ports(&[ip])[0])
}

/// A relay with a webhook at `relay_hook` (and, if given, `tenant.test`
/// with one at `tenant_hook`), retrying every second.
fn setup(
    mx: Ipv4Addr,
    relay_hook: SocketAddr,
    tenant_hook: Option<SocketAddr>,
    tenant_dir: &Path,
) -> Setup {
    let mut tenant = maildomain(
        TENANT,
        &["app"],
        &format!("{{maildir: {{path: {}}}}}", tenant_dir.display()),
    );
    if let Some(addr) = tenant_hook {
        tenant.push_str(&format!(
            "  events:\n    webhook: {}\n",
            webhook(&format!("http://{addr}/tenant"), "tenant-hook")
        ));
    }
    Setup::default()
        .relay_from_loopback()
        .relay_spec(
            "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
        )
        .relay_spec(&format!(
            "events:\n  webhooks:\n  - {}",
            webhook(&format!("http://{relay_hook}/events"), "relay-hook")
        ))
        .dns_records(&records(mx))
        .domain(&tenant)
        .secret("relay-hook", &[("signing", KEY)])
        .secret("tenant-hook", &[("signing", TENANT_KEY)])
}

/// What message `n` is: who sends it to whom.
fn envelope(n: usize) -> (&'static str, Vec<&'static str>) {
    let sender = if n % 4 == 3 {
        TENANT_SENDER
    } else {
        REMOTE_SENDER
    };
    let mut to = vec![if n % 4 == 2 {
        "x@events-null.test"
    } else {
        "bob@events-mx.test"
    }];
    if n.is_multiple_of(10) {
        to.push("carol@events-mx.test");
    }
    (sender, to)
}

/// Send messages `range` over a few sessions; the queue id and envelope
/// of each that got a 250.
fn send(
    env: &Env,
    range: std::ops::Range<usize>,
) -> Vec<(String, &'static str, Vec<&'static str>)> {
    let accepted = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for session in 0..SESSIONS {
            let (range, accepted) = (range.clone(), &accepted);
            scope.spawn(move || {
                let mut smtp = env.smtp_from(LOCALHOST);
                for n in range.skip(session).step_by(SESSIONS) {
                    let (from, to) = envelope(n);
                    let content = format!(
                        "From: <{from}>\r\nSubject: events {n}\r\nMessage-ID: <events-{n}@test>\r\n\r\nmessage {n}\r\n"
                    );
                    let sent = smtp.send_mail(from, &to, &content);
                    let id = sent
                        .queue_id()
                        .unwrap_or_else(|| panic!("message {n} was not queued: {sent:?}"));
                    accepted.lock().unwrap().push((id, from, to));
                }
                smtp.quit();
            });
        }
    });
    accepted.into_inner().unwrap()
}

fn field<'a>(e: &'a Value, name: &str) -> &'a str {
    e[name].as_str().unwrap_or_default()
}

fn all_events(requests: &[Request]) -> Vec<&Value> {
    requests.iter().flat_map(|r| &r.events).collect()
}

/// What is still missing at the receiver: Receptions of accepted
/// messages, and a Delivery or Bounce for each of their recipients.
fn missing(requests: &[Request], accepted: &[(String, &str, Vec<&str>)]) -> Vec<String> {
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    for e in all_events(requests) {
        let kind = match field(e, "type") {
            "Delivery" | "Bounce" => "final",
            other => other,
        };
        seen.insert((
            field(e, "queueId").into(),
            field(e, "recipient").into(),
            kind.into(),
        ));
    }
    let mut out = Vec::new();
    for (id, _, to) in accepted {
        for rcpt in to {
            for kind in ["Reception", "final"] {
                if !seen.contains(&(id.clone(), rcpt.to_string(), kind.to_string())) {
                    out.push(format!("{kind} of {id} to {rcpt}"));
                }
            }
        }
    }
    out
}

/// Events received more than once, by id.
fn duplicates(requests: &[Request]) -> BTreeMap<String, usize> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for e in all_events(requests) {
        *count.entry(field(e, "id").to_string()).or_default() += 1;
    }
    count.retain(|_, n| *n > 1);
    count
}

#[test]
fn every_accepted_message_and_every_recipient_reach_the_webhook_through_an_outage_and_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let _sink = Sink::start(MX, &root.path().join("mx"), Answer::Accept);
    let relay_addr = free_addr(RELAY_HOOK);
    let tenant_addr = free_addr(TENANT_HOOK);
    let mut receiver = Receiver::start(relay_addr, &root.path().join("relay-hook"), KEY);
    let tenant = Receiver::start(tenant_addr, &root.path().join("tenant-hook"), TENANT_KEY);
    let mut env = Env::start(setup(
        MX,
        relay_addr,
        Some(tenant_addr),
        &root.path().join("tenant-mail"),
    ));

    // A refusal is an event too (and the tenant's: the recipient is its).
    let mut smtp = env.smtp_from(LOCALHOST);
    assert_eq!(
        smtp.command(&format!("MAIL FROM:<{REMOTE_SENDER}>")).code,
        250
    );
    assert_eq!(smtp.command("RCPT TO:<nobody@tenant.test>").code, 550);
    smtp.quit();

    let mut accepted = send(&env, 0..MESSAGES / 2);
    receiver.stop();
    let down = Instant::now();
    accepted.extend(send(&env, MESSAGES / 2..MESSAGES * 3 / 4));
    env.restart();
    accepted.extend(send(&env, MESSAGES * 3 / 4..MESSAGES));
    std::thread::sleep(RECEIVER_DOWN.saturating_sub(down.elapsed()));
    receiver.resume();

    wait_for(
        SETTLE,
        || {
            missing(&receiver.requests(), &accepted)
                .is_empty()
                .then_some(())
        },
        || {
            let left = missing(&receiver.requests(), &accepted);
            format!(
                "{} events never reached the webhook, such as {:?}\n{}",
                left.len(),
                &left[..left.len().min(10)],
                env.relay.log_text()
            )
        },
    );
    let requests = receiver.requests();
    check_signatures(&requests).unwrap();
    let schema_errors: Vec<&String> = requests.iter().flat_map(|r| &r.schema_errors).collect();
    assert!(
        schema_errors.is_empty(),
        "events the schema refuses: {schema_errors:#?}"
    );
    let events = all_events(&requests);
    let dup = duplicates(&requests);
    println!(
        "relay webhook: {} requests, {} events, {} distinct ids received more than once ({} extra copies)",
        requests.len(),
        events.len(),
        dup.len(),
        dup.values().map(|n| n - 1).sum::<usize>()
    );
    // Bounces are bounces, deliveries deliveries.
    for e in &events {
        let rcpt = field(e, "recipient");
        match field(e, "type") {
            "Delivery" => assert!(
                rcpt.ends_with("@events-mx.test") || rcpt.ends_with("@tenant.test"),
                "{e}"
            ),
            "Bounce" if rcpt.ends_with("@events-null.test") => {
                assert_eq!(e["reply"]["enhanced"], "5.1.10", "{e}");
                // The class is the classifier's (X.1.10 is also Exchange's
                // "recipient not found", see delivery::classify).
                assert!(!field(e, "class").is_empty(), "{e}");
            }
            _ => {}
        }
    }
    let delivered = events
        .iter()
        .find(|e| field(e, "type") == "Delivery" && field(e, "route") == "mx")
        .expect("a delivery by MX");
    assert_eq!(field(delivered, "remoteIp"), MX.to_string(), "{delivered}");
    assert!(
        field(delivered, "messageId").starts_with("<events-"),
        "{delivered}"
    );
    assert!(
        events.iter().any(|e| field(e, "type") == "Rejection"),
        "the refused RCPT"
    );

    // The tenant's receiver: its domain's events only, and all of them.
    let tenant_requests = tenant.requests();
    check_signatures(&tenant_requests).unwrap();
    let tenant_events = all_events(&tenant_requests);
    for e in &tenant_events {
        let ours = [field(e, "sender"), field(e, "recipient")]
            .iter()
            .any(|a| a.ends_with(&format!("@{TENANT}")));
        assert!(ours, "not tenant.test's: {e}");
    }
    let tenant_sent: Vec<_> = accepted
        .iter()
        .filter(|(_, from, _)| *from == TENANT_SENDER)
        .cloned()
        .collect();
    assert!(!tenant_sent.is_empty());
    assert_eq!(
        missing(&tenant_requests, &tenant_sent),
        Vec::<String>::new()
    );
    assert!(
        tenant_events
            .iter()
            .any(|e| field(e, "type") == "Rejection")
    );
    let others = accepted.len() - tenant_sent.len();
    let foreign = tenant_events
        .iter()
        .filter(|e| {
            accepted
                .iter()
                .any(|(id, from, _)| *from != TENANT_SENDER && id == field(e, "queueId"))
        })
        .count();
    assert_eq!(foreign, 0, "none of the {others} other messages' events");
    println!(
        "tenant webhook: {} requests, {} events, {} duplicated ids",
        tenant_requests.len(),
        tenant_events.len(),
        duplicates(&tenant_requests).len()
    );

    // The backlog drains and the metrics say so.
    wait_for(
        SETTLE,
        || (metric(&env, "mailrelay_events_pending{webhook=\"relay:") == Some(0.0)).then_some(()),
        || {
            format!(
                "events still pending:\n{}",
                http_get(env.addrs().http, "/metrics").unwrap_or_default()
            )
        },
    );
    assert!(
        metric(
            &env,
            "mailrelay_event_deliveries_total{result=\"delivered\"}"
        )
        .unwrap_or(0.0)
            > 0.0
    );
}

#[test]
fn a_receiver_holding_another_key_finds_every_signature_wrong() {
    let root = tempfile::tempdir().unwrap();
    let _sink = Sink::start(WRONG_KEY_MX, &root.path().join("mx"), Answer::Accept);
    let addr = free_addr(WRONG_KEY_HOOK);
    let receiver = Receiver::start(addr, &root.path().join("hook"), "not-the-relays-key");
    let env = Env::start(setup(
        WRONG_KEY_MX,
        addr,
        None,
        &root.path().join("tenant-mail"),
    ));
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(
        REMOTE_SENDER,
        &["bob@events-mx.test"],
        "Subject: k\r\n\r\nk\r\n",
    );
    assert!(sent.queue_id().is_some(), "{sent:?}");
    smtp.quit();
    let requests = wait_for(
        SETTLE,
        || Some(receiver.requests()).filter(|r| !r.is_empty()),
        || format!("no request reached the receiver\n{}", env.relay.log_text()),
    );
    let verdict = check_signatures(&requests);
    let error = verdict.expect_err("the check must fail with the wrong key");
    assert!(error.contains("signature does not match"), "{error}");
    // Refused (401): the relay counts the failure and keeps the events.
    wait_for(
        SETTLE,
        || metric(&env, "mailrelay_event_deliveries_total{result=\"failed\"}").filter(|n| *n > 0.0),
        || {
            format!(
                "no failed delivery counted:\n{}",
                http_get(env.addrs().http, "/metrics").unwrap_or_default()
            )
        },
    );
}
