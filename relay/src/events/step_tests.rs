//! An event emitted ahead of a spool step is durable by the time the step
//! returns: the spool writer carried it in the step's batch. A crash (a
//! copy of the spool directory taken while the relay runs) finds it, and
//! the event log takes it back at start-up. The log's own thread is put
//! off for an hour here, so nothing else can have written it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Events;
use super::build::{self, Arrived, Attempted};
use super::record::EventType;
use crate::spool::{Envelope, Spool};
use crate::testutil::runtime_from;

const MANIFESTS: &str = r#"
apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata: {name: test}
spec:
  hostname: mx.test
  events:
    webhooks:
    - {url: 'http://127.0.0.1:9/e', secret: {name: hook, key: k}}
"#;
const HOOK: &str = "relay:http://127.0.0.1:9/e";

fn envelope() -> Envelope {
    Envelope {
        sender: "a@shop.example".into(),
        recipients: vec!["bob@remote.example".into()],
        received_at: jiff::Timestamp::now().as_second(),
        client_ip: Ipv4Addr::new(192, 0, 2, 1).into(),
        helo: "client.example".into(),
        auth: None,
        tls: false,
        size: 10,
        smtputf8: false,
        body_8bit: false,
        handed_off: None,
    }
}

const LAZY: Duration = Duration::from_secs(3600);

fn open_events(spool_dir: &Path) -> Events {
    Events::open_lazily(
        &spool_dir.join("events"),
        "mail/test".into(),
        "p".into(),
        LAZY,
    )
    .unwrap()
}

/// The event ids a webhook would be sent, in order.
fn sent(events: &Events) -> Vec<String> {
    let backlog = &events.inner.log.as_ref().unwrap().backlog;
    backlog
        .batch(HOOK, 0, 10)
        .entries
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.json).unwrap()["id"].to_string())
        .collect()
}

/// The Delivery event of the first attempt at `q`'s first recipient.
fn delivery(events: &Events, q: &crate::spool::Queued) -> super::Event {
    build::attempted(
        events,
        q,
        &Attempted {
            kind: EventType::Delivery,
            index: 0,
            attempt: 1,
            route: "mx",
            reply: "250 2.0.0 Ok",
            class: "",
            peer: None,
            message_id: None,
        },
    )
}

fn quoted(ids: &[&super::Event]) -> Vec<String> {
    ids.iter().map(|e| format!("\"{}\"", e.id)).collect()
}

/// What a crash at this instant leaves: a copy of every file.
fn crash_copy(from: &Path, to: &Path) -> PathBuf {
    for entry in walk(from) {
        let target = to.join(entry.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    to.to_path_buf()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn event_log_text(spool_dir: &Path) -> String {
    walk(&spool_dir.join("events"))
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

#[tokio::test]
async fn a_steps_events_are_carried_in_its_batch_and_taken_back_after_a_crash() {
    let (rt, _secrets) = runtime_from(MANIFESTS, &[("hook/k", b"key")]);
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let (spool, _) = Spool::open(&spool_dir).await.unwrap();
    let events = open_events(&spool_dir);
    spool.set_events(events.clone());

    let id = spool.new_id();
    spool.commit(&id, &envelope(), b"x\r\n").await.unwrap();
    let arrived = Arrived {
        listener: Some("smtp"),
        tls: None,
        dkim_signed: false,
        message_id: None,
    };
    let reception = build::reception(&events, &id, &envelope(), &arrived);
    for e in &reception {
        events.emit(&rt, e);
    }
    // New mail is no step an event precedes: its batch carries nothing.
    let other = spool.new_id();
    spool.commit(&other, &envelope(), b"y\r\n").await.unwrap();
    let before_step = crash_copy(&spool_dir, &dir.path().join("crash-1"));

    let q = spool.queued_one(&id).unwrap().unwrap();
    let delivered = delivery(&events, &q);
    events.emit_before_step(&rt, std::slice::from_ref(&delivered));
    spool.remove(&id).await.unwrap();
    let after_step = crash_copy(&spool_dir, &dir.path().join("crash-2"));
    assert_eq!(
        sent(&events),
        Vec::<String>::new(),
        "the log itself wrote nothing"
    );
    assert!(!event_log_text(&spool_dir).contains(&delivered.id));

    {
        let (spool, _) = Spool::open(&before_step).await.unwrap();
        let events = open_events(&before_step);
        spool.set_events(events.clone());
        assert_eq!(
            sent(&events),
            Vec::<String>::new(),
            "new mail carried nothing"
        );
    }
    let (spool, _) = Spool::open(&after_step).await.unwrap();
    let events = open_events(&after_step);
    spool.set_events(events.clone());
    assert_eq!(
        sent(&events),
        quoted(&[&reception[0], &delivered]),
        "both, in order: every line before the step was carried with it"
    );
    let text = event_log_text(&after_step);
    assert!(
        text.contains(&delivered.id) && text.contains(&reception[0].id),
        "{text}"
    );
    drop((spool, events));

    // Taken back once: a second start finds them in the log and adds none.
    let (spool, _) = Spool::open(&after_step).await.unwrap();
    let events = open_events(&after_step);
    spool.set_events(events.clone());
    assert_eq!(sent(&events), quoted(&[&reception[0], &delivered]));
}

#[tokio::test]
async fn a_segment_carrying_event_lines_goes_only_once_the_event_log_has_them() {
    let (rt, _secrets) = runtime_from(MANIFESTS, &[("hook/k", b"key")]);
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    // Every batch fills its segment: the removal's segment is spent at once.
    let options = crate::spool::SpoolOptions::default()
        .segment_bytes(1)
        .compaction(false);
    let (spool, _) = Spool::open_with(&spool_dir, options).await.unwrap();
    let events = open_events(&spool_dir);
    spool.set_events(events.clone());
    let segments = || walk(&spool_dir.join("queue")).len();

    let id = spool.new_id();
    spool.commit(&id, &envelope(), b"x\r\n").await.unwrap();
    let q = spool.queued_one(&id).unwrap().unwrap();
    let delivered = delivery(&events, &q);
    events.emit_before_step(&rt, std::slice::from_ref(&delivered));
    spool.remove(&id).await.unwrap();
    // The removal's own segment (which carried the line) is spent too, but
    // goes only with the next turn; make one.
    let again = spool.new_id();
    spool.commit(&again, &envelope(), b"y\r\n").await.unwrap();
    spool.remove(&again).await.unwrap();
    assert!(
        segments() <= 2,
        "spent segments were deleted: {}",
        segments()
    );
    assert!(
        event_log_text(&spool_dir).contains(&delivered.id),
        "deleting the segment that carried it made the event log sync it"
    );
    assert_eq!(sent(&events), quoted(&[&delivered]));
}
