//! Start-up: the arrival events a crash may have kept from the event log
//! come again, with the ids they had, for exactly the messages that never
//! got further than the spool.

use std::net::Ipv4Addr;

use super::Events;
use super::record::{EventType, event_id};
use crate::spool::{Envelope, RecipientState, Spool};
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

fn envelope(sender: &str, helo: &str) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: vec!["bob@remote.example".into()],
        received_at: jiff::Timestamp::now().as_second(),
        client_ip: Ipv4Addr::new(192, 0, 2, 1).into(),
        helo: helo.into(),
        auth: None,
        tls: false,
        size: 10,
        smtputf8: false,
        body_8bit: false,
        handed_off: None,
    }
}

#[tokio::test]
async fn only_messages_never_attempted_get_their_reception_again_with_the_same_id() {
    let (rt, _secrets) = runtime_from(MANIFESTS, &[("hook/k", b"key")]);
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&dir.path().join("spool")).await.unwrap();
    let waiting = spool.new_id();
    spool
        .commit(
            &waiting,
            &envelope("a@shop.example", "client.example"),
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    let tried = spool.new_id();
    spool
        .commit(
            &tried,
            &envelope("a@shop.example", "client.example"),
            b"x\r\n",
        )
        .await
        .unwrap();
    let deferred = RecipientState::Deferred {
        attempts: 1,
        next_attempt: 0,
        last_reply: "451 later".into(),
    };
    spool.record(&tried, &[(0, deferred)]).await.unwrap();
    let notice = spool.new_id();
    spool
        .commit(&notice, &envelope("", "mx.test"), b"x\r\n")
        .await
        .unwrap();

    let events = Events::open(&dir.path().join("events"), "mail/test".into(), "p".into()).unwrap();
    assert_eq!(events.recover(&rt, &spool), 1);
    let log = events.inner.log.as_ref().unwrap();
    // The writer makes it durable, then the backlog shows it.
    let mut batch = log.backlog.batch("relay:http://127.0.0.1:9/e", 0, 10);
    for _ in 0..200 {
        if !batch.entries.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        batch = log.backlog.batch("relay:http://127.0.0.1:9/e", 0, 10);
    }
    assert_eq!(batch.entries.len(), 1);
    let event: serde_json::Value = serde_json::from_str(&batch.entries[0].json).unwrap();
    assert_eq!(event["type"], "Reception");
    assert_eq!(event["queueId"], waiting.to_string());
    assert_eq!(
        event["id"],
        event_id(&waiting.to_string(), Some(0), EventType::Reception, 0, "")
    );
    assert!(
        event.get("listener").is_none(),
        "not kept by the spool: {event}"
    );
}
