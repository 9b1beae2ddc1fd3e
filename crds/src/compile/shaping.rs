//! `spec.delivery.shaping` and `spec.delivery.throttle`: every limit
//! resolved (an entry's unset field from `default`, `default`'s from the
//! built-in value), names normalised, patterns and rates checked, so the
//! relay never parses them.

use super::Report;
use super::normalize;
use super::relay::CLASSIFICATION_REGEX_BYTES;
use crate::config::{
    DestinationShapeConfig, RateConfig, ShapeConfig, ShapingConfig, ThrottleRuleConfig,
};
use crate::relay::RelaySpec;
use crate::shaping::{ShapeLimits, ThrottleAction};

impl Report<'_> {
    pub(super) fn shaping(&mut self, spec: &RelaySpec) -> ShapingConfig {
        let s = &spec.delivery.shaping;
        let base = "spec.delivery.shaping";
        let default = self.shape(
            &format!("{base}.default"),
            &s.default,
            &ShapeConfig::default(),
        );
        let destinations = s
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let field = format!("{base}.destinations[{i}]");
                if d.domains.is_empty() && d.mx_hosts.is_empty() {
                    self.add(&field, "an entry needs domains or mxHosts to match");
                }
                DestinationShapeConfig {
                    domains: self.names(&format!("{field}.domains"), &d.domains),
                    mx_hosts: self.names(&format!("{field}.mxHosts"), &d.mx_hosts),
                    shape: self.shape(&field, &d.limits, &default),
                }
            })
            .collect();
        let throttle = spec
            .delivery
            .throttle
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let field = format!("spec.delivery.throttle[{i}]");
                let pattern = regex::RegexBuilder::new(&t.pattern)
                    .size_limit(CLASSIFICATION_REGEX_BYTES)
                    .build()
                    .map_err(|e| {
                        self.add(
                            format!("{field}.match"),
                            format!("not a valid regular expression: {e}"),
                        )
                    })
                    .ok();
                let duration = self.check(
                    format!("{field}.duration"),
                    normalize::duration(&t.duration),
                );
                if duration.is_some_and(|d| d.as_secs() == 0) {
                    self.add(format!("{field}.duration"), "must be at least 1s");
                }
                let rate = t
                    .message_rate
                    .as_deref()
                    .and_then(|r| self.rate(&format!("{field}.messageRate"), r));
                match (t.action, &t.message_rate) {
                    (ThrottleAction::Slow, None) => self.add(
                        format!("{field}.messageRate"),
                        "a Slow rule needs messageRate",
                    ),
                    (ThrottleAction::Suspend, Some(_)) => self.add(
                        format!("{field}.messageRate"),
                        "messageRate applies only to a Slow rule",
                    ),
                    _ => {}
                }
                Some(ThrottleRuleConfig {
                    pattern: pattern.map(|_| t.pattern.clone())?,
                    action: t.action,
                    duration_secs: duration?.as_secs(),
                    message_rate: rate,
                })
            })
            .collect();
        ShapingConfig {
            default,
            destinations,
            throttle,
        }
    }

    /// `limits` over `inherit`.
    fn shape(&mut self, field: &str, limits: &ShapeLimits, inherit: &ShapeConfig) -> ShapeConfig {
        let mut out = *inherit;
        if let Some(n) = limits.max_connections {
            out.max_connections = self
                .bounded(&format!("{field}.maxConnections"), n, 1, 1000)
                .unwrap_or(out.max_connections);
        }
        if let Some(n) = limits.max_messages_per_connection {
            out.max_messages_per_connection = self
                .bounded(&format!("{field}.maxMessagesPerConnection"), n, 1, 100_000)
                .unwrap_or(out.max_messages_per_connection);
        }
        if let Some(r) = &limits.message_rate {
            out.message_rate = self.rate(&format!("{field}.messageRate"), r);
        }
        if let Some(r) = &limits.connection_rate {
            out.connection_rate = self.rate(&format!("{field}.connectionRate"), r);
        }
        if let Some(d) = &limits.idle_timeout
            && let Some(d) = self.check(format!("{field}.idleTimeout"), normalize::duration(d))
        {
            out.idle_timeout_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        }
        out
    }

    fn bounded(&mut self, field: &str, value: i32, min: u32, max: u32) -> Option<u32> {
        let ok = u32::try_from(value)
            .ok()
            .filter(|v| (min..=max).contains(v));
        if ok.is_none() {
            self.add(field, format!("{value} is not from {min} to {max}"));
        }
        ok
    }

    fn rate(&mut self, field: &str, input: &str) -> Option<RateConfig> {
        self.check(field, normalize::rate(input))
            .map(|(count, per_secs)| RateConfig { count, per_secs })
    }

    fn names(&mut self, field: &str, list: &[String]) -> Vec<String> {
        let mut out: Vec<String> = list
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.check(format!("{field}[{i}]"), normalize::name_pattern(n)))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
