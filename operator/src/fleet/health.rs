//! Event webhooks as the pods see them: the operator asks each pod of a
//! Relay with webhooks for its `/internal/status` now and then and keeps
//! the answers here, so the Relay's and the MailDomains' `EventWebhookReady`
//! conditions can say which webhook does not take its events (only the
//! pods know: the operator's own network path to a receiver proves
//! nothing about the pods').

use std::collections::HashMap;
use std::sync::Mutex;

use mailrelay_crds::reports::WebhookHealth;

/// Failed requests in a row after which a webhook counts as unreachable:
/// one failure is a blip (the sender retries at once with back-off).
pub const FAILURES: u64 = 3;

/// What each pod said, by pod.
pub type Seen = Vec<(String, WebhookHealth)>;

#[derive(Default)]
pub struct HealthBook {
    by_relay: Mutex<HashMap<(String, String), Seen>>,
}

impl HealthBook {
    /// Keep what the pods of `ns/relay` said; `true` when that changes a
    /// problem line (so the conditions are worth recomputing).
    pub fn record(&self, ns: &str, relay: &str, seen: Seen) -> bool {
        let Ok(mut book) = self.by_relay.lock() else {
            return false;
        };
        let key = (ns.to_string(), relay.to_string());
        let before = book
            .get(&key)
            .map(|s| problems(s, |_| true))
            .unwrap_or_default();
        let after = problems(&seen, |_| true);
        if seen.is_empty() {
            book.remove(&key);
        } else {
            book.insert(key, seen);
        }
        before != after
    }

    /// Problem lines of the webhooks named as `wanted` says, on the pods
    /// of `relay` (or of every Relay of `ns`).
    pub fn problems(
        &self,
        ns: &str,
        relay: Option<&str>,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let Ok(book) = self.by_relay.lock() else {
            return Vec::new();
        };
        let mut out: Vec<String> = book
            .iter()
            .filter(|((n, r), _)| n == ns && relay.is_none_or(|want| want == r))
            .flat_map(|(_, seen)| problems(seen, &wanted))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// One line per webhook and pod that failed [`FAILURES`] times in a row.
/// The counts are left out of the line on purpose: they change with every
/// retry, and a condition message that changes every poll would rewrite
/// the status (and wake every watcher) for nothing.
pub fn problems(seen: &[(String, WebhookHealth)], wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = seen
        .iter()
        .filter(|(_, h)| h.consecutive_failures >= FAILURES && wanted(&h.name))
        .map(|(pod, h)| {
            let since = h
                .failing_since
                .and_then(|t| jiff::Timestamp::from_second(t).ok())
                .map(|t| format!(" since {t}"))
                .unwrap_or_default();
            let shown = origin(&h.url);
            // The pod's error names the URL too.
            let error = h
                .last_error
                .as_deref()
                .unwrap_or("failing")
                .replace(&h.url, &shown);
            format!("{shown}: {error} (pod {pod}, failing{since})")
        })
        .collect();
    out.sort();
    out
}

/// A webhook URL as a condition shows it: scheme, host and port, without
/// the path and query, where receivers often put a token (a status is
/// readable by anyone who may read the object).
fn origin(url: &str) -> String {
    let end = url
        .find("://")
        .map(|i| i + 3)
        .and_then(|from| url[from..].find(['/', '?', '#']).map(|i| from + i))
        .unwrap_or(url.len());
    format!("{}/…", &url[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(name: &str, failures: u64, error: &str) -> WebhookHealth {
        WebhookHealth {
            name: name.into(),
            url: format!(
                "http://{}/hook?token=s3cret",
                name.trim_start_matches("relay:")
            ),
            pending: 10 + failures,
            consecutive_failures: failures,
            last_success: None,
            last_error: Some(format!(
                "{error} at http://{}/hook?token=s3cret",
                name.trim_start_matches("relay:")
            )),
            failing_since: Some(1_800_000_000),
        }
    }

    #[test]
    fn a_webhook_failing_three_times_in_a_row_is_a_problem_and_a_blip_is_not() {
        let seen = vec![
            (
                "relay-0".to_string(),
                health("relay:a", 3, "connection refused"),
            ),
            ("relay-1".to_string(), health("relay:a", 1, "HTTP 500")),
            (
                "relay-1".to_string(),
                health("domain:example.org", 7, "HTTP 503"),
            ),
        ];
        let all = problems(&seen, |_| true);
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(
            all[0].contains("(pod relay-0, failing since 2027-01-15T08:00:00Z)"),
            "{all:?}"
        );
        let only_relay = problems(&seen, |n| n.starts_with("relay:"));
        assert_eq!(only_relay.len(), 1);
        let domain = problems(&seen, |n| n == "domain:example.org");
        assert!(domain[0].contains("HTTP 503 at "), "{domain:?}");
        assert!(domain[0].contains("(pod relay-1"), "{domain:?}");
        assert!(
            all[0].starts_with("http://a/…: connection refused at http://a/… (pod"),
            "{all:?}"
        );
        assert!(!all.iter().any(|l| l.contains("s3cret")), "{all:?}");
    }

    #[test]
    fn a_condition_never_shows_a_webhooks_path_or_query() {
        assert_eq!(
            origin("https://hooks.example:8443/T0/B1/xyz?k=v"),
            "https://hooks.example:8443/…"
        );
        assert_eq!(origin("http://[2001:db8::1]/in"), "http://[2001:db8::1]/…");
        assert_eq!(origin("http://h.example"), "http://h.example/…");
    }

    #[test]
    fn the_book_reports_a_change_only_when_a_problem_line_changes() {
        let book = HealthBook::default();
        assert!(book.record(
            "ns",
            "r",
            vec![("p".into(), health("relay:a", 3, "refused"))]
        ));
        // More retries of the same failure: same line.
        assert!(!book.record(
            "ns",
            "r",
            vec![("p".into(), health("relay:a", 9, "refused"))]
        ));
        assert_eq!(book.problems("ns", Some("r"), |_| true).len(), 1);
        assert_eq!(book.problems("other", None, |_| true).len(), 0);
        assert!(book.record(
            "ns",
            "r",
            vec![("p".into(), health("relay:a", 0, "refused"))]
        ));
        assert!(book.problems("ns", None, |_| true).is_empty());
    }
}
