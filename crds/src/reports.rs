//! Aggregate reports for a whole Relay: DMARC (RFC 7489 §7.2) and
//! TLS-RPT (RFC 8460).
//!
//! A receiver expects one report per reporting organisation and period,
//! and a Relay is a fleet of pods. So each pod counts what it saw in
//! per-period aggregates (kept in its spool, handed to a peer with its
//! queue when it drains), serves them over the internal API, and the
//! operator merges every pod's into the reports it sends. This module is
//! what both sides share: what users set (`Relay.spec.reports`), what the
//! pods are told (`RelayConfig.reports`), the aggregates as they cross the
//! wire, and the internal API's paths and request signature.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use ring::hmac;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------
// What users set, and what the operator reports back.

/// `Relay.spec.reports`: who the reports come from and which are sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportsSpec {
    /// The reporting organisation (`org_name` of DMARC, `organization-name`
    /// of TLS-RPT), e.g. `Example Ltd`.
    #[schemars(length(min = 1, max = 200))]
    pub organization: String,
    /// Contact address given in the reports (`email`, `contact-info`).
    #[schemars(length(min = 3, max = 254))]
    pub contact: String,
    /// Envelope sender and From: of the report mails. Its domain should be
    /// a hosted MailDomain with DKIM, so the reports go out signed.
    #[schemars(length(min = 3, max = 254))]
    pub from: String,
    /// Which reports to send.
    #[serde(default = "ReportKind::all")]
    #[schemars(length(min = 1, max = 2))]
    pub kinds: Vec<ReportKind>,
    /// Length of a reporting period (UTC, aligned to the epoch); receivers
    /// expect a day. Shorter periods are for tests.
    #[serde(default = "default_period")]
    #[schemars(length(max = 32))]
    pub period: String,
}

fn default_period() -> String {
    "24h".into()
}

/// A kind of aggregate report.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum ReportKind {
    /// DMARC aggregate reports about inbound mail, to the sender domain's `rua`.
    Dmarc,
    /// TLS reports about outbound deliveries, to the destination's `_smtp._tls` `rua`.
    TlsRpt,
}

impl ReportKind {
    pub fn all() -> Vec<ReportKind> {
        vec![ReportKind::Dmarc, ReportKind::TlsRpt]
    }
}

/// `Relay.status.reports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportsStatus {
    /// Start of the last period reported (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_period_start: Option<String>,
    /// End of the last period reported (exclusive; RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_period_end: Option<String>,
    /// Reports sent for that period.
    #[serde(default)]
    pub sent: u32,
    /// Domains that asked for no report, or whose reports could not be
    /// sent, for that period: one line each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// `RelayConfig.reports`: what a pod counts, and over which periods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportsConfig {
    pub period_secs: u64,
    pub dmarc: bool,
    pub tls_rpt: bool,
}

impl ReportsConfig {
    /// Start of the period holding `unix` (seconds).
    pub fn period_start(&self, unix: i64) -> i64 {
        let len = self.period_secs.max(1) as i64;
        unix.div_euclid(len) * len
    }
}

// ---------------------------------------------------------------------
// The aggregates, as a pod serves them and the operator merges them.

/// What one pod (or, merged, the fleet) saw in one period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodAggregates {
    /// Unix seconds, UTC, inclusive.
    pub start: i64,
    /// Unix seconds, UTC, exclusive.
    pub end: i64,
    #[serde(default)]
    pub dmarc: Vec<DmarcRow>,
    #[serde(default)]
    pub tls: Vec<TlsRow>,
}

impl PeriodAggregates {
    pub fn new(start: i64, end: i64) -> Self {
        PeriodAggregates {
            start,
            end,
            ..PeriodAggregates::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dmarc.is_empty() && self.tls.is_empty()
    }

    /// Add `other`'s counts (the same period) to these. Linear in the
    /// rows of both: the operator merges every pod's periods with it, and
    /// a period may hold tens of thousands of rows.
    pub fn merge(&mut self, other: &PeriodAggregates) {
        let mut dmarc: HashMap<DmarcRow, usize> = (self.dmarc.iter().enumerate())
            .map(|(i, r)| (r.key(), i))
            .collect();
        for row in &other.dmarc {
            match dmarc.entry(row.key()) {
                Entry::Occupied(e) => {
                    let r = &mut self.dmarc[*e.get()];
                    r.count = r.count.saturating_add(row.count);
                }
                Entry::Vacant(e) => {
                    e.insert(self.dmarc.len());
                    self.dmarc.push(row.clone());
                }
            }
        }
        let mut tls: HashMap<TlsRow, usize> = (self.tls.iter().enumerate())
            .map(|(i, r)| (r.key(), i))
            .collect();
        for row in &other.tls {
            match tls.entry(row.key()) {
                Entry::Occupied(e) => self.tls[*e.get()].add_counts(row),
                Entry::Vacant(e) => {
                    e.insert(self.tls.len());
                    self.tls.push(row.clone());
                }
            }
        }
    }

    /// Count `row`: into the row with the same key if there is one
    /// (through [`Self::merge`], which indexes every row: for a few rows).
    pub fn add_dmarc(&mut self, row: DmarcRow) {
        self.merge(&PeriodAggregates {
            dmarc: vec![row],
            ..PeriodAggregates::default()
        });
    }

    /// Count `row`: successes and failure details into the row of the
    /// same policy if there is one (as [`Self::add_dmarc`]).
    pub fn add_tls(&mut self, row: TlsRow) {
        self.merge(&PeriodAggregates {
            tls: vec![row],
            ..PeriodAggregates::default()
        });
    }
}

/// One row of a DMARC report (RFC 7489 Appendix C `record`): messages
/// from one source IP with the same identifiers and results.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DmarcRow {
    /// RFC5322.From domain: the report goes to its `rua`.
    pub header_from: String,
    /// RFC5321.MailFrom domain (empty for the null sender).
    #[serde(default)]
    pub envelope_from: String,
    pub source_ip: IpAddr,
    /// The policy found for `header_from`.
    pub policy: PublishedPolicy,
    /// What the relay did: `none`, `quarantine` or `reject`.
    pub disposition: Disposition,
    /// Whether an aligned DKIM signature passed.
    pub dkim_aligned: bool,
    /// Whether aligned SPF passed.
    pub spf_aligned: bool,
    /// Every DKIM signature's result.
    #[serde(default)]
    pub dkim: Vec<DkimAuth>,
    /// The SPF result (MAIL FROM, or HELO for the null sender).
    pub spf: SpfAuth,
    pub count: u64,
}

impl DmarcRow {
    /// The row's key: the row with no count. Rows with equal keys are
    /// counted together.
    pub fn key(&self) -> DmarcRow {
        DmarcRow {
            count: 0,
            ..self.clone()
        }
    }
}

/// The DMARC record as published (RFC 7489 Appendix C `PolicyPublishedType`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedPolicy {
    /// The domain whose record it is (the organisational domain's when
    /// `header_from` has none).
    pub domain: String,
    /// `r` or `s`.
    pub adkim: String,
    /// `r` or `s`.
    pub aspf: String,
    /// `none`, `quarantine` or `reject`.
    pub p: String,
    /// `none`, `quarantine` or `reject`.
    pub sp: String,
    pub pct: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    None,
    Quarantine,
    Reject,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::None => "none",
            Disposition::Quarantine => "quarantine",
            Disposition::Reject => "reject",
        }
    }
}

/// One DKIM signature's result (`DKIMAuthResultType`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DkimAuth {
    pub domain: String,
    #[serde(default)]
    pub selector: String,
    /// `none`, `pass`, `fail`, `policy`, `neutral`, `temperror`, `permerror`.
    pub result: String,
}

/// The SPF result (`SPFAuthResultType`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpfAuth {
    pub domain: String,
    /// `mfrom` or `helo`.
    pub scope: String,
    /// `none`, `neutral`, `pass`, `fail`, `softfail`, `temperror`, `permerror`.
    pub result: String,
}

/// TLS results of deliveries under one policy of one domain (RFC 8460 §4.4
/// `policies[]` entry).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRow {
    /// The recipient domain the policy is for: the report goes to its
    /// `_smtp._tls` `rua`.
    pub policy_domain: String,
    pub policy_type: TlsPolicyType,
    /// The policy as published: the MTA-STS policy's lines, or the TLSA
    /// records in presentation form; empty for `no-policy-found`.
    #[serde(default)]
    pub policy_string: Vec<String>,
    /// MTA-STS `mx` patterns; empty otherwise.
    #[serde(default)]
    pub mx_host: Vec<String>,
    /// Sessions that met the policy.
    pub successes: u64,
    #[serde(default)]
    pub failures: Vec<TlsFailure>,
}

impl TlsRow {
    /// The row's key: its policy, without counts.
    pub fn key(&self) -> TlsRow {
        TlsRow {
            policy_domain: self.policy_domain.clone(),
            policy_type: self.policy_type,
            policy_string: self.policy_string.clone(),
            mx_host: self.mx_host.clone(),
            successes: 0,
            failures: Vec::new(),
        }
    }

    /// Add `other`'s successes and failures (the same policy) to these.
    fn add_counts(&mut self, other: &TlsRow) {
        self.successes = self.successes.saturating_add(other.successes);
        let mut index: HashMap<TlsFailure, usize> = (self.failures.iter().enumerate())
            .map(|(i, f)| (f.key(), i))
            .collect();
        for f in &other.failures {
            match index.entry(f.key()) {
                Entry::Occupied(e) => {
                    let g = &mut self.failures[*e.get()];
                    g.count = g.count.saturating_add(f.count);
                }
                Entry::Vacant(e) => {
                    e.insert(self.failures.len());
                    self.failures.push(f.clone());
                }
            }
        }
    }
}

/// RFC 8460 §4.4 `policy-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl TlsPolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicyType::Sts => "sts",
            TlsPolicyType::Tlsa => "tlsa",
            TlsPolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// Sessions that failed alike (RFC 8460 §4.4 `failure-details[]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsFailure {
    /// RFC 8460 §4.3: `starttls-not-supported`, `certificate-host-mismatch`,
    /// `certificate-expired`, `certificate-not-trusted`, `validation-failure`,
    /// `tlsa-invalid`, `dnssec-invalid`, `dane-required`,
    /// `sts-policy-fetch-error`, `sts-policy-invalid`, `sts-webpki-invalid`.
    pub result_type: String,
    /// This pod's address as the receiver saw it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    /// The relay's own words for what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_information: Option<String>,
    pub count: u64,
}

impl TlsFailure {
    /// The entry's key: the entry with no count.
    pub fn key(&self) -> TlsFailure {
        TlsFailure {
            count: 0,
            ..self.clone()
        }
    }
}

// ---------------------------------------------------------------------
// The internal API between the operator and the pods.
//
// Served on the pods' HTTP port (the one with /metrics) and open to
// nobody without the Relay's key: every request is signed, like the event
// webhooks', with a key derived from the hand-off secret the operator
// creates for the Relay (so no second Secret, and a signature made for
// the API is never one for the hand-off protocol, nor the reverse).

/// `GET /internal/reports?start=UNIX`: the pod's aggregates of the period
/// starting then, as [`PeriodAggregates`] (empty when it saw nothing).
pub const REPORTS_PATH: &str = "/internal/reports";
/// `GET /internal/status`: the pod's view of its webhooks, as [`PodStatus`].
pub const STATUS_PATH: &str = "/internal/status";
/// `POST /internal/submit`: queue a mail of the operator's (a report), as
/// [`Submission`]; answers [`Submitted`]. Idempotent for ten minutes: the
/// same body again gets the same queue id, so a lost answer may be retried.
pub const SUBMIT_PATH: &str = "/internal/submit";
/// The request header carrying `t=UNIX,v1=HEX`.
pub const SIGNATURE_HEADER: &str = "x-mailrelay-internal-signature";
/// How far a signature's time may be from the pod's clock.
pub const SIGNATURE_WINDOW_SECS: i64 = 300;

/// What a pod tells the operator about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub webhooks: Vec<WebhookHealth>,
}

/// One event webhook as a pod sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookHealth {
    /// `WebhookConfig.name`: `relay:URL` or `domain:NAME`.
    pub name: String,
    pub url: String,
    /// Events waiting for it.
    pub pending: u64,
    /// Failed requests since the last success (0: working, or not tried).
    pub consecutive_failures: u64,
    /// Unix seconds of the last accepted request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<i64>,
    /// The last failure, e.g. `connection refused` or `HTTP 500`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix seconds of the first failure of the current run of failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<i64>,
}

/// A mail the operator has the relay send (a report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    /// Envelope sender; its domain must be hosted by the Relay.
    pub from: String,
    pub to: Vec<String>,
    /// The whole message (CRLF line ends), base64.
    pub message: String,
}

/// The relay's answer to a [`Submission`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted {
    pub queue_id: String,
}

/// The API's HMAC key from the Relay's hand-off secret.
pub fn internal_key(handoff_secret: &[u8]) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, handoff_secret);
    let derived = hmac::sign(&root, b"mailrelay internal api v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

fn signed_bytes(unix: i64, method: &str, path_and_query: &str, body: &[u8]) -> Vec<u8> {
    let mut msg = format!("{unix}.{method} {path_and_query}.").into_bytes();
    msg.extend_from_slice(body);
    msg
}

/// The signature header's value for a request at `unix`.
pub fn sign_request(
    key: &hmac::Key,
    unix: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    let tag = hmac::sign(key, &signed_bytes(unix, method, path_and_query, body));
    format!("t={unix},v1={}", crate::configformat::hex(tag.as_ref()))
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no {SIGNATURE_HEADER} header")]
    Missing,
    #[error("the signature header is not t=UNIX,v1=HEX")]
    Malformed,
    #[error("the signature's time is more than {SIGNATURE_WINDOW_SECS} s from ours")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// The time and tag of a signature header, if it is fresh at `now`:
/// what can be checked before the body is read, so that nobody without
/// a signature made in the last few minutes can make a pod buffer one.
pub fn fresh_signature(header: Option<&str>, now: i64) -> Result<(i64, Vec<u8>), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = crate::configformat::unhex(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    // abs_diff: `now - t` overflows for a `t` near i64::MIN or MAX.
    if now.abs_diff(t) > SIGNATURE_WINDOW_SECS as u64 {
        return Err(SignatureError::Stale);
    }
    Ok((t, v1))
}

/// Check a request's signature header against `key` at time `now`.
pub fn verify_request(
    key: &hmac::Key,
    header: Option<&str>,
    now: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    let (t, v1) = fresh_signature(header, now)?;
    hmac::verify(key, &signed_bytes(t, method, path_and_query, body), &v1)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ip: &str, count: u64) -> DmarcRow {
        DmarcRow {
            header_from: "example.org".into(),
            envelope_from: "example.org".into(),
            source_ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            policy: PublishedPolicy {
                domain: "example.org".into(),
                adkim: "r".into(),
                aspf: "r".into(),
                p: "none".into(),
                sp: "none".into(),
                pct: 100,
            },
            disposition: Disposition::None,
            dkim_aligned: true,
            spf_aligned: false,
            dkim: vec![DkimAuth {
                domain: "example.org".into(),
                selector: "s1".into(),
                result: "pass".into(),
            }],
            spf: SpfAuth {
                domain: "example.org".into(),
                scope: "mfrom".into(),
                result: "fail".into(),
            },
            count,
        }
    }

    fn tls(successes: u64, failures: &[(&str, u64)]) -> TlsRow {
        TlsRow {
            policy_domain: "example.net".into(),
            policy_type: TlsPolicyType::Sts,
            policy_string: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_host: vec!["mx.example.net".into()],
            successes,
            failures: failures
                .iter()
                .map(|(t, count)| TlsFailure {
                    result_type: (*t).into(),
                    sending_mta_ip: None,
                    receiving_mx_hostname: "mx.example.net".into(),
                    receiving_ip: None,
                    additional_information: None,
                    count: *count,
                })
                .collect(),
        }
    }

    #[test]
    fn merging_two_pods_adds_the_counts_of_equal_rows_and_keeps_the_others() {
        let mut a = PeriodAggregates::new(0, 86400);
        a.add_dmarc(row("192.0.2.1", 3));
        a.add_tls(tls(5, &[("certificate-expired", 1)]));
        let mut b = PeriodAggregates::new(0, 86400);
        b.add_dmarc(row("192.0.2.1", 2));
        b.add_dmarc(row("192.0.2.2", 7));
        b.add_tls(tls(
            4,
            &[("certificate-expired", 2), ("validation-failure", 1)],
        ));
        a.merge(&b);
        let counts: Vec<_> = a
            .dmarc
            .iter()
            .map(|r| (r.source_ip.to_string(), r.count))
            .collect();
        assert_eq!(counts, [("192.0.2.1".into(), 5), ("192.0.2.2".into(), 7)]);
        assert_eq!(a.tls.len(), 1);
        assert_eq!(a.tls[0].successes, 9);
        let f: Vec<_> = a.tls[0]
            .failures
            .iter()
            .map(|f| (f.result_type.as_str(), f.count))
            .collect();
        assert_eq!(f, [("certificate-expired", 3), ("validation-failure", 1)]);
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_to_it_does_not() {
        let key = internal_key(b"0123456789abcdef0123456789abcdef");
        let h = sign_request(&key, 1000, "GET", "/internal/reports?start=0", b"");
        assert_eq!(
            verify_request(
                &key,
                Some(&h),
                1010,
                "GET",
                "/internal/reports?start=0",
                b""
            ),
            Ok(())
        );
        assert_eq!(
            verify_request(
                &key,
                Some(&h),
                1010,
                "GET",
                "/internal/reports?start=86400",
                b""
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_request(
                &key,
                Some(&h),
                1010,
                "POST",
                "/internal/reports?start=0",
                b""
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_request(
                &key,
                Some(&h),
                1000 + SIGNATURE_WINDOW_SECS + 1,
                "GET",
                "/internal/reports?start=0",
                b""
            ),
            Err(SignatureError::Stale)
        );
        let other = internal_key(b"fedcba9876543210fedcba9876543210");
        assert_eq!(
            verify_request(
                &other,
                Some(&h),
                1010,
                "GET",
                "/internal/reports?start=0",
                b""
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_request(&key, None, 1010, "GET", "/", b""),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_request(&key, Some("t=1000,v1=zz"), 1010, "GET", "/", b""),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_signature_time_at_the_ends_of_the_range_is_stale_not_a_panic() {
        let key = internal_key(b"0123456789abcdef0123456789abcdef");
        for t in [i64::MIN, i64::MAX] {
            let h = sign_request(&key, t, "GET", "/", b"");
            for now in [0, i64::MIN, i64::MAX] {
                let expected = if now == t {
                    Ok(())
                } else {
                    Err(SignatureError::Stale)
                };
                assert_eq!(
                    verify_request(&key, Some(&h), now, "GET", "/", b""),
                    expected,
                    "t={t} now={now}"
                );
            }
        }
        assert_eq!(
            fresh_signature(Some("t=-9223372036854775808,v1=00"), 1000),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            fresh_signature(Some("t=1000,v1=00ff"), 1300),
            Ok((1000, vec![0, 0xff]))
        );
    }

    #[test]
    fn merging_many_distinct_rows_keeps_each_once_and_adds_repeats() {
        let mut a = PeriodAggregates::new(0, 86400);
        let mut b = PeriodAggregates::new(0, 86400);
        for i in 0..5000u32 {
            let ip = std::net::Ipv6Addr::from(u128::from(i)).to_string();
            a.dmarc.push(row(&ip, 1));
            b.dmarc.push(row(&ip, 2));
        }
        b.dmarc.push(row("192.0.2.9", 4));
        a.merge(&b);
        assert_eq!(a.dmarc.len(), 5001);
        assert!(a.dmarc[..5000].iter().all(|r| r.count == 3));
        assert_eq!(a.dmarc[5000].count, 4);
    }

    #[test]
    fn periods_are_aligned_to_the_epoch() {
        let c = ReportsConfig {
            period_secs: 86400,
            dmarc: true,
            tls_rpt: true,
        };
        assert_eq!(c.period_start(86400 * 3 + 5), 86400 * 3);
        assert_eq!(c.period_start(86400 * 3), 86400 * 3);
        assert_eq!(c.period_start(-1), -86400);
    }
}
