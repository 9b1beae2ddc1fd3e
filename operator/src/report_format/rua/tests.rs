use std::collections::BTreeMap;

use super::*;

/// TXT records by name; a name mapped to `Err` fails to resolve.
#[derive(Default)]
struct Fake(BTreeMap<String, Result<Vec<String>, String>>);

impl Fake {
    fn with(mut self, name: &str, records: &[&str]) -> Self {
        self.0.insert(
            name.to_string(),
            Ok(records.iter().map(|r| r.to_string()).collect()),
        );
        self
    }

    fn failing(mut self, name: &str) -> Self {
        self.0.insert(name.to_string(), Err("SERVFAIL".into()));
        self
    }
}

impl TxtLookup for Fake {
    async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        self.0.get(name).cloned().unwrap_or(Ok(Vec::new()))
    }
}

fn run<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn mailto(address: &str, max_bytes: Option<u64>) -> Destination {
    Destination::Mailto {
        address: address.into(),
        max_bytes,
    }
}

#[test]
fn dmarc_rua_with_sizes_and_other_schemes() {
    let d = parse_dmarc_rua(
        "v=DMARC1; p=none; rua=mailto:a@Shop.TEST!10m, mailto:b%40x@c.test!512,https://r.test/x,mailto:d@e.test!2K ; ruf=mailto:f@g.test",
    )
    .unwrap();
    assert_eq!(
        d,
        [
            mailto("a@shop.test", Some(10 << 20)),
            mailto("b@x@c.test", Some(512)),
            mailto("d@e.test", Some(2048)),
        ]
    );
}

#[test]
fn tlsrpt_rua_with_mailto_and_https() {
    let d = parse_tlsrpt_rua(
        "v=TLSRPTv1;rua=mailto:tls@shop.test?subject=x,https://reports.test/tlsrpt, ftp://x.test/",
    )
    .unwrap();
    assert_eq!(
        d,
        [
            mailto("tls@shop.test", None),
            Destination::Https("https://reports.test/tlsrpt".into()),
        ]
    );
}

#[test]
fn bad_records_are_refused_with_the_reason() {
    let cases: &[(&str, RecordError)] = &[
        (
            "p=none; v=DMARC1; rua=mailto:a@b.test",
            RecordError::Version("DMARC1"),
        ),
        ("v=DMARC1; p=none", RecordError::NoRua),
        ("v=DMARC1; p", RecordError::Tag("p".into())),
    ];
    for (record, want) in cases {
        assert_eq!(parse_dmarc_rua(record).unwrap_err(), *want, "{record}");
    }
    for (record, reason) in [
        ("v=DMARC1; rua=mailto:a@b.test!10x", "unknown size unit"),
        (
            "v=DMARC1; rua=mailto:a@b.test!",
            "size limit is not a number",
        ),
        (
            "v=DMARC1; rua=mailto:a@b.test!99999999999999999999",
            "size limit too large",
        ),
        (
            "v=DMARC1; rua=mailto:a@b.test!99999999999t",
            "size limit too large",
        ),
        ("v=DMARC1; rua=a@b.test", "no scheme"),
        ("v=DMARC1; rua=mailto:nobody", "no @ in the address"),
        ("v=DMARC1; rua=mailto:a@b_c.test", "not a mail address"),
        ("v=DMARC1; rua=mailto:a%zz@b.test", "bad %-escape"),
    ] {
        match parse_dmarc_rua(record) {
            Err(RecordError::Uri { reason: r, .. }) => assert_eq!(r, reason, "{record}"),
            other => panic!("{record}: {other:?}"),
        }
    }
    assert_eq!(
        parse_tlsrpt_rua("v=TLSRPTv1; rua=https:///x").unwrap_err(),
        RecordError::Uri {
            uri: "https:///x".into(),
            reason: "an https URI needs a host"
        }
    );
    assert_eq!(
        parse_tlsrpt_rua("v=DMARC1; rua=mailto:a@b.test").unwrap_err(),
        RecordError::Version("TLSRPTv1")
    );
    assert_eq!(
        parse_tlsrpt_rua("v=TLSRPTv1").unwrap_err(),
        RecordError::NoRua
    );
}

#[test]
fn a_bang_in_the_local_part_is_not_a_size() {
    assert_eq!(
        parse_dmarc_rua("v=DMARC1; rua=mailto:a!b@c.test").unwrap(),
        [mailto("a!b@c.test", None)]
    );
}

#[test]
fn the_same_domain_needs_no_verification() {
    let dns = Fake::default().with(
        "_dmarc.shop.test.",
        &["v=DMARC1; p=reject; rua=mailto:d@shop.test,mailto:r@reports.shop.test"],
    );
    assert_eq!(
        run(dmarc_destinations(&dns, "Shop.Test.")).unwrap(),
        [
            mailto("d@shop.test", None),
            mailto("r@reports.shop.test", None)
        ]
    );
}

#[test]
fn an_outside_destination_is_kept_only_when_it_agrees() {
    let dns = Fake::default()
        .with(
            "_dmarc.shop.test.",
            &["v=DMARC1; p=none; rua=mailto:a@vendor.test,mailto:b@other.test,mailto:c@down.test,mailto:d@bare.test"],
        )
        .with("shop.test._report._dmarc.vendor.test.", &["v=DMARC1;"])
        .with("shop.test._report._dmarc.bare.test.", &["v=DMARC1"])
        .with("shop.test._report._dmarc.other.test.", &["v=spf1 -all"])
        .failing("shop.test._report._dmarc.down.test.");
    assert_eq!(
        run(dmarc_destinations(&dns, "shop.test")).unwrap(),
        [mailto("a@vendor.test", None), mailto("d@bare.test", None)]
    );
}

#[test]
fn no_verified_destination_is_an_error_naming_each() {
    let dns = Fake::default().with(
        "_dmarc.shop.test.",
        &["v=DMARC1; p=none; rua=mailto:b@other.test"],
    );
    match run(dmarc_destinations(&dns, "shop.test")) {
        Err(RuaError::NoDestination { domain, why }) => {
            assert_eq!(domain, "shop.test");
            assert!(why.contains("shop.test._report._dmarc.other.test"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sibling_subdomains_are_verified_but_parents_are_not() {
    assert!(same_organisation("shop.test", "shop.test"));
    assert!(same_organisation("mail.shop.test", "shop.test"));
    assert!(same_organisation("shop.test", "r.shop.test"));
    assert!(!same_organisation("a.shop.test", "b.shop.test"));
    assert!(!same_organisation("shop.test", "test"));
    assert!(!same_organisation("evilshop.test", "shop.test"));
    assert!(!same_organisation("", ""));
}

#[test]
fn dmarc_takes_no_https_and_one_record_only() {
    let https_only = Fake::default().with(
        "_dmarc.shop.test.",
        &["v=DMARC1; p=none; rua=https://r.test/"],
    );
    assert!(matches!(
        run(dmarc_destinations(&https_only, "shop.test")),
        Err(RuaError::NoDestination { .. })
    ));
    let two = Fake::default().with(
        "_dmarc.shop.test.",
        &[
            "v=DMARC1; p=none; rua=mailto:a@shop.test",
            "v=DMARC1; p=reject; rua=mailto:b@shop.test",
            "v=spf1 -all",
        ],
    );
    assert_eq!(
        run(dmarc_destinations(&two, "shop.test")).unwrap_err(),
        RuaError::SeveralRecords {
            name: "_dmarc.shop.test.".into(),
            version: "DMARC1",
            count: 2
        }
    );
    let other_versions = Fake::default().with(
        "_dmarc.shop.test.",
        &["v=spf1 -all", "v=DMARC1; p=none; rua=mailto:a@shop.test"],
    );
    assert_eq!(
        run(dmarc_destinations(&other_versions, "shop.test")).unwrap(),
        [mailto("a@shop.test", None)]
    );
}

#[test]
fn lookups_that_fail_or_find_nothing_are_told_apart() {
    let dns = Fake::default().failing("_smtp._tls.down.test.");
    assert!(matches!(
        run(tlsrpt_destinations(&dns, "down.test")),
        Err(RuaError::Lookup { .. })
    ));
    assert_eq!(
        run(tlsrpt_destinations(&dns, "quiet.test")).unwrap_err(),
        RuaError::NoRecord {
            name: "_smtp._tls.quiet.test.".into(),
            version: "TLSRPTv1"
        }
    );
}

#[test]
fn tlsrpt_destinations_from_the_one_record() {
    let dns = Fake::default().with(
        "_smtp._tls.shop.test.",
        &["v=TLSRPTv1; rua=mailto:tls@vendor.test,https://r.test/v1"],
    );
    assert_eq!(
        run(tlsrpt_destinations(&dns, "shop.test")).unwrap(),
        [
            mailto("tls@vendor.test", None),
            Destination::Https("https://r.test/v1".into())
        ]
    );
    let bad = Fake::default().with("_smtp._tls.shop.test.", &["v=TLSRPTv1; rua=nowhere"]);
    assert!(matches!(
        run(tlsrpt_destinations(&bad, "shop.test")),
        Err(RuaError::Record { .. })
    ));
}

#[test]
fn a_report_over_a_limit_is_not_sent_there_and_the_caller_is_told() {
    let dests = [
        mailto("small@a.test", Some(1000)),
        mailto("big@b.test", Some(1 << 20)),
        mailto("any@c.test", None),
        Destination::Https("https://r.test/".into()),
    ];
    assert_eq!(
        Recipients::addresses(&dests),
        ["small@a.test", "big@b.test", "any@c.test"]
    );
    let r = Recipients::for_size(&dests, 5000);
    assert_eq!(r.mailto, ["big@b.test", "any@c.test"]);
    assert_eq!(r.https, ["https://r.test/"]);
    assert_eq!(
        r.too_large,
        [TooLarge {
            address: "small@a.test".into(),
            limit: 1000,
            size: 5000
        }]
    );
    assert_eq!(
        r.too_large[0].to_string(),
        "small@a.test: report of 5000 bytes is over its limit of 1000"
    );
    assert!(Recipients::for_size(&dests, 1000).too_large.is_empty());
}

#[test]
fn a_subdomain_without_a_record_reports_to_its_parents_rua() {
    let dns = Fake::default().with(
        "_dmarc.example.test.",
        &["v=DMARC1; p=none; rua=mailto:agg@example.test"],
    );
    assert_eq!(
        run(dmarc_destinations(&dns, "news.mail.example.test")).unwrap(),
        [mailto("agg@example.test", None)]
    );
    // Its own record wins over the parent's.
    let dns = dns.with(
        "_dmarc.news.example.test.",
        &["v=DMARC1; p=none; rua=mailto:n@news.example.test"],
    );
    assert_eq!(
        run(dmarc_destinations(&dns, "news.example.test")).unwrap(),
        [mailto("n@news.example.test", None)]
    );
    // Not above two labels, and the error names the domain asked about.
    let dns = Fake::default().with("_dmarc.test.", &["v=DMARC1; p=none; rua=mailto:a@test"]);
    assert_eq!(
        run(dmarc_destinations(&dns, "a.b.test")).unwrap_err(),
        RuaError::NoRecord {
            name: "_dmarc.a.b.test.".into(),
            version: "DMARC1"
        }
    );
}
