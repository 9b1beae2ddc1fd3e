//! The report mails: RFC 5322 messages with CRLF line ends, a short text
//! part and the gzip'd report attached, as RFC 7489 §7.2.1.1 (DMARC) and
//! RFC 8460 §5.3 (TLS-RPT) describe them.

use std::fmt::Write as _;
use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::write::GzEncoder;
use jiff::Timestamp;

use super::{DmarcReport, Reporter, TlsReport, id_left};

/// RFC 2045 §6.8: encoded lines of at most 76 characters.
const BASE64_LINE: usize = 76;

/// `bytes`, gzip'd (RFC 1952). The header's time is left at zero, so the
/// same report compresses to the same bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        Compression::best(),
    );
    // Writing into a Vec cannot fail; neither can finishing into one.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// The mail carrying a DMARC aggregate report to `to` (RFC 7489
/// §7.2.1.1): Subject `Report Domain: … Submitter: … Report-ID: <…>`,
/// the report as `application/gzip` named
/// `submitter!domain!begin!end.xml.gz`.
pub fn dmarc_mail(r: &DmarcReport, who: &Reporter, to: &[String], now: Timestamp) -> Vec<u8> {
    let submitter = who.submitter();
    let file = format!(
        "{}!{}!{}!{}.xml.gz",
        submitter,
        r.domain,
        r.start,
        r.end - 1
    );
    let text = format!(
        "This is a DMARC aggregate report (RFC 7489) from {org} about mail\r\n\
         with {domain} in From:, received {begin} to {end} (UTC).\r\n\
         Report-ID: {id}\r\n\
         Questions: {contact}\r\n",
        org = who.organization,
        domain = r.domain,
        begin = utc(r.start),
        end = utc(r.end - 1),
        id = r.report_id,
        contact = who.contact,
    );
    build(&Mail {
        who,
        to,
        now,
        domain: &r.domain,
        report_id: &r.report_id,
        kind: "dmarc",
        extra_headers: &[],
        content_type: "multipart/mixed",
        text: &text,
        attachment_type: "application/gzip",
        file: &file,
        attachment: &gzip(r.xml.as_bytes()),
        submitter: &submitter,
    })
}

/// The mail carrying a TLS report to `to` (RFC 8460 §5.3):
/// `TLS-Report-Domain` and `TLS-Report-Submitter`, `multipart/report;
/// report-type="tlsrpt"`, the report as `application/tlsrpt+gzip` named
/// `submitter!domain!begin!end!unique.json.gz`.
pub fn tlsrpt_mail(r: &TlsReport, who: &Reporter, to: &[String], now: Timestamp) -> Vec<u8> {
    let submitter = who.submitter();
    let file = format!(
        "{}!{}!{}!{}!{}.json.gz",
        submitter,
        r.domain,
        r.start,
        r.end - 1,
        id_left(&r.report_id)
    );
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {org} about\r\n\
         deliveries to {domain}, {begin} to {end} (UTC).\r\n\
         Report-ID: {id}\r\n\
         Questions: {contact}\r\n",
        org = who.organization,
        domain = r.domain,
        begin = utc(r.start),
        end = utc(r.end - 1),
        id = r.report_id,
        contact = who.contact,
    );
    let headers = [
        ("TLS-Report-Domain", r.domain.as_str()),
        ("TLS-Report-Submitter", submitter.as_str()),
    ];
    build(&Mail {
        who,
        to,
        now,
        domain: &r.domain,
        report_id: &r.report_id,
        kind: "tlsrpt",
        extra_headers: &headers,
        content_type: "multipart/report; report-type=\"tlsrpt\"",
        text: &text,
        attachment_type: "application/tlsrpt+gzip",
        file: &file,
        attachment: &gzip(r.json.as_bytes()),
        submitter: &submitter,
    })
}

struct Mail<'a> {
    who: &'a Reporter,
    to: &'a [String],
    now: Timestamp,
    domain: &'a str,
    report_id: &'a str,
    kind: &'a str,
    extra_headers: &'a [(&'a str, &'a str)],
    content_type: &'a str,
    text: &'a str,
    attachment_type: &'a str,
    file: &'a str,
    attachment: &'a [u8],
    submitter: &'a str,
}

fn build(m: &Mail) -> Vec<u8> {
    // Base64 never contains "=_", so no encoded line can be the boundary.
    let boundary = format!("=_mailrelay_{}_{}", m.kind, id_left(m.report_id));
    let subject = format!(
        "Report Domain: {} Submitter: {} Report-ID: <{}>",
        m.domain, m.submitter, m.report_id
    );
    let mut h = String::with_capacity(1024);
    header(&mut h, "From", m.who.from.trim());
    let to: Vec<String> = m.to.iter().map(|a| header_text(a.trim())).collect();
    // One address a line, so a long list never passes RFC 5322's 998.
    let _ = write!(h, "To: {}\r\n", to.join(",\r\n "));
    let _ = write!(h, "Subject: {}\r\n", encoded_word(&subject));
    header(
        &mut h,
        "Date",
        &m.now.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string(),
    );
    // Stable, like the report id: the same report sent again is
    // recognisably the same message.
    header(
        &mut h,
        "Message-ID",
        &format!("<{}.{}>", m.kind, m.report_id),
    );
    header(&mut h, "Auto-Submitted", "auto-generated");
    for (name, value) in m.extra_headers {
        header(&mut h, name, value);
    }
    header(&mut h, "MIME-Version", "1.0");
    let _ = write!(
        h,
        "Content-Type: {}; boundary=\"{boundary}\"\r\n\r\n",
        m.content_type
    );
    h.push_str("This is a multi-part message in MIME format.\r\n");

    let _ = write!(h, "\r\n--{boundary}\r\n");
    h.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    h.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    h.push_str(&base64_lines(m.text.as_bytes()));

    let file = filename(m.file);
    let _ = write!(h, "\r\n--{boundary}\r\n");
    let _ = write!(
        h,
        "Content-Type: {}; name=\"{file}\"\r\n",
        m.attachment_type
    );
    h.push_str("Content-Transfer-Encoding: base64\r\n");
    let _ = write!(
        h,
        "Content-Disposition: attachment; filename=\"{file}\"\r\n\r\n"
    );
    h.push_str(&base64_lines(m.attachment));
    let _ = write!(h, "\r\n--{boundary}--\r\n");
    h.into_bytes()
}

fn header(h: &mut String, name: &str, value: &str) {
    let _ = write!(h, "{name}: {}\r\n", header_text(value));
}

/// A header value as one line: the domains and names in it came from
/// outside, and a CR or LF would start a header (or a body) of their own.
fn header_text(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The Subject as it is when ASCII, else as RFC 2047 encoded words (the
/// organisation or a domain may be UTF-8; the mail is not sent SMTPUTF8).
fn encoded_word(value: &str) -> String {
    let value = header_text(value);
    if value.is_ascii() {
        return value;
    }
    // Each word at most 75 characters (RFC 2047 §2): 45 bytes of UTF-8
    // base64 to 60, split only between characters.
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| format!("=?utf-8?B?{}?=", BASE64.encode(w.as_bytes())))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// A file name with nothing a MIME parameter would need quoting or
/// encoding for (RFC 2183): domains, digits, `!` and `.` stay.
fn filename(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '!' | '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn base64_lines(bytes: &[u8]) -> String {
    let encoded = BASE64.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / BASE64_LINE * 2 + 2);
    for line in encoded.as_bytes().chunks(BASE64_LINE) {
        // Base64 is ASCII, so every chunk is a whole str.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

fn utc(unix: i64) -> String {
    Timestamp::from_second(unix)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests;
