//! `RelayConfig`: the compiled configuration of one relay.
//!
//! It is the contract between the control plane and the data plane: the
//! operator writes it (JSON, in a ConfigMap), the relay loads it, and both
//! produce it with the same [`compile`](crate::compile()). Everything in it
//! is validated and normalised — domains are lower-case A-labels without a
//! trailing dot, networks are canonical, durations are seconds, sizes are
//! bytes — so the relay never parses user text on its hot path. Lists are
//! sorted, so the same resources always give the same bytes.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::blocklist::BlockAction;
use crate::common::ObjectRef;
use crate::maildomain::{DkimAlgorithm, InboundAuthPolicy, TlsMode};
use crate::relay::{AutoscalingEngine, ListenerName, OutboundTlsPolicy};

/// The format version written by this code. A relay refuses a config with
/// another version instead of guessing.
pub const CONFIG_VERSION: u32 = 1;

/// Where the relay pods find mounted Secrets: `SECRETS_DIR/NAME/KEY`.
pub const DEFAULT_SECRETS_DIR: &str = "/var/run/mailrelay/secrets";

/// The compiled configuration of one Relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfig {
    /// Always [`CONFIG_VERSION`].
    pub version: u32,
    /// The Relay this was compiled from.
    pub relay: ObjectRef,
    /// Name used in the greeting, EHLO and Received: headers.
    pub hostname: String,
    /// Listeners, sorted by name.
    pub listeners: Vec<ListenerConfig>,
    /// Certificate and key for STARTTLS and implicit TLS.
    pub tls: Option<TlsFiles>,
    /// Directory under which Secrets are mounted (`DIR/NAME/KEY`).
    pub secrets_dir: String,
    /// Trusted client networks, canonical and sorted.
    pub trusted_networks: Vec<IpNet>,
    /// Whether trusted networks may relay without AUTH.
    pub relay_from_trusted_networks: bool,
    pub limits: LimitsConfig,
    /// Hosted domains, sorted by name.
    pub domains: Vec<DomainConfig>,
    pub policy: PolicyConfig,
    pub queue: QueueConfig,
    pub smarthost: Option<SmarthostConfig>,
    pub dns: DnsConfig,
    /// Outbound TLS policy for MX delivery; absent means opportunistic
    /// everywhere (and configs written before it existed still load).
    #[serde(default, skip_serializing_if = "OutboundTlsConfig::is_default")]
    pub outbound_tls: OutboundTlsConfig,
    /// `spec.delivery.classification`, in order; checked by compile().
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classification: Vec<ClassRuleConfig>,
    /// `spec.delivery.shaping` and `throttle`, inheritance resolved;
    /// absent means the built-in limits (and configs written before it
    /// existed still load).
    #[serde(default, skip_serializing_if = "ShapingConfig::is_default")]
    pub shaping: ShapingConfig,
    /// Replica settings, for the operator's builders.
    pub scaling: ScalingConfig,
    /// Delivery events' webhooks (the Relay's and its domains').
    #[serde(default, skip_serializing_if = "EventsConfig::is_empty")]
    pub events: EventsConfig,
    /// Aggregates to count for the fleet's reports; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<crate::reports::ReportsConfig>,
}

/// Where delivery events go besides the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsConfig {
    /// The Relay's webhooks first (in spec order), then one per MailDomain
    /// that has one (by domain name).
    pub webhooks: Vec<WebhookConfig>,
    /// Events older than this are dropped rather than sent.
    pub retention_secs: u64,
}

impl EventsConfig {
    pub fn is_empty(&self) -> bool {
        *self == EventsConfig::default()
    }
}

/// One webhook, compiled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// Stable name of the webhook: `relay:URL`, or `domain:NAME` for a
    /// MailDomain's; the relay keeps its progress under this name.
    pub name: String,
    pub url: String,
    /// The signing key.
    pub secret: SecretFile,
    /// Event types sent; all when empty. Sorted.
    pub types: Vec<crate::events::EventType>,
    /// Only this domain's events (a MailDomain's webhook).
    pub domain: Option<String>,
    pub batch_size: u32,
    pub batch_window_ms: u64,
    pub timeout_ms: u64,
}

/// One bounce classification rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClassRuleConfig {
    /// A regular expression that compiles (compile() checked it).
    pub pattern: String,
    pub class: crate::relay::BounceClass,
}

/// Outbound shaping, compiled: every limit resolved, patterns checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShapingConfig {
    /// Limits of destinations no entry matches.
    pub default: ShapeConfig,
    /// Entries in order; the first that matches applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationShapeConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle: Vec<ThrottleRuleConfig>,
}

impl ShapingConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One destination's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShapeConfig {
    pub max_connections: u32,
    pub max_messages_per_connection: u32,
    pub message_rate: Option<RateConfig>,
    pub connection_rate: Option<RateConfig>,
    pub idle_timeout_ms: u64,
}

impl Default for ShapeConfig {
    /// The built-in limits: Postfix's concurrency (20 per destination),
    /// 100 messages per connection as KumoMTA, no rate, 5 s idle.
    fn default() -> Self {
        Self {
            max_connections: 20,
            max_messages_per_connection: 100,
            message_rate: None,
            connection_rate: None,
            idle_timeout_ms: 5_000,
        }
    }
}

/// `count` events per `per_secs` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateConfig {
    pub count: u32,
    pub per_secs: u32,
}

impl RateConfig {
    /// Milliseconds between two events, evenly spaced (never 0).
    pub fn interval_ms(&self) -> u64 {
        (u64::from(self.per_secs) * 1000 / u64::from(self.count.max(1))).max(1)
    }
}

impl std::fmt::Display for RateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Limits for the destinations that match `domains` or `mx_hosts`
/// (lower-case; a leading `*.` matches every name below).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationShapeConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx_hosts: Vec<String>,
    pub shape: ShapeConfig,
}

/// A reaction to remote replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleRuleConfig {
    /// A regular expression that compiles (compile() checked it).
    pub pattern: String,
    pub action: crate::shaping::ThrottleAction,
    pub duration_secs: u64,
    /// For `Slow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_rate: Option<RateConfig>,
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: ListenerName,
    /// Address bound inside the pod.
    pub address: SocketAddr,
    /// Port of the Service in front of it.
    pub service_port: u16,
    /// Networks a PROXY protocol header is accepted from; `None` when the
    /// listener does not expect one.
    pub proxy_protocol: Option<Vec<IpNet>>,
}

/// A file from a mounted Secret.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretFile {
    pub secret: String,
    pub key: String,
}

impl SecretFile {
    pub fn new(secret: &str, key: &str) -> Self {
        Self {
            secret: secret.to_string(),
            key: key.to_string(),
        }
    }

    /// Path of the file under `secrets_dir`.
    pub fn path(&self, secrets_dir: &str) -> std::path::PathBuf {
        std::path::Path::new(secrets_dir)
            .join(&self.secret)
            .join(&self.key)
    }
}

/// Certificate chain and private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: SecretFile,
    pub key: SecretFile,
}

/// Limits, in bytes, counts and seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_size: u64,
    pub max_recipients: u32,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub messages_per_minute_per_ip: u32,
    pub max_auth_failures_per_ip: u32,
    pub command_timeout_secs: u64,
    pub data_timeout_secs: u64,
    pub session_timeout_secs: u64,
}

/// One hosted domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainConfig {
    /// The domain, as a lower-case A-label name.
    pub name: String,
    /// Other names handled as this domain, sorted.
    pub aliases: Vec<String>,
    /// The MailDomain it comes from.
    pub source: ObjectRef,
    pub inbound: InboundConfig,
    pub delivery: DeliveryConfig,
    pub submission: Option<SubmissionConfig>,
    pub dkim: Option<DkimConfig>,
    /// `spec.outbound.smarthost`: mail from the domain's addresses leaves
    /// through it; left out when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<SmarthostConfig>,
    /// What the smtp listener does with SPF/DKIM/DMARC results; left out
    /// when it is the default, `Enforce`.
    #[serde(default, skip_serializing_if = "is_enforce")]
    pub inbound_auth: InboundAuthPolicy,
    /// `spec.arc.seal`: mail accepted for the domain on the smtp listener
    /// gets an ARC set signed with `dkim`; left out when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arc_seal: bool,
}

fn is_enforce(policy: &InboundAuthPolicy) -> bool {
    *policy == InboundAuthPolicy::Enforce
}

/// Recipients accepted on the smtp listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundConfig {
    pub enabled: bool,
    pub catch_all: bool,
    /// Lower-case local parts, sorted and unique.
    pub local_parts: Vec<String>,
    /// Sub-addressing separator, if any.
    pub recipient_delimiter: Option<char>,
}

/// Where a hosted domain's mail goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
pub enum DeliveryConfig {
    Lmtp {
        host: String,
        port: u16,
    },
    Smtp {
        host: String,
        port: u16,
        tls: TlsMode,
    },
    Maildir {
        path: String,
    },
}

/// Accounts of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmissionConfig {
    /// `LOGIN:HASH` lines.
    pub accounts: SecretFile,
    /// Lower-case logins that may not authenticate, sorted.
    pub suspended: Vec<String>,
    /// Extra sender addresses per login, sorted by login.
    pub senders: Vec<SenderConfig>,
}

/// Addresses one login may send as, besides its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SenderConfig {
    pub account: String,
    /// Normalised addresses; `*@domain` allows the whole domain. Sorted.
    pub addresses: Vec<String>,
}

/// DKIM signing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DkimConfig {
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub private_key: SecretFile,
}

/// Blocklists merged into lookup-ready form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// What a match does; entries point into this list by index. Sorted so
    /// that rejecting rules come first: where two lists hold the same
    /// entry, the stricter action wins.
    pub rules: Vec<BlockRule>,
    /// Networks, canonical, sorted by network then rule; a network appears
    /// once per rule, so a lookup takes the first unexpired one.
    pub ips: Vec<IpBlock>,
    /// Exact and wildcard names, sorted by name then rule.
    pub domains: Vec<DomainBlock>,
    /// Sender addresses, sorted by address then rule.
    pub senders: Vec<AddressBlock>,
    /// DNSBL zones, sorted by zone then rule.
    pub dnsbl: Vec<DnsblConfig>,
    /// Suppressed recipient addresses, sorted by address then rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<AddressBlock>,
    /// Suppressed recipient domains (`*@name`, or with `wildcard` the
    /// names under it, `*.name`), sorted by name then rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient_domains: Vec<DomainBlock>,
}

impl PolicyConfig {
    /// Entries in force: every list entry and every DNSBL zone.
    pub fn entry_count(&self) -> usize {
        self.ips.len()
            + self.domains.len()
            + self.senders.len()
            + self.dnsbl.len()
            + self.recipients.len()
            + self.recipient_domains.len()
    }
}

/// The action and reply of one Blocklist.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockRule {
    pub action: BlockAction,
    /// The Blocklist it comes from.
    pub source: ObjectRef,
    /// Reply text, if the Blocklist sets one.
    pub message: Option<String>,
}

/// A blocked network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub net: IpNet,
    pub rule: u32,
    /// Unix time after which the entry no longer applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

/// A blocked name: `name` itself, or with `wildcard` every name under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainBlock {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wildcard: bool,
    pub rule: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

/// A blocked sender address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressBlock {
    pub address: String,
    pub rule: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

/// A DNSBL zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsblConfig {
    /// The zone as a lower-case A-label name.
    pub zone: String,
    /// Answers that count as listed.
    pub return_codes: Vec<IpNet>,
    /// Reply text for a listed client, if the zone sets one.
    pub message: Option<String>,
    pub rule: u32,
}

/// Retries and lifetime, in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueConfig {
    /// Waits between attempts; the last repeats.
    pub retry_schedule_secs: Vec<u64>,
    pub jitter_percent: u8,
    pub lifetime_secs: u64,
    /// `None`: no delay warnings.
    pub delay_warning_secs: Option<u64>,
    /// Persistent volume per pod, if any (for the operator's builders).
    pub storage: Option<QueueStorageConfig>,
    /// Consecutive connection-level failures that suspend a destination.
    #[serde(default = "default_suspend_after")]
    pub suspend_after: u32,
    /// First wait before probing a suspended destination; doubles per
    /// failed probe up to `max_probe_secs`.
    #[serde(default = "default_probe_secs")]
    pub probe_secs: u64,
    #[serde(default = "default_max_probe_secs")]
    pub max_probe_secs: u64,
}

// A config compiled before these fields existed still loads.
fn default_suspend_after() -> u32 {
    5
}
fn default_probe_secs() -> u64 {
    30
}
fn default_max_probe_secs() -> u64 {
    1800
}

/// A volume claim template for the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueStorageConfig {
    /// Kubernetes quantity, as written.
    pub size: String,
    pub storage_class_name: Option<String>,
}

/// A smarthost: the Relay's for non-hosted mail, or a MailDomain's for
/// mail from its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmarthostConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<SecretFile>,
    pub password: Option<SecretFile>,
}

/// Outbound TLS policy for MX delivery (`spec.delivery.tls`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTlsConfig {
    /// For domains not in `domains`.
    pub policy: OutboundTlsPolicy,
    /// Per destination domain (lower-case A-labels), sorted by domain.
    pub domains: Vec<DomainTlsConfig>,
}

impl OutboundTlsConfig {
    pub fn is_default(&self) -> bool {
        *self == OutboundTlsConfig::default()
    }

    /// The policy for `domain` (lower-case A-label).
    pub fn policy_for(&self, domain: &str) -> OutboundTlsPolicy {
        self.domains
            .binary_search_by(|d| d.domain.as_str().cmp(domain))
            .map(|i| self.domains[i].policy)
            .unwrap_or(self.policy)
    }
}

/// One destination domain's outbound TLS policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainTlsConfig {
    pub domain: String,
    pub policy: OutboundTlsPolicy,
}

/// DNS settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsConfig {
    /// Resolvers; empty means the system's.
    pub nameservers: Vec<SocketAddr>,
    pub timeout_ms: u64,
}

/// How many pods, and who decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingConfig {
    /// Desired replicas from the spec (absent: 1). Not applied while an
    /// autoscaler owns the replica count.
    pub replicas: u32,
    pub autoscaling: Option<AutoscalingConfig>,
}

/// Autoscaling bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalingConfig {
    pub engine: AutoscalingEngine,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub target_cpu_utilization: u32,
    pub target_queue_depth: Option<u32>,
}

impl RelayConfig {
    /// The config as the JSON the operator stores and the relay loads.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Load a config, refusing other format versions.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let Version { version } = serde_json::from_str(text).map_err(ConfigError::Parse)?;
        if version != CONFIG_VERSION {
            return Err(ConfigError::Version(version));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(ConfigError::Field)
    }
}

/// Why a compiled config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("not a relay config: {0}")]
    Parse(serde_json::Error),
    #[error(
        "config format version {0} is not supported (this relay reads version {CONFIG_VERSION})"
    )]
    Version(u32),
    #[error("invalid relay config at {}: {}", .0.path(), .0.inner())]
    Field(serde_path_to_error::Error<serde_json::Error>),
}
