use super::*;
use crate::smtp::inbound_auth::results::{Arc, ArcCheck, DkimCheck, DmarcCheck, SpfCheck};
use InboundAuthPolicy::{Accept, Enforce, Tag};

fn spf(result: Spf, identity: &str) -> SpfCheck {
    SpfCheck {
        result,
        identity: identity.into(),
    }
}

fn dkim(result: Dkim, d: &str) -> DkimCheck {
    DkimCheck {
        result,
        domain: Some(d.into()),
        selector: Some("sel".into()),
        b_prefix: Some("AbCdEfGh".into()),
        reason: (result != Dkim::Pass).then(|| "body hash did not verify".into()),
    }
}

/// Mail claiming to be from example.org, SPF `spf_result` for
/// forger@example.org, no DKIM, DMARC `dmarc` with policy `p`.
fn results(spf_result: Spf, dmarc: Dmarc, p: Option<DmarcPolicy>) -> AuthResults {
    AuthResults {
        spf_helo: spf(Spf::None, "client.example.net"),
        spf_mailfrom: spf(spf_result, "forger@example.org"),
        dkim: Vec::new(),
        dmarc: DmarcCheck {
            result: dmarc,
            from_domain: Some("example.org".into()),
            policy: p,
            spf_aligned: spf_result == Spf::Pass && dmarc == Dmarc::Pass,
            dkim_aligned: false,
            published: None,
        },
        arc: ArcCheck {
            result: Arc::None,
            reason: None,
        },
    }
}

/// The action's name, and the reply's code and enhanced code if any.
type Kind = (&'static str, Option<u16>, Option<&'static str>);

/// Policy, SPF, DMARC result and policy found, and what must happen.
type Row = (InboundAuthPolicy, Spf, Dmarc, Option<DmarcPolicy>, Kind);

fn kind(a: &Action) -> Kind {
    match a {
        Action::Reject(r) | Action::Defer(r) => (a.as_str(), Some(r.code), r.enhanced),
        _ => (a.as_str(), None, None),
    }
}

#[test]
fn policy_by_dmarc_outcome_table() {
    use DmarcPolicy::{None as PNone, Quarantine, Reject};
    let rows: &[Row] = &[
        // Enforce honours p=.
        (
            Enforce,
            Spf::Fail,
            Dmarc::Fail,
            Some(Reject),
            ("reject", Some(550), Some("5.7.1")),
        ),
        (
            Enforce,
            Spf::SoftFail,
            Dmarc::Fail,
            Some(Quarantine),
            ("quarantine", None, None),
        ),
        (
            Enforce,
            Spf::Fail,
            Dmarc::Fail,
            Some(PNone),
            ("accept", None, None),
        ),
        (
            Enforce,
            Spf::Pass,
            Dmarc::Pass,
            Some(Reject),
            ("accept", None, None),
        ),
        // No record, or a broken one: DMARC does not apply (RFC 7489 §6.6.3).
        (
            Enforce,
            Spf::Fail,
            Dmarc::None,
            None,
            ("accept", None, None),
        ),
        (
            Enforce,
            Spf::Fail,
            Dmarc::PermError,
            None,
            ("accept", None, None),
        ),
        // DNS failure looking up the policy: try again later, never pass.
        (
            Enforce,
            Spf::Pass,
            Dmarc::TempError,
            None,
            ("defer", Some(451), Some("4.7.0")),
        ),
        // SPF could not be evaluated and DMARC failed: it might have passed.
        (
            Enforce,
            Spf::TempError,
            Dmarc::Fail,
            Some(Reject),
            ("defer", Some(451), Some("4.7.0")),
        ),
        (
            Enforce,
            Spf::TempError,
            Dmarc::Fail,
            Some(Quarantine),
            ("defer", Some(451), Some("4.7.0")),
        ),
        // ... but under p=none the outcome is the same either way.
        (
            Enforce,
            Spf::TempError,
            Dmarc::Fail,
            Some(PNone),
            ("accept", None, None),
        ),
        // Tag never refuses or defers; failures the domain wants kept out are marked.
        (
            Tag,
            Spf::Fail,
            Dmarc::Fail,
            Some(Reject),
            ("quarantine", None, None),
        ),
        (
            Tag,
            Spf::Fail,
            Dmarc::Fail,
            Some(Quarantine),
            ("quarantine", None, None),
        ),
        (
            Tag,
            Spf::Fail,
            Dmarc::Fail,
            Some(PNone),
            ("accept", None, None),
        ),
        (
            Tag,
            Spf::Pass,
            Dmarc::TempError,
            None,
            ("accept", None, None),
        ),
        // Accept: nothing is decided.
        (
            Accept,
            Spf::Fail,
            Dmarc::Fail,
            Some(Reject),
            ("accept", None, None),
        ),
    ];
    for (policy, s, d, p, want) in rows {
        let got = decide(*policy, &results(*s, *d, *p));
        assert_eq!(
            kind(&got),
            *want,
            "{policy:?} spf={s:?} dmarc={d:?} p={p:?}"
        );
    }
}

#[test]
fn a_dkim_temperror_defers_a_failing_reject() {
    let mut r = results(Spf::Fail, Dmarc::Fail, Some(DmarcPolicy::Reject));
    r.dkim.push(dkim(Dkim::TempError, "example.org"));
    let Action::Defer(reply) = decide(Enforce, &r) else {
        panic!("expected a deferral");
    };
    assert!(
        reply.lines[0].contains("DKIM temperror for d=example.org"),
        "{reply}"
    );
}

#[test]
fn the_reject_reply_names_the_domain_and_each_failing_check() {
    let mut r = results(Spf::SoftFail, Dmarc::Fail, Some(DmarcPolicy::Reject));
    r.dkim.push(dkim(Dkim::Fail, "example.org"));
    r.dkim.push(dkim(Dkim::Pass, "elsewhere.test"));
    let Action::Reject(reply) = decide(Enforce, &r) else {
        panic!("expected a rejection");
    };
    assert_eq!(
        reply.to_string(),
        "550 5.7.1 Message refused: example.org publishes DMARC p=reject and this message fails it: \
         SPF softfail for forger@example.org; DKIM fail for d=example.org (body hash did not verify); \
         DKIM pass for d=elsewhere.test is not aligned with example.org"
    );
    let r = results(Spf::Fail, Dmarc::Fail, Some(DmarcPolicy::Reject));
    let Action::Reject(reply) = decide(Enforce, &r) else {
        panic!("expected a rejection");
    };
    assert!(
        reply.lines[0].ends_with("SPF fail for forger@example.org; no DKIM signature"),
        "{reply}"
    );
}

#[test]
fn an_unaligned_spf_pass_is_named_as_such() {
    let mut r = results(Spf::Pass, Dmarc::Fail, Some(DmarcPolicy::Reject));
    r.spf_mailfrom.identity = "bounce@mailer.test".into();
    assert!(
        failing_checks(&r)
            .starts_with("SPF pass for bounce@mailer.test is not aligned with example.org")
    );
}

#[test]
fn the_reply_stays_short_whatever_the_names() {
    let mut r = results(Spf::Fail, Dmarc::Fail, Some(DmarcPolicy::Reject));
    r.spf_mailfrom.identity = format!("{}@example.org", "é".repeat(300));
    let Action::Reject(reply) = decide(Enforce, &r) else {
        panic!("expected a rejection");
    };
    assert!(reply.to_bytes().len() < 512, "{}", reply.to_bytes().len());
}

#[test]
fn the_strictest_policy_of_the_recipients_wins() {
    assert_eq!(strictest([Accept, Enforce, Tag]), Enforce);
    assert_eq!(strictest([Accept, Tag]), Tag);
    assert_eq!(strictest([Accept, Accept]), Accept);
    assert_eq!(strictest([]), Tag);
}
