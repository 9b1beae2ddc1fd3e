//! The API server side of a `tower-test` mock: every request the client
//! makes is recorded (method, path, query, body) and answered from a small
//! in-memory object store, so a test can assert exactly which calls a
//! reconcile made and what they carried. Server-side apply is modelled as
//! "the applied body becomes the object" (one field manager, as the
//! operator uses); status and scale subresources write only their part.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the API server saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    /// `?fieldManager=mailrelay-operator&force=true` apply patch?
    pub fn is_apply(&self) -> bool {
        self.method == Method::PATCH && self.content_type.starts_with("application/apply-patch")
    }

    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }
}

pub use kube_sim::http::target;

type Key = (String, String, String, String); // group, resource, namespace, name

#[derive(Default)]
pub struct State {
    pub calls: Vec<Call>,
    pub objects: BTreeMap<Key, Value>,
    /// Resources (group, resource) the server answers 404 for, as for a
    /// CRD that is not installed.
    pub unknown: Vec<(String, String)>,
    next_uid: u64,
    resource_version: u64,
}

/// The fake API server; clone freely.
#[derive(Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client whose every request this fake answers.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = me.handle(request).await;
                send.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    /// Take the calls recorded so far.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    pub fn get(&self, group: &str, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (
            group.to_string(),
            resource.to_string(),
            ns.to_string(),
            name.to_string(),
        );
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Put an object in the store (as if someone else had written it).
    pub fn put(&self, group: &str, resource: &str, ns: &str, name: &str, obj: Value) {
        let key = (
            group.to_string(),
            resource.to_string(),
            ns.to_string(),
            name.to_string(),
        );
        self.state.lock().unwrap().objects.insert(key, obj);
    }

    pub fn objects_of(&self, group: &str, resource: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((g, r, _, _), _)| g == group && r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let call = Call {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body,
        };
        let mut state = self.state.lock().unwrap();
        state.calls.push(call.clone());
        let (status, value) = answer(&mut state, &call);
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap()
    }
}

fn status_error(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()
        }),
    )
}

fn answer(state: &mut State, call: &Call) -> (StatusCode, Value) {
    let Some(t) = target(&call.path) else {
        return status_error(StatusCode::NOT_FOUND, "NotFound", "no such path");
    };
    if state
        .unknown
        .contains(&(t.group.clone(), t.resource.clone()))
    {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let key = |name: &str| {
        (
            t.group.clone(),
            t.resource.clone(),
            ns.clone(),
            name.to_string(),
        )
    };
    state.resource_version += 1;
    let rv = state.resource_version.to_string();
    match (&call.method, &t.name, t.subresource.as_deref()) {
        (&Method::GET, None, None) => {
            if call.query.contains("watch=true") {
                // An empty watch: it ends at once and the client re-lists.
                return (StatusCode::OK, Value::Null);
            }
            let selector = query_param(&call.query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((g, r, n, _), _)| {
                    *g == t.group && *r == t.resource && (t.namespace.is_none() || *n == ns)
                })
                .filter(|(_, v)| matches_selector(v, &selector))
                .map(|(_, v)| v.clone())
                .collect();
            (
                StatusCode::OK,
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        (&Method::GET, Some(name), sub) => match state.objects.get(&key(name)) {
            Some(obj) if sub == Some("scale") => (StatusCode::OK, scale_of(obj)),
            Some(obj) => (StatusCode::OK, obj.clone()),
            None => status_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{name}\" not found", t.resource),
            ),
        },
        (&Method::POST, None, None) => {
            let mut obj = call.body.clone().unwrap_or(Value::Null);
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let name = if name.is_empty() {
                format!(
                    "{}{}",
                    obj["metadata"]["generateName"].as_str().unwrap_or("obj-"),
                    rv
                )
            } else {
                name
            };
            if state.objects.contains_key(&key(&name)) {
                return status_error(StatusCode::CONFLICT, "AlreadyExists", "already exists");
            }
            state.next_uid += 1;
            obj["metadata"]["name"] = json!(name);
            obj["metadata"]["uid"] = json!(format!("uid-{}", state.next_uid));
            obj["metadata"]["resourceVersion"] = json!(rv);
            state.objects.insert(key(&name), obj.clone());
            (StatusCode::CREATED, obj)
        }
        (&Method::PUT, Some(name), None) => {
            let mut obj = call.body.clone().unwrap_or(Value::Null);
            let stale = state.objects.get(&key(name)).is_some_and(|old| {
                obj["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]
            });
            if stale {
                return status_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            obj["metadata"]["resourceVersion"] = json!(rv);
            state.objects.insert(key(name), obj.clone());
            (StatusCode::OK, obj)
        }
        (&Method::PATCH, Some(name), None) if call.is_apply() => {
            let mut obj = call.body.clone().unwrap_or(Value::Null);
            let old = state.objects.get(&key(name)).cloned();
            // A second manager applying part of an object (the replicas):
            // its fields merge into what is there.
            let partial = query_param(&call.query, "fieldManager").as_deref()
                == Some("mailrelay-operator-replicas");
            if let (true, Some(o)) = (partial, &old) {
                let mut merged = o.clone();
                merged["spec"]["replicas"] = obj["spec"]["replicas"].clone();
                obj = merged;
            }
            let uid = match old.as_ref().and_then(|o| o["metadata"]["uid"].as_str()) {
                Some(u) => u.to_string(),
                None => {
                    state.next_uid += 1;
                    format!("uid-{}", state.next_uid)
                }
            };
            if let Some(o) = &old {
                // Fields the operator does not apply survive, as with SSA:
                // the status, and replicas another manager owns.
                if !o["status"].is_null() {
                    obj["status"] = o["status"].clone();
                }
                if obj["spec"].is_object()
                    && obj["spec"]["replicas"].is_null()
                    && !o["spec"]["replicas"].is_null()
                {
                    obj["spec"]["replicas"] = o["spec"]["replicas"].clone();
                }
            }
            let generation = match &old {
                Some(o) if o["spec"] == obj["spec"] => {
                    o["metadata"]["generation"].as_i64().unwrap_or(1)
                }
                Some(o) => o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                None => 1,
            };
            obj["metadata"]["uid"] = json!(uid);
            obj["metadata"]["generation"] = json!(generation);
            obj["metadata"]["resourceVersion"] = json!(rv);
            state.objects.insert(key(name), obj.clone());
            (StatusCode::OK, obj)
        }
        (&Method::PATCH, Some(name), Some("status")) => match state.objects.get_mut(&key(name)) {
            Some(obj) => {
                obj["status"] = call
                    .body
                    .as_ref()
                    .map(|b| b["status"].clone())
                    .unwrap_or(Value::Null);
                obj["metadata"]["resourceVersion"] = json!(rv);
                (StatusCode::OK, obj.clone())
            }
            None => status_error(StatusCode::NOT_FOUND, "NotFound", "not found"),
        },
        (&Method::PATCH, Some(name), Some("scale")) => match state.objects.get_mut(&key(name)) {
            Some(obj) => {
                let replicas = call
                    .body
                    .as_ref()
                    .map(|b| b["spec"]["replicas"].clone())
                    .unwrap_or(Value::Null);
                obj["spec"]["replicas"] = replicas;
                (StatusCode::OK, scale_of(obj))
            }
            None => status_error(StatusCode::NOT_FOUND, "NotFound", "not found"),
        },
        (&Method::PATCH, Some(name), None) => match state.objects.get_mut(&key(name)) {
            // A merge patch (the event recorder's series updates).
            Some(obj) => {
                merge(obj, call.body.as_ref().unwrap_or(&Value::Null));
                (StatusCode::OK, obj.clone())
            }
            None => status_error(StatusCode::NOT_FOUND, "NotFound", "not found"),
        },
        (&Method::DELETE, Some(name), None) => match state.objects.remove(&key(name)) {
            Some(obj) => (StatusCode::OK, obj),
            None => status_error(StatusCode::NOT_FOUND, "NotFound", "not found"),
        },
        _ => status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not modelled",
        ),
    }
}

fn scale_of(obj: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"]},
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0)}
    })
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based selectors (`a=b,c=d`), which is all the operator sends.
fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|req| match req.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
            None => false,
        })
}
