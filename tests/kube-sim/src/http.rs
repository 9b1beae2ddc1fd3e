//! The REST API over HTTP/1.1: paths, verbs, authentication by bearer
//! token, authorization, discovery, and watches streamed as JSON lines.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::rbac::{self, Attributes};
use crate::resources::Kind;
use crate::store::{ApiError, Part, PatchType, Store};

pub type Body = BoxBody<Bytes, Infallible>;

/// A user the server knows, by bearer token.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// One request as the server saw it (for tests to inspect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub user: String,
    /// Which token: lets a test tell two clients of one user apart.
    pub token: String,
    pub verb: String,
    pub path: String,
    pub code: u16,
    /// The API's message for errors (a 403 names the request).
    pub message: String,
}

pub struct Shared {
    pub store: Mutex<Store>,
    pub users: Mutex<Vec<(String, User)>>,
    pub records: Mutex<Vec<Record>>,
    /// How often watches get a bookmark.
    pub bookmark_every: Duration,
}

fn full(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &ApiError) -> Response<Body> {
    full(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(n) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(n);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed resource path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    /// Plural, as in the path.
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parse `/api/v1/...` and `/apis/GROUP/VERSION/...` resource paths.
pub fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (String::new(), (*v).to_string(), rest),
        ["apis", g, v, rest @ ..] => ((*g).to_string(), (*v).to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some((*n).to_string()), None),
        [r, n, s] => (*r, Some((*n).to_string()), Some((*s).to_string())),
        _ => return None,
    };
    Some(Target {
        group,
        version,
        namespace,
        resource: resource.into(),
        name,
        subresource: sub,
    })
}

/// Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`.
pub fn selector_matches(selector: &str, labels: &Value) -> bool {
    let mut reqs = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                reqs.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    reqs.push(cur);
    reqs.iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .all(|r| {
            let label = |k: &str| labels[k.trim()].as_str().map(String::from);
            let set = |s: &str| -> Vec<String> {
                s.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .collect()
            };
            if let Some((k, v)) = r.split_once("!=") {
                label(k).as_deref() != Some(v.trim())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                label(k).as_deref() == Some(v.trim())
            } else if let Some((k, v)) = r.split_once(" notin ") {
                label(k).is_none_or(|l| !set(v).contains(&l))
            } else if let Some((k, v)) = r.split_once(" in ") {
                label(k).is_some_and(|l| set(v).contains(&l))
            } else if let Some(k) = r.strip_prefix('!') {
                label(k).is_none()
            } else {
                label(r).is_some()
            }
        })
}

fn field_matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|req| {
        let (neg, (k, v)) = match req.split_once("!=") {
            Some(kv) => (true, kv),
            None => (
                false,
                req.split_once("==")
                    .or_else(|| req.split_once('='))
                    .unwrap_or((req, "")),
            ),
        };
        let actual = k
            .trim()
            .split('.')
            .try_fold(obj, |o, p| o.get(p))
            .and_then(Value::as_str)
            .unwrap_or_default();
        (actual == v.trim()) != neg
    })
}

/// The name a `metadata.name=X` field selector pins (for RBAC).
fn pinned_name(fields: &str) -> Option<String> {
    fields.split(',').find_map(|r| {
        r.strip_prefix("metadata.name=")
            .map(|v| v.trim_start_matches('=').to_string())
    })
}

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = req.uri().query().unwrap_or_default().to_string();
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let user = shared
        .users
        .lock()
        .ok()
        .and_then(|u| u.iter().find(|(t, _)| *t == token).map(|(_, u)| u.clone()));
    let Some(user) = user else {
        return Ok(error(&ApiError::new(401, "Unauthorized", "Unauthorized")));
    };
    let record = |verb: &str, code: u16, message: String| {
        if let Ok(mut r) = shared.records.lock() {
            r.push(Record {
                user: user.name.clone(),
                token: token.clone(),
                verb: verb.into(),
                path: format!("{path}?{q}"),
                code,
                message,
            });
        }
    };
    if let Some(resp) = discovery(&shared, &path) {
        record("get", 200, String::new());
        return Ok(resp);
    }
    let Some(t) = target(&path) else {
        return Ok(error(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
    };
    let kind = shared
        .store
        .lock()
        .ok()
        .and_then(|s| s.kind(&t.group, &t.version, &t.resource).cloned());
    let Some(kind) = kind else {
        record("?", 404, String::new());
        return Ok(error(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
    };
    let watch = query(&q, "watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&method, &t.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => "unknown",
    };
    let fields = query(&q, "fieldSelector").unwrap_or_default();
    let attrs = Attributes {
        user: user.name.clone(),
        groups: user.groups.clone(),
        verb: verb.into(),
        group: t.group.clone(),
        resource: match &t.subresource {
            Some(s) => format!("{}/{s}", t.resource),
            None => t.resource.clone(),
        },
        namespace: t.namespace.clone(),
        name: t.name.clone().or_else(|| pinned_name(&fields)),
    };
    let allowed = shared.store.lock().is_ok_and(|s| {
        let objs = s.rbac_objects();
        rbac::allowed(
            objs.iter().map(|(r, n, o)| (r.as_str(), n.as_str(), o)),
            &attrs,
        )
    });
    if !allowed {
        let e = ApiError::new(403, "Forbidden", attrs.forbidden_message());
        record(verb, 403, e.message.clone());
        return Ok(error(&e));
    }
    if let Some(e) = escalation_check(&shared, &t, &attrs, verb, &body) {
        record(verb, 403, e.message.clone());
        return Ok(error(&e));
    }
    if verb == "watch" {
        record(verb, 200, String::new());
        return Ok(watch_response(
            shared.clone(),
            kind,
            t.namespace.clone(),
            &q,
        ));
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let part = match t.subresource.as_deref() {
        None => Part::Main,
        Some("status") if kind.status => Part::Status,
        Some("scale") if kind.scale.is_some() => Part::Scale,
        Some(_) => {
            record(verb, 404, String::new());
            return Ok(error(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )));
        }
    };
    let manager = query(&q, "fieldManager").unwrap_or_else(|| "unknown".into());
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok().or_else(|| {
            std::str::from_utf8(&body)
                .ok()
                .and_then(|s| serde_saphyr::from_str::<Value>(s).ok())
        })
    };
    let result = {
        let Ok(mut store) = shared.store.lock() else {
            return Ok(error(&ApiError::new(
                500,
                "InternalError",
                "store lock poisoned",
            )));
        };
        match (verb, &t.name) {
            ("get", Some(name)) => store.get(&kind, &ns, name).map(|o| {
                if part == Part::Scale {
                    store.scale_of(&kind, &o)
                } else {
                    o
                }
            }),
            ("list", None) => {
                let labels = query(&q, "labelSelector").unwrap_or_default();
                let items = store.list(&kind, t.namespace.as_deref(), &|o| {
                    selector_matches(&labels, &o["metadata"]["labels"]) && field_matches(&fields, o)
                });
                Ok(json!({
                    "apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind),
                    "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": items,
                }))
            }
            ("create", None) => match parsed {
                Some(obj) => store.create(&kind, &ns, obj, &manager),
                None => Err(ApiError::new(400, "BadRequest", "no body")),
            },
            ("update", Some(name)) => match parsed {
                Some(obj) => store.replace(&kind, &ns, name, obj, part, &manager),
                None => Err(ApiError::new(400, "BadRequest", "no body")),
            },
            ("patch", Some(name)) => {
                let ty = if content_type.starts_with("application/apply-patch") {
                    if query(&q, "fieldManager").is_none() {
                        Err(ApiError::new(
                            422,
                            "Invalid",
                            "PATCH apply requires fieldManager",
                        ))
                    } else {
                        Ok(PatchType::Apply {
                            force: query(&q, "force").as_deref() == Some("true"),
                        })
                    }
                } else if content_type.starts_with("application/merge-patch")
                    || content_type.starts_with("application/strategic-merge-patch")
                {
                    // Strategic merge is taken as a JSON merge patch.
                    Ok(PatchType::Merge)
                } else {
                    Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("patch type {content_type} is not modelled"),
                    ))
                };
                match (ty, parsed) {
                    (Ok(ty), Some(p)) => store.patch(&kind, &ns, name, &p, ty, part, &manager),
                    (Err(e), _) => Err(e),
                    (_, None) => Err(ApiError::new(400, "BadRequest", "no body")),
                }
            }
            ("delete", Some(name)) => store.delete(&kind, &ns, name),
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{verb} is not supported here"),
            )),
        }
    };
    Ok(match result {
        Ok(v) => {
            record(verb, 200, String::new());
            full(
                if verb == "create" {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &v,
            )
        }
        Err(e) => {
            record(verb, e.code, e.message.clone());
            error(&e)
        }
    })
}

/// Writing a Role or ClusterRole, or binding one, grants permissions: only
/// those the caller holds (RBAC's escalation prevention; the `escalate` and
/// `bind` verbs are not modelled).
fn escalation_check(
    shared: &Shared,
    t: &Target,
    attrs: &Attributes,
    verb: &str,
    body: &Bytes,
) -> Option<ApiError> {
    if t.group != "rbac.authorization.k8s.io" || !matches!(verb, "create" | "update" | "patch") {
        return None;
    }
    let obj: Value = serde_json::from_slice(body).ok()?;
    let store = shared.store.lock().ok()?;
    let objs = store.rbac_objects();
    let stored = || objs.iter().map(|(r, n, o)| (r.as_str(), n.as_str(), o));
    let rules = match t.resource.as_str() {
        "roles" | "clusterroles" => obj["rules"].clone(),
        "rolebindings" | "clusterrolebindings" => {
            let role_ref = &obj["roleRef"];
            let (res, ns) = match role_ref["kind"].as_str() {
                Some("ClusterRole") => ("clusterroles", String::new()),
                _ => ("roles", t.namespace.clone().unwrap_or_default()),
            };
            let name = role_ref["name"].as_str().unwrap_or_default();
            objs.iter()
                .find(|(r, n, o)| {
                    r == res && *n == ns && o["metadata"]["name"].as_str() == Some(name)
                })
                .map(|(_, _, o)| o["rules"].clone())
                .unwrap_or(Value::Null)
        }
        _ => return None,
    };
    let caller = Attributes {
        namespace: t.namespace.clone(),
        ..attrs.clone()
    };
    let why = rbac::escalation(stored(), &caller, &rules)?;
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    Some(ApiError::new(
        403,
        "Forbidden",
        format!("{}.{} \"{name}\" is forbidden: {why}", t.resource, t.group),
    ))
}

fn watch_response(shared: Arc<Shared>, kind: Kind, ns: Option<String>, q: &str) -> Response<Body> {
    let labels = query(q, "labelSelector").unwrap_or_default();
    let fields = query(q, "fieldSelector").unwrap_or_default();
    let bookmarks = query(q, "allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = query(q, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let since = query(q, "resourceVersion").filter(|r| !r.is_empty() && r != "0");
    let matches = {
        let kind = kind.clone();
        move |e: &crate::store::Event| {
            e.key.0 == kind.group
                && e.key.1 == kind.resource
                && ns.as_deref().is_none_or(|n| e.key.2 == n)
                && selector_matches(&labels, &e.object["metadata"]["labels"])
                && field_matches(&fields, &e.object)
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    // Snapshot and subscription under one lock: nothing falls between.
    let setup = shared
        .store
        .lock()
        .map(|store| {
            let sub = store.events.subscribe();
            let start: Result<(Vec<Value>, u64), ApiError> =
                match since.as_deref().map(str::parse::<u64>) {
                    Some(Ok(rv)) if rv < store.oldest_resumable() => Err(ApiError::new(
                        410,
                        "Expired",
                        format!(
                            "too old resource version: {rv} ({})",
                            store.oldest_resumable()
                        ),
                    )),
                    Some(Ok(rv)) => Ok((
                        store
                            .events_after(rv)
                            .into_iter()
                            .filter(|e| matches(e))
                            .map(|e| json!({"type": e.type_, "object": e.object}))
                            .collect(),
                        store.resource_version(),
                    )),
                    Some(Err(_)) => Err(ApiError::new(
                        400,
                        "BadRequest",
                        "resourceVersion is not a number",
                    )),
                    None => {
                        // No version: the current state as ADDED events, then changes.
                        let items = store.list(&kind, None, &|_| true);
                        let adds = items
                            .into_iter()
                            .filter(|o| {
                                let key = (
                                    kind.group.clone(),
                                    kind.resource.clone(),
                                    o["metadata"]["namespace"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .to_string(),
                                    String::new(),
                                );
                                matches(&crate::store::Event {
                                    rv: 0,
                                    type_: "ADDED",
                                    key,
                                    object: o.clone(),
                                })
                            })
                            .map(|o| json!({"type": "ADDED", "object": o}))
                            .collect();
                        Ok((adds, store.resource_version()))
                    }
                };
            (sub, start)
        })
        .ok();
    let api_version = kind.api_version();
    let kind_name = kind.kind.clone();
    let every = shared.bookmark_every;
    tokio::spawn(async move {
        let Some((mut sub, start)) = setup else {
            return;
        };
        let mut last = match start {
            Ok((initial, rv)) => {
                for e in initial {
                    if tx.send(line(e)).await.is_err() {
                        return;
                    }
                }
                rv
            }
            Err(e) => {
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": e.status()})))
                    .await;
                return;
            }
        };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind_name,
                        "metadata": {"resourceVersion": last.to_string()}}});
                    if tx.send(line(b)).await.is_err() { return; }
                }
                e = sub.recv() => match e {
                    Ok(e) if e.rv > last => {
                        last = e.rv;
                        if matches(&e) && tx.send(line(json!({"type": e.type_, "object": e.object}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Fell behind the log: end the watch; the client re-lists.
                    Err(_) => return,
                }
            }
        }
    });
    let stream = tokio_stream(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn tokio_stream(mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `/version`, `/api`, `/apis` and the group/version resource lists.
fn discovery(shared: &Shared, path: &str) -> Option<Response<Body>> {
    let store = shared.store.lock().ok()?;
    let kinds = &store.kinds;
    let path = path.trim_end_matches('/');
    let resources = |group: &str, version: &str| {
        let mut list = Vec::new();
        for k in kinds
            .iter()
            .filter(|k| k.group == group && k.version == version)
        {
            list.push(json!({"name": k.resource, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced, "kind": k.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}));
            if k.status {
                list.push(json!({"name": format!("{}/status", k.resource), "singularName": "", "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
            }
            if k.scale.is_some() {
                list.push(json!({"name": format!("{}/scale", k.resource), "singularName": "", "namespaced": k.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
            }
        }
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }, "resources": list})
    };
    let v = match path {
        "/version" => {
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-sim", "platform": "linux/amd64"})
        }
        "/api" => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        }
        "/api/v1" => resources("", "v1"),
        "/apis" => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for k in kinds.iter().filter(|k| !k.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == k.group) {
                    Some((_, vs)) if !vs.contains(&k.version) => vs.push(k.version.clone()),
                    Some(_) => {}
                    None => groups.push((k.group.clone(), vec![k.version.clone()])),
                }
            }
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups.iter().map(|(g, vs)| json!({
                "name": g,
                "versions": vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect::<Vec<_>>(),
                "preferredVersion": {"groupVersion": format!("{g}/{}", vs[0]), "version": vs[0]},
            })).collect::<Vec<_>>()})
        }
        p => {
            let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                ["apis", g, v] if kinds.iter().any(|k| k.group == *g && k.version == *v) => {
                    resources(g, v)
                }
                _ => return None,
            }
        }
    };
    Some(full(StatusCode::OK, &v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_of_every_form() {
        let labels = json!({"app": "mailrelay", "tier": "edge"});
        assert!(selector_matches("", &labels));
        assert!(selector_matches("app=mailrelay,tier==edge", &labels));
        assert!(!selector_matches("app!=mailrelay", &labels));
        assert!(selector_matches("tier in (edge, core)", &labels));
        assert!(!selector_matches("tier notin (edge)", &labels));
        assert!(selector_matches("app,!missing", &labels));
        assert!(!selector_matches("missing", &labels));
    }
}
