use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Probe, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mailrelay_operator::Warning;
use mailrelay_operator::builders::Workload;

use crate::common::{Fixture, LMTP_DOMAIN, MINIMAL, WITH_TLS, container, pod_spec};

fn replicas(spec: &str) -> Option<i32> {
    match Fixture::relay(spec).objects().workload {
        Workload::Deployment(d) => d.spec.unwrap().replicas,
        Workload::StatefulSet(s) => s.spec.unwrap().replicas,
    }
}

#[test]
fn without_queue_storage_the_relay_is_a_deployment_that_surges_before_draining() {
    let Workload::Deployment(d) = Fixture::relay(MINIMAL).objects().workload else {
        panic!("expected a Deployment");
    };
    assert_eq!(d.metadata.name.as_deref(), Some("edge"));
    let spec = d.spec.unwrap();
    let rolling = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    let volumes = spec.template.spec.unwrap().volumes.unwrap();
    let spool = volumes.iter().find(|v| v.name == "spool").unwrap();
    let empty = spool.empty_dir.as_ref().unwrap();
    assert!(
        empty.size_limit.is_none(),
        "a limit would evict the pod and its queue"
    );
}

#[test]
fn persistent_queue_storage_makes_a_statefulset_with_a_spool_claim_per_pod() {
    let objects = Fixture::relay(
        "hostname: mx.example.com\nqueue: {storage: {size: 20Gi, storageClassName: fast}}",
    )
    .objects();
    let Workload::StatefulSet(s) = &objects.workload else {
        panic!("expected a StatefulSet");
    };
    let spec = s.spec.as_ref().unwrap();
    assert_eq!(spec.service_name.as_deref(), Some("edge-peers"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    let claims = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("spool"));
    let claim = claims[0].spec.as_ref().unwrap();
    assert_eq!(
        claim.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "20Gi"
    );
    let pod = pod_spec(&objects);
    assert!(
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.name != "spool"),
        "the claim is the spool"
    );
    let mount = container(&objects)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "spool")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/spool/mailrelay");
}

#[test]
fn without_autoscaling_replicas_come_from_the_spec() {
    assert_eq!(replicas("hostname: mx.example.com\nreplicas: 3"), Some(3));
    assert_eq!(replicas(MINIMAL), Some(1));
}

#[test]
fn with_autoscaling_the_applied_workload_leaves_replicas_out() {
    // The HPA owns the count: the operator's apply must not fight it.
    let auto = "autoscaling: {minReplicas: 2, maxReplicas: 10}";
    assert_eq!(replicas(&format!("hostname: mx.example.com\n{auto}")), None);
    let storage = "queue: {storage: {size: 1Gi}}";
    assert_eq!(
        replicas(&format!("hostname: mx.example.com\n{auto}\n{storage}")),
        None
    );
}

#[test]
fn with_autoscaling_the_scale_target_follows_what_the_autoscaler_wrote_into_the_relay() {
    // The HPA scales the Relay through its scale subresource: it writes
    // the Relay's spec.replicas, which the operator carries to the
    // workload's own scale subresource (clamped to the bounds).
    let auto = "autoscaling: {minReplicas: 2, maxReplicas: 10}";
    for (replicas, want) in [
        ("", 2),
        ("replicas: 7\n", 7),
        ("replicas: 1\n", 2),
        ("replicas: 50\n", 10),
    ] {
        let model = Fixture::relay(&format!("hostname: mx.example.com\n{replicas}{auto}")).model();
        assert!(model.autoscaled);
        assert_eq!(model.replicas, want, "{replicas}");
    }
    assert!(!Fixture::relay(MINIMAL).model().autoscaled);
}

#[test]
fn the_pod_runs_as_nobody_read_only_without_capabilities() {
    let objects = Fixture::relay(MINIMAL).objects();
    let pod = pod_spec(&objects);
    // The token is mounted for the watch on the config ConfigMaps; the
    // Role bound to it reads those and nothing else (tests/builders/rbac.rs).
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("edge"));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65534));
    assert_eq!(psc.fs_group, Some(65534));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let sc = container(&objects).security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65534));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
}

fn http_path(p: &Option<Probe>) -> (String, IntOrString) {
    let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
    (get.path.clone().unwrap(), get.port.clone())
}

#[test]
fn probes_use_healthz_and_readyz_on_the_http_port_and_shutdown_leaves_time_to_drain() {
    let objects = Fixture::relay(MINIMAL).objects();
    let c = container(&objects);
    let http = IntOrString::String("http".into());
    assert_eq!(
        http_path(&c.liveness_probe),
        ("/healthz".into(), http.clone())
    );
    assert_eq!(
        http_path(&c.readiness_probe),
        ("/readyz".into(), http.clone())
    );
    assert_eq!(http_path(&c.startup_probe), ("/healthz".into(), http));
    let ports = c.ports.as_ref().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("http") && p.container_port == 9090)
    );
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("smtp") && p.container_port == 2525)
    );
    // No shell in the image: the kubelet's own sleep, then SIGTERM drains.
    let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    assert!(pre_stop.exec.is_none());
    assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, 5);
    assert_eq!(
        pod_spec(&objects).termination_grace_period_seconds,
        Some(120)
    );
    assert_eq!(
        c.args.as_ref().unwrap(),
        &[
            "run",
            "--config",
            "/etc/mailrelay/relay.json",
            "--spool",
            "/var/spool/mailrelay",
            "--http",
            "0.0.0.0:9090",
            "--config-map",
            "edge-config",
            "--handoff-listen",
            "0.0.0.0:10025",
            "--handoff-secret-file",
            "/etc/mailrelay/handoff/secret",
            "--peers-dns",
            "edge-peers:10025",
            "--drain-request-file",
            "/etc/mailrelay/podinfo/annotations"
        ]
    );
    let env = c.env.as_ref().unwrap();
    assert_eq!(env[0].name, "POD_NAMESPACE");
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.namespace"
    );
    assert_eq!(env[1].name, "POD_IP");
    assert_eq!(
        env[1]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "status.podIP"
    );
}

#[test]
fn image_and_resources_come_from_the_spec_or_the_operators_default() {
    let objects = Fixture::relay(
        "hostname: mx.example.com
image: registry.example/mailrelay:1.2.3
resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 256Mi}}",
    )
    .objects();
    let c = container(&objects);
    assert_eq!(c.image.as_deref(), Some("registry.example/mailrelay:1.2.3"));
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "256Mi");
    let objects = Fixture::relay(MINIMAL).objects();
    assert_eq!(container(&objects).image.as_deref(), Some("mailrelay:test"));
    assert!(container(&objects).resources.is_none());
}

/// Secret volumes by mount path: (secret, keys, optional).
fn secret_mounts(
    spec: &str,
    domain: Option<&str>,
) -> BTreeMap<String, (String, Vec<String>, bool)> {
    let mut fixture = Fixture::relay(spec);
    if let Some(d) = domain {
        fixture = fixture.domain("example", d);
    }
    let objects = fixture.objects();
    let volumes: BTreeMap<&str, &Volume> = pod_spec(&objects)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    container(&objects)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|m| {
            let s = volumes[m.name.as_str()].secret.as_ref()?;
            assert_eq!(m.read_only, Some(true));
            assert!(
                m.sub_path.is_none(),
                "subPath mounts never see a rotated Secret"
            );
            let keys = s
                .items
                .as_ref()
                .unwrap()
                .iter()
                .map(|i| i.key.clone())
                .collect();
            Some((
                m.mount_path.clone(),
                (
                    s.secret_name.clone().unwrap(),
                    keys,
                    s.optional == Some(true),
                ),
            ))
        })
        .collect()
}

#[test]
fn every_secret_file_of_the_config_is_mounted_under_the_secrets_dir() {
    let mounts = secret_mounts(
        &format!(
            "{WITH_TLS}\nsmarthost:\n  host: smtp.provider.example\n  credentials:\n    username: {{name: provider, key: username}}\n    password: {{name: provider, key: password}}"
        ),
        Some(LMTP_DOMAIN),
    );
    let dir = "/var/run/mailrelay/secrets";
    let expect = |s: &str, keys: &[&str], optional: bool| {
        (
            s.to_string(),
            keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            optional,
        )
    };
    assert_eq!(
        mounts[&format!("{dir}/mx-tls")],
        expect("mx-tls", &["tls.crt", "tls.key"], false)
    );
    assert_eq!(
        mounts[&format!("{dir}/provider")],
        expect("provider", &["password", "username"], false)
    );
    // A tenant's missing Secret must not keep the pods from starting.
    assert_eq!(
        mounts[&format!("{dir}/example-accounts")],
        expect("example-accounts", &["passwd"], true)
    );
    assert_eq!(
        mounts[&format!("{dir}/example-dkim")],
        expect("example-dkim", &["private.pem"], true)
    );
    // The hand-off secret, required: a pod without it would strand its
    // queue when scaled in.
    assert_eq!(
        mounts["/etc/mailrelay/handoff"],
        expect("edge-handoff", &["secret"], false)
    );
    assert_eq!(mounts.len(), 5);
    assert_eq!(
        secret_mounts(MINIMAL, None).into_keys().collect::<Vec<_>>(),
        ["/etc/mailrelay/handoff"]
    );
}

#[test]
fn a_maildomains_smarthost_credentials_are_mounted_and_optional_unless_the_relay_needs_them_too() {
    let domain = |secret: &str| {
        format!(
            "{LMTP_DOMAIN}\noutbound:\n  smarthost:\n    host: smtp.tenant.example\n    credentials:\n      username: {{name: {secret}, key: username}}\n      password: {{name: {secret}, key: password}}"
        )
    };
    let dir = "/var/run/mailrelay/secrets";
    let mounts = secret_mounts(MINIMAL, Some(&domain("tenant-smarthost")));
    assert_eq!(
        mounts[&format!("{dir}/tenant-smarthost")],
        (
            "tenant-smarthost".to_string(),
            vec!["password".to_string(), "username".to_string()],
            true
        ),
        "a tenant's missing Secret defers its mail, it does not stop the pods"
    );
    // The same Secret for the Relay's smarthost: required.
    let relay = format!(
        "{MINIMAL}\nsmarthost:\n  host: smtp.provider.example\n  credentials:\n    username: {{name: provider, key: username}}\n    password: {{name: provider, key: password}}"
    );
    let mounts = secret_mounts(&relay, Some(&domain("provider")));
    assert!(!mounts[&format!("{dir}/provider")].2, "required");
}

#[test]
fn maildir_claims_are_mounted_at_their_paths_and_a_missing_claim_is_a_warning() {
    let maildir = "domain: shop.example
inbound: {localParts: [orders]}
delivery: {maildir: {path: /var/mail/shop, claimName: shop-mail}}";
    let objects = Fixture::relay(MINIMAL).domain("shop", maildir).objects();
    let pod = pod_spec(&objects);
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.persistent_volume_claim.is_some())
        .unwrap();
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().claim_name,
        "shop-mail"
    );
    let mount = container(&objects)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == volume.name)
        .unwrap();
    assert_eq!(mount.mount_path, "/var/mail/shop");
    assert_ne!(mount.read_only, Some(true));

    let model = Fixture::relay(MINIMAL)
        .domain("shop", &maildir.replace(", claimName: shop-mail", ""))
        .model();
    assert!(model.maildirs.is_empty());
    assert!(
        matches!(model.warnings[..], [Warning::MaildirWithoutClaim { .. }]),
        "{:?}",
        model.warnings
    );

    let model = Fixture::relay(MINIMAL)
        .domain("shop", &maildir.replace("/var/mail/shop", "/tmp"))
        .model();
    assert!(model.maildirs.is_empty());
    assert!(
        matches!(model.warnings[..], [Warning::MaildirPathReserved { .. }]),
        "{:?}",
        model.warnings
    );
}

#[test]
fn config_tmp_and_spool_are_mounted_and_only_the_config_and_secrets_read_only() {
    let objects = Fixture::relay(MINIMAL).objects();
    let mounts: BTreeMap<String, Option<bool>> = container(&objects)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            ("/etc/mailrelay".to_string(), Some(true)),
            ("/etc/mailrelay/handoff".to_string(), Some(true)),
            ("/etc/mailrelay/podinfo".to_string(), Some(true)),
            ("/tmp".to_string(), None),
            ("/var/spool/mailrelay".to_string(), None),
        ])
    );
    // Drain requests: the pod's annotations through the downward API.
    let podinfo = pod_spec(&objects)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "podinfo")
        .and_then(|v| v.downward_api.clone())
        .unwrap();
    let items = podinfo.items.unwrap();
    assert_eq!(items[0].path, "annotations");
    assert_eq!(
        items[0].field_ref.as_ref().unwrap().field_path,
        "metadata.annotations"
    );
    let config = pod_spec(&objects)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "config")
        .unwrap();
    let sources = config.projected.as_ref().unwrap().sources.as_ref().unwrap();
    assert_eq!(sources[0].config_map.as_ref().unwrap().name, "edge-config");
}

#[test]
fn autoscaling_on_cpu_without_a_cpu_request_is_a_warning() {
    let model = Fixture::relay("hostname: mx.example.com\nautoscaling: {maxReplicas: 3}").model();
    assert!(
        matches!(model.warnings[..], [Warning::NoCpuRequest { .. }]),
        "{:?}",
        model.warnings
    );
    let model = Fixture::relay(
        "hostname: mx.example.com\nautoscaling: {maxReplicas: 3}\nresources: {requests: {cpu: 100m}}",
    )
    .model();
    assert!(model.warnings.is_empty());
}

#[test]
fn image_pull_secrets_reach_the_pod() {
    let objects =
        Fixture::relay("hostname: mx.example.com\nimagePullSecrets: [{name: regcred}]").objects();
    let secrets = pod_spec(&objects).image_pull_secrets.clone().unwrap();
    assert_eq!(secrets[0].name, "regcred");
    assert!(
        pod_spec(&Fixture::relay(MINIMAL).objects())
            .image_pull_secrets
            .is_none()
    );
}

#[test]
fn event_webhook_keys_are_mounted_and_optional() {
    let mounts = secret_mounts(
        &format!(
            "{MINIMAL}\nevents:\n  webhooks:\n  - {{url: 'https://hooks.example.com/mail', secret: {{name: hook, key: signing}}}}"
        ),
        Some(&format!(
            "{LMTP_DOMAIN}\nevents:\n  webhook: {{url: 'http://10.0.0.9:8080/', secret: {{name: tenant-hook, key: key}}}}"
        )),
    );
    let dir = "/var/run/mailrelay/secrets";
    // A missing signing key holds its webhook's events back, not the mail.
    assert_eq!(
        mounts[&format!("{dir}/hook")],
        ("hook".to_string(), vec!["signing".to_string()], true)
    );
    assert_eq!(
        mounts[&format!("{dir}/tenant-hook")],
        ("tenant-hook".to_string(), vec!["key".to_string()], true)
    );
}
