//! Event webhooks' signing keys: a Relay's or a MailDomain's webhook whose
//! Secret is missing shows in that object's `EventWebhookReady`
//! condition, and the condition turns once the Secret is there.

use mailrelay_crds::{MailDomain, Relay};
use serde_json::json;

use crate::{Harness, NS, condition, from_yaml};

const HOOK: &str = "{url: 'https://hooks.example.com/mail', secret: {name: hook, key: signing}}";

fn put_secret(h: &Harness, name: &str, key: &str) {
    h.fake.put(
        "",
        "secrets",
        NS,
        name,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NS},
            "data": {key: "a2V5"}
        }),
    );
}

fn state(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> (String, String, String) {
    let c = condition(conditions, "EventWebhookReady");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_maildomain_webhook_without_its_secret_is_a_condition_until_the_secret_comes() {
    let mut h = Harness::new();
    h.domain(from_yaml::<MailDomain>(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: shop}}\nspec:\n  domain: shop.example\n  delivery: {{lmtp: {{host: dovecot.mail.svc, port: 24}}}}\n  events:\n    webhook: {HOOK}\n"
    )));
    h.reconcile_domain("shop").await;
    let st = h
        .stored::<MailDomain>("maildomains", "shop")
        .status
        .unwrap();
    let (status, reason, message) = state(&st.conditions);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        message.contains("spec.events.webhook.secret: Secret hook not found"),
        "{message}"
    );

    put_secret(&h, "hook", "other");
    h.reconcile_domain("shop").await;
    let st = h
        .stored::<MailDomain>("maildomains", "shop")
        .status
        .unwrap();
    assert_eq!(state(&st.conditions).1, "KeyNotFound");

    put_secret(&h, "hook", "signing");
    h.reconcile_domain("shop").await;
    let st = h
        .stored::<MailDomain>("maildomains", "shop")
        .status
        .unwrap();
    assert_eq!(state(&st.conditions).0, "True");
}

#[tokio::test]
async fn a_relay_webhook_without_its_secret_is_a_condition_and_without_webhooks_there_is_none() {
    let mut h = Harness::new();
    h.relay(from_yaml::<Relay>(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {{name: edge}}\nspec:\n  hostname: mx.example.com\n  events:\n    webhooks: [{HOOK}]\n"
    )));
    h.reconcile_relay("edge").await;
    let (status, reason, message) = state(&h.relay_status("edge").conditions);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        message.contains("spec.events.webhooks[0].secret"),
        "{message}"
    );

    let mut plain = Harness::new();
    plain.relay(crate::plain_relay("quiet"));
    plain.reconcile_relay("quiet").await;
    let conditions = plain.relay_status("quiet").conditions;
    assert!(
        conditions.iter().all(|c| c.type_ != "EventWebhookReady"),
        "{conditions:?}"
    );
}
