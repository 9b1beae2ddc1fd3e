//! Reconcile against the API, the way kube-rs recommends testing it: the
//! client talks to a `tower-test` mock whose other end ([`fake`]) records
//! every request and answers it. Each test asserts the requests a
//! reconcile made — which writes, with which field manager, carrying what.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

mod dkim;
mod fake;
mod rbac;
mod webhooks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use http::Method;
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use mailrelay_crds::{Blocklist, MailDomain, Relay};
use mailrelay_operator::Settings;
use mailrelay_operator::controller::{self, Cluster, Context};
use mailrelay_operator::metrics::Metrics;
use serde_json::{Value, json};

use fake::{Call, FakeApi};

pub const NS: &str = "mail";

/// A Context over a fake API server, with caches the test fills.
pub struct Harness {
    pub fake: FakeApi,
    pub ctx: Arc<Context>,
    relays: Writer<Relay>,
    domains: Writer<MailDomain>,
    blocklists: Writer<Blocklist>,
    next_uid: u64,
    _woken: Vec<tokio::sync::mpsc::UnboundedReceiver<()>>,
}

fn ready<K: Resource<DynamicType = ()> + Clone>() -> Writer<K> {
    let mut w = Writer::default();
    w.apply_watcher_event(&watcher::Event::Init);
    w.apply_watcher_event(&watcher::Event::InitDone);
    w
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let fake = FakeApi::default();
        let client = fake.client();
        let (relays, domains, blocklists) = (ready(), ready(), ready());
        let (tx1, rx1) = tokio::sync::mpsc::unbounded_channel();
        let (tx2, rx2) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Cluster::new(
            client,
            Reporter {
                controller: "mailrelay-operator".into(),
                instance: Some("test".into()),
            },
            relays.as_reader(),
            domains.as_reader(),
            blocklists.as_reader(),
        );
        let settings = Settings {
            default_image: "ghcr.io/mailrelay/mailrelay:test".into(),
            prometheus_url: "http://prometheus:9090".into(),
        };
        let metrics = Arc::new(Metrics::new());
        let ctx = Arc::new(Context::new(
            cluster,
            settings,
            metrics,
            None,
            vec![tx1, tx2],
        ));
        Self {
            fake,
            ctx,
            relays,
            domains,
            blocklists,
            next_uid: 0,
            _woken: vec![rx1, rx2],
        }
    }

    /// Give an object the metadata the API server would, and store it in
    /// the fake and in the cache.
    fn admit(&mut self, meta: &mut ObjectMeta) {
        self.next_uid += 1;
        meta.namespace.get_or_insert_with(|| NS.to_string());
        meta.uid
            .get_or_insert_with(|| format!("cr-uid-{}", self.next_uid));
        meta.generation.get_or_insert(1);
        meta.creation_timestamp.get_or_insert_with(|| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_700_000_000 + i64::try_from(self.next_uid).unwrap())
                    .unwrap(),
            )
        });
    }

    pub fn relay(&mut self, mut r: Relay) -> Relay {
        self.admit(&mut r.metadata);
        self.fake.put(
            "mailrelay.io",
            "relays",
            NS,
            &r.name_any(),
            serde_json::to_value(&r).unwrap(),
        );
        self.relays
            .apply_watcher_event(&watcher::Event::Apply(r.clone()));
        r
    }

    pub fn domain(&mut self, mut d: MailDomain) -> MailDomain {
        self.admit(&mut d.metadata);
        self.fake.put(
            "mailrelay.io",
            "maildomains",
            NS,
            &d.name_any(),
            serde_json::to_value(&d).unwrap(),
        );
        self.domains
            .apply_watcher_event(&watcher::Event::Apply(d.clone()));
        d
    }

    pub fn blocklist(&mut self, mut b: Blocklist) -> Blocklist {
        self.admit(&mut b.metadata);
        self.fake.put(
            "mailrelay.io",
            "blocklists",
            NS,
            &b.name_any(),
            serde_json::to_value(&b).unwrap(),
        );
        self.blocklists
            .apply_watcher_event(&watcher::Event::Apply(b.clone()));
        b
    }

    /// The examples of `crds/examples`, admitted into namespace [`NS`].
    pub fn examples(&mut self) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
        let m = mailrelay_crds::manifests::load_dir(&dir).unwrap();
        for mut r in m.relays.iter().map(|s| s.object.clone()) {
            r.metadata.namespace = None;
            self.relay(r);
        }
        for mut d in m.domain_objects() {
            d.metadata.namespace = None;
            self.domain(d);
        }
        for mut b in m.blocklist_objects() {
            b.metadata.namespace = None;
            self.blocklist(b);
        }
    }

    fn stored<K: serde::de::DeserializeOwned>(&self, resource: &str, name: &str) -> K {
        serde_json::from_value(self.fake.get("mailrelay.io", resource, NS, name).unwrap()).unwrap()
    }

    /// Reconcile Relay `name` as stored now (with the status last written).
    pub async fn reconcile_relay(&self, name: &str) -> (Action, Vec<Call>) {
        let relay: Relay = self.stored("relays", name);
        let action = controller::relay::reconcile(Arc::new(relay), self.ctx.clone())
            .await
            .unwrap_or_else(|e| panic!("reconcile of Relay {name} failed: {e}"));
        (action, self.fake.take_calls())
    }

    pub async fn reconcile_domain(&self, name: &str) -> (Action, Vec<Call>) {
        let d: MailDomain = self.stored("maildomains", name);
        let action = controller::domain::reconcile(Arc::new(d), self.ctx.clone())
            .await
            .unwrap();
        (action, self.fake.take_calls())
    }

    pub async fn reconcile_blocklist(&self, name: &str) -> (Action, Vec<Call>) {
        let b: Blocklist = self.stored("blocklists", name);
        let action = controller::blocklist::reconcile(Arc::new(b), self.ctx.clone())
            .await
            .unwrap();
        (action, self.fake.take_calls())
    }

    /// Change a stored custom resource: `f` edits it, the generation moves
    /// when the spec did, the cache sees the new version.
    pub fn edit_blocklist(&mut self, name: &str, f: impl FnOnce(&mut Blocklist)) {
        let mut b: Blocklist = self.stored("blocklists", name);
        f(&mut b);
        b.metadata.generation = b.metadata.generation.map(|g| g + 1);
        self.fake.put(
            "mailrelay.io",
            "blocklists",
            NS,
            name,
            serde_json::to_value(&b).unwrap(),
        );
        self.blocklists
            .apply_watcher_event(&watcher::Event::Apply(b));
    }

    pub fn edit_relay(&mut self, name: &str, f: impl FnOnce(&mut Relay)) {
        let mut r: Relay = self.stored("relays", name);
        f(&mut r);
        r.metadata.generation = r.metadata.generation.map(|g| g + 1);
        self.fake.put(
            "mailrelay.io",
            "relays",
            NS,
            name,
            serde_json::to_value(&r).unwrap(),
        );
        self.relays.apply_watcher_event(&watcher::Event::Apply(r));
    }

    /// The workload controller's part: every pod of `resource/name` ready.
    pub fn workload_ready(&self, resource: &str, name: &str) {
        let mut w = self.fake.get("apps", resource, NS, name).unwrap();
        let n = w["spec"]["replicas"].as_i64().unwrap_or(1);
        let generation = w["metadata"]["generation"].clone();
        w["status"] = json!({"observedGeneration": generation, "replicas": n, "readyReplicas": n, "updatedReplicas": n});
        self.fake.put("apps", resource, NS, name, w);
    }

    pub fn relay_status(&self, name: &str) -> mailrelay_crds::RelayStatus {
        self.stored::<Relay>("relays", name)
            .status
            .unwrap_or_default()
    }
}

pub fn from_yaml<K: serde::de::DeserializeOwned>(yaml: &str) -> K {
    serde_saphyr::from_str(yaml).unwrap()
}

/// A Relay without autoscaling or queue storage: a Deployment.
pub fn plain_relay(name: &str) -> Relay {
    from_yaml(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {{name: {name}}}\nspec:\n  hostname: mx.example.com\n  replicas: 2\n"
    ))
}

pub fn lmtp_domain(name: &str, domain: &str) -> MailDomain {
    from_yaml(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: {name}}}\nspec:\n  domain: {domain}\n  delivery: {{lmtp: {{host: dovecot.mail.svc, port: 24}}}}\n"
    ))
}

pub fn blocklist(name: &str, ips: &[&str]) -> Blocklist {
    let ips: Vec<String> = ips.iter().map(|i| format!("{{value: \"{i}\"}}")).collect();
    from_yaml(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {{name: {name}}}\nspec:\n  ips: [{}]\n",
        ips.join(", ")
    ))
}

fn writes(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.is_write()).collect()
}

/// Applied object paths (without query), in order.
fn applied(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_apply() && !c.path.ends_with("/status"))
        .map(|c| c.path.clone())
        .collect()
}

fn events(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|c| c.path.contains("/events"))
        .map(|c| {
            let b = c.body.clone().unwrap_or(Value::Null);
            (
                b["type"].as_str().unwrap_or_default().to_string(),
                b["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn status_writes(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| c.path.ends_with("/status") && c.method == Method::PATCH)
        .collect()
}

fn condition<'a>(
    status: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

#[tokio::test]
async fn first_reconcile_applies_every_object_with_one_field_manager_and_owner_references() {
    let mut h = Harness::new();
    h.examples();
    let relay_uid = h.stored::<Relay>("relays", "edge").uid().unwrap();
    let (action, calls) = h.reconcile_relay("edge").await;
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(300)));

    let base = format!("/namespaces/{NS}");
    assert_eq!(
        applied(&calls),
        vec![
            format!("/api/v1{base}/serviceaccounts/edge"),
            format!("/apis/rbac.authorization.k8s.io/v1{base}/roles/edge-config-reader"),
            format!("/apis/rbac.authorization.k8s.io/v1{base}/rolebindings/edge-config-reader"),
            format!("/api/v1{base}/configmaps/edge-config"),
            format!("/api/v1{base}/services/edge"),
            format!("/api/v1{base}/services/edge-peers"),
            format!("/apis/apps/v1{base}/statefulsets/edge"),
            format!("/apis/apps/v1{base}/statefulsets/edge"),
            format!("/apis/policy/v1{base}/poddisruptionbudgets/edge"),
            format!("/apis/networking.k8s.io/v1{base}/networkpolicies/edge"),
            format!("/apis/autoscaling/v2{base}/horizontalpodautoscalers/edge"),
        ]
    );
    for c in calls.iter().filter(|c| c.is_apply()) {
        let manager = fake::query_param(&c.query, "fieldManager").unwrap_or_default();
        assert!(c.query.contains("force=true"), "{}", c.path_and_query());
        if manager == "mailrelay-operator-replicas" {
            // The autoscaler's count, under a manager of its own: nothing else.
            assert_eq!(
                c.body.as_ref().unwrap()["spec"],
                json!({"replicas": 2}),
                "{}",
                c.path
            );
            continue;
        }
        assert_eq!(manager, "mailrelay-operator", "{}", c.path_and_query());
        if c.path.ends_with("/status") {
            continue;
        }
        let owners = &c.body.as_ref().unwrap()["metadata"]["ownerReferences"];
        assert_eq!(
            owners,
            &json!([{"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "name": "edge",
                     "uid": relay_uid, "controller": true, "blockOwnerDeletion": true}]),
            "{}: owned by the Relay, so deleting it deletes this",
            c.path
        );
    }
    // Every write is an apply, an Event, or the creation of the hand-off
    // Secret (created, never applied: its value is random).
    for c in writes(&calls) {
        let ok = c.is_apply() || c.path.contains("/events") || c.path.ends_with("/secrets");
        assert!(ok, "unexpected write {} {}", c.method, c.path_and_query());
    }
    let secret = calls
        .iter()
        .find(|c| c.method == "POST" && c.path.ends_with("/secrets"))
        .expect("the hand-off Secret is created");
    let body = secret.body.as_ref().unwrap();
    assert_eq!(body["metadata"]["name"], "edge-handoff");
    assert_eq!(
        body["metadata"]["ownerReferences"][0]["uid"], relay_uid,
        "goes with the Relay"
    );
    let key: k8s_openapi::ByteString =
        serde_json::from_value(body["data"]["secret"].clone()).unwrap();
    let key = key.0;
    assert_eq!(key.len(), 64, "32 random bytes, hex");
    assert!(key.iter().all(u8::is_ascii_hexdigit));
    // The autoscaled StatefulSet's main apply leaves replicas out; the HPA's
    // decision (the Relay's spec.replicas, here unset: minReplicas) is
    // applied by the replicas manager first, so the field never loses its
    // last owner.
    let sts: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path.ends_with("statefulsets/edge"))
        .collect();
    assert_eq!(sts.len(), 2, "replicas, then the rest");
    assert!(
        sts[0]
            .query
            .contains("fieldManager=mailrelay-operator-replicas")
    );
    assert!(
        sts[1].body.as_ref().unwrap()["spec"]
            .get("replicas")
            .is_none()
    );
    let hpa = calls
        .iter()
        .find(|c| c.path.ends_with("horizontalpodautoscalers/edge"))
        .unwrap();
    assert_eq!(
        hpa.body.as_ref().unwrap()["spec"]["scaleTargetRef"],
        json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "name": "edge"})
    );

    let status = h.relay_status("edge");
    assert_eq!(status.domains, 2);
    assert!(status.blocklist_entries > 0);
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/instance=edge,app.kubernetes.io/name=mailrelay")
    );
    assert_eq!(condition(&status.conditions, "ConfigValid").status, "True");
    assert_eq!(condition(&status.conditions, "Ready").status, "False");
    assert_eq!(
        condition(&status.conditions, "Ready").reason,
        "ReplicasNotReady"
    );
    assert!(
        events(&calls).contains(&("Normal".into(), "ConfigApplied".into())),
        "{:?}",
        events(&calls)
    );
}

#[tokio::test]
async fn the_pending_gauge_counts_objects_whose_version_was_not_reconciled() {
    let mut h = Harness::new();
    h.examples();
    h.ctx.update_pending();
    let text = h.ctx.metrics().encode();
    assert!(
        text.contains("mailrelay_operator_reconciles_pending{kind=\"Relay\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mailrelay_operator_reconciles_pending{kind=\"Blocklist\"} 2"),
        "{text}"
    );
    // The reconcile begins at the cached version (the one the cache holds).
    let cached = h.ctx.cluster().relays().state()[0].clone();
    controller::relay::reconcile(cached, h.ctx.clone())
        .await
        .unwrap();
    h.ctx.update_pending();
    let text = h.ctx.metrics().encode();
    assert!(
        text.contains("mailrelay_operator_reconciles_pending{kind=\"Relay\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reconcile_from_a_cache_that_has_not_seen_the_last_status_write_writes_nothing() {
    let mut h = Harness::new();
    h.examples();
    let stale: Relay = h.stored("relays", "edge");
    h.reconcile_relay("edge").await;
    // The same Relay as the cache still has it: no status, no Events.
    controller::relay::reconcile(Arc::new(stale), h.ctx.clone())
        .await
        .unwrap();
    let calls = h.fake.take_calls();
    assert!(
        status_writes(&calls).is_empty(),
        "{:?}",
        status_writes(&calls)
    );
    assert!(events(&calls).is_empty(), "{:?}", events(&calls));
}

#[tokio::test]
async fn a_second_reconcile_with_nothing_changed_writes_nothing_new() {
    let mut h = Harness::new();
    h.examples();
    let (_, first) = h.reconcile_relay("edge").await;
    let (_, second) = h.reconcile_relay("edge").await;
    let bodies = |calls: &[Call]| -> BTreeMap<String, Value> {
        calls
            .iter()
            .filter(|c| c.is_apply())
            .map(|c| (c.path.clone(), c.body.clone().unwrap()))
            .collect()
    };
    let (a, b) = (bodies(&first), bodies(&second));
    for (path, body) in &b {
        assert!(
            !path.ends_with("/status"),
            "no status write when nothing changed: {path}"
        );
        assert_eq!(
            a.get(path),
            Some(body),
            "{path}: the same apply, changing nothing"
        );
    }
    for c in writes(&second) {
        assert!(
            c.is_apply(),
            "only none-changing applies, got {} {}",
            c.method,
            c.path_and_query()
        );
    }
    assert!(events(&second).is_empty(), "{:?}", events(&second));
}

#[tokio::test]
async fn a_blocklist_change_updates_only_the_config_object_and_the_status() {
    let mut h = Harness::new();
    h.examples();
    let (_, first) = h.reconcile_relay("edge").await;
    let before = h.relay_status("edge").blocklist_entries;
    h.edit_blocklist("abuse", |b| {
        b.spec
            .ips
            .push(serde_json::from_value(json!({"value": "192.0.2.77"})).unwrap());
    });
    let (_, second) = h.reconcile_relay("edge").await;
    let bodies = |calls: &[Call]| -> BTreeMap<String, Value> {
        calls
            .iter()
            .filter(|c| c.is_apply() && !c.path.ends_with("/status"))
            .map(|c| (c.path.clone(), c.body.clone().unwrap()))
            .collect()
    };
    let (a, b) = (bodies(&first), bodies(&second));
    let changed: Vec<&String> = b.keys().filter(|p| a.get(*p) != b.get(*p)).collect();
    assert_eq!(
        changed,
        vec![&format!("/api/v1/namespaces/{NS}/configmaps/edge-config")]
    );
    assert_eq!(status_writes(&second).len(), 1);
    assert_eq!(h.relay_status("edge").blocklist_entries, before + 1);
    assert!(!second.iter().any(|c| c.method == Method::DELETE));
    assert_eq!(
        events(&second),
        vec![("Normal".to_string(), "ConfigApplied".to_string())]
    );
}

#[tokio::test]
async fn the_relay_turns_ready_when_its_workload_is() {
    let mut h = Harness::new();
    h.relay(plain_relay("edge"));
    h.domain(lmtp_domain("example-com", "example.com"));
    let (_, first) = h.reconcile_relay("edge").await;
    let dep = first
        .iter()
        .find(|c| c.path.ends_with("deployments/edge"))
        .unwrap();
    assert_eq!(
        dep.body.as_ref().unwrap()["spec"]["replicas"],
        json!(2),
        "no autoscaler: replicas applied"
    );
    assert!(
        !first
            .iter()
            .any(|c| c.query.contains("mailrelay-operator-replicas"))
    );
    // The Deployment controller's work, simulated.
    let mut d = h.fake.get("apps", "deployments", NS, "edge").unwrap();
    d["status"] =
        json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2});
    h.fake.put("apps", "deployments", NS, "edge", d);
    let (_, second) = h.reconcile_relay("edge").await;
    let status = h.relay_status("edge");
    assert_eq!((status.replicas, status.ready_replicas), (2, 2));
    assert_eq!(condition(&status.conditions, "Ready").status, "True");
    assert_eq!(condition(&status.conditions, "Progressing").status, "False");
    assert_eq!(
        events(&second),
        vec![("Normal".to_string(), "Ready".to_string())]
    );
}

#[tokio::test]
async fn turning_queue_storage_on_prunes_the_deployment_and_nothing_else() {
    let mut h = Harness::new();
    h.relay(plain_relay("edge"));
    // Someone else's Deployment with the same labels but no owner: kept.
    h.fake.put("apps", "deployments", NS, "stranger", json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "stranger", "namespace": NS, "labels": {"app.kubernetes.io/name": "mailrelay", "app.kubernetes.io/instance": "edge"}}
    }));
    h.reconcile_relay("edge").await;
    h.edit_relay("edge", |r| {
        r.spec.queue.storage = Some(serde_json::from_value(json!({"size": "1Gi"})).unwrap())
    });
    let (_, calls) = h.reconcile_relay("edge").await;
    assert!(
        applied(&calls)
            .iter()
            .any(|p| p.ends_with("statefulsets/edge"))
    );
    assert!(
        !calls.iter().any(|c| c.method == Method::DELETE),
        "the old pods serve until the new ones are ready"
    );
    let mut sts = h.fake.get("apps", "statefulsets", NS, "edge").unwrap();
    sts["status"] =
        json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2});
    h.fake.put("apps", "statefulsets", NS, "edge", sts);
    let (_, calls) = h.reconcile_relay("edge").await;
    let deleted: Vec<String> = calls
        .iter()
        .filter(|c| c.method == Method::DELETE)
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(
        deleted,
        vec![format!("/apis/apps/v1/namespaces/{NS}/deployments/edge")]
    );
    assert!(h.fake.get("apps", "deployments", NS, "stranger").is_some());
}

#[tokio::test]
async fn a_deleted_relay_is_left_to_the_garbage_collector() {
    let mut h = Harness::new();
    h.relay(plain_relay("edge"));
    h.reconcile_relay("edge").await;
    h.edit_relay("edge", |r| {
        r.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
    });
    let (action, calls) = h.reconcile_relay("edge").await;
    assert_eq!(action, Action::await_change());
    assert!(writes(&calls).is_empty(), "{calls:?}");
}

#[tokio::test]
async fn an_invalid_maildomain_is_a_condition_and_an_event_not_a_crash_loop() {
    let mut h = Harness::new();
    h.relay(plain_relay("edge"));
    h.domain(lmtp_domain("example-com", "example.com"));
    // Admission cannot see this: a second MailDomain claiming the same name.
    h.domain(lmtp_domain("example-com-again", "Example.COM"));
    let (action, calls) = h.reconcile_relay("edge").await;
    assert_ne!(
        action,
        Action::await_change(),
        "the Relay itself is fine: it is served and resynced"
    );
    let status = h.relay_status("edge");
    let degraded = condition(&status.conditions, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ObjectsLeftOut")
    );
    assert!(
        degraded.message.contains("example-com-again"),
        "{}",
        degraded.message
    );
    assert_eq!(status.domains, 1, "the older MailDomain is still served");
    assert!(
        events(&calls).contains(&("Warning".into(), "Degraded".into())),
        "{:?}",
        events(&calls)
    );

    let (action, calls) = h.reconcile_domain("example-com-again").await;
    assert_eq!(action, Action::await_change());
    let d: MailDomain = h.stored("maildomains", "example-com-again");
    let accepted = condition(&d.status.as_ref().unwrap().conditions, "Accepted").clone();
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        accepted.message.contains("example-com"),
        "names the older owner: {}",
        accepted.message
    );
    assert_eq!(
        events(&calls),
        vec![("Warning".to_string(), "InvalidSpec".to_string())]
    );
    // Reconciling again changes nothing and says nothing.
    let (_, calls) = h.reconcile_domain("example-com-again").await;
    assert!(writes(&calls).is_empty(), "{calls:?}");

    let (_, _) = h.reconcile_domain("example-com").await;
    let ok: MailDomain = h.stored("maildomains", "example-com");
    let st = ok.status.unwrap();
    assert_eq!(st.relays, vec!["edge".to_string()]);
    assert_eq!(condition(&st.conditions, "Accepted").status, "True");
}

#[tokio::test]
async fn an_invalid_relay_keeps_its_objects_and_says_why() {
    let mut h = Harness::new();
    let mut r = plain_relay("edge");
    r.spec.domain_selector = Some(
        serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}))
            .unwrap(),
    );
    h.relay(r);
    let (action, calls) = h.reconcile_relay("edge").await;
    assert_eq!(
        action,
        Action::await_change(),
        "nothing to retry until the spec changes"
    );
    assert!(
        applied(&calls).is_empty(),
        "no object is touched: {:?}",
        applied(&calls)
    );
    let status = h.relay_status("edge");
    let valid = condition(&status.conditions, "ConfigValid");
    assert_eq!(
        (valid.status.as_str(), valid.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        valid.message.contains("spec.domainSelector"),
        "{}",
        valid.message
    );
    assert_eq!(
        events(&calls),
        vec![("Warning".to_string(), "InvalidSpec".to_string())]
    );
}

#[tokio::test]
async fn with_keda_missing_the_relay_is_degraded_not_failing() {
    let mut h = Harness::new();
    let mut r = plain_relay("edge");
    r.spec.autoscaling = Some(
        serde_json::from_value(
            json!({"minReplicas": 1, "maxReplicas": 3, "engine": "Keda", "targetQueueDepth": 100}),
        )
        .unwrap(),
    );
    r.spec.resources = Some(serde_json::from_value(json!({"requests": {"cpu": "100m"}})).unwrap());
    h.relay(r);
    h.fake
        .state
        .lock()
        .unwrap()
        .unknown
        .push(("keda.sh".into(), "scaledobjects".into()));
    h.reconcile_relay("edge").await;
    let status = h.relay_status("edge");
    let degraded = condition(&status.conditions, "Degraded");
    assert_eq!(degraded.reason, "AutoscalerMissing");
    assert!(degraded.message.contains("KEDA"), "{}", degraded.message);
}

#[tokio::test]
async fn blocklist_status_counts_entries_names_invalid_ones_and_the_relays() {
    let mut h = Harness::new();
    h.relay(plain_relay("edge"));
    let mut b = blocklist("abuse", &["192.0.2.1", "198.51.100.0/24"]);
    b.spec
        .domains
        .push(serde_json::from_value(json!({"value": "bad..example"})).unwrap());
    h.blocklist(b);
    h.reconcile_relay("edge").await;
    let (_, calls) = h.reconcile_blocklist("abuse").await;
    let b: Blocklist = h.stored("blocklists", "abuse");
    let st = b.status.unwrap();
    assert_eq!(st.entries, 2);
    assert_eq!(st.invalid.len(), 1);
    assert_eq!(st.invalid[0].field, "spec.domains[0].value");
    assert_eq!(st.relays, vec!["edge".to_string()]);
    assert_eq!(
        condition(&st.conditions, "EntriesValid").reason,
        "InvalidEntries"
    );
    assert_eq!(condition(&st.conditions, "Ready").status, "True");
    assert_eq!(
        events(&calls),
        vec![("Warning".to_string(), "InvalidEntries".to_string())]
    );
}

#[tokio::test]
async fn relabelling_a_maildomain_wakes_the_relay_that_loses_it_and_the_one_that_gains_it() {
    let mut h = Harness::new();
    let mut a = plain_relay("a");
    a.spec.domain_selector =
        Some(serde_json::from_value(json!({"matchLabels": {"relay": "a"}})).unwrap());
    let mut b = plain_relay("b");
    b.spec.domain_selector =
        Some(serde_json::from_value(json!({"matchLabels": {"relay": "b"}})).unwrap());
    h.relay(a);
    h.relay(b);
    let mut d = lmtp_domain("example-com", "example.com");
    d.metadata.labels = Some(BTreeMap::from([("relay".to_string(), "a".to_string())]));
    let d = h.domain(d);
    h.reconcile_relay("a").await;
    h.reconcile_relay("b").await;
    let mut moved = d.clone();
    moved.metadata.labels = Some(BTreeMap::from([("relay".to_string(), "b".to_string())]));
    let woken: BTreeSet<String> = h
        .ctx
        .relays_for(controller::Selected::MailDomain, &moved.metadata)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(woken, BTreeSet::from(["a".to_string(), "b".to_string()]));
}

#[tokio::test]
async fn apply_crds_applies_the_committed_crds_with_server_side_apply() {
    let fake = FakeApi::default();
    mailrelay_operator::crds::apply_all(&fake.client())
        .await
        .unwrap();
    let calls = fake.take_calls();
    assert_eq!(calls.len(), 3);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/generated");
    for c in &calls {
        assert!(
            c.is_apply() && c.query.contains("fieldManager=mailrelay-operator"),
            "{}",
            c.path_and_query()
        );
        let name = c.path.rsplit('/').next().unwrap();
        assert!(
            c.path
                .starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/")
        );
        let committed: Value =
            from_yaml(&std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap());
        assert_eq!(
            c.body.as_ref().unwrap(),
            &committed,
            "{name}: the CRD applied is the one committed (and shipped in the chart)"
        );
    }
}

#[tokio::test]
async fn a_candidate_takes_a_lease_only_after_seeing_it_unchanged_for_its_duration() {
    use mailrelay_operator::leader::{Elector, Timing};
    let fake = FakeApi::default();
    // Held by "a", renewed "in the future" by a fast clock: only how long
    // the record stays unchanged counts.
    fake.put("coordination.k8s.io", "leases", "ops", "lead", json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "lead", "namespace": "ops", "resourceVersion": "7"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 1, "renewTime": "2099-01-01T00:00:00.000000Z"}
    }));
    let b = Elector::new(fake.client(), "ops", "lead", "b", Timing::default());
    assert!(!b.try_once().await.unwrap(), "first sight of a live lease");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(
        !b.try_once().await.unwrap(),
        "unchanged for less than its duration"
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(
        b.try_once().await.unwrap(),
        "unchanged for longer than its duration: taken"
    );
    let lease = fake
        .get("coordination.k8s.io", "leases", "ops", "lead")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn turning_autoscaling_on_hands_replicas_to_their_own_manager_before_the_main_apply_drops_them()
 {
    let mut h = Harness::new();
    h.relay(plain_relay("edge"));
    h.reconcile_relay("edge").await;
    h.edit_relay("edge", |r| {
        r.spec.autoscaling =
            Some(serde_json::from_value(json!({"minReplicas": 3, "maxReplicas": 6})).unwrap());
    });
    let (_, calls) = h.reconcile_relay("edge").await;
    let dep: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path.ends_with("deployments/edge"))
        .collect();
    assert_eq!(dep.len(), 2);
    assert!(
        dep[0]
            .query
            .contains("fieldManager=mailrelay-operator-replicas"),
        "first: {}",
        dep[0].query
    );
    assert_eq!(
        dep[0].body.as_ref().unwrap()["spec"],
        json!({"replicas": 3})
    );
    assert!(
        dep[1].body.as_ref().unwrap()["spec"]
            .get("replicas")
            .is_none(),
        "then the main apply, without replicas"
    );
}
