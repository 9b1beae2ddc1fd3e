//! The manifests a test runs the relay with, written into its own
//! directory: one Relay, the hosted domain `hosted.test` with an account,
//! and the test's Blocklists.

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
    /// Listen for smtp on `[::1]` instead of 127.0.0.1.
    pub smtp_on_ipv6: bool,
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
            smtp_on_ipv6: false,
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

    pub fn silent_dns(mut self) -> Setup {
        self.silent_dns = true;
        self
    }

    pub fn smtp_on_ipv6(mut self) -> Setup {
        self.smtp_on_ipv6 = true;
        self
    }

    /// Write the manifests into `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("create the manifests directory");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        };
        write("relay.yaml", &self.relay());
        write("maildomain.yaml", MAILDOMAIN);
        write("secret-accounts.yaml", &accounts_secret());
        for (i, blocklist) in self.blocklists.iter().enumerate() {
            write(&format!("blocklist-{i}.yaml"), blocklist);
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
",
            limits = self.limits,
            timeout = self.dns_timeout,
        )
    }
}

/// `hosted.test`: three mailboxes, delivered over LMTP to a closed
/// loopback port, so whatever is accepted stays in the spool (deferred)
/// while the test looks at it.
const MAILDOMAIN: &str = "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: hosted
spec:
  domain: hosted.test
  inbound:
    localParts: [alice, bob, postmaster]
    recipientDelimiter: \"+\"
  delivery:
    lmtp:
      host: 127.0.0.1
      port: 9
  submission:
    accounts:
      name: hosted-accounts
      key: passwd
";

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
