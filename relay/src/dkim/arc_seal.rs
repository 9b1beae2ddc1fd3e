//! ARC sealing (RFC 8617 §5.1) of mail a hosted domain receives on the
//! `smtp` listener, when its MailDomain asks for it (`spec.arc.seal`):
//! the relay is then an intermediary between the sender and the domain's
//! mailbox server, which may forward the message off-site, where SPF and
//! DKIM often break. The ARC set carries the checks made here to the next
//! receiver: ARC-Authentication-Results (a copy of our
//! `Authentication-Results:`), ARC-Message-Signature and ARC-Seal, signed
//! with the domain's DKIM key, `d=` the domain.
//!
//! Which domain seals: [`decide`]. Which instance and `cv=`: [`instance`],
//! from the chain the message carries ([`Shape`]) and the verdict of the
//! inbound checks. Both pure; [`seal`] signs, [`seal_accepted`] loads the
//! key and runs it off the async threads.

use mail_auth::arc::{ArcSealer, ChainValidation, Set};
use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::{Header, HeaderWriter};
use mail_auth::dkim::Canonicalization;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult};
use mailrelay_crds::config::DkimConfig;

use super::{DkimKeys, headers};
use crate::config::runtime::{Recipient, Runtime};
use crate::smtp::address::Address;
use crate::smtp::inbound_auth::arc::Verdict;
use crate::smtp::inbound_auth::results::Arc;
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;

/// RFC 8617 §4.2.1: instances run from 1 to 50.
const MAX_INSTANCE: u32 = 50;

/// RFC 5322 §2.1.1: a line is at most 998 octets. The AAR is written on
/// one line (see [`one_line`]).
const MAX_LINE: usize = 998;

/// Which hosted domain seals `recipients`' message, if any: the first
/// recipient's whose MailDomain has `spec.arc.seal` (one message gets one
/// ARC set, whatever the number of recipients).
pub(crate) fn decide<'a>(
    rt: &'a Runtime,
    recipients: &[Address],
) -> Option<(&'a str, &'a DkimConfig)> {
    recipients.iter().find_map(|to| {
        let Recipient::Hosted(d) = rt.recipient(&to.local, &to.domain) else {
            return None;
        };
        d.arc_seal
            .then_some(d.dkim.as_ref())
            .flatten()
            .map(|dkim| (d.name.as_str(), dkim))
    })
}

/// The ARC sets a message carries, as plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// An ARC field that did not parse.
    pub malformed: bool,
    /// `i=` of each ARC-Seal, in instance order, with its `cv=`.
    pub seals: Vec<(u32, Arc)>,
    /// `i=` of each ARC-Message-Signature, in instance order.
    pub signatures: Vec<u32>,
    /// `i=` of each ARC-Authentication-Results, in instance order.
    pub results: Vec<u32>,
}

impl Shape {
    pub(crate) fn of(m: &AuthenticatedMessage<'_>) -> Self {
        Self {
            malformed: m.has_arc_errors,
            seals: m
                .as_headers
                .iter()
                .map(|h| (h.header.i, cv(&h.header.cv)))
                .collect(),
            signatures: m.ams_headers.iter().map(|h| h.header.i).collect(),
            results: m.aar_headers.iter().map(|h| h.header.i).collect(),
        }
    }
}

fn cv(c: &ChainValidation) -> Arc {
    match c {
        ChainValidation::None => Arc::None,
        ChainValidation::Fail => Arc::Fail,
        ChainValidation::Pass => Arc::Pass,
    }
}

/// The new ARC set's place in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Instance {
    pub i: u32,
    pub cv: Arc,
}

/// Why a message that should be sealed is passed on without a new set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotSealed {
    #[error("the message does not parse")]
    Unparsable,
    #[error("the ARC chain is malformed (fields that do not parse, or sets not numbered 1..n)")]
    Malformed,
    #[error("the ARC chain already has {MAX_INSTANCE} sets")]
    TooLong,
    #[error("the newest ARC-Seal says cv=fail")]
    AlreadyFailed,
    #[error("Authentication-Results is too long for one line")]
    ResultsTooLong,
}

/// Where the new set goes (RFC 8617 §5.1.1): `i=1, cv=none` on a message
/// without a chain; after `n` sets, `i=n+1` and `cv=pass` when the inbound
/// check validated the chain, `cv=fail` when not. No set is added after a
/// `cv=fail` seal (§5.1.2: the chain is over), past instance 50, or to a
/// chain whose sets cannot be told apart (no instance to follow).
pub(crate) fn instance(shape: &Shape, chain: Arc) -> Result<Instance, NotSealed> {
    let n = shape.seals.len() as u32;
    if shape.malformed
        || !shape.seals.iter().map(|(i, _)| *i).eq(1..=n)
        || !shape.signatures.iter().copied().eq(1..=n)
        || !shape.results.iter().copied().eq(1..=n)
    {
        return Err(NotSealed::Malformed);
    }
    let Some(&(last, last_cv)) = shape.seals.last() else {
        return Ok(Instance {
            i: 1,
            cv: Arc::None,
        });
    };
    if last_cv == Arc::Fail {
        return Err(NotSealed::AlreadyFailed);
    }
    if last >= MAX_INSTANCE {
        return Err(NotSealed::TooLong);
    }
    Ok(Instance {
        i: last + 1,
        cv: if chain == Arc::Pass {
            Arc::Pass
        } else {
            Arc::Fail
        },
    })
}

/// The `Authentication-Results:` field `field` as the AAR's value: the
/// field's value on one line, runs of white space made one space.
/// mail-auth writes the value into the seal's signed data as given, while
/// a verifier's relaxed canonicalisation unfolds it: only a value already
/// in that form signs the same on both sides.
pub(crate) fn one_line(field: &str) -> String {
    let value = field.split_once(':').map_or(field, |(name, v)| {
        if name.eq_ignore_ascii_case("Authentication-Results") {
            v
        } else {
            field
        }
    });
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The fields the ARC-Message-Signature covers: those a DKIM signature of
/// ours covers, and the DKIM signatures the message came with, which the
/// next receiver may want to trust as they were here.
fn signed_names(message: &[u8]) -> Vec<String> {
    let mut names = headers::signed_header_names(message);
    if headers::field_names(message)
        .iter()
        .any(|n| n.eq_ignore_ascii_case("DKIM-Signature"))
    {
        names.push("DKIM-Signature".to_string());
    }
    names
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    #[error("not sealed: {0}")]
    NotSealed(#[from] NotSealed),
    #[error("ARC sealing failed: {0}")]
    Failed(String),
}

/// The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
/// CRLF-terminated) for `message`, which is the message as accepted without
/// our trace fields; `results` is our `Authentication-Results:` field and
/// `chain` what the inbound check made of the chain `message` carries.
pub(crate) fn seal(
    key: std::sync::Arc<DkimKey>,
    domain: &str,
    selector: &str,
    message: &[u8],
    results: &str,
    chain: Arc,
) -> Result<String, SealError> {
    let parsed = AuthenticatedMessage::parse(message).ok_or(NotSealed::Unparsable)?;
    let planned = instance(&Shape::of(&parsed), chain)?;
    let aar = one_line(results);
    // "ARC-Authentication-Results: i=NN; " before the value.
    if aar.len() + 34 > MAX_LINE {
        return Err(NotSealed::ResultsTooLong.into());
    }
    let results = AuthenticationResults::new(&aar);
    // mail-auth numbers the set and picks cv= from the chain it is given:
    // the message's own sets, with the inbound check's verdict.
    let mut prior = ArcOutput::default().with_result(match planned.cv {
        Arc::Pass => DkimResult::Pass,
        Arc::None => DkimResult::None,
        Arc::Fail => DkimResult::Fail(mail_auth::Error::Arc(mail_auth::arc::ArcError::BrokenChain)),
    });
    for ((s, m), r) in parsed
        .as_headers
        .iter()
        .zip(&parsed.ams_headers)
        .zip(&parsed.aar_headers)
    {
        prior = prior.with_set(Set {
            signature: Header::new(m.name, m.value, &m.header),
            seal: Header::new(s.name, s.value, &s.header),
            results: Header::new(r.name, r.value, &r.header),
        });
    }
    let set = ArcSealer::from_key(super::sign::Shared(key))
        .domain(domain)
        .selector(selector)
        .headers(signed_names(message))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .seal(&parsed, &results, &prior)
        .map_err(|e| SealError::Failed(e.to_string()))?;
    let cv = cv(&set.seal.cv);
    if (set.seal.i, cv) != (planned.i, planned.cv) {
        return Err(SealError::Failed(format!(
            "sealed as i={} cv={}, not i={} cv={}",
            set.seal.i,
            cv.as_str(),
            planned.i,
            planned.cv.as_str()
        )));
    }
    Ok(set.to_header())
}

/// The reply when mail that must be sealed cannot be (its key is missing
/// or broken): as for DKIM signing, the client retries rather than the
/// message leaving without the set its domain asked for.
fn unavailable_reply() -> Reply {
    // RFC 3463 4.3.0: other or undefined mail system status.
    Reply::new(
        451,
        "4.3.0",
        "ARC sealing is not available for this recipient domain; try again later",
    )
}

/// Seal `content` (the message as accepted, without our trace fields) when
/// [`decide`] names a domain and the inbound checks ran (`verdict`): `Ok`
/// gives the content back with the ARC set to put in front of our
/// `Authentication-Results:`, if any; `Err` is the reply refusing the
/// message. A chain that cannot be extended ([`NotSealed`]) leaves the
/// message unsealed, as RFC 8617 §5.1.2 wants for a failed one.
pub(crate) async fn seal_accepted(
    keys: &DkimKeys,
    session: &Session,
    queue_id: &str,
    recipients: &[Address],
    verdict: Option<Verdict>,
    content: Vec<u8>,
) -> Result<(Vec<u8>, Option<String>), Reply> {
    let rt = session.runtime();
    let (Some(verdict), Some((domain, dkim))) = (verdict, decide(rt, recipients)) else {
        return Ok((content, None));
    };
    let path = dkim.private_key.path(&rt.config.secrets_dir);
    let key = match keys.get(&path, dkim.algorithm).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(queue_id, domain, error = %e, "refused: no usable key to ARC-seal with");
            return Err(unavailable_reply());
        }
    };
    let (domain, selector) = (domain.to_string(), dkim.selector.clone());
    let sealed = tokio::task::spawn_blocking(move || {
        let set = seal(
            key,
            &domain,
            &selector,
            &content,
            &verdict.results,
            verdict.chain,
        );
        (content, set, domain)
    })
    .await;
    match sealed {
        Ok((content, Ok(set), domain)) => {
            tracing::info!(queue_id, domain = %domain, "ARC-sealed");
            Ok((content, Some(set)))
        }
        Ok((content, Err(SealError::NotSealed(why)), domain)) => {
            tracing::info!(queue_id, domain = %domain, reason = %why, "not ARC-sealed");
            Ok((content, None))
        }
        Ok((_, Err(e), domain)) => {
            tracing::error!(queue_id, domain = %domain, error = %e, "refused: ARC sealing failed");
            Err(unavailable_reply())
        }
        Err(e) => {
            tracing::error!(queue_id, error = %e, "refused: ARC sealing task failed");
            Err(unavailable_reply())
        }
    }
}

#[cfg(test)]
#[path = "arc_seal_tests.rs"]
mod tests;
