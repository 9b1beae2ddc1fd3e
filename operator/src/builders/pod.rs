//! The relay pod template, shared by the Deployment and the StatefulSet.
//!
//! The pod has the least power we can give it: an API token that may only
//! read its own config ConfigMaps (see [`super::rbac`]; the relay watches
//! them so changes reach it in seconds), non-root (65534, "nobody"),
//! read-only root filesystem, no capabilities, no privilege escalation, the
//! runtime's default seccomp profile. Listeners
//! bind unprivileged ports (2525/5870/4650) and the Service maps 25/587/465
//! onto them, so no capability is needed for that either.
//!
//! Shutdown: on delete, kubelet runs the preStop hook, then sends SIGTERM.
//! The image is distroless, so there is no shell for a `sleep` command; the
//! hook is the kubelet's own `sleep` action (no binary needed), which gives
//! load balancers and kube-proxy time to stop sending new connections. On
//! SIGTERM the relay turns /readyz off, keeps accepting a few seconds more,
//! closes its listeners, lets open sessions finish, delivers what is due
//! until 60 s after the signal and then hands the rest of its queue to a
//! ready peer (relay defaults `--drain-*`: 5 s, 30 s, 60 s, 100 s); the
//! grace period (120 s, preStop included) bounds the whole sequence.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, SleepAction, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{handoff, peers_service_name, pod_selector, volumes};
use crate::model::Model;
use mailrelay_crds::configformat::CONFIG_FILE;

/// Name of the relay container.
pub(crate) const CONTAINER: &str = "relay";
/// Port of /metrics, /healthz and /readyz.
pub(crate) const HTTP_PORT: i32 = 9090;
/// Name of that port.
pub(crate) const HTTP_PORT_NAME: &str = "http";
/// The spool, on its own volume.
pub(crate) const SPOOL_DIR: &str = "/var/spool/mailrelay";
/// Scratch space: the root filesystem is read-only.
pub(crate) const TMP_DIR: &str = "/tmp";
/// "nobody": owns nothing in the image, so it can change nothing there.
pub(crate) const RUN_AS: i64 = 65534;
/// Time for endpoints to drop the pod before the relay stops accepting.
pub(crate) const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// The preStop sleep, the relay's session drain (sessions are given up to
/// the SMTP data timeout to finish) and the queue hand-off must fit in it.
pub(crate) const TERMINATION_GRACE_SECONDS: i64 = 120;

/// The pod template; `spool_claim` when the spool comes from a claim
/// template rather than an emptyDir.
pub(crate) fn template(
    model: &Model,
    config_maps: &[String],
    spool_claim: bool,
) -> PodTemplateSpec {
    let v = volumes::build(model, config_maps, spool_claim);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(model.relay.labels.clone()),
            annotations: Some(pod_annotations()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(model.relay.name.clone()),
            // The relay watches its config ConfigMaps (and only those: see
            // builders::rbac) so changes reach it within seconds.
            automount_service_account_token: Some(true),
            // Service environment variables are of no use to the relay and
            // slow its start in namespaces with many Services.
            enable_service_links: Some(false),
            security_context: Some(pod_security()),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            containers: vec![container(model, v.mounts, config_maps)],
            image_pull_secrets: (!model.image_pull_secrets.is_empty())
                .then(|| model.image_pull_secrets.clone()),
            volumes: Some(v.volumes),
            topology_spread_constraints: Some(spread(model)),
            ..PodSpec::default()
        }),
    }
}

/// Fixed annotations only: nothing derived from the config, so a config
/// change never rolls the pods (the relay reloads it in place).
fn pod_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "kubectl.kubernetes.io/default-container".into(),
            CONTAINER.into(),
        ),
        ("prometheus.io/scrape".into(), "true".into()),
        ("prometheus.io/port".into(), HTTP_PORT.to_string()),
        ("prometheus.io/path".into(), "/metrics".into()),
    ])
}

fn container(
    model: &Model,
    mounts: Vec<k8s_openapi::api::core::v1::VolumeMount>,
    config_maps: &[String],
) -> Container {
    let mut args: Vec<String> = [
        "run",
        "--config",
        CONFIG_FILE,
        "--spool",
        SPOOL_DIR,
        "--http",
        &format!("0.0.0.0:{HTTP_PORT}"),
    ]
    .map(String::from)
    .to_vec();
    // The mounted file starts the pod; the watch on these carries changes.
    for name in config_maps {
        args.extend(["--config-map".to_string(), name.clone()]);
    }
    // Draining pods hand their queue to ready peers found through the
    // headless Service (search domains complete the short name).
    args.extend([
        "--handoff-listen".to_string(),
        format!("0.0.0.0:{}", handoff::PORT),
        "--handoff-secret-file".into(),
        format!("{}/{}", handoff::DIR, handoff::KEY),
        "--peers-dns".into(),
        format!(
            "{}:{}",
            peers_service_name(&model.relay.name),
            handoff::PORT
        ),
        // `kubectl annotate pod POD mailrelay.io/drain=true` drains a pod
        // (hands its queue off) without stopping it.
        "--drain-request-file".into(),
        format!("{}/{}", volumes::PODINFO_DIR, volumes::ANNOTATIONS_FILE),
    ]);
    let mut ports: Vec<ContainerPort> = model
        .config
        .listeners
        .iter()
        .map(|l| ContainerPort {
            name: Some(l.name.as_str().into()),
            container_port: i32::from(l.address.port()),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    ports.push(ContainerPort {
        name: Some(handoff::PORT_NAME.into()),
        container_port: handoff::PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });
    ports.push(ContainerPort {
        name: Some(HTTP_PORT_NAME.into()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });
    Container {
        name: CONTAINER.into(),
        image: Some(model.relay.image.clone()),
        // The image's entrypoint is `mailrelay`.
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // So a draining pod never takes itself for a peer.
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(ports),
        resources: model.resources.clone(),
        security_context: Some(container_security()),
        // The spool is read before /healthz answers: a large one can take
        // minutes, which liveness must not mistake for a hang.
        startup_probe: Some(probe("/healthz", 5, 60)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        // Makes the spool and maildir volumes writable, and the 0440 Secret
        // files readable, by the pod's group.
        fs_group: Some(RUN_AS),
        // A full spool has many files: relabel only a fresh volume.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// Spread over nodes and zones when the scheduler can, so one node or zone
/// going down does not take all MX targets with it; never block scheduling.
fn spread(model: &Model) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(pod_selector(model)),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}
