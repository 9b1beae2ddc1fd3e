//! kube-sim against kube's own client: watch semantics, server-side apply,
//! garbage collection, finalizers, subresources, CRD admission, RBAC.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    DeleteParams, DynamicObject, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, Config};
use kube_sim::{ADMIN_TOKEN, KubeSim};
use serde_json::{Value, json};

async fn client(sim: &KubeSim, token: &str) -> Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig(token, "default")).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

fn names(events: &[WatchEvent<ConfigMap>]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.clone().unwrap()),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.metadata.name.clone().unwrap()),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.clone().unwrap()),
            WatchEvent::Bookmark(_) => "BOOKMARK".into(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .collect()
}

async fn take(api: &Api<ConfigMap>, rv: &str, n: usize) -> Vec<WatchEvent<ConfigMap>> {
    let stream = api
        .watch(&WatchParams::default().timeout(5), rv)
        .await
        .unwrap();
    let mut stream = Box::pin(stream);
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
            Ok(Ok(Some(e))) => out.push(e),
            _ => break,
        }
    }
    out
}

fn rv_of(e: &WatchEvent<ConfigMap>) -> String {
    match e {
        WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
            o.metadata.resource_version.clone().unwrap()
        }
        _ => panic!("no object"),
    }
}

#[tokio::test]
async fn a_watch_resumed_from_a_resource_version_misses_nothing_and_repeats_nothing() {
    let sim = KubeSim::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim, ADMIN_TOKEN).await, "t");
    api.create(&PostParams::default(), &cm("a", json!({"v": "1"})))
        .await
        .unwrap();
    let start = api
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let writer = api.clone();
    let writes = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .create(&PostParams::default(), &cm("b", json!({})))
            .await
            .unwrap();
        writer
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": "2"}})),
            )
            .await
            .unwrap();
    });
    let first = take(&api, &start, 2).await;
    writes.await.unwrap();
    assert_eq!(names(&first), ["ADDED b", "MODIFIED a"]);
    let resume = rv_of(&first[1]);

    // While no one watches:
    api.create(&PostParams::default(), &cm("c", json!({})))
        .await
        .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let second = take(&api, &resume, 3).await;
    assert_eq!(
        names(&second),
        ["ADDED c", "DELETED b"],
        "exactly what happened after {resume}"
    );
}

#[tokio::test]
async fn a_version_the_log_no_longer_holds_is_gone_and_bookmarks_arrive() {
    let sim = KubeSim::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim, ADMIN_TOKEN).await, "t");
    api.create(&PostParams::default(), &cm("first", json!({})))
        .await
        .unwrap();
    sim.with_store(|s| {
        let kind = s.kind("", "v1", "configmaps").unwrap().clone();
        for i in 0..kube_sim::store::LOG_SIZE + 5 {
            s.create(
                &kind,
                "t",
                json!({"metadata": {"name": format!("n{i}")}}),
                "test",
            )
            .unwrap();
        }
    });
    let events = take(&api, "2", 1).await;
    assert_eq!(names(&events), ["ERROR 410"]);

    let rv = api
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = api
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(10),
            &rv,
        )
        .await
        .unwrap();
    let mut stream = Box::pin(stream);
    let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(e, WatchEvent::Bookmark(_)), "{e:?}");
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers_and_force_takes_over() {
    let sim = KubeSim::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim, ADMIN_TOKEN).await, "t");
    let cfg = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": v}});
    api.patch("x", &PatchParams::apply("one"), &Patch::Apply(cfg("1")))
        .await
        .unwrap();
    let err = api
        .patch("x", &PatchParams::apply("two"), &Patch::Apply(cfg("2")))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("conflict with \"one\": .data.k"),
                "{}",
                s.message
            );
        }
        e => panic!("{e}"),
    }
    let forced = api
        .patch(
            "x",
            &PatchParams::apply("two").force(),
            &Patch::Apply(cfg("2")),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["k"], "2");
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["two"], "the field moved to the forcing manager");
    // A field the applier stops setting goes away.
    let smaller = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "b"}}});
    let after = api
        .patch("x", &PatchParams::apply("two"), &Patch::Apply(smaller))
        .await
        .unwrap();
    assert!(after.data.is_none_or(|d| d.is_empty()));
}

#[tokio::test]
async fn owned_objects_are_collected_and_finalizers_hold_deletion() {
    let sim = KubeSim::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim, ADMIN_TOKEN).await, "t");
    let parent = api
        .create(&PostParams::default(), &cm("parent", json!({})))
        .await
        .unwrap();
    let uid = parent.metadata.uid.unwrap();
    let child: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "child", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid, "controller": true}]}})).unwrap();
    api.create(&PostParams::default(), &child).await.unwrap();
    let held: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/x"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid}]}})).unwrap();
    api.create(&PostParams::default(), &held).await.unwrap();

    api.delete("parent", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.get_opt("parent").await.unwrap().is_none());
    assert!(
        api.get_opt("child").await.unwrap().is_none(),
        "collected through its owner reference"
    );
    let held = api.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "kept while its finalizer is there"
    );
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_none());
}

fn relay_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mailrelay.io", "v1alpha1", "Relay"),
        "relays",
    )
}

async fn install_crds(client: &Client) {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/generated");
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: DynamicObject = serde_saphyr::from_str(&text).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
}

#[tokio::test]
async fn custom_resources_are_admitted_by_schema_and_cel_and_have_subresources() {
    let sim = KubeSim::start().await.unwrap();
    let client = client(&sim, ADMIN_TOKEN).await;
    install_crds(&client).await;
    let relays: Api<DynamicObject> = Api::namespaced_with(client, "mail", &relay_resource());
    let relay = |spec: Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "metadata": {"name": "edge"}, "spec": spec})).unwrap()
    };
    let bad = relay(
        json!({"hostname": "mx.example.com", "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
    );
    match relays
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(
                s.message.contains("Relay \"edge\" is invalid"),
                "{}",
                s.message
            );
            assert!(s.message.contains("minReplicas"), "{}", s.message);
        }
        e => panic!("{e}"),
    }
    let good = relay(json!({"hostname": "mx.example.com", "replicas": 1, "unknownField": 1}));
    let created = relays.create(&PostParams::default(), &good).await.unwrap();
    assert!(
        created.data["spec"].get("unknownField").is_none(),
        "pruned like the API server does"
    );
    assert_eq!(created.metadata.generation, Some(1));

    // Status writes leave the spec and the generation alone; spec writes
    // ignore status and move the generation.
    let st = relays
        .patch_status(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 1}, "spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (st.data["spec"]["replicas"].clone(), st.metadata.generation),
        (json!(1), Some(1))
    );
    let sp = relays
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            sp.data["status"]["replicas"].clone(),
            sp.metadata.generation
        ),
        (json!(1), Some(2))
    );
    // The scale subresource reads and writes spec.replicas.
    let scale = relays.get_scale("edge").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    relays
        .patch_scale(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(
        relays.get("edge").await.unwrap().data["spec"]["replicas"],
        4
    );
    // A stale update is refused.
    let mut stale = created.clone();
    stale.data["spec"]["replicas"] = json!(2);
    match relays
        .replace("edge", &PostParams::default(), &stale)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => assert_eq!(s.code, 409),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn requests_outside_the_callers_roles_are_forbidden_with_the_apis_message() {
    let sim = KubeSim::start().await.unwrap();
    sim.add_user("sa-token", "system:serviceaccount:mail:edge");
    let admin = client(&sim, ADMIN_TOKEN).await;
    let sa = client(&sim, "sa-token").await;
    let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), "mail");
    match cms.get("edge-config").await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert_eq!(
                s.message,
                "configmaps \"edge-config\" is forbidden: User \"system:serviceaccount:mail:edge\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"mail\""
            );
        }
        e => panic!("{e}"),
    }
    let rbac = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
            plural,
        )
    };
    let roles: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "mail", &rbac("Role", "roles"));
    let bindings: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "mail", &rbac("RoleBinding", "rolebindings"));
    roles.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["edge-config"], "verbs": ["get"]}]})).unwrap()).await.unwrap();
    bindings.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "edge", "namespace": "mail"}]})).unwrap()).await.unwrap();
    Api::<ConfigMap>::namespaced(admin, "mail")
        .create(&PostParams::default(), &cm("edge-config", json!({})))
        .await
        .unwrap();
    assert!(cms.get("edge-config").await.is_ok());
    assert!(cms.get("other").await.is_err());
    let denied: Vec<_> = sim
        .records()
        .into_iter()
        .filter(|r| r.code == 403)
        .collect();
    assert_eq!(denied.len(), 2);
}

#[tokio::test]
async fn a_write_that_changes_nothing_keeps_the_resource_version_and_tells_no_watcher() {
    let sim = KubeSim::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&sim, ADMIN_TOKEN).await, "t");
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "v"}});
    let first = api
        .patch("x", &PatchParams::apply("op").force(), &Patch::Apply(&cfg))
        .await
        .unwrap();
    let again = api
        .patch("x", &PatchParams::apply("op").force(), &Patch::Apply(&cfg))
        .await
        .unwrap();
    assert_eq!(
        first.metadata.resource_version,
        again.metadata.resource_version
    );
    let rv = first.metadata.resource_version.unwrap();
    let writer = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .patch("x", &PatchParams::apply("op").force(), &Patch::Apply(&cfg))
            .await
            .unwrap();
        writer
            .create(&PostParams::default(), &cm("y", json!({})))
            .await
            .unwrap();
    });
    let events = take(&api, &rv, 1).await;
    assert_eq!(names(&events), ["ADDED y"], "the no-op apply made no event");
}

#[tokio::test]
async fn granting_permissions_the_caller_does_not_hold_is_refused_as_escalation() {
    let sim = KubeSim::start().await.unwrap();
    sim.add_user("op-token", "system:serviceaccount:ops:op");
    let admin = client(&sim, ADMIN_TOKEN).await;
    let op = client(&sim, "op-token").await;
    let rbac = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
            plural,
        )
    };
    // The caller may write Roles and read ConfigMaps, nothing more.
    Api::<DynamicObject>::all_with(admin.clone(), &rbac("ClusterRole", "clusterroles"))
        .create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "op"}, "rules": [
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create", "patch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]})).unwrap())
        .await
        .unwrap();
    Api::<DynamicObject>::all_with(admin, &rbac("ClusterRoleBinding", "clusterrolebindings"))
        .create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "op"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "op"},
            "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "ops"}]})).unwrap())
        .await
        .unwrap();
    let roles: Api<DynamicObject> = Api::namespaced_with(op, "mail", &rbac("Role", "roles"));
    let role = |verb: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": format!("r-{verb}")},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["edge-config"], "verbs": [verb]}]})).unwrap()
    };
    roles
        .create(&PostParams::default(), &role("get"))
        .await
        .unwrap();
    match roles
        .create(&PostParams::default(), &role("delete"))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message
                    .contains("is attempting to grant RBAC permissions not currently held"),
                "{}",
                s.message
            );
        }
        e => panic!("{e}"),
    }
}
