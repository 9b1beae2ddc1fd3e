//! DKIM keys of MailDomains: the key the operator generates into the
//! MailDomain's Secret when `spec.dkim.generate` asks for one, and the DNS
//! record to publish for the key that is there (`status.dkimRecord`).
//!
//! Pure (in [`mailrelay_crds::dkimkey`], shared with the relay's
//! standalone mode): generating and reading keys, formatting the record.
//! With the client: `ensure`, which reads the Secret and creates it or
//! adds the key to it — never replacing a key that exists.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mailrelay_crds::maildomain::{Dkim, DkimAlgorithm};
use serde_json::json;

use mailrelay_crds::dkimkey::generate;
pub use mailrelay_crds::dkimkey::{public_key, record, txt_value};

use crate::apply::FIELD_MANAGER;

/// What the MailDomain's DKIM key looks like now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// The key is there: the record to publish.
    Ready { record: String, generated: bool },
    /// Something to fix; `reason` is a condition reason.
    Problem {
        reason: &'static str,
        message: String,
    },
}

fn problem(reason: &'static str, message: impl Into<String>) -> KeyState {
    KeyState::Problem {
        reason,
        message: message.into(),
    }
}

/// Read the key of `dkim` from its Secret in `ns`, generating it first
/// when it is missing and `dkim.generate` is set. `domain` is the
/// normalised domain name, `owner` names the MailDomain (for the label).
pub(crate) async fn ensure(
    client: &Client,
    ns: &str,
    owner: &str,
    domain: &str,
    dkim: &Dkim,
) -> KeyState {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = &dkim.private_key.name;
    let key = &dkim.private_key.key;
    let found = match api.get_opt(name).await {
        Ok(s) => s,
        Err(e) => return problem("SecretUnreadable", format!("Secret {name}: {e}")),
    };
    let (pem, generated) = match found {
        Some(secret) => match secret.data.as_ref().and_then(|d| d.get(key)) {
            Some(bytes) => (String::from_utf8_lossy(&bytes.0).into_owned(), false),
            None if dkim.generate => match add_key(&api, &secret, key, dkim.algorithm).await {
                Ok(pem) => (pem, true),
                Err(state) => return state,
            },
            None => {
                return problem(
                    "KeyNotFound",
                    format!(
                        "Secret {name} has no key {key:?}; set spec.dkim.generate to let the operator add one"
                    ),
                );
            }
        },
        None if dkim.generate => {
            match create_secret(&api, owner, name, key, dkim.algorithm).await {
                Ok(pem) => (pem, true),
                Err(state) => return state,
            }
        }
        None => {
            return problem(
                "SecretNotFound",
                format!(
                    "Secret {name} does not exist; set spec.dkim.generate to let the operator create it"
                ),
            );
        }
    };
    match public_key(&pem, dkim.algorithm) {
        Ok(public) => KeyState::Ready {
            record: record(&dkim.selector, domain, &txt_value(dkim.algorithm, &public)),
            generated,
        },
        Err(e) => problem("KeyInvalid", format!("Secret {name} key {key:?}: {e}")),
    }
}

async fn generate_off_thread(algorithm: DkimAlgorithm) -> Result<String, KeyState> {
    // RSA generation takes a noticeable fraction of a second: not on the
    // async threads.
    match tokio::task::spawn_blocking(move || generate(algorithm)).await {
        Ok(Ok(pem)) => Ok(pem),
        Ok(Err(e)) => Err(problem("KeyGenerationFailed", e.to_string())),
        Err(e) => Err(problem("KeyGenerationFailed", e.to_string())),
    }
}

/// Create the Secret with a new key. Creating never replaces: when someone
/// else created it meanwhile (409), their key is read instead.
async fn create_secret(
    api: &Api<Secret>,
    owner: &str,
    name: &str,
    key: &str,
    algorithm: DkimAlgorithm,
) -> Result<String, KeyState> {
    let pem = generate_off_thread(algorithm).await?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                FIELD_MANAGER.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                "mailrelay.io/dkim-key-for".to_string(),
                format!("MailDomain {owner}"),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(pem.clone().into_bytes()),
        )])),
        ..Secret::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &secret).await {
        Ok(_) => {
            tracing::info!(secret = name, "DKIM key generated into a new Secret");
            Ok(pem)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let theirs = api
                .get(name)
                .await
                .map_err(|e| problem("SecretUnreadable", format!("Secret {name}: {e}")))?;
            match theirs.data.as_ref().and_then(|d| d.get(key)) {
                Some(bytes) => Ok(String::from_utf8_lossy(&bytes.0).into_owned()),
                None => Err(problem(
                    "SecretChanged",
                    format!(
                        "Secret {name} was created by someone else meanwhile, without key {key:?}; retrying"
                    ),
                )),
            }
        }
        Err(e) => Err(problem("SecretNotCreated", format!("Secret {name}: {e}"))),
    }
}

/// Add a new key to an existing Secret that lacks it. The patch carries
/// the resourceVersion read: if the Secret changed since (someone may have
/// added the key), the API server refuses it (409) instead of overwriting.
async fn add_key(
    api: &Api<Secret>,
    secret: &Secret,
    key: &str,
    algorithm: DkimAlgorithm,
) -> Result<String, KeyState> {
    let name = secret.name_any();
    let pem = generate_off_thread(algorithm).await?;
    let patch = json!({
        "metadata": {"resourceVersion": secret.resource_version()},
        "data": {key: STANDARD.encode(pem.as_bytes())},
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api.patch(&name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::info!(secret = %name, key, "DKIM key generated into an existing Secret");
            Ok(pem)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Err(problem(
            "SecretChanged",
            format!("Secret {name} changed while the key was added; retrying"),
        )),
        Err(e) => Err(problem("SecretNotPatched", format!("Secret {name}: {e}"))),
    }
}
