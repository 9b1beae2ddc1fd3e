//! Where a report may go: the `rua` of a domain's DMARC record (RFC 7489
//! §6.3, with §7.1's verification of destinations outside the domain)
//! or of its TLS-RPT record (RFC 8460 §3). The DNS is asked through
//! [`TxtLookup`], so all of it is tested without sockets.

use std::future::Future;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use tracing::debug;

use super::domain_key;

/// A place a report may be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A mail address; `max_bytes` from a `!size` suffix (RFC 7489 §6.2).
    Mailto {
        address: String,
        max_bytes: Option<u64>,
    },
    /// An `https` URI to POST the gzip'd report to (TLS-RPT only).
    Https(String),
}

impl Destination {
    /// Whether a report mail of `size` bytes may go here: RFC 7489 §6.2
    /// asks not to send a report past the limit (we send it nowhere
    /// rather than truncate it).
    pub fn accepts(&self, size: u64) -> bool {
        match self {
            Destination::Mailto {
                max_bytes: Some(max),
                ..
            } => size <= *max,
            _ => true,
        }
    }
}

/// What a record's `rua` yields for a report of a given size.
///
/// The caller builds the mail to [`Recipients::addresses`], then calls
/// [`Recipients::for_size`] with the mail's length: addresses whose limit
/// the mail passes are in `too_large` (for the Relay's status), the rest
/// in `mailto`. If any were dropped, build the mail again to `mailto`
/// (it only gets shorter, so no limit is passed anew).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recipients {
    pub mailto: Vec<String>,
    pub https: Vec<String>,
    pub too_large: Vec<TooLarge>,
}

/// A destination the report was too large for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{address}: report of {size} bytes is over its limit of {limit}")]
pub struct TooLarge {
    pub address: String,
    pub limit: u64,
    pub size: u64,
}

impl Recipients {
    /// Every mail address of `dests`.
    pub fn addresses(dests: &[Destination]) -> Vec<String> {
        Self::for_size(dests, 0).mailto
    }

    /// `dests` for a report mail of `size` bytes.
    pub fn for_size(dests: &[Destination], size: u64) -> Recipients {
        let mut r = Recipients::default();
        for d in dests {
            match d {
                Destination::Https(uri) => r.https.push(uri.clone()),
                Destination::Mailto { address, max_bytes } => match max_bytes {
                    Some(limit) if !d.accepts(size) => r.too_large.push(TooLarge {
                        address: address.clone(),
                        limit: *limit,
                        size,
                    }),
                    _ => r.mailto.push(address.clone()),
                },
            }
        }
        r
    }
}

/// Why a domain gets no report (or a record was not understood).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuaError {
    #[error("TXT lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("{name}: no {version} record, so no reports are asked for")]
    NoRecord { name: String, version: &'static str },
    #[error("{name}: {count} {version} records where one may be, so none applies")]
    SeveralRecords {
        name: String,
        version: &'static str,
        count: usize,
    },
    #[error("{name}: {error}")]
    Record {
        name: String,
        #[source]
        error: RecordError,
    },
    #[error("{domain}: no rua destination may be used: {why}")]
    NoDestination { domain: String, why: String },
}

/// What is wrong with a record's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("does not start with v={0}")]
    Version(&'static str),
    #[error("tag without '=': {0:?}")]
    Tag(String),
    #[error("no rua tag, so no aggregate reports are asked for")]
    NoRua,
    #[error("bad rua URI {uri:?}: {reason}")]
    Uri { uri: String, reason: &'static str },
}

/// TXT queries. The DNS at the edge ([`TokioResolver`]), a table in tests.
pub trait TxtLookup {
    /// The TXT records at `name` (absolute, with its final dot), each
    /// one's strings joined; empty when the name has none or does not
    /// exist. `Err` only when the lookup itself failed.
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<String>, String>> + Send;
}

impl TxtLookup for TokioResolver {
    async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.txt_lookup(name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }
}

const DMARC1: &str = "DMARC1";
const TLSRPTV1: &str = "TLSRPTv1";

/// Where `policy_domain`'s DMARC aggregate reports may go: the mailto
/// URIs of the `rua` of its one `v=DMARC1` record at `_dmarc.` — or, when
/// it has none, the nearest parent's (RFC 7489 §6.6.3 falls back to the
/// organisational domain; without a public suffix list, the parents are
/// tried up to two labels, which finds it) — each outside the record's
/// domain kept only when its domain agrees to receive them (§7.1). Never
/// empty: no usable destination is an error saying why.
pub async fn dmarc_destinations<D: TxtLookup + Sync>(
    dns: &D,
    policy_domain: &str,
) -> Result<Vec<Destination>, RuaError> {
    let (domain, name, record) = dmarc_record(dns, &domain_key(policy_domain)).await?;
    let dests = parse_dmarc_rua(&record).map_err(|error| RuaError::Record {
        name: name.clone(),
        error,
    })?;
    let mut kept = Vec::new();
    let mut why = Vec::new();
    for d in dests {
        let Destination::Mailto { address, .. } = &d else {
            continue;
        };
        let rua_domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        if same_organisation(&domain, &rua_domain) {
            kept.push(d);
            continue;
        }
        match verified(dns, &domain, &rua_domain).await {
            Ok(true) => kept.push(d),
            Ok(false) => {
                debug!(domain, rua = %address, "rua outside the domain not verified");
                why.push(format!(
                    "{address}: {domain}._report._dmarc.{rua_domain} has no v=DMARC1 record"
                ));
            }
            Err(reason) => {
                debug!(domain, rua = %address, reason, "rua verification lookup failed");
                why.push(format!("{address}: verification lookup failed: {reason}"));
            }
        }
    }
    if kept.is_empty() {
        if why.is_empty() {
            why.push("no mailto URI in rua".into());
        }
        return Err(RuaError::NoDestination {
            domain,
            why: why.join("; "),
        });
    }
    Ok(kept)
}

/// The DMARC record for `domain`: its own, else the nearest parent's
/// with one (not above two labels): (the record's domain, its name, the
/// record). The first error other than "no record" ends the walk.
async fn dmarc_record<D: TxtLookup + Sync>(
    dns: &D,
    domain: &str,
) -> Result<(String, String, String), RuaError> {
    let mut at = domain.to_string();
    loop {
        let name = format!("_dmarc.{at}.");
        match one_record(dns, &name, DMARC1).await {
            Ok(record) => return Ok((at, name, record)),
            Err(RuaError::NoRecord { .. }) if at.matches('.').count() >= 2 => {
                at = at
                    .split_once('.')
                    .map(|(_, parent)| parent.to_string())
                    .unwrap_or_default();
            }
            Err(e) => {
                return Err(match e {
                    // Name the domain asked about, not the last parent.
                    RuaError::NoRecord { version, .. } => RuaError::NoRecord {
                        name: format!("_dmarc.{domain}."),
                        version,
                    },
                    e => e,
                });
            }
        }
    }
}

/// Where `policy_domain`'s TLS reports may go: the mailto and https URIs
/// of the `rua` of its one `v=TLSRPTv1` record at `_smtp._tls.` (RFC 8460
/// §3). Never empty.
pub async fn tlsrpt_destinations<D: TxtLookup + Sync>(
    dns: &D,
    policy_domain: &str,
) -> Result<Vec<Destination>, RuaError> {
    let domain = domain_key(policy_domain);
    let name = format!("_smtp._tls.{domain}.");
    let record = one_record(dns, &name, TLSRPTV1).await?;
    let dests = parse_tlsrpt_rua(&record).map_err(|error| RuaError::Record { name, error })?;
    if dests.is_empty() {
        return Err(RuaError::NoDestination {
            domain,
            why: "no mailto or https URI in rua".into(),
        });
    }
    Ok(dests)
}

/// The one record at `name` of `version`: both RFCs discard the records
/// of other versions and then use none when more than one is left.
async fn one_record<D: TxtLookup + Sync>(
    dns: &D,
    name: &str,
    version: &'static str,
) -> Result<String, RuaError> {
    let records = dns.txt(name).await.map_err(|reason| RuaError::Lookup {
        name: name.to_string(),
        reason,
    })?;
    let mut ours: Vec<String> = records
        .into_iter()
        .filter(|r| has_version(r, version))
        .collect();
    match ours.len() {
        0 => Err(RuaError::NoRecord {
            name: name.to_string(),
            version,
        }),
        1 => Ok(ours.remove(0)),
        count => Err(RuaError::SeveralRecords {
            name: name.to_string(),
            version,
            count,
        }),
    }
}

/// RFC 7489 §7.1: may reports about `policy_domain` go to an address at
/// `rua_domain`? Asked of `<policy_domain>._report._dmarc.<rua_domain>`
/// (a wildcard there answers for every domain, by the DNS itself). A
/// `rua` in that record, which §7.1 lets the receiver use to name other
/// addresses, is not followed: the report goes to the verified address.
async fn verified<D: TxtLookup + Sync>(
    dns: &D,
    policy_domain: &str,
    rua_domain: &str,
) -> Result<bool, String> {
    let name = format!("{policy_domain}._report._dmarc.{rua_domain}.");
    let records = dns.txt(&name).await?;
    Ok(records.iter().any(|r| has_version(r, DMARC1)))
}

/// Whether two domains are under one organisational domain, decided
/// without the Public Suffix List, so conservatively: equal, or one a
/// subdomain of the other (and that other more than a top-level domain).
/// Anything else is verified (RFC 7489 §7.1), so misjudging two domains
/// of one organisation as two costs a DNS query, and at worst withholds
/// a report whose domain has no verification record: it never sends one
/// where it was not asked for. The one case it lets through unverified
/// that a list would not: a parent that is itself a public suffix of
/// more than one label (`co.uk`, `github.io`) receiving about a child.
fn same_organisation(a: &str, b: &str) -> bool {
    let under = |child: &str, parent: &str| {
        parent.contains('.')
            && child
                .strip_suffix(parent)
                .is_some_and(|rest| rest.ends_with('.'))
    };
    !a.is_empty() && (a == b || under(a, b) || under(b, a))
}

fn has_version(record: &str, version: &str) -> bool {
    let first = record.split(';').next().unwrap_or("");
    match first.split_once('=') {
        Some((tag, value)) => tag.trim() == "v" && value.trim() == version,
        None => false,
    }
}

/// The value of `rua` in a `tag=value; ...` record whose first tag is
/// `v=<version>`.
fn rua_value(record: &str, version: &'static str) -> Result<String, RecordError> {
    if !has_version(record, version) {
        return Err(RecordError::Version(version));
    }
    let mut rua = None;
    for part in record.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (tag, value) = part
            .split_once('=')
            .ok_or_else(|| RecordError::Tag(part.to_string()))?;
        if tag.trim().eq_ignore_ascii_case("rua") {
            rua = Some(value.trim().to_string());
        }
    }
    rua.ok_or(RecordError::NoRua)
}

/// The mailto destinations of a DMARC record's `rua` (RFC 7489 §6.3,
/// with §6.2's `!size`). Other schemes are left out: this sends DMARC
/// reports by mail only.
pub fn parse_dmarc_rua(record: &str) -> Result<Vec<Destination>, RecordError> {
    let value = rua_value(record, DMARC1)?;
    let mut out = Vec::new();
    for uri in value.split(',').map(str::trim) {
        let (uri, max_bytes) = split_size(uri)?;
        if let Some(address) = mailto(uri)? {
            out.push(Destination::Mailto { address, max_bytes });
        }
    }
    Ok(out)
}

/// The mailto and https destinations of a TLS-RPT record's `rua` (RFC
/// 8460 §3); other schemes are left out.
pub fn parse_tlsrpt_rua(record: &str) -> Result<Vec<Destination>, RecordError> {
    let value = rua_value(record, TLSRPTV1)?;
    let mut out = Vec::new();
    for uri in value.split(',').map(str::trim) {
        if let Some(address) = mailto(uri)? {
            out.push(Destination::Mailto {
                address,
                max_bytes: None,
            });
        } else if let Some(rest) = strip_scheme(uri, "https") {
            let host = rest
                .strip_prefix("//")
                .and_then(|r| r.split(['/', '?', '#']).next())
                .unwrap_or("");
            if host.is_empty() || uri.contains(char::is_whitespace) {
                return Err(RecordError::Uri {
                    uri: uri.to_string(),
                    reason: "an https URI needs a host",
                });
            }
            out.push(Destination::Https(uri.to_string()));
        }
    }
    Ok(out)
}

/// `uri` without a `!size` suffix, and the size in bytes (`k`, `m`, `g`,
/// `t`: powers of 2^10, RFC 7489 §6.2).
fn split_size(uri: &str) -> Result<(&str, Option<u64>), RecordError> {
    let bad = |reason| RecordError::Uri {
        uri: uri.to_string(),
        reason,
    };
    // A `!` inside the address (RFC 5322 allows one) is not a size.
    let Some((base, size)) = uri.rsplit_once('!').filter(|(_, s)| !s.contains('@')) else {
        return Ok((uri, None));
    };
    let (digits, shift) = match size.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(bad("unknown size unit")),
            };
            (&size[..i], shift)
        }
        _ => (size, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("size limit is not a number"));
    }
    let n: u64 = digits.parse().map_err(|_| bad("size limit too large"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("size limit too large"))?;
    Ok((base, Some(bytes)))
}

fn strip_scheme<'a>(uri: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = uri.split_once(':')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// The address of a mailto URI (RFC 6068): `None` for another scheme.
fn mailto(uri: &str) -> Result<Option<String>, RecordError> {
    let bad = |reason| RecordError::Uri {
        uri: uri.to_string(),
        reason,
    };
    if !uri.contains(':') {
        return Err(bad("no scheme"));
    }
    let Some(rest) = strip_scheme(uri, "mailto") else {
        return Ok(None);
    };
    // Headers (`?subject=...`) are not ours to add.
    let to = rest.split('?').next().unwrap_or("");
    let address = percent_decode(to).ok_or_else(|| bad("bad %-escape"))?;
    if address.contains(',') {
        return Err(bad("one address per URI"));
    }
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or_else(|| bad("no @ in the address"))?;
    let valid_domain = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let valid_local = !local.is_empty()
        && !local
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'));
    if !valid_domain || !valid_local {
        return Err(bad("not a mail address"));
    }
    Ok(Some(format!("{local}@{}", domain_key(domain))))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
