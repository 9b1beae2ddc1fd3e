//! Authorization, as RBAC does it, from the Roles, ClusterRoles and their
//! bindings stored in the simulator: so the operator runs with exactly the
//! role the chart installs, and relay pods with the Role the operator
//! makes for them.

use serde_json::Value;

/// Who is asking for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub group: String,
    /// `relays` or `relays/status`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Attributes {
    /// The API server's wording of a denial.
    pub fn forbidden_message(&self) -> String {
        let (res, sub) = match self.resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (self.resource.as_str(), None),
        };
        let qualified = if self.group.is_empty() {
            res.to_string()
        } else {
            format!("{res}.{}", self.group)
        };
        let object = match &self.name {
            Some(n) => format!("{qualified} \"{n}\" is forbidden"),
            None => format!("{qualified} is forbidden"),
        };
        let resource = match sub {
            Some(s) => format!("{res}/{s}"),
            None => res.to_string(),
        };
        let scope = match &self.namespace {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_string(),
        };
        format!(
            "{object}: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}",
            self.user, self.verb, self.group
        )
    }
}

/// An RBAC object from the store: (resource, namespace, object).
pub type Stored<'a> = (&'a str, &'a str, &'a Value);

fn subject_matches(subject: &Value, a: &Attributes) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => a.user == name,
        Some("Group") => a.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or_default();
            a.user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|x| x == "*" || x == want)
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let names: Vec<&str> = rule["resourceNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let resource_ok = has(&rule["resources"], &a.resource)
        || a.resource
            .split_once('/')
            .is_some_and(|(r, _)| has(&rule["resources"], &format!("{r}/*")));
    has(&rule["verbs"], &a.verb)
        && has(&rule["apiGroups"], &a.group)
        && resource_ok
        && (names.is_empty() || a.name.as_deref().is_some_and(|n| names.contains(&n)))
}

/// Is the request allowed by the stored RBAC objects?
pub fn allowed<'a>(objects: impl Iterator<Item = Stored<'a>> + Clone, a: &Attributes) -> bool {
    if a.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let role = |kind: &str, name: &str, ns: &str| -> Option<&'a Value> {
        objects.clone().find_map(|(r, n, o)| {
            let fits = match kind {
                "ClusterRole" => r == "clusterroles",
                _ => r == "roles" && n == ns,
            };
            (fits && o["metadata"]["name"].as_str() == Some(name)).then_some(o)
        })
    };
    for (resource, ns, binding) in objects.clone() {
        let scope_ok = match resource {
            "clusterrolebindings" => true,
            "rolebindings" => a.namespace.as_deref() == Some(ns),
            _ => false,
        };
        if !scope_ok
            || !binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| subject_matches(s, a))
        {
            continue;
        }
        let role_ref = &binding["roleRef"];
        let Some(r) = role(
            role_ref["kind"].as_str().unwrap_or_default(),
            role_ref["name"].as_str().unwrap_or_default(),
            ns,
        ) else {
            continue;
        };
        if r["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| rule_allows(rule, a))
        {
            return true;
        }
    }
    false
}

/// The rules a Role or ClusterRole write grants, or a binding's role holds:
/// RBAC lets a user grant only what it holds itself (the escalation check).
/// The first rule entry the caller does not hold, in the API's wording.
pub fn escalation<'a>(
    objects: impl Iterator<Item = Stored<'a>> + Clone,
    caller: &Attributes,
    rules: &Value,
) -> Option<String> {
    for rule in rules.as_array().into_iter().flatten() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        };
        let names = list("resourceNames");
        let names: Vec<Option<String>> = if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    for name in &names {
                        let a = Attributes {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            name: name.clone(),
                            ..caller.clone()
                        };
                        if !allowed(objects.clone(), &a) {
                            return Some(format!(
                                "user \"{}\" is attempting to grant RBAC permissions not currently held: {{APIGroups:[\"{group}\"], Resources:[\"{resource}\"], ResourceNames:[{}], Verbs:[\"{verb}\"]}}",
                                caller.user,
                                name.as_deref()
                                    .map(|n| format!("\"{n}\""))
                                    .unwrap_or_default()
                            ));
                        }
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, resource: &str, name: Option<&str>) -> Attributes {
        Attributes {
            user: "system:serviceaccount:mail:edge".into(),
            groups: vec![],
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            namespace: Some("mail".into()),
            name: name.map(String::from),
        }
    }

    #[test]
    fn a_role_by_resource_names_allows_those_objects_only() {
        let role = json!({"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["edge-config"], "verbs": ["get", "watch", "list"]}]});
        let binding = json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "edge", "namespace": "mail"}]});
        let objs = [("roles", "mail", &role), ("rolebindings", "mail", &binding)];
        assert!(allowed(
            objs.iter().copied(),
            &attrs("watch", "configmaps", Some("edge-config"))
        ));
        assert!(
            !allowed(objs.iter().copied(), &attrs("watch", "configmaps", None)),
            "a watch without the name selector"
        );
        assert!(!allowed(
            objs.iter().copied(),
            &attrs("get", "configmaps", Some("other"))
        ));
        assert!(!allowed(
            objs.iter().copied(),
            &attrs("get", "secrets", Some("edge-config"))
        ));
        let denied = attrs("patch", "configmaps", Some("x"));
        assert_eq!(
            denied.forbidden_message(),
            "configmaps \"x\" is forbidden: User \"system:serviceaccount:mail:edge\" cannot patch resource \"configmaps\" in API group \"\" in the namespace \"mail\""
        );
    }
}
