//! `Relay`: a fleet of relay pods and how they behave.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LabelSelector, Smarthost};

/// A fleet of mailrelay pods: listeners, limits, queue, scaling and the
/// MailDomains and Blocklists it uses.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mailrelay.io",
    version = "v1alpha1",
    kind = "Relay",
    plural = "relays",
    shortname = "rly",
    category = "mailrelay",
    namespaced,
    status = "RelayStatus",
    derive = "PartialEq",
    cel,
    doc = "A fleet of mailrelay pods: listeners, limits, queue, scaling and the MailDomains and Blocklists it uses.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Hostname", type_ = "string", json_path = ".spec.hostname"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Domains", type_ = "integer", json_path = ".status.domains"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("self.listeners.all(l, l.name == 'smtp') || has(self.tls)").message("the submission and submissions listeners need spec.tls: AUTH is only offered over TLS").field_path(".tls").reason(kube::core::Reason::FieldValueRequired),
    validation = kube::core::Rule::new("!self.relayFromTrustedNetworks || (has(self.trustedNetworks) && size(self.trustedNetworks) > 0)").message("relayFromTrustedNetworks needs at least one entry in trustedNetworks").field_path(".trustedNetworks")
)]
pub struct RelaySpec {
    /// Number of relay pods. Ignored while `autoscaling` is set: the
    /// autoscaler then drives it through the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Scale the relay automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// The relay's host name, used in the greeting, in EHLO and in
    /// Received: headers. It should be the name MX records point at.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$')").message("must be a host name such as mx.example.com"))]
    pub hostname: String,

    /// The listeners. `smtp` takes mail for hosted domains from anyone not
    /// blocked; `submission` (STARTTLS) and `submissions` (implicit TLS)
    /// take mail from authenticated accounts. Defaults to `smtp` alone.
    #[serde(default = "crate::defaults::listeners")]
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(validation = kube::core::Rule::new("self.all(l, self.exists_one(m, m.name == l.name))").message("each listener name may appear only once"))]
    pub listeners: Vec<Listener>,

    /// TLS certificate for STARTTLS and implicit TLS: a Secret of type
    /// `kubernetes.io/tls` (keys `tls.crt` and `tls.key`), such as the ones
    /// cert-manager writes. Rotation is picked up without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RelayTls>,

    /// Which MailDomains of this namespace the relay serves. Empty or
    /// absent selects every MailDomain in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_selector: Option<LabelSelector>,

    /// Which Blocklists of this namespace the relay applies. Empty or absent
    /// selects every Blocklist in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocklist_selector: Option<LabelSelector>,

    /// Client networks (CIDRs) trusted by this relay, for example the pod
    /// network of in-cluster applications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(n, isCIDR(n) || isIP(n))").message("each entry must be an IP address or a CIDR such as 10.0.0.0/8"))]
    pub trusted_networks: Vec<String>,

    /// Let clients in `trustedNetworks` relay to any domain without
    /// authenticating. Off by default: never run an open relay.
    #[serde(default)]
    pub relay_from_trusted_networks: bool,

    /// Limits on clients and messages.
    #[serde(default)]
    pub limits: Limits,

    /// The queue: storage, retries and lifetime.
    #[serde(default)]
    pub queue: Queue,

    /// Send all mail for non-hosted domains through this host instead of
    /// looking up MX records; mail from a MailDomain with its own
    /// `spec.outbound.smarthost` goes through that one instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<Smarthost>,

    /// The Service in front of the listeners.
    #[serde(default)]
    pub service: RelayService,

    /// DNS resolution settings.
    #[serde(default)]
    pub dns: Dns,

    /// How mail for remote domains is delivered: outbound TLS policy
    /// (opportunistic, required, MTA-STS), for all destinations and per
    /// destination domain.
    #[serde(default, skip_serializing_if = "Delivery::is_default")]
    pub delivery: Delivery,

    /// Delivery events: webhooks that receive them (the relay's log always
    /// has them, one JSON line each under the `mailrelay::event` target).
    #[serde(
        default,
        skip_serializing_if = "crate::events::RelayEvents::is_default"
    )]
    pub events: crate::events::RelayEvents,

    /// Aggregate reports the Relay sends for the whole fleet: DMARC about
    /// inbound mail, TLS-RPT about outbound. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<crate::reports::ReportsSpec>,

    /// CPU and memory for each relay pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Container image of the relay. Defaults to the image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Secrets (of type `kubernetes.io/dockerconfigjson`, in this namespace)
    /// for pulling the relay image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// Autoscaling bounds and targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not be greater than maxReplicas").field_path(".minReplicas")
)]
pub struct Autoscaling {
    /// What drives the scaling: a HorizontalPodAutoscaler (`Hpa`) or a KEDA ScaledObject (`Keda`).
    #[serde(default)]
    pub engine: AutoscalingEngine,
    /// Fewest pods.
    #[serde(default = "crate::defaults::one")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the request, to aim for.
    #[serde(default = "crate::defaults::cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Average number of queued messages per pod to aim for (needs the
    /// relay's metrics in the custom metrics API, or KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_queue_depth: Option<i32>,
}

/// What drives autoscaling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AutoscalingEngine {
    /// An `autoscaling/v2` HorizontalPodAutoscaler.
    #[default]
    Hpa,
    /// A KEDA `ScaledObject`.
    Keda,
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// `smtp` (inbound, port 25), `submission` (STARTTLS + AUTH, port 587)
    /// or `submissions` (implicit TLS + AUTH, port 465).
    pub name: ListenerName,
    /// Port the relay binds inside the pod. Defaults to 2525, 5870 and 4650:
    /// unprivileged ports, so the pod needs no capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Port of the Service. Defaults to 25, 587 and 465.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub service_port: Option<i32>,
    /// Expect a PROXY protocol (v1 or v2) header from a load balancer, only
    /// from these networks; the client address it carries is then used for
    /// policy. Connections from elsewhere are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Listener names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ListenerName {
    /// Inbound mail for hosted domains.
    Smtp,
    /// Authenticated submission with STARTTLS.
    Submission,
    /// Authenticated submission over implicit TLS.
    Submissions,
}

impl ListenerName {
    pub const ALL: [ListenerName; 3] = [Self::Smtp, Self::Submission, Self::Submissions];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Submission => "submission",
            Self::Submissions => "submissions",
        }
    }

    /// The unprivileged port bound inside the pod by default.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Smtp => 2525,
            Self::Submission => 5870,
            Self::Submissions => 4650,
        }
    }

    /// The well-known port clients use.
    pub fn default_service_port(self) -> u16 {
        match self {
            Self::Smtp => 25,
            Self::Submission => 587,
            Self::Submissions => 465,
        }
    }
}

impl std::fmt::Display for ListenerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Networks a PROXY protocol header is accepted from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProtocol {
    /// The load balancers' networks (CIDRs).
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(n, isCIDR(n) || isIP(n))").message("each entry must be an IP address or a CIDR"))]
    pub trusted_networks: Vec<String>,
}

/// The relay's TLS certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayTls {
    /// Name of a `kubernetes.io/tls` Secret in the Relay's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Limits on clients and messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest message accepted, as a quantity (`25Mi`). Advertised with SIZE.
    #[serde(default = "crate::defaults::max_message_size")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(k|M|G|Ki|Mi|Gi)?$')").message("must be a size such as 25Mi, 10M or 1048576"))]
    pub max_message_size: String,
    /// Most recipients in one message; RFC 5321 requires at least 100.
    #[serde(default = "crate::defaults::max_recipients")]
    #[schemars(range(min = 100, max = 100000))]
    pub max_recipients: i32,
    /// Most open sessions per pod.
    #[serde(default = "crate::defaults::max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
    /// Most open sessions per client IP address, per pod.
    #[serde(default = "crate::defaults::max_connections_per_ip")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections_per_ip: i32,
    /// Most messages per minute per client IP address, per pod.
    #[serde(default = "crate::defaults::messages_per_minute_per_ip")]
    #[schemars(range(min = 1, max = 10000000))]
    pub messages_per_minute_per_ip: i32,
    /// Failed AUTH attempts per client IP address before AUTH is refused for a while.
    #[serde(default = "crate::defaults::max_auth_failures_per_ip")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_auth_failures_per_ip: i32,
    /// How long to wait for a client (RFC 5321 §4.5.3.2).
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// Server timeouts, as durations (`5m`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Waiting for the next command. RFC 5321 asks for at least 5 minutes.
    #[serde(default = "crate::defaults::command_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 30s, 5m or 1h30m"))]
    pub command: String,
    /// Waiting for the next chunk of message data (RFC 5321: 3 minutes).
    #[serde(default = "crate::defaults::data_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 30s, 5m or 1h30m"))]
    pub data: String,
    /// Longest a whole session may last.
    #[serde(default = "crate::defaults::session_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 30s, 5m or 1h30m"))]
    pub session: String,
}

/// Queue storage, retries and lifetime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Queue {
    /// Keep the queue on a PersistentVolumeClaim per pod (the relay then
    /// runs as a StatefulSet). Without it the queue lives in an emptyDir and
    /// is handed to a peer when a pod is drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<QueueStorage>,
    /// Waits between delivery attempts. After the last one, its wait repeats
    /// until the message expires. Each wait varies by ±`jitterPercent`.
    #[serde(default = "crate::defaults::retry_schedule")]
    #[schemars(length(min = 1, max = 50), inner(length(max = 32)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(d, d.matches('^([0-9]+(ms|s|m|h|d))+$'))").message("each entry must be a duration such as 5m or 1h"))]
    pub retry_schedule: Vec<String>,
    /// Random variation of each retry wait, in percent.
    #[serde(default = "crate::defaults::jitter_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub jitter_percent: i32,
    /// How long a message may stay queued before it is bounced (RFC 5321
    /// asks for 4 to 5 days).
    #[serde(default = "crate::defaults::queue_lifetime")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 5d"))]
    pub lifetime: String,
    /// Send the sender a delay warning once a message has waited this
    /// long. `0s` turns warnings off.
    #[serde(default = "crate::defaults::delay_warning")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 4h"))]
    pub delay_warning: String,
    /// How a destination (a mailbox server, the smarthost, or the MX hosts
    /// a domain points at) that stops answering is treated.
    #[serde(default)]
    pub destinations: DestinationHealth,
}

/// Suspension of destinations that cannot be reached: after
/// `suspendAfterFailures` connection-level failures in a row (refused,
/// timed out, a 4xx/5xx greeting, TLS that policy requires failing) a
/// destination gets no attempts, its mail is deferred with the last
/// error, and one probe goes out per back-off step; the first probe that
/// gets through releases all of its mail at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationHealth {
    /// Connection-level failures in a row that suspend a destination.
    #[serde(default = "crate::defaults::suspend_after_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub suspend_after_failures: i32,
    /// Wait before the first probe of a suspended destination; it doubles
    /// after each failed probe.
    #[serde(default = "crate::defaults::probe_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 30s"))]
    pub probe_interval: String,
    /// The longest wait between two probes.
    #[serde(default = "crate::defaults::max_probe_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 30m"))]
    pub max_probe_interval: String,
}

/// A PersistentVolumeClaim template for the queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStorage {
    /// Size of each pod's volume (`10Gi`).
    #[schemars(length(max = 20))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(k|M|G|Ki|Mi|Gi)?$')").message("must be a size such as 10Gi"))]
    pub size: String,
    /// Storage class of the volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// The Service in front of the listeners.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'").message("externalTrafficPolicy applies only to LoadBalancer and NodePort services").field_path(".externalTrafficPolicy")
)]
pub struct RelayService {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// `Local` keeps the client's source address visible to the relay
    /// (needed for IP blocklists without PROXY protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
    /// Annotations for the Service, for example for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Service type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// Service external traffic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExternalTrafficPolicy {
    Cluster,
    Local,
}

/// DNS resolution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    /// Resolvers to use (`IP` or `IP:PORT`) instead of the pod's. A
    /// validating resolver close to the relay is best for DNSBL and MX lookups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 64)))]
    pub nameservers: Vec<String>,
    /// How long one lookup may take before it counts as a temporary failure.
    #[serde(default = "crate::defaults::dns_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 5s"))]
    pub timeout: String,
}

/// Delivery to remote domains (by MX or the smarthost).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Outbound TLS policy.
    #[serde(default)]
    pub tls: DeliveryTls,
    /// Rules that put a remote reply into a bounce class, tried in order
    /// before the built-in table (which goes by the RFC 3463 enhanced
    /// status code first and the reply text second).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub classification: Vec<ClassificationRule>,
    /// Limits per destination: connections, messages per connection,
    /// message and connection rates, per relay pod.
    #[serde(default, skip_serializing_if = "crate::shaping::Shaping::is_default")]
    pub shaping: crate::shaping::Shaping,
    /// Reactions to remote replies that ask the relay to slow down,
    /// tried in order; the first that matches applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub throttle: Vec<crate::shaping::ThrottleRule>,
}

/// One classification rule: a reply that matches goes into `class`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassificationRule {
    /// A regular expression (Rust `regex` syntax; `(?i)` for any case)
    /// matched against the reply as `CODE ENHANCED TEXT`, for example
    /// `550 5.7.1 Service unavailable`, or the relay's own words for a
    /// failure without a reply (`connection refused by …`).
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 1000))]
    pub pattern: String,
    pub class: BounceClass,
}

/// Why a recipient was not delivered (the class of a bounce or a
/// deferral). In metrics (`class` label), logs and `mailrelay queue show`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum BounceClass {
    /// The mailbox does not exist (5.1.1, "user unknown").
    InvalidRecipient,
    /// The domain does not exist or takes no mail (5.1.2, null MX).
    BadDomain,
    /// The mailbox is over quota (5.2.2).
    MailboxFull,
    /// The message is larger than the receiver takes (5.3.4, 5.2.3).
    MessageTooLarge,
    /// Refused by the receiver's policy (relaying denied, 5.7.1, …).
    PolicyRejection,
    /// Refused as spam, or the sending IP or domain is on a block list.
    SpamBlock,
    /// Slowed down by the receiver: rate limits, "try again later".
    Throttled,
    /// Refused for failed SPF, DKIM or DMARC (5.7.23–5.7.27).
    AuthenticationFailure,
    /// TLS could not be had as required (5.7.10, a failed handshake).
    TlsFailure,
    /// No connection: refused, timed out, unreachable, DNS trouble.
    NetworkFailure,
    /// The receiver or the conversation broke the protocol.
    ProtocolError,
    /// None of the above.
    Other,
}

impl BounceClass {
    pub const ALL: [BounceClass; 12] = [
        BounceClass::InvalidRecipient,
        BounceClass::BadDomain,
        BounceClass::MailboxFull,
        BounceClass::MessageTooLarge,
        BounceClass::PolicyRejection,
        BounceClass::SpamBlock,
        BounceClass::Throttled,
        BounceClass::AuthenticationFailure,
        BounceClass::TlsFailure,
        BounceClass::NetworkFailure,
        BounceClass::ProtocolError,
        BounceClass::Other,
    ];

    /// The name as in the API (and the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::InvalidRecipient => "InvalidRecipient",
            BounceClass::BadDomain => "BadDomain",
            BounceClass::MailboxFull => "MailboxFull",
            BounceClass::MessageTooLarge => "MessageTooLarge",
            BounceClass::PolicyRejection => "PolicyRejection",
            BounceClass::SpamBlock => "SpamBlock",
            BounceClass::Throttled => "Throttled",
            BounceClass::AuthenticationFailure => "AuthenticationFailure",
            BounceClass::TlsFailure => "TlsFailure",
            BounceClass::NetworkFailure => "NetworkFailure",
            BounceClass::ProtocolError => "ProtocolError",
            BounceClass::Other => "Other",
        }
    }
}

impl Delivery {
    pub fn is_default(&self) -> bool {
        *self == Delivery::default()
    }
}

/// Outbound TLS policy for mail delivered by MX. It does not apply to a
/// smarthost or to a MailDomain's mailbox server, whose `tls` says how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryTls {
    /// The policy for every destination domain not listed in `domains`.
    /// `Opportunistic` (default): STARTTLS when the MX offers it, in clear
    /// otherwise, certificates not checked (RFC 7435). `MtaSts`: as
    /// `Opportunistic`, except for domains that publish an MTA-STS policy
    /// (RFC 8461), which is fetched, cached and applied. `Required`:
    /// STARTTLS with a certificate valid for the MX host name, or the
    /// message waits in the queue (4xx); never sent in clear. `Dane`: DANE
    /// (RFC 7672) for MX hosts with DNSSEC-signed TLSA records (TLS
    /// authenticated by them, or 4.7.5 and the message waits), `MtaSts`
    /// for the rest.
    #[serde(default)]
    pub policy: OutboundTlsPolicy,
    /// Policies for particular destination domains (exact names), which
    /// take precedence over `policy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub domains: Vec<DomainTlsPolicy>,
}

/// How TLS is used towards a destination's MX hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OutboundTlsPolicy {
    /// STARTTLS when offered; delivery in clear otherwise.
    #[default]
    Opportunistic,
    /// Apply the domain's MTA-STS policy when it publishes one.
    MtaSts,
    /// STARTTLS with a valid certificate for the MX name, or defer.
    Required,
    /// DANE (RFC 7672) where the destination publishes DNSSEC-signed TLSA
    /// records for its MX hosts: TLS authenticated by them, or defer.
    /// Elsewhere as `MtaSts`.
    Dane,
}

/// The outbound TLS policy of one destination domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainTlsPolicy {
    /// The destination domain (exact name, such as `example.org`).
    #[schemars(length(min = 1, max = 253))]
    pub domain: String,
    /// Its policy.
    pub policy: OutboundTlsPolicy,
}

/// Observed state of a Relay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Hash of the compiled configuration the pods should run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Hosted domains served (MailDomains, not counting aliases).
    #[serde(default)]
    pub domains: i32,
    /// Blocklist entries in force.
    #[serde(default)]
    pub blocklist_entries: i64,
    /// `Ready`, `Progressing`, `Degraded` and `ConfigValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The aggregate reports: the last period sent, and what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<crate::reports::ReportsStatus>,
}
