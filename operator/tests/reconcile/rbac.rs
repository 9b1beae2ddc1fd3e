//! The operator's role, as written in `charts/mailrelay/files/`, against
//! every API call the operator makes here: reconciles of all three kinds,
//! the controllers' watches, leader election and `--apply-crds`. Each call
//! must be allowed, and each grant must be used by some call (or be one of
//! the few named below with the reason no test can make the call).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::runtime::events::Reporter;
use mailrelay_operator::controller;
use mailrelay_operator::leader::{Elector, Timing};
use mailrelay_operator::metrics::Metrics;
use serde_json::json;

use crate::fake::{Call, FakeApi, target};
use crate::{Harness, NS, blocklist, lmtp_domain, plain_relay};

/// Grants no test can exercise, and why they are needed.
const NEEDED_WITHOUT_A_CALL: &[(&str, &str, &str, &str)] = &[
    (
        "mailrelay.io",
        "relays/finalizers",
        "update",
        "blockOwnerDeletion on owner references needs it where the OwnerReferencesPermissionEnforcement admission plugin is on",
    ),
    (
        "",
        "configmaps",
        "get",
        "RBAC lets the operator create a Role granting get on the config ConfigMaps only if it holds get itself (kube-sim enforces this in the e2e suite: without it the relay Role is refused as escalation)",
    ),
];

fn rules(file: &str) -> Vec<PolicyRule> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/mailrelay/files")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (verb, group, resource[/subresource], name, namespaced) of a call; an
/// apply may create, so it needs both patch and create.
fn permissions(call: &Call) -> Vec<(String, String, String, Option<String>)> {
    let t = target(&call.path).unwrap_or_else(|| panic!("unparsed path {}", call.path));
    let resource = match &t.subresource {
        Some(s) => format!("{}/{s}", t.resource),
        None => t.resource.clone(),
    };
    let verbs: Vec<&str> = match (&call.method, &t.name) {
        (&Method::GET, Some(_)) => vec!["get"],
        (&Method::GET, None) if call.query.contains("watch=true") => vec!["watch"],
        (&Method::GET, None) => vec!["list"],
        (&Method::POST, _) => vec!["create"],
        (&Method::PUT, _) => vec!["update"],
        (&Method::DELETE, _) => vec!["delete"],
        (&Method::PATCH, _) if call.is_apply() && t.subresource.is_none() => {
            vec!["patch", "create"]
        }
        (&Method::PATCH, _) => vec!["patch"],
        (m, _) => panic!("unexpected method {m}"),
    };
    verbs
        .into_iter()
        .map(|v| {
            (
                v.to_string(),
                t.group.clone(),
                resource.clone(),
                t.name.clone(),
            )
        })
        .collect()
}

fn allows(rule: &PolicyRule, verb: &str, group: &str, resource: &str, name: Option<&str>) -> bool {
    let names = rule.resource_names.clone().unwrap_or_default();
    rule.verbs.iter().any(|v| v == verb)
        && rule.api_groups.iter().flatten().any(|g| g == group)
        && rule.resources.iter().flatten().any(|r| r == resource)
        && (names.is_empty() || name.is_some_and(|n| names.iter().any(|x| x == n)))
}

/// Every call the operator makes in these scenarios.
async fn all_calls() -> Vec<Call> {
    let mut calls = Vec::new();

    // Reconciles of all three kinds, through their notable paths.
    let mut h = Harness::new();
    h.examples();
    calls.extend(h.reconcile_relay("edge").await.1);
    h.edit_blocklist("abuse", |b| {
        b.spec
            .ips
            .push(serde_json::from_value(json!({"value": "192.0.2.9"})).unwrap())
    });
    calls.extend(h.reconcile_relay("edge").await.1);
    calls.extend(h.reconcile_domain("example-com").await.1);
    calls.extend(h.reconcile_blocklist("abuse").await.1);
    let mut r = plain_relay("plain");
    r.spec.autoscaling = Some(
        serde_json::from_value(
            json!({"minReplicas": 1, "maxReplicas": 3, "engine": "Keda", "targetQueueDepth": 10}),
        )
        .unwrap(),
    );
    r.spec.resources = Some(serde_json::from_value(json!({"requests": {"cpu": "100m"}})).unwrap());
    h.relay(r);
    h.domain(lmtp_domain("other", "other.example"));
    h.blocklist(blocklist("more", &["192.0.2.0/28"]));
    calls.extend(h.reconcile_relay("plain").await.1);
    // Every prune: KEDA → none with storage (ScaledObject, Deployment go),
    // → HPA without storage (StatefulSet goes), → none (HPA goes), and a
    // config shard left from a bigger config.
    h.edit_relay("plain", |r| {
        r.spec.autoscaling = None;
        r.spec.queue.storage = Some(serde_json::from_value(json!({"size": "1Gi"})).unwrap());
    });
    calls.extend(h.reconcile_relay("plain").await.1);
    h.workload_ready("statefulsets", "plain");
    calls.extend(h.reconcile_relay("plain").await.1);
    h.edit_relay("plain", |r| {
        r.spec.autoscaling =
            Some(serde_json::from_value(json!({"minReplicas": 1, "maxReplicas": 3})).unwrap());
        r.spec.queue.storage = None;
    });
    calls.extend(h.reconcile_relay("plain").await.1);
    h.workload_ready("deployments", "plain");
    calls.extend(h.reconcile_relay("plain").await.1);
    let uid = h.fake.get("mailrelay.io", "relays", NS, "plain").unwrap()["metadata"]["uid"].clone();
    h.fake.put("", "configmaps", NS, "plain-config-1", json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "plain-config-1", "namespace": NS,
            "labels": {"app.kubernetes.io/name": "mailrelay", "app.kubernetes.io/instance": "plain"},
            "ownerReferences": [{"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "name": "plain", "uid": uid, "controller": true}]}
    }));
    h.edit_relay("plain", |r| r.spec.autoscaling = None);
    let last = h.reconcile_relay("plain").await.1;
    let deleted: Vec<String> = last
        .iter()
        .filter(|c| c.method == Method::DELETE)
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(deleted.len(), 2, "the shard and the HPA: {deleted:?}");
    calls.extend(last);
    calls.extend(h.reconcile_domain("other").await.1);
    // DKIM keys: example-com's Secret was created above (get, create); a
    // Secret without the key gets it by a patch.
    h.domain(crate::dkim::dkim_domain(
        "keyed",
        "keyed.example",
        "ed25519-sha256",
        true,
    ));
    h.fake.put(
        "",
        "secrets",
        NS,
        "keyed-dkim",
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "keyed-dkim", "namespace": NS, "resourceVersion": "1"}}),
    );
    calls.extend(h.reconcile_domain("keyed").await.1);
    calls.extend(h.fake.take_calls());
    // The pod loops (webhook health, fleet reports): a Relay's pods, listed
    // by its labels (the hand-off Secret is read with the get above).
    let _ = mailrelay_operator::fleet::pods(&h.fake.client(), NS, "plain").await;
    calls.extend(h.fake.take_calls());

    // The controllers' watches: run them briefly against an empty API.
    let fake = FakeApi::default();
    let client = fake.client();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller::run(
        client.clone(),
        mailrelay_operator::Settings::default(),
        Reporter {
            controller: "mailrelay-operator".into(),
            instance: None,
        },
        Arc::new(Metrics::new()),
        None,
        controller::FleetSettings::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
    calls.extend(fake.take_calls());

    // Leader election: create, renew, release; `--apply-crds`.
    let fake = FakeApi::default();
    let client = fake.client();
    let elector = Elector::new(
        client.clone(),
        "mailrelay-system",
        "mailrelay-operator",
        "me",
        Timing::default(),
    );
    assert!(elector.try_once().await.unwrap());
    assert!(elector.try_once().await.unwrap());
    elector.release().await;
    mailrelay_operator::crds::apply_all(&client).await.unwrap();
    calls.extend(fake.take_calls());
    calls
}

#[tokio::test]
async fn every_call_is_allowed_by_the_documented_role_and_every_grant_is_used() {
    let cluster = rules("operator-clusterrole-rules.yaml");
    let namespaced = rules("operator-role-rules.yaml");
    let crd = rules("operator-crd-rules.yaml");
    for r in cluster.iter().chain(&namespaced).chain(&crd) {
        let all = r
            .verbs
            .iter()
            .chain(r.resources.iter().flatten())
            .chain(r.api_groups.iter().flatten());
        for word in all {
            assert!(!word.contains('*'), "wildcard in {r:?}");
        }
    }
    let calls = all_calls().await;
    assert!(calls.len() > 50, "the scenarios made {} calls", calls.len());

    let mut used: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut denied = Vec::new();
    for call in &calls {
        for (verb, group, resource, name) in permissions(call) {
            // Leases live in the operator's namespace: the Role, not the
            // ClusterRole. CRDs: the extra rules of --apply-crds.
            let set: &[PolicyRule] = match resource.as_str() {
                "leases" => &namespaced,
                "customresourcedefinitions" => &crd,
                _ => &cluster,
            };
            if set
                .iter()
                .any(|r| allows(r, &verb, &group, &resource, name.as_deref()))
            {
                used.insert((group.clone(), resource.clone(), verb.clone()));
            } else {
                denied.push(format!(
                    "{verb} {group}/{resource} {} ({} {})",
                    name.unwrap_or_default(),
                    call.method,
                    call.path_and_query()
                ));
            }
        }
    }
    denied.sort();
    denied.dedup();
    assert!(
        denied.is_empty(),
        "calls the role does not allow:\n{}",
        denied.join("\n")
    );

    let mut unused = Vec::new();
    for r in cluster.iter().chain(&namespaced).chain(&crd) {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    let key = (g.clone(), res.clone(), v.clone());
                    let excused = NEEDED_WITHOUT_A_CALL.iter().any(|(eg, er, ev, _)| {
                        (*eg, *er, *ev) == (g.as_str(), res.as_str(), v.as_str())
                    });
                    if !used.contains(&key) && !excused {
                        unused.push(format!("{v} {g}/{res}"));
                    }
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "grants no call needs (least privilege: remove them):\n{}",
        unused.join("\n")
    );
    // Negative control: without the ConfigMap rule, the config writes are denied.
    let narrowed: Vec<PolicyRule> = cluster
        .iter()
        .filter(|r| !r.resources.iter().flatten().any(|x| x == "configmaps"))
        .cloned()
        .collect();
    assert!(calls.iter().flat_map(permissions).any(|(v, g, r, n)| {
        r == "configmaps"
            && !narrowed
                .iter()
                .any(|rule| allows(rule, &v, &g, &r, n.as_deref()))
    }));
    // The namespace of the reconcile scenarios is not special.
    assert!(
        calls
            .iter()
            .any(|c| c.path.contains(&format!("/namespaces/{NS}/")))
    );
}
