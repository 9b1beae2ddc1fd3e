//! Framing and payload round trips; damaged bytes are errors, never panics.
use proptest::prelude::*;

use super::*;
use crate::spool::tests::envelope;

const SALT: u64 = 0x5EED;

fn id() -> QueueId {
    QueueId::from_parts(1_700_000_000_000, 7, 42)
}

#[test]
fn a_message_round_trips() {
    let env = envelope(3);
    let frame = encode_message(SALT, &id(), &env, b"Subject: x\r\n\r\nhi\r\n").unwrap();
    let Frame::Complete { kind, payload } = decode_frame(&frame, SALT) else {
        panic!("frame does not decode");
    };
    assert_eq!(HEADER_LEN + payload.len(), frame.len());
    assert_eq!(
        parse_record(kind, payload).unwrap(),
        Record::Message {
            id: id(),
            envelope: env,
            body: b"Subject: x\r\n\r\nhi\r\n"
        }
    );
}

#[test]
fn a_removal_round_trips() {
    let frame = encode_removed(SALT, &id()).unwrap();
    let Frame::Complete { kind, payload } = decode_frame(&frame, SALT) else {
        panic!("frame does not decode");
    };
    assert_eq!(
        parse_record(kind, payload).unwrap(),
        Record::Removed { id: id() }
    );
}

fn round_trip(frame: &[u8]) -> Record<'_> {
    let Frame::Complete { kind, payload } = decode_frame(frame, SALT) else {
        panic!("frame does not decode");
    };
    parse_record(kind, payload).unwrap()
}

#[test]
fn states_and_holds_round_trip() {
    let updates = vec![
        (0, RecipientState::Pending),
        (
            3,
            RecipientState::Deferred {
                attempts: 2,
                next_attempt: 1_700_000_000,
                last_reply: "451 4.7.1 later".into(),
            },
        ),
    ];
    let frame = encode_states(SALT, &id(), &updates).unwrap();
    assert!(frame.len() < 160, "a state record is small");
    assert_eq!(round_trip(&frame), Record::States { id: id(), updates });
    for held in [true, false] {
        let frame = encode_held(SALT, &id(), held).unwrap();
        assert_eq!(round_trip(&frame), Record::Held { id: id(), held });
    }
}

#[test]
fn a_notice_round_trips() {
    let about = QueueId::from_parts(1_600_000_000_000, 1, 2);
    for notice in [Notice::Bounce, Notice::DelayWarning] {
        let frame = encode_notice(SALT, &id(), &envelope(1), b"dsn", &about, notice).unwrap();
        assert_eq!(
            round_trip(&frame),
            Record::Notice {
                id: id(),
                envelope: envelope(1),
                body: b"dsn",
                about,
                notice
            }
        );
    }
}

fn state(held: bool, warned: bool) -> DeliveryState {
    DeliveryState {
        recipients: vec![
            RecipientState::Delivered {
                reply: "250 ok".into(),
            },
            RecipientState::Pending,
        ],
        held,
        warned,
    }
}

/// A copy of a message, of a notice and of a copy: the message part is
/// taken over byte for byte, with the state in front of it.
#[test]
fn a_copy_of_any_message_record_round_trips_with_its_state() {
    let about = QueueId::from_parts(1_600_000_000_000, 1, 2);
    let message = encode_message(SALT, &id(), &envelope(1), b"body").unwrap();
    let notice = encode_notice(SALT, &id(), &envelope(1), b"body", &about, Notice::Bounce).unwrap();
    let mut sources = vec![message, notice];
    for flags in [(false, false), (true, false), (false, true), (true, true)] {
        let source = sources.last().unwrap().clone();
        let Frame::Complete { kind, payload } = decode_frame(&source, SALT) else {
            panic!("frame does not decode");
        };
        let (found, part) = message_part(kind, payload).unwrap();
        assert_eq!(found, id());
        let copy = encode_copy(SALT + 1, &id(), part, &state(flags.0, flags.1)).unwrap();
        let Frame::Complete { kind, payload } = decode_frame(&copy, SALT + 1) else {
            panic!("copy does not decode");
        };
        assert_eq!(
            parse_record(kind, payload).unwrap(),
            Record::Copy {
                id: id(),
                envelope: envelope(1),
                body: b"body",
                state: state(flags.0, flags.1),
            }
        );
        sources.push(encode_copy(SALT, &id(), part, &state(flags.0, flags.1)).unwrap());
    }
}

#[test]
fn a_snapshot_round_trips() {
    let frame = encode_snapshot(SALT, &id(), &state(true, false)).unwrap();
    assert_eq!(
        round_trip(&frame),
        Record::Snapshot {
            id: id(),
            state: state(true, false)
        }
    );
}

#[test]
fn carried_event_lines_round_trip() {
    let lines = b"0000\t[\"a\"]\t{}\n0000\t[\"a\"]\t{}\n";
    let frame = encode_events(SALT, 41, 2, lines).unwrap();
    assert_eq!(
        round_trip(&frame),
        Record::Events {
            first: 41,
            count: 2,
            lines
        }
    );
}

#[test]
fn records_without_a_message_have_no_message_part() {
    let removed = encode_removed(SALT, &id()).unwrap();
    assert!(matches!(
        message_part(kind::REMOVED, &removed[HEADER_LEN..]),
        Err(PayloadError::UnknownKind(2))
    ));
    // Cut anywhere before the body: inside the id, the envelope's
    // length or the envelope.
    let message = message_payload(b"body");
    for cut in 0..message.len() - b"body".len() {
        assert!(
            message_part(kind::MESSAGE, &message[..cut]).is_err(),
            "{cut}"
        );
    }
}

#[test]
fn damaged_frames_are_classified() {
    let good = encode_frame(SALT, kind::REMOVED, &[b"0123456789"]).unwrap();
    let flip = |at: usize| {
        let mut f = good.clone();
        f[at] ^= 0x01;
        f
    };
    let mut longer = good.clone();
    longer.extend_from_slice(b"next record");
    let cases: Vec<(&str, Vec<u8>, u64, Frame<'_>)> = vec![
        ("empty", vec![], SALT, Frame::Short),
        ("two magic bytes", good[..2].to_vec(), SALT, Frame::Short),
        (
            "header only",
            good[..HEADER_LEN].to_vec(),
            SALT,
            Frame::Short,
        ),
        (
            "one byte short",
            good[..good.len() - 1].to_vec(),
            SALT,
            Frame::Short,
        ),
        ("zeros", vec![0; 40], SALT, Frame::BadMagic),
        ("first magic byte wrong", flip(0), SALT, Frame::BadMagic),
        ("kind flipped", flip(4), SALT, Frame::BadCrc),
        ("length grown", flip(5), SALT, Frame::Short),
        ("crc flipped", flip(9), SALT, Frame::BadCrc),
        ("payload flipped", flip(HEADER_LEN + 3), SALT, Frame::BadCrc),
        (
            "another segment's salt",
            good.clone(),
            SALT + 1,
            Frame::BadCrc,
        ),
    ];
    for (name, bytes, salt, want) in cases {
        assert_eq!(decode_frame(&bytes, salt), want, "{name}");
    }
    let Frame::Complete { payload, .. } = decode_frame(&longer, SALT) else {
        panic!("trailing bytes belong to the next frame");
    };
    assert_eq!(payload, b"0123456789");
}

#[test]
fn a_shrunk_length_fails_the_crc() {
    let mut frame = encode_frame(SALT, kind::REMOVED, &[b"0123456789"]).unwrap();
    frame[5] = 4;
    assert_eq!(decode_frame(&frame, SALT), Frame::BadCrc);
}

#[test]
fn bad_payloads_are_errors_not_panics() {
    let cases: Vec<(&str, u8, Vec<u8>)> = vec![
        ("empty", kind::REMOVED, vec![]),
        ("id cut", kind::REMOVED, b"\x15ABC".to_vec()),
        ("id not base32", kind::REMOVED, b"\x03!!!".to_vec()),
        (
            "no envelope length",
            kind::MESSAGE,
            message_payload(&[])[..23].to_vec(),
        ),
        (
            "envelope cut",
            kind::MESSAGE,
            message_payload(&[])[..40].to_vec(),
        ),
        ("unknown kind", 9, message_payload(&[])),
        ("held without flag", kind::HELD, held_payload(&[])),
        ("held flag 7", kind::HELD, held_payload(&[7])),
        ("held two flags", kind::HELD, held_payload(&[1, 1])),
        ("states not JSON", kind::STATES, held_payload(b"[[0,")),
        ("states not a list", kind::STATES, held_payload(b"{}")),
        ("notice without about", kind::NOTICE, held_payload(&[])),
        ("notice kind 9", kind::NOTICE, notice_payload(9)),
        ("events without a count", kind::EVENTS, vec![0; 11]),
    ];
    for (name, kind, payload) in cases {
        assert!(parse_record(kind, &payload).is_err(), "{name}");
    }
    let mut bad_json = message_payload(b"body");
    bad_json[26] = b'!';
    assert!(matches!(
        parse_record(kind::MESSAGE, &bad_json),
        Err(PayloadError::BadEnvelope(_))
    ));
}

/// `[id][rest]`
fn held_payload(rest: &[u8]) -> Vec<u8> {
    let mut payload = vec![21];
    payload.extend_from_slice(id().to_string().as_bytes());
    payload.extend_from_slice(rest);
    payload
}

fn notice_payload(code: u8) -> Vec<u8> {
    let about = id().to_string();
    let mut payload = held_payload(&[21]);
    payload.extend_from_slice(about.as_bytes());
    payload.push(code);
    payload.extend_from_slice(&message_payload(b"x")[22..]);
    payload
}

fn message_payload(body: &[u8]) -> Vec<u8> {
    let frame = encode_message(SALT, &id(), &envelope(1), body).unwrap();
    frame[HEADER_LEN..].to_vec()
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), kind in any::<u8>()) {
        let _ = decode_frame(&bytes, SALT);
        let _ = parse_record(kind, &bytes);
        let mut framed = MAGIC.to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode_frame(&framed, SALT);
    }

    #[test]
    fn any_body_round_trips(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let frame = encode_message(SALT, &id(), &envelope(2), &body).unwrap();
        let Frame::Complete { kind, payload } = decode_frame(&frame, SALT) else {
            panic!("frame does not decode");
        };
        let Record::Message { body: got, .. } = parse_record(kind, payload).unwrap() else {
            panic!("not a message");
        };
        prop_assert_eq!(got, &body[..]);
    }
}
