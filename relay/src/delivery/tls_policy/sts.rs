//! MTA-STS (RFC 8461) texts: the `_mta-sts` TXT record (§3.1), the policy
//! file (§3.2) and matching an MX host against the policy's patterns
//! (§4.1). Pure: the lookups and the HTTPS fetch are in `fetch`.

use std::fmt;

/// The longest `max_age` a policy may ask for (§3.2: about one year).
pub(crate) const MAX_AGE_LIMIT: u64 = 31_557_600;

/// Why a TXT record or a policy file is not usable. A domain whose record
/// or policy is unusable is treated as having none (§3.3, §5).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StsError {
    #[error("more than one MTA-STS TXT record")]
    SeveralRecords,
    #[error("MTA-STS TXT record without a valid id")]
    BadId,
    #[error("policy {0}")]
    Policy(String),
}

/// The policy id from the domain's TXT records: `Ok(None)` when none of
/// them is an MTA-STS record. Each record is given as its strings joined
/// (RFC 7208-style multi-string records are one text).
pub(crate) fn record_id<S: AsRef<str>>(records: &[S]) -> Result<Option<String>, StsError> {
    // §3.1: records not starting with "v=STSv1;" are not ours.
    let ours: Vec<&str> = records
        .iter()
        .map(AsRef::as_ref)
        .filter(|r| is_sts_record(r))
        .collect();
    let record = match ours.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        // §3.1: several records mean the sender must assume no policy.
        _ => return Err(StsError::SeveralRecords),
    };
    for field in record.split(';').skip(1) {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        if key.trim() == "id" {
            let id = value.trim();
            // sts-id = 1*32(ALPHA / DIGIT)
            let valid =
                (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
            return if valid {
                Ok(Some(id.to_string()))
            } else {
                Err(StsError::BadId)
            };
        }
    }
    Err(StsError::BadId)
}

fn is_sts_record(record: &str) -> bool {
    let mut fields = record.split(';');
    fields
        .next()
        .and_then(|first| first.trim().split_once('='))
        .is_some_and(|(k, v)| k.trim() == "v" && v.trim() == "STSv1")
}

/// `mode` of a policy (§5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Mode {
    /// Deliver only over validated TLS to a matching MX; otherwise defer.
    Enforce,
    /// Check as for enforce, report failures, deliver anyway.
    Testing,
    /// The domain withdrew its policy: as if it had none.
    None,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        })
    }
}

/// A parsed policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub mode: Mode,
    /// Seconds the policy may be cached (capped at [`MAX_AGE_LIMIT`]).
    pub max_age: u64,
    /// MX patterns, lower-case without a trailing dot: host names, or
    /// `*.` followed by a domain.
    pub mx: Vec<String>,
}

impl Policy {
    /// Whether `host` (an MX host name) is allowed by the policy (§4.1).
    pub(crate) fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// Parse a policy file (§3.2): `key: value` lines ending in CRLF (LF is
/// taken too); `version`, `mode` and `max_age` required, `mx` at least
/// once unless the mode is `none`; unknown keys ignored.
pub(crate) fn parse_policy(text: &str) -> Result<Policy, StsError> {
    let bad = |m: String| StsError::Policy(m);
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("line without a colon: {:?}", clip(line))));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(bad(format!("has an unknown mode {:?}", clip(other)))),
                })
            }
            "max_age" => {
                // sts-policy-max-age-value = 1*10(DIGIT)
                let ok =
                    (1..=10).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit());
                let n: u64 = value
                    .parse()
                    .ok()
                    .filter(|_| ok)
                    .ok_or_else(|| bad(format!("has an invalid max_age {:?}", clip(value))))?;
                max_age = Some(n.min(MAX_AGE_LIMIT));
            }
            "mx" => mx.push(
                mx_pattern(value)
                    .ok_or_else(|| bad(format!("has an invalid mx pattern {:?}", clip(value))))?,
            ),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(bad("lacks version: STSv1".into()));
    }
    let mode = mode.ok_or_else(|| bad("lacks a mode".into()))?;
    let max_age = max_age.ok_or_else(|| bad("lacks max_age".into()))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(bad("lists no mx".into()));
    }
    Ok(Policy { mode, max_age, mx })
}

/// A pattern as stored: lower-case, no trailing dot; `None` unless it is
/// a host name, or `*.` followed by a domain name.
fn mx_pattern(value: &str) -> Option<String> {
    let p = value.trim_end_matches('.').to_ascii_lowercase();
    let name = p.strip_prefix("*.").unwrap_or(&p);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)).then_some(p)
}

/// §4.1: an MX host matches a pattern when equal to it, or, for `*.D`,
/// when it is one label followed by `.D` (the wildcard covers exactly
/// the left-most label). Case-insensitive; trailing dots ignored.
pub(crate) fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == domain),
        None => host == pattern,
    }
}

/// At most 64 characters of remote text, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}
