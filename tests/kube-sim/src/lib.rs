//! kube-sim: an in-memory Kubernetes API server for tests.
//!
//! It speaks enough of the Kubernetes REST API over HTTP on loopback that
//! `kube::Client`, the real `mailrelay-operator` and relay binaries connect
//! to it with an ordinary kubeconfig: discovery, CRUD, list and watch with
//! label and field selectors and resource versions (bookmarks, `410 Gone`
//! for a version the log no longer holds), JSON merge patch, server-side
//! apply with field managers and conflicts, `status` and `scale`
//! subresources, `metadata.generation`, optimistic concurrency, owner
//! reference garbage collection, finalizers, admission of custom resources
//! against their CRD's schema and CEL rules, and RBAC authorization from
//! the Roles and bindings it stores. What it does not model: see README.md.

pub mod http;
pub mod rbac;
pub mod resources;
pub mod schema;
pub mod ssa;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use http::Shared;
pub use http::{Record, User};
pub use store::Store;

/// The token of the built-in administrator (group `system:masters`).
pub const ADMIN_TOKEN: &str = "admin-token";

/// A running simulator; stops when dropped.
pub struct KubeSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSim {
    /// Listen on 127.0.0.1 (a free port) and serve until dropped.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            users: Mutex::new(vec![(
                ADMIN_TOKEN.to_string(),
                User {
                    name: "kubernetes-admin".into(),
                    groups: vec!["system:masters".into()],
                },
            )]),
            records: Mutex::new(Vec::new()),
            bookmark_every: Duration::from_secs(1),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| http::handle(s.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Let `token` authenticate as `user` (a ServiceAccount is
    /// `system:serviceaccount:NAMESPACE:NAME`).
    pub fn add_user(&self, token: &str, user: &str) {
        if let Ok(mut u) = self.shared.users.lock() {
            u.push((
                token.into(),
                User {
                    name: user.into(),
                    groups: vec!["system:authenticated".into()],
                },
            ));
        }
    }

    /// A kubeconfig for `token`, with `namespace` as the default.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: user\n    namespace: {namespace}\ncurrent-context: kube-sim\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(
        &self,
        path: &Path,
        token: &str,
        namespace: &str,
    ) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(token, namespace))
    }

    /// Every request so far.
    pub fn records(&self) -> Vec<Record> {
        self.shared
            .records
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Direct access to the store (for assertions and for writes no client
    /// would make, like a workload's status).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> Option<T> {
        self.shared.store.lock().ok().map(|mut s| f(&mut s))
    }
}
