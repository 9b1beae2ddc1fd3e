//! The hand-off protocol on the wire, without sockets.
//!
//! An SMTP-shaped dialogue on the internal listener:
//!
//! ```text
//! S: 220 HOST mailrelay hand-off NONCE
//! C: EHLO NAME
//! S: 250-HOST
//! S: 250-PIPELINING
//! S: 250 XHANDOFF
//! C: XMESSAGE LEN TRANSFER MAC        (then exactly LEN body bytes)
//! S: 250 2.0.0 NEWID queued (handed off from OLDID)
//! ...
//! C: QUIT
//! ```
//!
//! With `PIPELINING` advertised (RFC 2920's keyword, with its meaning:
//! commands may go out in groups, replies come back in their order) the
//! client keeps many XMESSAGEs in flight without waiting for each reply;
//! the server checks each in order, stores them concurrently, so one
//! fdatasync covers many, and still answers each only once it is on disk.
//! Nothing else changes, messages and MACs included, so an old peer that
//! does not advertise it is sent one message at a time, and an old client
//! that ignores it is served as before.
//!
//! `TRANSFER` is the message's queue state (envelope, recipient states,
//! held/warned flags, its id) as base64url JSON; the body follows as raw
//! bytes, counted like BDAT (RFC 3030), so it needs no dot-stuffing and
//! arrives byte for byte. `MAC` is HMAC-SHA256 under the Relay's shared
//! secret over the session's NONCE, the message's sequence number in the
//! session, TRANSFER and the body: the secret never crosses the wire, and
//! a message cannot be forged, altered, or replayed into another session
//! or slot by anyone without it. The channel is not encrypted: it carries
//! mail between pods of one Relay inside the cluster network, where the
//! NetworkPolicy admits only those pods.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mailrelay_crds::configformat::hex;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::spool::{Envelope, RecipientState};

/// What the server answers EHLO with, so a client knows it reached a
/// hand-off listener and not some other SMTP server.
pub(crate) const EXTENSION: &str = "XHANDOFF";
/// Advertised by servers that take report aggregates: `XREPORTS LEN MAC`
/// then LEN bytes of JSON, an array of `PeriodAggregates`, once per
/// session, after the queue. A client sends it only to a server that
/// advertises it, so old peers on either side are unaffected.
pub(crate) const REPORTS: &str = "XREPORTS";
const REPORTS_MAC_CONTEXT: &[u8] = b"mailrelay-handoff-reports-v1\0";
/// Largest aggregates frame a server reads. The frame comes before its
/// MAC is checked (a hand-off session is not authenticated as a whole:
/// each frame carries its own MAC), so it is held like a message: within
/// the session's `MAX_HELD_BYTES`, read as it arrives. A relay whose
/// periods do not fit keeps them in its own spool (see `reports`).
pub(crate) const MAX_REPORTS: u64 = 16 << 20;

/// The MAC of a session's aggregates frame.
pub fn reports_mac(key: &hmac::Key, nonce: &str, body: &[u8]) -> String {
    hex(hmac::sign(key, &reports_input(nonce, body)).as_ref())
}

/// Constant-time check of an aggregates frame's MAC.
pub(crate) fn verify_reports(key: &hmac::Key, nonce: &str, body: &[u8], mac_hex: &str) -> bool {
    let Some(tag) = mailrelay_crds::configformat::unhex(mac_hex) else {
        return false;
    };
    hmac::verify(key, &reports_input(nonce, body), &tag).is_ok()
}

fn reports_input(nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = REPORTS_MAC_CONTEXT.to_vec();
    m.extend_from_slice(nonce.as_bytes());
    m.extend_from_slice(&(body.len() as u64).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Advertised by servers that take XMESSAGEs pipelined.
pub(crate) const PIPELINING: &str = "PIPELINING";
/// Longest command line the server reads: TRANSFER carries the envelope,
/// which can name many recipients.
pub(crate) const MAX_COMMAND: usize = 4 << 20;
/// Bytes of randomness in a session's nonce.
const NONCE_BYTES: usize = 16;
const MAC_CONTEXT: &[u8] = b"mailrelay-handoff-v1\0";

/// The queue state of one message as it moves between relays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Its queue id on the sending relay.
    pub id: String,
    pub envelope: Envelope,
    /// Parallel to `envelope.recipients`: delivered and failed recipients
    /// travel too, so the peer neither repeats a delivery nor forgets a
    /// bounce owed.
    pub recipients: Vec<RecipientState>,
    pub held: bool,
    pub warned: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("expected XMESSAGE LENGTH TRANSFER MAC")]
    Syntax,
    #[error("body length {0:?} is not a number")]
    Length(String),
    #[error("transfer is not base64url: {0}")]
    Base64(String),
    #[error("transfer is not a message state: {0}")]
    Json(String),
    #[error("transfer lists {states} recipient states for {recipients} recipients")]
    States { states: usize, recipients: usize },
    #[error("MAC is not hex")]
    MacSyntax,
}

/// A fresh random nonce for a session's greeting, as hex.
pub(crate) fn new_nonce() -> String {
    hex(&rand::random::<[u8; NONCE_BYTES]>())
}

pub fn key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// The MAC's inputs, in one place. The transfer's length goes in first
/// so bytes cannot move between the transfer and the body.
fn signed(key: &hmac::Key, nonce: &str, seq: u64, transfer: &str, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(MAC_CONTEXT);
    ctx.update(nonce.as_bytes());
    ctx.update(&seq.to_be_bytes());
    ctx.update(&(transfer.len() as u64).to_be_bytes());
    ctx.update(transfer.as_bytes());
    ctx.update(body);
    ctx.sign()
}

/// The MAC of one message in a session.
pub fn mac(key: &hmac::Key, nonce: &str, seq: u64, transfer: &str, body: &[u8]) -> String {
    hex(signed(key, nonce, seq, transfer, body).as_ref())
}

/// Constant-time check of a MAC the client sent.
pub(crate) fn verify(
    key: &hmac::Key,
    nonce: &str,
    seq: u64,
    transfer: &str,
    body: &[u8],
    mac_hex: &str,
) -> bool {
    let Some(tag) = mailrelay_crds::configformat::unhex(mac_hex) else {
        return false;
    };
    let expected = signed(key, nonce, seq, transfer, body);
    let expected = expected.as_ref();
    expected.len() == tag.len()
        && expected
            .iter()
            .zip(&tag)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn encode_transfer(t: &Transfer) -> Result<String, WireError> {
    let json = serde_json::to_vec(t).map_err(|e| WireError::Json(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

pub fn decode_transfer(s: &str) -> Result<Transfer, WireError> {
    let json = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| WireError::Base64(e.to_string()))?;
    let t: Transfer = serde_json::from_slice(&json).map_err(|e| WireError::Json(e.to_string()))?;
    if t.recipients.len() != t.envelope.recipients.len() {
        return Err(WireError::States {
            states: t.recipients.len(),
            recipients: t.envelope.recipients.len(),
        });
    }
    Ok(t)
}

/// `XMESSAGE LEN TRANSFER MAC` without the line ending.
pub fn command(len: usize, transfer: &str, mac: &str) -> String {
    format!("XMESSAGE {len} {transfer} {mac}")
}

/// The arguments of an XMESSAGE command line (after the verb).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MessageCommand<'a> {
    pub len: u64,
    pub transfer: &'a str,
    pub mac: &'a str,
}

pub(crate) fn parse_message_args(args: &str) -> Result<MessageCommand<'_>, WireError> {
    let mut words = args.split_ascii_whitespace();
    let (Some(len), Some(transfer), Some(mac), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(WireError::Syntax);
    };
    let len = len
        .parse::<u64>()
        .map_err(|_| WireError::Length(len.to_string()))?;
    if mailrelay_crds::configformat::unhex(mac).is_none() {
        return Err(WireError::MacSyntax);
    }
    Ok(MessageCommand { len, transfer, mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> Transfer {
        Transfer {
            id: "0000000000000000000000001".into(),
            envelope: Envelope {
                sender: "a@example.org".into(),
                recipients: vec!["b@example.net".into(), "c@example.net".into()],
                received_at: 1_700_000_000,
                client_ip: "192.0.2.1"
                    .parse()
                    .unwrap_or(std::net::IpAddr::from([0; 4])),
                helo: "client.example.org".into(),
                auth: None,
                tls: true,
                size: 5,
                smtputf8: false,
                body_8bit: false,
                handed_off: None,
            },
            recipients: vec![
                RecipientState::Delivered {
                    reply: "250 ok".into(),
                },
                RecipientState::Deferred {
                    attempts: 3,
                    next_attempt: 1_700_000_600,
                    last_reply: "451 4.4.1 no answer".into(),
                },
            ],
            held: false,
            warned: true,
        }
    }

    #[test]
    fn a_transfer_survives_the_wire() {
        let t = transfer();
        let encoded = encode_transfer(&t).expect("encode");
        assert!(!encoded.contains(' ') && !encoded.contains('\r'));
        assert_eq!(decode_transfer(&encoded), Ok(t));
    }

    #[test]
    fn states_must_match_recipients() {
        let mut t = transfer();
        t.recipients.pop();
        let encoded = encode_transfer(&t).expect("encode");
        assert_eq!(
            decode_transfer(&encoded),
            Err(WireError::States {
                states: 1,
                recipients: 2
            })
        );
    }

    #[test]
    fn the_mac_binds_secret_nonce_sequence_transfer_and_body() {
        let k = key(b"shared secret");
        let m = mac(&k, "n1", 0, "T", b"body");
        assert!(verify(&k, "n1", 0, "T", b"body", &m));
        assert!(!verify(&key(b"other"), "n1", 0, "T", b"body", &m));
        assert!(!verify(&k, "n2", 0, "T", b"body", &m), "another session");
        assert!(!verify(&k, "n1", 1, "T", b"body", &m), "another slot");
        assert!(!verify(&k, "n1", 0, "U", b"body", &m), "altered state");
        assert!(!verify(&k, "n1", 0, "T", b"bodY", &m), "altered body");
        assert!(!verify(&k, "n1", 0, "T", b"body", "zz"), "not hex");
        assert!(!verify(&k, "n1", 0, "Tb", b"ody", &m));
    }

    #[test]
    fn command_lines_parse_back() {
        let line = command(5, "abc", "00ff");
        let args = line.strip_prefix("XMESSAGE ").expect("verb");
        assert_eq!(
            parse_message_args(args),
            Ok(MessageCommand {
                len: 5,
                transfer: "abc",
                mac: "00ff"
            })
        );
        assert_eq!(parse_message_args("5 abc"), Err(WireError::Syntax));
        assert_eq!(parse_message_args("5 abc 00 x"), Err(WireError::Syntax));
        assert_eq!(
            parse_message_args("-1 abc 00"),
            Err(WireError::Length("-1".into()))
        );
        assert_eq!(parse_message_args("5 abc 0g"), Err(WireError::MacSyntax));
    }

    #[test]
    fn the_reports_mac_binds_secret_nonce_and_body() {
        let k = key(b"shared secret");
        let m = reports_mac(&k, "n1", b"[]");
        assert!(verify_reports(&k, "n1", b"[]", &m));
        assert!(!verify_reports(&key(b"other"), "n1", b"[]", &m));
        assert!(!verify_reports(&k, "n2", b"[]", &m), "another session");
        assert!(!verify_reports(&k, "n1", b"[1]", &m), "altered body");
        assert_ne!(m, mac(&k, "n1", 0, "", b"[]"), "never a message's MAC");
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(new_nonce(), new_nonce());
        assert_eq!(new_nonce().len(), NONCE_BYTES * 2);
    }
}
