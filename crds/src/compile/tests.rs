use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

use super::*;
use crate::blocklist::{BlockAction, Entry};
use crate::config::DeliveryConfig;

fn relay(yaml: &str) -> Relay {
    serde_saphyr::from_str(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {{name: edge, namespace: mail}}\nspec:\n{yaml}"
    ))
    .expect("test Relay parses")
}

fn plain_relay() -> Relay {
    relay("  hostname: mx.example.com\n")
}

fn domain(name: &str, spec: &str) -> MailDomain {
    serde_saphyr::from_str(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: {name}, namespace: mail}}\nspec:\n{spec}"
    ))
    .expect("test MailDomain parses")
}

fn lmtp_domain(name: &str, domain_name: &str) -> MailDomain {
    domain(
        name,
        &format!(
            "  domain: {domain_name:?}\n  inbound: {{localParts: [alice]}}\n  delivery: {{lmtp: {{host: dovecot, port: 24}}}}\n"
        ),
    )
}

fn blocklist(name: &str, spec: &str) -> Blocklist {
    serde_saphyr::from_str(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {{name: {name}, namespace: mail}}\nspec:\n{spec}"
    ))
    .expect("test Blocklist parses")
}

trait Fluent: Resource + Sized {
    fn labelled(mut self, key: &str, value: &str) -> Self {
        self.meta_mut()
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }
    fn created(mut self, rfc3339: &str) -> Self {
        self.meta_mut().creation_timestamp = Some(Time(rfc3339.parse().expect("timestamp")));
        self
    }
    fn in_namespace(mut self, ns: &str) -> Self {
        self.meta_mut().namespace = Some(ns.into());
        self
    }
    fn deleting(mut self) -> Self {
        self.meta_mut().deletion_timestamp =
            Some(Time("2026-01-01T00:00:00Z".parse().expect("ts")));
        self
    }
}
impl Fluent for MailDomain {}
impl Fluent for Blocklist {}

fn ok(relay: &Relay, domains: &[MailDomain], blocklists: &[Blocklist]) -> Compiled {
    compile(relay, domains, blocklists).unwrap_or_else(|p| panic!("relay problems: {p:#?}"))
}

fn names(c: &Compiled) -> Vec<&str> {
    c.config.domains.iter().map(|d| d.name.as_str()).collect()
}

// --- selectors ---

#[test]
fn absent_selectors_take_every_object_of_the_relays_namespace() {
    let c = ok(
        &plain_relay(),
        &[
            lmtp_domain("a", "a.example"),
            lmtp_domain("b", "b.example").in_namespace("other"),
            lmtp_domain("c", "c.example").deleting(),
        ],
        &[blocklist("x", "  senders: [{value: a@x.example}]\n").in_namespace("other")],
    );
    assert_eq!(names(&c), ["a.example"]);
    assert!(c.config.policy.senders.is_empty());
}

#[test]
fn match_labels_and_match_expressions_select_domains_and_blocklists() {
    let r = relay(
        "  hostname: mx.example.com\n  domainSelector:\n    matchLabels: {relay: edge}\n    matchExpressions:\n      - {key: tier, operator: NotIn, values: [test]}\n  blocklistSelector:\n    matchExpressions:\n      - {key: scope, operator: In, values: [global, edge]}\n",
    );
    let c = ok(
        &r,
        &[
            lmtp_domain("a", "a.example").labelled("relay", "edge"),
            lmtp_domain("b", "b.example")
                .labelled("relay", "edge")
                .labelled("tier", "test"),
            lmtp_domain("c", "c.example").labelled("relay", "other"),
            lmtp_domain("d", "d.example"),
        ],
        &[
            blocklist("g", "  senders: [{value: g@x.example}]\n").labelled("scope", "global"),
            blocklist("e", "  senders: [{value: e@x.example}]\n").labelled("scope", "edge"),
            blocklist("n", "  senders: [{value: n@x.example}]\n"),
        ],
    );
    assert_eq!(names(&c), ["a.example"]);
    let senders: Vec<_> = c
        .config
        .policy
        .senders
        .iter()
        .map(|s| s.address.as_str())
        .collect();
    assert_eq!(senders, ["e@x.example", "g@x.example"]);
}

#[test]
fn a_malformed_selector_is_a_relay_problem() {
    let r = relay(
        "  hostname: mx.example.com\n  domainSelector:\n    matchExpressions:\n      - {key: a, operator: Equals, values: [b]}\n",
    );
    let problems = compile(&r, &[], &[]).expect_err("bad operator");
    assert_eq!(
        problems[0].field,
        "spec.domainSelector.matchExpressions[0].operator"
    );
    assert_eq!(problems[0].object.to_string(), "Relay mail/edge");
}

// --- normalisation ---

#[test]
fn domains_are_lower_case_a_labels_without_trailing_dot() {
    let d = domain(
        "shop",
        "  domain: Bücher.Example.\n  aliases: [EXAMPLE.NET., bücher.example, xn--bcher-kva.example]\n  inbound: {localParts: [Alice, ALICE, bob]}\n  delivery: {maildir: {path: /var/mail}}\n",
    );
    let c = ok(&plain_relay(), &[d], &[]);
    let dc = &c.config.domains[0];
    assert_eq!(dc.name, "xn--bcher-kva.example");
    // The alias equal to the domain itself and the duplicate are dropped.
    assert_eq!(dc.aliases, ["example.net"]);
    assert_eq!(dc.inbound.local_parts, ["alice", "bob"]);
    assert_eq!(dc.inbound.recipient_delimiter, Some('+'));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
}

#[test]
fn networks_are_canonical_and_deduplicated_v4_and_v6() {
    let bl = blocklist(
        "nets",
        "  ips:\n    - {value: 198.51.100.77/24}\n    - {value: 198.51.100.0/24}\n    - {value: 192.0.2.7}\n    - {value: '::ffff:192.0.2.7'}\n    - {value: '2001:DB8:0:0:1::/32'}\n    - {value: '2001:db8::/32'}\n    - {value: '2001:db8::1'}\n",
    );
    let c = ok(&plain_relay(), &[], &[bl]);
    let nets: Vec<String> = c
        .config
        .policy
        .ips
        .iter()
        .map(|b| b.net.to_string())
        .collect();
    assert_eq!(
        nets,
        [
            "192.0.2.7/32",
            "198.51.100.0/24",
            "2001:db8::/32",
            "2001:db8::1/128"
        ]
    );
}

#[test]
fn wildcard_and_exact_domains_are_kept_apart() {
    let bl = blocklist(
        "names",
        "  domains:\n    - {value: '*.Bulk.Example'}\n    - {value: bulk.example}\n    - {value: '*.bulk.example.'}\n    - {value: 'spam.bücher.example'}\n",
    );
    let c = ok(&plain_relay(), &[], &[bl]);
    let got: Vec<(&str, bool)> = c
        .config
        .policy
        .domains
        .iter()
        .map(|d| (d.name.as_str(), d.wildcard))
        .collect();
    assert_eq!(
        got,
        [
            ("bulk.example", false),
            ("bulk.example", true),
            ("spam.xn--bcher-kva.example", false)
        ]
    );
}

#[test]
fn duplicates_across_blocklists_keep_the_stricter_rule_first() {
    let soft = blocklist(
        "a-soft",
        "  action: TempFail\n  senders: [{value: X@Spam.example}]\n",
    );
    let hard = blocklist(
        "z-hard",
        "  action: Reject\n  senders: [{value: x@spam.example}, {value: x@SPAM.example}]\n",
    );
    let c = ok(&plain_relay(), &[], &[soft, hard]);
    let p = &c.config.policy;
    assert_eq!(p.rules[0].action, BlockAction::Reject);
    assert_eq!(p.rules[0].source.name, "z-hard");
    let senders: Vec<(&str, u32)> = p
        .senders
        .iter()
        .map(|s| (s.address.as_str(), s.rule))
        .collect();
    assert_eq!(senders, [("x@spam.example", 0), ("x@spam.example", 1)]);
}

#[test]
fn the_same_entry_twice_lasts_as_long_as_the_longer_listing() {
    let mut bl = blocklist(
        "t",
        "  ips: [{value: 192.0.2.1}, {value: 192.0.2.1}, {value: 192.0.2.2}, {value: 192.0.2.2}]\n",
    );
    let at = |s: &str| Some(Time(s.parse().expect("ts")));
    bl.spec.ips[0].expires = at("2027-01-01T00:00:00Z");
    bl.spec.ips[1].expires = at("2027-06-01T00:00:00Z");
    bl.spec.ips[2].expires = at("2027-01-01T00:00:00Z");
    let c = ok(&plain_relay(), &[], &[bl]);
    let ips = &c.config.policy.ips;
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0].expires, Some(1_811_808_000)); // 2027-06-01
    assert_eq!(ips[1].expires, None);
}

#[test]
fn dnsbl_zones_get_default_return_codes() {
    let bl = blocklist(
        "d",
        "  dnsbl: [{zone: ZEN.Example.}, {zone: bl.example, returnCodes: [127.0.0.2, 127.0.0.2/32]}]\n",
    );
    let c = ok(&plain_relay(), &[], &[bl]);
    let z: Vec<(String, Vec<String>)> = c
        .config
        .policy
        .dnsbl
        .iter()
        .map(|z| {
            (
                z.zone.clone(),
                z.return_codes.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        z,
        [
            ("bl.example".to_string(), vec!["127.0.0.2/32".to_string()]),
            ("zen.example".to_string(), vec!["127.0.0.0/24".to_string()])
        ]
    );
}

// --- conflicts ---

#[test]
fn two_maildomains_claiming_a_domain_the_older_wins() {
    let old = lmtp_domain("first", "example.com").created("2026-01-01T00:00:00Z");
    let new = lmtp_domain("second", "Example.COM").created("2026-02-01T00:00:00Z");
    for order in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
        let c = ok(&plain_relay(), &order, &[]);
        assert_eq!(c.config.domains.len(), 1);
        assert_eq!(c.config.domains[0].source.name, "first");
        assert_eq!(c.problems.len(), 1);
        let p = &c.problems[0];
        assert_eq!(p.object.to_string(), "MailDomain mail/second");
        assert_eq!(p.field, "spec.domain");
        assert!(
            p.message
                .contains("already served by MailDomain mail/first"),
            "{p}"
        );
    }
}

#[test]
fn an_alias_claimed_by_an_older_domain_is_dropped_alone() {
    let old = lmtp_domain("first", "example.com").created("2026-01-01T00:00:00Z");
    let mut new = lmtp_domain("second", "example.org").created("2026-02-01T00:00:00Z");
    new.spec.aliases = vec!["example.net".into(), "EXAMPLE.COM".into()];
    let c = ok(&plain_relay(), &[new, old], &[]);
    assert_eq!(names(&c), ["example.com", "example.org"]);
    assert_eq!(c.config.domains[1].aliases, ["example.net"]);
    assert_eq!(c.problems.len(), 1);
    assert_eq!(c.problems[0].field, "spec.aliases[1]");
}

#[test]
fn without_timestamps_the_name_decides() {
    let c = ok(
        &plain_relay(),
        &[lmtp_domain("b", "x.example"), lmtp_domain("a", "x.example")],
        &[],
    );
    assert_eq!(c.config.domains[0].source.name, "a");
}

#[test]
fn suppressed_recipients_compile_to_addresses_and_domains_and_count() {
    let bl = blocklist(
        "stop",
        "  recipients: [{value: Bob@Example.NET}, {value: '*@Gone.Example.'}, {value: '*.old.example'}, {value: 'bob@example.net'}, {value: nobody}, {value: '*@a..b'}]\n",
    );
    let c = ok(&plain_relay(), &[], std::slice::from_ref(&bl));
    let p = &c.config.policy;
    let addresses: Vec<&str> = p.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(addresses, ["bob@example.net"], "once, lower case");
    let domains: Vec<(&str, bool)> = p
        .recipient_domains
        .iter()
        .map(|d| (d.name.as_str(), d.wildcard))
        .collect();
    assert_eq!(domains, [("gone.example", false), ("old.example", true)]);
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.recipients[4].value", "spec.recipients[5].value"],
        "{:?}",
        c.problems
    );
    let (entries, problems) = crate::compile::check_blocklist(&bl);
    assert_eq!((entries, problems.len()), (3, 2), "the status counts them");
}

// --- problems ---

#[test]
fn bad_entries_are_reported_by_object_field_and_reason_and_left_out() {
    let bl = blocklist(
        "bad",
        "  message: \"no\\r\\n250 ok\"\n  ips: [{value: 10.0.0.0/8}, {value: 10.0.0.0/33}]\n  domains: [{value: 'a..b'}]\n  senders: [{value: nobody}]\n  dnsbl: [{zone: bl.example, returnCodes: [localhost]}]\n",
    );
    let c = ok(&plain_relay(), &[], &[bl]);
    let got: Vec<String> = c.problems.iter().map(ToString::to_string).collect();
    let want_prefixes = [
        "Blocklist mail/bad: spec.dnsbl[0].returnCodes[0]: \"localhost\" is not an IP",
        "Blocklist mail/bad: spec.domains[0].value: \"a..b\" has an empty label",
        "Blocklist mail/bad: spec.ips[1].value: \"10.0.0.0/33\": prefix length \"33\" is not a number from 0 to 32",
        "Blocklist mail/bad: spec.message: contains '\\r'",
        "Blocklist mail/bad: spec.senders[0].value: \"nobody\" is not an address",
    ];
    assert_eq!(got.len(), want_prefixes.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want_prefixes) {
        assert!(g.starts_with(w), "{g}\n  does not start with\n{w}");
    }
    assert_eq!(c.config.policy.ips.len(), 1);
    assert!(c.config.policy.dnsbl.is_empty());
    assert_eq!(c.config.policy.rules[0].message, None);
}

#[test]
fn a_broken_maildomain_is_left_out_and_the_rest_served() {
    let broken = domain(
        "broken",
        "  domain: 'bad domain'\n  delivery: {lmtp: {host: dovecot}}\n",
    );
    let c = ok(
        &plain_relay(),
        &[broken, lmtp_domain("good", "good.example")],
        &[],
    );
    assert_eq!(names(&c), ["good.example"]);
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.delivery.lmtp.port",
            "spec.domain",
            "spec.inbound.localParts"
        ]
    );
    assert!(
        c.problems
            .iter()
            .all(|p| p.object.to_string() == "MailDomain mail/broken")
    );
}

#[test]
fn destination_health_compiles_and_bad_values_name_their_field() {
    let good = relay(
        "  hostname: mx.example.com\n  queue: {destinations: {suspendAfterFailures: 3, probeInterval: 2s, maxProbeInterval: 1m}}\n",
    );
    let q = ok(&good, &[], &[]).config.queue;
    assert_eq!(
        (q.suspend_after, q.probe_secs, q.max_probe_secs),
        (3, 2, 60)
    );
    for (spec, field) in [
        (
            "{suspendAfterFailures: 0}",
            "spec.queue.destinations.suspendAfterFailures",
        ),
        (
            "{probeInterval: 0s}",
            "spec.queue.destinations.probeInterval",
        ),
        (
            "{probeInterval: 1h, maxProbeInterval: 1m}",
            "spec.queue.destinations.maxProbeInterval",
        ),
    ] {
        let r = relay(&format!(
            "  hostname: mx.example.com\n  queue: {{destinations: {spec}}}\n"
        ));
        let problems = compile(&r, &[], &[]).expect_err(spec);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, [field], "{spec}");
    }
}

#[test]
fn relay_problems_are_fatal_and_name_each_field() {
    let r = relay(
        "  hostname: 'mx example'\n  listeners: [{name: smtp}, {name: submission}, {name: smtp}]\n  trustedNetworks: [10.0.0.0/40]\n  limits: {maxMessageSize: 25MB, maxRecipients: 10}\n  queue: {retrySchedule: [0s], lifetime: soon}\n  autoscaling: {minReplicas: 5, maxReplicas: 2}\n",
    );
    let problems = compile(&r, &[], &[]).expect_err("broken relay");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for want in [
        "spec.hostname",
        "spec.listeners[2].name",
        "spec.tls",
        "spec.trustedNetworks[0]",
        "spec.limits.maxMessageSize",
        "spec.limits.maxRecipients",
        "spec.queue.retrySchedule[0]",
        "spec.queue.lifetime",
        "spec.autoscaling.minReplicas",
    ] {
        assert!(fields.contains(&want), "no problem for {want}: {fields:?}");
    }
    assert!(
        problems
            .iter()
            .all(|p| p.object.kind == "Relay" && !p.message.is_empty())
    );
}

#[test]
fn an_open_relay_by_configuration_is_refused() {
    let r = relay(
        "  hostname: mx.example.com\n  trustedNetworks: [0.0.0.0/0]\n  relayFromTrustedNetworks: true\n",
    );
    let problems = compile(&r, &[], &[]).expect_err("open relay");
    assert!(problems[0].message.contains("open relay"), "{problems:?}");
}

#[test]
fn outbound_tls_domains_are_normalised_sorted_and_listed_once() {
    use crate::relay::OutboundTlsPolicy as P;
    let c = ok(&plain_relay(), &[], &[]);
    assert!(c.config.outbound_tls.is_default());
    let r = relay(
        "  hostname: mx.example.com\n  delivery: {tls: {policy: MtaSts, domains: [{domain: Zeta.Example., policy: Required}, {domain: alpha.example, policy: Opportunistic}]}}\n",
    );
    let tls = ok(&r, &[], &[]).config.outbound_tls;
    assert_eq!(tls.policy, P::MtaSts);
    let domains: Vec<(&str, P)> = tls
        .domains
        .iter()
        .map(|d| (d.domain.as_str(), d.policy))
        .collect();
    assert_eq!(
        domains,
        [
            ("alpha.example", P::Opportunistic),
            ("zeta.example", P::Required)
        ]
    );
    assert_eq!(tls.policy_for("zeta.example"), P::Required);
    assert_eq!(tls.policy_for("other.example"), P::MtaSts);

    let r = relay(
        "  hostname: mx.example.com\n  delivery: {tls: {domains: [{domain: a.example, policy: Required}, {domain: A.example, policy: MtaSts}, {domain: 'not a domain', policy: Required}]}}\n",
    );
    let problems = compile(&r, &[], &[]).expect_err("duplicate and bad domain");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.delivery.tls.domains[1].domain",
            "spec.delivery.tls.domains[2].domain"
        ],
        "{problems:?}"
    );
}

#[test]
fn classification_rules_keep_their_order_and_a_bad_pattern_is_named() {
    use crate::relay::BounceClass as C;
    assert!(
        ok(&plain_relay(), &[], &[])
            .config
            .classification
            .is_empty()
    );
    let r = relay(
        "  hostname: mx.example.com\n  delivery: {classification: [{match: '(?i)quota', class: MailboxFull}, {match: 'TSS0[0-9]', class: Throttled}]}\n",
    );
    let rules: Vec<(String, C)> = ok(&r, &[], &[])
        .config
        .classification
        .into_iter()
        .map(|r| (r.pattern, r.class))
        .collect();
    assert_eq!(
        rules,
        [
            ("(?i)quota".to_string(), C::MailboxFull),
            ("TSS0[0-9]".to_string(), C::Throttled)
        ]
    );
    let r = relay(
        "  hostname: mx.example.com\n  delivery: {classification: [{match: 'ok', class: Other}, {match: '(unclosed', class: SpamBlock}]}\n",
    );
    let problems = compile(&r, &[], &[]).expect_err("a bad pattern");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "spec.delivery.classification[1].match");
    assert!(
        problems[0]
            .message
            .contains("not a valid regular expression"),
        "{problems:?}"
    );
}

#[test]
fn relay_defaults_compile_to_rfc_values() {
    let c = ok(&plain_relay(), &[], &[]);
    let cfg = &c.config;
    assert_eq!(cfg.listeners.len(), 1);
    assert_eq!(cfg.listeners[0].address.to_string(), "0.0.0.0:2525");
    assert_eq!(cfg.limits.max_recipients, 100);
    assert_eq!(cfg.limits.max_message_size, 25 * 1024 * 1024);
    assert_eq!(cfg.limits.command_timeout_secs, 300);
    assert_eq!(cfg.queue.lifetime_secs, 5 * 86_400);
    assert_eq!(cfg.queue.delay_warning_secs, Some(4 * 3600));
    assert_eq!(
        (
            cfg.queue.suspend_after,
            cfg.queue.probe_secs,
            cfg.queue.max_probe_secs
        ),
        (5, 30, 1800)
    );
    assert_eq!(cfg.scaling.replicas, 1);
    assert_eq!(cfg.dns.timeout_ms, 5_000);
}

#[test]
fn delivery_targets_compile_per_kind() {
    let smtp = domain(
        "s",
        "  domain: s.example\n  inbound: {catchAll: true}\n  delivery: {smtp: {host: '[2001:db8::25]', tls: Required}}\n",
    );
    let c = ok(&plain_relay(), &[smtp], &[]);
    assert_eq!(
        c.config.domains[0].delivery,
        DeliveryConfig::Smtp {
            host: "2001:db8::25".into(),
            port: 25,
            tls: crate::maildomain::TlsMode::Required
        }
    );
    let escape = domain(
        "m",
        "  domain: m.example\n  inbound: {catchAll: true}\n  delivery: {maildir: {path: /var/mail/../../etc}}\n",
    );
    let c = ok(&plain_relay(), &[escape], &[]);
    assert!(c.config.domains.is_empty());
    assert_eq!(c.problems[0].field, "spec.delivery.maildir.path");
}

#[test]
fn submission_accounts_and_grants_are_normalised() {
    let d = domain(
        "a",
        "  domain: a.example\n  inbound: {localParts: [x]}\n  delivery: {lmtp: {host: d, port: 24}}\n  submission:\n    accounts: {name: accts, key: passwd}\n    suspended: [Bob@A.example]\n    senders:\n      - {account: Alice@a.example, addresses: ['*@A.example', sales@a.example]}\n      - {account: alice@A.EXAMPLE, addresses: [x@a.example]}\n",
    );
    let c = ok(&plain_relay(), &[d], &[]);
    let s = c.config.domains[0].submission.as_ref().expect("submission");
    assert_eq!(
        s.accounts.path("/secrets"),
        std::path::Path::new("/secrets/accts/passwd")
    );
    assert_eq!(s.suspended, ["bob@a.example"]);
    assert_eq!(s.senders.len(), 1);
    assert_eq!(
        s.senders[0].addresses,
        ["*@a.example", "sales@a.example", "x@a.example"]
    );
}

#[test]
fn a_secret_reference_cannot_leave_the_secrets_directory() {
    let d = domain(
        "a",
        "  domain: a.example\n  inbound: {localParts: [x]}\n  delivery: {lmtp: {host: d, port: 24}}\n  submission:\n    accounts: {name: '..', key: passwd}\n",
    );
    let c = ok(&plain_relay(), &[d], &[]);
    assert!(c.config.domains[0].submission.is_none());
    assert_eq!(c.problems[0].field, "spec.submission.accounts.name");
}

fn tenant(outbound: &str) -> MailDomain {
    domain(
        "tenant",
        &format!(
            "  domain: Tenant.Example\n  inbound: {{localParts: [x]}}\n  delivery: {{lmtp: {{host: d, port: 24}}}}\n  outbound:\n    smarthost: {outbound}\n"
        ),
    )
}

#[test]
fn a_maildomains_smarthost_compiles_as_the_relays_does() {
    let smarthost = "{host: Smtp.Provider.Example, port: 2525, credentials: {username: {name: tenant-smarthost, key: username}, password: {name: tenant-smarthost, key: password}}}";
    let c = ok(
        &relay(&format!(
            "  hostname: mx.example.com\n  smarthost: {smarthost}\n"
        )),
        &[tenant(smarthost), lmtp_domain("plain", "plain.example")],
        &[],
    );
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let d = &c.config.domains[1];
    assert_eq!(d.name, "tenant.example");
    let s = d.smarthost.as_ref().expect("the tenant's smarthost");
    assert_eq!(Some(s), c.config.smarthost.as_ref());
    assert_eq!((s.host.as_str(), s.port), ("smtp.provider.example", 2525));
    assert_eq!(s.tls, crate::maildomain::TlsMode::Required, "the default");
    let path = |f: &Option<crate::config::SecretFile>| f.as_ref().map(|f| f.path("/s"));
    assert_eq!(
        path(&s.username),
        Some(std::path::PathBuf::from("/s/tenant-smarthost/username"))
    );
    assert_eq!(
        path(&s.password),
        Some(std::path::PathBuf::from("/s/tenant-smarthost/password"))
    );
    assert_eq!(
        c.config.domains[0].smarthost, None,
        "plain.example has none"
    );
    let json = serde_json::to_string(&c.config.domains[0]).expect("json");
    assert!(!json.contains("smarthost"), "left out when absent: {json}");
}

#[test]
fn a_broken_maildomain_smarthost_names_its_field_and_leaves_the_domain_out() {
    let creds = "credentials: {username: {name: s, key: user}, password: {name: s, key: pass}}";
    for (smarthost, field) in [
        ("{host: 'smtp provider'}".to_string(), "spec.outbound.smarthost.host"),
        ("{host: smtp.example, port: 0}".to_string(), "spec.outbound.smarthost.port"),
        (
            format!("{{host: smtp.example, tls: None, {creds}}}"),
            "spec.outbound.smarthost.tls",
        ),
        (
            "{host: smtp.example, credentials: {username: {name: '..', key: user}, password: {name: s, key: pass}}}".to_string(),
            "spec.outbound.smarthost.credentials.username.name",
        ),
        (
            "{host: smtp.example, credentials: {username: {name: s, key: user}, password: {name: s, key: '../p'}}}".to_string(),
            "spec.outbound.smarthost.credentials.password.key",
        ),
    ] {
        let c = ok(
            &plain_relay(),
            &[tenant(&smarthost), lmtp_domain("good", "good.example")],
            &[],
        );
        assert_eq!(names(&c), ["good.example"], "{smarthost}");
        let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, [field], "{smarthost}");
        assert_eq!(c.problems[0].object.to_string(), "MailDomain mail/tenant");
    }
    // The same mistake in the Relay's smarthost is the Relay's, and fatal.
    let r = relay(&format!(
        "  hostname: mx.example.com\n  smarthost: {{host: smtp.example, tls: None, {creds}}}\n"
    ));
    let problems = compile(&r, &[], &[]).expect_err("credentials in clear");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["spec.smarthost.tls"]);
}

// --- properties ---

fn arb_domain() -> impl Strategy<Value = MailDomain> {
    (
        "[a-d]{1,2}",
        prop::sample::select(vec![
            "a.example",
            "B.example.",
            "bücher.example",
            "c.example",
            "a.example",
        ]),
        prop::collection::vec(
            prop::sample::select(vec!["x.example", "A.example", "y.example"]),
            0..3,
        ),
        prop::option::of(0i64..3),
    )
        .prop_map(|(name, d, aliases, day)| {
            let mut md = lmtp_domain(&name, d);
            md.spec.aliases = aliases.into_iter().map(String::from).collect();
            if let Some(day) = day {
                md = md.created(&format!("2026-01-0{}T00:00:00Z", day + 1));
            }
            md
        })
}

fn arb_blocklist() -> impl Strategy<Value = Blocklist> {
    let entry = |values: Vec<&'static str>| {
        prop::collection::vec(prop::sample::select(values), 0..4).prop_map(|v| {
            v.into_iter()
                .map(|value| Entry {
                    value: value.into(),
                    expires: None,
                    comment: None,
                })
                .collect::<Vec<_>>()
        })
    };
    (
        "[a-d]{1,2}",
        any::<bool>(),
        entry(vec![
            "10.0.0.1",
            "10.0.0.0/8",
            "10.1.0.0/8",
            "2001:db8::/32",
            "::ffff:10.0.0.1",
        ]),
        entry(vec!["spam.example", "*.spam.example", "SPAM.example."]),
        entry(vec!["a@b.example", "A@B.example", "c@d.example"]),
    )
        .prop_map(|(name, soft, ips, domains, senders)| {
            let mut bl = blocklist(&name, "  {}\n");
            bl.spec.action = if soft {
                BlockAction::TempFail
            } else {
                BlockAction::Reject
            };
            bl.spec.ips = ips;
            bl.spec.domains = domains;
            bl.spec.senders = senders;
            bl
        })
}

fn dedup_by_name<K: Resource>(mut v: Vec<K>) -> Vec<K> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|o| seen.insert(o.meta().name.clone()));
    v
}

/// Fisher-Yates with xorshift: the permutation comes from proptest's seed.
fn shuffle<T>(v: &mut [T], state: &mut u64) {
    for i in (1..v.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let j = usize::try_from(*state % (i as u64 + 1)).unwrap_or(0);
        v.swap(i, j);
    }
}

proptest! {
    #[test]
    fn the_same_objects_in_any_order_give_byte_identical_config(
        domains in prop::collection::vec(arb_domain(), 0..6).prop_map(dedup_by_name),
        blocklists in prop::collection::vec(arb_blocklist(), 0..5).prop_map(dedup_by_name),
        seed in any::<u64>(),
    ) {
        let relay = plain_relay();
        let first = ok(&relay, &domains, &blocklists);
        let mut rng = seed | 1;
        let (mut d2, mut b2) = (domains.clone(), blocklists.clone());
        shuffle(&mut d2, &mut rng);
        shuffle(&mut b2, &mut rng);
        for bl in &mut b2 {
            shuffle(&mut bl.spec.ips, &mut rng);
            shuffle(&mut bl.spec.senders, &mut rng);
        }
        let second = ok(&relay, &d2, &b2);
        prop_assert_eq!(first.config.to_json().expect("json"), second.config.to_json().expect("json"));
        prop_assert_eq!(first.problems, second.problems);
    }

    #[test]
    fn arbitrary_text_in_any_parsed_field_never_panics(
        texts in prop::collection::vec(any::<String>(), 12),
        port in any::<i32>(),
        count in any::<i32>(),
    ) {
        let t = |i: usize| texts[i].clone();
        let mut r = plain_relay();
        r.spec.hostname = t(0);
        r.spec.trusted_networks = vec![t(1)];
        r.spec.limits.max_message_size = t(2);
        r.spec.limits.timeouts.command = t(3);
        r.spec.queue.retry_schedule = vec![t(4)];
        r.spec.queue.lifetime = t(4);
        r.spec.dns.nameservers = vec![t(5)];
        r.spec.dns.timeout = t(3);
        r.spec.limits.max_recipients = count;
        r.spec.replicas = Some(count);
        r.spec.listeners[0].port = Some(port);
        let _ = compile(&r, &[], &[]);

        let mut d = lmtp_domain("d", "d.example");
        d.spec.domain = t(6);
        d.spec.aliases = vec![t(7)];
        d.spec.inbound.local_parts = vec![t(8)];
        d.spec.inbound.recipient_delimiter = t(9);
        if let Some(l) = d.spec.delivery.lmtp.as_mut() { l.host = t(10); l.port = Some(port); }
        let mut b = blocklist("b", "  {}\n");
        let e = |v: String| vec![Entry { value: v, expires: None, comment: None }];
        b.spec.ips = e(t(1));
        b.spec.domains = e(t(7));
        b.spec.senders = e(t(11));
        b.spec.message = Some(t(9));
        b.spec.dnsbl = vec![crate::blocklist::DnsblZone { zone: t(6), return_codes: vec![t(1)], message: Some(t(10)) }];
        let c = ok(&plain_relay(), &[d], &[b]);
        // Whatever was accepted is in canonical form.
        for dc in &c.config.domains {
            prop_assert_eq!(super::normalize::domain_name(&dc.name), Ok(dc.name.clone()));
        }
        for ip in &c.config.policy.ips {
            prop_assert_eq!(ip.net, ip.net.trunc());
        }
    }
}

#[test]
fn shaping_entries_inherit_from_default_and_default_from_the_built_in_limits() {
    use crate::config::{RateConfig, ShapeConfig};
    use crate::shaping::ThrottleAction;
    let plain = ok(&plain_relay(), &[], &[]).config;
    assert!(plain.shaping.is_default(), "{:?}", plain.shaping);
    let r = relay(
        "  hostname: mx.example.com
  delivery:
    shaping:
      default: {maxConnections: 10, messageRate: 100/s, idleTimeout: 30s}
      destinations:
        - domains: [Slow.Example.]
          mxHosts: ['*.Google.com']
          maxConnections: 5
          messageRate: 50/m
        - mxHosts: [mx.other.example]
          connectionRate: 2/h
    throttle:
      - {match: '(?i)try again later', action: Suspend, duration: 15m}
      - {match: 'TS[0-9]+', action: Slow, duration: 1h, messageRate: 1/m}
",
    );
    let s = ok(&r, &[], &[]).config.shaping;
    let default = ShapeConfig {
        max_connections: 10,
        max_messages_per_connection: 100,
        message_rate: Some(RateConfig {
            count: 100,
            per_secs: 1,
        }),
        connection_rate: None,
        idle_timeout_ms: 30_000,
    };
    assert_eq!(s.default, default);
    assert_eq!(s.destinations[0].domains, ["slow.example"]);
    assert_eq!(s.destinations[0].mx_hosts, ["*.google.com"]);
    assert_eq!(
        s.destinations[0].shape,
        ShapeConfig {
            max_connections: 5,
            message_rate: Some(RateConfig {
                count: 50,
                per_secs: 60
            }),
            ..default
        }
    );
    assert_eq!(
        s.destinations[1].shape,
        ShapeConfig {
            connection_rate: Some(RateConfig {
                count: 2,
                per_secs: 3600
            }),
            ..default
        }
    );
    assert_eq!(s.throttle.len(), 2);
    assert_eq!(
        (s.throttle[0].action, s.throttle[0].duration_secs),
        (ThrottleAction::Suspend, 900)
    );
    assert_eq!(
        s.throttle[1].message_rate,
        Some(RateConfig {
            count: 1,
            per_secs: 60
        })
    );
    assert_eq!(
        s.throttle[1].message_rate.map(|r| r.to_string()).as_deref(),
        Some("1/m")
    );
}

#[test]
fn bad_shaping_is_reported_field_by_field() {
    let r = relay(
        "  hostname: mx.example.com
  delivery:
    shaping:
      default: {maxConnections: 0, messageRate: 20/d}
      destinations:
        - {maxConnections: 5}
        - {domains: ['a b'], maxMessagesPerConnection: -1, idleTimeout: 5x}
    throttle:
      - {match: '(unclosed', action: Suspend, duration: 1m}
      - {match: 'x', action: Slow, duration: 0s}
      - {match: 'y', action: Suspend, duration: 1m, messageRate: 1/m}
",
    );
    let problems = compile(&r, &[], &[]).expect_err("bad shaping");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.delivery.shaping.default.maxConnections",
            "spec.delivery.shaping.default.messageRate",
            "spec.delivery.shaping.destinations[0]",
            "spec.delivery.shaping.destinations[1].domains[0]",
            "spec.delivery.shaping.destinations[1].idleTimeout",
            "spec.delivery.shaping.destinations[1].maxMessagesPerConnection",
            "spec.delivery.throttle[0].match",
            "spec.delivery.throttle[1].duration",
            "spec.delivery.throttle[1].messageRate",
            "spec.delivery.throttle[2].messageRate",
        ],
        "{problems:#?}"
    );
}

fn sealing(extra: &str) -> MailDomain {
    domain(
        "fwd",
        &format!(
            "  domain: fwd.example\n  inbound: {{localParts: [x]}}\n  delivery: {{lmtp: {{host: d, port: 24}}}}\n  arc: {{seal: true}}\n{extra}"
        ),
    )
}

#[test]
fn arc_sealing_compiles_with_a_dkim_key_and_checks_and_is_off_by_default() {
    let dkim = "  dkim: {selector: s1, privateKey: {name: k, key: private.pem}}\n";
    let c = ok(
        &plain_relay(),
        &[sealing(dkim), lmtp_domain("plain", "plain.example")],
        &[],
    );
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert!(c.config.domains[0].arc_seal);
    assert!(!c.config.domains[1].arc_seal, "off unless asked");
    let json = serde_json::to_string(&c.config.domains[1]).expect("json");
    assert!(!json.contains("arcSeal"), "left out when off: {json}");

    for (extra, why) in [
        ("", "spec.dkim"),
        (
            &format!("{dkim}  inboundAuth: {{policy: Accept}}\n") as &str,
            "Accept",
        ),
    ] {
        let c = ok(&plain_relay(), &[sealing(extra)], &[]);
        assert_eq!(names(&c), ["fwd.example"], "the domain is still served");
        assert!(!c.config.domains[0].arc_seal, "{extra}");
        let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.arc.seal"], "{extra}");
        assert!(c.problems[0].message.contains(why), "{:?}", c.problems);
    }
}
