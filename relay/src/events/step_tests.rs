//! An event emitted ahead of a spool step is on disk, and in the senders'
//! backlog, by the time the step returns: the spool writer flushed the
//! event log before writing the step. The log's own thread is put off
//! for an hour here, so nothing else can have written it.

use std::net::Ipv4Addr;
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

#[tokio::test]
async fn events_before_a_step_are_written_by_the_spool_writer_before_the_step_and_not_by_new_mail()
{
    let (rt, _secrets) = runtime_from(MANIFESTS, &[("hook/k", b"key")]);
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&dir.path().join("spool")).await.unwrap();
    let events = Events::open_lazily(
        &dir.path().join("events"),
        "mail/test".into(),
        "p".into(),
        Duration::from_secs(3600),
    )
    .unwrap();
    spool.set_events(events.clone());
    let backlog = &events.inner.log.as_ref().unwrap().backlog;
    let ids = |backlog: &super::log::Backlog| -> Vec<String> {
        backlog
            .batch(HOOK, 0, 10)
            .entries
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.json).unwrap()["id"].to_string())
            .collect()
    };

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
    // New mail is no step an event precedes: its batch leaves the log be.
    let other = spool.new_id();
    spool.commit(&other, &envelope(), b"y\r\n").await.unwrap();
    assert_eq!(ids(backlog), Vec::<String>::new());

    let q = spool.queued_one(&id).unwrap().unwrap();
    let delivered = build::attempted(
        &events,
        &q,
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
    );
    events.emit_before_step(&rt, std::slice::from_ref(&delivered));
    assert_eq!(ids(backlog), Vec::<String>::new(), "nothing flushed yet");
    spool.remove(&id).await.unwrap();
    let want: Vec<String> = [&reception[0], &delivered]
        .iter()
        .map(|e| format!("\"{}\"", e.id))
        .collect();
    assert_eq!(
        ids(backlog),
        want,
        "both, in order, once the removal returned"
    );
    let on_disk =
        std::fs::read_to_string(dir.path().join("events").join(format!("{:020}.log", 0))).unwrap();
    assert!(on_disk.contains(&delivered.id), "{on_disk}");
}
