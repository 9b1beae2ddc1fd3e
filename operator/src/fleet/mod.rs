//! The operator's line to a Relay's pods: which pods there are, and the
//! internal API they serve (`mailrelay_crds::reports`): their report
//! aggregates, their webhooks' health, and mail of the operator's own
//! (the reports) to queue. Requests are signed with a key derived from the
//! Relay's hand-off Secret, which the operator created and may read.

pub mod health;
pub mod http;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use mailrelay_crds::events::WebhookUrl;
use mailrelay_crds::reports::{
    PeriodAggregates, PodStatus, REPORTS_PATH, SIGNATURE_HEADER, STATUS_PATH, SUBMIT_PATH,
    Submission, Submitted, internal_key, sign_request,
};
use ring::hmac;

use crate::builders::{handoff, pod as pod_builder};
use crate::model::selector_labels;

/// How long one request to a pod may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot list the pods of Relay {0}: {1}")]
    Pods(String, kube::Error),
    #[error("cannot read the hand-off Secret {0}: {1}")]
    Secret(String, kube::Error),
    #[error("the hand-off Secret {0} has no usable key {1:?}")]
    NoKey(String, &'static str),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("pod {0} has no address yet")]
    NoAddress(String),
    #[error("pod {pod} answered {path} with HTTP {status}: {text}")]
    Status {
        pod: String,
        path: String,
        status: u16,
        text: String,
    },
    #[error("pod {pod} answered {path} with JSON that does not parse: {error}")]
    Json {
        pod: String,
        path: String,
        error: serde_json::Error,
    },
}

/// One pod of a Relay, as the operator reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayPod {
    pub name: String,
    /// Its internal API: the pod's IP and the container's `http` port;
    /// `None` before the pod has an IP.
    pub addr: Option<SocketAddr>,
    pub ready: bool,
    /// Being deleted (draining: its queue and aggregates are moving).
    pub terminating: bool,
}

/// The pods of Relay `ns/relay`, by name.
pub async fn pods(client: &Client, ns: &str, relay: &str) -> Result<Vec<RelayPod>, FleetError> {
    let selector = selector_labels(relay)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| FleetError::Pods(format!("{ns}/{relay}"), e))?;
    let mut out: Vec<RelayPod> = list.items.iter().filter_map(relay_pod).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn relay_pod(pod: &Pod) -> Option<RelayPod> {
    let status = pod.status.clone().unwrap_or_default();
    let ip: Option<IpAddr> = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
    let port = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(pod_builder::HTTP_PORT_NAME))
        .map_or(pod_builder::HTTP_PORT, |p| p.container_port);
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Some(RelayPod {
        name: pod.name_any(),
        addr: ip
            .zip(u16::try_from(port).ok())
            .map(|(ip, port)| SocketAddr::new(ip, port)),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

/// The internal API's key of Relay `ns/relay`.
pub async fn key(client: &Client, ns: &str, relay: &str) -> Result<hmac::Key, FleetError> {
    let name = handoff::secret_name(relay);
    let shown = format!("{ns}/{name}");
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get(&name)
        .await
        .map_err(|e| FleetError::Secret(shown.clone(), e))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(handoff::KEY))
        .map(|b| b.0.trim_ascii().to_vec())
        .filter(|b| b.len() >= 16)
        .ok_or(FleetError::NoKey(shown, handoff::KEY))?;
    Ok(internal_key(&bytes))
}

/// Signed requests to the pods of one Relay.
pub struct PodApi {
    key: hmac::Key,
}

impl PodApi {
    pub fn new(key: hmac::Key) -> Self {
        PodApi { key }
    }

    async fn call(
        &self,
        pod: &RelayPod,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::body::Bytes, FleetError> {
        let addr = pod
            .addr
            .ok_or_else(|| FleetError::NoAddress(pod.name.clone()))?;
        let now = jiff::Timestamp::now().as_second();
        let signature = sign_request(&self.key, now, method, path, &body);
        let url = WebhookUrl {
            https: false,
            host: addr.ip().to_string(),
            port: addr.port(),
            path: path.to_string(),
        };
        let answer = http::send(http::Call {
            url: &url,
            method,
            headers: vec![
                (SIGNATURE_HEADER, signature),
                ("content-type", "application/json".into()),
            ],
            body,
            timeout: TIMEOUT,
            tls: None,
        })
        .await?;
        if !(200..300).contains(&answer.status) {
            return Err(FleetError::Status {
                pod: pod.name.clone(),
                path: path.to_string(),
                status: answer.status,
                text: String::from_utf8_lossy(&answer.body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect(),
            });
        }
        Ok(answer.body)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        pod: &RelayPod,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, FleetError> {
        let bytes = self.call(pod, method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|error| FleetError::Json {
            pod: pod.name.clone(),
            path: path.to_string(),
            error,
        })
    }

    /// The pod's aggregates of the period starting at `start`.
    pub async fn reports(
        &self,
        pod: &RelayPod,
        start: i64,
    ) -> Result<PeriodAggregates, FleetError> {
        self.json(
            pod,
            "GET",
            &format!("{REPORTS_PATH}?start={start}"),
            Vec::new(),
        )
        .await
    }

    /// The pod's webhooks as it sees them.
    pub async fn status(&self, pod: &RelayPod) -> Result<PodStatus, FleetError> {
        self.json(pod, "GET", STATUS_PATH, Vec::new()).await
    }

    /// Have the pod queue a mail.
    pub async fn submit(&self, pod: &RelayPod, mail: &Submission) -> Result<Submitted, FleetError> {
        let body = serde_json::to_vec(mail).map_err(|error| FleetError::Json {
            pod: pod.name.clone(),
            path: SUBMIT_PATH.into(),
            error,
        })?;
        self.json(pod, "POST", SUBMIT_PATH, body).await
    }
}
