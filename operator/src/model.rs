//! The validated model the builders work from: the compiled
//! [`RelayConfig`] plus the few parts of the Relay (and of its MailDomains)
//! that `compile()` does not carry because the relay itself never needs
//! them — resources, the Service's shape, image, maildir volume claims.
//!
//! Built once per reconcile; the builders never see the raw resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use mailrelay_crds::common::ObjectRef;
use mailrelay_crds::config::{DeliveryConfig, RelayConfig};
use mailrelay_crds::relay::RelayService;
use mailrelay_crds::{MailDomain, Relay};

use mailrelay_crds::configformat;

/// Where the relay image comes from when the Relay names none; the tag is
/// the operator's own version, so an operator upgrade moves the fleet.
pub(crate) const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/mailrelay/mailrelay";

/// Where KEDA asks for the relays' queue depth when the operator is not
/// told otherwise: the Service the Prometheus Operator creates.
pub const DEFAULT_PROMETHEUS_URL: &str = "http://prometheus-operated.monitoring.svc:9090";

/// Longest Relay name. Derived names must stay valid: a StatefulSet's pods
/// carry `controller-revision-hash: NAME-HASH` (a label value, at most 63
/// characters, with a hash of up to 10), and `NAME-peers` is a Service name.
pub(crate) const MAX_RELAY_NAME: usize = 52;

/// Settings of the operator itself (command-line flags), not of a Relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Image for Relays that name none.
    pub default_image: String,
    /// Prometheus base URL for KEDA's prometheus trigger.
    pub prometheus_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_image: format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
            prometheus_url: DEFAULT_PROMETHEUS_URL.to_string(),
        }
    }
}

/// The identity of the Relay every built object belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRef {
    pub name: String,
    pub namespace: String,
    /// `None` for a Relay read from a manifest (never applied): its objects
    /// then carry no ownerReference, because one with a made-up uid would
    /// have the garbage collector delete them.
    pub uid: Option<String>,
    pub image: String,
    /// The common labels of every object (see `common_labels`).
    pub labels: BTreeMap<String, String>,
}

impl RelayRef {
    /// The labels that select the Relay's pods: a subset of [`Self::labels`]
    /// that never changes, because a workload's selector is immutable.
    pub(crate) fn selector_labels(&self) -> BTreeMap<String, String> {
        selector_labels(&self.name)
    }

    /// The pod selector as a string, for `status.selector` (the scale
    /// subresource hands it to the HorizontalPodAutoscaler).
    pub(crate) fn selector(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The controller reference to the Relay, when its uid is known.
    pub(crate) fn owner_reference(&self) -> Option<OwnerReference> {
        self.uid.as_ref().map(|uid| OwnerReference {
            api_version: Relay::api_version(&()).into_owned(),
            kind: Relay::kind(&()).into_owned(),
            name: self.name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
    }
}

/// `app.kubernetes.io/*` labels of every object made for Relay `name`.
pub(crate) fn common_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/component".into(), "relay".into());
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "mailrelay-operator".into(),
    );
    labels
}

pub(crate) fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "mailrelay".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// A maildir volume claim mounted into the relay pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MaildirMount {
    pub claim_name: String,
    /// Absolute path inside the pod, without a trailing slash.
    pub path: String,
}

/// Everything the builders need, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub relay: RelayRef,
    pub config: RelayConfig,
    /// `config` as the JSON the relay loads: computed once, hashed once.
    pub config_json: String,
    /// Hex SHA-256 of `config_json`, for status and the ConfigMaps.
    pub config_hash: String,
    /// Replicas for the workload: the Relay's `spec.replicas`, which an
    /// autoscaler writes through the Relay's scale subresource.
    pub replicas: i32,
    /// An autoscaler owns the replica count: the applied workload leaves
    /// `replicas` out and the reconciler carries [`Self::replicas`] to the
    /// workload's scale subresource instead, so the apply never fights it.
    pub autoscaled: bool,
    pub resources: Option<ResourceRequirements>,
    /// For pulling the relay image from a private registry.
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub service: RelayService,
    /// Maildir claims, sorted by path.
    pub maildirs: Vec<MaildirMount>,
    pub prometheus_url: String,
    /// Things that build fine but will not work as the user expects.
    pub warnings: Vec<Warning>,
}

/// Why a compiled Relay cannot be turned into objects.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "Relay {namespace}/{name}: metadata.name: {reason} (the operator derives Service and StatefulSet names from it)"
    )]
    RelayName {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("Relay {name}: metadata.namespace: is required")]
    Namespace { name: String },
    #[error("Relay {relay}: cannot serialise the compiled config: {source}")]
    Serialize {
        relay: String,
        source: serde_json::Error,
    },
}

/// Something that builds but will not work as the user expects; reported,
/// never fatal, because it concerns one MailDomain and not the others.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error(
        "{domain}: spec.delivery.maildir.claimName: not set, so the relay pods have no volume at {path}; deliveries to it will be deferred"
    )]
    MaildirWithoutClaim { domain: ObjectRef, path: String },
    #[error(
        "{domain}: spec.delivery.maildir.path: {path} overlaps {reserved}, which the relay pods use; the claim is not mounted"
    )]
    MaildirPathReserved {
        domain: ObjectRef,
        path: String,
        reserved: String,
    },
    #[error(
        "{domain}: spec.delivery.maildir: {path} is already mounted from claim {mounted}; claim {claim} is not mounted"
    )]
    MaildirPathTaken {
        domain: ObjectRef,
        path: String,
        claim: String,
        mounted: String,
    },
    #[error(
        "Relay {relay}: spec.resources.requests.cpu: not set, so the autoscaler cannot compute CPU utilisation"
    )]
    NoCpuRequest { relay: String },
}

impl Model {
    /// The model of `relay`, compiled into `config` from (among others)
    /// `domains`, which are looked up again only for their maildir claims.
    pub fn new(
        relay: &Relay,
        config: RelayConfig,
        domains: &[MailDomain],
        settings: &Settings,
    ) -> Result<Self, ModelError> {
        let name = relay.metadata.name.clone().unwrap_or_default();
        let namespace = relay
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ModelError::Namespace { name: name.clone() })?;
        check_name(&name).map_err(|reason| ModelError::RelayName {
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
        })?;
        let config_json = config.to_json().map_err(|source| ModelError::Serialize {
            relay: format!("{namespace}/{name}"),
            source,
        })?;
        let config_hash = hex_sha256(config_json.as_bytes());
        let mut warnings = Vec::new();
        let maildirs = maildir_mounts(&config, domains, &mut warnings);
        let spec = &relay.spec;
        if config.scaling.autoscaling.is_some() && !has_cpu_request(spec.resources.as_ref()) {
            warnings.push(Warning::NoCpuRequest {
                relay: format!("{namespace}/{name}"),
            });
        }
        let relay_ref = RelayRef {
            labels: common_labels(&name),
            uid: relay.metadata.uid.clone().filter(|u| !u.is_empty()),
            image: spec
                .image
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| settings.default_image.clone()),
            name,
            namespace,
        };
        Ok(Self {
            relay: relay_ref,
            replicas: workload_replicas(spec.replicas, &config),
            autoscaled: config.scaling.autoscaling.is_some(),
            config,
            config_json,
            config_hash,
            resources: spec.resources.clone(),
            image_pull_secrets: spec.image_pull_secrets.clone(),
            service: spec.service.clone(),
            maildirs,
            prometheus_url: settings.prometheus_url.clone(),
            warnings,
        })
    }
}

/// Replicas for the workload. Without an autoscaler: the spec's (default 1).
/// With one: the HorizontalPodAutoscaler scales the *Relay* through its
/// scale subresource, i.e. it writes `spec.replicas`, and the workload must
/// follow it — nothing else carries the autoscaler's decision to the pods.
/// Until the autoscaler first decides, and for a value set outside its
/// bounds, the bounds apply.
fn workload_replicas(spec_replicas: Option<i32>, config: &RelayConfig) -> i32 {
    let to_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    match &config.scaling.autoscaling {
        None => to_i32(config.scaling.replicas),
        Some(a) => {
            let (min, max) = (to_i32(a.min_replicas), to_i32(a.max_replicas));
            spec_replicas.map_or(min, |r| r.clamp(min, max.max(min)))
        }
    }
}

fn has_cpu_request(resources: Option<&ResourceRequirements>) -> bool {
    resources
        .and_then(|r| r.requests.as_ref())
        .is_some_and(|r| r.contains_key("cpu"))
}

/// A DNS-1035 label short enough for every derived name.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.len() > MAX_RELAY_NAME {
        return Err(format!(
            "{name:?} is longer than {MAX_RELAY_NAME} characters"
        ));
    }
    let bytes = name.as_bytes();
    let ok = bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must start with a letter and hold only lower-case letters, digits and '-'"
        ))
    }
}

/// Lower-case hex SHA-256.
pub(crate) use mailrelay_crds::configformat::hex_sha256;

/// The claims to mount for the maildir domains of `config`, one per path.
fn maildir_mounts(
    config: &RelayConfig,
    domains: &[MailDomain],
    warnings: &mut Vec<Warning>,
) -> Vec<MaildirMount> {
    let reserved = [
        configformat::CONFIG_DIR,
        crate::builders::pod::SPOOL_DIR,
        crate::builders::pod::TMP_DIR,
        config.secrets_dir.as_str(),
    ];
    let mut by_path: BTreeMap<String, MaildirMount> = BTreeMap::new();
    for domain in &config.domains {
        let DeliveryConfig::Maildir { path } = &domain.delivery else {
            continue;
        };
        let path = path.trim_end_matches('/').to_string();
        let source = &domain.source;
        let claim = domains
            .iter()
            .find(|d| ObjectRef::of(*d) == *source)
            .and_then(|d| d.spec.delivery.maildir.as_ref())
            .and_then(|m| m.claim_name.clone())
            .filter(|c| !c.is_empty());
        let Some(claim_name) = claim else {
            warnings.push(Warning::MaildirWithoutClaim {
                domain: source.clone(),
                path,
            });
            continue;
        };
        if let Some(r) = reserved.iter().find(|r| overlaps(&path, r)) {
            warnings.push(Warning::MaildirPathReserved {
                domain: source.clone(),
                path,
                reserved: (*r).to_string(),
            });
            continue;
        }
        match by_path.get(&path) {
            Some(m) if m.claim_name != claim_name => warnings.push(Warning::MaildirPathTaken {
                domain: source.clone(),
                path,
                claim: claim_name,
                mounted: m.claim_name.clone(),
            }),
            Some(_) => {}
            None => {
                by_path.insert(path.clone(), MaildirMount { claim_name, path });
            }
        }
    }
    by_path.into_values().collect()
}

/// Is one path the other, or inside it? (`/` is inside nothing but holds all.)
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| {
        x == y || y.is_empty() || x.strip_prefix(y).is_some_and(|r| r.starts_with('/'))
    };
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    inside(a, b) || inside(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_names_must_make_valid_derived_names() {
        assert!(check_name("edge").is_ok());
        assert!(check_name("edge-eu-1").is_ok());
        assert!(check_name(&"a".repeat(MAX_RELAY_NAME)).is_ok());
        assert!(check_name(&"a".repeat(MAX_RELAY_NAME + 1)).is_err());
        for bad in ["", "1edge", "edge.eu", "Edge", "edge-"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_overlap_when_one_holds_the_other() {
        assert!(overlaps("/tmp", "/tmp"));
        assert!(overlaps("/tmp/mail", "/tmp"));
        assert!(overlaps("/var", "/var/spool/mailrelay"));
        assert!(overlaps("/", "/etc/mailrelay"));
        assert!(!overlaps("/var/mail", "/var/spool/mailrelay"));
        assert!(!overlaps("/tmpx", "/tmp"));
    }

    #[test]
    fn the_selector_string_lists_the_selector_labels_in_order() {
        let r = RelayRef {
            name: "edge".into(),
            namespace: "mail".into(),
            uid: None,
            image: "i".into(),
            labels: common_labels("edge"),
        };
        assert_eq!(
            r.selector(),
            "app.kubernetes.io/instance=edge,app.kubernetes.io/name=mailrelay"
        );
        assert!(r.owner_reference().is_none());
    }
}
