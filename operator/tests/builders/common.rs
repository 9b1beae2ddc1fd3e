//! Test objects: manifests as a user writes them, read and compiled the way
//! the operator does, so every builder test starts from real validation.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;

use mailrelay_crds::manifests::{Manifests, load_text};
use mailrelay_operator::builders::{Objects, Workload, build_all};
use mailrelay_operator::{Model, Settings};

pub const UID: &str = "0d5bd8a4-7c1e-4a8e-9a43-6f3c0e1f2a77";

/// A namespace of manifests around one Relay named `edge` in `mail`.
pub struct Fixture {
    /// One manifest per document, each read as its own file (the YAML
    /// reader bounds the nodes of one file).
    docs: Vec<String>,
    settings: Settings,
}

fn indent(spec: &str) -> String {
    spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
}

impl Fixture {
    /// Relay `edge` (with a uid, as read from a cluster) with this spec.
    pub fn relay(spec: &str) -> Self {
        Self::named_relay("edge", Some(UID), spec)
    }

    /// A Relay as a manifest file has it: no uid.
    pub fn named_relay(name: &str, uid: Option<&str>, spec: &str) -> Self {
        let uid = uid.map(|u| format!(", uid: {u}")).unwrap_or_default();
        Self {
            docs: vec![format!(
                "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {{name: {name}, namespace: mail{uid}}}\nspec:\n{}",
                indent(spec)
            )],
            settings: Settings {
                default_image: "mailrelay:test".into(),
                prometheus_url: "http://prometheus.test:9090".into(),
            },
        }
    }

    /// Add a MailDomain.
    pub fn domain(mut self, name: &str, spec: &str) -> Self {
        self.docs.push(format!(
            "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: {name}, namespace: mail}}\nspec:\n{}",
            indent(spec)
        ));
        self
    }

    /// Add a Blocklist.
    pub fn blocklist(mut self, name: &str, spec: &str) -> Self {
        self.docs.push(format!(
            "apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {{name: {name}, namespace: mail}}\nspec:\n{}",
            indent(spec)
        ));
        self
    }

    pub fn manifests(&self) -> Manifests {
        let mut m = Manifests::default();
        let mut errors = Vec::new();
        for (i, doc) in self.docs.iter().enumerate() {
            load_text(
                Path::new(&format!("fixture-{i}.yaml")),
                doc,
                &mut m,
                &mut errors,
            );
        }
        assert!(errors.is_empty(), "{errors:#?}");
        m
    }

    pub fn model(&self) -> Model {
        let m = self.manifests();
        let domains = m.domain_objects();
        let compiled =
            mailrelay_crds::compile(&m.relays[0].object, &domains, &m.blocklist_objects())
                .unwrap_or_else(|p| panic!("does not compile: {p:#?}"));
        assert!(compiled.problems.is_empty(), "{:#?}", compiled.problems);
        Model::new(
            &m.relays[0].object,
            compiled.config,
            &domains,
            &self.settings,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn objects(&self) -> Objects {
        build_all(&self.model()).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The smallest useful Relay.
pub const MINIMAL: &str = "hostname: mx.example.com";

/// A Relay with TLS and the three listeners.
pub const WITH_TLS: &str = "hostname: mx.example.com
listeners: [{name: smtp}, {name: submission}, {name: submissions}]
tls: {secretName: mx-tls}";

/// A domain delivered over LMTP, with accounts and DKIM.
pub const LMTP_DOMAIN: &str = "domain: example.com
inbound: {localParts: [alice]}
delivery: {lmtp: {host: dovecot.mail.svc, port: 24}}
submission: {accounts: {name: example-accounts, key: passwd}}
dkim: {selector: s1, privateKey: {name: example-dkim, key: private.pem}}";

pub fn pod_spec(objects: &Objects) -> &k8s_openapi::api::core::v1::PodSpec {
    let template = match &objects.workload {
        Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
        Workload::StatefulSet(s) => s.spec.as_ref().map(|s| &s.template),
    };
    template
        .and_then(|t| t.spec.as_ref())
        .expect("a pod template")
}

pub fn container(objects: &Objects) -> &k8s_openapi::api::core::v1::Container {
    &pod_spec(objects).containers[0]
}

/// `count` Blocklists holding `total` entries between them (IPv4 and IPv6
/// addresses, domains and senders), from a fixed pseudo-random sequence:
/// random names compress about as badly as real ones do.
pub fn big_blocklists(mut fixture: Fixture, count: usize, total: usize) -> Fixture {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let per_list = total / count;
    for list in 0..count {
        let (mut ips, mut domains, mut senders) = (String::new(), String::new(), String::new());
        for i in 0..per_list {
            let r = next();
            match i % 4 {
                0 => ips.push_str(&format!(
                    "  - {{value: \"{}.{}.{}.{}\"}}\n",
                    (r >> 24) as u8 % 223 + 1,
                    (r >> 16) as u8,
                    (r >> 8) as u8,
                    r as u8
                )),
                1 => ips.push_str(&format!(
                    "  - {{value: \"2001:db8:{:x}:{:x}::/64\"}}\n",
                    (r >> 16) as u16,
                    r as u16
                )),
                2 => domains.push_str(&format!("  - {{value: \"m{r:x}.example\"}}\n")),
                _ => senders.push_str(&format!("  - {{value: \"s{r:x}@spam.example\"}}\n")),
            }
        }
        fixture = fixture.blocklist(
            &format!("generated-{list}"),
            &format!("ips:\n{ips}domains:\n{domains}senders:\n{senders}"),
        );
    }
    fixture
}
