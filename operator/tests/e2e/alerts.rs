//! Issue 17, part 3.3: a real Prometheus (Debian's `prometheus`) scrapes a
//! running relay and the operator against kube-sim, with the rules the
//! chart renders (low thresholds and no `for:`), and mail to a dead next
//! hop piles up until Prometheus fires MailrelayDestinationSuspended and
//! MailrelayQueueOldMessage, checked through `/api/v1/alerts`. Every
//! `mailrelay_*` metric the rules name must be one the two binaries
//! export on their /metrics (the relay with a TLS certificate, the
//! operator with a MailDomain that has a DKIM key, so that those series
//! exist).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cluster::{Cluster, eventually, operator_rules, root};
use crate::{LIMIT, RelayProcess, config_of, domains, free_port, relay_binary};

/// How long Prometheus gets to fire an alert once the mail is queued: it
/// scrapes and evaluates every second.
const FIRE_LIMIT: Duration = Duration::from_secs(40);

/// helm: `MAILRELAY_HELM`, else the one tests/run installs, else PATH.
fn helm() -> PathBuf {
    let installed = root().join("target/tools/helm");
    match std::env::var_os("MAILRELAY_HELM") {
        Some(path) => PathBuf::from(path),
        None if installed.exists() => installed,
        None => PathBuf::from("helm"),
    }
}

/// The PrometheusRule's groups as the chart renders them with `sets`, in a
/// rules file Prometheus loads (JSON is YAML).
fn render_rules(sets: &[&str], to: &Path) -> Value {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "mailrelay"])
        .arg(root().join("charts/mailrelay"))
        .args(["--namespace", "mailrelay-system"])
        .args(["--show-only", "templates/prometheusrule.yaml"]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run helm ({}): {e}; tests/run installs it into target/tools/helm \
             (tests/lib/helm-chart.sh install_helm), or set MAILRELAY_HELM",
            helm().display()
        )
    });
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rule: Value = serde_saphyr::from_str(text.trim_start_matches("---\n")).unwrap();
    let groups = json!({"groups": rule["spec"]["groups"]});
    assert!(
        groups["groups"].as_array().is_some_and(|g| !g.is_empty()),
        "no rule groups rendered:\n{text}"
    );
    std::fs::write(to, groups.to_string()).unwrap();
    groups
}

/// A Prometheus server on loopback in its own directory, killed when
/// dropped (its log printed if the test failed).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, config: &Value) -> Prometheus {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config.to_string()).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus: {e}; install Debian's prometheus package \
                     (tests/lib/deps.sh install_peers does)"
                )
            });
        Prometheus { child, addr, log }
    }

    fn api(&self, path: &str) -> Option<Value> {
        let body = http_get(self.addr, path)?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The value of an instant query that returns one sample.
    fn query_one(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let data = self.api(&format!("/api/v1/query?query={encoded}"))?;
        let result = data["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// GET over HTTP/1.0 on loopback: the body of a 200, else `None`.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    ok.then(|| body.to_string())
}

/// The metric names a /metrics page exports, with the suffixes its types
/// give the samples (`_total` of counters, `_bucket`/`_sum`/`_count` of
/// histograms). From the `# TYPE` lines: a family with no series yet
/// still has one.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    names
}

/// Every `mailrelay_*` name in the rules' expressions.
fn named_in_rules(groups: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rule in groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
    {
        let expr = rule["expr"].as_str().unwrap_or_default();
        let mut rest = expr;
        while let Some(at) = rest.find("mailrelay_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// One message through SMTP: the reply to the end of DATA.
async fn send(addr: SocketAddr, n: usize) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut reply = async || loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_default();
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line;
        }
    };
    assert!(reply().await.starts_with("220"));
    for (command, want) in [
        ("EHLO client.test\r\n".to_string(), "250"),
        ("MAIL FROM:<app@example.com>\r\n".into(), "250"),
        (format!("RCPT TO:<user{n}@remote.test>\r\n"), "250"),
        ("DATA\r\n".into(), "354"),
    ] {
        write.write_all(command.as_bytes()).await.unwrap();
        let got = reply().await;
        assert!(got.starts_with(want), "{command:?} got {got}");
    }
    write
        .write_all(format!("Subject: alert {n}\r\n\r\nbody\r\n.\r\n").as_bytes())
        .await
        .unwrap();
    let queued = reply().await;
    let _ = write.write_all(b"QUIT\r\n").await;
    queued
}

/// A Relay that relays for loopback clients through a smarthost nobody
/// listens on (every attempt refused, one refusal suspends it), with a TLS
/// Secret, serving no MailDomain.
fn relay_manifest(dead_hop: u16) -> Value {
    json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay", "metadata": {"name": "alerts"},
        "spec": {"hostname": "mx.example.com", "tls": {"secretName": "alerts-tls"},
            "domainSelector": {"matchLabels": {"served-by": "alerts"}},
            "trustedNetworks": ["127.0.0.0/8"], "relayFromTrustedNetworks": true,
            "smarthost": {"host": "127.0.0.1", "port": dead_hop, "tls": "None"},
            "queue": {"retrySchedule": ["1h"], "jitterPercent": 0, "lifetime": "1d", "delayWarning": "0s",
                "destinations": {"suspendAfterFailures": 1, "probeInterval": "1h", "maxProbeInterval": "1h"}}}})
}

/// A MailDomain whose DKIM key the operator generates (ed25519: fast), so
/// that the operator has a DKIM readiness series.
fn dkim_domain() -> Value {
    json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "MailDomain",
        "metadata": {"name": "signed"},
        "spec": {"domain": "signed.example", "inbound": {"localParts": ["postmaster"]},
            "delivery": {"lmtp": {"host": "dovecot", "port": 24}},
            "dkim": {"selector": "gen", "algorithm": "ed25519-sha256", "generate": true,
                "privateKey": {"name": "signed-dkim", "key": "private.pem"}}}})
}

/// The relay as its pod runs it (compiled config file, watch on its
/// ConfigMap), its TLS Secret mounted under the test's secrets directory.
/// Returns the process, its SMTP and its HTTP address, and the
/// certificate's notAfter.
fn start_relay(
    c: &Cluster,
    ns: &str,
    mut config: Value,
    dir: &Path,
) -> (RelayProcess, SocketAddr, SocketAddr, i64) {
    let secrets = dir.join("secrets");
    let not_after = write_certificate(&secrets.join("alerts-tls"));
    config["secretsDir"] = json!(secrets);
    let file = dir.join("relay.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log_path = dir.join("relay.log");
    let child = Command::new(relay_binary())
        .arg("run")
        .arg("--config")
        .arg(&file)
        .args(["--config-map", "alerts-config", "--namespace", ns])
        .args(["--listen", &format!("smtp={smtp}")])
        .args(["--http", &http.to_string()])
        .arg("--spool")
        .arg(dir.join("spool"))
        .env("KUBECONFIG", c.relay_kubeconfig(ns, "alerts"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    (RelayProcess(child, log_path), smtp, http, not_after)
}

/// Poll `/api/v1/alerts` until every alert of `want` fires; fail after
/// [`FIRE_LIMIT`] with what Prometheus last answered.
async fn wait_firing(prometheus: &Prometheus, want: &[&str]) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    loop {
        if let Some(alerts) = prometheus.api("/api/v1/alerts") {
            let names = firing(&alerts);
            if want.iter().all(|w| names.iter().any(|n| n == w)) {
                println!(
                    "firing after {:?}: {names:?}\n{}",
                    start.elapsed(),
                    serde_json::to_string_pretty(&alerts).unwrap_or_default()
                );
                return alerts;
            }
            last = alerts;
        }
        assert!(
            start.elapsed() < FIRE_LIMIT,
            "after {FIRE_LIMIT:?} Prometheus does not fire {want:?}; /api/v1/alerts said: {last}\n\
             suspended gauge: {:?}, oldest age: {:?}",
            prometheus.query_one("mailrelay_queue_destinations_suspended"),
            prometheus.query_one("mailrelay_queue_oldest_message_age_seconds"),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The rules name only metrics the binaries export (`pages`: their
/// /metrics texts).
fn assert_rules_name_exported_metrics(groups: &Value, pages: &[String]) {
    let exports: BTreeSet<String> = pages.iter().flat_map(|p| exported(p)).collect();
    let named = named_in_rules(groups);
    assert!(named.len() >= 10, "too few metric names found: {named:?}");
    let unknown: Vec<&String> = named.difference(&exports).collect();
    assert!(
        unknown.is_empty(),
        "the rules name metrics neither binary exports: {unknown:?}\nexported: {exports:?}"
    );
}

#[tokio::test]
async fn prometheus_fires_the_charts_alerts_for_mail_piling_up_behind_a_dead_next_hop() {
    let dir = tempfile::tempdir().unwrap();
    let groups = render_rules(
        &[
            "prometheusRule.enabled=true",
            "prometheusRule.relayJob=relay",
            "prometheusRule.operatorJob=operator",
            "prometheusRule.destinationSuspended.for=0s",
            "prometheusRule.oldestMessage.ageSeconds=2",
            "prometheusRule.oldestMessage.for=0s",
        ],
        &dir.path().join("rules.json"),
    );

    let c = Cluster::start(operator_rules(|_| {})).await;
    let operator_http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _op = c.operator_serving("op-1", operator_http);
    let ns = "mail";
    let relay = relay_manifest(free_port());
    eventually("the CRDs", LIMIT, || async {
        c.apply(ns, &relay).await.ok()
    })
    .await;
    c.apply(ns, &dkim_domain()).await.unwrap();
    let config = eventually("the compiled config", LIMIT, || async {
        config_of(&c, ns, "alerts").await
    })
    .await;
    let (_relay, smtp, relay_http, not_after) = start_relay(&c, ns, config, dir.path());
    eventually("the relay's SMTP listener", LIMIT, || async {
        tokio::net::TcpStream::connect(smtp).await.ok().map(|_| ())
    })
    .await;
    eventually("the operator's DKIM readiness gauge", LIMIT, || async {
        let text = http_get(operator_http, "/metrics")?;
        text.lines()
            .any(|l| l.starts_with("mailrelay_operator_dkim_key_ready{") && l.ends_with(" 1"))
            .then_some(())
    })
    .await;

    // The pod's labels, as the relay PodMonitor gives them.
    let prometheus = Prometheus::start(
        dir.path(),
        &json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [dir.path().join("rules.json")],
            "scrape_configs": [
                {"job_name": "relay", "static_configs": [{"targets": [relay_http.to_string()],
                    "labels": {"namespace": ns, "pod": "alerts-0"}}]},
                {"job_name": "operator", "static_configs": [{"targets": [operator_http.to_string()]}]},
            ],
        }),
    );
    // Both scraped; the operator leads (kube-sim's Lease); the relay's
    // certificate expiry is its notAfter.
    eventually("Prometheus scraping relay and operator", LIMIT, || async {
        let relay_up = prometheus.query_one(r#"up{job="relay"}"#)?;
        let operator_up = prometheus.query_one(r#"up{job="operator"}"#)?;
        let leader = prometheus.query_one(r#"mailrelay_operator_leader{job="operator"}"#)?;
        (relay_up == 1.0 && operator_up == 1.0 && leader == 1.0).then_some(())
    })
    .await;
    eventually("the certificate expiry in Prometheus", LIMIT, || async {
        let got = prometheus
            .query_one(r#"mailrelay_tls_certificate_expiry_timestamp_seconds{job="relay"}"#)?;
        assert_eq!(got, not_after as f64, "the relay's certificate expiry");
        Some(())
    })
    .await;
    let quiet = prometheus.api("/api/v1/alerts").unwrap();
    assert!(
        !firing(&quiet)
            .iter()
            .any(|n| n == "MailrelayDestinationSuspended"),
        "fired before any mail was sent: {quiet}"
    );

    for n in 0..5 {
        let queued = send(smtp, n).await;
        assert!(queued.starts_with("250"), "message {n}: {queued}");
    }
    let alerts = wait_firing(
        &prometheus,
        &["MailrelayDestinationSuspended", "MailrelayQueueOldMessage"],
    )
    .await;
    let suspended = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "MailrelayDestinationSuspended")
        .unwrap();
    assert_eq!(suspended["labels"]["pod"], "alerts-0", "{suspended}");
    assert_eq!(suspended["labels"]["severity"], "warning", "{suspended}");
    assert!(
        suspended["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("mail/alerts-0")),
        "{suspended}"
    );

    // Checked last, once deliveries were tried: a family shows on
    // /metrics from its first series on.
    let pages = [
        http_get(relay_http, "/metrics").unwrap(),
        http_get(operator_http, "/metrics").unwrap(),
    ];
    assert_rules_name_exported_metrics(&groups, &pages);

    // A deleted MailDomain takes its DKIM series along (a stale value
    // would keep MailrelayDKIMKeyNotReady firing for a domain that is gone).
    c.api(&domains(), ns)
        .delete("signed", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted domain's DKIM series gone", LIMIT, || async {
        let text = http_get(operator_http, "/metrics")?;
        (!text.contains("mailrelay_operator_dkim_key_ready{")).then_some(())
    })
    .await;
}

/// A self-signed `tls.crt`/`tls.key` pair in `dir`, valid until midnight
/// UTC of 1 March 2040; its notAfter in Unix seconds.
fn write_certificate(dir: &Path) -> i64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mx.example.com".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2040, 3, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    jiff::civil::date(2040, 3, 1)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_second()
}

/// Names of the alerts in the firing state.
fn firing(alerts: &Value) -> Vec<String> {
    alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str().map(String::from))
        .collect()
}
