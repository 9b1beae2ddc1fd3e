//! DMARC aggregate reports (RFC 7489 §7.2) in the XML of its Appendix C,
//! one per policy domain. `operator/schemas/dmarc-rfc7489.xsd` is that
//! schema; the tests validate what this writes against it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use mailrelay_crds::reports::{DmarcRow, PeriodAggregates, PublishedPolicy};

use super::{Reporter, domain_key, report_id};

/// The schema's target namespace. The schema has no elementFormDefault,
/// so only the root element is in it and every other element in none.
///
/// The root is written unprefixed in a default namespace, and each of its
/// children sets the default back to none (`xmlns=""`), which their
/// descendants inherit. A prefixed root (`<dmarc:feedback>`) would be as
/// valid, but parsers that ignore namespaces, parsedmarc the best known,
/// look for an element named `feedback` and would find none.
const NAMESPACE: &str = "http://dmarc.org/dmarc-xml/0.1";
/// On each child of the root; see [`NAMESPACE`].
const NO_NAMESPACE: &str = " xmlns=\"\"";

/// One report: for one policy domain, one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarcReport {
    /// The policy domain (lower-case): its `rua` gets the report.
    pub domain: String,
    pub report_id: String,
    /// The period (Unix seconds, UTC; `end` exclusive), for the mail.
    pub start: i64,
    pub end: i64,
    pub xml: String,
}

/// One report per policy domain of `agg`, each with that domain's rows,
/// in the domains' order.
pub fn dmarc_reports(agg: &PeriodAggregates, who: &Reporter) -> Vec<DmarcReport> {
    let mut by_domain: BTreeMap<String, Vec<&DmarcRow>> = BTreeMap::new();
    for row in &agg.dmarc {
        by_domain
            .entry(domain_key(&row.policy.domain))
            .or_default()
            .push(row);
    }
    by_domain
        .into_iter()
        .map(|(domain, rows)| {
            let id = report_id("dmarc", who, &domain, agg.start, agg.end);
            let xml = document(&rows, who, &id, agg.start, agg.end);
            DmarcReport {
                domain,
                report_id: id,
                start: agg.start,
                end: agg.end,
                xml,
            }
        })
        .collect()
}

fn document(rows: &[&DmarcRow], who: &Reporter, id: &str, start: i64, end: i64) -> String {
    let mut x = String::with_capacity(512 + rows.len() * 700);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(x, "<feedback xmlns=\"{NAMESPACE}\">");
    let _ = writeln!(x, "  <version{NO_NAMESPACE}>1.0</version>");
    let _ = writeln!(x, "  <report_metadata{NO_NAMESPACE}>");
    element(&mut x, 4, "org_name", &who.organization);
    element(&mut x, 4, "email", &who.contact);
    element(&mut x, 4, "report_id", id);
    x.push_str("    <date_range>\n");
    element(&mut x, 6, "begin", &start.to_string());
    // Appendix C's range is inclusive; the aggregates' end is exclusive.
    element(&mut x, 6, "end", &(end - 1).to_string());
    x.push_str("    </date_range>\n  </report_metadata>\n");
    policy_published(&mut x, published(rows));
    for row in rows {
        record(&mut x, row);
    }
    x.push_str("</feedback>\n");
    x
}

/// The policy the report states: one per report, but the domain's record
/// may have changed within the period, so the one most messages met.
fn published<'a>(rows: &[&'a DmarcRow]) -> &'a PublishedPolicy {
    let mut counts: Vec<(&PublishedPolicy, u64)> = Vec::new();
    for row in rows {
        match counts.iter_mut().find(|(p, _)| **p == row.policy) {
            Some((_, n)) => *n += row.count,
            None => counts.push((&row.policy, row.count)),
        }
    }
    // `rows` is never empty: each domain has at least the row that made it.
    let mut best = counts[0];
    for c in &counts[1..] {
        if c.1 > best.1 {
            best = *c;
        }
    }
    best.0
}

fn policy_published(x: &mut String, p: &PublishedPolicy) {
    let _ = writeln!(x, "  <policy_published{NO_NAMESPACE}>");
    element(x, 4, "domain", &domain_key(&p.domain));
    // Optional in the schema: left out rather than guessed when unknown.
    for (name, value) in [("adkim", &p.adkim), ("aspf", &p.aspf)] {
        if let Some(v) = one_of(value, &["r", "s"]) {
            element(x, 4, name, v);
        }
    }
    element(x, 4, "p", disposition(&p.p));
    element(x, 4, "sp", disposition(&p.sp));
    element(x, 4, "pct", &p.pct.to_string());
    // Required by Appendix C, not counted by the pods: the record's
    // default (RFC 7489 §6.3), which is what almost every record has.
    element(x, 4, "fo", "0");
    x.push_str("  </policy_published>\n");
}

fn record(x: &mut String, row: &DmarcRow) {
    let _ = write!(x, "  <record{NO_NAMESPACE}>\n    <row>\n");
    element(x, 6, "source_ip", &source_ip(row.source_ip));
    element(x, 6, "count", &row.count.to_string());
    x.push_str("      <policy_evaluated>\n");
    element(x, 8, "disposition", row.disposition.as_str());
    element(x, 8, "dkim", pass_fail(row.dkim_aligned));
    element(x, 8, "spf", pass_fail(row.spf_aligned));
    x.push_str("      </policy_evaluated>\n    </row>\n    <identifiers>\n");
    element(x, 6, "envelope_from", &row.envelope_from);
    element(x, 6, "header_from", &row.header_from);
    x.push_str("    </identifiers>\n    <auth_results>\n");
    for d in &row.dkim {
        x.push_str("      <dkim>\n");
        element(x, 8, "domain", &d.domain);
        if !d.selector.is_empty() {
            element(x, 8, "selector", &d.selector);
        }
        element(x, 8, "result", dkim_result(&d.result));
        x.push_str("      </dkim>\n");
    }
    x.push_str("      <spf>\n");
    element(x, 8, "domain", &row.spf.domain);
    element(
        x,
        8,
        "scope",
        one_of(&row.spf.scope, &["helo", "mfrom"]).unwrap_or("mfrom"),
    );
    element(x, 8, "result", spf_result(&row.spf.result));
    x.push_str("      </spf>\n    </auth_results>\n  </record>\n");
}

/// Appendix C's IPAddress takes IPv4 dotted quads and IPv6 in the full
/// eight-group form only (RFC 4291 §2.2, first form), so IPv6 is written
/// that way rather than compressed (`2001:db8::1`), and an IPv4-mapped
/// address as the IPv4 address it is.
fn source_ip(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

fn pass_fail(aligned: bool) -> &'static str {
    if aligned { "pass" } else { "fail" }
}

fn one_of<'a>(value: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let v = value.trim();
    allowed.iter().copied().find(|a| a.eq_ignore_ascii_case(v))
}

/// The results come from the pods as text; a value outside the schema's
/// enumeration would make the whole report invalid, so it is reported as
/// the nearest thing that is true of it: an error.
fn dkim_result(r: &str) -> &'static str {
    const ALL: &[&str] = &[
        "none",
        "pass",
        "fail",
        "policy",
        "neutral",
        "temperror",
        "permerror",
    ];
    one_of(r, ALL).unwrap_or("permerror")
}

fn spf_result(r: &str) -> &'static str {
    const ALL: &[&str] = &[
        "none",
        "neutral",
        "pass",
        "fail",
        "softfail",
        "temperror",
        "permerror",
    ];
    one_of(r, ALL).unwrap_or("permerror")
}

/// `p=` and `sp=` as published; `none` when they are not one of the three
/// (RFC 7489 §6.6.3: an invalid policy is treated as `none`).
fn disposition(p: &str) -> &'static str {
    one_of(p, &["none", "quarantine", "reject"]).unwrap_or("none")
}

fn element(x: &mut String, indent: usize, name: &str, text: &str) {
    let _ = writeln!(x, "{:indent$}<{name}>{}</{name}>", "", escape(text));
}

/// Text for an XML element: markup escaped, and the characters XML 1.0
/// cannot carry at all (most C0 controls) replaced, since the text comes
/// from mail headers and DNS.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{END, START, aggregates, reporter};
    use super::*;

    #[test]
    fn one_report_per_policy_domain_with_only_its_rows() {
        let reports = dmarc_reports(&aggregates(), &reporter());
        let domains: Vec<&str> = reports.iter().map(|r| r.domain.as_str()).collect();
        assert_eq!(domains, ["other.test", "shop.test"]);
        let shop = &reports[1];
        assert_eq!(shop.xml.matches("<record xmlns=\"\">").count(), 2);
        assert!(shop.xml.contains("<count>3</count>"));
        assert!(shop.xml.contains("<count>5</count>"));
        assert!(!shop.xml.contains("other.test"));
        assert_eq!(reports[0].xml.matches("<record xmlns=\"\">").count(), 1);
        assert!(!reports[0].xml.contains("shop.test"));
    }

    #[test]
    fn the_period_is_stated_inclusive() {
        let r = &dmarc_reports(&aggregates(), &reporter())[0];
        assert!(r.xml.contains(&format!("<begin>{START}</begin>")));
        assert!(r.xml.contains(&format!("<end>{}</end>", END - 1)));
    }

    #[test]
    fn what_came_from_outside_is_escaped() {
        let shop = &dmarc_reports(&aggregates(), &reporter())[1];
        assert!(
            shop.xml
                .contains("<org_name>Example &lt;Mail&gt; &amp; &quot;Co&quot;</org_name>")
        );
        assert!(
            shop.xml
                .contains("<selector>a&lt;b&gt;&amp;&quot;c&quot;</selector>")
        );
        assert_eq!(escape("a\u{1}b\tc"), "a\u{FFFD}b\tc");
    }

    #[test]
    fn ipv6_sources_are_written_in_full_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            source_ip("2001:db8::25".parse().unwrap()),
            "2001:db8:0:0:0:0:0:25"
        );
        assert_eq!(source_ip("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
    }

    #[test]
    fn several_dkim_results_and_the_null_sender_are_kept() {
        let shop = &dmarc_reports(&aggregates(), &reporter())[1];
        assert_eq!(shop.xml.matches("<dkim>\n").count(), 3);
        assert!(shop.xml.contains("<envelope_from></envelope_from>"));
        assert!(shop.xml.contains("<scope>helo</scope>"));
    }

    #[test]
    fn values_outside_the_schema_become_errors_or_are_left_out() {
        assert_eq!(dkim_result("PASS"), "pass");
        assert_eq!(dkim_result("hardfail"), "permerror");
        assert_eq!(spf_result("unknown"), "permerror");
        assert_eq!(disposition("bogus"), "none");
        let mut agg = aggregates();
        agg.dmarc.truncate(1);
        agg.dmarc[0].policy.adkim = String::new();
        let r = &dmarc_reports(&agg, &reporter())[0];
        assert!(!r.xml.contains("<adkim>"));
        assert!(r.xml.contains("<aspf>s</aspf>"));
    }

    #[test]
    fn the_published_policy_is_the_one_most_messages_met() {
        let mut agg = aggregates();
        agg.dmarc.retain(|r| r.header_from == "shop.test");
        agg.dmarc[1].policy.p = "reject".into();
        let r = &dmarc_reports(&agg, &reporter())[0];
        assert!(r.xml.contains("<p>reject</p>"), "{}", r.xml);
    }

    #[test]
    fn the_same_aggregates_give_the_same_report() {
        let a = dmarc_reports(&aggregates(), &reporter());
        assert_eq!(a, dmarc_reports(&aggregates(), &reporter()));
    }
}
