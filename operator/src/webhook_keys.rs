//! The signing keys of event webhooks (`spec.events` of Relays and
//! MailDomains): is each Secret there, with its key? The relay pod mounts
//! them optionally, so a missing one would otherwise only show in the
//! pod's log; it goes into the object's `EventWebhookReady` condition.
//!
//! Pure: [`judge`]. With the client: [`check`], one GET per Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use mailrelay_crds::common::SecretKeyRef;

/// What one webhook's signing key looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    Present,
    /// `reason` is a condition reason.
    Problem {
        reason: &'static str,
        message: String,
    },
}

/// The key `r` in `secret` (`None`: no such Secret).
pub(crate) fn judge(r: &SecretKeyRef, secret: Option<&Secret>) -> KeyCheck {
    let has_key = |s: &Secret| {
        s.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
            || s.string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&r.key))
    };
    match secret {
        Some(s) if has_key(s) => KeyCheck::Present,
        Some(_) => KeyCheck::Problem {
            reason: "KeyNotFound",
            message: format!("Secret {} has no key {:?}", r.name, r.key),
        },
        None => KeyCheck::Problem {
            reason: "SecretNotFound",
            message: format!("Secret {} not found", r.name),
        },
    }
}

/// Each `(field, ref)` judged against the Secrets of `ns`.
pub(crate) async fn check(
    client: &Client,
    ns: &str,
    refs: &[(String, SecretKeyRef)],
) -> Vec<(String, KeyCheck)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut secrets: BTreeMap<&str, Result<Option<Secret>, String>> = BTreeMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (field, r) in refs {
        if !secrets.contains_key(r.name.as_str()) {
            let got = api.get_opt(&r.name).await.map_err(|e| e.to_string());
            secrets.insert(&r.name, got);
        }
        let verdict = match &secrets[r.name.as_str()] {
            Ok(s) => judge(r, s.as_ref()),
            Err(e) => KeyCheck::Problem {
                reason: "SecretUnreadable",
                message: format!("Secret {}: {e}", r.name),
            },
        };
        out.push((field.clone(), verdict));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(keys: &[&str]) -> Secret {
        Secret {
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(b"x".to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_key_is_present_missing_from_its_secret_or_its_secret_is_missing() {
        let r = SecretKeyRef {
            name: "hook".into(),
            key: "signing".into(),
        };
        assert_eq!(judge(&r, Some(&secret(&["signing"]))), KeyCheck::Present);
        let reason = |c: KeyCheck| match c {
            KeyCheck::Problem { reason, message } => (reason, message),
            KeyCheck::Present => ("Present", String::new()),
        };
        assert_eq!(
            reason(judge(&r, Some(&secret(&["other"])))),
            ("KeyNotFound", "Secret hook has no key \"signing\"".into())
        );
        assert_eq!(
            reason(judge(&r, None)),
            ("SecretNotFound", "Secret hook not found".into())
        );
    }
}
