//! DKIM signing of submitted mail (RFC 6376; Ed25519 by RFC 8463), once,
//! when it is accepted and before it is written to the spool: the 250
//! means the signed message is on disk, and retries send the same bytes.

pub(crate) mod arc_seal;
pub(crate) mod headers;
pub mod keys;
pub mod sign;

pub(crate) use keys::DkimKeys;

use mailrelay_crds::config::DkimConfig;

use crate::config::runtime::Runtime;
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;

/// The reply when mail that must be signed cannot be.
pub(crate) fn unavailable_reply() -> Reply {
    // RFC 3463 4.3.0: other or undefined mail system status; the client retries.
    Reply::new(
        451,
        "4.3.0",
        "DKIM signing is not available for this sender domain; try again later",
    )
}

/// Sign `content` (the message as accepted) when [`sign::decide`] says so:
/// `Ok` gives the content back with the `DKIM-Signature:` field to put in
/// front of it, if any; `Err` is the reply refusing the message.
/// Signing runs off the async threads (an RSA signature and a hash of the
/// whole body).
pub(crate) async fn sign_accepted(
    keys: &DkimKeys,
    session: &Session,
    queue_id: &str,
    content: Vec<u8>,
) -> Result<(Vec<u8>, Option<String>), Reply> {
    let rt = session.runtime();
    let (domain, dkim) =
        match sign::decide(rt, session.conn.listener, session.authenticated(), &content) {
            sign::Decision::Sign { domain, dkim } => (domain, dkim),
            sign::Decision::Skip(why) => {
                tracing::debug!(queue_id, reason = %why, "not DKIM-signed");
                return Ok((content, None));
            }
        };
    sign_as(keys, rt, domain, dkim, queue_id, content).await
}

/// Sign `content` as `domain` with `dkim`'s key: what [`sign_accepted`]
/// does once it has decided, and what the internal API's submissions
/// (the operator's reports, for a hosted From: domain) go through.
pub(crate) async fn sign_as(
    keys: &DkimKeys,
    rt: &Runtime,
    domain: String,
    dkim: &DkimConfig,
    queue_id: &str,
    content: Vec<u8>,
) -> Result<(Vec<u8>, Option<String>), Reply> {
    let path = dkim.private_key.path(&rt.config.secrets_dir);
    let key = match keys.get(&path, dkim.algorithm).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(queue_id, domain = %domain, error = %e, "refused: no usable DKIM key");
            return Err(unavailable_reply());
        }
    };
    let selector = dkim.selector.clone();
    let signed = tokio::task::spawn_blocking(move || {
        let header = sign::signature(key, &domain, &selector, &content);
        (content, header, domain, selector)
    })
    .await;
    match signed {
        Ok((content, Ok(header), domain, selector)) => {
            tracing::debug!(queue_id, domain = %domain, selector = %selector, "DKIM-signed");
            Ok((content, Some(header)))
        }
        Ok((_, Err(e), domain, _)) => {
            tracing::error!(queue_id, domain = %domain, error = %e, "refused: DKIM signing failed");
            Err(unavailable_reply())
        }
        Err(e) => {
            tracing::error!(queue_id, error = %e, "refused: DKIM signing task failed");
            Err(unavailable_reply())
        }
    }
}

#[cfg(test)]
mod tests;
