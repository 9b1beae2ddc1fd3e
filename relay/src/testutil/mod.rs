//! Test fixtures shared by the relay's unit tests.

pub(crate) mod dnsmasq;

use mailrelay_crds::compile;
use mailrelay_crds::manifests::{Manifests, load_text};

use crate::config::runtime::Runtime;

/// A Relay `mx.test` hosting `hosted.example` (alice, postmaster), with
/// accounts alice@ and carol@ (suspended), both with password `secret`,
/// trusting 10.0.0.0/8 without letting it relay.
pub(crate) const MANIFESTS: &str = r#"
apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata: {name: test}
spec:
  hostname: mx.test
  listeners: [{name: smtp}, {name: submission}, {name: submissions}]
  tls: {secretName: tls}
  trustedNetworks: [10.0.0.0/8]
---
apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata: {name: hosted}
spec:
  domain: hosted.example
  inbound: {localParts: [alice, postmaster]}
  delivery: {lmtp: {host: 127.0.0.1, port: 24}}
  submission:
    accounts: {name: accounts, key: passwd}
    suspended: [carol@hosted.example]
"#;

/// The compiled runtime, with its secrets in a temporary directory that
/// lives as long as the returned guard.
pub(crate) fn runtime() -> (Runtime, tempfile::TempDir) {
    // bcrypt at its lowest cost keeps debug-build tests fast.
    let hash = bcrypt::hash("secret", 4).expect("hash");
    runtime_from(
        MANIFESTS,
        &[(
            "accounts/passwd",
            format!("alice@hosted.example:{hash}\ncarol@hosted.example:{hash}\n").as_bytes(),
        )],
    )
}

/// The runtime of the one Relay in `manifests`, its Secrets' files
/// (`(path under the secrets dir, content)`) written into a temporary
/// directory that lives as long as the returned guard.
pub(crate) fn runtime_from(
    manifests: &str,
    secrets: &[(&str, &[u8])],
) -> (Runtime, tempfile::TempDir) {
    let mut m = Manifests::default();
    let mut errors = Vec::new();
    load_text(
        std::path::Path::new("test.yaml"),
        manifests,
        &mut m,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let compiled = compile(
        &m.relays[0].object,
        &m.domain_objects(),
        &m.blocklist_objects(),
    )
    .expect("test relay compiles");
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in secrets {
        let path = dir.path().join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write a secret file");
    }
    let mut config = compiled.config;
    config.secrets_dir = dir.path().to_string_lossy().into_owned();
    let (rt, warnings) = Runtime::build(config, 0);
    assert!(warnings.is_empty(), "{warnings:?}");
    (rt, dir)
}
