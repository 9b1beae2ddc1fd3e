//! `MailDomain`: one hosted domain, where its mail goes and who may send as it.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretKeyRef, Smarthost};

/// A mail domain hosted by mailrelay: the relays that select it accept mail
/// for it on their `smtp` listener and deliver that mail to its mailbox
/// server; its accounts may send through their submission listeners.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mailrelay.io",
    version = "v1alpha1",
    kind = "MailDomain",
    plural = "maildomains",
    shortname = "md",
    category = "mailrelay",
    namespaced,
    status = "MailDomainStatus",
    derive = "PartialEq",
    cel,
    doc = "A mail domain hosted by mailrelay: where its mail is delivered and who may send as it.",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Relays",
        type_ = "string",
        json_path = ".status.relays",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("!has(self.arc) || !has(self.arc.seal) || !self.arc.seal || has(self.dkim)").message("spec.arc.seal needs spec.dkim: ARC sets are signed with the domain's DKIM key").field_path(".arc.seal"),
    validation = kube::core::Rule::new("!has(self.arc) || !has(self.arc.seal) || !self.arc.seal || !has(self.inboundAuth) || !has(self.inboundAuth.policy) || self.inboundAuth.policy != 'Accept'").message("spec.arc.seal needs inbound checks: the ARC set records them, and spec.inboundAuth.policy Accept makes none").field_path(".arc.seal")
)]
pub struct MailDomainSpec {
    /// The domain name, for example `example.com`. Internationalised names
    /// are accepted and used in their ASCII (A-label) form; case and a
    /// trailing dot are ignored.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("!self.contains('@') && !self.startsWith('*') && !self.contains(' ')").message("must be a domain name such as example.com, without '@', spaces or wildcards"))]
    pub domain: String,

    /// Other names for the same domain. Mail to `user@alias` is handled as
    /// mail to `user@domain`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 253)))]
    pub aliases: Vec<String>,

    /// Which recipients the `smtp` listener accepts for this domain.
    /// Recipients are checked while the client sends RCPT, so mail for an
    /// unknown user is refused rather than accepted and bounced later.
    #[serde(default)]
    pub inbound: Inbound,

    /// What the `smtp` listener does with the SPF, DKIM and DMARC results
    /// of mail for this domain. Mail from authenticated submission clients
    /// and from the Relay's trusted networks is not checked.
    #[serde(default, skip_serializing_if = "InboundAuth::is_default")]
    pub inbound_auth: InboundAuth,

    /// Where accepted mail for this domain is delivered.
    pub delivery: Delivery,

    /// Accounts that may authenticate on the submission listeners and send
    /// as addresses of this domain. Without it, nobody can send as this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<Submission>,

    /// DKIM signing of mail sent from this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<Dkim>,

    /// How mail sent from this domain leaves the relays.
    #[serde(default, skip_serializing_if = "Outbound::is_default")]
    pub outbound: Outbound,

    /// ARC (RFC 8617) for mail this domain receives on the `smtp`
    /// listener. The ARC chain of inbound mail is always verified and
    /// recorded in `Authentication-Results:`; this adds the relay's own
    /// ARC set.
    #[serde(default, skip_serializing_if = "ArcOptions::is_default")]
    pub arc: ArcOptions,

    /// This domain's own delivery events webhook.
    #[serde(
        default,
        skip_serializing_if = "crate::events::MailDomainEvents::is_default"
    )]
    pub events: crate::events::MailDomainEvents,
}

/// ARC sealing of the domain's inbound mail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArcOptions {
    /// Seal mail accepted for this domain on the `smtp` listener with the
    /// domain's DKIM key (`spec.dkim`, `d=` the domain): an
    /// ARC-Authentication-Results copy of the relay's checks, an
    /// ARC-Message-Signature and an ARC-Seal. Turn it on when the mailbox
    /// server forwards mail off-site (aliases, forwarding rules), so the
    /// next receiver can trust the checks made here when SPF and DKIM
    /// break on the way (Google's bulk sender guidance asks forwarders for
    /// ARC). Needs `spec.dkim` and checks on (`spec.inboundAuth.policy`
    /// not `Accept`).
    #[serde(default)]
    pub seal: bool,
}

impl ArcOptions {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Outgoing mail from the domain's addresses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    /// Send mail whose envelope sender is an address of this domain (or
    /// of one of its aliases) through this host, whatever the recipient's
    /// domain, instead of the Relay's smarthost or the recipients' MX
    /// hosts. Mail for hosted domains still goes to their mailbox servers.
    /// The host's certificate is verified (`Required`, `Implicit`) against
    /// the public roots and the relay's `--tls-ca`; credentials are only
    /// ever sent over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<Smarthost>,
}

impl Outbound {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Which recipients are accepted for the domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("!self.enabled || self.catchAll || size(self.localParts) > 0").message("inbound mail is enabled but no recipient is accepted: list spec.inbound.localParts or set spec.inbound.catchAll")
)]
pub struct Inbound {
    /// Accept mail for this domain on the `smtp` listener. When false, only
    /// submission clients can send to it.
    #[serde(default = "crate::defaults::r#true")]
    pub enabled: bool,

    /// Local parts (the part before `@`) that are accepted, for example
    /// `alice` or `postmaster`. Compared case-insensitively.
    #[serde(default)]
    #[schemars(length(max = 10000), inner(length(min = 1, max = 64)))]
    pub local_parts: Vec<String>,

    /// Accept every local part. The mailbox server then decides, after
    /// the message was accepted, which can cause bounces: prefer listing
    /// `localParts`.
    #[serde(default)]
    pub catch_all: bool,

    /// Sub-addressing separator: with `+`, `alice+news@` is accepted as
    /// `alice@`. Empty turns sub-addressing off.
    #[serde(default = "crate::defaults::recipient_delimiter")]
    #[schemars(length(max = 1))]
    pub recipient_delimiter: String,
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            enabled: true,
            local_parts: Vec::new(),
            catch_all: false,
            recipient_delimiter: crate::defaults::recipient_delimiter(),
        }
    }
}

/// Authentication of inbound mail: SPF (RFC 7208) for the HELO and MAIL
/// FROM identities, DKIM signatures (RFC 6376) and the sender domain's
/// DMARC policy (RFC 7489), recorded in an `Authentication-Results:`
/// header (RFC 8601) named after the Relay's hostname.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundAuth {
    /// `Enforce` (default): honour the DMARC policy the sender's domain
    /// publishes: `p=reject` mail that fails DMARC is refused with
    /// `550 5.7.1`, `p=quarantine` mail is accepted with `X-Spam-Flag: YES`,
    /// `p=none` mail is accepted; a DNS failure that leaves the outcome
    /// open is answered `451 4.7.0` (try again later). `Tag`: check and
    /// record, never refuse or defer (like OpenDMARC with
    /// `RejectFailures false`); a failure under `p=reject` or
    /// `p=quarantine` gets `X-Spam-Flag: YES`. `Accept`: no checks; the
    /// header says `none`. When one message goes to domains with
    /// different policies, the strictest applies (Enforce, then Tag, then
    /// Accept).
    #[serde(default)]
    pub policy: InboundAuthPolicy,
}

impl InboundAuth {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What is done with the authentication results of inbound mail.
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
pub enum InboundAuthPolicy {
    /// Check nothing; add `Authentication-Results: HOST; none`.
    Accept,
    /// Check and record the results; never refuse or defer.
    Tag,
    /// Check, record, and act on the sender domain's DMARC policy.
    #[default]
    Enforce,
}

/// Where mail for the domain goes: exactly one of `lmtp`, `smtp` and `maildir`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("[has(self.lmtp), has(self.smtp), has(self.maildir)].filter(x, x).size() == 1").message("set exactly one of lmtp, smtp and maildir")
)]
pub struct Delivery {
    /// Deliver over LMTP (RFC 2033), for example to Dovecot's LMTP service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lmtp: Option<LmtpTarget>,
    /// Deliver over SMTP to a mailbox server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpTarget>,
    /// Write each message into a maildir on a volume the relay mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maildir: Option<MaildirTarget>,
}

/// An LMTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("has(self.port)").message("LMTP has no well-known port: set the port of the LMTP service, for example 24").field_path(".port").reason(kube::core::Reason::FieldValueRequired)
)]
pub struct LmtpTarget {
    /// Host name or IP address of the LMTP server (a Service name works).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the LMTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// An SMTP mailbox server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmtpTarget {
    /// Host name or IP address of the server.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the server.
    #[serde(default = "crate::defaults::smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// How TLS is used: `Opportunistic` (default), `Required`, `Implicit` or `None`.
    #[serde(default)]
    pub tls: TlsMode,
}

/// How an outbound connection uses TLS.
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
pub enum TlsMode {
    /// STARTTLS when the server offers it, plain text otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS is required; the message is deferred when TLS fails.
    Required,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// Never use TLS.
    None,
}

/// A maildir on a mounted volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaildirTarget {
    /// Directory under which each user's maildir lives, as `PATH/LOCALPART/`
    /// with `tmp/`, `new/` and `cur/` inside: the layout Dovecot reads with
    /// `mail_location = maildir:PATH/%n`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    pub path: String,
    /// Name of a PersistentVolumeClaim the relay pods mount at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
}

/// Accounts allowed to send as the domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    /// Secret key holding the accounts, one per line as `LOGIN:HASH`, where
    /// LOGIN is the account's address (`alice@example.com`) and HASH an
    /// argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) password hash.
    pub accounts: SecretKeyRef,
    /// Logins that are suspended: authentication is refused with a reply
    /// that says so. Mail to them is still accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 320)))]
    pub suspended: Vec<String>,
    /// Extra sender addresses per account. Every account may always send as
    /// its own login address; a pattern `*@example.com` allows any address
    /// of a domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<SenderGrant>,
}

/// Addresses an account may use in MAIL FROM and From:.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SenderGrant {
    /// The account's login.
    #[schemars(length(min = 1, max = 320))]
    pub account: String,
    /// Addresses (`sales@example.com`) or patterns (`*@example.com`).
    #[schemars(length(min = 1), inner(length(min = 1, max = 320)))]
    pub addresses: Vec<String>,
}

/// DKIM signing key and selector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dkim {
    /// The selector: the public key is published at `SELECTOR._domainkey.DOMAIN`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$')").message("must be a single DNS label"))]
    pub selector: String,
    /// Signing algorithm.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// Secret key holding the private key in PEM (PKCS#8; for RSA also
    /// PKCS#1, as `opendkim-genkey` writes). The relay re-reads it when the
    /// Secret changes; while it is missing or unusable, mail that should be
    /// signed with it is refused with 451 4.3.0 (the client retries).
    pub private_key: SecretKeyRef,
    /// Let the operator create the key (RSA 2048-bit or Ed25519) in that
    /// Secret when the Secret or the key does not exist. An existing key is
    /// never overwritten.
    #[serde(default)]
    pub generate: bool,
}

/// DKIM signing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DkimAlgorithm {
    /// RSA 2048 with SHA-256, understood by every verifier.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

/// Observed state of a MailDomain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Names of the Relays that serve this domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
    /// What the domain's MX records point at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCheck>,
    /// The DNS record to publish for the DKIM key, shown whenever the key
    /// in its Secret is readable: one zone-file line,
    /// `SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa; p=BASE64"`
    /// (`k=ed25519` for Ed25519 keys), the value cut into quoted strings
    /// of at most 255 octets, as TXT records need; a resolver joins them
    /// without separator. Paste the line into a zone file, or give a DNS
    /// provider the value (the strings joined, without the quotes). Mail
    /// From: an alias is signed with the alias as domain: publish the same
    /// value under `SELECTOR._domainkey.ALIAS` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim_record: Option<String>,
    /// `Ready`, `Accepted` (served by at least one Relay), `DnsConfigured`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Result of the periodic MX check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsCheck {
    /// MX hosts found, in preference order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx: Vec<String>,
    /// Whether an MX host resolves to the external address of a serving Relay.
    pub points_at_relay: bool,
    /// What was found, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
