use std::net::IpAddr;

use mailrelay_crds::reports::{
    Disposition, PeriodAggregates, PublishedPolicy, ReportsConfig, TlsPolicyType,
};

use super::tls::{result_type, row as tls_row};
use super::{Reports, Store};
use crate::delivery::tls_policy::decide::{HostTlsa, TlsPlan, TlsSeen, Verdict};
use crate::delivery::tls_policy::sts::{Mode, Policy};
use crate::delivery::tls_policy::tlsa::Tlsa;
use crate::smtp::inbound_auth::results::{
    Arc, ArcCheck, AuthResults, Dkim, DkimCheck, Dmarc, DmarcCheck, DmarcPolicy, Spf, SpfCheck,
};
use crate::smtp::inbound_auth::verdict::Action;
use crate::smtp::reply::Reply;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config() -> ReportsConfig {
    ReportsConfig {
        period_secs: 3600,
        dmarc: true,
        tls_rpt: true,
    }
}

fn published() -> PublishedPolicy {
    PublishedPolicy {
        domain: "example.org".into(),
        adkim: "r".into(),
        aspf: "s".into(),
        p: "reject".into(),
        sp: "quarantine".into(),
        pct: 100,
    }
}

fn results(dmarc: Dmarc, record: bool) -> AuthResults {
    AuthResults {
        spf_helo: SpfCheck {
            result: Spf::Pass,
            identity: "Client.Example.net".into(),
        },
        spf_mailfrom: SpfCheck {
            result: Spf::Fail,
            identity: "bounce@mail.example.org".into(),
        },
        dkim: vec![
            DkimCheck {
                result: Dkim::Pass,
                domain: Some("example.org".into()),
                selector: Some("s1".into()),
                b_prefix: None,
                reason: None,
            },
            DkimCheck {
                result: Dkim::TempError,
                domain: None,
                selector: None,
                b_prefix: None,
                reason: Some("no DNS answer in time".into()),
            },
        ],
        dmarc: DmarcCheck {
            result: dmarc,
            from_domain: Some("example.org".into()),
            policy: record.then_some(DmarcPolicy::Reject),
            spf_aligned: false,
            dkim_aligned: true,
            published: record.then(published),
        },
        arc: ArcCheck {
            result: Arc::None,
            reason: None,
        },
    }
}

#[test]
fn a_dmarc_row_says_what_was_checked_and_what_the_relay_did() {
    let r = results(Dmarc::Pass, true);
    let row = super::dmarc::row(
        &r,
        &Action::Accept,
        ip("192.0.2.7"),
        Some("bounce@Mail.Example.org"),
    )
    .unwrap();
    assert_eq!(row.header_from, "example.org");
    assert_eq!(row.envelope_from, "mail.example.org");
    assert_eq!(row.source_ip, ip("192.0.2.7"));
    assert_eq!(row.policy, published());
    assert_eq!(row.disposition, Disposition::None);
    assert!(row.dkim_aligned && !row.spf_aligned);
    // The signature that could not be parsed has no domain to report.
    assert_eq!(row.dkim.len(), 1);
    assert_eq!(
        (
            row.dkim[0].domain.as_str(),
            row.dkim[0].selector.as_str(),
            row.dkim[0].result.as_str()
        ),
        ("example.org", "s1", "pass")
    );
    assert_eq!(
        (
            row.spf.domain.as_str(),
            row.spf.scope.as_str(),
            row.spf.result.as_str()
        ),
        ("mail.example.org", "mfrom", "fail")
    );
    assert_eq!(row.count, 1);
}

#[test]
fn the_null_sender_is_reported_with_the_helo_spf() {
    let r = results(Dmarc::Fail, true);
    let reject = Action::Reject(Reply::new(550, "5.7.1", "no"));
    let row = super::dmarc::row(&r, &reject, ip("192.0.2.7"), None).unwrap();
    assert_eq!(row.envelope_from, "");
    assert_eq!(
        (
            row.spf.domain.as_str(),
            row.spf.scope.as_str(),
            row.spf.result.as_str()
        ),
        ("client.example.net", "helo", "pass")
    );
    assert_eq!(row.disposition, Disposition::Reject);
    let row = super::dmarc::row(&r, &Action::Quarantine, ip("192.0.2.7"), None).unwrap();
    assert_eq!(row.disposition, Disposition::Quarantine);
}

#[test]
fn no_dmarc_row_without_a_record_or_for_a_deferral() {
    let defer = Action::Defer(Reply::new(451, "4.7.0", "later"));
    let none = super::dmarc::row(
        &results(Dmarc::None, false),
        &Action::Accept,
        ip("192.0.2.7"),
        None,
    );
    assert_eq!(none, None, "no record: nobody to report to");
    let temp = super::dmarc::row(
        &results(Dmarc::TempError, true),
        &defer,
        ip("192.0.2.7"),
        None,
    );
    assert_eq!(temp, None);
    let deferred = super::dmarc::row(&results(Dmarc::Fail, true), &defer, ip("192.0.2.7"), None);
    assert_eq!(deferred, None, "counted when the sender retries");
}

fn sts(mode: Mode) -> TlsPlan {
    TlsPlan::Sts(Policy {
        mode,
        max_age: 86400,
        mx: vec!["mx.example.net".into(), "*.example.net".into()],
    })
}

fn dane() -> TlsPlan {
    TlsPlan::DaneHost(HostTlsa::Records(vec![Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![0xab, 0xcd],
    }]))
}

#[test]
fn tls_failures_map_to_the_rfc_8460_result_types() {
    let failed = |e: &str| TlsSeen::Failed(e.into());
    let unverified = |e: &str| TlsSeen::Unverified {
        cert: Err(e.into()),
    };
    let enforce = sts(Mode::Enforce);
    let (dane, bogus) = (
        dane(),
        TlsPlan::DaneHost(HostTlsa::Failed(
            "TLSA lookup error for mx:25: bogus".into(),
        )),
    );
    let cases: Vec<(&TlsPlan, Option<TlsSeen>, &str)> = vec![
        (&enforce, Some(TlsSeen::Clear), "starttls-not-supported"),
        (
            &enforce,
            Some(failed(
                "TLS is required but mx.example.net:25 does not offer STARTTLS",
            )),
            "starttls-not-supported",
        ),
        (
            &enforce,
            Some(failed(
                "STARTTLS with mx: invalid peer certificate: certificate expired: verification time 2 (UNIX), but certificate is not valid after 1 (1 seconds ago)",
            )),
            "certificate-expired",
        ),
        (
            &enforce,
            Some(failed(
                "invalid peer certificate: certificate not valid for name \"mx.example.net\"; certificate is only valid for other.example",
            )),
            "certificate-host-mismatch",
        ),
        (
            &enforce,
            Some(unverified("invalid peer certificate: UnknownIssuer")),
            "certificate-not-trusted",
        ),
        (
            &enforce,
            Some(unverified("invalid peer certificate: BadSignature")),
            "certificate-not-trusted",
        ),
        (
            &enforce,
            Some(failed("handshake: connection reset")),
            "validation-failure",
        ),
        (&enforce, None, "validation-failure"),
        (
            &dane,
            Some(unverified("no TLSA record matches the chain")),
            "tlsa-invalid",
        ),
        (&dane, None, "dnssec-invalid"),
        (&bogus, Some(TlsSeen::Verified), "dnssec-invalid"),
    ];
    for (plan, seen, want) in cases {
        assert_eq!(
            result_type(plan, seen.as_ref(), "why"),
            want,
            "{plan:?} {seen:?}"
        );
    }
}

#[test]
fn a_tls_session_counts_once_as_a_success_or_a_failure_under_its_policy() {
    let addr = Some(ip("127.0.0.131"));
    let ok = tls_row(
        "Example.NET",
        &sts(Mode::Enforce),
        "mx.example.net",
        addr,
        &Verdict::Deliver,
        Some(&TlsSeen::Verified),
    )
    .unwrap();
    assert_eq!(ok.policy_domain, "example.net");
    assert_eq!(ok.policy_type, TlsPolicyType::Sts);
    assert_eq!(
        ok.policy_string,
        [
            "version: STSv1",
            "mode: enforce",
            "mx: mx.example.net",
            "mx: *.example.net",
            "max_age: 86400"
        ]
    );
    assert_eq!(ok.mx_host, ["mx.example.net", "*.example.net"]);
    assert_eq!((ok.successes, ok.failures.len()), (1, 0));

    let seen = TlsSeen::Unverified {
        cert: Err("invalid peer certificate: UnknownIssuer".into()),
    };
    let testing = Verdict::DeliverAndReport("certificate of mx is not valid".into());
    let bad = tls_row(
        "example.net",
        &sts(Mode::Testing),
        "mx.example.net",
        addr,
        &testing,
        Some(&seen),
    )
    .unwrap();
    assert_eq!(bad.successes, 0);
    assert_eq!(bad.failures[0].result_type, "certificate-not-trusted");
    assert_eq!(bad.failures[0].receiving_mx_hostname, "mx.example.net");
    assert_eq!(bad.failures[0].receiving_ip, addr);

    let tlsa = tls_row(
        "example.net",
        &dane(),
        "mx.example.net",
        addr,
        &Verdict::Deliver,
        Some(&TlsSeen::Unverified { cert: Ok(()) }),
    )
    .unwrap();
    assert_eq!(tlsa.policy_type, TlsPolicyType::Tlsa);
    assert_eq!(tlsa.policy_string, ["3 1 1 abcd"]);
    assert_eq!(tlsa.successes, 1);

    // An admitted host is counted when its connection is made.
    assert_eq!(
        tls_row(
            "example.net",
            &sts(Mode::Enforce),
            "mx",
            addr,
            &Verdict::Deliver,
            None
        ),
        None
    );
}

#[test]
fn without_a_policy_encryption_is_a_success_and_clear_text_a_failure() {
    let addr = Some(ip("127.0.0.131"));
    let plan = TlsPlan::Opportunistic;
    let encrypted = TlsSeen::Unverified {
        cert: Err("not checked".into()),
    };
    let row = tls_row(
        "example.net",
        &plan,
        "mx",
        addr,
        &Verdict::Deliver,
        Some(&encrypted),
    )
    .unwrap();
    assert_eq!(row.policy_type, TlsPolicyType::NoPolicyFound);
    assert!(row.policy_string.is_empty());
    assert_eq!(row.successes, 1);
    let clear = tls_row(
        "example.net",
        &plan,
        "mx",
        addr,
        &Verdict::Deliver,
        Some(&TlsSeen::Clear),
    )
    .unwrap();
    assert_eq!(clear.successes, 0);
    assert_eq!(clear.failures[0].result_type, "starttls-not-supported");
    let required = tls_row(
        "example.net",
        &TlsPlan::Required,
        "mx",
        addr,
        &Verdict::Defer("x".into()),
        Some(&TlsSeen::Clear),
    )
    .unwrap();
    assert_eq!(required.policy_type, TlsPolicyType::NoPolicyFound);
}

fn dmarc_row(count: u64) -> mailrelay_crds::reports::DmarcRow {
    let mut row = super::dmarc::row(
        &results(Dmarc::Pass, true),
        &Action::Accept,
        ip("192.0.2.7"),
        Some("a@example.org"),
    )
    .unwrap();
    row.count = count;
    row
}

#[test]
fn counts_go_to_the_period_of_their_time_and_only_when_asked_for() {
    let reports = Reports::in_memory();
    let c = config();
    reports.dmarc(Some(&c), 7200 + 5, dmarc_row(1));
    reports.dmarc(Some(&c), 7200 + 3599, dmarc_row(1));
    reports.dmarc(Some(&c), 10800, dmarc_row(1));
    reports.dmarc(None, 7200, dmarc_row(1));
    let off = ReportsConfig {
        dmarc: false,
        ..config()
    };
    reports.dmarc(Some(&off), 7200, dmarc_row(1));
    let p = reports.period(7200, 3600);
    assert_eq!((p.start, p.end), (7200, 10800));
    assert_eq!(p.dmarc.len(), 1);
    assert_eq!(p.dmarc[0].count, 2);
    assert_eq!(reports.period(10800, 3600).dmarc[0].count, 1);
    assert_eq!(reports.period(0, 3600), PeriodAggregates::new(0, 3600));
}

#[test]
fn the_store_writes_reloads_merges_and_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let now = 1_800_000_000;
    let start = c.period_start(now);
    {
        let reports = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
        reports.dmarc(Some(&c), now, dmarc_row(3));
        reports.dmarc(Some(&c), now - 8 * 86_400, dmarc_row(1));
        reports.flush().unwrap();
        // Recorded after the flush: what a SIGKILL would lose.
        reports.dmarc(Some(&c), now, dmarc_row(100));
    }
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 2);
    let reports = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
    assert_eq!(reports.period(start, 3600).dmarc[0].count, 3);
    // A peer's counts for the same period add up, and are on disk at once.
    let mut theirs = PeriodAggregates::new(start, start + 3600);
    theirs.add_dmarc(dmarc_row(4));
    reports.merge_in(&[theirs]).unwrap();
    let again = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
    assert_eq!(again.period(start, 3600).dmarc[0].count, 7);
    again.prune(now).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from(format!("period-{start}.json"))]
    );
    assert_eq!(again.take_all().len(), 1);
}

#[test]
fn a_torn_file_is_set_aside_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let reports = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
    reports.dmarc(Some(&c), 3600, dmarc_row(2));
    reports.flush().unwrap();
    std::fs::write(
        dir.path().join("period-7200.json"),
        b"{\"start\":7200,\"end\":",
    )
    .unwrap();
    std::fs::write(dir.path().join("period-0.json.tmp"), b"half").unwrap();
    let reopened = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
    assert_eq!(reopened.period(3600, 3600).dmarc[0].count, 2);
    assert!(dir.path().join("period-7200.json.corrupt").exists());
    assert!(!dir.path().join("period-7200.json").exists());
    assert!(!dir.path().join("period-0.json.tmp").exists());
}

#[test]
fn periods_taken_for_a_hand_off_come_back_if_it_fails_and_go_when_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let reports = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
    reports.dmarc(Some(&c), 3600, dmarc_row(2));
    reports.flush().unwrap();
    let taken = reports.take_all();
    assert_eq!(taken.len(), 1);
    assert!(reports.take_all().is_empty());
    reports.restore(&taken);
    assert_eq!(reports.period(3600, 3600).dmarc[0].count, 2);
    let taken = reports.take_all();
    reports.handed(&taken).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(
        Reports::open(Store::open(dir.path()).unwrap(), Default::default())
            .take_all()
            .is_empty()
    );
}

#[test]
fn concurrent_flushes_of_one_period_leave_a_whole_file_with_the_last_counts() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let reports = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
    // Each thread counts then flushes, over and over: unserialised, the two
    // would write one temporary file at once (a torn file, or a rename
    // of a file the other already moved: an error).
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (reports, c) = (reports.clone(), c.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    reports.dmarc(Some(&c), 3600, dmarc_row(1));
                    reports.flush().unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("period-3600.json")]);
    let reopened = Reports::open(Store::open(dir.path()).unwrap(), Default::default());
    assert_eq!(reopened.period(3600, 3600).dmarc[0].count, 200);
}

#[test]
fn counts_dropped_at_the_cap_are_counted_in_the_metric() {
    let mut registry = prometheus_client::registry::Registry::with_prefix("mailrelay");
    let dropped = super::register_metrics(&mut registry);
    let dir = tempfile::tempdir().unwrap();
    let reports = Reports::open(Store::open(dir.path()).unwrap(), dropped);
    let c = config();
    for n in 0..=super::period::MAX_DMARC_ROWS as u128 + 2 {
        let mut row = dmarc_row(1);
        row.source_ip = std::net::Ipv6Addr::from(n).into();
        reports.dmarc(Some(&c), 3600, row);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("mailrelay_report_rows_dropped_total{kind=\"dmarc\"} 3"),
        "{text}"
    );
    assert!(!text.contains("kind=\"tls\""), "{text}");
    assert_eq!(
        reports.period(3600, 3600).dmarc.len(),
        super::period::MAX_DMARC_ROWS
    );
}
