//! Aggregates as the report tests use them: two policy domains for each
//! kind, characters that need escaping, an IPv6 source, several DKIM
//! results.

use mailrelay_crds::reports::{
    DkimAuth, DmarcRow, PeriodAggregates, PublishedPolicy, SpfAuth, TlsFailure, TlsPolicyType,
    TlsRow,
};

use super::Reporter;

pub(crate) const START: i64 = 1_700_006_400;
pub(crate) const END: i64 = START + 86_400;

pub(crate) fn reporter() -> Reporter {
    Reporter {
        organization: "Example <Mail> & \"Co\"".into(),
        contact: "postmaster@example.net".into(),
        from: "dmarc-reports@example.net".into(),
        relay: "mail/edge".into(),
    }
}

fn policy(domain: &str) -> PublishedPolicy {
    PublishedPolicy {
        domain: domain.into(),
        adkim: "r".into(),
        aspf: "s".into(),
        p: "quarantine".into(),
        sp: "none".into(),
        pct: 100,
    }
}

pub(crate) fn dmarc_row(header_from: &str, ip: &str, count: u64) -> DmarcRow {
    DmarcRow {
        header_from: header_from.into(),
        envelope_from: format!("bounce.{header_from}"),
        source_ip: ip.parse().unwrap(),
        policy: policy(header_from),
        disposition: mailrelay_crds::reports::Disposition::None,
        dkim_aligned: true,
        spf_aligned: false,
        dkim: vec![DkimAuth {
            domain: header_from.into(),
            selector: "s1".into(),
            result: "pass".into(),
        }],
        spf: SpfAuth {
            domain: format!("bounce.{header_from}"),
            scope: "mfrom".into(),
            result: "softfail".into(),
        },
        count,
    }
}

pub(crate) fn aggregates() -> PeriodAggregates {
    let mut agg = PeriodAggregates::new(START, END);
    agg.dmarc.push(dmarc_row("shop.test", "192.0.2.7", 3));
    let mut v6 = dmarc_row("shop.test", "2001:db8::25", 5);
    v6.envelope_from = String::new();
    v6.disposition = mailrelay_crds::reports::Disposition::Quarantine;
    v6.dkim_aligned = false;
    v6.dkim = vec![
        DkimAuth {
            domain: "shop.test".into(),
            selector: "a<b>&\"c\"".into(),
            result: "fail".into(),
        },
        DkimAuth {
            domain: "esp.test".into(),
            selector: String::new(),
            result: "pass".into(),
        },
    ];
    v6.spf = SpfAuth {
        domain: "helo.esp.test".into(),
        scope: "helo".into(),
        result: "none".into(),
    };
    agg.dmarc.push(v6);
    agg.dmarc.push(dmarc_row("other.test", "198.51.100.1", 1));
    agg.tls.push(TlsRow {
        policy_domain: "shop.test".into(),
        policy_type: TlsPolicyType::Sts,
        policy_string: vec![
            "version: STSv1".into(),
            "mode: enforce".into(),
            "mx: *.mx.shop.test".into(),
            "max_age: 86400".into(),
        ],
        mx_host: vec!["*.mx.shop.test".into()],
        successes: 40,
        failures: vec![
            TlsFailure {
                result_type: "certificate-expired".into(),
                sending_mta_ip: Some("192.0.2.7".parse().unwrap()),
                receiving_mx_hostname: "a.mx.shop.test".into(),
                receiving_ip: Some("2001:db8::25".parse().unwrap()),
                additional_information: Some("expired \"2024\" <see> \\ \u{7}".into()),
                count: 2,
            },
            TlsFailure {
                result_type: "starttls-not-supported".into(),
                sending_mta_ip: None,
                receiving_mx_hostname: "b.mx.shop.test".into(),
                receiving_ip: None,
                additional_information: None,
                count: 1,
            },
        ],
    });
    agg.tls.push(TlsRow {
        policy_domain: "other.test".into(),
        policy_type: TlsPolicyType::NoPolicyFound,
        policy_string: Vec::new(),
        mx_host: Vec::new(),
        successes: 7,
        failures: Vec::new(),
    });
    agg
}
