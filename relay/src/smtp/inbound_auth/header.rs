//! The header fields the relay adds to inbound mail, and the removal of
//! `Authentication-Results:` fields that claim to come from us.

use super::arparse;
use super::results::{AuthResults, DkimCheck};

/// `Authentication-Results:` (RFC 8601 §2.2) with `authserv_id` (the
/// Relay's hostname), CRLF line endings, one result per folded line.
/// `None` results mean no checks were made: the field says `none`.
pub(crate) fn authentication_results(authserv_id: &str, results: Option<&AuthResults>) -> String {
    let mut h = format!("Authentication-Results: {}", value(authserv_id));
    let Some(r) = results else {
        h.push_str("; none\r\n");
        return h;
    };
    push(
        &mut h,
        &format!(
            "spf={} smtp.mailfrom={}",
            r.spf_mailfrom.result.as_str(),
            value(&r.spf_mailfrom.identity)
        ),
    );
    push(
        &mut h,
        &format!(
            "spf={} smtp.helo={}",
            r.spf_helo.result.as_str(),
            value(&r.spf_helo.identity)
        ),
    );
    if r.dkim.is_empty() {
        push(&mut h, "dkim=none (no signature)");
    }
    for d in &r.dkim {
        push(&mut h, &dkim(d));
    }
    let dmarc = &r.dmarc;
    let mut entry = format!("dmarc={}", dmarc.result.as_str());
    if let Some(p) = dmarc.policy {
        entry.push_str(&format!(" (p={})", p.as_str()));
    }
    if let Some(from) = &dmarc.from_domain {
        entry.push_str(&format!(" header.from={}", value(from)));
    }
    push(&mut h, &entry);
    // RFC 8617 §4.4 / §6: the chain's validation status.
    let mut entry = format!("arc={}", r.arc.result.as_str());
    if let Some(reason) = &r.arc.reason {
        entry.push_str(&format!(" ({})", comment(reason)));
    }
    push(&mut h, &entry);
    h.push_str("\r\n");
    h
}

fn push(h: &mut String, entry: &str) {
    h.push_str(";\r\n\t");
    h.push_str(entry);
}

fn dkim(d: &DkimCheck) -> String {
    let mut e = format!("dkim={}", d.result.as_str());
    if let Some(reason) = &d.reason {
        e.push_str(&format!(" ({})", comment(reason)));
    }
    if let Some(domain) = &d.domain {
        e.push_str(&format!(" header.d={}", value(domain)));
    }
    if let Some(s) = &d.selector {
        e.push_str(&format!(" header.s={}", value(s)));
    }
    if let Some(b) = &d.b_prefix {
        e.push_str(&format!(" header.b={}", value(b)));
    }
    e
}

/// `X-Spam-Flag: YES`, the SpamAssassin field that Dovecot Sieve rules,
/// Postfix header_checks and mail clients already file on.
pub(crate) const SPAM_FLAG: &str = "X-Spam-Flag: YES\r\n";

/// A property value as written: bare when it is an address or a token
/// (the RFC 8601 `pvalue` forms), else a quoted-string.
fn value(v: &str) -> String {
    let bare = !v.is_empty()
        && v.split_once('@')
            .map_or(v, |(_, d)| d)
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        && v.split_once('@')
            .is_none_or(|(l, _)| !l.is_empty() && l.chars().all(is_atext));
    if bare {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// RFC 5322 atext, and `.` for dot-atoms; without `/`, `=` and `?`,
/// which RFC 2045 readers take as separators.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-^_`{|}~.".contains(c)
}

/// Text for a comment: no parentheses, backslashes or line breaks.
fn comment(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\'))
        .take(80)
        .collect()
}

/// The message without the `Authentication-Results:` fields whose
/// authserv-id is `authserv_id` (RFC 8601 §5: a border MTA removes those,
/// since only it may have added them). Returns how many were removed.
pub(crate) fn strip_ours(content: &[u8], authserv_id: &str) -> (Vec<u8>, usize) {
    let end = header_end(content);
    let mut out = Vec::with_capacity(content.len());
    let mut removed = 0;
    let mut at = 0;
    while at < end {
        let field_end = field_end(content, at, end);
        let field = &content[at..field_end];
        if is_ours(field, authserv_id) {
            removed += 1;
        } else {
            out.extend_from_slice(field);
        }
        at = field_end;
    }
    out.extend_from_slice(&content[end..]);
    (out, removed)
}

/// Where the header section ends: at the start of the empty line, or the
/// end of the content when there is none.
fn header_end(content: &[u8]) -> usize {
    if content.starts_with(b"\r\n") {
        return 0;
    }
    memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 2)
}

/// The end of the field starting at `at`: after its last continuation line.
fn field_end(content: &[u8], at: usize, end: usize) -> usize {
    let mut i = at;
    loop {
        match memchr::memmem::find(&content[i..end], b"\r\n") {
            None => return end,
            Some(n) => i += n + 2,
        }
        if i >= end || !matches!(content[i], b' ' | b'\t') {
            return i;
        }
    }
}

fn is_ours(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let name = String::from_utf8_lossy(&field[..colon]);
    if !name
        .trim_end()
        .eq_ignore_ascii_case("Authentication-Results")
    {
        return false;
    }
    let body = String::from_utf8_lossy(&field[colon + 1..]);
    arparse::authserv_id(&body).is_some_and(|id| id.eq_ignore_ascii_case(authserv_id))
}

#[cfg(test)]
#[path = "header_tests.rs"]
mod tests;
