//! The event record: one JSON object per event, camelCase, versioned
//! (`version`), described by `relay/events.schema.json`. Fields that do not
//! apply to an event are left out, never written as empty strings.

use serde::{Deserialize, Serialize};

pub use mailrelay_crds::events::EventType;

/// The record format written by this code; a new field keeps it, a
/// changed meaning bumps it.
pub const EVENT_VERSION: u32 = 1;

/// One event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub version: u32,
    /// Derived from what the event is about (see [`event_id`]): the same
    /// event emitted again (a retry after a crash, a Reception rebuilt at
    /// start-up) has the same id, so a receiver can drop the duplicate.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// RFC 3339, UTC.
    pub time: String,
    /// The Relay (`namespace/name`) and the pod that saw the event.
    pub relay: String,
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    /// The Message-ID header, as written (angle brackets included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The envelope sender; empty for the null sender (a bounce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// Bytes of the message as queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// How it left or was to leave: lmtp, smtp, maildir, mx, smarthost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// The bounce class (`delivery::classify`) of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Delivery attempts made for this recipient, this one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim_signed: Option<bool>,
    /// Seconds from reception to this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_seconds: Option<i64>,
    /// Admin: delete, hold, release, flush. HandOff: sent, received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// A reply, ours or the remote server's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// The SMTP code, when the text came from a server (or is ours as one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The RFC 3463 enhanced status code, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    /// Take a reply line apart: `550 5.1.1 <bob@x>: unknown` gives code
    /// 550, enhanced 5.1.1; our own words (`connection refused by …`, or
    /// `5.1.10 null MX`) keep what they have.
    pub fn parse(text: &str) -> Reply {
        let first = text.split_whitespace().next().unwrap_or_default();
        let code = (first.len() == 3 && first.bytes().all(|b| b.is_ascii_digit()))
            .then(|| first.parse::<u16>().ok())
            .flatten();
        let enhanced = crate::queue::decide::enhanced_code(text).map(str::to_string);
        Reply {
            code,
            enhanced,
            text: text.to_string(),
        }
    }
}

/// What protected a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// Protocol version (`TLSv1_3`), when the transport tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// The peer's certificate was checked against its name.
    pub verified: bool,
}

/// The id of an event about a message: a hash of what makes the event
/// this event — queue id, recipient index, type, attempt and, for
/// events that can repeat at the same attempt (admin actions, hand-offs),
/// a detail — so emitting it twice gives one id, not a random one.
///
/// FNV-1a, 128 bits, of `queue/rcpt/type/attempt/detail`: an id only
/// has to be the same for the same event and differ between events, and
/// every input is ours (the queue id, our own reply text); nothing here
/// needs a cryptographic hash. SHA-256 cost about 5,000 instructions an
/// event (callgrind; valgrind hides the SHA extensions), this some
/// hundreds. The function is part of the id's meaning: a relay upgraded
/// across a crash gives a replayed event a new id once, when it changes.
pub fn event_id(
    queue_id: &str,
    recipient: Option<usize>,
    kind: EventType,
    attempt: u32,
    detail: &str,
) -> String {
    use std::fmt::Write;
    let mut h = Fnv128::default();
    // Writes into the hash cannot fail.
    let _ = match recipient {
        Some(i) => write!(h, "{queue_id}/{i}/{}/{attempt}/{detail}", kind.as_str()),
        None => write!(h, "{queue_id}/-/{}/{attempt}/{detail}", kind.as_str()),
    };
    hex(&h.0.to_be_bytes())
}

/// FNV-1a with the 128-bit parameters (draft-eastlake-fnv).
struct Fnv128(u128);

impl Default for Fnv128 {
    fn default() -> Fnv128 {
        Fnv128(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d)
    }
}

impl std::fmt::Write for Fnv128 {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        const PRIME: u128 = (1 << 88) + 0x13b;
        for &b in s.as_bytes() {
            self.0 = (self.0 ^ u128::from(b)).wrapping_mul(PRIME);
        }
        Ok(())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The Message-ID header of a message (RFC 5322 §3.6.4), looked for in
/// the header section only; folded continuation lines are joined.
pub fn message_id(message: &[u8]) -> Option<String> {
    const NAME: &[u8] = b"message-id:";
    // Line by line with memchr, up to the empty line that ends the header
    // section: splitting byte by byte after a search for that line over
    // the whole message cost thousands of instructions a message, twice
    // (reception and delivery).
    let header = message;
    let mut at = 0;
    while at < header.len() {
        let next = memchr::memchr(b'\n', &header[at..]).map_or(header.len(), |n| at + n + 1);
        let line = &header[at..next];
        at = next;
        if line == b"\r\n" {
            break;
        }
        // RFC 5322 §2.2: no space before the colon in a header field.
        if line.len() < NAME.len() || !line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[NAME.len()..]).into_owned();
        while at < header.len() && matches!(header[at], b' ' | b'\t') {
            let next = memchr::memchr(b'\n', &header[at..]).map_or(header.len(), |n| at + n + 1);
            value.push_str(&String::from_utf8_lossy(&header[at..next]));
            at = next;
        }
        value.retain(|c| !c.is_whitespace());
        return (!value.is_empty()).then_some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_taken_apart_into_code_enhanced_code_and_text() {
        let cases = [
            ("250 2.0.0 Ok: queued as 1", Some(250), Some("2.0.0")),
            ("550 5.1.1 <b@x>: unknown", Some(550), Some("5.1.1")),
            ("421 too busy", Some(421), None),
            ("5.1.10 null MX: x.test takes no mail", None, Some("5.1.10")),
            ("connection refused by 127.0.0.2:25", None, None),
            ("", None, None),
        ];
        for (text, code, enhanced) in cases {
            let r = Reply::parse(text);
            assert_eq!((r.code, r.enhanced.as_deref()), (code, enhanced), "{text}");
            assert_eq!(r.text, text);
        }
    }

    #[test]
    fn an_event_id_is_the_same_for_the_same_event_and_differs_otherwise() {
        let a = event_id("Q1", Some(0), EventType::Delivery, 1, "");
        assert_eq!(a, event_id("Q1", Some(0), EventType::Delivery, 1, ""));
        assert_eq!(a.len(), 32);
        let others = [
            event_id("Q2", Some(0), EventType::Delivery, 1, ""),
            event_id("Q1", Some(1), EventType::Delivery, 1, ""),
            event_id("Q1", None, EventType::Delivery, 1, ""),
            event_id("Q1", Some(0), EventType::Bounce, 1, ""),
            event_id("Q1", Some(0), EventType::Delivery, 2, ""),
            event_id("Q1", Some(0), EventType::Delivery, 1, "x"),
        ];
        for o in others {
            assert_ne!(a, o);
        }
    }

    #[test]
    fn the_id_hash_is_fnv_1a_128_so_ids_stay_the_same_across_builds() {
        use std::fmt::Write;
        // draft-eastlake-fnv's test vector for "a".
        let mut h = Fnv128::default();
        h.write_str("a").unwrap();
        assert_eq!(h.0, 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
        let id = event_id("Q1", Some(0), EventType::Delivery, 1, "");
        let mut h = Fnv128::default();
        h.write_str("Q1/0/Delivery/1/").unwrap();
        assert_eq!(id, format!("{:032x}", h.0));
    }

    #[test]
    fn the_message_id_comes_from_the_header_section_only() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (
                b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody",
                Some("<a@b>"),
            ),
            (b"message-id:\r\n <folded@b>\r\n\r\n", Some("<folded@b>")),
            (b"Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n", None),
            (b"Subject: no id\r\n\r\n", None),
            (b"Message-Id:    \r\n\r\n", None),
        ];
        for (msg, want) in cases {
            assert_eq!(
                message_id(msg).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }
}
