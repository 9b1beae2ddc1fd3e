//! The kinds the simulator serves: a fixed set of built-ins (the ones
//! mailrelay's operator and relays touch, plus RBAC and CRDs) and the
//! custom resources of every CustomResourceDefinition created.

use serde_json::Value;

/// Where a scale subresource reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// e.g. `.spec.replicas`
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One resource of one group/version.
#[derive(Clone, Debug)]
pub struct Kind {
    pub group: String,
    pub version: String,
    /// Plural, as in the path.
    pub resource: String,
    pub kind: String,
    pub namespaced: bool,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// The OpenAPI v3 schema, for custom resources.
    pub schema: Option<Value>,
}

impl Kind {
    fn builtin(group: &str, version: &str, resource: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            kind: kind.into(),
            namespaced,
            status: false,
            scale: None,
            schema: None,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `resource.group` as error messages spell it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// The built-in kinds.
pub fn builtins() -> Vec<Kind> {
    let workload_scale = Some(ScalePaths {
        spec_replicas: ".spec.replicas".into(),
        status_replicas: ".status.replicas".into(),
        label_selector: None,
    });
    let mut kinds = vec![
        Kind::builtin("", "v1", "namespaces", "Namespace", false),
        Kind::builtin("", "v1", "configmaps", "ConfigMap", true),
        Kind::builtin("", "v1", "secrets", "Secret", true),
        Kind::builtin("", "v1", "services", "Service", true),
        Kind::builtin("", "v1", "serviceaccounts", "ServiceAccount", true),
        Kind::builtin("", "v1", "events", "Event", true),
        Kind::builtin("", "v1", "pods", "Pod", true),
        Kind::builtin("apps", "v1", "deployments", "Deployment", true),
        Kind::builtin("apps", "v1", "statefulsets", "StatefulSet", true),
        Kind::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
        ),
        Kind::builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
        ),
        Kind::builtin(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            true,
        ),
        Kind::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
        Kind::builtin("events.k8s.io", "v1", "events", "Event", true),
        Kind::builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
        ),
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
        ),
        Kind::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
        ),
        Kind::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        ),
    ];
    for k in &mut kinds {
        if matches!(k.resource.as_str(), "deployments" | "statefulsets") {
            k.status = true;
            k.scale = workload_scale.clone();
        }
        if matches!(
            k.resource.as_str(),
            "services" | "poddisruptionbudgets" | "horizontalpodautoscalers" | "pods"
        ) {
            k.status = true;
        }
    }
    kinds
}

/// The kinds a CustomResourceDefinition declares (one per served version).
pub fn from_crd(crd: &Value) -> Vec<Kind> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let resource = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .map(|v| {
            let sub = &v["subresources"];
            let scale = sub
                .get("scale")
                .filter(|s| s.is_object())
                .map(|s| ScalePaths {
                    spec_replicas: s["specReplicasPath"]
                        .as_str()
                        .unwrap_or(".spec.replicas")
                        .into(),
                    status_replicas: s["statusReplicasPath"]
                        .as_str()
                        .unwrap_or(".status.replicas")
                        .into(),
                    label_selector: s["labelSelectorPath"].as_str().map(String::from),
                });
            Kind {
                group: group.clone(),
                version: v["name"].as_str().unwrap_or_default().into(),
                resource: resource.clone(),
                kind: kind.clone(),
                namespaced,
                status: sub.get("status").is_some_and(Value::is_object),
                scale,
                schema: v["schema"]["openAPIV3Schema"]
                    .as_object()
                    .map(|_| v["schema"]["openAPIV3Schema"].clone()),
            }
        })
        .collect()
}

/// Read the value at a `.a.b.c` path.
pub fn get_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(obj, |v, k| v.get(k))
}

/// Set the value at a `.a.b.c` path, creating objects on the way.
pub fn set_path(obj: &mut Value, path: &str, value: Value) {
    let keys: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for (i, k) in keys.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(serde_json::Map::new());
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == keys.len() {
            map.insert((*k).to_string(), value);
            return;
        }
        cur = map
            .entry((*k).to_string())
            .or_insert(Value::Object(serde_json::Map::new()));
    }
}
