//! Every CEL rule (`x-kubernetes-validations`) of the three CRDs, checked
//! offline with kube's CEL evaluator on a passing and a failing object.
//! The last test fails when a rule is added without a case here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

use std::collections::BTreeSet;

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use mailrelay_crds::{Blocklist, MailDomain, Relay};
use serde_json::{Value, json};

fn schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("derived CRD has a schema");
    serde_json::to_value(schema).expect("schema serialises")
}

fn valid_maildomain() -> Value {
    json!({
        "apiVersion": "mailrelay.io/v1alpha1", "kind": "MailDomain",
        "metadata": {"name": "example-com", "namespace": "mail"},
        "spec": {
            "domain": "example.com",
            "inbound": {"enabled": true, "catchAll": false, "localParts": ["alice"], "recipientDelimiter": "+"},
            "delivery": {"lmtp": {"host": "dovecot", "port": 24}},
            "dkim": {"selector": "mail2026", "algorithm": "rsa-sha256", "generate": false,
                     "privateKey": {"name": "dkim", "key": "private.pem"}},
            "arc": {"seal": true}
        }
    })
}

fn valid_relay() -> Value {
    json!({
        "apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay",
        "metadata": {"name": "edge", "namespace": "mail"},
        "spec": {
            "hostname": "mx.example.com",
            "listeners": [
                {"name": "smtp", "proxyProtocol": {"trustedNetworks": ["10.0.0.0/8"]}},
                {"name": "submission"}
            ],
            "tls": {"secretName": "mx-tls"},
            "trustedNetworks": ["10.0.0.0/8", "192.0.2.1"],
            "relayFromTrustedNetworks": true,
            "autoscaling": {"engine": "Hpa", "minReplicas": 2, "maxReplicas": 5, "targetCpuUtilization": 70},
            "limits": {
                "maxMessageSize": "25Mi", "maxRecipients": 100, "maxConnections": 100,
                "maxConnectionsPerIp": 10, "messagesPerMinutePerIp": 60, "maxAuthFailuresPerIp": 5,
                "timeouts": {"command": "5m", "data": "3m", "session": "30m"}
            },
            "queue": {"storage": {"size": "10Gi"}, "retrySchedule": ["5m", "1h"], "jitterPercent": 50,
                      "lifetime": "5d", "delayWarning": "4h"},
            "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "annotations": {}},
            "dns": {"timeout": "5s"},
            "delivery": {
                "shaping": {
                    "default": {"maxConnections": 10, "messageRate": "100/s", "connectionRate": "5/s", "idleTimeout": "30s"},
                    "destinations": [{"domains": ["slow.example"], "mxHosts": ["*.google.com"], "maxConnections": 5}]
                },
                "throttle": [
                    {"match": "(?i)try again later", "action": "Suspend", "duration": "15m"},
                    {"match": "TS0[1-4]", "action": "Slow", "duration": "1h", "messageRate": "1/m"}
                ]
            }
        }
    })
}

fn valid_blocklist() -> Value {
    json!({
        "apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist",
        "metadata": {"name": "abuse", "namespace": "mail"},
        "spec": {
            "action": "Reject",
            "message": "Blocked; contact abuse@example.com",
            "ips": [{"value": "192.0.2.1"}, {"value": "2001:db8::/32"}],
            "domains": [{"value": "spam.example"}, {"value": "*.bulk.example"}],
            "senders": [{"value": "offers@promo.example"}],
            "recipients": [{"value": "bob@example.net"}, {"value": "*@gone.example"}],
            "dnsbl": [{"zone": "bl.example", "returnCodes": ["127.0.0.2", "127.0.0.0/24"], "message": "listed"}]
        }
    })
}

/// One rule: a change to the valid object that must fail it, and one that
/// must still pass.
struct Case {
    /// The rule's text, exactly as in the CRD.
    rule: &'static str,
    /// JSON pointer and value making the object invalid.
    bad: (&'static str, Value),
    /// JSON pointer and value exercising the rule with a valid value.
    good: (&'static str, Value),
}

fn set(mut obj: Value, (pointer, value): &(&str, Value)) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = obj
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no parent {parent}"));
    match target {
        Value::Object(m) if value.is_null() => {
            m.remove(key);
        }
        Value::Object(m) => {
            m.insert(key.to_string(), value.clone());
        }
        Value::Array(a) => a[key.parse::<usize>().expect("index")] = value.clone(),
        other => panic!("cannot set {pointer} in {other}"),
    }
    obj
}

fn maildomain_cases() -> Vec<Case> {
    vec![
        Case {
            rule: "self.matches('^https?://[^/?#]+')",
            bad: (
                "/spec/events",
                json!({"webhook": {"url": "ftp://hooks.test/e", "secret": {"name": "hook", "key": "key"}}}),
            ),
            good: (
                "/spec/events",
                json!({"webhook": {"url": "https://hooks.test:8443/e", "secret": {"name": "hook", "key": "key"}}}),
            ),
        },
        Case {
            rule: "self.matches('^([0-9]+(ms|s|m|h|d))+$')",
            bad: (
                "/spec/events",
                json!({"webhook": {"url": "http://hooks.test/e", "secret": {"name": "hook", "key": "key"}, "batchWindow": "soon"}}),
            ),
            good: (
                "/spec/events",
                json!({"webhook": {"url": "http://hooks.test/e", "secret": {"name": "hook", "key": "key"}, "batchWindow": "250ms"}}),
            ),
        },
        Case {
            rule: "!self.contains('@') && !self.startsWith('*') && !self.contains(' ')",
            bad: ("/spec/domain", json!("user@example.com")),
            good: ("/spec/domain", json!("bücher.example")),
        },
        Case {
            rule: "!self.enabled || self.catchAll || size(self.localParts) > 0",
            bad: ("/spec/inbound/localParts", json!([])),
            good: (
                "/spec/inbound",
                json!({"enabled": true, "catchAll": true, "localParts": [], "recipientDelimiter": ""}),
            ),
        },
        Case {
            rule: "[has(self.lmtp), has(self.smtp), has(self.maildir)].filter(x, x).size() == 1",
            bad: ("/spec/delivery/maildir", json!({"path": "/var/mail"})),
            good: ("/spec/delivery", json!({"maildir": {"path": "/var/mail"}})),
        },
        Case {
            rule: "has(self.port)",
            bad: ("/spec/delivery/lmtp", json!({"host": "dovecot"})),
            good: (
                "/spec/delivery/lmtp",
                json!({"host": "dovecot", "port": 2424}),
            ),
        },
        Case {
            rule: "self.startsWith('/')",
            bad: ("/spec/delivery", json!({"maildir": {"path": "var/mail"}})),
            good: ("/spec/delivery", json!({"maildir": {"path": "/var/mail"}})),
        },
        Case {
            rule: "self.matches('^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$')",
            bad: ("/spec/dkim/selector", json!("mail.2026")),
            good: ("/spec/dkim/selector", json!("s1")),
        },
        Case {
            rule: "!has(self.arc) || !has(self.arc.seal) || !self.arc.seal || has(self.dkim)",
            bad: ("/spec/dkim", json!(null)),
            good: ("/spec/arc", json!({"seal": true})),
        },
        Case {
            rule: "!has(self.arc) || !has(self.arc.seal) || !self.arc.seal || !has(self.inboundAuth) || !has(self.inboundAuth.policy) || self.inboundAuth.policy != 'Accept'",
            bad: ("/spec/inboundAuth", json!({"policy": "Accept"})),
            good: ("/spec/inboundAuth", json!({"policy": "Tag"})),
        },
        Case {
            rule: SMARTHOST_TLS_RULE,
            bad: ("/spec/outbound", json!({"smarthost": smarthost("None")})),
            good: (
                "/spec/outbound",
                json!({"smarthost": smarthost("Implicit")}),
            ),
        },
    ]
}

const SMARTHOST_TLS_RULE: &str = "!has(self.credentials) || !has(self.tls) || self.tls != 'None'";

/// A smarthost with credentials and TLS use `tls`.
fn smarthost(tls: &str) -> Value {
    json!({
        "host": "smtp.provider.example", "port": 465, "tls": tls,
        "credentials": {"username": {"name": "auth", "key": "username"},
                        "password": {"name": "auth", "key": "password"}}
    })
}

const DURATION_RULE: &str = "self.matches('^([0-9]+(ms|s|m|h|d))+$')";
const SIZE_RULE: &str = "self.matches('^[0-9]+(k|M|G|Ki|Mi|Gi)?$')";

fn relay_cases() -> Vec<Case> {
    vec![
        Case {
            rule: "self.matches('^[1-9][0-9]{0,5}/(s|m|h)$')",
            bad: ("/spec/delivery/shaping/default/messageRate", json!("20/d")),
            good: ("/spec/delivery/shaping/default/messageRate", json!("50/m")),
        },
        Case {
            rule: "self.matches('^[1-9][0-9]{0,5}/(s|m|h)$')",
            bad: (
                "/spec/delivery/shaping/default/connectionRate",
                json!("0/s"),
            ),
            good: (
                "/spec/delivery/shaping/default/connectionRate",
                json!("1/h"),
            ),
        },
        Case {
            rule: "self.matches('^[1-9][0-9]{0,5}/(s|m|h)$')",
            bad: ("/spec/delivery/throttle/1/messageRate", json!("1.5/m")),
            good: ("/spec/delivery/throttle/1/messageRate", json!("30/h")),
        },
        Case {
            rule: "self.all(d, !d.contains('@') && !d.contains(' ') && (!d.contains('*') || (d.startsWith('*.') && d.lastIndexOf('*') == 0)))",
            bad: (
                "/spec/delivery/shaping/destinations/0/domains",
                json!(["a@b.example"]),
            ),
            good: (
                "/spec/delivery/shaping/destinations/0/domains",
                json!(["*.corp.example"]),
            ),
        },
        Case {
            rule: "self.all(d, !d.contains('@') && !d.contains(' ') && (!d.contains('*') || (d.startsWith('*.') && d.lastIndexOf('*') == 0)))",
            bad: (
                "/spec/delivery/shaping/destinations/0/mxHosts",
                json!(["mx.*.example"]),
            ),
            good: (
                "/spec/delivery/shaping/destinations/0/mxHosts",
                json!(["mx1.example"]),
            ),
        },
        Case {
            rule: "(has(self.domains) && size(self.domains) > 0) || (has(self.mxHosts) && size(self.mxHosts) > 0)",
            bad: (
                "/spec/delivery/shaping/destinations/0",
                json!({"maxConnections": 5}),
            ),
            good: (
                "/spec/delivery/shaping/destinations/0",
                json!({"mxHosts": ["mx.example"], "messageRate": "1/s"}),
            ),
        },
        Case {
            rule: "self.action != 'Slow' || has(self.messageRate)",
            bad: ("/spec/delivery/throttle/1/messageRate", Value::Null),
            good: ("/spec/delivery/throttle/1/messageRate", json!("2/h")),
        },
        Case {
            rule: "self.action == 'Slow' || !has(self.messageRate)",
            bad: ("/spec/delivery/throttle/0/messageRate", json!("1/m")),
            good: ("/spec/delivery/throttle/0/duration", json!("1m")),
        },
        Case {
            rule: SMARTHOST_TLS_RULE,
            bad: ("/spec/smarthost", smarthost("None")),
            good: ("/spec/smarthost", smarthost("Required")),
        },
        Case {
            rule: "self.matches('^https?://[^/?#]+')",
            bad: (
                "/spec/events",
                json!({"webhooks": [{"url": "mailto:ops@x.test", "secret": {"name": "hook", "key": "key"}}]}),
            ),
            good: (
                "/spec/events",
                json!({"webhooks": [{"url": "http://10.0.0.5:8080/", "secret": {"name": "hook", "key": "key"}}]}),
            ),
        },
        Case {
            rule: "self.all(w, self.exists_one(v, v.url == w.url))",
            bad: (
                "/spec/events",
                json!({"webhooks": [
                    {"url": "http://hooks.test/e", "secret": {"name": "a", "key": "key"}},
                    {"url": "http://hooks.test/e", "secret": {"name": "b", "key": "key"}},
                ]}),
            ),
            good: (
                "/spec/events",
                json!({"webhooks": [
                    {"url": "http://hooks.test/e", "secret": {"name": "a", "key": "key"}},
                    {"url": "http://hooks.test/f", "secret": {"name": "b", "key": "key"}},
                ]}),
            ),
        },
        Case {
            rule: "self.listeners.all(l, l.name == 'smtp') || has(self.tls)",
            bad: ("/spec/tls", Value::Null),
            good: ("/spec/listeners", json!([{"name": "smtp"}])),
        },
        Case {
            rule: "!self.relayFromTrustedNetworks || (has(self.trustedNetworks) && size(self.trustedNetworks) > 0)",
            bad: ("/spec/trustedNetworks", Value::Null),
            good: ("/spec/trustedNetworks", json!(["10.0.0.0/8"])),
        },
        Case {
            rule: "self.matches('^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$')",
            bad: ("/spec/hostname", json!("mx example com")),
            good: ("/spec/hostname", json!("relay-1.mail.example.org")),
        },
        Case {
            rule: "self.all(l, self.exists_one(m, m.name == l.name))",
            bad: (
                "/spec/listeners",
                json!([{"name": "smtp"}, {"name": "smtp"}]),
            ),
            good: (
                "/spec/listeners",
                json!([{"name": "smtp"}, {"name": "submissions"}]),
            ),
        },
        Case {
            rule: "self.all(n, isCIDR(n) || isIP(n))",
            bad: ("/spec/trustedNetworks", json!(["10.0.0.0/33"])),
            good: (
                "/spec/trustedNetworks",
                json!(["2001:db8::/32", "10.1.2.3"]),
            ),
        },
        Case {
            rule: "self.all(n, isCIDR(n) || isIP(n))",
            bad: (
                "/spec/listeners/0/proxyProtocol",
                json!({"trustedNetworks": ["lb.example"]}),
            ),
            good: (
                "/spec/listeners/0/proxyProtocol",
                json!({"trustedNetworks": ["fd00::/8"]}),
            ),
        },
        Case {
            rule: "self.minReplicas <= self.maxReplicas",
            bad: ("/spec/autoscaling/minReplicas", json!(6)),
            good: ("/spec/autoscaling/minReplicas", json!(5)),
        },
        Case {
            rule: SIZE_RULE,
            bad: ("/spec/limits/maxMessageSize", json!("25MB")),
            good: ("/spec/limits/maxMessageSize", json!("10485760")),
        },
        Case {
            rule: SIZE_RULE,
            bad: ("/spec/queue/storage/size", json!("10 Gi")),
            good: ("/spec/queue/storage/size", json!("500Mi")),
        },
        Case {
            rule: DURATION_RULE,
            bad: ("/spec/limits/timeouts/command", json!("5 minutes")),
            good: ("/spec/limits/timeouts/command", json!("10m")),
        },
        Case {
            rule: DURATION_RULE,
            bad: ("/spec/limits/timeouts/data", json!("3")),
            good: ("/spec/limits/timeouts/data", json!("2m30s")),
        },
        Case {
            rule: DURATION_RULE,
            bad: ("/spec/limits/timeouts/session", json!("1h-")),
            good: ("/spec/limits/timeouts/session", json!("1h")),
        },
        Case {
            rule: DURATION_RULE,
            bad: ("/spec/queue/lifetime", json!("five days")),
            good: ("/spec/queue/lifetime", json!("4d12h")),
        },
        Case {
            rule: DURATION_RULE,
            bad: ("/spec/queue/delayWarning", json!("")),
            good: ("/spec/queue/delayWarning", json!("0s")),
        },
        Case {
            rule: DURATION_RULE,
            bad: ("/spec/dns/timeout", json!("5 s")),
            good: ("/spec/dns/timeout", json!("1500ms")),
        },
        Case {
            rule: "self.all(d, d.matches('^([0-9]+(ms|s|m|h|d))+$'))",
            bad: ("/spec/queue/retrySchedule", json!(["5m", "soon"])),
            good: ("/spec/queue/retrySchedule", json!(["1m", "1h30m"])),
        },
        Case {
            rule: "!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'",
            bad: ("/spec/service/type", json!("ClusterIP")),
            good: ("/spec/service/type", json!("NodePort")),
        },
    ]
}

fn blocklist_cases() -> Vec<Case> {
    vec![
        Case {
            rule: "self.matches('^[ -~]*$')",
            bad: ("/spec/message", json!("blocked\r\n250 OK")),
            good: (
                "/spec/message",
                json!("Blocked, see https://example.com/why"),
            ),
        },
        Case {
            rule: "self.matches('^[ -~]*$')",
            bad: ("/spec/dnsbl/0/message", json!("listed\n")),
            good: ("/spec/dnsbl/0/message", json!("Listed at bl.example")),
        },
        Case {
            rule: "self.all(e, isIP(e.value) || isCIDR(e.value))",
            bad: ("/spec/ips/1", json!({"value": "2001:db8::/129"})),
            good: (
                "/spec/ips/1",
                json!({"value": "198.51.100.0/24", "expires": "2027-01-01T00:00:00Z"}),
            ),
        },
        Case {
            rule: "self.all(e, !e.value.contains('@') && !e.value.contains(' ') && (!e.value.contains('*') || (e.value.startsWith('*.') && e.value.lastIndexOf('*') == 0)))",
            bad: ("/spec/domains/1", json!({"value": "bulk.*.example"})),
            good: ("/spec/domains/1", json!({"value": "*.bulk.example"})),
        },
        Case {
            rule: "self.all(e, e.value.contains('@'))",
            bad: ("/spec/senders/0", json!({"value": "promo.example"})),
            good: ("/spec/senders/0", json!({"value": "Sales@Promo.Example"})),
        },
        Case {
            rule: "self.all(e, e.value.contains('@') || e.value.startsWith('*.'))",
            bad: ("/spec/recipients/1", json!({"value": "gone.example"})),
            good: ("/spec/recipients/1", json!({"value": "*.gone.example"})),
        },
        Case {
            rule: "self.all(c, isIP(c) || isCIDR(c))",
            bad: ("/spec/dnsbl/0/returnCodes", json!(["127.0.0.256"])),
            good: ("/spec/dnsbl/0/returnCodes", json!(["127.0.0.2/31"])),
        },
    ]
}

fn run_cases(kind: &str, schema: &Value, base: Value, cases: &[Case]) -> BTreeSet<String> {
    let validator = Validator::new();
    if let Err(e) = validator.validate(schema, &base, None) {
        panic!("{kind}: the valid object fails: {e:?}");
    }
    let mut covered = BTreeSet::new();
    for case in cases {
        let good = set(base.clone(), &case.good);
        if let Err(e) = validator.validate(schema, &good, None) {
            panic!(
                "{kind} rule {:?}: valid change {:?} fails: {e:?}",
                case.rule, case.good
            );
        }
        let bad = set(base.clone(), &case.bad);
        let errors = validator.validate(schema, &bad, None).expect_err(&format!(
            "{kind} rule {:?}: invalid change {:?} passes",
            case.rule, case.bad
        ));
        assert!(
            errors.iter().any(|e| e.rule == case.rule),
            "{kind}: invalid change {:?} failed other rules than {:?}: {errors:?}",
            case.bad,
            case.rule
        );
        for e in errors.iter() {
            assert!(
                !e.message.is_empty(),
                "{kind}: rule {:?} has no message",
                e.rule
            );
        }
        covered.insert(format!("{kind}: {}", case.rule));
    }
    covered
}

#[test]
fn maildomain_rules_accept_valid_and_refuse_invalid_objects() {
    run_cases(
        "MailDomain",
        &schema::<MailDomain>(),
        valid_maildomain(),
        &maildomain_cases(),
    );
}

#[test]
fn relay_rules_accept_valid_and_refuse_invalid_objects() {
    run_cases("Relay", &schema::<Relay>(), valid_relay(), &relay_cases());
}

#[test]
fn blocklist_rules_accept_valid_and_refuse_invalid_objects() {
    run_cases(
        "Blocklist",
        &schema::<Blocklist>(),
        valid_blocklist(),
        &blocklist_cases(),
    );
}

#[test]
fn failing_rule_reports_the_field_path_and_message() {
    let bad = set(
        valid_maildomain(),
        &("/spec/delivery/lmtp", json!({"host": "dovecot"})),
    );
    let errors = Validator::new()
        .validate(&schema::<MailDomain>(), &bad, None)
        .expect_err("lmtp without a port");
    let e = &errors[0];
    assert_eq!(e.field_path, "spec.delivery.lmtp.port");
    assert!(e.message.contains("LMTP has no well-known port"), "{e:?}");
}

#[test]
fn typed_objects_validate_through_the_derived_method() {
    let md: MailDomain = serde_json::from_value(valid_maildomain()).expect("typed");
    assert!(md.validate_cel().is_ok());
    let mut broken = md.clone();
    broken.spec.delivery.lmtp = None;
    assert!(
        broken.validate_cel().is_err(),
        "no delivery target must fail"
    );
}

fn rules_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                out.extend(
                    rules
                        .iter()
                        .filter_map(|r| r["rule"].as_str().map(String::from)),
                );
            }
            m.values().for_each(|v| rules_in(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| rules_in(v, out)),
        _ => {}
    }
}

#[test]
fn every_rule_in_the_crds_has_a_case() {
    let mut in_crds = BTreeSet::new();
    for (kind, schema) in [
        ("MailDomain", schema::<MailDomain>()),
        ("Relay", schema::<Relay>()),
        ("Blocklist", schema::<Blocklist>()),
    ] {
        let mut rules = Vec::new();
        rules_in(&schema, &mut rules);
        in_crds.extend(rules.into_iter().map(|r| format!("{kind}: {r}")));
    }
    let mut covered = BTreeSet::new();
    covered.extend(run_cases(
        "MailDomain",
        &schema::<MailDomain>(),
        valid_maildomain(),
        &maildomain_cases(),
    ));
    covered.extend(run_cases(
        "Relay",
        &schema::<Relay>(),
        valid_relay(),
        &relay_cases(),
    ));
    covered.extend(run_cases(
        "Blocklist",
        &schema::<Blocklist>(),
        valid_blocklist(),
        &blocklist_cases(),
    ));
    let missing: Vec<_> = in_crds.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "CEL rules without a test case: {missing:#?}"
    );
    assert!(
        in_crds.len() >= 20,
        "expected the CRDs to carry their rules, found {}",
        in_crds.len()
    );
}
