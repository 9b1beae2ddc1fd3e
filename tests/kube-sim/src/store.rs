//! Objects, resource versions, the event log watches read from, and the
//! semantics of writes: generation, status and scale subresources,
//! optimistic concurrency, server-side apply, finalizers and garbage
//! collection by owner reference.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::resources::{Kind, builtins, from_crd, get_path, set_path};
use crate::schema;
use crate::ssa::Managed;

/// (group, resource, namespace, name); namespace empty for cluster scope.
pub type Key = (String, String, String, String);

/// How many events a watch can resume from; older resource versions get
/// `410 Gone`, as from an API server whose watch cache moved on.
pub const LOG_SIZE: usize = 10_000;

/// A change, as watches see it.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub type_: &'static str,
    pub key: Key,
    pub object: Value,
}

/// An API error, turned into a `Status` by the HTTP layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub causes: Vec<schema::Cause>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    pub fn not_found(kind: &Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified()),
        )
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if !self.causes.is_empty() {
            s["details"] = json!({"causes": self.causes.iter().map(|c| json!({
                "reason": "FieldValueInvalid", "message": c.message, "field": c.field
            })).collect::<Vec<_>>()});
        }
        s
    }
}

/// How a PATCH body is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Apply { force: bool },
}

/// Which part of the object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    Scale,
}

pub struct Store {
    pub kinds: Vec<Kind>,
    pub objects: BTreeMap<Key, Value>,
    rv: u64,
    uid: u64,
    log: VecDeque<Event>,
    pub events: broadcast::Sender<Event>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Everything but metadata and status: what moves `metadata.generation`.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl Store {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(LOG_SIZE);
        Self {
            kinds: builtins(),
            objects: BTreeMap::new(),
            rv: 1,
            uid: 0,
            log: VecDeque::new(),
            events,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Oldest resource version a watch can still resume after.
    pub fn oldest_resumable(&self) -> u64 {
        self.log.front().map_or(self.rv, |e| e.rv.saturating_sub(1))
    }

    /// Events after `rv`, for a resuming watch.
    pub fn events_after(&self, rv: u64) -> Vec<Event> {
        self.log.iter().filter(|e| e.rv > rv).cloned().collect()
    }

    pub fn kind(&self, group: &str, version: &str, resource: &str) -> Option<&Kind> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.resource == resource)
    }

    fn emit(&mut self, type_: &'static str, key: Key, object: Value) {
        let e = Event {
            rv: self.rv,
            type_,
            key,
            object,
        };
        if self.log.len() >= LOG_SIZE {
            self.log.pop_front();
        }
        self.log.push_back(e.clone());
        let _ = self.events.send(e);
    }

    fn key(kind: &Kind, ns: &str, name: &str) -> Key {
        (
            kind.group.clone(),
            kind.resource.clone(),
            if kind.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    /// The object as the given version of its kind shows it.
    fn shown(kind: &Kind, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(kind.api_version());
        o["kind"] = json!(kind.kind);
        o
    }

    pub fn get(&self, kind: &Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(kind, ns, name))
            .map(|o| Self::shown(kind, o))
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Objects of `kind` (in `ns` when given) that `filter` accepts.
    pub fn list(
        &self,
        kind: &Kind,
        ns: Option<&str>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((g, r, n, _), _)| {
                *g == kind.group && *r == kind.resource && ns.is_none_or(|ns| n == ns)
            })
            .filter(|(_, o)| filter(o))
            .map(|(_, o)| Self::shown(kind, o))
            .collect()
    }

    /// RBAC objects, for authorization.
    pub fn rbac_objects(&self) -> Vec<(String, String, Value)> {
        self.objects
            .iter()
            .filter(|((g, _, _, _), _)| g == "rbac.authorization.k8s.io")
            .map(|((_, r, n, _), o)| (r.clone(), n.clone(), o.clone()))
            .collect()
    }

    fn admit(&self, kind: &Kind, obj: Value, old: Option<&Value>) -> Result<Value, ApiError> {
        let Some(schema) = &kind.schema else {
            return Ok(obj);
        };
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        schema::admit(obj, old, schema).map_err(|causes| {
            let list: Vec<String> = causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect();
            ApiError {
                code: 422,
                reason: "Invalid",
                message: format!("{} \"{name}\" is invalid: {}", kind.kind, list.join(", ")),
                causes,
            }
        })
    }

    /// Store `new` (`old` when it replaces an object) and tell watchers.
    fn commit(
        &mut self,
        kind: &Kind,
        key: Key,
        old: Option<&Value>,
        mut new: Value,
        managed: Managed,
    ) -> Result<Value, ApiError> {
        let generation = match old {
            None => 1,
            Some(o) => {
                let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                if spec_of(o) != spec_of(&new) {
                    g + 1
                } else {
                    g
                }
            }
        };
        new["metadata"]["generation"] = json!(generation);
        new["metadata"]["managedFields"] = managed.to_json(&kind.api_version());
        if new["metadata"]["managedFields"]
            .as_array()
            .is_some_and(Vec::is_empty)
        {
            new["metadata"]
                .as_object_mut()
                .map(|m| m.remove("managedFields"));
        }
        // A write that changes nothing is no change: same resource
        // version, no event (as the API server does for a no-op apply).
        if let Some(o) = old {
            new["metadata"]["resourceVersion"] = o["metadata"]["resourceVersion"].clone();
            if *o == new {
                return Ok(Self::shown(kind, o));
            }
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let deleting = new["metadata"]
            .get("deletionTimestamp")
            .is_some_and(|t| !t.is_null());
        let finalizers = new["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            self.objects.remove(&key);
            self.emit("DELETED", key.clone(), Self::shown(kind, &new));
            self.collect_garbage(&new);
            return Ok(Self::shown(kind, &new));
        }
        if kind.resource == "customresourcedefinitions" {
            self.register(&new);
        }
        self.objects.insert(key.clone(), new.clone());
        self.emit(
            if old.is_some() { "MODIFIED" } else { "ADDED" },
            key.clone(),
            Self::shown(kind, &new),
        );
        // The garbage collector deletes a dependent whose owners are all
        // gone, also one written after its owner was deleted.
        if !deleting && self.orphaned(&new) {
            let _ = self.delete(kind, &key.2, &key.3);
        }
        Ok(Self::shown(kind, &new))
    }

    fn register(&mut self, crd: &Value) {
        for k in from_crd(crd) {
            self.kinds.retain(|x| {
                !(x.group == k.group && x.version == k.version && x.resource == k.resource)
            });
            self.kinds.push(k);
        }
    }

    pub fn create(
        &mut self,
        kind: &Kind,
        ns: &str,
        mut obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => name = format!("{prefix}{}", self.rv + 1),
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("{} is invalid: metadata.name: Required value", kind.kind),
                    ));
                }
            }
        }
        let key = Self::key(kind, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.qualified()),
            ));
        }
        self.uid += 1;
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if kind.namespaced {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        meta["creationTimestamp"] = json!(now());
        if let Some(m) = meta.as_object_mut() {
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
        }
        let obj = self.admit(kind, obj, None)?;
        let mut managed = Managed::default();
        managed.update(&json!({}), &obj, manager);
        self.commit(kind, key, None, obj, managed)
    }

    /// PUT: replace the object (or its status), checking the resource
    /// version when the body carries one.
    pub fn replace(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        body: Value,
        part: Part,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let key = Self::key(kind, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
            && old["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.qualified()
                ),
            ));
        }
        if part == Part::Scale {
            return self.set_scale(kind, &key, &old, &body, manager);
        }
        let new = self.shape(kind, &old, body, part);
        self.write(kind, key, &old, new, manager)
    }

    /// Keep what the addressed part may not change.
    fn shape(&self, kind: &Kind, old: &Value, mut new: Value, part: Part) -> Value {
        match part {
            Part::Status => {
                let mut o = old.clone();
                o["status"] = new["status"].take();
                o
            }
            _ => {
                for f in [
                    "uid",
                    "creationTimestamp",
                    "name",
                    "namespace",
                    "deletionTimestamp",
                ] {
                    new["metadata"][f] = old["metadata"][f].clone();
                }
                if kind.status {
                    new["status"] = old["status"].clone();
                }
                new
            }
        }
    }

    fn write(
        &mut self,
        kind: &Kind,
        key: Key,
        old: &Value,
        new: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let new = self.admit(kind, new, Some(old))?;
        let mut managed = Managed::from_json(&old["metadata"]["managedFields"]);
        managed.update(old, &new, manager);
        self.commit(kind, key, Some(old), new, managed)
    }

    // The request's parts, as the HTTP layer has them; a struct would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        patch: &Value,
        ty: PatchType,
        part: Part,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let key = Self::key(kind, ns, name);
        let old = self.objects.get(&key).cloned();
        match ty {
            PatchType::Merge => {
                let Some(old) = old else {
                    return Err(ApiError::not_found(kind, name));
                };
                if part == Part::Scale {
                    let mut scale = self.scale_of(kind, &old);
                    merge_patch(&mut scale, patch);
                    return self.set_scale(kind, &key, &old, &scale, manager);
                }
                let mut new = old.clone();
                merge_patch(&mut new, patch);
                let new = self.shape(kind, &old, new, part);
                self.write(kind, key, &old, new, manager)
            }
            PatchType::Apply { force } => {
                if part == Part::Scale {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "apply to scale is not modelled",
                    ));
                }
                let (exists, mut live) = match &old {
                    Some(o) => (true, o.clone()),
                    None if part == Part::Status => return Err(ApiError::not_found(kind, name)),
                    None => (false, json!({"metadata": {"name": name}})),
                };
                let mut managed = Managed::from_json(&live["metadata"]["managedFields"]);
                managed
                    .apply(&mut live, patch, manager, force, part == Part::Status)
                    .map_err(|c| ApiError::new(409, "Conflict", c.to_string()))?;
                if !exists {
                    // Create through the same path as POST, keeping ownership.
                    self.uid += 1;
                    live["metadata"]["uid"] =
                        json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
                    live["metadata"]["creationTimestamp"] = json!(now());
                    if kind.namespaced {
                        live["metadata"]["namespace"] = json!(ns);
                    }
                    let live = self.admit(kind, live, None)?;
                    return self.commit(kind, key, None, live, managed);
                }
                let old = old.unwrap_or_default();
                let live = self.admit(kind, live, Some(&old))?;
                self.commit(kind, key, Some(&old), live, managed)
            }
        }
    }

    pub fn scale_of(&self, kind: &Kind, obj: &Value) -> Value {
        let Some(paths) = &kind.scale else {
            return Value::Null;
        };
        let selector = paths
            .label_selector
            .as_deref()
            .and_then(|p| get_path(obj, p))
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| {
                obj["spec"]["selector"]["matchLabels"].as_object().map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
            });
        json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
                         "resourceVersion": obj["metadata"]["resourceVersion"], "uid": obj["metadata"]["uid"]},
            "spec": {"replicas": get_path(obj, &paths.spec_replicas).cloned().unwrap_or(json!(0))},
            "status": {"replicas": get_path(obj, &paths.status_replicas).cloned().unwrap_or(json!(0)),
                       "selector": selector},
        })
    }

    fn set_scale(
        &mut self,
        kind: &Kind,
        key: &Key,
        old: &Value,
        scale: &Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let Some(paths) = kind.scale.clone() else {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("{} has no scale subresource", kind.qualified()),
            ));
        };
        let mut new = old.clone();
        set_path(
            &mut new,
            &paths.spec_replicas,
            scale["spec"]["replicas"].clone(),
        );
        let written = self.write(kind, key.clone(), old, new, manager)?;
        Ok(self.scale_of(kind, &written))
    }

    /// DELETE: gone now, or marked for deletion while finalizers remain.
    pub fn delete(&mut self, kind: &Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        let key = Self::key(kind, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        let mut new = old.clone();
        if new["metadata"]["deletionTimestamp"].is_null() {
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        let managed = Managed::from_json(&old["metadata"]["managedFields"]);
        self.commit(kind, key, Some(&old), new, managed)
    }

    /// Has `obj` owner references, none of whose owners exists?
    fn orphaned(&self, obj: &Value) -> bool {
        let uids: Vec<&str> = obj["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["uid"].as_str())
            .collect();
        !uids.is_empty()
            && !self.objects.values().any(|o| {
                o["metadata"]["uid"]
                    .as_str()
                    .is_some_and(|u| uids.contains(&u))
            })
    }

    /// Background garbage collection: delete every object `owner` owned.
    fn collect_garbage(&mut self, owner: &Value) {
        let Some(uid) = owner["metadata"]["uid"].as_str().map(String::from) else {
            return;
        };
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["uid"].as_str() == Some(uid.as_str()))
            })
            // A dependent with another owner still alive stays.
            .filter(|(_, o)| self.orphaned(o))
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            let kind = self
                .kinds
                .iter()
                .find(|k| k.group == key.0 && k.resource == key.1)
                .cloned();
            if let Some(kind) = kind {
                let _ = self.delete(&kind, &key.2, &key.3);
            }
        }
    }
}
