//! Text that goes into a notice, made safe: fields folded to the line
//! limits, remote text reduced to one line of printable ASCII, addresses in
//! the right address type, dates in RFC 5322 form.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Longest line we write, without its CRLF (RFC 5322 §2.1.1).
pub(super) const MAX_LINE: usize = 998;
/// Where we fold when a space allows it (RFC 5322 §2.1.1 "SHOULD").
pub(super) const SOFT_LINE: usize = 78;
/// Remote replies longer than this are cut: a notice is for reading.
pub(super) const MAX_DIAGNOSTIC: usize = 2000;

/// `rfc822; addr` for an ASCII address; for a UTF-8 one (SMTPUTF8) the
/// `utf-8` address type of RFC 6533 §3 in its 7-bit `utf-8-addr-xtext`
/// form, so the delivery-status part stays 7-bit: every character outside
/// QCHAR (non-ASCII, space, `+`, `=`, `\`) becomes `\x{HEX}`.
pub(super) fn address_field(addr: &str) -> String {
    let addr = printable(addr);
    if addr.is_ascii() {
        return format!("rfc822; {addr}");
    }
    let mut s = String::from("utf-8; ");
    for c in addr.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            s.push(c);
        } else {
            s.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    s
}

/// `s` without control characters.
pub(super) fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// A host name as given by DNS or configuration, reduced to printable
/// ASCII without spaces so it cannot end a field early.
pub(super) fn mta_name(host: &str) -> String {
    host.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect()
}

/// A reply as one line of printable ASCII: line breaks of a multi-line
/// reply and any other whitespace become single spaces, other bytes `?`,
/// and the whole is cut at [`MAX_DIAGNOSTIC`].
pub(super) fn diagnostic_text(diag: &str) -> String {
    let mut out = String::with_capacity(diag.len().min(MAX_DIAGNOSTIC));
    for word in diag.split(|c: char| c.is_ascii_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(
            word.chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
        );
        if out.len() > MAX_DIAGNOSTIC {
            out.truncate(MAX_DIAGNOSTIC);
            out.push_str("...");
            break;
        }
    }
    out
}

/// Starts with a reply code (RFC 5321 §4.2: three digits, then SP, `-` or
/// the end).
pub(super) fn is_smtp_reply(diag: &str) -> bool {
    let b = diag.as_bytes();
    b.len() >= 3
        && matches!(b[0], b'2'..=b'5')
        && b[1..3].iter().all(u8::is_ascii_digit)
        && matches!(b.get(3), None | Some(b' ' | b'-'))
}

/// `line` broken at spaces into lines of at most `soft` octets where it
/// can be, and at most [`MAX_LINE`] always (a longer word is split). A
/// break replaces the space with CRLF and `cont`: for a header field
/// `cont` is " ", which is RFC 5322 §2.2.3 folding, so unfolding gives the
/// line back; for text it is an indent. Ends in CRLF.
pub(super) fn fold(line: &str, cont: &str, soft: usize) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut len = 0;
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            if !word.is_empty() && len > cont.len() && len + 1 + word.len() > soft {
                out.push_str("\r\n");
                out.push_str(cont);
                len = cont.len();
            } else {
                out.push(' ');
                len += 1;
            }
        }
        let mut rest = word;
        while len + rest.len() > MAX_LINE {
            let mut take = MAX_LINE.saturating_sub(len);
            while !rest.is_char_boundary(take) {
                take -= 1;
            }
            out.push_str(&rest[..take]);
            out.push_str("\r\n");
            out.push_str(cont);
            len = cont.len();
            rest = &rest[take..];
        }
        out.push_str(rest);
        len += rest.len();
    }
    out.push_str("\r\n");
    out
}

/// An RFC 5322 §3.3 date in UTC, written `+0000` (not `-0000`, which would
/// mean the offset is unknown).
pub(super) fn date(t: Timestamp) -> String {
    jiff::fmt::rfc2822::to_string(&t.to_zoned(TimeZone::UTC)).unwrap_or_else(|_| t.to_string())
}
