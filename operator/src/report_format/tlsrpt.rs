//! TLS reports (RFC 8460 §4), one per policy domain, as the JSON of
//! §4.4. `operator/schemas/tlsrpt-rfc8460.schema.json` is that format as
//! a JSON Schema; the tests validate what this writes against it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use mailrelay_crds::reports::{PeriodAggregates, TlsFailure, TlsRow};
use serde_json::{Map, Value, json};

use super::{Reporter, domain_key, report_id};

/// One report: for one policy domain, one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsReport {
    /// The policy domain (lower-case): its `_smtp._tls` `rua` gets it.
    pub domain: String,
    pub report_id: String,
    /// The period (Unix seconds, UTC; `end` exclusive), for the mail.
    pub start: i64,
    pub end: i64,
    pub json: String,
}

/// RFC 8460 §4.3's result types. Anything else a pod sends is reported as
/// `validation-failure`, §4.3.2's "general failure for a reason not
/// matching a category above".
const RESULT_TYPES: &[&str] = &[
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

/// One report per policy domain of `agg`, each with that domain's
/// policies, in the domains' order.
pub fn tls_reports(agg: &PeriodAggregates, who: &Reporter) -> Vec<TlsReport> {
    let mut by_domain: BTreeMap<String, Vec<&TlsRow>> = BTreeMap::new();
    for row in &agg.tls {
        by_domain
            .entry(domain_key(&row.policy_domain))
            .or_default()
            .push(row);
    }
    by_domain
        .into_iter()
        .map(|(domain, rows)| {
            let id = report_id("tlsrpt", who, &domain, agg.start, agg.end);
            let doc = json!({
                "organization-name": who.organization,
                "date-range": {
                    "start-datetime": rfc3339(agg.start),
                    // Inclusive, as in §4.4's example; the aggregates'
                    // end is exclusive.
                    "end-datetime": rfc3339(agg.end - 1),
                },
                "contact-info": who.contact,
                "report-id": id,
                "policies": rows.iter().map(|r| policy(&domain, r)).collect::<Vec<_>>(),
            });
            TlsReport {
                domain,
                report_id: id,
                start: agg.start,
                end: agg.end,
                json: doc.to_string(),
            }
        })
        .collect()
}

fn policy(domain: &str, row: &TlsRow) -> Value {
    let mut policy = Map::new();
    policy.insert("policy-type".into(), row.policy_type.as_str().into());
    // Left out when there is nothing to say (`no-policy-found`).
    if !row.policy_string.is_empty() {
        policy.insert("policy-string".into(), json!(row.policy_string));
    }
    policy.insert("policy-domain".into(), domain.into());
    if !row.mx_host.is_empty() {
        policy.insert("mx-host".into(), json!(row.mx_host));
    }
    let failed: u64 = row.failures.iter().map(|f| f.count).sum();
    let mut entry = json!({
        "policy": policy,
        "summary": {
            "total-successful-session-count": row.successes,
            "total-failure-session-count": failed,
        },
    });
    if !row.failures.is_empty() {
        entry["failure-details"] = row.failures.iter().map(failure).collect();
    }
    entry
}

fn failure(f: &TlsFailure) -> Value {
    let result_type = RESULT_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(f.result_type.trim()))
        .copied()
        .unwrap_or("validation-failure");
    let mut d = Map::new();
    d.insert("result-type".into(), result_type.into());
    if let Some(ip) = f.sending_mta_ip {
        d.insert(
            "sending-mta-ip".into(),
            ip.to_canonical().to_string().into(),
        );
    }
    d.insert(
        "receiving-mx-hostname".into(),
        f.receiving_mx_hostname.as_str().into(),
    );
    if let Some(ip) = f.receiving_ip {
        d.insert("receiving-ip".into(), ip.to_canonical().to_string().into());
    }
    d.insert("failed-session-count".into(), f.count.into());
    // The relay's own words go in `failure-reason-code`, §4.4's "text
    // field to include a TLS-related error code or error message":
    // `additional-information` is for a URI pointing to more.
    if let Some(info) = &f.additional_information {
        d.insert("failure-reason-code".into(), info.as_str().into());
    }
    Value::Object(d)
}

/// RFC 3339, UTC, whole seconds (`2016-04-01T00:00:00Z`).
fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{END, START, aggregates, reporter};
    use super::*;

    fn parsed(r: &TlsReport) -> Value {
        serde_json::from_str(&r.json).unwrap()
    }

    #[test]
    fn one_report_per_policy_domain_with_its_counts() {
        let reports = tls_reports(&aggregates(), &reporter());
        let domains: Vec<&str> = reports.iter().map(|r| r.domain.as_str()).collect();
        assert_eq!(domains, ["other.test", "shop.test"]);
        let shop = parsed(&reports[1]);
        let p = &shop["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-domain"], "shop.test");
        assert_eq!(p["policy"]["mx-host"], json!(["*.mx.shop.test"]));
        assert_eq!(p["summary"]["total-successful-session-count"], 40);
        assert_eq!(p["summary"]["total-failure-session-count"], 3);
        assert_eq!(p["failure-details"].as_array().unwrap().len(), 2);
        assert_eq!(p["failure-details"][0]["receiving-ip"], "2001:db8::25");
        assert_eq!(p["failure-details"][0]["failed-session-count"], 2);
        assert_eq!(shop["policies"].as_array().unwrap().len(), 1);
        let other = parsed(&reports[0]);
        assert_eq!(
            other["policies"][0]["policy"],
            json!({"policy-type": "no-policy-found", "policy-domain": "other.test"})
        );
        assert!(other["policies"][0].get("failure-details").is_none());
    }

    #[test]
    fn the_metadata_and_period() {
        let r = &tls_reports(&aggregates(), &reporter())[0];
        let doc = parsed(r);
        assert_eq!(doc["organization-name"], "Example <Mail> & \"Co\"");
        assert_eq!(doc["contact-info"], "postmaster@example.net");
        assert_eq!(doc["report-id"], r.report_id.as_str());
        assert_eq!(doc["date-range"]["start-datetime"], rfc3339(START));
        assert_eq!(doc["date-range"]["start-datetime"], "2023-11-15T00:00:00Z");
        assert_eq!(doc["date-range"]["end-datetime"], "2023-11-15T23:59:59Z");
        assert_eq!(rfc3339(END), "2023-11-16T00:00:00Z");
    }

    #[test]
    fn text_from_outside_survives_as_data() {
        let shop = &tls_reports(&aggregates(), &reporter())[1];
        assert!(shop.json.contains(r#"expired \"2024\" <see> \\ \u0007"#));
        assert_eq!(
            parsed(shop)["policies"][0]["failure-details"][0]["failure-reason-code"],
            "expired \"2024\" <see> \\ \u{7}"
        );
    }

    #[test]
    fn unknown_result_types_are_validation_failures() {
        let mut agg = aggregates();
        agg.tls[0].failures[0].result_type = "tls-exploded".into();
        let r = &tls_reports(&agg, &reporter())[1];
        assert_eq!(
            parsed(r)["policies"][0]["failure-details"][0]["result-type"],
            "validation-failure"
        );
    }

    #[test]
    fn ids_are_stable_and_not_the_dmarc_reports() {
        let a = tls_reports(&aggregates(), &reporter());
        assert_eq!(a, tls_reports(&aggregates(), &reporter()));
        let d = super::super::dmarc_reports(&aggregates(), &reporter());
        assert_ne!(a[0].report_id, d[0].report_id);
    }
}
