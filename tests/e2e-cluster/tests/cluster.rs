//! The end-to-end scenarios of `operator/tests/e2e` against a real
//! cluster with mailrelay installed by its Helm chart (see README.md).
//! Ignored by default (CI has no cluster; they compile there); run with
//! `-- --ignored`. Without `MAILRELAY_E2E_KUBECONFIG` they fail — they never
//! pass by skipping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

use std::time::{Duration, Instant};

use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(120);

async fn client() -> Client {
    let path = std::env::var("MAILRELAY_E2E_KUBECONFIG").unwrap_or_else(|_| {
        let hint = if std::env::var("MAILRELAY_E2E_REQUIRE").as_deref() == Ok("1") { " (MAILRELAY_E2E_REQUIRE=1)" } else { "" };
        panic!("MAILRELAY_E2E_KUBECONFIG is not set{hint}: point it at a cluster with mailrelay installed (tests/e2e-cluster/README.md)")
    });
    let kc = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn res(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn relays() -> ApiResource {
    res("mailrelay.io", "v1alpha1", "Relay", "relays")
}

/// A namespace of its own, deleted at the end.
struct Namespace(Client, String);

impl Namespace {
    async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &res("", "v1", "Namespace", "namespaces"));
        let ns: DynamicObject = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .unwrap();
        api.patch(&name, &PatchParams::apply("e2e"), &Patch::Apply(&ns))
            .await
            .unwrap();
        Self(client.clone(), name)
    }

    fn api(&self, r: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.0.clone(), &self.1, r)
    }

    async fn apply(&self, manifest: Value) -> Result<DynamicObject, kube::Error> {
        let api_version = manifest["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let api = self.api(&res(
            group,
            version,
            &kind,
            &format!("{}s", kind.to_lowercase()),
        ));
        let name = manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let obj: DynamicObject = serde_json::from_value(manifest).unwrap();
        api.patch(
            &name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&obj),
        )
        .await
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let (client, name) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let api: Api<DynamicObject> =
                    Api::all_with(client, &res("", "v1", "Namespace", "namespaces"));
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        })
        .join();
    }
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < LIMIT,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn condition(o: &DynamicObject, t: &str) -> Option<String> {
    o.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)?["status"]
        .as_str()
        .map(String::from)
}

fn relay(name: &str, selector: Option<&str>) -> Value {
    let mut r = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "metadata": {"name": name},
        "spec": {"hostname": "mx.example.com", "replicas": 1, "service": {"type": "ClusterIP"}}});
    if let Some(s) = selector {
        r["spec"]["domainSelector"] = json!({"matchLabels": {"mailrelay.io/relay": s}});
    }
    r
}

fn domain(name: &str, domain: &str, relay: &str) -> Value {
    json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "MailDomain",
        "metadata": {"name": name, "labels": {"mailrelay.io/relay": relay}},
        "spec": {"domain": domain, "delivery": {"lmtp": {"host": "dovecot.invalid", "port": 24}}}})
}

async fn config_text(ns: &Namespace, relay: &str) -> Option<String> {
    let cm = ns
        .api(&res("", "v1", "ConfigMap", "configmaps"))
        .get_opt(&format!("{relay}-config"))
        .await
        .ok()??;
    cm.data["data"]["relay.json"].as_str().map(String::from)
}

#[tokio::test]
#[ignore = "needs a real cluster: MAILRELAY_E2E_KUBECONFIG (tests/e2e-cluster/README.md)"]
async fn relays_become_ready_follow_blocklists_and_relabels_and_are_collected() {
    let client = client().await;
    let ns = Namespace::new(&client, "mailrelay-e2e").await;
    ns.apply(relay("a", Some("a"))).await.unwrap();
    ns.apply(relay("b", Some("b"))).await.unwrap();
    ns.apply(domain("d", "example.com", "a")).await.unwrap();
    ns.apply(json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist", "metadata": {"name": "bl"},
        "spec": {"ips": [{"value": "192.0.2.1"}]}})).await.unwrap();
    eventually(
        "Relay a Ready (its pod running the relay image)",
        || async {
            (condition(&ns.api(&relays()).get("a").await.ok()?, "Ready")? == "True").then_some(())
        },
    )
    .await;
    // A Blocklist change reaches the config and the status.
    ns.apply(json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist", "metadata": {"name": "bl"},
        "spec": {"ips": [{"value": "192.0.2.1"}, {"value": "192.0.2.2"}]}})).await.unwrap();
    eventually("the new entry in a's config", || async {
        config_text(&ns, "a")
            .await?
            .contains("192.0.2.2")
            .then_some(())
    })
    .await;
    eventually("a's status counting it", || async {
        (ns.api(&relays()).get("a").await.ok()?.data["status"]["blocklistEntries"] == 2)
            .then_some(())
    })
    .await;
    // An invalid IP is refused at admission.
    let bad = ns.apply(json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist", "metadata": {"name": "bad"},
        "spec": {"ips": [{"value": "not-an-ip"}]}})).await;
    assert!(
        matches!(bad, Err(kube::Error::Api(ref s)) if s.code == 422),
        "{bad:?}"
    );
    // Relabel: the domain moves from a to b.
    ns.apply(domain("d", "example.com", "b")).await.unwrap();
    eventually("the domain in b's config and not a's", || async {
        let (a, b) = (config_text(&ns, "a").await?, config_text(&ns, "b").await?);
        (b.contains("example.com") && !a.contains("example.com")).then_some(())
    })
    .await;
    // Delete b: its objects are collected.
    ns.api(&relays())
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    eventually("b's objects collected", || async {
        config_text(&ns, "b").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: MAILRELAY_E2E_KUBECONFIG (tests/e2e-cluster/README.md)"]
async fn killing_the_leader_hands_over_within_the_lease() {
    let client = client().await;
    let ns = std::env::var("MAILRELAY_E2E_OPERATOR_NAMESPACE")
        .unwrap_or_else(|_| "mailrelay-system".into());
    let leases: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &res("coordination.k8s.io", "v1", "Lease", "leases"),
    );
    let lease_name =
        std::env::var("MAILRELAY_E2E_LEASE").unwrap_or_else(|_| "mailrelay-operator".into());
    let holder = |l: DynamicObject| l.data["spec"]["holderIdentity"].as_str().map(String::from);
    let first = eventually("a leader", || async {
        holder(leases.get(&lease_name).await.ok()?)
    })
    .await;
    let pods: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &res("", "v1", "Pod", "pods"));
    pods.delete(
        &first,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    let next = eventually("another leader", || async {
        let h = holder(leases.get(&lease_name).await.ok()?)?;
        (h != first).then_some(h)
    })
    .await;
    assert_ne!(next, first);
}
