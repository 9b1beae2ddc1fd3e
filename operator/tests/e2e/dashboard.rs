//! The chart's Grafana dashboard (`charts/mailrelay/files/grafana-dashboard.json`)
//! against a real Prometheus that scrapes a running relay (standalone, from
//! manifests, after some mail) and the operator (reconciling against
//! kube-sim): the template variables resolve to the scraped Relay, every
//! PromQL expression evaluates without error, and every metric name in
//! them is one the binaries export.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cluster::{Cluster, eventually, free_port, operator_rules, root};
use crate::prometheus::{Prometheus, exported_names, http_get, metric_names};
use crate::{RelayProcess, relay_binary};

const LIMIT: Duration = Duration::from_secs(30);
/// The target labels a relay pod gets from the chart's PodMonitor
/// (`namespace`, `pod`, and `relay` from its relabelling of
/// app.kubernetes.io/instance), given here as static labels.
const NAMESPACE: &str = "mail";
const RELAY: &str = "edge";
/// What Grafana puts for its own interval variables.
const INTERVALS: [(&str, &str); 3] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "1h"),
];

/// Manifests for `mailrelay run`: the Relay `edge` with an smtp listener;
/// `example.test` delivered into a maildir (delivered mail, latencies,
/// SPF/DKIM/DMARC results); `dead.test` to a closed LMTP port (deferrals).
/// Both only tag what fails the checks: the test's DNS answers nothing.
fn write_manifests(dir: &Path) {
    let maildir = dir.join("mail");
    std::fs::create_dir_all(&maildir).unwrap();
    let text = format!(
        "apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata:
  name: {RELAY}
spec:
  hostname: mx.example.test
  listeners:
    - name: smtp
  dns:
    timeout: 1s
---
apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: example-test
spec:
  domain: example.test
  inbound:
    localParts: [alice]
  inboundAuth:
    policy: Tag
  delivery: {{maildir: {{path: {maildir}}}}}
---
apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: dead-test
spec:
  domain: dead.test
  inbound:
    localParts: [bob]
  inboundAuth:
    policy: Tag
  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}
",
        maildir = maildir.display()
    );
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/mail.yaml"), text).unwrap();
}

/// One SMTP transaction: the replies to each RCPT, and to the end of DATA
/// when a recipient was taken.
async fn send(addr: SocketAddr, rcpts: &[&str]) -> Vec<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut reply = async || loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_default();
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line;
        }
    };
    let say = async |w: &mut tokio::net::tcp::OwnedWriteHalf, s: &str| {
        w.write_all(format!("{s}\r\n").as_bytes()).await.unwrap();
    };
    let mut out = Vec::new();
    assert!(reply().await.starts_with("220"));
    say(&mut write, "EHLO client.example.org").await;
    assert!(reply().await.starts_with("250"));
    say(&mut write, "MAIL FROM:<someone@example.org>").await;
    assert!(reply().await.starts_with("250"));
    let mut taken = false;
    for r in rcpts {
        say(&mut write, &format!("RCPT TO:<{r}>")).await;
        let line = reply().await;
        taken |= line.starts_with("250");
        out.push(line);
    }
    if taken {
        say(&mut write, "DATA").await;
        assert!(reply().await.starts_with("354"));
        say(&mut write, "From: <someone@example.org>\r\nSubject: dashboard\r\nMessage-ID: <dash@example.org>\r\n\r\nhello\r\n.").await;
        out.push(reply().await);
    }
    say(&mut write, "QUIT").await;
    out
}

/// The relay, standalone, on free loopback ports; DNS is a closed loopback
/// port (lookups fail at once, nothing leaves the machine).
async fn start_relay(dir: &Path) -> (RelayProcess, SocketAddr, SocketAddr) {
    write_manifests(dir);
    let smtp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.join("relay.log");
    let child = Command::new(relay_binary())
        .arg("run")
        .arg("--manifests")
        .arg(dir.join("manifests"))
        .args([
            "--listen",
            &format!("smtp={smtp}"),
            "--http",
            &http.to_string(),
        ])
        .args(["--dns", &format!("127.0.0.1:{}", free_port())])
        .arg("--spool")
        .arg(dir.join("spool"))
        .env("TMPDIR", dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let relay = RelayProcess(child, log);
    eventually("the relay ready", LIMIT, || async {
        (http_get(http, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    (relay, smtp, http)
}

/// Every target's `expr` in the dashboard, panels inside rows included.
fn expressions(panels: &Value, out: &mut Vec<(String, String)>) {
    for p in panels.as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        if p["type"] != "row" {
            let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
            assert!(targets > 0, "panel {title:?} has no query");
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str();
            out.push((title.clone(), expr.unwrap_or_default().to_string()));
        }
        expressions(&p["panels"], out);
    }
}

/// `text` with the template variables and Grafana's intervals put in.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut s = text.to_string();
    for (k, v) in INTERVALS {
        s = s.replace(k, v);
    }
    for (k, v) in vars {
        s = s
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    assert!(!s.contains('$'), "a variable left unsubstituted in {s}");
    s
}

/// The dashboard's query variables, resolved through Prometheus in order
/// (a later one may use an earlier one): each must offer the value the
/// scraped relay carries.
async fn resolve_variables(dashboard: &Value, prom: &Prometheus) -> BTreeMap<String, String> {
    let want = BTreeMap::from([("namespace", NAMESPACE), ("relay", RELAY)]);
    let mut vars = BTreeMap::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        if v["type"] == "datasource" {
            continue;
        }
        assert_eq!(v["type"], "query", "variable {name}");
        let def = v["definition"].as_str().unwrap();
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(SELECTOR, LABEL): {def}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let selector = substitute(selector.trim(), &vars);
        let values = prom.label_values(label.trim(), &selector).await;
        let expected = want
            .get(name)
            .unwrap_or_else(|| panic!("variable {name}: no value for it in this test"));
        assert!(
            values.iter().any(|x| x == expected),
            "variable {name} ({def}) offers {values:?}, not {expected}"
        );
        vars.insert(name.to_string(), expected.to_string());
    }
    for name in want.keys() {
        assert!(
            vars.contains_key(*name),
            "the dashboard has no variable {name}"
        );
    }
    vars
}

#[tokio::test]
async fn every_dashboard_expression_evaluates_in_prometheus_and_reads_only_exported_metrics() {
    let path = root().join("charts/mailrelay/files/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    // The operator reconciling a Relay, so its reconcile series exist.
    let c = Cluster::start(operator_rules(|_| {})).await;
    let op = c.operator("op-1");
    let relay_object = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "Relay",
        "metadata": {"name": RELAY}, "spec": {"hostname": "mx.example.test"}});
    eventually("the CRDs, then the Relay applied", LIMIT, || async {
        c.apply(NAMESPACE, &relay_object).await.ok()
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let (_relay, smtp, relay_http) = start_relay(dir.path()).await;
    let accepted = send(smtp, &["alice@example.test", "bob@dead.test"]).await;
    assert!(
        accepted.iter().all(|r| r.starts_with("250")),
        "{accepted:?}"
    );
    let refused = send(smtp, &["nobody@example.test", "friend@elsewhere.test"]).await;
    assert!(refused.iter().all(|r| r.starts_with('5')), "{refused:?}");

    let scrape = format!(
        "  - job_name: relay
    static_configs:
      - targets: ['{relay_http}']
        labels: {{namespace: {NAMESPACE}, pod: {RELAY}-0, relay: {RELAY}}}
  - job_name: operator
    static_configs:
      - targets: ['{}']
        labels: {{namespace: mailrelay-system, pod: mailrelay-operator-0}}
",
        op.http
    );
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = Prometheus::start(&prom_dir, &scrape).await;
    // Both delivered and deferred mail, and a reconcile, seen in several
    // scrapes (rate() needs two samples; the counters exist at 0 before).
    for (what, expr) in [
        (
            "delivered and deferred mail",
            r#"count(sum by (result) (mailrelay_deliveries_total{relay="edge", result=~"delivered|deferred"})) == 2"#,
        ),
        (
            "three scrapes of the relay",
            r#"count_over_time(mailrelay_messages_accepted_total{relay="edge"}[1m]) >= 3"#,
        ),
        (
            "a reconcile of the Relay",
            r#"mailrelay_operator_reconciles_total{kind="Relay"} > 0"#,
        ),
        (
            "three scrapes of the operator",
            r#"count_over_time(mailrelay_operator_reconciles_total{kind="Relay"}[1m]) >= 3"#,
        ),
    ] {
        eventually(what, LIMIT, || async {
            let data = prom.query(expr).await.ok()?;
            (!data["result"].as_array()?.is_empty()).then_some(())
        })
        .await;
    }

    // The control: an error is reported as one.
    assert!(
        prom.query("sum(rate(mailrelay_messages_accepted_total[1m])")
            .await
            .is_err(),
        "a query with an unclosed parenthesis did not fail"
    );

    let vars = resolve_variables(&dashboard, &prom).await;
    let mut exprs = Vec::new();
    expressions(&dashboard["panels"], &mut exprs);
    assert!(!exprs.is_empty(), "no expressions in {}", path.display());

    let mut errors = Vec::new();
    let mut empty = Vec::new();
    let mut names = BTreeSet::new();
    for (panel, expr) in &exprs {
        let q = substitute(expr, &vars);
        names.extend(metric_names(&q));
        match prom.query(&q).await {
            Ok(data) if data["result"].as_array().is_some_and(|r| r.is_empty()) => {
                empty.push(format!("{panel}: {q}"))
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("{panel}: {q}\n    {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {} dashboard expressions failed:\n{}",
        errors.len(),
        exprs.len(),
        errors.join("\n")
    );

    let mut exported = BTreeSet::new();
    for addr in [relay_http, op.http] {
        let (status, body) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200, "/metrics of {addr}");
        exported.extend(exported_names(&body));
    }
    // The control: a counter is stored with its _total suffix only.
    assert!(exported.contains("mailrelay_messages_accepted_total"));
    assert!(!exported.contains("mailrelay_messages_accepted"));
    let unknown: Vec<_> = names.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard reads metrics the relay and the operator do not export: {unknown:?}"
    );
    println!(
        "dashboard: {} expressions evaluated without error ({} with data); {} metric names, all exported; variables {vars:?}",
        exprs.len(),
        exprs.len() - empty.len(),
        names.len()
    );
    for e in &empty {
        println!("dashboard: no data (yet) for {e}");
    }
}
