//! The manifests a test runs the relay with, written into its own
//! directory: one Relay, the hosted domain `hosted.test` with an account,
//! the test's other MailDomains and its Blocklists.

use std::path::Path;

/// The hosted domain.
pub const HOSTED: &str = "hosted.test";
/// A hosted recipient, and the one submission account.
pub const ALICE: &str = "alice@hosted.test";
/// Alice's password.
pub const PASSWORD: &str = "secret";
/// A sender from elsewhere.
pub const REMOTE_SENDER: &str = "a@remote.test";
/// The relay's host name.
pub const HOSTNAME: &str = "mx.hosted.test";

/// How a test's relay is configured.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `spec.limits` of the Relay, as a YAML flow mapping.
    pub limits: String,
    /// `spec.dns.timeout` of the Relay.
    pub dns_timeout: String,
    /// Blocklist manifests (YAML documents).
    pub blocklists: Vec<String>,
    /// Extra dnsmasq config lines.
    pub dns_records: String,
    /// Point the relay at a DNS server that never answers.
    pub silent_dns: bool,
    /// Point the relay at this DNS server (the test runs it) instead of
    /// a dnsmasq of its own.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Listen for smtp on `[::1]` instead of 127.0.0.1.
    pub smtp_on_ipv6: bool,
    /// More fields of the Relay's spec, as YAML lines already indented
    /// for it (`  queue: {retrySchedule: [1s]}`).
    pub relay_spec: String,
    /// Where `hosted.test` delivers, as a YAML flow mapping.
    pub hosted_delivery: String,
    /// The local parts `hosted.test` accepts.
    pub hosted_local_parts: Vec<String>,
    /// More MailDomain manifests (YAML documents).
    pub domains: Vec<String>,
    /// More arguments of `mailrelay run` (`--tls-ca FILE`).
    pub relay_args: Vec<String>,
    /// More Secret manifests (YAML documents, see [`secret`]).
    pub secrets: Vec<String>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            // Generous enough for the load tests (smtp-source, the
            // durability run), which all come from 127.0.0.1.
            limits: "{maxConnectionsPerIp: 1000, messagesPerMinutePerIp: 10000000}".into(),
            dns_timeout: "2s".into(),
            blocklists: Vec::new(),
            dns_records: String::new(),
            silent_dns: false,
            dns_server: None,
            smtp_on_ipv6: false,
            relay_spec: String::new(),
            // A closed loopback port: whatever is accepted for hosted.test
            // stays in the spool (deferred) while the test looks at it.
            hosted_delivery: "{lmtp: {host: 127.0.0.1, port: 9}}".into(),
            hosted_local_parts: ["alice", "bob", "postmaster"].map(String::from).to_vec(),
            domains: Vec::new(),
            relay_args: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

impl Setup {
    pub fn limits(mut self, yaml_flow_mapping: &str) -> Setup {
        self.limits = yaml_flow_mapping.to_string();
        self
    }

    pub fn dns_timeout(mut self, duration: &str) -> Setup {
        self.dns_timeout = duration.to_string();
        self
    }

    pub fn blocklist(mut self, manifest: &str) -> Setup {
        self.blocklists.push(manifest.to_string());
        self
    }

    pub fn dns_records(mut self, lines: &str) -> Setup {
        self.dns_records.push_str(lines);
        self.dns_records.push('\n');
        self
    }

    /// Give `mailrelay run` one more argument.
    pub fn relay_arg(mut self, arg: impl Into<String>) -> Setup {
        self.relay_args.push(arg.into());
        self
    }

    pub fn silent_dns(mut self) -> Setup {
        self.silent_dns = true;
        self
    }

    /// Ask `server` (run by the test) for every name.
    pub fn dns_server(mut self, server: std::net::SocketAddr) -> Setup {
        self.dns_server = Some(server);
        self
    }

    pub fn smtp_on_ipv6(mut self) -> Setup {
        self.smtp_on_ipv6 = true;
        self
    }

    /// Add fields to the Relay's spec: YAML lines as they would be written
    /// at the top level of the spec (`queue: {retrySchedule: [1s]}`).
    pub fn relay_spec(mut self, lines: &str) -> Setup {
        for line in lines.lines() {
            self.relay_spec.push_str("  ");
            self.relay_spec.push_str(line);
            self.relay_spec.push('\n');
        }
        self
    }

    /// Let every loopback client relay to any domain without AUTH.
    pub fn relay_from_loopback(self) -> Setup {
        self.relay_spec("trustedNetworks: [127.0.0.0/8]\nrelayFromTrustedNetworks: true")
    }

    /// Deliver `hosted.test` there (a YAML flow mapping, such as
    /// `{lmtp: {host: 127.0.0.1, port: 2424}}`).
    pub fn hosted_delivery(mut self, yaml_flow_mapping: &str) -> Setup {
        self.hosted_delivery = yaml_flow_mapping.to_string();
        self
    }

    pub fn hosted_local_parts(mut self, local_parts: &[&str]) -> Setup {
        self.hosted_local_parts = local_parts.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Another hosted domain: a MailDomain manifest (see [`maildomain`]).
    pub fn domain(mut self, manifest: &str) -> Setup {
        self.domains.push(manifest.to_string());
        self
    }

    /// A Secret among the manifests, as `kubectl apply` would take it.
    pub fn secret(mut self, name: &str, string_data: &[(&str, &str)]) -> Setup {
        self.secrets.push(secret(name, string_data));
        self
    }

    /// Write the manifests into `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("create the manifests directory");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        };
        write("relay.yaml", &self.relay());
        write("maildomain.yaml", &self.hosted());
        for (i, domain) in self.domains.iter().enumerate() {
            write(&format!("maildomain-{i}.yaml"), domain);
        }
        write("secret-accounts.yaml", &accounts_secret());
        for (i, blocklist) in self.blocklists.iter().enumerate() {
            write(&format!("blocklist-{i}.yaml"), blocklist);
        }
        for (i, secret) in self.secrets.iter().enumerate() {
            write(&format!("secret-{i}.yaml"), secret);
        }
    }

    fn relay(&self) -> String {
        format!(
            "apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata:
  name: test
spec:
  hostname: {HOSTNAME}
  listeners:
    - name: smtp
    - name: submission
    - name: submissions
  # Not among the manifests: the relay makes a self-signed certificate.
  tls:
    secretName: test-tls
  limits: {limits}
  dns:
    timeout: {timeout}
{extra}",
            limits = self.limits,
            timeout = self.dns_timeout,
            extra = self.relay_spec,
        )
    }

    /// `hosted.test`, with alice's account.
    fn hosted(&self) -> String {
        format!(
            "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: hosted
spec:
  domain: {HOSTED}
  inbound:
    localParts: [{local_parts}]
    recipientDelimiter: \"+\"
  delivery: {delivery}
  submission:
    accounts:
      name: hosted-accounts
      key: passwd
",
            local_parts = self.hosted_local_parts.join(", "),
            delivery = self.hosted_delivery,
        )
    }
}

/// A MailDomain manifest for `domain` (named after it), accepting
/// `local_parts` and delivering as `delivery` says (a YAML flow mapping).
pub fn maildomain(domain: &str, local_parts: &[&str], delivery: &str) -> String {
    format!(
        "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: {name}
spec:
  domain: {domain}
  inbound:
    localParts: [{local_parts}]
  delivery: {delivery}
",
        name = domain.replace('.', "-"),
        local_parts = local_parts.join(", "),
    )
}

/// Alice's account, with a bcrypt hash of cost 4 (fast to check).
fn accounts_secret() -> String {
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt hash");
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: hosted-accounts
type: Opaque
stringData:
  passwd: \"{ALICE}:{hash}\"
"
    )
}

/// A Secret manifest named `name` holding `string_data`.
pub fn secret(name: &str, string_data: &[(&str, &str)]) -> String {
    let data: String = string_data
        .iter()
        .map(|(key, value)| format!("  {key}: {value:?}\n"))
        .collect();
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: {name}
type: Opaque
stringData:
{data}"
    )
}

/// A Blocklist manifest.
pub fn blocklist(name: &str, spec: &str) -> String {
    let spec = spec
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "apiVersion: mailrelay.io/v1alpha1
kind: Blocklist
metadata:
  name: {name}
spec:
{spec}
"
    )
}
