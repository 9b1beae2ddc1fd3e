//! Delivery status notifications: the message that tells a sender that
//! mail to some recipients failed, or is late (RFC 3464, carried in an
//! RFC 6522 `multipart/report`).
//!
//! The notice has three parts: a short explanation for a human, the
//! machine-readable `message/delivery-status`, and the header section of
//! the original message (`text/rfc822-headers`). The body of the original
//! is never returned: it may be large, and a bounce to a forged sender
//! would otherwise hand a third party the content (backscatter).
//!
//! Every line ends in CRLF and fits in 998 octets (RFC 5322 §2.1.1); text
//! from the remote server is made single-line, printable ASCII and folded,
//! so a hostile reply cannot add fields or break the MIME structure.

use jiff::Timestamp;

use self::text::{
    MAX_LINE, SOFT_LINE, address_field, date, diagnostic_text, fold, is_smtp_reply, mta_name,
    printable,
};
use crate::spool::{Envelope, QueueId};

mod text;

/// What happened to one recipient (RFC 3464 §2.3.3). Only the outcomes
/// this relay reports on: success is never notified (we do not implement
/// NOTIFY=SUCCESS), and `relayed`/`expanded` do not occur.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Given up: a 5xx reply, or the queue lifetime ran out.
    Failed,
    /// Still queued; this is a warning.
    Delayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// One recipient to report on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecipientReport {
    /// The envelope recipient (RCPT TO), without angle brackets.
    pub recipient: String,
    pub action: Action,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1` or `4.4.7`.
    pub status: String,
    /// The host that gave the reply, if one did.
    pub remote_mta: Option<String>,
    /// The remote reply verbatim (`550 5.1.1 <bob@x>: ...`), or our own
    /// description when there was no reply (`connection refused`).
    pub diagnostic: Option<String>,
    pub last_attempt: Option<Timestamp>,
    /// For `Delayed`: when the message will be given up.
    pub will_retry_until: Option<Timestamp>,
}

/// Everything a notice is built from. Time is a parameter: this module
/// never reads the clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DsnInput<'a> {
    pub envelope: &'a Envelope,
    /// The original message as queued: header section, empty line, body;
    /// CRLF line endings.
    pub message: &'a [u8],
    /// Our host name: `Reporting-MTA` and the From/Message-ID domain.
    pub reporting_mta: &'a str,
    pub queue_id: QueueId,
    pub arrival_date: Timestamp,
    /// When the notice is written: its `Date:` and part of its Message-ID.
    pub now: Timestamp,
    pub recipients: &'a [RecipientReport],
}

/// A notice ready to queue: sent from the null reverse path to the
/// original sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dsn {
    /// Always "" (`MAIL FROM:<>`), so a notice that fails in turn is never
    /// bounced again (RFC 5321 §4.5.5, RFC 3464 §2).
    pub sender: String,
    /// The original envelope sender.
    pub recipient: String,
    /// The full RFC 5322 message, CRLF line endings.
    pub message: Vec<u8>,
}

impl Dsn {
    /// The recipient is not ASCII, so the notice can only be sent with
    /// SMTPUTF8 (RFC 6531), and its `To:` is an RFC 6532 UTF-8 header.
    pub(crate) fn needs_smtputf8(&self) -> bool {
        !self.recipient.is_ascii()
    }

    /// The notice holds 8-bit text (a UTF-8 address, or 8-bit original
    /// headers), so it must be sent with BODY=8BITMIME (RFC 6152).
    pub(crate) fn is_8bit(&self) -> bool {
        !self.message.is_ascii()
    }
}

/// Original header sections longer than this are cut at a line boundary.
const MAX_HEADER_SECTION: usize = 64 * 1024;

/// The notice for `input`, or `None` when none may or can be sent: the
/// original sender is the null sender (never bounce a bounce: RFC 5321
/// §6.1, RFC 3464 §2), is not a usable address, or there is nothing to
/// report. The caller logs and drops.
pub(crate) fn build(input: &DsnInput<'_>) -> Option<Dsn> {
    let to = input.envelope.sender.trim();
    if to.is_empty() || to == "<>" || input.recipients.is_empty() {
        return None;
    }
    // The session never accepts such a sender; this guards the To: header.
    if to
        .chars()
        .any(|c| c.is_control() || matches!(c, ' ' | '<' | '>' | '"'))
    {
        return None;
    }
    let host = input.reporting_mta;
    let failed = input.recipients.iter().any(|r| r.action == Action::Failed);
    let notice = notice(input);
    let report = delivery_status(input);
    let headers = header_section(input.message);
    let boundary = boundary(
        input.queue_id,
        &[notice.as_bytes(), report.as_bytes(), &headers],
    );

    let mut m = Vec::with_capacity(notice.len() + report.len() + headers.len() + 1024);
    let mut put = |s: &str| m.extend_from_slice(s.as_bytes());
    put(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"
    ));
    // A UTF-8 sender is written as is (RFC 6532 §3.2): an addr-spec cannot
    // be encoded, and such a sender is reachable only over SMTPUTF8 anyway.
    put(&format!("To: <{to}>\r\n"));
    put(if failed {
        "Subject: Undelivered Mail Returned to Sender\r\n"
    } else {
        "Subject: Delayed Mail (still being retried)\r\n"
    });
    put(&format!("Date: {}\r\n", date(input.now)));
    // The time keeps it unique (RFC 5322 §3.6.4) when one message gets a
    // delay warning and later a bounce, or bounces for several recipients
    // at different times.
    let qid = input.queue_id;
    put(&format!(
        "Message-ID: <{qid}.{}.dsn@{host}>\r\n",
        input.now.as_second()
    ));
    // RFC 3834 §5: machine-generated, so auto-responders stay quiet.
    put("Auto-Submitted: auto-replied\r\n");
    put("MIME-Version: 1.0\r\n");
    put("Content-Type: multipart/report; report-type=delivery-status;\r\n");
    put(&format!("\tboundary=\"{boundary}\"\r\n"));
    // RFC 2045 §6.4: a multipart holding an 8-bit part is labelled 8bit.
    if !notice.is_ascii() || !headers.is_ascii() {
        put("Content-Transfer-Encoding: 8bit\r\n");
    }
    put("\r\nThis is a MIME-encapsulated message.\r\n");

    put(&format!(
        "\r\n--{boundary}\r\nContent-Description: Notification\r\n"
    ));
    if notice.is_ascii() {
        put("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    } else {
        put("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    }
    put(&notice);

    put(&format!(
        "\r\n--{boundary}\r\nContent-Description: Delivery report\r\n"
    ));
    put("Content-Type: message/delivery-status\r\n\r\n");
    put(&report);

    put(&format!("\r\n--{boundary}\r\nContent-Description: "));
    put(if failed { "Undelivered" } else { "Delayed" });
    put(" Message Headers\r\nContent-Type: text/rfc822-headers\r\n");
    if !headers.is_ascii() {
        put("Content-Transfer-Encoding: 8bit\r\n");
    }
    put("\r\n");
    m.extend_from_slice(&headers);
    m.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    Some(Dsn {
        sender: String::new(),
        recipient: to.to_string(),
        message: m,
    })
}

/// The human-readable first part: what happened, one entry per recipient.
fn notice(input: &DsnInput<'_>) -> String {
    let intro = format!(
        "This is the mail delivery system at {}, writing about your message of {} (queue id {}).",
        input.reporting_mta,
        date(input.arrival_date),
        input.queue_id
    );
    let mut t = fold(&intro, "", SOFT_LINE);
    let sections = [
        (
            Action::Failed,
            "It could not be delivered to the recipients below; the mail system has given up on them.",
        ),
        (
            Action::Delayed,
            "It has not yet been delivered to the recipients below. This is only a warning: the mail system will keep trying, and you do not need to send it again.",
        ),
    ];
    for (action, what) in sections {
        let rs: Vec<&RecipientReport> = input
            .recipients
            .iter()
            .filter(|r| r.action == action)
            .collect();
        if rs.is_empty() {
            continue;
        }
        t.push_str("\r\n");
        t.push_str(&fold(what, "", SOFT_LINE));
        for r in rs {
            t.push_str("\r\n");
            t.push_str(&recipient_notice(r));
        }
    }
    t.push_str("\r\nThe delivery report and the headers of your message are attached.\r\n");
    t
}

/// One recipient in the human-readable part: address, status, and what
/// the remote server said.
fn recipient_notice(r: &RecipientReport) -> String {
    let addr = printable(&r.recipient);
    let head = format!("<{addr}>: {} ({})", r.action.as_str(), status(r));
    let mut t = fold(&head, "    ", SOFT_LINE);
    if let Some(diag) = &r.diagnostic {
        let who = r
            .remote_mta
            .as_deref()
            .map_or("The remote server".to_string(), mta_name);
        let said = format!("    {who} said: {}", diagnostic_text(diag));
        t.push_str(&fold(&said, "    ", SOFT_LINE));
    } else if let Some(mta) = &r.remote_mta {
        t.push_str(&format!("    (remote server: {})\r\n", mta_name(mta)));
    }
    if let Some(until) = r.will_retry_until.filter(|_| r.action == Action::Delayed) {
        let until = format!(
            "    The mail system will keep trying until {}.",
            date(until)
        );
        t.push_str(&fold(&until, "    ", SOFT_LINE));
    }
    t
}

/// The `message/delivery-status` body (RFC 3464 §2.1): per-message fields,
/// then one blank-line separated block per recipient. All 7-bit.
fn delivery_status(input: &DsnInput<'_>) -> String {
    let mut s = format!("Reporting-MTA: dns; {}\r\n", mta_name(input.reporting_mta));
    // An extension field (RFC 3464 §2.2: "X-" names are private), so an
    // operator can find the message in the queue and the logs.
    s.push_str(&format!("X-Queue-ID: {}\r\n", input.queue_id));
    s.push_str(&format!("Arrival-Date: {}\r\n", date(input.arrival_date)));
    for r in input.recipients {
        s.push_str("\r\n");
        s.push_str(&format!(
            "Final-Recipient: {}\r\n",
            address_field(&r.recipient)
        ));
        s.push_str(&format!("Action: {}\r\n", r.action.as_str()));
        s.push_str(&format!("Status: {}\r\n", status(r)));
        if let Some(mta) = &r.remote_mta {
            s.push_str(&format!("Remote-MTA: dns; {}\r\n", mta_name(mta)));
        }
        if let Some(diag) = &r.diagnostic {
            let diag = diagnostic_text(diag);
            // RFC 3464 §2.3.6: "smtp" is for an SMTP reply; anything else
            // (a connection error of ours) gets a private type, like
            // Postfix's "X-Postfix".
            let kind = if is_smtp_reply(&diag) {
                "smtp"
            } else {
                "X-mailrelay"
            };
            s.push_str(&fold(
                &format!("Diagnostic-Code: {kind}; {diag}"),
                " ",
                SOFT_LINE,
            ));
        }
        if let Some(t) = r.last_attempt {
            s.push_str(&format!("Last-Attempt-Date: {}\r\n", date(t)));
        }
        // RFC 3464 §2.3.9: only meaningful for a delayed recipient.
        if let Some(t) = r.will_retry_until.filter(|_| r.action == Action::Delayed) {
            s.push_str(&format!("Will-Retry-Until: {}\r\n", date(t)));
        }
    }
    s
}

/// The original's header section: every line up to, not including, the
/// empty line that ends it (RFC 5322 §2.1), with CRLF endings, lines cut
/// at 998 octets, and at most [`MAX_HEADER_SECTION`] octets of whole lines.
fn header_section(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let line = &line[..line.len().min(MAX_LINE)];
        if out.len() + line.len() + 2 > MAX_HEADER_SECTION {
            break;
        }
        // A stray CR or NUL would make lines that other parsers split
        // differently from us (RFC 5322 §2.3 forbids both outside CRLF).
        out.extend(
            line.iter()
                .map(|&b| if b == b'\r' || b == 0 { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A multipart boundary that occurs nowhere in the parts (RFC 2046
/// §5.1.1). It is derived from a hash of the parts rather than drawn at
/// random, so a notice is a pure function of its input (and the golden
/// test is exact); the check below, not the hash, is what guarantees it.
fn boundary(queue_id: QueueId, parts: &[&[u8]]) -> String {
    let mut hash = fnv1a(FNV_OFFSET, queue_id.to_string().as_bytes());
    for part in parts {
        hash = fnv1a(hash, part);
    }
    choose_boundary(hash, parts)
}

/// The first of `=_mailrelay-dsn-HASH-0`, `...-1`, ... not found in any
/// part. Parts are finite, so only finitely many candidates can clash.
fn choose_boundary(hash: u64, parts: &[&[u8]]) -> String {
    let mut n = 0u64;
    loop {
        let candidate = format!("=_mailrelay-dsn-{hash:016x}-{n}");
        if !parts
            .iter()
            .any(|p| memchr::memmem::find(p, candidate.as_bytes()).is_some())
        {
            return candidate;
        }
        n += 1;
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: not cryptographic, only a spread of candidates.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The enhanced status code if it is one (RFC 3463 §2: class.subject.detail),
/// else the generic code for the action.
fn status(r: &RecipientReport) -> &str {
    let mut parts = r.status.split('.');
    let class = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let digits = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    if matches!(class, "2" | "4" | "5") && rest.len() == 2 && rest.iter().all(|p| digits(p)) {
        return &r.status;
    }
    match r.action {
        Action::Failed => "5.0.0",
        Action::Delayed => "4.0.0",
    }
}

#[cfg(test)]
#[path = "dsn_tests.rs"]
mod tests;
