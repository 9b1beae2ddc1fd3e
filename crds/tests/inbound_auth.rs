//! `spec.inboundAuth` of a MailDomain: its schema, and how it reaches the
//! compiled config the relay reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

use kube::CustomResourceExt;
use mailrelay_crds::compile::compile;
use mailrelay_crds::config::RelayConfig;
use mailrelay_crds::maildomain::InboundAuthPolicy;
use mailrelay_crds::{MailDomain, Relay};

fn relay() -> Relay {
    serde_saphyr::from_str(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {name: edge, namespace: mail}\nspec:\n  hostname: mx.example.com\n",
    )
    .expect("Relay parses")
}

fn domain(name: &str, extra: &str) -> MailDomain {
    serde_saphyr::from_str(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: {name}, namespace: mail}}\nspec:\n  domain: {name}.test\n  inbound: {{localParts: [alice]}}\n  delivery: {{lmtp: {{host: dovecot, port: 24}}}}\n{extra}"
    ))
    .expect("MailDomain parses")
}

#[test]
fn the_policy_defaults_to_enforce_and_reaches_the_compiled_config() {
    let domains = [
        domain("plain", ""),
        domain("tagging", "  inboundAuth: {policy: Tag}\n"),
        domain("open", "  inboundAuth: {policy: Accept}\n"),
        domain("strict", "  inboundAuth: {policy: Enforce}\n"),
    ];
    let compiled = compile(&relay(), &domains, &[]).expect("compiles");
    let got: Vec<(&str, InboundAuthPolicy)> = compiled
        .config
        .domains
        .iter()
        .map(|d| (d.name.as_str(), d.inbound_auth))
        .collect();
    assert_eq!(
        got,
        [
            ("open.test", InboundAuthPolicy::Accept),
            ("plain.test", InboundAuthPolicy::Enforce),
            ("strict.test", InboundAuthPolicy::Enforce),
            ("tagging.test", InboundAuthPolicy::Tag),
        ]
    );
    // The default is left out of the config JSON, and read back as Enforce.
    let json = serde_json::to_value(&compiled.config).expect("serialises");
    let fields: Vec<Option<&str>> = json["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .map(|d| d.get("inboundAuth").and_then(|v| v.as_str()))
        .collect();
    assert_eq!(fields, [Some("Accept"), None, None, Some("Tag")]);
    let back: RelayConfig = serde_json::from_value(json).expect("reads back");
    assert_eq!(back, compiled.config);
}

#[test]
fn an_unknown_policy_is_refused_by_the_schema_and_the_parser() {
    let crd = serde_json::to_value(MailDomain::crd()).expect("CRD serialises");
    let policy = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["inboundAuth"]["properties"]["policy"];
    assert_eq!(
        policy["enum"],
        serde_json::json!(["Accept", "Tag", "Enforce"]),
        "{policy}"
    );
    assert!(
        serde_saphyr::from_str::<MailDomain>(
            "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {name: x}\nspec:\n  domain: x.test\n  delivery: {lmtp: {host: d, port: 24}}\n  inboundAuth: {policy: Reject}\n"
        )
        .is_err()
    );
}
