use crate::config::SecretFile;
use crate::events::EventType;
use crate::{MailDomain, Relay, compile};

fn parse<T: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: &str) -> T {
    serde_saphyr::from_str(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: mail}}\nspec:\n{spec}"
    ))
    .expect("test object parses")
}

fn relay(events: &str) -> Relay {
    parse(
        "Relay",
        "edge",
        &format!("  hostname: mx.example.com\n  events:\n{events}"),
    )
}

fn tenant(name: &str, domain: &str, webhook: &str) -> MailDomain {
    parse(
        "MailDomain",
        name,
        &format!(
            "  domain: {domain}\n  inbound: {{localParts: [alice]}}\n  delivery: {{lmtp: {{host: dovecot, port: 24}}}}\n  events:\n    webhook: {webhook}\n"
        ),
    )
}

#[test]
fn a_relay_webhook_compiles_with_its_defaults_and_its_secret_file() {
    let r = relay(
        "    webhooks:\n    - url: https://hooks.example.com/mail\n      secret: {name: hook, key: signing}\n      types: [Bounce, Delivery, Bounce]\n",
    );
    let c = compile(&r, &[], &[]).unwrap();
    let w = &c.config.events.webhooks[0];
    assert_eq!(w.name, "relay:https://hooks.example.com/mail");
    assert_eq!(w.secret, SecretFile::new("hook", "signing"));
    assert_eq!(w.types, vec![EventType::Delivery, EventType::Bounce]);
    assert_eq!(
        (w.batch_size, w.batch_window_ms, w.timeout_ms),
        (100, 1000, 10_000)
    );
    assert_eq!(w.domain, None);
    assert_eq!(c.config.events.retention_secs, 3 * 86_400);
}

#[test]
fn a_broken_relay_webhook_is_a_relay_problem_naming_the_field() {
    let r = relay(
        "    retention: forever\n    webhooks:\n    - url: ftp://h.test/\n      secret: {name: Bad_Name, key: k}\n      batchSize: 0\n      timeout: 0s\n",
    );
    let problems = compile(&r, &[], &[]).unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.events.retention",
            "spec.events.webhooks[0].batchSize",
            "spec.events.webhooks[0].secret.name",
            "spec.events.webhooks[0].timeout",
            "spec.events.webhooks[0].url",
        ]
    );
}

#[test]
fn a_tenant_webhook_is_compiled_for_its_domain_only_and_a_broken_one_is_reported() {
    let good = tenant(
        "shop",
        "Shop.Example",
        "{url: 'http://127.0.0.1:9000/e', secret: {name: shop-hook, key: key}}",
    );
    let bad = tenant(
        "blog",
        "blog.example",
        "{url: 'gopher://x', secret: {name: blog-hook, key: key}}",
    );
    let c = compile(&relay("    webhooks: []\n"), &[good, bad], &[]).unwrap();
    let names: Vec<&str> = c
        .config
        .events
        .webhooks
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(names, ["domain:shop.example"]);
    assert_eq!(
        c.config.events.webhooks[0].domain.as_deref(),
        Some("shop.example")
    );
    // The domain with the broken webhook still serves; the problem names it.
    assert_eq!(c.config.domains.len(), 2);
    assert_eq!(c.problems.len(), 1);
    assert_eq!(c.problems[0].field, "spec.events.webhook.url");
    assert_eq!(c.problems[0].object.name, "blog");
}
