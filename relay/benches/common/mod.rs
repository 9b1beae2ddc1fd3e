//! Inputs shared by the benchmarks: Relay, MailDomain and Blocklist
//! objects as a user would write them, made in bulk.

#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use mailrelay_crds::blocklist::Entry;
use mailrelay_crds::{Blocklist, MailDomain, Relay};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub fn relay() -> Relay {
    serde_json::from_value(json!({
        "apiVersion": "mailrelay.io/v1alpha1",
        "kind": "Relay",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {"hostname": "mx.bench.test"}
    }))
    .unwrap_or_else(|e| panic!("bench Relay: {e}"))
}

pub fn domains(n: usize) -> Vec<MailDomain> {
    (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "mailrelay.io/v1alpha1",
                "kind": "MailDomain",
                "metadata": {"name": format!("d{i}"), "namespace": "bench"},
                "spec": {
                    "domain": format!("d{i}.example"),
                    "aliases": [format!("alias{i}.example")],
                    "inbound": {"localParts": ["alice", "bob"]},
                    "delivery": {"lmtp": {"host": "dovecot", "port": 24}}
                }
            }))
            .unwrap_or_else(|e| panic!("bench MailDomain: {e}"))
        })
        .collect()
}

fn entry(value: String) -> Entry {
    Entry {
        value,
        expires: None,
        comment: None,
    }
}

/// Half IPv4 networks (/16 to /32), half IPv6 (/32 to /128), seeded.
pub fn cidrs(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let len = rng.random_range(16..=32u8);
                let ip = Ipv4Addr::from(rng.random::<u32>() & (u32::MAX << (32 - len)));
                format!("{ip}/{len}")
            } else {
                let len = rng.random_range(32..=128u8);
                let bits = rng.random::<u128>() & (u128::MAX << (128 - u32::from(len)));
                format!("{}/{len}", Ipv6Addr::from(bits))
            }
        })
        .collect()
}

/// Names `hN.example` under a few parents; every third a `*.` wildcard.
pub fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                format!("*.w{i}.example")
            } else {
                format!("h{i}.p{}.example", i % 97)
            }
        })
        .collect()
}

pub fn blocklist(ips: Vec<String>, domains: Vec<String>) -> Blocklist {
    let mut b: Blocklist = serde_json::from_value(json!({
        "apiVersion": "mailrelay.io/v1alpha1",
        "kind": "Blocklist",
        "metadata": {"name": "big", "namespace": "bench"},
        "spec": {"action": "Reject"}
    }))
    .unwrap_or_else(|e| panic!("bench Blocklist: {e}"));
    b.spec.ips = ips.into_iter().map(entry).collect();
    b.spec.domains = domains.into_iter().map(entry).collect();
    b
}
