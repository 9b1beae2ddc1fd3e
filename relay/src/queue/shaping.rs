//! Which shaping entry a destination gets, and which throttle rule a
//! reply triggers (`spec.delivery.shaping`, `spec.delivery.throttle`).
//! Built once per config; pure.

use regex::Regex;

use crate::delivery::classify::operator_pattern;
use mailrelay_crds::config::{ShapeConfig, ShapingConfig, ThrottleRuleConfig};
use mailrelay_crds::shaping::ThrottleAction;

use super::scheduler::{Pace, Throttle};

/// What a destination was matched by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Selected {
    /// No entry: the default limits.
    Default,
    /// Entry `i`, by one of the destination's MX hosts: every domain on
    /// those hosts shares it.
    ByHost(usize),
    /// Entry `i`, by the recipient domain: that domain is a destination
    /// of its own.
    ByDomain(usize),
}

#[derive(Debug, Default)]
pub(crate) struct Shaper {
    default: ShapeConfig,
    entries: Vec<mailrelay_crds::config::DestinationShapeConfig>,
    throttle: Vec<(Regex, ThrottleRuleConfig)>,
}

impl Shaper {
    /// compile() has checked every pattern; one that still fails to build
    /// is left out and logged.
    pub(crate) fn new(config: &ShapingConfig) -> Self {
        let throttle = config
            .throttle
            .iter()
            .filter_map(|rule| Some((operator_pattern(&rule.pattern, "throttle")?, rule.clone())))
            .collect();
        Self {
            default: config.default,
            entries: config.destinations.clone(),
            throttle,
        }
    }

    /// The first entry whose domains match `domain` or whose MX hosts
    /// match one of `hosts` (lower-case names).
    pub(crate) fn select<'a>(
        &self,
        domain: Option<&str>,
        hosts: impl Iterator<Item = &'a str> + Clone,
    ) -> Selected {
        for (i, e) in self.entries.iter().enumerate() {
            if domain.is_some_and(|d| e.domains.iter().any(|p| matches(p, d))) {
                return Selected::ByDomain(i);
            }
            if hosts
                .clone()
                .any(|h| e.mx_hosts.iter().any(|p| matches(p, h)))
            {
                return Selected::ByHost(i);
            }
        }
        Selected::Default
    }

    pub(crate) fn shape(&self, selected: Selected) -> ShapeConfig {
        match selected {
            Selected::Default => self.default,
            Selected::ByHost(i) | Selected::ByDomain(i) => {
                self.entries.get(i).map_or(self.default, |e| e.shape)
            }
        }
    }

    /// The reaction to the first of `replies` that matches a rule, the
    /// rule's time counted from `now` (unix seconds).
    pub(crate) fn throttle<'a>(
        &self,
        replies: impl Iterator<Item = &'a str>,
        now: i64,
    ) -> Option<Throttle> {
        if self.throttle.is_empty() {
            return None;
        }
        for reply in replies {
            let Some((_, rule)) = self.throttle.iter().find(|(re, _)| re.is_match(reply)) else {
                continue;
            };
            let until = now.saturating_add(i64::try_from(rule.duration_secs).unwrap_or(i64::MAX));
            return Some(match (rule.action, rule.message_rate) {
                (ThrottleAction::Slow, Some(rate)) => Throttle::Slow { until, rate },
                _ => Throttle::Suspend {
                    until,
                    reply: reply.to_string(),
                },
            });
        }
        None
    }
}

/// The scheduler's part of a shape.
pub(crate) fn pace(shape: &ShapeConfig) -> Pace {
    Pace {
        max_running: usize::try_from(shape.max_connections).unwrap_or(usize::MAX),
        rate: shape.message_rate,
    }
}

/// `pattern` is a name, or `*.name` for every name below it.
fn matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .strip_suffix(parent)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailrelay_crds::config::{DestinationShapeConfig, RateConfig};

    fn shaper() -> Shaper {
        let shape = |n| ShapeConfig {
            max_connections: n,
            ..ShapeConfig::default()
        };
        Shaper::new(&ShapingConfig {
            default: shape(20),
            destinations: vec![
                DestinationShapeConfig {
                    domains: vec!["slow.example".into()],
                    mx_hosts: vec![],
                    shape: shape(5),
                },
                DestinationShapeConfig {
                    domains: vec!["*.corp.example".into()],
                    mx_hosts: vec!["*.google.com".into()],
                    shape: shape(10),
                },
            ],
            throttle: vec![
                ThrottleRuleConfig {
                    pattern: "(?i)try again later".into(),
                    action: ThrottleAction::Suspend,
                    duration_secs: 60,
                    message_rate: None,
                },
                ThrottleRuleConfig {
                    pattern: r"^421 4\.7\.28 ".into(),
                    action: ThrottleAction::Slow,
                    duration_secs: 3600,
                    message_rate: Some(RateConfig {
                        count: 1,
                        per_secs: 60,
                    }),
                },
            ],
        })
    }

    #[test]
    fn the_first_entry_that_matches_by_domain_or_mx_host_applies() {
        let s = shaper();
        let google = ["aspmx.l.google.com", "alt1.aspmx.l.google.com"];
        let none: [&str; 0] = [];
        assert_eq!(
            s.select(Some("slow.example"), google.iter().copied()),
            Selected::ByDomain(0)
        );
        assert_eq!(
            s.select(Some("gmail.com"), google.iter().copied()),
            Selected::ByHost(1)
        );
        assert_eq!(
            s.select(Some("a.corp.example"), none.iter().copied()),
            Selected::ByDomain(1)
        );
        assert_eq!(
            s.select(Some("corp.example"), none.iter().copied()),
            Selected::Default,
            "*. matches below the name, not the name"
        );
        assert_eq!(
            s.select(Some("x.example"), ["google.com."].iter().copied()),
            Selected::Default
        );
        assert_eq!(
            s.select(None, ["smtp.google.com."].iter().copied()),
            Selected::ByHost(1)
        );
        assert_eq!(s.shape(Selected::ByDomain(0)).max_connections, 5);
        assert_eq!(s.shape(Selected::Default).max_connections, 20);
        assert_eq!(pace(&s.shape(Selected::ByHost(1))).max_running, 10);
    }

    #[test]
    fn the_first_reply_that_matches_a_rule_decides_the_reaction() {
        let s = shaper();
        assert_eq!(s.throttle(["550 5.1.1 no such user"].into_iter(), 0), None);
        assert_eq!(
            s.throttle(
                ["550 5.1.1 no", "421 4.7.0 Try again later", "421 4.7.28 x"].into_iter(),
                100
            ),
            Some(Throttle::Suspend {
                until: 160,
                reply: "421 4.7.0 Try again later".into()
            })
        );
        assert_eq!(
            s.throttle(
                ["421 4.7.28 Our system has detected an unusual rate"].into_iter(),
                100
            ),
            Some(Throttle::Slow {
                until: 3700,
                rate: RateConfig {
                    count: 1,
                    per_secs: 60
                }
            })
        );
    }
}
