//! The committed CRD YAML is what the types generate, and it is a CRD
//! an API server accepts in shape.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mailrelay_crds::crdgen;
use serde_json::Value;

fn committed(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("generated")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn committed_crd_yaml_is_what_the_generator_prints() {
    for (file, crd) in crdgen::all() {
        let generated = crdgen::to_yaml(&crd).expect("serialises");
        assert!(
            committed(file) == generated,
            "crds/generated/{file} is stale: run `{}` and commit",
            crdgen::REGENERATE
        );
    }
}

#[test]
fn committed_yaml_parses_as_apiextensions_v1_crds() {
    let expect = [
        ("maildomains.mailrelay.io.yaml", "MailDomain", "md", false),
        ("relays.mailrelay.io.yaml", "Relay", "rly", true),
        ("blocklists.mailrelay.io.yaml", "Blocklist", "bl", false),
    ];
    for (file, kind, short, scale) in expect {
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&committed(file)).expect(file);
        assert_eq!(crd.spec.group, "mailrelay.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_string()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["mailrelay".to_string()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let sub = version.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some(), "{kind} has a status subresource");
        assert_eq!(sub.scale.is_some(), scale, "{kind} scale subresource");
        if let Some(s) = &sub.scale {
            assert_eq!(s.spec_replicas_path, ".spec.replicas");
            assert_eq!(s.status_replicas_path, ".status.replicas");
            assert_eq!(s.label_selector_path.as_deref(), Some(".status.selector"));
        }
        let columns = version
            .additional_printer_columns
            .as_deref()
            .unwrap_or_default();
        assert!(
            columns.iter().any(|c| c.name == "Age"),
            "{kind} printer columns"
        );
        assert!(columns.len() >= 3, "{kind} printer columns");
    }
}

/// Every field of our own types documents itself: it is what `kubectl
/// explain` shows. (Fields of embedded Kubernetes types carry theirs.)
fn undocumented(path: &str, schema: &Value, out: &mut Vec<String>) {
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            if prop
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(here.clone());
            }
            undocumented(&here, prop, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(&format!("{path}[]"), items, out);
    }
}

#[test]
fn every_field_has_a_description() {
    for (file, crd) in crdgen::all() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
        let mut missing = Vec::new();
        undocumented("", &schema["openAPIV3Schema"], &mut missing);
        // metadata is the API server's; apiVersion/kind document themselves there.
        missing.retain(|p| !matches!(p.as_str(), ".metadata" | ".apiVersion" | ".kind"));
        assert!(
            missing.is_empty(),
            "{file}: fields without a description: {missing:#?}"
        );
    }
}
