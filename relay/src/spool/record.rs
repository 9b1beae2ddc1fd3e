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
//! Every payload but an events record's starts with the queue id it is
//! about (`[n u8][n ASCII bytes]`), so replaying records in order needs no
//! other context.

use super::envelope::Envelope;
use super::error::SpoolError;
use super::id::QueueId;
use super::types::{DeliveryState, Notice, RecipientState};

/// Not valid UTF-8 in any byte order (0xF0 must be followed by a
/// continuation byte), so it never occurs in a text body.
pub(crate) const MAGIC: [u8; 4] = 0xC3D2_E1F0u32.to_le_bytes();
pub(crate) const HEADER_LEN: usize = 13;

/// Record kinds. Recovery skips kinds it does not know (with a warning)
/// so a downgrade keeps the messages, if not their delivery state.
pub(crate) mod kind {
    /// `[id][envelope JSON len u32][envelope JSON][body]`
    pub(crate) const MESSAGE: u8 = 1;
    /// `[id]`: the message is gone (delivered, bounced or deleted).
    pub(crate) const REMOVED: u8 = 2;
    /// `[id][JSON [[recipient index, state], ...]]`: new delivery states
    /// for some recipients; a later state for a recipient wins.
    pub(crate) const STATES: u8 = 3;
    /// `[id][0 | 1]`: released / held.
    pub(crate) const HELD: u8 = 4;
    /// `[id][about id][notice u8][envelope JSON len u32][envelope JSON]
    /// [body]`: a message the relay generated about message `about`, and
    /// what it does to `about` (1 = bounce: removes it, 2 = delay warning:
    /// marks it warned). One frame, so both effects land or neither does.
    pub(crate) const NOTICE: u8 = 5;
    /// `[id][flags u8][states JSON len u32][states JSON [state, ...]]
    /// [envelope JSON len u32][envelope JSON][body]`: a compacted copy of
    /// a message with its whole delivery state (flags: 1 = held, 2 =
    /// warned; states for every recipient, in order). One frame, so the
    /// message never lands without its state.
    pub(crate) const COPY: u8 = 6;
    /// `[id][flags u8][states JSON [state, ...]]`: the whole delivery
    /// state of a message whose message record stays where it is.
    pub(crate) const SNAPSHOT: u8 = 7;
    /// `[first seq u64][count u32][lines]`: delivery-event lines (the
    /// event log's own line format, sequence numbers `first..first+count`)
    /// carried in the batch of the steps they precede, so that one
    /// fdatasync makes both durable (see `events`). About no message.
    pub(crate) const EVENTS: u8 = 8;
}

const FLAG_HELD: u8 = 1;
const FLAG_WARNED: u8 = 2;

const NOTICE_BOUNCE: u8 = 1;
const NOTICE_DELAY_WARNING: u8 = 2;

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
    States {
        id: QueueId,
        updates: Vec<(usize, RecipientState)>,
    },
    Held {
        id: QueueId,
        held: bool,
    },
    Notice {
        id: QueueId,
        envelope: Envelope,
        body: &'a [u8],
        about: QueueId,
        notice: Notice,
    },
    Copy {
        id: QueueId,
        envelope: Envelope,
        body: &'a [u8],
        state: DeliveryState,
    },
    Snapshot {
        id: QueueId,
        state: DeliveryState,
    },
    Events {
        first: u64,
        count: u32,
        lines: &'a [u8],
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
    #[error("bad recipient states: {0}")]
    BadStates(serde_json::Error),
    #[error("bad flag byte {0}")]
    BadFlag(u8),
}

pub(crate) fn encode_message(
    salt: u64,
    id: &QueueId,
    envelope: &Envelope,
    body: &[u8],
) -> Result<Vec<u8>, SpoolError> {
    encode_with_body(salt, kind::MESSAGE, id, &[], envelope, body)
}

pub(crate) fn encode_notice(
    salt: u64,
    id: &QueueId,
    envelope: &Envelope,
    body: &[u8],
    about: &QueueId,
    notice: Notice,
) -> Result<Vec<u8>, SpoolError> {
    let about_text = about.to_string();
    let code = match notice {
        Notice::Bounce => NOTICE_BOUNCE,
        Notice::DelayWarning => NOTICE_DELAY_WARNING,
    };
    let extra: [&[u8]; 3] = [&[id_len(&about_text)], about_text.as_bytes(), &[code]];
    encode_with_body(salt, kind::NOTICE, id, &extra, envelope, body)
}

/// `[id][extra...][envelope JSON len u32][envelope JSON][body]`
fn encode_with_body(
    salt: u64,
    kind: u8,
    id: &QueueId,
    extra: &[&[u8]],
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
    let json_len = u32::try_from(json.len())
        .map_err(|_| too_large())?
        .to_le_bytes();
    let id_text = id.to_string();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(5 + extra.len());
    let id_len = [id_len(&id_text)];
    parts.extend([&id_len[..], id_text.as_bytes()]);
    parts.extend_from_slice(extra);
    parts.extend([&json_len[..], &json, body]);
    encode_frame(salt, kind, &parts).ok_or_else(too_large)
}

pub(crate) fn encode_states(
    salt: u64,
    id: &QueueId,
    updates: &[(usize, RecipientState)],
) -> Result<Vec<u8>, SpoolError> {
    let json = serde_json::to_vec(updates).map_err(|e| SpoolError::Encode {
        id: *id,
        source: e.into(),
    })?;
    encode_small(salt, kind::STATES, id, &json)
}

pub(crate) fn encode_held(salt: u64, id: &QueueId, held: bool) -> Result<Vec<u8>, SpoolError> {
    encode_small(salt, kind::HELD, id, &[u8::from(held)])
}

/// `[id][rest]`
fn encode_small(salt: u64, kind: u8, id: &QueueId, rest: &[u8]) -> Result<Vec<u8>, SpoolError> {
    let id_text = id.to_string();
    encode_frame(salt, kind, &[&[id_len(&id_text)], id_text.as_bytes(), rest]).ok_or(
        SpoolError::TooLarge {
            id: *id,
            bytes: rest.len() as u64,
        },
    )
}

/// A compacted copy: `message` is the `[envelope JSON len u32][envelope
/// JSON][body]` of the message's record (see `message_part`).
pub(crate) fn encode_copy(
    salt: u64,
    id: &QueueId,
    message: &[u8],
    state: &DeliveryState,
) -> Result<Vec<u8>, SpoolError> {
    let (flags, states) = encode_state(id, state)?;
    let too_large = || SpoolError::TooLarge {
        id: *id,
        bytes: message.len() as u64,
    };
    let states_len = u32::try_from(states.len())
        .map_err(|_| too_large())?
        .to_le_bytes();
    let id_text = id.to_string();
    let parts: [&[u8]; 6] = [
        &[id_len(&id_text)],
        id_text.as_bytes(),
        &[flags],
        &states_len,
        &states,
        message,
    ];
    encode_frame(salt, kind::COPY, &parts).ok_or_else(too_large)
}

pub(crate) fn encode_snapshot(
    salt: u64,
    id: &QueueId,
    state: &DeliveryState,
) -> Result<Vec<u8>, SpoolError> {
    let (flags, states) = encode_state(id, state)?;
    let mut rest = Vec::with_capacity(1 + states.len());
    rest.push(flags);
    rest.extend_from_slice(&states);
    encode_small(salt, kind::SNAPSHOT, id, &rest)
}

/// The flags byte and the states JSON of a copy or snapshot.
fn encode_state(id: &QueueId, state: &DeliveryState) -> Result<(u8, Vec<u8>), SpoolError> {
    let json = serde_json::to_vec(&state.recipients).map_err(|e| SpoolError::Encode {
        id: *id,
        source: e.into(),
    })?;
    let flags = if state.held { FLAG_HELD } else { 0 } | if state.warned { FLAG_WARNED } else { 0 };
    Ok((flags, json))
}

/// Event lines `first..first+count`; `None` if they do not fit a frame.
pub(crate) fn encode_events(salt: u64, first: u64, count: u32, lines: &[u8]) -> Option<Vec<u8>> {
    encode_frame(
        salt,
        kind::EVENTS,
        &[&first.to_le_bytes(), &count.to_le_bytes(), lines],
    )
}

pub(crate) fn encode_removed(salt: u64, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
    encode_small(salt, kind::REMOVED, id, &[])
}

fn id_len(id_text: &str) -> u8 {
    // Ids are 21 characters; the byte exists so the id can grow.
    u8::try_from(id_text.len()).unwrap_or(u8::MAX)
}

pub(crate) fn parse_record(kind: u8, payload: &[u8]) -> Result<Record<'_>, PayloadError> {
    if kind == kind::EVENTS {
        let (first, rest) = split_at_checked(payload, 8)?;
        let (count, lines) = split_at_checked(rest, 4)?;
        let first = u64::from_le_bytes(first.try_into().map_err(|_| PayloadError::Truncated)?);
        let count = u32::from_le_bytes(count.try_into().map_err(|_| PayloadError::Truncated)?);
        return Ok(Record::Events {
            first,
            count,
            lines,
        });
    }
    let (id, rest) = split_id(payload)?;
    match kind {
        kind::MESSAGE => {
            let (envelope, body) = split_message(rest)?;
            Ok(Record::Message { id, envelope, body })
        }
        kind::REMOVED => Ok(Record::Removed { id }),
        kind::STATES => {
            let updates = serde_json::from_slice(rest).map_err(PayloadError::BadStates)?;
            Ok(Record::States { id, updates })
        }
        kind::HELD => match rest {
            [0] => Ok(Record::Held { id, held: false }),
            [1] => Ok(Record::Held { id, held: true }),
            [other] => Err(PayloadError::BadFlag(*other)),
            _ => Err(PayloadError::Truncated),
        },
        kind::NOTICE => {
            let (about, rest) = split_id(rest)?;
            let (&code, rest) = rest.split_first().ok_or(PayloadError::Truncated)?;
            let notice = match code {
                NOTICE_BOUNCE => Notice::Bounce,
                NOTICE_DELAY_WARNING => Notice::DelayWarning,
                other => return Err(PayloadError::BadFlag(other)),
            };
            let (envelope, body) = split_message(rest)?;
            Ok(Record::Notice {
                id,
                envelope,
                body,
                about,
                notice,
            })
        }
        kind::COPY => {
            let (flags, rest) = split_flags(rest)?;
            let (len, rest) = split_len(rest)?;
            let (json, rest) = split_at_checked(rest, len)?;
            let recipients = serde_json::from_slice(json).map_err(PayloadError::BadStates)?;
            let (envelope, body) = split_message(rest)?;
            let state = delivery_state(flags, recipients);
            Ok(Record::Copy {
                id,
                envelope,
                body,
                state,
            })
        }
        kind::SNAPSHOT => {
            let (flags, json) = split_flags(rest)?;
            let recipients = serde_json::from_slice(json).map_err(PayloadError::BadStates)?;
            let state = delivery_state(flags, recipients);
            Ok(Record::Snapshot { id, state })
        }
        other => Err(PayloadError::UnknownKind(other)),
    }
}

/// The id and the `[envelope JSON len u32][envelope JSON][body]` of a
/// record that holds a message, without decoding the envelope: what a
/// compacted copy takes over byte for byte.
pub(crate) fn message_part(kind: u8, payload: &[u8]) -> Result<(QueueId, &[u8]), PayloadError> {
    let (id, rest) = split_id(payload)?;
    let message = match kind {
        kind::MESSAGE => rest,
        kind::NOTICE => {
            let (_about, rest) = split_id(rest)?;
            rest.get(1..).ok_or(PayloadError::Truncated)?
        }
        kind::COPY => {
            let (_flags, rest) = split_flags(rest)?;
            let (len, rest) = split_len(rest)?;
            split_at_checked(rest, len)?.1
        }
        other => return Err(PayloadError::UnknownKind(other)),
    };
    // Whole, or the copy would not decode: the envelope's length fits.
    let (len, rest) = split_len(message)?;
    split_at_checked(rest, len)?;
    Ok((id, message))
}

fn split_flags(rest: &[u8]) -> Result<(u8, &[u8]), PayloadError> {
    let (&flags, rest) = rest.split_first().ok_or(PayloadError::Truncated)?;
    if flags & !(FLAG_HELD | FLAG_WARNED) != 0 {
        return Err(PayloadError::BadFlag(flags));
    }
    Ok((flags, rest))
}

fn delivery_state(flags: u8, recipients: Vec<RecipientState>) -> DeliveryState {
    DeliveryState {
        recipients,
        held: flags & FLAG_HELD != 0,
        warned: flags & FLAG_WARNED != 0,
    }
}

/// `[len u32][rest]`
fn split_len(buf: &[u8]) -> Result<(usize, &[u8]), PayloadError> {
    let (len, rest) = split_at_checked(buf, 4)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    Ok((
        usize::try_from(len).map_err(|_| PayloadError::Truncated)?,
        rest,
    ))
}

/// `[envelope JSON len u32][envelope JSON][body]`
fn split_message(rest: &[u8]) -> Result<(Envelope, &[u8]), PayloadError> {
    let (len, rest) = split_len(rest)?;
    let (json, body) = split_at_checked(rest, len)?;
    let envelope = serde_json::from_slice(json).map_err(PayloadError::BadEnvelope)?;
    Ok((envelope, body))
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
#[path = "record_tests.rs"]
mod tests;
