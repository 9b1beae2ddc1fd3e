//! What the relay pods may do with the Kubernetes API: read their own
//! config ConfigMaps, by name, and nothing else. The relay watches them so
//! a Blocklist change reaches running pods within seconds (a mounted
//! ConfigMap is refreshed by the kubelet only on its sync period, up to a
//! minute or more).

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::object_meta;
use crate::model::Model;

/// Name of the Role and its RoleBinding.
pub(crate) fn name(relay: &str) -> String {
    format!("{relay}-config-reader")
}

/// Read access to exactly `config_maps`. For list and watch, RBAC applies
/// `resourceNames` only with a `metadata.name` field selector, which the
/// relay sends (one watch per ConfigMap).
pub(crate) fn role(model: &Model, config_maps: &[String]) -> Role {
    Role {
        metadata: object_meta(model, name(&model.relay.name)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(config_maps.to_vec()),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            non_resource_urls: None,
        }]),
    }
}

/// The Role bound to the Relay's ServiceAccount.
pub(crate) fn role_binding(model: &Model) -> RoleBinding {
    RoleBinding {
        metadata: object_meta(model, name(&model.relay.name)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name(&model.relay.name),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: model.relay.name.clone(),
            namespace: Some(model.relay.namespace.clone()),
            api_group: None,
        }]),
    }
}
