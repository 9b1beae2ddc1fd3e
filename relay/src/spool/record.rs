//! Record framing: the unit the writer appends and recovery replays.
//!
//! A frame is `[magic u32][kind u8][len u32][crc32 u32][payload; len]`,
//! integers little-endian. The CRC covers the segment's salt, the kind, the
//! length and the payload: the kind and length are checked too, and a
//! frame only verifies inside the segment it was written for. The salt
//! matters when recovery hunts for the next good record after a damaged
//! one: a message body that happens to contain bytes framed like a record
//! (say, a spool segment sent as an attachment) cannot pass for a record,
//! because its sender never knew the salt.
//!
//! Every payload starts with the queue id it is about (`[n u8][n ASCII
//! bytes]`), so replaying records in order needs no other context.

use super::envelope::Envelope;
use super::error::SpoolError;
use super::id::QueueId;

/// Not valid UTF-8 in any byte order (0xF0 must be followed by a
/// continuation byte), so it never occurs in a text body.
pub(crate) const MAGIC: [u8; 4] = 0xC3D2_E1F0u32.to_le_bytes();
pub(crate) const HEADER_LEN: usize = 13;

/// Record kinds. Per-recipient delivery state will be kinds 3 and up;
/// recovery skips kinds it does not know (with a warning) so a downgrade
/// keeps the messages.
pub(crate) mod kind {
    /// `[id][envelope JSON len u32][envelope JSON][body]`
    pub const MESSAGE: u8 = 1;
    /// `[id]`: the message is gone (delivered, bounced or deleted).
    pub const REMOVED: u8 = 2;
}

/// What the bytes at the start of a buffer are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Complete {
        kind: u8,
        payload: &'a [u8],
    },
    /// The buffer ends before the frame does.
    Short,
    BadMagic,
    BadCrc,
}

fn checksum(salt: u64, kind: u8, len: u32, parts: &[&[u8]]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&salt.to_le_bytes());
    crc.update(&[kind]);
    crc.update(&len.to_le_bytes());
    for part in parts {
        crc.update(part);
    }
    crc.finalize()
}

/// One frame whose payload is the concatenation of `parts`; `None` if the
/// payload does not fit the u32 length field.
pub(crate) fn encode_frame(salt: u64, kind: u8, parts: &[&[u8]]) -> Option<Vec<u8>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).ok()?;
    let mut out = Vec::with_capacity(HEADER_LEN + total);
    out.extend_from_slice(&MAGIC);
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(salt, kind, len, parts).to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    Some(out)
}

pub(crate) fn decode_frame(buf: &[u8], salt: u64) -> Frame<'_> {
    let magic_seen = buf.len().min(MAGIC.len());
    if buf[..magic_seen] != MAGIC[..magic_seen] {
        return Frame::BadMagic;
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Frame::Short;
    };
    let kind = header[4];
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    let crc = u32::from_le_bytes([header[9], header[10], header[11], header[12]]);
    let end = usize::try_from(len).map_or(usize::MAX, |l| l.saturating_add(HEADER_LEN));
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Frame::Short;
    };
    if checksum(salt, kind, len, &[payload]) != crc {
        return Frame::BadCrc;
    }
    Frame::Complete { kind, payload }
}

/// A decoded payload.
#[derive(Debug, PartialEq)]
pub(crate) enum Record<'a> {
    Message {
        id: QueueId,
        envelope: Envelope,
        body: &'a [u8],
    },
    Removed {
        id: QueueId,
    },
}

/// Why a payload with a good CRC still cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("unknown record kind {0} (written by a newer mailrelay?)")]
    UnknownKind(u8),
    #[error("payload ends early")]
    Truncated,
    #[error("bad queue id")]
    BadId,
    #[error("bad envelope: {0}")]
    BadEnvelope(serde_json::Error),
}

pub(crate) fn encode_message(
    salt: u64,
    id: &QueueId,
    envelope: &Envelope,
    body: &[u8],
) -> Result<Vec<u8>, SpoolError> {
    let json = serde_json::to_vec(envelope).map_err(|e| SpoolError::Encode {
        id: *id,
        source: e.into(),
    })?;
    let too_large = || SpoolError::TooLarge {
        id: *id,
        bytes: (json.len() + body.len()) as u64,
    };
    let json_len = u32::try_from(json.len()).map_err(|_| too_large())?;
    let id_text = id.to_string();
    let parts: [&[u8]; 5] = [
        &[id_len(&id_text)],
        id_text.as_bytes(),
        &json_len.to_le_bytes(),
        &json,
        body,
    ];
    encode_frame(salt, kind::MESSAGE, &parts).ok_or_else(too_large)
}

pub(crate) fn encode_removed(salt: u64, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
    let id_text = id.to_string();
    encode_frame(
        salt,
        kind::REMOVED,
        &[&[id_len(&id_text)], id_text.as_bytes()],
    )
    .ok_or(SpoolError::TooLarge {
        id: *id,
        bytes: id_text.len() as u64,
    })
}

fn id_len(id_text: &str) -> u8 {
    // Ids are 21 characters; the byte exists so the id can grow.
    u8::try_from(id_text.len()).unwrap_or(u8::MAX)
}

pub(crate) fn parse_record(kind: u8, payload: &[u8]) -> Result<Record<'_>, PayloadError> {
    let (id, rest) = split_id(payload)?;
    match kind {
        kind::MESSAGE => {
            let (len, rest) = split_at_checked(rest, 4)?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            let (json, body) = split_at_checked(
                rest,
                usize::try_from(len).map_err(|_| PayloadError::Truncated)?,
            )?;
            let envelope = serde_json::from_slice(json).map_err(PayloadError::BadEnvelope)?;
            Ok(Record::Message { id, envelope, body })
        }
        kind::REMOVED => Ok(Record::Removed { id }),
        other => Err(PayloadError::UnknownKind(other)),
    }
}

fn split_id(payload: &[u8]) -> Result<(QueueId, &[u8]), PayloadError> {
    let (&len, rest) = payload.split_first().ok_or(PayloadError::Truncated)?;
    let (text, rest) = split_at_checked(rest, usize::from(len))?;
    let id = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(PayloadError::BadId)?;
    Ok((id, rest))
}

fn split_at_checked(buf: &[u8], at: usize) -> Result<(&[u8], &[u8]), PayloadError> {
    buf.split_at_checked(at).ok_or(PayloadError::Truncated)
}

#[cfg(test)]
mod tests {
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
}
