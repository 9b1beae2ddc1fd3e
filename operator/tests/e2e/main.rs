//! End to end: the real operator binary against kube-sim, driven the way a
//! user drives it with `kubectl apply`, with the manifests of
//! `crds/examples/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

mod alerts;
mod cluster;
mod dashboard;
mod dkim;
mod prometheus;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::{Cluster, OPERATOR_NS, condition, eventually, free_port, gvk, operator_rules};
use kube::api::{ApiResource, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const LIMIT: Duration = Duration::from_secs(30);

fn relays() -> ApiResource {
    gvk("mailrelay.io", "v1alpha1", "Relay", "relays")
}
fn domains() -> ApiResource {
    gvk("mailrelay.io", "v1alpha1", "MailDomain", "maildomains")
}
fn blocklists() -> ApiResource {
    gvk("mailrelay.io", "v1alpha1", "Blocklist", "blocklists")
}
fn configmaps() -> ApiResource {
    gvk("", "v1", "ConfigMap", "configmaps")
}

/// The compiled config in a Relay's (unsharded) ConfigMap.
async fn config_of(c: &Cluster, ns: &str, relay: &str) -> Option<Value> {
    let cm = c
        .api(&configmaps(), ns)
        .get_opt(&format!("{relay}-config"))
        .await
        .ok()??;
    serde_json::from_str(cm.data["data"]["relay.json"].as_str()?).ok()
}

fn domain_names(config: &Value) -> Vec<String> {
    config["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str().map(String::from))
        .collect()
}

async fn wait_condition(
    c: &Cluster,
    res: &ApiResource,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) {
    eventually(
        &format!("{} {ns}/{name} {type_}={status}", res.kind),
        LIMIT,
        || async {
            let o = c.api(res, ns).get_opt(name).await.ok()??;
            (condition(&o, type_)?.0 == status).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn a_user_applies_the_examples_and_gets_a_ready_relay_then_changes_relabels_and_deletes() {
    let c = Cluster::start(operator_rules(|_| {})).await;
    let op = c.operator("op-1");
    let ns = "mail";
    for f in [
        "secret-example-com-accounts.yaml",
        "maildomain-example-com.yaml",
        "maildomain-shop.yaml",
        "relay.yaml",
        "blocklist-abuse.yaml",
        "blocklist-dnsbl.yaml",
    ] {
        // The CRDs come from the operator (--apply-crds): wait for them.
        eventually(&format!("apply {f}"), LIMIT, || async {
            let text =
                std::fs::read_to_string(cluster::root().join("crds/examples").join(f)).unwrap();
            let v: Value = serde_saphyr::from_str(&text).unwrap();
            c.apply(ns, &v).await.ok()
        })
        .await;
    }

    // The operator creates the objects, owned by the Relay.
    let sts_api = c.api(&gvk("apps", "v1", "StatefulSet", "statefulsets"), ns);
    eventually("the StatefulSet", LIMIT, || async {
        sts_api.get_opt("edge").await.ok()?
    })
    .await;
    let relay_uid = c
        .api(&relays(), ns)
        .get("edge")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    for (res, name) in [
        (configmaps(), "edge-config"),
        (gvk("", "v1", "Service", "services"), "edge"),
        (gvk("", "v1", "Service", "services"), "edge-peers"),
        (gvk("", "v1", "ServiceAccount", "serviceaccounts"), "edge"),
        (
            gvk(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
            "edge",
        ),
        (
            gvk(
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
            ),
            "edge",
        ),
        (
            gvk(
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            "edge",
        ),
        (
            gvk("rbac.authorization.k8s.io", "v1", "Role", "roles"),
            "edge-config-reader",
        ),
    ] {
        let o = eventually(&format!("{} {name}", res.kind), LIMIT, || async {
            c.api(&res, ns).get_opt(name).await.ok()?
        })
        .await;
        let owner = &o.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Relay", relay_uid.as_str(), Some(true)),
            "{} {name}",
            res.kind
        );
    }
    // The workload controller's part: pods come up (simulated), for the
    // StatefulSet as it is now (the operator may still be scaling it).
    eventually("the Relay Ready", LIMIT, || async {
        let sts = sts_api.get("edge").await.ok()?;
        let replicas = sts.data["spec"]["replicas"].as_i64()?;
        let status = json!({"status": {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
            "observedGeneration": sts.metadata.generation}});
        sts_api.patch_status("edge", &PatchParams::default(), &Patch::Merge(status)).await.ok()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = c.api(&relays(), ns).get("edge").await.ok()?;
        (condition(&r, "Ready")?.0 == "True").then_some(())
    })
    .await;
    wait_condition(&c, &domains(), ns, "example-com", "Ready", "True").await;
    wait_condition(&c, &blocklists(), ns, "abuse", "Ready", "True").await;
    let relay = c.api(&relays(), ns).get("edge").await.unwrap();
    assert_eq!(relay.data["status"]["domains"], 2);
    let entries = relay.data["status"]["blocklistEntries"].as_i64().unwrap();

    // Add an IP to a Blocklist: the config changes, the status counts it.
    let before = config_of(&c, ns, "edge").await.unwrap();
    let bl = c.api(&blocklists(), ns);
    let mut abuse = bl.get("abuse").await.unwrap();
    abuse.data["spec"]["ips"]
        .as_array_mut()
        .unwrap()
        .push(json!({"value": "192.0.2.200"}));
    abuse.metadata.managed_fields = None;
    bl.patch(
        "abuse",
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(&abuse),
    )
    .await
    .unwrap();
    eventually("the new entry in the config", LIMIT, || async {
        let now = config_of(&c, ns, "edge").await?;
        (now != before && now.to_string().contains("192.0.2.200")).then_some(())
    })
    .await;
    eventually("the status entry count", LIMIT, || async {
        let r = c.api(&relays(), ns).get("edge").await.ok()?;
        (r.data["status"]["blocklistEntries"].as_i64()? == entries + 1).then_some(())
    })
    .await;

    // An invalid entry: refused at admission (CEL), or reported in status.
    let mut bad = bl.get("abuse").await.unwrap();
    bad.metadata.managed_fields = None;
    bad.data["spec"]["ips"]
        .as_array_mut()
        .unwrap()
        .push(json!({"value": "not-an-ip"}));
    match bl
        .patch(
            "abuse",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&bad),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{}", s.message),
        other => panic!("an invalid IP must be refused at admission: {other:?}"),
    }
    let odd = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist",
        "metadata": {"name": "odd", "labels": {"mailrelay.io/scope": "global"}},
        "spec": {"domains": [{"value": "ok.example"}, {"value": "bad..example"}]}});
    c.apply(ns, &odd).await.unwrap();
    let odd = eventually("the invalid entry in status", LIMIT, || async {
        let o = c.api(&blocklists(), ns).get("odd").await.ok()?;
        (o.data["status"]["invalid"].as_array()?.len() == 1).then_some(o)
    })
    .await;
    assert_eq!(
        odd.data["status"]["invalid"][0]["field"],
        "spec.domains[1].value"
    );
    assert_eq!(odd.data["status"]["entries"], 1);
    assert_eq!(
        condition(&odd, "EntriesValid").unwrap(),
        ("False".to_string(), "InvalidEntries".to_string())
    );

    // Relabel a MailDomain so another Relay selects it.
    let other = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "metadata": {"name": "other"},
        "spec": {"hostname": "mx2.example.com", "domainSelector": {"matchLabels": {"mailrelay.io/relay": "other"}}}});
    c.apply(ns, &other).await.unwrap();
    eventually("other's config", LIMIT, || async {
        config_of(&c, ns, "other").await
    })
    .await;
    let md = c.api(&domains(), ns);
    md.patch(
        "shop-example-org",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"mailrelay.io/relay": "other"}}})),
    )
    .await
    .unwrap();
    eventually(
        "the domain moved between the Relays' configs",
        LIMIT,
        || async {
            let edge = domain_names(&config_of(&c, ns, "edge").await?);
            let other = domain_names(&config_of(&c, ns, "other").await?);
            (edge == ["example.com"] && other == ["shop.example.org"]).then_some(())
        },
    )
    .await;
    eventually(
        "the MailDomain's status names its new Relay",
        LIMIT,
        || async {
            let d = md.get("shop-example-org").await.ok()?;
            (d.data["status"]["relays"] == json!(["other"])).then_some(())
        },
    )
    .await;

    // The autoscaler's path: it scales the Relay through its scale
    // subresource (as `kubectl scale relay edge --replicas 4` does); the
    // workload follows, its replicas owned by the operator's replicas manager.
    c.api(&relays(), ns)
        .patch_scale(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    let owner = eventually(
        "the StatefulSet following the Relay's scale",
        LIMIT,
        || async {
            let sts = sts_api.get("edge").await.ok()?;
            let owner = sts.metadata.managed_fields.iter().flatten().find(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.to_string().contains("f:replicas"))
            })?;
            (sts.data["spec"]["replicas"] == 4).then(|| owner.manager.clone())?
        },
    )
    .await;
    assert_eq!(owner, "mailrelay-operator-replicas");

    // Delete a Relay: its objects are garbage-collected.
    c.api(&relays(), ns)
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    eventually("other's objects collected", LIMIT, || async {
        let cm = c
            .api(&configmaps(), ns)
            .get_opt("other-config")
            .await
            .ok()?;
        let dep = c
            .api(&gvk("apps", "v1", "Deployment", "deployments"), ns)
            .get_opt("other")
            .await
            .ok()?;
        (cm.is_none() && dep.is_none()).then_some(())
    })
    .await;
    eventually(
        "the orphaned MailDomain reports no Relay",
        LIMIT,
        || async {
            let d = md.get("shop-example-org").await.ok()?;
            (condition(&d, "Accepted")? == ("False".to_string(), "NoRelay".to_string()))
                .then_some(())
        },
    )
    .await;
    drop(op);
}

/// A relay process on loopback, killed when dropped (its log printed if
/// the test failed).
struct RelayProcess(Child, PathBuf);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- relay log ---\n{}",
                std::fs::read_to_string(&self.1).unwrap_or_default()
            );
        }
    }
}

fn relay_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mailrelay-operator")).with_file_name("mailrelay");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p mailrelay; `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// The reply a client from `source` gets to MAIL FROM (where the relay,
/// like Postfix with smtpd_delay_reject, refuses a blocked client).
async fn mail_reply(source: IpAddr, addr: SocketAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_default()
    };
    let greeting = next().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    write.write_all(b"EHLO client.example\r\n").await.unwrap();
    while !next().await.starts_with("250 ") {}
    write
        .write_all(b"MAIL FROM:<someone@example.org>\r\n")
        .await
        .unwrap();
    let reply = next().await;
    let _ = write.write_all(b"QUIT\r\n").await;
    reply
}

#[tokio::test]
async fn a_running_relay_refuses_a_newly_blocked_ip_without_a_restart() {
    let c = Cluster::start(operator_rules(|_| {})).await;
    let _op = c.operator("op-1");
    let ns = "edge-ns";
    let relay = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "metadata": {"name": "plain"},
        "spec": {"hostname": "mx.example.com"}});
    let bl = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist", "metadata": {"name": "b"},
        "spec": {"ips": [{"value": "192.0.2.1"}]}});
    eventually("the CRDs", LIMIT, || async {
        c.apply(ns, &relay).await.ok()
    })
    .await;
    c.apply(ns, &bl).await.unwrap();
    let config = eventually("the config", LIMIT, || async {
        config_of(&c, ns, "plain").await
    })
    .await;

    // The relay as its pod would run it: the mounted file to start, the
    // watch on its ConfigMap (as its own ServiceAccount) for changes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (smtp, http) = (free_port(), free_port());
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(relay_binary())
        .arg("run")
        .arg("--config")
        .arg(&file)
        .args(["--config-map", "plain-config", "--namespace", ns])
        .args([
            "--listen",
            &format!("smtp=127.0.0.1:{smtp}"),
            "--http",
            &format!("127.0.0.1:{http}"),
        ])
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .env("KUBECONFIG", c.relay_kubeconfig(ns, "plain"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _relay = RelayProcess(child, log_path);
    let addr: SocketAddr = format!("127.0.0.1:{smtp}").parse().unwrap();
    let client: IpAddr = "127.0.0.79".parse().unwrap();
    eventually("the relay's greeting", LIMIT, || async {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        Some(())
    })
    .await;
    let g = mail_reply(client, addr).await;
    assert!(g.starts_with("250 "), "{g}");
    // The relay's watch was allowed by the Role the operator made.
    eventually("the relay's watch", LIMIT, || async {
        c.sim
            .records()
            .iter()
            .any(|r| {
                r.user == format!("system:serviceaccount:{ns}:plain")
                    && r.verb == "watch"
                    && r.code == 200
            })
            .then_some(())
    })
    .await;

    let mut changed = bl.clone();
    changed["spec"]["ips"]
        .as_array_mut()
        .unwrap()
        .push(json!({"value": "127.0.0.79"}));
    let applied = std::time::Instant::now();
    c.apply(ns, &changed).await.unwrap();
    let reply = eventually("the relay refusing the newly blocked IP", LIMIT, || async {
        let g = mail_reply(client, addr).await;
        g.starts_with("550").then_some(g)
    })
    .await;
    // Reported, never asserted: how long from `kubectl apply` to the
    // running relay refusing (operator reconcile + ConfigMap watch + swap).
    eprintln!("blocklist change to refusal: {:?}", applied.elapsed());
    assert!(reply.contains("5.7.1"), "{reply}");
    let other = mail_reply("127.0.0.80".parse().unwrap(), addr).await;
    assert!(
        other.starts_with("250 "),
        "others are still served: {other}"
    );
    let denied: Vec<_> = c
        .sim
        .records()
        .into_iter()
        .filter(|r| r.code == 403)
        .collect();
    assert!(denied.is_empty(), "nothing was denied: {denied:?}");
}

#[tokio::test]
async fn with_two_replicas_only_the_lease_holder_writes_and_a_killed_holder_is_replaced() {
    let c = Cluster::start(operator_rules(|_| {})).await;
    let mut a = c.operator("op-a");
    let mut b = c.operator("op-b");
    let leases = c.api(
        &gvk("coordination.k8s.io", "v1", "Lease", "leases"),
        OPERATOR_NS,
    );
    let holder = eventually("a leader", LIMIT, || async {
        leases.get_opt("mailrelay-operator").await.ok()??.data["spec"]["holderIdentity"]
            .as_str()
            .map(String::from)
    })
    .await;
    let relay = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "metadata": {"name": "r"}, "spec": {"hostname": "mx.example.com"}});
    eventually("the CRDs", LIMIT, || async {
        c.apply("ha", &relay).await.ok()
    })
    .await;
    eventually("the config", LIMIT, || async {
        config_of(&c, "ha", "r").await
    })
    .await;

    let (leader, standby) = if holder == "op-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let writes_by = |token: &str| {
        c.sim
            .records()
            .into_iter()
            .filter(|r| r.token == token && !matches!(r.verb.as_str(), "get" | "list" | "watch"))
            .filter(|r| !r.path.contains("/leases"))
            .count()
    };
    assert!(writes_by(&leader.token) > 0);
    assert_eq!(
        writes_by(&standby.token),
        0,
        "the standby wrote nothing but its lease attempts"
    );

    leader.kill();
    let standby_id = standby.identity.clone();
    let took_over = eventually(
        "the standby taking the lease",
        Duration::from_secs(40),
        || async {
            let h =
                leases.get_opt("mailrelay-operator").await.ok()??.data["spec"]["holderIdentity"]
                    .as_str()
                    .map(String::from)?;
            (h == standby_id).then_some(h)
        },
    )
    .await;
    assert_eq!(took_over, standby.identity);
    let bl = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Blocklist", "metadata": {"name": "b"}, "spec": {"ips": [{"value": "192.0.2.9"}]}});
    c.apply("ha", &bl).await.unwrap();
    eventually("the new leader reconciling", LIMIT, || async {
        config_of(&c, "ha", "r")
            .await?
            .to_string()
            .contains("192.0.2.9")
            .then_some(())
    })
    .await;
    assert!(writes_by(&standby.token) > 0, "the new leader writes");
}

#[tokio::test]
async fn a_verb_missing_from_the_role_shows_as_a_forbidden_request() {
    // Take `patch` on relays/status away from the ClusterRole.
    let rules = operator_rules(|rules| {
        for r in rules.as_array_mut().unwrap() {
            let status = r["resources"]
                .as_array()
                .is_some_and(|res| res.iter().any(|x| x == "relays/status"));
            if status {
                r["verbs"] = json!(["get"]);
            }
        }
    });
    let c = Cluster::start(rules).await;
    let op = c.operator("op-1");
    let relay = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "metadata": {"name": "r"}, "spec": {"hostname": "mx.example.com"}});
    eventually("the CRDs", LIMIT, || async {
        c.apply("ns", &relay).await.ok()
    })
    .await;
    let denied = eventually("a 403", LIMIT, || async {
        c.sim.records().into_iter().find(|r| r.code == 403)
    })
    .await;
    eprintln!("403: {} {} -> {}", denied.verb, denied.path, denied.message);
    assert_eq!(
        denied.message,
        "relays.mailrelay.io \"r\" is forbidden: User \"system:serviceaccount:mailrelay-system:mailrelay-operator\" cannot patch resource \"relays/status\" in API group \"mailrelay.io\" in the namespace \"ns\""
    );
    let r = c.api(&relays(), "ns").get("r").await.unwrap();
    assert!(
        r.data["status"].is_null(),
        "the operator could not write the status"
    );
    drop(op);
}
