//! Types shared by the three kinds.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::maildomain::TlsMode;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, Time,
};

/// The API group of every mailrelay kind.
pub const GROUP: &str = "mailrelay.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// A key of a Secret in the same namespace as the object that refers to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A duration written as a number with a unit: `30s`, `5m`, `4h`, `5d`, or a
/// sum of them such as `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

/// A size written as a Kubernetes quantity (`25Mi`, `10M`, `1048576`).
pub const SIZE_PATTERN: &str = r"^[0-9]+(k|M|G|Ki|Mi|Gi)?$";

/// The identity of an object, used in problems and in the compiled config.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// `MailDomain`, `Relay` or `Blocklist`.
    pub kind: String,
    /// Namespace of the object (empty when the manifest named none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The reference to a typed object, from its metadata.
    pub fn of<K: kube::Resource<DynamicType = ()>>(obj: &K) -> Self {
        let meta = obj.meta();
        Self::new(
            &K::kind(&()),
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A smarthost: a server that takes outgoing mail and sends it on, such
/// as a provider's submission service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = kube::core::Rule::new("!has(self.credentials) || !has(self.tls) || self.tls != 'None'").message("credentials are never sent without TLS: use Required or Implicit").field_path(".tls")
)]
pub struct Smarthost {
    /// Host name or IP address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port.
    #[serde(default = "crate::defaults::submission_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// TLS use. `Required` is the default: credentials are never sent in clear.
    #[serde(default = "crate::defaults::tls_required")]
    pub tls: TlsMode,
    /// Secret keys holding the user name and password for AUTH, for example
    /// of a `kubernetes.io/basic-auth` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SmarthostCredentials>,
}

/// AUTH credentials for a smarthost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmarthostCredentials {
    /// The user name.
    pub username: SecretKeyRef,
    /// The password.
    pub password: SecretKeyRef,
}
