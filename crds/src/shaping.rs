//! Outbound traffic shaping (`Relay.spec.delivery.shaping`) and adaptive
//! throttling (`Relay.spec.delivery.throttle`): how hard the relay may
//! push one remote destination, and how it backs off when the remote says
//! "slow down". Limits are per relay pod.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Limits per destination (an MX site: the MX hosts a domain points at,
/// shared by every domain pointing at them; or the smarthost).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Shaping {
    /// Limits of every destination no entry of `destinations` matches,
    /// and the values those entries leave unset.
    #[serde(default)]
    pub default: ShapeLimits,
    /// Limits for some destinations, tried in order: the first whose
    /// `domains` or `mxHosts` match applies. A destination matched by one
    /// of its domains is that domain alone (its mail is not pooled with
    /// other domains on the same MX hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // Bounded so the API server's estimated CEL cost (items × entries ×
    // name length) stays far below its per-CRD limit.
    #[schemars(length(max = 100))]
    pub destinations: Vec<DestinationShape>,
}

impl Shaping {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One destination's limits; an unset field inherits from `default`, and
/// from the built-in value when `default` leaves it unset too.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShapeLimits {
    /// Connections open to the destination at once (built in: 20, as
    /// Postfix's `default_destination_concurrency_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_connections: Option<i32>,
    /// Messages sent over one connection before it is closed (built in:
    /// 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_messages_per_connection: Option<i32>,
    /// Messages per second (`N/s`), minute (`N/m`) or hour (`N/h`),
    /// evenly spaced (GCRA). Built in: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[1-9][0-9]{0,5}/(s|m|h)$')").message("must be a rate such as 200/s, 50/m or 1000/h"))]
    pub message_rate: Option<String>,
    /// New connections per second, minute or hour, like `messageRate`.
    /// Built in: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[1-9][0-9]{0,5}/(s|m|h)$')").message("must be a rate such as 20/s, 5/m or 100/h"))]
    pub connection_rate: Option<String>,
    /// How long a connection is kept open for the next message (built in:
    /// 5s; remote servers drop idle clients after a few minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 30s"))]
    pub idle_timeout: Option<String>,
}

/// Limits for the destinations that match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("(has(self.domains) && size(self.domains) > 0) || (has(self.mxHosts) && size(self.mxHosts) > 0)").message("an entry needs domains or mxHosts to match").reason(kube::core::Reason::FieldValueRequired)
)]
pub struct DestinationShape {
    /// Recipient domains; `*.example.com` matches every name below
    /// `example.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(d, !d.contains('@') && !d.contains(' ') && (!d.contains('*') || (d.startsWith('*.') && d.lastIndexOf('*') == 0)))").message("each entry must be a domain name, optionally starting with '*.'"))]
    pub domains: Vec<String>,
    /// MX host names (or the smarthost's host); the entry applies when any
    /// of the destination's hosts matches. `*.google.com` matches every
    /// name below `google.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(d, !d.contains('@') && !d.contains(' ') && (!d.contains('*') || (d.startsWith('*.') && d.lastIndexOf('*') == 0)))").message("each entry must be a host name, optionally starting with '*.'"))]
    pub mx_hosts: Vec<String>,
    #[serde(flatten)]
    pub limits: ShapeLimits,
}

/// What the relay does when a remote reply matches.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ThrottleAction {
    /// No attempts to the destination for `duration`, then one probe;
    /// its mail is deferred meanwhile.
    #[default]
    Suspend,
    /// `messageRate` instead of the shaping rate for `duration`.
    Slow,
}

/// A reaction to remote replies (KumoMTA's traffic-shaping automation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("self.action != 'Slow' || has(self.messageRate)").message("a Slow rule needs messageRate").field_path(".messageRate").reason(kube::core::Reason::FieldValueRequired),
    validation = kube::core::Rule::new("self.action == 'Slow' || !has(self.messageRate)").message("messageRate applies only to a Slow rule").field_path(".messageRate")
)]
pub struct ThrottleRule {
    /// A regular expression (Rust `regex` syntax; `(?i)` for any case)
    /// matched against each reply that is not a delivery, as
    /// `CODE ENHANCED TEXT` (`421 4.7.0 Try again later`).
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 1000))]
    pub pattern: String,
    #[serde(default)]
    pub action: ThrottleAction,
    /// How long the reaction lasts; a reply that matches again while it
    /// lasts starts it over.
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')").message("must be a duration such as 15m"))]
    pub duration: String,
    /// For `Slow`: the rate in force for `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[1-9][0-9]{0,5}/(s|m|h)$')").message("must be a rate such as 1/m"))]
    pub message_rate: Option<String>,
}
