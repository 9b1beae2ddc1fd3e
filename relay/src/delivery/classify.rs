//! Bounce classification: which class (`BounceClass`) a recipient outcome
//! that is not a delivery falls in, from the remote reply or the relay's
//! own words for a failure without one. Pure: a reply in, a class out.
//!
//! Order: the operator's rules (`spec.delivery.classification`, in
//! order), then the RFC 3463 enhanced status code where it says enough on
//! its own (5.1.1 is a mailbox that does not exist, whatever the text),
//! then the reply text, then what the code's subject says in general
//! (x.7.x is policy), else `Other`. Codes like 5.7.1 and 4.7.0 are used by
//! receivers for everything from spam blocks to rate limits, which is why
//! the text decides for them.

use std::sync::LazyLock;

use mailrelay_crds::config::ClassRuleConfig;
use mailrelay_crds::relay::BounceClass;
use regex::{Regex, RegexBuilder};

use BounceClass::*;

/// Enhanced status codes (class digit left out: `1.1` stands for 4.1.1
/// and 5.1.1) whose meaning needs no text.
const BY_CODE: &[(&str, BounceClass)] = &[
    ("1.1", InvalidRecipient),
    ("1.3", InvalidRecipient),
    ("1.6", InvalidRecipient),
    ("1.10", InvalidRecipient),
    ("1.2", BadDomain),
    ("1.8", BadDomain),
    ("4.4", BadDomain),
    ("7.27", BadDomain),
    ("2.2", MailboxFull),
    ("2.3", MessageTooLarge),
    ("3.4", MessageTooLarge),
    ("4.2", NetworkFailure),
    ("4.5", Throttled),
    ("5.3", Throttled),
    ("7.28", Throttled),
    ("7.500", Throttled),
    ("7.20", AuthenticationFailure),
    ("7.21", AuthenticationFailure),
    ("7.22", AuthenticationFailure),
    ("7.23", AuthenticationFailure),
    ("7.24", AuthenticationFailure),
    ("7.26", AuthenticationFailure),
    ("7.509", AuthenticationFailure),
    ("7.10", TlsFailure),
    ("7.11", TlsFailure),
    ("7.606", SpamBlock),
    ("7.708", SpamBlock),
    ("7.511", SpamBlock),
];

/// Reply texts, tried in order (case does not matter). Specific before
/// general: a Yahoo `[TSS04]` deferral mentions complaints but is a rate
/// limit; "recipient address rejected: greylisted" is not a bad address.
/// X.4.1 ("no answer from host") is left to the text: Exchange Online
/// answers 5.4.1 for a recipient its directory does not know.
const BY_TEXT: &[(&str, BounceClass)] = &[
    (r"\[tss0\d\]|\[ts0[12]\]|unusual rate", Throttled),
    (
        r"starttls|\btls\b|\bssl\b|certificate|handshake",
        TlsFailure,
    ),
    (
        r"\bdmarc\b|\bspf\b|\bdkim\b|unauthenticated|not authenticated",
        AuthenticationFailure,
    ),
    (
        r"spam|unsolicited|blocked using|block ?list|black ?list|deny ?list|spamhaus|\brbl\b|dnsbl|reputation|banned|\[bl\d+\]|\[ts03\]|permanently deferred|listed (at|in|on|by)",
        SpamBlock,
    ),
    (
        r"domain not found|no such domain|nxdomain|host not found|host or domain name not found|\bno mx\b|null mx|no (mx or )?address records|unresolvable|name or service not known|domain .*(takes|accepts) no mail",
        BadDomain,
    ),
    (
        r"try (again )?later|temporarily (deferred|rejected)|rate limit|too (many|quickly|fast)|unusual rate|at a rate|server busy|greylist|throttl|slow down|limit exceeded|exceeded .*limit|unexpected volume",
        Throttled,
    ),
    (
        r"mailbox (is )?full|over ?quota|quota exceeded|exceeded .*quota|insufficient (system )?storage|out of storage",
        MailboxFull,
    ),
    (
        r"too (large|big)|size limit|size exceeds|exceeds .*size|message size|message length",
        MessageTooLarge,
    ),
    (
        r"user unknown|unknown user|no such (user|recipient|mailbox)|does not exist|doesn't exist|doesn't have an? .* account|recipient (address )?rejected|recipient not found|mailbox not found|mailbox unavailable|invalid (recipient|mailbox)|unrouteable address|address rejected|not a valid mailbox|account (is )?disabled",
        InvalidRecipient,
    ),
    (
        r"connection refused|refused by|timed out|timeout|cannot connect|could not connect|connection (reset|lost|closed)|broken pipe|unreachable|no route to host|\beof\b",
        NetworkFailure,
    ),
    (
        r"unexpected reply|out of step|protocol|syntax error|command unrecognized|bad sequence|pipelin",
        ProtocolError,
    ),
    (
        r"relay(ing)? (access )?denied|not in (white|allow) ?list|not permitted|policy|not allowed|access denied|prohibited|rejected|refused",
        PolicyRejection,
    ),
];

/// The compiled size one pattern may take (as compile() checks).
const PATTERN_BYTES: usize = mailrelay_crds::compile::CLASSIFICATION_REGEX_BYTES;

static BUILT_IN: LazyLock<Vec<(Regex, BounceClass)>> = LazyLock::new(|| {
    BY_TEXT
        .iter()
        .filter_map(|(pattern, class)| Some((case_blind(pattern).ok()?, *class)))
        .collect()
});

fn case_blind(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(PATTERN_BYTES)
        .build()
}

/// A pattern of a Relay's rules (`kind`: classification, throttle),
/// within the size compile() allows. compile() has checked it; one that
/// still fails to build is left out and logged.
pub(crate) fn operator_pattern(pattern: &str, kind: &'static str) -> Option<Regex> {
    match RegexBuilder::new(pattern).size_limit(PATTERN_BYTES).build() {
        Ok(re) => Some(re),
        Err(e) => {
            tracing::error!(pattern, error = %e, rule = kind,
                "rule left out: not a valid regular expression");
            None
        }
    }
}

/// The built-in table plus a Relay's rules.
#[derive(Debug, Default)]
pub struct Classifier {
    rules: Vec<(Regex, BounceClass)>,
}

impl Classifier {
    /// A Relay's rules, in order. compile() has checked every pattern;
    /// one that still fails to build is left out and logged.
    pub fn new(rules: &[ClassRuleConfig]) -> Classifier {
        let rules = rules
            .iter()
            .filter_map(|rule| {
                Some((
                    operator_pattern(&rule.pattern, "classification")?,
                    rule.class,
                ))
            })
            .collect();
        Classifier { rules }
    }

    /// The class of a reply (`CODE ENHANCED TEXT`, or the relay's own
    /// words for a failure without a reply).
    pub fn classify(&self, reply: &str) -> BounceClass {
        if let Some((_, class)) = self.rules.iter().find(|(re, _)| re.is_match(reply)) {
            return *class;
        }
        builtin(reply)
    }
}

/// The built-in table alone.
pub fn builtin(reply: &str) -> BounceClass {
    let (code, enhanced) = codes(reply);
    if let Some(class) = enhanced.and_then(|e| by_code(e.1)) {
        return class;
    }
    if let Some((_, class)) = BUILT_IN.iter().find(|(re, _)| re.is_match(reply)) {
        return *class;
    }
    let class_digit = enhanced.map(|e| e.0).or(code.map(|c| c / 100));
    match (enhanced.map(|e| subject(e.1)), class_digit) {
        (Some("7"), Some(4)) => Throttled,
        (Some("7"), _) => PolicyRejection,
        (Some("4"), _) => NetworkFailure,
        (Some("5" | "6"), _) => ProtocolError,
        _ => Other,
    }
}

fn by_code(rest: &str) -> Option<BounceClass> {
    BY_CODE
        .iter()
        .find(|(c, _)| *c == rest)
        .map(|(_, class)| *class)
}

/// The subject of `subject.detail`.
fn subject(rest: &str) -> &str {
    rest.split('.').next().unwrap_or("")
}

/// The reply code and the enhanced code (class digit, `subject.detail`)
/// at the start of a reply: `550 5.1.1 …`, `550-5.1.1 …`, `421 …`.
fn codes(reply: &str) -> (Option<u16>, Option<(u16, &str)>) {
    let reply = reply.trim_start();
    let code = reply
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok());
    let rest = match code {
        Some(_) => reply.get(3..).unwrap_or("").trim_start_matches([' ', '-']),
        None => reply,
    };
    let word = rest.split(|c: char| c.is_whitespace()).next().unwrap_or("");
    (code, enhanced(word))
}

/// `5.1.1` -> (5, "1.1"); anything else -> None.
fn enhanced(word: &str) -> Option<(u16, &str)> {
    let (class, rest) = word.split_once('.')?;
    let class: u16 = match class {
        "2" => 2,
        "4" => 4,
        "5" => 5,
        _ => return None,
    };
    let (subject, detail) = rest.split_once('.')?;
    let numeric = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(subject) && numeric(detail)).then_some((class, rest))
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
