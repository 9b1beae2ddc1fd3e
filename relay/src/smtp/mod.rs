//! SMTP: replies, addresses, content readers and the session state machine,
//! all pure (`server` does the I/O), and the SPF/DKIM/DMARC checks the
//! session runs at the end of DATA (`inbound_auth`, which asks DNS).

pub(crate) mod address;
pub(crate) mod auth;
pub mod data;
pub mod inbound_auth;
pub mod received;
pub mod reply;
pub mod session;

use std::net::IpAddr;

use mailrelay_crds::relay::ListenerName;

use address::Address;
use reply::Reply;

/// What is known about the connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub listener: ListenerName,
    /// The client's address (from the PROXY header when trusted).
    pub client_ip: IpAddr,
    /// Its reverse DNS name, if any.
    pub client_name: Option<String>,
    pub tls: bool,
    /// Protocol and cipher, for the Received: header.
    pub tls_info: Option<String>,
    /// A block found when the client connected (IP list, DNSBL, reverse
    /// DNS name). Given at MAIL, so the client sees a reply it can report.
    pub connect_block: Option<Reply>,
}

/// One mail transaction.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// `None` is the null sender `<>`.
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
    pub body_8bit: bool,
    pub smtputf8: bool,
}

/// The reply for a blocklist hit.
pub(crate) fn policy_reply(block: &crate::policy::BlockReply) -> Reply {
    Reply::new(block.code, block.enhanced, block.text.clone())
}
