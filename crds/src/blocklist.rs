//! `Blocklist`: declarative blocks of clients, names and senders.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Time};

/// Clients, names and senders that relays refuse, and DNSBL zones they
/// consult. A Relay applies the Blocklists its `blocklistSelector` matches.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mailrelay.io",
    version = "v1alpha1",
    kind = "Blocklist",
    plural = "blocklists",
    shortname = "bl",
    category = "mailrelay",
    namespaced,
    status = "BlocklistStatus",
    derive = "PartialEq",
    cel,
    doc = "Clients, names and senders that relays refuse, and DNSBL zones they consult.",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Entries", type_ = "integer", json_path = ".status.entries"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BlocklistSpec {
    /// What a listed client or sender gets: `Reject` (5xx, the client gives
    /// up) or `TempFail` (4xx, the client may retry later).
    #[serde(default)]
    pub action: BlockAction,

    /// Text of the SMTP reply, shown to the client and often to the sender.
    /// Defaults to a message naming what matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[ -~]*$')").message("must be printable ASCII on one line"))]
    pub message: Option<String>,

    /// Client IP addresses and networks, IPv4 or IPv6 (`192.0.2.7`,
    /// `198.51.100.0/24`, `2001:db8::/32`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50000))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, isIP(e.value) || isCIDR(e.value))").message("each value must be an IP address or a CIDR such as 198.51.100.0/24"))]
    pub ips: Vec<Entry>,

    /// Domain names, exact (`spam.example`) or with a leading wildcard
    /// (`*.spam.example`, which matches names under it but not itself).
    /// Checked against the HELO name, the client's reverse DNS name and the
    /// sender's domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50000))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, !e.value.contains('@') && !e.value.contains(' ') && (!e.value.contains('*') || (e.value.startsWith('*.') && e.value.lastIndexOf('*') == 0)))").message("each value must be a domain name, optionally starting with '*.'"))]
    pub domains: Vec<Entry>,

    /// Sender addresses (`user@example.com`), compared case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50000))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, e.value.contains('@'))").message("each value must be an address such as user@example.com"))]
    pub senders: Vec<Entry>,

    /// Recipients never to send to (a suppression list): an address
    /// (`user@example.com`), every address of a domain (`*@example.com`)
    /// or of the domains under one (`*.example.com`). A listed recipient is
    /// refused at RCPT on every listener (550 5.7.1 with `Reject`), after
    /// the relay has decided it would take it: outsiders learn nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50000))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, e.value.contains('@') || e.value.startsWith('*.'))").message("each value must be an address, *@domain or *.domain"))]
    pub recipients: Vec<Entry>,

    /// DNS blocklist zones checked for each client address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub dnsbl: Vec<DnsblZone>,
}

/// One blocklist entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The address, network, name or sender.
    #[schemars(length(min = 1, max = 320))]
    pub value: String,
    /// When the entry stops applying (RFC 3339). Kept forever when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
    /// Why it is listed, for people reading the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub comment: Option<String>,
}

/// A DNSBL zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsblZone {
    /// The zone, for example `zen.spamhaus.org`.
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,
    /// Answers that count as listed, as addresses or CIDRs. Defaults to
    /// `127.0.0.0/24`; answers outside (such as `127.255.255.254`, which
    /// some lists return to refuse a query) never count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isIP(c) || isCIDR(c))").message("each return code must be an IP address or a CIDR such as 127.0.0.2"))]
    pub return_codes: Vec<String>,
    /// Reply text for clients listed in this zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[ -~]*$')").message("must be printable ASCII on one line"))]
    pub message: Option<String>,
}

/// The reply class for a blocked client or sender.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum BlockAction {
    /// Permanent refusal (550 5.7.1).
    #[default]
    Reject,
    /// Temporary refusal (450 4.7.1).
    TempFail,
}

/// Observed state of a Blocklist.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlocklistStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid entries (IPs, domains, senders and DNSBL zones).
    #[serde(default)]
    pub entries: i64,
    /// Entries that could not be used, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<InvalidEntry>,
    /// Names of the Relays applying this Blocklist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
    /// `Ready` and `EntriesValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An entry that could not be used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvalidEntry {
    /// Field path, such as `spec.ips[3].value`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}
