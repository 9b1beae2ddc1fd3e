//! Reading delivered mail back: from a mailbox server over IMAP or POP3
//! (Python's imaplib and poplib, as a mail user's client would), straight
//! from a maildir's `new/`, and delivery status notifications parsed with
//! Python's `email` package (RFC 3464 in an RFC 6522 multipart/report).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::peers::python;

/// How a mailbox is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Pop3,
}

const MAILBOX_CLIENT: &str = include_str!("mailbox_client.py");

/// Every message in `user`'s INBOX on the server at `addr`, oldest first,
/// with CRLF line endings. Nothing is deleted or marked seen.
pub fn read_mailbox(
    protocol: Protocol,
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Vec<String> {
    let name = match protocol {
        Protocol::Imap => "imap",
        Protocol::Pop3 => "pop3",
    };
    let out = python(
        MAILBOX_CLIENT,
        &[
            name,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            user,
            password,
        ],
    );
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("mailbox_client.py ({name}) printed {out:?}: {e}"))
}

/// The messages in a maildir's `new/` directory, by file name.
pub fn maildir_new(new_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(new_dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// A message's header fields as `(name, value)`, unfolded.
pub type Fields = Vec<(String, String)>;

/// A delivery status notification as a mail client sees it.
#[derive(Clone, Debug, Deserialize)]
pub struct Dsn {
    /// `multipart/report` for a DSN.
    pub content_type: String,
    /// Its `report-type` parameter: `delivery-status`.
    pub report_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub auto_submitted: Option<String>,
    /// The content type of each part, in order.
    pub parts: Vec<String>,
    /// The per-message fields of `message/delivery-status`.
    pub per_message: Fields,
    /// One block of fields per recipient.
    pub recipients: Vec<Fields>,
    /// The `text/rfc822-headers` part: the original's header section.
    pub returned_headers: Option<String>,
    /// What Python's parser found wrong (MIME defects); empty when valid.
    pub defects: Vec<String>,
}

const DSN_REPORT: &str = include_str!("dsn_report.py");

/// Parse `message` (as delivered) with Python's `email` package.
pub fn parse_dsn(message: &str) -> Dsn {
    let out = python(DSN_REPORT, &[message]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("dsn_report.py printed {out:?}: {e}"))
}

/// The value of field `name` (any case), folding undone.
pub fn field(fields: &Fields, name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Dsn {
    /// The message is a well-formed RFC 3464 report: multipart/report of
    /// report-type delivery-status, with a human-readable first part, the
    /// machine-readable status and the original's header section.
    #[track_caller]
    pub fn assert_well_formed(&self, message: &str) {
        assert_eq!(self.content_type, "multipart/report", "{message}");
        assert_eq!(
            self.report_type.as_deref(),
            Some("delivery-status"),
            "{message}"
        );
        assert_eq!(
            self.parts.get(1).map(String::as_str),
            Some("message/delivery-status"),
            "the second part is the status (RFC 6522 §3): {self:?}"
        );
        assert_eq!(
            self.parts.first().map(String::as_str),
            Some("text/plain"),
            "{self:?}"
        );
        assert!(self.defects.is_empty(), "MIME defects: {self:?}\n{message}");
        assert!(
            field(&self.per_message, "Reporting-MTA").is_some(),
            "no Reporting-MTA: {self:?}"
        );
    }

    /// The recipient block whose `Final-Recipient` is `rfc822; address`.
    pub fn recipient(&self, address: &str) -> Option<&Fields> {
        self.recipients.iter().find(|block| {
            field(block, "Final-Recipient").is_some_and(|v| {
                v.split_once(';').is_some_and(|(kind, a)| {
                    kind.trim().eq_ignore_ascii_case("rfc822")
                        && a.trim().eq_ignore_ascii_case(address)
                })
            })
        })
    }

    /// The recipient named, `Action: failed`, with its status; returns the
    /// Diagnostic-Code.
    #[track_caller]
    pub fn assert_failed(&self, address: &str, status_prefix: &str) -> String {
        let block = self
            .recipient(address)
            .unwrap_or_else(|| panic!("no Final-Recipient: rfc822; {address} in {self:?}"));
        assert_eq!(
            field(block, "Action").as_deref(),
            Some("failed"),
            "{address}: {block:?}"
        );
        let status = field(block, "Status").unwrap_or_default();
        assert!(
            status.starts_with(status_prefix),
            "{address}: Status {status:?}, expected {status_prefix}…: {block:?}"
        );
        field(block, "Diagnostic-Code").unwrap_or_default()
    }
}
