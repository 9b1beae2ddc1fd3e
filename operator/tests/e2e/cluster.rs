//! A cluster for the end-to-end tests: kube-sim with the operator's RBAC
//! from the chart's files, and the real `mailrelay-operator` binary (one or
//! two replicas) running against it with an ordinary kubeconfig.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kube_sim::{ADMIN_TOKEN, KubeSim};
use serde_json::{Value, json};

pub const OPERATOR_NS: &str = "mailrelay-system";
pub const OPERATOR_SA: &str = "system:serviceaccount:mailrelay-system:mailrelay-operator";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules(file: &str) -> Value {
    let text = std::fs::read_to_string(root().join("charts/mailrelay/files").join(file)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

pub fn gvk(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// An operator process, killed (and reaped) when dropped.
pub struct Operator {
    pub identity: String,
    pub token: String,
    /// Its HTTP address: /metrics, /healthz, /readyz.
    pub http: SocketAddr,
    child: Child,
    pub log: PathBuf,
}

impl Operator {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ---\n{}",
                self.identity,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

pub struct Cluster {
    pub sim: KubeSim,
    pub admin: Client,
    pub dir: tempfile::TempDir,
}

/// The rules the chart gives the operator, with `edit` applied (to take
/// a grant away in a negative test).
pub fn operator_rules(edit: impl Fn(&mut Value)) -> Value {
    let mut cluster = rules("operator-clusterrole-rules.yaml");
    if let (Some(c), Some(extra)) = (
        cluster.as_array_mut(),
        rules("operator-crd-rules.yaml").as_array(),
    ) {
        c.extend(extra.iter().cloned());
    }
    edit(&mut cluster);
    cluster
}

impl Cluster {
    /// kube-sim with the operator's ClusterRole (`cluster_rules`) and
    /// lease Role installed and bound to its ServiceAccount. No CRDs: the
    /// operator applies them (`--apply-crds`), as it does after a Helm
    /// upgrade.
    pub async fn start(cluster_rules: Value) -> Self {
        let sim = KubeSim::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let admin = client_for(&sim, ADMIN_TOKEN).await;
        let post = |res: ApiResource, ns: Option<&str>, obj: Value| {
            let admin = admin.clone();
            let ns = ns.map(String::from);
            async move {
                let api: Api<DynamicObject> = match ns {
                    Some(ns) => Api::namespaced_with(admin, &ns, &res),
                    None => Api::all_with(admin, &res),
                };
                api.create(
                    &PostParams::default(),
                    &serde_json::from_value(obj).unwrap(),
                )
                .await
                .unwrap();
            }
        };
        let rbac = |k: &str, p: &str| gvk("rbac.authorization.k8s.io", "v1", k, p);
        let subject = json!([{"kind": "ServiceAccount", "name": "mailrelay-operator", "namespace": OPERATOR_NS}]);
        post(
            rbac("ClusterRole", "clusterroles"),
            None,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "mailrelay-operator"}, "rules": cluster_rules}),
        )
        .await;
        post(rbac("ClusterRoleBinding", "clusterrolebindings"), None, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "mailrelay-operator"}, "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "mailrelay-operator"}})).await;
        post(rbac("Role", "roles"), Some(OPERATOR_NS), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "mailrelay-operator"}, "rules": rules("operator-role-rules.yaml")})).await;
        post(rbac("RoleBinding", "rolebindings"), Some(OPERATOR_NS), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "mailrelay-operator"}, "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mailrelay-operator"}})).await;
        Self { sim, admin, dir }
    }

    /// Start an operator replica named `identity`.
    pub fn operator(&self, identity: &str) -> Operator {
        self.operator_serving(identity, SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// Start an operator replica named `identity` whose /metrics, /healthz
    /// and /readyz answer on `http` (for a scraper that must know where).
    pub fn operator_serving(&self, identity: &str, http: SocketAddr) -> Operator {
        let token = format!("{identity}-token");
        self.sim.add_user(&token, OPERATOR_SA);
        let kubeconfig = self.dir.path().join(format!("{identity}.kubeconfig"));
        self.sim
            .write_kubeconfig(&kubeconfig, &token, OPERATOR_NS)
            .unwrap();
        let log = self.dir.path().join(format!("{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mailrelay-operator"))
            .args([
                "run",
                "--http-addr",
                &http.to_string(),
                "--leader-elect",
                "--lease-namespace",
                OPERATOR_NS,
                "--identity",
                identity,
            ])
            .args([
                "--apply-crds",
                "--no-mx-check",
                "--log-format",
                "text",
                "--log-level",
                "info,kube=warn",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("POD_NAMESPACE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Operator {
            identity: identity.into(),
            token,
            http,
            child,
            log,
        }
    }

    /// A kubeconfig file for a relay pod's ServiceAccount `ns/name`.
    pub fn relay_kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        let token = format!("relay-{ns}-{name}-token");
        self.sim
            .add_user(&token, &format!("system:serviceaccount:{ns}:{name}"));
        let path = self
            .dir
            .path()
            .join(format!("relay-{ns}-{name}.kubeconfig"));
        self.sim.write_kubeconfig(&path, &token, ns).unwrap();
        path
    }

    pub fn api(&self, res: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.admin.clone(), ns, res)
    }

    /// `kubectl apply` of one manifest (YAML or JSON) into `ns`.
    pub async fn apply(&self, ns: &str, manifest: &Value) -> Result<DynamicObject, kube::Error> {
        let api_version = manifest["apiVersion"].as_str().unwrap_or_default();
        let kind = manifest["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let plural = format!("{}s", kind.to_lowercase());
        let api = self.api(&gvk(group, version, kind, &plural), ns);
        let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
        let obj: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
        api.patch(
            name,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&obj),
        )
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in self.sim.records().iter().filter(|r| r.code == 403) {
                eprintln!("kube-sim denied {} {}: {}", r.verb, r.path, r.message);
            }
        }
    }
}

pub async fn client_for(sim: &KubeSim, token: &str) -> Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig(token, "default")).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `check` until it gives `Some`, or fail after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The condition `type_` of an object's status, as (status, reason).
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String)> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}
