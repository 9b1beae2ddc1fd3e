//! Server-side apply, approximated: field ownership per manager as sets of
//! leaf paths. Maps merge by key; lists merge by the keys Kubernetes
//! documents for the few list types mailrelay applies (containers, env,
//! volumes and volume mounts by name or path, ports, owner references by
//! uid, conditions by type); every other list is atomic. Conflicts arise
//! when another manager owns a field the applied config sets to a
//! different value; `force` takes the field over.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// One step of a field path: `f:name` (map key) or `k:{"key":value}`
/// (list item by key).
pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Metadata fields no manager owns.
const SERVER_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// The key of the items of list `name` (the last map key on the way).
fn list_key(name: &str, items: &[Value]) -> Option<&'static str> {
    let key = match name {
        "ownerReferences" => "uid",
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => "containerPort",
        "ports" => "port",
        _ => return None,
    };
    items.iter().all(|i| i.get(key).is_some()).then_some(key)
}

fn item_seg(key: &str, item: &Value) -> String {
    format!("k:{{\"{key}\":{}}}", item[key])
}

/// The leaf paths set in `obj` (a whole object or an applied config).
pub fn fields(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for (mk, mv) in v.as_object().into_iter().flatten() {
                    if !SERVER_FIELDS.contains(&mk.as_str()) {
                        collect(
                            mv,
                            vec!["f:metadata".into(), format!("f:{mk}")],
                            mk,
                            &mut out,
                        );
                    }
                }
            }
            _ => collect(v, vec![format!("f:{k}")], k, &mut out),
        }
    }
    out
}

fn collect(v: &Value, prefix: Path, name: &str, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = prefix.clone();
                p.push(format!("f:{k}"));
                collect(child, p, k, out);
            }
        }
        Value::Array(items) if !items.is_empty() => match list_key(name, items) {
            Some(key) => {
                for item in items {
                    let mut p = prefix.clone();
                    p.push(item_seg(key, item));
                    collect(item, p, name, out);
                }
            }
            None => {
                out.insert(prefix);
            }
        },
        _ => {
            out.insert(prefix);
        }
    }
}

/// The value at `path`, if any.
pub fn get<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        cur = step(cur, seg)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, seg: &str) -> Option<&'a Value> {
    if let Some(k) = seg.strip_prefix("f:") {
        return cur.get(k);
    }
    let (key, value) = parse_key(seg)?;
    cur.as_array()?.iter().find(|i| i.get(&key) == Some(&value))
}

fn parse_key(seg: &str) -> Option<(String, Value)> {
    let json: Value = serde_json::from_str(seg.strip_prefix("k:")?).ok()?;
    let (k, v) = json.as_object()?.iter().next()?;
    Some((k.clone(), v.clone()))
}

/// Remove the field at `path` (and list items whose last field went).
pub fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = if let Some(k) = seg.strip_prefix("f:") {
            cur.get_mut(k)
        } else {
            match parse_key(seg) {
                Some((key, value)) => cur
                    .as_array_mut()
                    .and_then(|items| items.iter_mut().find(|i| i.get(&key) == Some(&value))),
                None => None,
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(k) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(k);
        }
    } else if let (Some((key, value)), Some(items)) = (parse_key(last), cur.as_array_mut()) {
        items.retain(|i| i.get(&key) != Some(&value));
    }
}

/// Drop list items whose every field was removed.
fn sweep(v: &mut Value) {
    match v {
        Value::Object(m) => m.values_mut().for_each(sweep),
        Value::Array(items) => {
            items.retain(|i| !i.as_object().is_some_and(Map::is_empty));
            items.iter_mut().for_each(sweep);
        }
        _ => {}
    }
}

/// Merge an applied config into the live object: maps by key, keyed
/// lists by item key, anything else replaced.
pub fn merge(live: &mut Value, applied: &Value, name: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                match l.get_mut(k) {
                    Some(lv) => merge(lv, v, k),
                    None => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a))
            if list_key(name, a).is_some() && list_key(name, l).is_some() =>
        {
            let key = list_key(name, a).unwrap_or("name");
            for item in a {
                match l.iter_mut().find(|i| i.get(key) == item.get(key)) {
                    Some(li) => merge(li, item, name),
                    None => l.push(item.clone()),
                }
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// Keep only the paths under (or outside) `status`.
pub fn split_status(set: &FieldSet, status: bool) -> FieldSet {
    set.iter()
        .filter(|p| (p.first().map(String::as_str) == Some("f:status")) == status)
        .cloned()
        .collect()
}

/// Ownership of one object's fields, by manager.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Managed {
    /// manager → (operation, fields)
    pub managers: BTreeMap<String, (String, FieldSet)>,
}

/// A refused apply: the managers and fields in conflict.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflicts(pub Vec<(String, String)>);

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": {p}"))
            .collect();
        write!(
            f,
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            list.join("; ")
        )
    }
}

/// `.spec.replicas` style, for messages.
pub fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|s| {
            s.strip_prefix("f:")
                .map_or_else(|| format!("[{s}]"), |k| format!(".{k}"))
        })
        .collect()
}

impl Managed {
    /// Apply `config` for `manager` on `live` (which is changed in place).
    /// `status` selects the status subresource's fields (or the rest).
    pub fn apply(
        &mut self,
        live: &mut Value,
        config: &Value,
        manager: &str,
        force: bool,
        status: bool,
    ) -> Result<(), Conflicts> {
        let new_fields = split_status(&fields(config), status);
        let mut conflicts = Vec::new();
        for (other, (_, owned)) in &self.managers {
            if other == manager {
                continue;
            }
            for p in new_fields.intersection(owned) {
                if get(live, p) != get(config, p) {
                    conflicts.push((other.clone(), dotted(p)));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Conflicts(conflicts));
        }
        for (other, (_, owned)) in self.managers.iter_mut() {
            if other != manager {
                owned.retain(|p| !new_fields.contains(p));
            }
        }
        let before = self
            .managers
            .get(manager)
            .map(|(_, f)| split_status(f, status))
            .unwrap_or_default();
        let mut applied = config.clone();
        if let Some(m) = applied.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                for f in SERVER_FIELDS {
                    meta.remove(*f);
                }
            }
            if status {
                m.retain(|k, _| k == "status");
            } else {
                m.remove("status");
            }
        }
        merge(live, &applied, "");
        for p in before.difference(&new_fields) {
            let owned_elsewhere = self
                .managers
                .iter()
                .any(|(m, (_, f))| m != manager && f.contains(p));
            if !owned_elsewhere {
                remove(live, p);
            }
        }
        sweep(live);
        let entry = self
            .managers
            .entry(manager.to_string())
            .or_insert_with(|| ("Apply".into(), FieldSet::new()));
        entry.0 = "Apply".into();
        entry
            .1
            .retain(|p| (p.first().map(String::as_str) == Some("f:status")) != status);
        entry.1.extend(new_fields);
        self.managers.retain(|_, (_, f)| !f.is_empty());
        Ok(())
    }

    /// A non-apply write by `manager` changed `old` into `new`: it owns
    /// what it changed; fields it removed belong to nobody.
    pub fn update(&mut self, old: &Value, new: &Value, manager: &str) {
        let (old_f, new_f) = (fields(old), fields(new));
        let changed: FieldSet = new_f
            .iter()
            .filter(|p| get(old, p) != get(new, p))
            .cloned()
            .collect();
        let gone: FieldSet = old_f.difference(&new_f).cloned().collect();
        for (m, (_, owned)) in self.managers.iter_mut() {
            if m != manager {
                owned.retain(|p| !changed.contains(p));
            }
            owned.retain(|p| !gone.contains(p));
        }
        if !changed.is_empty() {
            let entry = self
                .managers
                .entry(manager.to_string())
                .or_insert_with(|| ("Update".into(), FieldSet::new()));
            entry.1.extend(changed);
        }
        self.managers.retain(|_, (_, f)| !f.is_empty());
    }

    /// As `metadata.managedFields`.
    pub fn to_json(&self, api_version: &str) -> Value {
        Value::Array(
            self.managers
                .iter()
                .map(|(m, (op, set))| {
                    serde_json::json!({
                        "manager": m, "operation": op, "apiVersion": api_version,
                        "fieldsType": "FieldsV1", "fieldsV1": tree(set),
                    })
                })
                .collect(),
        )
    }

    /// From `metadata.managedFields`.
    pub fn from_json(v: &Value) -> Self {
        let mut managers = BTreeMap::new();
        for e in v.as_array().into_iter().flatten() {
            let mut set = FieldSet::new();
            untree(&e["fieldsV1"], &mut Vec::new(), &mut set);
            managers.insert(
                e["manager"].as_str().unwrap_or_default().to_string(),
                (e["operation"].as_str().unwrap_or("Update").to_string(), set),
            );
        }
        Self { managers }
    }
}

fn tree(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            let next = cur.entry(seg.clone()).or_insert(Value::Object(Map::new()));
            match next.as_object_mut() {
                Some(m) => cur = m,
                None => break,
            }
        }
    }
    Value::Object(root)
}

fn untree(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                untree(child, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_owned_field_left_out_is_removed_unless_another_manager_owns_it() {
        let mut live = json!({});
        let mut m = Managed::default();
        m.apply(
            &mut live,
            &json!({"spec": {"replicas": 2, "image": "a"}}),
            "op",
            false,
            false,
        )
        .unwrap();
        assert_eq!(live, json!({"spec": {"replicas": 2, "image": "a"}}));
        let old = live.clone();
        live["spec"]["replicas"] = json!(5);
        m.update(&old, &live, "hpa");
        m.apply(
            &mut live,
            &json!({"spec": {"image": "b"}}),
            "op",
            false,
            false,
        )
        .unwrap();
        assert_eq!(
            live,
            json!({"spec": {"replicas": 5, "image": "b"}}),
            "replicas now belong to the scaler"
        );
        m.apply(&mut live, &json!({"spec": {}}), "op", false, false)
            .unwrap();
        assert_eq!(live, json!({"spec": {"replicas": 5}}));
    }

    #[test]
    fn conflicting_values_need_force_and_force_takes_the_field() {
        let mut live = json!({});
        let mut m = Managed::default();
        m.apply(&mut live, &json!({"data": {"a": "1"}}), "one", false, false)
            .unwrap();
        let e = m
            .apply(&mut live, &json!({"data": {"a": "2"}}), "two", false, false)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Apply failed with 1 conflict: conflict with \"one\": .data.a"
        );
        m.apply(&mut live, &json!({"data": {"a": "1"}}), "two", false, false)
            .unwrap();
        m.apply(&mut live, &json!({"data": {"a": "3"}}), "two", true, false)
            .unwrap();
        assert_eq!(live["data"]["a"], "3");
        assert!(!m.managers.contains_key("one"), "it owned nothing else");
    }

    #[test]
    fn keyed_lists_merge_by_key_and_managed_fields_round_trip() {
        let mut live = json!({});
        let mut m = Managed::default();
        let cfg = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        m.apply(&mut live, &cfg, "op", false, false).unwrap();
        let cfg2 = json!({"spec": {"containers": [{"name": "b", "image": "z"}]}});
        m.apply(&mut live, &cfg2, "op", false, false).unwrap();
        assert_eq!(
            live,
            json!({"spec": {"containers": [{"name": "b", "image": "z"}]}})
        );
        let back = Managed::from_json(&m.to_json("v1"));
        assert_eq!(back, m);
    }
}
