//! The reports against the committed schemas, checked by real
//! validators: Python's `xmlschema` for the DMARC XML (RFC 7489 Appendix
//! C) and `jsonschema` for the TLS-RPT JSON (RFC 8460 §4.4), both from the
//! test venv (tests/requirements.txt, made by tests/lib/deps.sh and put
//! first on PATH by tests/run). Without them these tests fail: the
//! validator's own failure is told apart from its verdict, so a missing
//! module never passes as a refused document.

use std::io::Write;
use std::process::Command;

use super::testing::{aggregates, reporter};
use super::{dmarc_reports, tls_reports};

const DMARC_XSD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/dmarc-rfc7489.xsd");
const TLSRPT_SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/tlsrpt-rfc8460.schema.json"
);

/// Exit status of the scripts for "the document is invalid"; anything
/// else but 0 is the validator failing.
const INVALID: i32 = 3;

const XML_SCRIPT: &str = r#"
import sys, xmlschema
schema = xmlschema.XMLSchema(sys.argv[1])
errors = list(schema.iter_errors(sys.argv[2]))
for e in errors:
    print(f"{e.path}: {e.reason}")
sys.exit(3 if errors else 0)
"#;

const JSON_SCRIPT: &str = r#"
import json, sys
from jsonschema import Draft202012Validator, FormatChecker
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema, format_checker=FormatChecker())
errors = list(v.iter_errors(json.load(open(sys.argv[2]))))
for e in errors:
    print(f"{list(e.absolute_path)}: {e.message}")
sys.exit(3 if errors else 0)
"#;

/// `Ok` when the validator accepts `doc`, `Err` with its reasons when it
/// refuses it; panics when the validator cannot run.
fn validate(script: &str, schema: &str, doc: &str) -> Result<(), String> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(doc.as_bytes()).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(schema)
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| panic!("python3 (the test venv's, see tests/lib/deps.sh): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(()),
        Some(INVALID) => Err(said),
        _ => panic!(
            "the validator did not run (is the test venv from tests/requirements.txt first on PATH?):\n{said}"
        ),
    }
}

#[test]
fn dmarc_reports_validate_against_the_rfc_7489_schema() {
    let reports = dmarc_reports(&aggregates(), &reporter());
    // The one with several rows, an IPv6 source, several DKIM results,
    // the null sender and text needing escapes; and the small one.
    assert_eq!(reports[1].xml.matches("<record xmlns=\"\">").count(), 2);
    for r in &reports {
        validate(XML_SCRIPT, DMARC_XSD, &r.xml)
            .unwrap_or_else(|e| panic!("{} refused:\n{e}\n{}", r.domain, r.xml));
    }
}

#[test]
fn the_rfc_7489_schema_refuses_what_is_not_a_report() {
    let good = &dmarc_reports(&aggregates(), &reporter())[1].xml;
    // Each with a word of the refusal it must get, so a document refused
    // for another reason (say, broken XML) does not pass for this one.
    let cases = [
        // Children in the namespace: a default namespace not set back.
        (good.replace(" xmlns=\"\"", ""), "Unexpected child"),
        // The root in no namespace, as most reporters write it.
        (
            good.replace(" xmlns=\"http://dmarc.org/dmarc-xml/0.1\"", ""),
            "is not an element of the schema",
        ),
        // A compressed IPv6 address.
        (
            good.replace("2001:db8:0:0:0:0:0:25", "2001:db8::25"),
            "source_ip: value doesn't match any pattern",
        ),
        (
            good.replace(
                "<disposition>quarantine</disposition>",
                "<disposition>discard</disposition>",
            ),
            "disposition: value must be one of",
        ),
        (good.replace("<fo>0</fo>", ""), "Tag 'fo' expected"),
        (
            good.replace("<count>3</count>", "<count>three</count>"),
            "count: invalid literal",
        ),
    ];
    for (case, refusal) in &cases {
        assert_ne!(case, good, "{refusal}: the case changed nothing");
        match validate(XML_SCRIPT, DMARC_XSD, case) {
            Err(said) => assert!(said.contains(refusal), "wanted {refusal:?}, got:\n{said}"),
            Ok(()) => panic!("accepted ({refusal}):\n{case}"),
        }
    }
}

#[test]
fn tls_reports_validate_against_the_rfc_8460_schema() {
    for r in &tls_reports(&aggregates(), &reporter()) {
        validate(JSON_SCRIPT, TLSRPT_SCHEMA, &r.json)
            .unwrap_or_else(|e| panic!("{} refused:\n{e}\n{}", r.domain, r.json));
    }
}

#[test]
fn the_rfc_8460_schema_refuses_what_is_not_a_report() {
    let good: serde_json::Value =
        serde_json::from_str(&tls_reports(&aggregates(), &reporter())[1].json).unwrap();
    let mut cases = Vec::new();
    let mut v = good.clone();
    v["policies"][0]["policy"]["policy-type"] = "dane".into();
    cases.push((v, "'dane' is not one of"));
    let mut v = good.clone();
    v["policies"][0]["failure-details"][0]["receiving-ip"] = "2001:db8::zz".into();
    cases.push((v, "'receiving-ip']: '2001:db8::zz' is not valid"));
    let mut v = good.clone();
    v["date-range"]["start-datetime"] = "2023-11-15 00:00".into();
    cases.push((v, "'start-datetime']: '2023-11-15 00:00' does not match"));
    let mut v = good.clone();
    v["policies"][0]["summary"]["total-failure-session-count"] = (-1).into();
    cases.push((v, "-1 is less than the minimum"));
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("report-id");
    cases.push((v, "'report-id' is a required property"));
    let mut v = good.clone();
    v["policies"][0]["failure-details"][0]["failed-sessions"] = 1.into();
    cases.push((v, "'failed-sessions' was unexpected"));
    for (case, refusal) in cases {
        match validate(JSON_SCRIPT, TLSRPT_SCHEMA, &case.to_string()) {
            Err(said) => assert!(said.contains(refusal), "wanted {refusal:?}, got:\n{said}"),
            Ok(()) => panic!("accepted ({refusal}): {case}"),
        }
    }
}

/// What a parser that ignores namespaces sees (expat without namespace
/// processing, as xmltodict and so parsedmarc use it), and what
/// ElementTree finds by the elements' plain names.
const PLAIN_SCRIPT: &str = r#"
import sys, xml.parsers.expat, xml.etree.ElementTree as ET
doc = open(sys.argv[2], "rb").read()
names, depth = [], [0]
def start(name, attrs):
    if depth[0] <= 1:
        names.append(name)
    depth[0] += 1
def end(name):
    depth[0] -= 1
p = xml.parsers.expat.ParserCreate()
p.StartElementHandler, p.EndElementHandler = start, end
p.Parse(doc, True)
root = ET.fromstring(doc)
found = root.find("report_metadata/org_name") is not None and len(root.findall("record")) > 0
print(names[:4], root.tag, found)
sys.exit(0 if names[:4] == ["feedback", "version", "report_metadata", "policy_published"] and found else 3)
"#;

#[test]
fn parsers_that_ignore_namespaces_find_feedback_and_its_children() {
    for r in &dmarc_reports(&aggregates(), &reporter()) {
        validate(PLAIN_SCRIPT, "", &r.xml).unwrap_or_else(|e| panic!("{e}\n{}", r.xml));
    }
    let prefixed = dmarc_reports(&aggregates(), &reporter())[0]
        .xml
        .replace("<feedback xmlns=", "<dmarc:feedback xmlns:dmarc=")
        .replace("</feedback>", "</dmarc:feedback>");
    assert!(validate(PLAIN_SCRIPT, "", &prefixed).is_err());
}
