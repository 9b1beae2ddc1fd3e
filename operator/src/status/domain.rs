//! Status of a MailDomain: which Relays serve it, what is wrong with it,
//! whether its MX records lead to a serving Relay, its DKIM key.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use mailrelay_crds::maildomain::DnsCheck;
use mailrelay_crds::{MailDomain, MailDomainStatus};

use super::{Cond, State, list_message, merge};
use crate::controller::Outcome;
use crate::dkim::KeyState;

/// What the Relays of the namespace say about one MailDomain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// Relays whose config holds it.
    pub serving: Vec<String>,
    /// Of those, the ones that are Ready.
    pub ready: Vec<String>,
    /// Relays whose selector matches it.
    pub selecting: Vec<String>,
    /// Its problems, as the Relays reported them (once each).
    pub problems: Vec<String>,
    /// External addresses of the serving Relays.
    pub external: Vec<String>,
    /// Relays selecting it whose reconcile has not succeeded (so whether
    /// they serve it is not known).
    pub unknown: Vec<String>,
    /// Selecting Relays whose own spec is invalid (their pods keep the
    /// last good config, which the operator may not know after a restart).
    pub invalid: Vec<String>,
}

impl View {
    pub(crate) fn new(
        domain: &MailDomain,
        outcomes: &BTreeMap<String, Outcome>,
        selecting: Vec<String>,
    ) -> Self {
        let name = domain.name_any();
        let mut view = Self {
            selecting,
            ..Self::default()
        };
        for (relay, o) in outcomes {
            if o.invalid && view.selecting.contains(relay) && !o.domains.contains(&name) {
                view.invalid.push(relay.clone());
            }
            if o.domains.contains(&name) {
                view.serving.push(relay.clone());
                if o.ready {
                    view.ready.push(relay.clone());
                }
                view.external.extend(o.external.iter().cloned());
            }
            for p in o
                .problems
                .iter()
                .filter(|p| p.object.kind == "MailDomain" && p.object.name == name)
            {
                view.problems.push(format!("{}: {}", p.field, p.message));
            }
        }
        view.problems.sort();
        view.problems.dedup();
        view.external.sort();
        view.external.dedup();
        view
    }
}

/// The condition about the DKIM key, present when `spec.dkim` is set.
pub(crate) const DKIM_CONDITION: &str = "DkimKeyReady";

/// The MailDomain's status from what the Relays say, the MX check and the
/// DKIM key.
pub(crate) fn status(
    domain: &MailDomain,
    view: &View,
    dns: Option<Result<DnsCheck, String>>,
    dkim: Option<&KeyState>,
    now: &Time,
) -> MailDomainStatus {
    let old = domain.status.clone().unwrap_or_default();
    let dkim_record = match dkim {
        Some(KeyState::Ready { record, .. }) => Some(record.clone()),
        _ => None,
    };
    let conditions: Vec<Cond> = [accepted(view), ready(view), dns_configured(dns.as_ref())]
        .into_iter()
        .chain(dkim.map(dkim_key_ready))
        .collect();
    let generation = domain.metadata.generation;
    MailDomainStatus {
        observed_generation: generation,
        relays: view.serving.clone(),
        // A failed lookup keeps what the last good one found.
        dns: match dns {
            Some(Ok(d)) => Some(d),
            Some(Err(_)) => old.dns.clone(),
            None => None,
        },
        dkim_record,
        conditions: merge(&old.conditions, &conditions, generation, now),
    }
}

/// Is the domain in a Relay's config, and if not, why not?
fn accepted(view: &View) -> Cond {
    if !view.problems.is_empty() {
        // A domain can be partly served (a bad alias dropped) or not at all.
        let reason = if view.serving.is_empty() {
            "InvalidSpec"
        } else {
            "PartlyServed"
        };
        let state = State::of(!view.serving.is_empty());
        Cond::new(
            "Accepted",
            state,
            reason,
            list_message("problems", &view.problems, 10),
        )
    } else if view.serving.is_empty() && !view.unknown.is_empty() {
        Cond::new(
            "Accepted",
            State::Unknown,
            "RelayNotReconciled",
            format!(
                "selected by {}, whose reconcile has not succeeded (see its status)",
                view.unknown.join(", ")
            ),
        )
    } else if view.serving.is_empty() && !view.invalid.is_empty() {
        Cond::new(
            "Accepted",
            State::Unknown,
            "RelayInvalid",
            format!(
                "selected by {}, whose spec is invalid; its running pods keep their last good config",
                view.invalid.join(", ")
            ),
        )
    } else if view.serving.is_empty() && view.selecting.is_empty() {
        Cond::new(
            "Accepted",
            State::False,
            "NoRelay",
            "no Relay in this namespace selects this MailDomain (see the Relays' spec.domainSelector)",
        )
    } else if view.serving.is_empty() {
        Cond::new(
            "Accepted",
            State::False,
            "Pending",
            format!(
                "selected by {}, not yet in a config",
                view.selecting.join(", ")
            ),
        )
    } else {
        Cond::new(
            "Accepted",
            State::True,
            "Served",
            format!("served by {}", view.serving.join(", ")),
        )
    }
}

fn ready(view: &View) -> Cond {
    if view.ready.is_empty() {
        Cond::new(
            "Ready",
            State::False,
            "NoReadyRelay",
            "no Relay serving this domain is Ready",
        )
    } else {
        Cond::new(
            "Ready",
            State::True,
            "Served",
            format!("served by Ready Relay {}", view.ready.join(", ")),
        )
    }
}

/// What the MX check found; `None` until a Relay serves the domain.
fn dns_configured(dns: Option<&Result<DnsCheck, String>>) -> Cond {
    match dns {
        None => Cond::new(
            "DnsConfigured",
            State::Unknown,
            "NotChecked",
            "checked once a Relay serves this domain",
        ),
        Some(Err(e)) => Cond::new("DnsConfigured", State::Unknown, "LookupFailed", e.clone()),
        Some(Ok(d)) if d.points_at_relay => Cond::new(
            "DnsConfigured",
            State::True,
            "MxPointsAtRelay",
            d.message.clone(),
        ),
        Some(Ok(d)) => Cond::new(
            "DnsConfigured",
            State::False,
            "MxElsewhere",
            d.message.clone(),
        ),
    }
}

fn dkim_key_ready(key: &KeyState) -> Cond {
    match key {
        KeyState::Ready { .. } => Cond::new(
            DKIM_CONDITION,
            State::True,
            "KeyPresent",
            "the signing key is in its Secret; publish the record in status.dkimRecord",
        ),
        KeyState::Problem { reason, message } => {
            Cond::new(DKIM_CONDITION, State::False, reason, message.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::find;
    use jiff::Timestamp;

    fn domain() -> MailDomain {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mailrelay.io/v1alpha1", "kind": "MailDomain",
            "metadata": {"name": "d", "namespace": "mail", "generation": 1},
            "spec": {"domain": "example.com", "delivery": {"lmtp": {"host": "h", "port": 24}}}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn at() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    fn cond(s: &MailDomainStatus, t: &str) -> (String, String) {
        let c = find(&s.conditions, t).unwrap_or_else(|| panic!("no {t}"));
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_relay_that_has_not_reconciled_makes_acceptance_unknown_not_false() {
        let view = View {
            selecting: vec!["edge".into()],
            unknown: vec!["edge".into()],
            ..View::default()
        };
        let s = status(&domain(), &view, None, None, &at());
        assert_eq!(
            cond(&s, "Accepted"),
            ("Unknown".into(), "RelayNotReconciled".into())
        );
    }

    #[test]
    fn a_failed_mx_lookup_is_unknown_and_keeps_the_last_answer() {
        let view = View {
            serving: vec!["edge".into()],
            selecting: vec!["edge".into()],
            ..View::default()
        };
        let good = DnsCheck {
            mx: vec!["mx.example.com".into()],
            points_at_relay: true,
            message: "ok".into(),
        };
        let mut d = domain();
        d.status = Some(status(&d, &view, Some(Ok(good.clone())), None, &at()));
        assert_eq!(
            cond(
                d.status.as_ref().unwrap_or_else(|| panic!()),
                "DnsConfigured"
            )
            .0,
            "True"
        );
        let s = status(
            &d,
            &view,
            Some(Err("MX lookup for example.com failed: timeout".into())),
            None,
            &at(),
        );
        assert_eq!(
            cond(&s, "DnsConfigured"),
            ("Unknown".into(), "LookupFailed".into())
        );
        assert_eq!(s.dns, Some(good));
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    /// (type, status, reason) of each condition, in order.
    fn conditions(s: &MailDomainStatus) -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn acceptance_and_readiness_follow_what_the_relays_say() {
        let view = |serving: &[&str], ready: &[&str], selecting: &[&str], problems: &[&str]| View {
            serving: names(serving),
            ready: names(ready),
            selecting: names(selecting),
            problems: names(problems),
            ..View::default()
        };
        let not_ready = ("Ready", "False", "NoReadyRelay");
        #[rustfmt::skip]
        let cases = vec![
            ("served by a ready Relay", view(&["a"], &["a"], &["a"], &[]),
             [("Accepted", "True", "Served"), ("Ready", "True", "Served")]),
            ("served, no serving Relay ready", view(&["a"], &[], &["a"], &[]),
             [("Accepted", "True", "Served"), not_ready]),
            ("selected by nobody", view(&[], &[], &[], &[]),
             [("Accepted", "False", "NoRelay"), not_ready]),
            ("selected, not yet in a config", view(&[], &[], &["a"], &[]),
             [("Accepted", "False", "Pending"), not_ready]),
            ("invalid, served by nobody", view(&[], &[], &["a"], &["spec.domain: bad"]),
             [("Accepted", "False", "InvalidSpec"), not_ready]),
            ("partly invalid, served all the same", view(&["a"], &["a"], &["a"], &["spec.aliases[0]: bad"]),
             [("Accepted", "True", "PartlyServed"), ("Ready", "True", "Served")]),
            ("the selecting Relay has not reconciled",
             View { unknown: names(&["a"]), ..view(&[], &[], &["a"], &[]) },
             [("Accepted", "Unknown", "RelayNotReconciled"), not_ready]),
            ("the selecting Relay's spec is invalid",
             View { invalid: names(&["a"]), ..view(&[], &[], &["a"], &[]) },
             [("Accepted", "Unknown", "RelayInvalid"), not_ready]),
            ("problems outrank an unreconciled Relay",
             View { unknown: names(&["a"]), ..view(&[], &[], &["a"], &["spec.domain: bad"]) },
             [("Accepted", "False", "InvalidSpec"), not_ready]),
        ];
        for (name, view, expected) in cases {
            let s = status(&domain(), &view, None, None, &at());
            let mut want: Vec<(String, String, String)> = expected
                .iter()
                .map(|(t, s, r)| (t.to_string(), s.to_string(), r.to_string()))
                .collect();
            want.push((
                "DnsConfigured".into(),
                "Unknown".into(),
                "NotChecked".into(),
            ));
            assert_eq!(conditions(&s), want, "{name}");
            assert_eq!(s.relays, view.serving, "{name}");
        }
    }

    #[test]
    fn the_dns_and_dkim_conditions_follow_the_mx_check_and_the_key() {
        let check = |points_at_relay| DnsCheck {
            mx: names(&["mx.example.com"]),
            points_at_relay,
            message: "m".into(),
        };
        let ready = KeyState::Ready {
            record: "v=DKIM1; k=ed25519; p=AAAA".into(),
            generated: false,
        };
        let missing = KeyState::Problem {
            reason: "SecretMissing",
            message: "no Secret".into(),
        };
        #[rustfmt::skip]
        let cases = vec![
            ("not checked, no DKIM", None, None,
             vec![("DnsConfigured", "Unknown", "NotChecked")]),
            ("MX at the relay", Some(Ok(check(true))), None,
             vec![("DnsConfigured", "True", "MxPointsAtRelay")]),
            ("MX elsewhere", Some(Ok(check(false))), None,
             vec![("DnsConfigured", "False", "MxElsewhere")]),
            ("lookup failed", Some(Err("timeout".into())), None,
             vec![("DnsConfigured", "Unknown", "LookupFailed")]),
            ("key present", None, Some(&ready),
             vec![("DnsConfigured", "Unknown", "NotChecked"), (DKIM_CONDITION, "True", "KeyPresent")]),
            ("key missing", None, Some(&missing),
             vec![("DnsConfigured", "Unknown", "NotChecked"), (DKIM_CONDITION, "False", "SecretMissing")]),
        ];
        let view = View {
            serving: names(&["a"]),
            ready: names(&["a"]),
            selecting: names(&["a"]),
            ..View::default()
        };
        for (name, dns, dkim, expected) in cases {
            let s = status(&domain(), &view, dns.clone(), dkim, &at());
            let got: Vec<(String, String, String)> = conditions(&s).split_off(2);
            let want: Vec<(String, String, String)> = expected
                .iter()
                .map(|(t, s, r)| (t.to_string(), s.to_string(), r.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(s.dns, dns.and_then(Result::ok), "{name}");
            let record = matches!(dkim, Some(KeyState::Ready { .. }))
                .then(|| "v=DKIM1; k=ed25519; p=AAAA".to_string());
            assert_eq!(s.dkim_record, record, "{name}");
        }
    }

    #[test]
    fn the_view_gathers_what_each_relay_reported_about_the_domain() {
        use mailrelay_crds::common::ObjectRef;
        use mailrelay_crds::compile::Problem;
        let problem = |kind: &str, name: &str, field: &str| Problem {
            object: ObjectRef::new(kind, "mail", name),
            field: field.into(),
            message: "bad".into(),
        };
        let serving = Outcome {
            domains: ["d".to_string()].into(),
            ready: true,
            external: names(&["192.0.2.2", "192.0.2.1"]),
            problems: vec![problem("MailDomain", "d", "spec.aliases[0]")],
            ..Outcome::default()
        };
        let outcomes = BTreeMap::from([
            ("a".to_string(), serving.clone()),
            (
                "b".to_string(),
                Outcome {
                    ready: false,
                    external: names(&["192.0.2.1"]),
                    ..serving
                },
            ),
            (
                "c".to_string(),
                Outcome {
                    invalid: true,
                    problems: vec![problem("MailDomain", "other", "spec.domain")],
                    ..Outcome::default()
                },
            ),
            (
                "d".to_string(),
                Outcome {
                    invalid: true,
                    ..Outcome::default()
                },
            ),
        ]);
        let view = View::new(&domain(), &outcomes, names(&["a", "b", "c"]));
        assert_eq!(
            view,
            View {
                serving: names(&["a", "b"]),
                ready: names(&["a"]),
                selecting: names(&["a", "b", "c"]),
                problems: names(&["spec.aliases[0]: bad"]),
                external: names(&["192.0.2.1", "192.0.2.2"]),
                unknown: Vec::new(),
                invalid: names(&["c"]),
            }
        );
    }
}
