//! The relay pod's volumes and where the container mounts them.
//!
//! - `config`: the config ConfigMap(s), projected into one directory.
//! - one Secret volume per Secret the compiled config names (TLS,
//!   accounts, DKIM keys, the Relay's and the MailDomains' smarthost
//!   credentials), at `SECRETS_DIR/NAME`, exposing only the keys the
//!   config reads. No `subPath`: kubelet refreshes whole-volume mounts,
//!   so a rotated certificate reaches the relay without a restart.
//! - one PersistentVolumeClaim volume per maildir claim, at each path.
//! - `spool`: an emptyDir, unless the StatefulSet's volume claim template
//!   provides it.
//! - `tmp`: an emptyDir at /tmp, since the root filesystem is read-only.
//! - `handoff`: the Relay's hand-off Secret (see `handoff`).
//! - `podinfo`: the pod's annotations (downward API), for drain requests.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    KeyToPath, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, ProjectedVolumeSource,
    SecretVolumeSource, Volume, VolumeMount, VolumeProjection,
};
use mailrelay_crds::config::{RelayConfig, SecretFile};

use super::pod::{SPOOL_DIR, TMP_DIR};
use crate::model::Model;
use mailrelay_crds::configformat::CONFIG_DIR;
use mailrelay_crds::configformat::hex_sha256;

/// Name of the spool volume (and of the StatefulSet's claim template).
pub(crate) const SPOOL_VOLUME: &str = "spool";

/// Owner read, group read: the pod's fsGroup can read keys, others not.
const SECRET_MODE: i32 = 0o440;

/// Volumes of the pod and the container's mounts of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Volumes {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
}

impl Volumes {
    fn add(&mut self, volume: Volume, path: &str) {
        self.mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path: path.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        self.volumes.push(volume);
    }
}

/// A Secret the pod mounts: the keys it needs and whether the pod may start
/// without it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SecretUse {
    pub keys: BTreeSet<String>,
    /// True when only tenants' files come from it (accounts, DKIM keys,
    /// smarthost credentials): one MailDomain's missing Secret must not
    /// keep the relay pods from starting for everyone else; the relay then
    /// reports that domain (or defers its mail, for smarthost credentials).
    pub optional: bool,
}

/// The Secrets the compiled config reads, by name.
pub(crate) fn secret_uses(config: &RelayConfig) -> BTreeMap<String, SecretUse> {
    let mut uses: BTreeMap<String, SecretUse> = BTreeMap::new();
    let mut add = |file: &SecretFile, optional: bool| {
        let u = uses.entry(file.secret.clone()).or_insert(SecretUse {
            keys: BTreeSet::new(),
            optional: true,
        });
        u.keys.insert(file.key.clone());
        u.optional &= optional;
    };
    if let Some(tls) = &config.tls {
        add(&tls.cert, false);
        add(&tls.key, false);
    }
    if let Some(s) = &config.smarthost {
        for file in [&s.username, &s.password].into_iter().flatten() {
            add(file, false);
        }
    }
    for d in &config.domains {
        if let Some(sub) = &d.submission {
            add(&sub.accounts, true);
        }
        if let Some(dkim) = &d.dkim {
            add(&dkim.private_key, true);
        }
        if let Some(s) = &d.smarthost {
            for file in [&s.username, &s.password].into_iter().flatten() {
                add(file, true);
            }
        }
    }
    // Optional: a missing signing key holds that webhook's events back
    // (and shows in status), never the relay's mail.
    for w in &config.events.webhooks {
        add(&w.secret, true);
    }
    uses
}

/// Volume name for an object name: itself when it is a short DNS label,
/// otherwise a hash. Hashed names start with `--` after the prefix, which
/// no object name can, so the two kinds never collide.
pub(crate) fn volume_name(prefix: &str, object: &str) -> String {
    let label = object.len() + prefix.len() < 63
        && !object.is_empty()
        && object
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if label {
        format!("{prefix}-{object}")
    } else {
        format!("{prefix}--{}", &hex_sha256(object.as_bytes())[..16])
    }
}

/// The pod's volumes; `config_maps` in order, `spool_claim` when the
/// StatefulSet's claim template provides the spool.
pub(crate) fn build(model: &Model, config_maps: &[String], spool_claim: bool) -> Volumes {
    let mut v = Volumes::default();
    v.add(config_volume(config_maps), CONFIG_DIR);
    let dir = std::path::Path::new(&model.config.secrets_dir);
    for (secret, u) in secret_uses(&model.config) {
        let path = dir.join(&secret).to_string_lossy().into_owned();
        v.add(secret_volume(&secret, &u), &path);
    }
    v.add(handoff_volume(&model.relay.name), super::handoff::DIR);
    v.add(podinfo_volume(), PODINFO_DIR);
    let mut claims = BTreeSet::new();
    for m in &model.maildirs {
        let name = volume_name("maildir", &m.claim_name);
        v.mounts.push(VolumeMount {
            name: name.clone(),
            mount_path: m.path.clone(),
            ..VolumeMount::default()
        });
        if claims.insert(m.claim_name.clone()) {
            v.volumes.push(Volume {
                name,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: m.claim_name.clone(),
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
    }
    if !spool_claim {
        v.volumes.push(empty_dir(SPOOL_VOLUME));
    }
    v.mounts.push(writable(SPOOL_VOLUME, SPOOL_DIR));
    v.volumes.push(empty_dir("tmp"));
    v.mounts.push(writable("tmp", TMP_DIR));
    v
}

/// Where the pod's annotations appear (downward API): the relay drains
/// when one says `mailrelay.io/drain="true"`.
pub(crate) const PODINFO_DIR: &str = "/etc/mailrelay/podinfo";
/// The file in it.
pub(crate) const ANNOTATIONS_FILE: &str = "annotations";

fn podinfo_volume() -> Volume {
    Volume {
        name: "podinfo".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: ANNOTATIONS_FILE.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations".into(),
                    api_version: None,
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

/// The hand-off secret. Required: a pod that cannot take part in hand-off
/// would strand its queue when scaled in.
fn handoff_volume(relay: &str) -> Volume {
    use super::handoff;
    Volume {
        name: "handoff".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(handoff::secret_name(relay)),
            items: Some(vec![KeyToPath {
                key: handoff::KEY.into(),
                path: handoff::KEY.into(),
                mode: None,
            }]),
            default_mode: Some(SECRET_MODE),
            optional: None,
        }),
        ..Volume::default()
    }
}

fn config_volume(config_maps: &[String]) -> Volume {
    Volume {
        name: "config".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(
                config_maps
                    .iter()
                    .map(|name| VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: name.clone(),
                            items: None,
                            optional: None,
                        }),
                        ..VolumeProjection::default()
                    })
                    .collect(),
            ),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

fn secret_volume(secret: &str, u: &SecretUse) -> Volume {
    Volume {
        name: volume_name("secret", secret),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(
                u.keys
                    .iter()
                    .map(|k| KeyToPath {
                        key: k.clone(),
                        path: k.clone(),
                        mode: None,
                    })
                    .collect(),
            ),
            default_mode: Some(SECRET_MODE),
            optional: u.optional.then_some(true),
        }),
        ..Volume::default()
    }
}

/// An emptyDir without a size limit: on the spool a limit would mean
/// eviction, and eviction deletes the emptyDir with the queued mail in it.
fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn writable(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_labels_and_never_collide() {
        assert_eq!(volume_name("secret", "mx-tls"), "secret-mx-tls");
        let dotted = volume_name("secret", "mx.example.com");
        assert!(
            dotted.starts_with("secret--") && dotted.len() == 24,
            "{dotted}"
        );
        let long = volume_name("maildir", &"a".repeat(60));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(volume_name("secret", "a.b"), volume_name("secret", "a-b"));
    }
}
