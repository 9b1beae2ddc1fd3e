//! A real Prometheus (Debian's `prometheus` package) on loopback, in a
//! directory of its own, and what the tests ask of it: instant queries
//! through `/api/v1/query`, label values, and the metric names a PromQL
//! expression reads compared with what a `/metrics` page exports.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{eventually, free_port};

/// A running `prometheus`, killed and reaped when dropped (its log is
/// printed when the test failed).
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
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

/// The `prometheus` binary. Never a skip: without it the dashboard is not
/// checked, which is a failure.
fn binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "prometheus is not on PATH: install the Debian package `prometheus` \
                 (tests/run does, through tests/lib/deps.sh)"
            )
        })
}

impl Prometheus {
    /// Start it in `dir` with `scrape_configs` (YAML, a list, indented by
    /// two spaces) scraped every second, and wait until it is ready.
    pub async fn start(dir: &Path, scrape_configs: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus { addr, child, log };
        eventually("prometheus ready", Duration::from_secs(30), || async {
            (http_get(p.addr, "/-/ready").await?.0 == 200).then_some(())
        })
        .await;
        p
    }

    /// An instant query: the `data` of a success, or the error Prometheus
    /// gave (`errorType: error`).
    pub async fn query(&self, expr: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let (status, body) = http_get(self.addr, &path)
            .await
            .ok_or_else(|| format!("no answer from prometheus at {}", self.addr))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("HTTP {status}: {}: {}", v["errorType"], v["error"]))
        }
    }

    /// The values of `label` among the series matching `selector`.
    pub async fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let path = format!("/api/v1/label/{label}/values?match[]={}", encode(selector));
        let (status, body) = http_get(self.addr, &path).await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "HTTP {status}: {body}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    }
}

/// Percent-encoding of a query-string value (RFC 3986 unreserved kept).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over HTTP/1.0 (the server closes the connection): status and body.
/// Async, because kube-sim shares the test's runtime.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The series names a `/metrics` page gives Prometheus: every sample name,
/// and for each declared family the names its type stores even before it
/// has a sample (a labelled family with no child yet prints only `# TYPE`).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// PromQL words that are not metric names where they stand without `(`:
/// binary operators and modifiers, and aggregations written `sum by (l) (x)`.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// Words after which a parenthesised list holds label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression reads: identifiers outside strings,
/// label matchers (`{...}`), ranges (`[...]`) and label lists (`by (...)`),
/// that are neither a function (followed by `(`) nor a keyword.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' || c == '[' {
            let close = if c == '{' { '}' } else { ']' };
            while i < chars.len() && chars[i] != close {
                i = if chars[i] == '"' {
                    skip_string(&chars, i)
                } else {
                    i + 1
                };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            let lower = word.to_ascii_lowercase();
            if call && LABEL_LISTS.contains(&lower.as_str()) {
                while j < chars.len() && chars[j] != ')' {
                    j += 1;
                }
                i = j + 1;
            } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`5m`, `1e3`): not a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' && quote != '`' {
            2
        } else {
            1
        };
    }
    i + 1
}

#[test]
fn metric_names_are_the_series_an_expression_reads_and_nothing_else() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (kind, le) (rate(a_bucket{x="b_c", y=~"d|e"}[5m]))) / on (pod) group_left(relay) b_info or vector(1) + max without(x)(c:rule offset 1h) > bool 2e3"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b_info", "c:rule"]
    );
}

#[test]
fn exported_names_follow_the_types_suffixes() {
    let text = "# TYPE a counter\n# TYPE h histogram\n# TYPE g gauge\ng 1\n# TYPE f counter\nf_total{k=\"v\"} 2\n# EOF\n";
    let names = exported_names(text);
    for n in ["a_total", "h_bucket", "h_sum", "h_count", "g", "f_total"] {
        assert!(names.contains(n), "{n} in {names:?}");
    }
    for n in ["a", "h", "f"] {
        assert!(!names.contains(n), "{n} in {names:?}");
    }
}
