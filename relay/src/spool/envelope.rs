//! The envelope: what SMTP said about a message, as opposed to the message.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Everything the session learned about a message besides its bytes. It is
/// stored as JSON next to the body so an operator can read a segment with
/// `strings` and so fields can be added without a format change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The MAIL FROM address; "" is the null sender `<>` (never bounced to).
    pub sender: String,
    /// RCPT TO addresses, in the order the client gave them.
    pub recipients: Vec<String>,
    /// When the message was accepted, unix seconds.
    pub received_at: i64,
    pub client_ip: IpAddr,
    pub helo: String,
    /// The authenticated login, if the client used AUTH.
    pub auth: Option<String>,
    pub tls: bool,
    /// Body bytes.
    pub size: u64,
    /// The client asked for SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// The client declared BODY=8BITMIME (RFC 6152).
    pub body_8bit: bool,
    /// Set when a draining relay handed this message over (see `handoff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_off: Option<HandedOff>,
}

/// Where a handed-over message came from, so its history survives the
/// move between relays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedOff {
    /// Queue ids the message had on earlier relays, oldest first: logs
    /// of every relay it passed through can be joined on them.
    pub lineage: Vec<String>,
    /// A delay warning was already sent for it.
    pub warned: bool,
}
