//! What every object shares: labels, namespace, owner.

use mailrelay_operator::builders::Document;

use crate::common::{Fixture, LMTP_DOMAIN, UID, WITH_TLS};

fn meta_of(doc: &Document<'_>) -> serde_json::Value {
    serde_json::to_value(doc).unwrap()["metadata"].clone()
}

#[test]
fn every_object_has_the_common_labels_the_namespace_and_the_relay_as_controller() {
    for spec in [
        WITH_TLS.to_string(),
        format!("{WITH_TLS}\nautoscaling: {{maxReplicas: 4}}"),
        format!(
            "{WITH_TLS}\nautoscaling: {{engine: Keda, maxReplicas: 4}}\nqueue: {{storage: {{size: 1Gi}}}}"
        ),
    ] {
        let objects = Fixture::relay(&spec)
            .domain("example", LMTP_DOMAIN)
            .objects();
        let docs = objects.documents();
        assert!(docs.len() >= 7, "{}", docs.len());
        for doc in &docs {
            let meta = meta_of(doc);
            let what = doc.describe();
            assert_eq!(meta["namespace"], "mail", "{what}");
            let labels = &meta["labels"];
            assert_eq!(labels["app.kubernetes.io/name"], "mailrelay", "{what}");
            assert_eq!(labels["app.kubernetes.io/instance"], "edge", "{what}");
            assert_eq!(labels["app.kubernetes.io/component"], "relay", "{what}");
            assert_eq!(
                labels["app.kubernetes.io/managed-by"], "mailrelay-operator",
                "{what}"
            );
            let owners = meta["ownerReferences"].as_array().expect(&what);
            assert_eq!(owners.len(), 1, "{what}");
            let o = &owners[0];
            assert_eq!(o["apiVersion"], "mailrelay.io/v1alpha1", "{what}");
            assert_eq!(o["kind"], "Relay", "{what}");
            assert_eq!(o["name"], "edge", "{what}");
            assert_eq!(o["uid"], UID, "{what}");
            assert_eq!(o["controller"], true, "{what}");
            assert_eq!(o["blockOwnerDeletion"], true, "{what}");
        }
    }
}

#[test]
fn a_relay_read_from_a_manifest_has_no_uid_so_its_objects_have_no_owner() {
    // An ownerReference with a made-up uid would have the garbage
    // collector delete the object as an orphan.
    let objects = Fixture::named_relay("edge", None, WITH_TLS).objects();
    for doc in objects.documents() {
        assert!(
            meta_of(&doc).get("ownerReferences").is_none(),
            "{}",
            doc.describe()
        );
    }
}

#[test]
fn documents_come_in_apply_order() {
    let objects = Fixture::relay(&format!("{WITH_TLS}\nautoscaling: {{maxReplicas: 4}}")).objects();
    let kinds: Vec<String> = objects.documents().iter().map(|d| d.describe()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount edge",
            "Role edge-config-reader",
            "RoleBinding edge-config-reader",
            "ConfigMap edge-config",
            "Service edge",
            "Service edge-peers",
            "Deployment edge",
            "PodDisruptionBudget edge",
            "NetworkPolicy edge",
            "HorizontalPodAutoscaler edge",
        ]
    );
}

#[test]
fn a_relay_name_that_cannot_name_a_service_is_refused() {
    let fixture = Fixture::named_relay(&"r".repeat(60), None, "hostname: mx.example.com");
    let m = fixture.manifests();
    let compiled = mailrelay_crds::compile(&m.relays[0].object, &[], &[]).unwrap();
    let err = mailrelay_operator::Model::new(
        &m.relays[0].object,
        compiled.config,
        &[],
        &mailrelay_operator::Settings::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("longer than 52 characters"),
        "{err}"
    );
}
