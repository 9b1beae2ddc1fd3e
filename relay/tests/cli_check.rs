//! `mailrelay check`: a broken manifest directory fails, and each problem
//! names the file, the object, the field and the reason.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::MAILRELAY;

const RELAY: &str = "apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata:
  name: test
spec:
  hostname: mx.hosted.test
";

const GOOD_DOMAIN: &str = "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: hosted
spec:
  domain: hosted.test
  inbound:
    localParts: [alice]
  delivery:
    lmtp:
      host: 127.0.0.1
      port: 24
";

/// LMTP has no well-known port: leaving it out is an error.
const LMTP_WITHOUT_PORT: &str = "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: broken-lmtp
spec:
  domain: shop.test
  inbound:
    localParts: [orders]
  delivery:
    lmtp:
      host: dovecot.test
";

const BAD_CIDR: &str = "apiVersion: mailrelay.io/v1alpha1
kind: Blocklist
metadata:
  name: broken-ips
spec:
  ips:
    - value: 192.0.2.1
    - value: 10.0.0.0/33
";

/// One `error:` line of `mailrelay check`: `FILE: OBJECT: FIELD: REASON`.
#[derive(Debug, PartialEq, Eq)]
struct Problem {
    file: String,
    object: String,
    field: String,
    reason: String,
}

fn problems(stderr: &str) -> Vec<Problem> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .filter_map(|l| {
            let (file, rest) = l.split_once(": ")?;
            let (object, rest) = rest.split_once(": ")?;
            let (field, reason) = rest.split_once(": ")?;
            let file = Path::new(file).file_name()?.to_string_lossy().into_owned();
            Some(Problem {
                file,
                object: object.into(),
                field: field.into(),
                reason: reason.into(),
            })
        })
        .collect()
}

fn check(files: &[(&str, &str)]) -> (Output, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write a manifest");
    }
    let out = Command::new(MAILRELAY)
        .arg("check")
        .arg("--manifests")
        .arg(dir.path())
        .output()
        .expect("run mailrelay check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn check_fails_on_broken_manifests_naming_file_object_field_and_reason() {
    let (out, text) = check(&[
        ("relay.yaml", RELAY),
        ("maildomain-broken.yaml", LMTP_WITHOUT_PORT),
        ("blocklist-broken.yaml", BAD_CIDR),
    ]);
    assert!(!out.status.success(), "check must fail:\n{text}");
    let found = problems(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(found.len(), 2, "{found:#?}\n{text}");

    let lmtp = found
        .iter()
        .find(|p| p.file == "maildomain-broken.yaml")
        .unwrap_or_else(|| panic!("no problem names maildomain-broken.yaml:\n{text}"));
    assert_eq!(lmtp.object, "MailDomain default/broken-lmtp");
    assert_eq!(lmtp.field, "spec.delivery.lmtp.port");
    assert!(lmtp.reason.contains("port"), "{lmtp:?}");

    let cidr = found
        .iter()
        .find(|p| p.file == "blocklist-broken.yaml")
        .unwrap_or_else(|| panic!("no problem names blocklist-broken.yaml:\n{text}"));
    assert_eq!(cidr.object, "Blocklist default/broken-ips");
    assert_eq!(cidr.field, "spec.ips[1].value");
    assert!(
        cidr.reason.contains("10.0.0.0/33") && cidr.reason.contains("32"),
        "{cidr:?}"
    );
}

#[test]
fn check_passes_the_same_relay_with_valid_manifests() {
    let (out, text) = check(&[("relay.yaml", RELAY), ("maildomain.yaml", GOOD_DOMAIN)]);
    assert!(out.status.success(), "check must pass:\n{text}");
    assert!(problems(&text).is_empty(), "{text}");
    assert!(text.contains("Relay test: 1 domains"), "{text}");
}
