//! Every kind of event, as the code builds it, against the committed
//! JSON Schema (`relay/events.schema.json`), checked by Python's
//! `jsonschema` (the test venv's, see tests/lib/deps.sh).

use std::io::Write;

use super::build::{self, Arrived, Peer, Refused};
use super::record::{EventType, Tls};
use super::testing::events;
use crate::spool::{Envelope, QueueId, Queued, RecipientState};

fn queued() -> Queued {
    let id = QueueId::from_parts(1_700_000_000_000, 1, 7);
    Queued {
        id,
        envelope: Envelope {
            sender: "app@shop.test".into(),
            recipients: vec!["a@remote.test".into(), "b@remote.test".into()],
            received_at: jiff::Timestamp::now().as_second() - 30,
            client_ip: "192.0.2.7".parse().unwrap(),
            helo: "client.test".into(),
            auth: Some("app@shop.test".into()),
            tls: true,
            size: 1234,
            smtputf8: false,
            body_8bit: false,
            handed_off: None,
        },
        recipients: vec![RecipientState::Pending; 2],
        held: false,
        warned: false,
    }
}

fn every_kind() -> Vec<super::Event> {
    let ev = events();
    let q = queued();
    let mut out = build::reception(
        &ev,
        &q.id,
        &q.envelope,
        &Arrived {
            listener: Some("submission"),
            tls: Some("TLSv1_3 with cipher TLS13_AES_128_GCM_SHA256"),
            dkim_signed: true,
            message_id: Some("<m1@shop.test>".into()),
        },
    );
    out.extend(build::arrival(&ev, &q));
    out.push(build::rejection(
        &ev,
        Refused {
            listener: "smtp",
            client_ip: "2001:db8::1".parse().unwrap(),
            auth_user: None,
            sender: Some(String::new()),
            recipient: Some("nobody@shop.test".into()),
            reply: "550 5.1.1 No such user here".into(),
        },
    ));
    let peer = Peer {
        host: Some("mx1.remote.test".into()),
        ip: Some("127.0.0.2".parse().unwrap()),
        tls: Some(Tls {
            version: None,
            cipher: None,
            verified: true,
        }),
    };
    for (kind, reply, class) in [
        (EventType::Delivery, "250 2.0.0 Ok: queued as X", ""),
        (
            EventType::TransientFailure,
            "connection refused by 127.0.0.2:25",
            "Network",
        ),
        (
            EventType::Bounce,
            "5.1.10 null MX: remote.test accepts no mail",
            "BadDomain",
        ),
        (
            EventType::Expiration,
            "4.4.7 message expired in the queue; last reply: 451 4.7.1 later",
            "Other",
        ),
    ] {
        out.push(build::attempted(
            &ev,
            &q,
            &build::Attempted {
                kind,
                index: 1,
                attempt: 3,
                route: "mx",
                reply,
                class,
                peer: Some(&peer),
                message_id: Some("<m1@shop.test>"),
            },
        ));
    }
    // An expiry while waiting: no route, no server.
    let mut waited = q.clone();
    waited.recipients[0] = RecipientState::Deferred {
        attempts: 4,
        next_attempt: 0,
        last_reply: "451 4.7.1 later".into(),
    };
    let expired = RecipientState::Failed {
        reply: "4.4.7 message expired in the queue; last reply: 451 4.7.1 later".into(),
    };
    out.extend(super::outcomes::expired(
        &ev,
        &waited,
        &[(0, expired)],
        |_| "Throttled",
    ));
    let mut warning = build::about(
        &ev,
        EventType::DelayWarning,
        &q.id,
        &q.envelope,
        Some(0),
        0,
        "",
    );
    warning.message_id = Some("<m1@shop.test>".into());
    out.push(warning);
    out.extend(build::handoff(&ev, &q, "sent", "10.0.0.8:2526"));
    let mut handed = q.clone();
    handed.envelope.handed_off = Some(crate::spool::HandedOff {
        lineage: vec!["edge-1".into()],
        warned: false,
    });
    out.extend(build::arrival(&ev, &handed));
    for action in ["delete", "hold", "release", "flush"] {
        out.push(build::admin(&ev, &q, action, "1"));
    }
    out
}

/// Validate JSON lines against the schema with Python's jsonschema;
/// returns what it printed for the failures.
pub(crate) fn validate(lines: &[String]) -> Result<(), String> {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/events.schema.json");
    let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    for l in lines {
        writeln!(file, "{l}").map_err(|e| e.to_string())?;
    }
    let script = r#"
import json, sys
from jsonschema import Draft202012Validator, FormatChecker
v = Draft202012Validator(json.load(open(sys.argv[1])), format_checker=FormatChecker())
bad = 0
for n, line in enumerate(open(sys.argv[2])):
    for err in v.iter_errors(json.loads(line)):
        bad += 1
        print(f"line {n}: {err.message} at {list(err.absolute_path)}")
sys.exit(1 if bad else 0)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(schema)
        .arg(file.path())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_kind_of_event_is_accepted_by_the_committed_schema() {
    let events = every_kind();
    let kinds: std::collections::BTreeSet<EventType> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.len(),
        EventType::ALL.len(),
        "a kind is missing: {kinds:?}"
    );
    let lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    validate(&lines).unwrap_or_else(|e| panic!("schema says:\n{e}"));
}

#[test]
fn the_schema_refuses_what_is_not_an_event() {
    let good = serde_json::to_value(&every_kind()[0]).unwrap();
    let mut cases = Vec::new();
    for (field, value) in [
        ("type", serde_json::json!("Delivered")),
        ("id", serde_json::json!("not-hex")),
        ("clientIp", serde_json::json!("999.1.1.1")),
        ("surprise", serde_json::json!(1)),
    ] {
        let mut v = good.clone();
        v[field] = value;
        cases.push(v.to_string());
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("queueId");
    cases.push(missing.to_string());
    for case in cases {
        assert!(
            validate(std::slice::from_ref(&case)).is_err(),
            "accepted: {case}"
        );
    }
}
