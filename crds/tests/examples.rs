//! The manifests in crds/examples/ — the try-out and the test input —
//! read, pass admission (CEL) and compile without a single problem.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

use std::path::Path;

use mailrelay_crds::config::DeliveryConfig;
use mailrelay_crds::manifests::load_dir;
use mailrelay_crds::{RelayConfig, compile};

fn examples() -> mailrelay_crds::manifests::Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    load_dir(&dir).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

#[test]
fn every_example_reads_into_the_typed_structs() {
    let m = examples();
    assert_eq!(m.relays.len(), 1);
    assert_eq!(m.domains.len(), 2);
    assert_eq!(m.blocklists.len(), 2);
    assert!(m.ignored.is_empty(), "unexpected kinds: {:?}", m.ignored);
    assert_eq!(m.secrets.len(), 1);
}

#[test]
fn every_example_passes_the_crd_validation_rules() {
    let m = examples();
    for r in &m.relays {
        r.object
            .validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e:?}", r.source));
    }
    for d in &m.domains {
        d.object
            .validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e:?}", d.source));
    }
    for b in &m.blocklists {
        b.object
            .validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e:?}", b.source));
    }
}

fn compiled() -> RelayConfig {
    let m = examples();
    let out = compile(
        &m.relays[0].object,
        &m.domain_objects(),
        &m.blocklist_objects(),
    )
    .unwrap_or_else(|p| panic!("the example Relay does not compile: {p:#?}"));
    assert!(out.problems.is_empty(), "problems: {:#?}", out.problems);
    out.config
}

#[test]
fn examples_compile_with_no_problems() {
    let config = compiled();
    assert_eq!(config.relay.to_string(), "Relay default/edge");
    assert_eq!(config.hostname, "mx.example.com");
    let names: Vec<_> = config.domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["example.com", "shop.example.org"]);
    assert_eq!(config.domains[1].aliases, ["xn--bcher-kva.example.org"]);
    assert_eq!(
        config.domains[0].delivery,
        DeliveryConfig::Lmtp {
            host: "dovecot.mail.svc.cluster.local".into(),
            port: 24
        }
    );
    assert!(matches!(
        config.domains[1].delivery,
        DeliveryConfig::Maildir { .. }
    ));
    let listeners: Vec<_> = config
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address.port(), l.service_port))
        .collect();
    assert_eq!(
        listeners,
        [
            ("smtp", 2525, 25),
            ("submission", 5870, 587),
            ("submissions", 4650, 465)
        ]
    );
    // Both Blocklists are selected (scope global and edge).
    assert_eq!(config.policy.rules.len(), 2);
    assert_eq!(config.policy.ips.len(), 4);
    assert_eq!(config.policy.dnsbl[0].zone, "zen.spamhaus.org");
    assert_eq!(
        config.queue.retry_schedule_secs,
        [300, 600, 900, 1800, 7200]
    );
    assert_eq!(
        config
            .scaling
            .autoscaling
            .as_ref()
            .map(|a| (a.min_replicas, a.max_replicas)),
        Some((2, 10))
    );
}

#[test]
fn compiled_examples_survive_a_json_round_trip() {
    let config = compiled();
    let json = config.to_json().expect("serialises");
    assert_eq!(RelayConfig::from_json(&json).expect("loads"), config);
    let newer = json.replacen("\"version\":1", "\"version\":2", 1);
    let err = RelayConfig::from_json(&newer).expect_err("version 2");
    assert!(
        err.to_string().contains("version 2 is not supported"),
        "{err}"
    );
}
