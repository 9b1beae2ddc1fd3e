//! Whether an accepted message is signed, and the signing itself.
//!
//! Which messages: [`decide`]. Keys: [`super::keys::DkimKeys`]. When a
//! message should be signed but its key is missing or broken, it is
//! refused with 451 4.3.0 rather than sent unsigned — what Postfix with
//! OpenDKIM does by default (the milter's internal errors tempfail), and
//! what keeps mail of a domain with a DMARC `p=reject` policy from being
//! sent only to be rejected or bounced.

use std::sync::Arc;

use mail_auth::common::crypto::{Algorithm, DkimKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mailrelay_crds::config::DkimConfig;
use mailrelay_crds::relay::ListenerName;

use super::headers::{self, AuthorError};
use crate::config::runtime::Runtime;

/// What to do with one accepted message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision<'a> {
    /// Sign as `domain` (the `d=` tag: the From: address's domain) with the
    /// hosted domain's key.
    Sign {
        domain: String,
        dkim: &'a DkimConfig,
    },
    /// Leave unsigned, for this reason (logged with the queue id).
    Skip(Skip),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Skip {
    #[error("not submitted by an authenticated client")]
    NotSubmission,
    #[error("{0}")]
    Author(AuthorError),
    #[error("the From: domain is not hosted here")]
    NotHosted,
    #[error("the From: domain has no DKIM key")]
    NoDkim,
    #[error("the account may not send as the From: address")]
    NotAllowed,
}

/// Sign mail that an authenticated account submitted with a From: address
/// of a hosted domain that has a DKIM key — and only a From: address that
/// account may send as (the rule MAIL FROM follows), so one tenant's
/// account never gets another tenant's signature. Mail received on port 25
/// is someone else's to sign.
pub(crate) fn decide<'a>(
    rt: &'a Runtime,
    listener: ListenerName,
    login: Option<&str>,
    message: &[u8],
) -> Decision<'a> {
    let submission = matches!(
        listener,
        ListenerName::Submission | ListenerName::Submissions
    );
    let Some(login) = login.filter(|_| submission) else {
        return Decision::Skip(Skip::NotSubmission);
    };
    let author = match headers::author(message) {
        Ok(a) => a,
        Err(e) => return Decision::Skip(Skip::Author(e)),
    };
    let Some(domain) = rt.domain(&author.domain) else {
        return Decision::Skip(Skip::NotHosted);
    };
    let Some(dkim) = &domain.dkim else {
        return Decision::Skip(Skip::NoDkim);
    };
    if !rt.may_send_as(login, &author.normalised()) {
        return Decision::Skip(Skip::NotAllowed);
    }
    Decision::Sign {
        domain: author.domain,
        dkim,
    }
}

/// A loaded key shared between messages (the signer wants to own its key).
pub(crate) struct Shared(pub(crate) Arc<DkimKey>);

impl SigningKey for Shared {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("DKIM signing failed: {0}")]
pub struct SignError(String);

/// The `DKIM-Signature:` field for `message` (CRLF-terminated, folded),
/// relaxed/relaxed (RFC 6376 §3.4), signing the fields
/// [`headers::signed_header_names`] picks.
pub fn signature(
    key: Arc<DkimKey>,
    domain: &str,
    selector: &str,
    message: &[u8],
) -> Result<String, SignError> {
    let signature = DkimSigner::from_key(Shared(key))
        .domain(domain)
        .selector(selector)
        .headers(headers::signed_header_names(message))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)
        .map_err(|e| SignError(e.to_string()))?;
    Ok(signature.to_header())
}
