//! Issue 19's fleet reports, end to end, and issue 16's unreachable
//! webhook: kube-sim with the real `mailrelay-operator`, and two relay
//! processes as the Relay's two pods (Pod objects in kube-sim carry their
//! addresses, as the kubelet would set them). Both take traffic; one is
//! drained midway and handed its counts to the other. Once the period is
//! over, the operator sends one DMARC and one TLS-RPT report per domain,
//! with the counts of both pods, as mail through the relay itself: they
//! reach smtp-sink DKIM-signed (checked by dkimpy) and their documents
//! validate against the committed schemas (RFC 7489's XSD, our RFC 8460
//! JSON Schema); the TLS-RPT report is also POSTed to the domain's `https`
//! destination. The Relay's event webhook, where nothing listens, shows as
//! `EventWebhookReady=False` with reason `WebhookUnreachable`.
//!
//! Hosts: 127.0.0.140 (the MX sink), 127.0.0.142 (the inbound client),
//! 127.0.0.141 (the webhook nobody answers), 127.0.0.143 (the https
//! TLS-RPT destination).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mail_parser::MimeHeaders as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dns::Dnsmasq;
use common::manifests::ALICE;
use common::policy_server::{HttpsCollector, Pki};
use common::process::{Guard, free_ports};
use common::reports::{
    Hosts, REMOTE, REPORTS_DOMAIN, SECRET, SENDER_DOMAIN, aggregates, counts, now, setup, start,
};
use common::sink::{Answer, Sink, saved};
use common::smtp::Smtp;
use common::{LOCALHOST, RelayProcess, wait_for};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use mailrelay_crds::reports::internal_key;
use mailrelay_crds::{MailDomain, Relay};
use serde_json::{Value, json};

const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 140);
const HOSTS: Hosts = Hosts {
    mx: MX,
    client: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 142)),
    https_rua: None,
};
/// The TLS-RPT `https` destination.
const HTTPS_RUA: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 143));
const WEBHOOK: &str = "http://127.0.0.141:9/events";
/// The reporting period: short, so the test sees one end.
const PERIOD: i64 = 30;
const NS: &str = "mail";
/// The Setup's Relay.
const RELAY: &str = "test";
const WITHIN: Duration = Duration::from_secs(90);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The operator binary, built beside ours by `cargo test --workspace`.
fn operator_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mailrelay")).with_file_name("mailrelay-operator");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p mailrelay-operator; `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

async fn admin(sim: &kube_sim::KubeSim) -> Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig(kube_sim::ADMIN_TOKEN, NS)).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// `kubectl apply` of a typed object.
async fn apply<K>(client: &Client, obj: &K)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), NS);
    let name = obj.meta().name.clone().unwrap();
    let mut obj = obj.clone();
    obj.meta_mut().namespace = Some(NS.into());
    api.patch(
        &name,
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

/// A Secret as the API server stores it: `stringData` merged into `data`
/// (kube-sim keeps what it is given).
fn stored(mut secret: Secret) -> Secret {
    let data = secret.data.get_or_insert_with(Default::default);
    for (k, v) in secret.string_data.take().unwrap_or_default() {
        data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
    }
    secret
}

/// The Pod object of relay process `name`, ready, at its HTTP address.
async fn pod(client: &Client, name: &str, relay: &RelayProcess) {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "mailrelay", "app.kubernetes.io/instance": RELAY}},
        "spec": {"containers": [{"name": "relay", "image": "mailrelay:test",
            "ports": [{"name": "http", "containerPort": relay.addrs.http.port()}]}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"podIP": relay.addrs.http.ip().to_string(),
        "conditions": [{"type": "Ready", "status": "True"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The decompressed attachment of a saved report mail (base64 of gzip).
fn attachment(mail: &str, content_type: &str) -> String {
    let message = mail_parser::MessageParser::default()
        .parse(mail.as_bytes())
        .unwrap_or_else(|| panic!("not a message:\n{mail}"));
    let part = message
        .attachments()
        .find(|a| {
            let (t, sub) = content_type.split_once('/').unwrap();
            a.is_content_type(t, sub)
        })
        .unwrap_or_else(|| panic!("no {content_type} attachment:\n{mail}"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(part.contents())
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// Run a validator script of the test venv's Python on `document`
/// against `schema`; its output when it fails.
fn validate(script: &str, schema: &Path, document: &str, dir: &Path) -> Result<(), String> {
    let file = dir.join("document");
    std::fs::write(&file, document).unwrap();
    let out = Command::new(common::dkimpy::venv_python())
        .arg("-c")
        .arg(script)
        .arg(schema)
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const XSD: &str = "import sys, xmlschema; xmlschema.XMLSchema(sys.argv[1]).validate(sys.argv[2])";
const JSON_SCHEMA: &str = "import sys, json, jsonschema; jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1])))";

/// The saved report mails whose subject names `domain`.
fn reports_for(sink: &Path, domain: &str) -> Vec<String> {
    let subject = format!("Report Domain: {domain} ");
    saved(sink)
        .into_iter()
        .filter(|m| m.contains(&subject))
        .collect()
}

fn status_of(relay: &Relay) -> Value {
    serde_json::to_value(&relay.status).unwrap()
}

#[test]
fn the_operator_sends_one_report_per_domain_with_the_counts_of_every_pod() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::Builder::new()
        .prefix("mailrelay-fleet-")
        .tempdir()
        .unwrap();
    let dir = root.path();
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    // The https destination, with a certificate of a CA the operator is
    // told to trust (--report-ca).
    let https_rua = SocketAddr::new(HTTPS_RUA, free_ports(&[HTTPS_RUA])[0]);
    let pki = Pki::new();
    std::fs::write(dir.join("report-ca.pem"), &pki.ca_pem).unwrap();
    let collector = rt.block_on(HttpsCollector::start(
        https_rua,
        pki.server(&[&HTTPS_RUA.to_string()]),
    ));
    let setup = setup(
        Hosts {
            https_rua: Some(https_rua),
            ..HOSTS
        },
        &format!("{PERIOD}s"),
        &format!(
            "events: {{webhooks: [{{url: \"{WEBHOOK}\", secret: {{name: hook-key, key: key}}}}]}}"
        ),
    )
    .secret("hook-key", &[("key", "a-webhook-signing-key-of-the-test")]);
    let dns = Dnsmasq::start(dir, &setup.dns_records);
    let sink_dir = dir.join("sink");
    let _sink = Sink::start(MX, &sink_dir, Answer::Accept);

    // The cluster and the operator (as a cluster admin: its RBAC is
    // operator/tests' business), asking the pods every second.
    let sim = rt.block_on(kube_sim::KubeSim::start()).unwrap();
    let client = rt.block_on(admin(&sim));
    let kubeconfig = dir.join("operator.kubeconfig");
    sim.write_kubeconfig(&kubeconfig, kube_sim::ADMIN_TOKEN, NS)
        .unwrap();
    let operator_log = dir.join("operator.log");
    let http = free_ports(&[LOCALHOST])[0];
    let mut operator = Guard::spawn(
        "mailrelay-operator",
        Command::new(operator_binary())
            .args(["run", "--http-addr", &format!("127.0.0.1:{http}")])
            .args([
                "--apply-crds",
                "--no-mx-check",
                "--dns",
                &dns.addr.to_string(),
            ])
            .args(["--pod-poll-interval", "1s", "--log-format", "text"])
            .arg("--report-ca")
            .arg(dir.join("report-ca.pem"))
            .args(["--log-level", "info,kube=warn"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("POD_NAMESPACE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&operator_log).unwrap()),
    );
    let op_log = || std::fs::read_to_string(&operator_log).unwrap_or_default();

    // The Relay's hand-off Secret first, with the pods' secret: the
    // operator keeps a Secret that exists.
    let handoff: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{RELAY}-handoff")}, "stringData": {"secret": SECRET}}))
    .unwrap();
    let handoff = stored(handoff);
    rt.block_on(apply(&client, &handoff));
    let manifests_dir = dir.join("manifests");
    setup.write(&manifests_dir);
    let manifests =
        mailrelay_crds::manifests::load_dir(&manifests_dir).unwrap_or_else(|e| panic!("{e:?}"));
    rt.block_on(async {
        for s in &manifests.secrets {
            apply(&client, &stored(s.object.clone())).await;
        }
        // The CRDs are the operator's to install (--apply-crds).
        let relays: Api<Relay> = Api::namespaced(client.clone(), NS);
        let relay = manifests.relays[0].object.clone();
        let deadline = tokio::time::Instant::now() + WITHIN;
        while relays
            .patch(
                RELAY,
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(&relay),
            )
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no Relay CRD:\n{}",
                op_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for d in &manifests.domains {
            apply::<MailDomain>(&client, &d.object).await;
        }
    });

    // The two pods, started inside one period with room to spare.
    let ports = free_ports(&[LOCALHOST, LOCALHOST]);
    let (to_a, to_b) = (
        SocketAddr::new(LOCALHOST, ports[0]),
        SocketAddr::new(LOCALHOST, ports[1]),
    );
    let mut a = start(dir, "a", &setup, dns.addr, to_a, &[to_b]);
    let b = start(dir, "b", &setup, dns.addr, to_b, &[]);
    rt.block_on(pod(&client, "test-a", &a));
    rt.block_on(pod(&client, "test-b", &b));
    while now().rem_euclid(PERIOD) > PERIOD / 3 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let began = now();
    let period_start = began - began.rem_euclid(PERIOD);

    for relay in [&a, &b] {
        for n in 0..2 {
            let mut smtp = Smtp::hello(LOCALHOST, relay.addrs.smtp);
            let sent = smtp.send_mail(
                "sender@hosted.test",
                &[&format!("user@{REMOTE}")],
                &format!("Subject: outbound {n}\r\n\r\nbody {n}\r\n"),
            );
            smtp.quit();
            assert!(sent.queue_id().is_some(), "{sent:?}");
            let mut smtp = Smtp::hello(HOSTS.client, relay.addrs.smtp);
            let sent = smtp.send_mail(
                &format!("bounce@{SENDER_DOMAIN}"),
                &[ALICE],
                &format!("From: <news@{SENDER_DOMAIN}>\r\nTo: <{ALICE}>\r\nSubject: inbound {n}\r\n\r\nhello\r\n"),
            );
            smtp.quit();
            assert!(sent.queue_id().is_some(), "{sent:?}");
        }
    }
    wait_for(
        WITHIN,
        || (saved(&sink_dir).len() >= 4).then_some(()),
        || {
            format!(
                "{} of 4 delivered\n{}",
                saved(&sink_dir).len(),
                a.log_text()
            )
        },
    );
    let key = internal_key(SECRET.as_bytes());
    let both = wait_for(
        WITHIN,
        || {
            let (ca, cb) = (
                counts(&aggregates(a.addrs.http, &key, began, PERIOD), MX),
                counts(&aggregates(b.addrs.http, &key, began, PERIOD), MX),
            );
            (ca.2 == 2 && cb.2 == 2 && ca.1 >= 1 && cb.1 >= 1).then_some((
                ca.0 + cb.0,
                ca.1 + cb.1,
                ca.2 + cb.2,
            ))
        },
        || "each pod counts its own traffic".into(),
    );

    // Pod a is scaled away: drained (its counts go to b), then gone.
    let status = a.terminate(WITHIN).expect("a exits");
    assert!(status.success(), "a: {status}\n{}", a.log_text());
    rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        pods.delete("test-a", &DeleteParams::default())
            .await
            .unwrap();
    });
    assert!(
        now() < period_start + PERIOD,
        "the traffic and the drain took longer than the period; the test cannot tell its reports apart"
    );

    // Issue 16: the pods cannot reach the webhook, and the Relay says so.
    let relays: Api<Relay> = Api::namespaced(client.clone(), NS);
    let condition = wait_for(
        WITHIN,
        || {
            let r = rt.block_on(relays.get(RELAY)).ok()?;
            let c = r
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "EventWebhookReady")?;
            (c.reason == "WebhookUnreachable").then_some(c)
        },
        || format!("no WebhookUnreachable condition\n{}", op_log()),
    );
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.contains("http://127.0.0.141:9/…: ")
            && !condition.message.contains("/events")
            && condition.message.contains("pod test-b"),
        "{}",
        condition.message
    );

    // After the period: one report per domain, sent through b.
    let (dmarc, tls) = wait_for(
        WITHIN + Duration::from_secs(PERIOD as u64),
        || {
            let d = reports_for(&sink_dir, SENDER_DOMAIN);
            let t = reports_for(&sink_dir, REMOTE);
            (!d.is_empty() && !t.is_empty()).then_some((d, t))
        },
        || format!("no reports at the sink\n{}\n{}", op_log(), b.log_text()),
    );
    let status = wait_for(
        WITHIN,
        || {
            let r = rt.block_on(relays.get(RELAY)).ok()?;
            let reports = status_of(&r)["reports"].clone();
            let end = jiff::Timestamp::from_second(period_start + PERIOD)
                .unwrap()
                .to_string();
            (reports["lastPeriodEnd"] == json!(end)).then_some(reports)
        },
        || format!("status.reports not written\n{}", op_log()),
    );
    assert_eq!(status["sent"], json!(2), "{status}");
    assert_eq!(dmarc.len(), 1, "one DMARC report for {SENDER_DOMAIN}");
    assert_eq!(tls.len(), 1, "one TLS-RPT report for {REMOTE}");

    // Signed by the reports' domain, as dkimpy sees it.
    for mail in [&dmarc[0], &tls[0]] {
        let signature = mail
            .lines()
            .find(|l| l.starts_with("DKIM-Signature:"))
            .unwrap_or_else(|| panic!("not signed:\n{mail}"));
        assert!(
            signature.contains(&format!("d={REPORTS_DOMAIN}")),
            "{signature}"
        );
        let verdict = common::dkimpy::run(
            r#"print("pass" if dkim.verify(message, dnsfunc=dnsfunc) else "fail")"#,
            dir,
            dns.addr,
            mail.as_bytes(),
        );
        assert_eq!(verdict, "pass", "{mail}");
    }

    // The documents: valid, with both pods' counts.
    let xml = attachment(&dmarc[0], "application/gzip");
    validate(
        XSD,
        &workspace().join("operator/schemas/dmarc-rfc7489.xsd"),
        &xml,
        dir,
    )
    .unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let counted: u64 = xml
        .split("<count>")
        .skip(1)
        .map(|c| c.split('<').next().unwrap().trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, both.2, "{xml}");
    assert_eq!(counted, 4, "two inbound messages through each pod");
    let json_text = attachment(&tls[0], "application/tlsrpt+gzip");
    validate(
        JSON_SCHEMA,
        &workspace().join("operator/schemas/tlsrpt-rfc8460.schema.json"),
        &json_text,
        dir,
    )
    .unwrap_or_else(|e| panic!("{e}\n{json_text}"));
    let report: Value = serde_json::from_str(&json_text).unwrap();
    let summary = &report["policies"][0]["summary"];
    assert_eq!(
        (
            summary["total-successful-session-count"].as_u64(),
            summary["total-failure-session-count"].as_u64()
        ),
        (Some(both.0), Some(both.1)),
        "{json_text}"
    );
    assert_eq!(
        report["policies"][0]["policy"]["policy-domain"],
        json!(REMOTE)
    );
    // The same report, POSTed to the https destination (RFC 8460 §5.4).
    let posted = collector.posted();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(
        (posted[0].path.as_str(), posted[0].content_type.as_str()),
        ("/tlsrpt", "application/tlsrpt+gzip")
    );
    let mut body = String::new();
    flate2::read::GzDecoder::new(posted[0].body.as_slice())
        .read_to_string(&mut body)
        .unwrap();
    assert_eq!(body, json_text);
    operator.stop(Duration::from_secs(5));
    drop(b);
}
