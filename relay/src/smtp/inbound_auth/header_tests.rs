use super::*;
use crate::smtp::inbound_auth::results::{
    Arc, ArcCheck, AuthResults, Dkim, DkimCheck, Dmarc, DmarcCheck, DmarcPolicy, Spf, SpfCheck,
};

fn sample() -> AuthResults {
    AuthResults {
        spf_helo: SpfCheck {
            result: Spf::None,
            identity: "client.example.net".into(),
        },
        spf_mailfrom: SpfCheck {
            result: Spf::Pass,
            identity: "alice@example.org".into(),
        },
        dkim: vec![DkimCheck {
            result: Dkim::Fail,
            domain: Some("example.org".into()),
            selector: Some("s1".into()),
            b_prefix: Some("AbC+/dEf".into()),
            reason: Some("body hash (bh) did not verify\r\n".into()),
        }],
        dmarc: DmarcCheck {
            result: Dmarc::Pass,
            from_domain: Some("example.org".into()),
            policy: Some(DmarcPolicy::Reject),
            spf_aligned: true,
            dkim_aligned: false,
            published: None,
        },
        arc: ArcCheck {
            result: Arc::Fail,
            reason: Some("Invalid 'cv=' value found in ARC header".into()),
        },
    }
}

#[test]
fn header_lists_each_method_folded() {
    assert_eq!(
        authentication_results("mx.example.com", Some(&sample())),
        "Authentication-Results: mx.example.com;\r\n\
         \tspf=pass smtp.mailfrom=alice@example.org;\r\n\
         \tspf=none smtp.helo=client.example.net;\r\n\
         \tdkim=fail (body hash bh did not verify) header.d=example.org header.s=s1 header.b=\"AbC+/dEf\";\r\n\
         \tdmarc=pass (p=reject) header.from=example.org;\r\n\
         \tarc=fail (Invalid 'cv=' value found in ARC header)\r\n"
    );
}

#[test]
fn header_says_none_when_nothing_was_checked_and_notes_missing_signatures() {
    assert_eq!(
        authentication_results("mx.example.com", None),
        "Authentication-Results: mx.example.com; none\r\n"
    );
    let mut r = sample();
    r.dkim.clear();
    r.dmarc = DmarcCheck::none(None);
    r.arc = ArcCheck {
        result: Arc::None,
        reason: None,
    };
    let h = authentication_results("mx.example.com", Some(&r));
    assert!(
        h.contains(";\r\n\tdkim=none (no signature);\r\n\tdmarc=none;\r\n\tarc=none\r\n"),
        "{h}"
    );
}

#[test]
fn header_parses_back_with_every_result() {
    let mut r = sample();
    r.spf_helo.identity = "[192.0.2.1]".into();
    r.spf_mailfrom.identity = "odd \"user\"@example.org".into();
    let h = authentication_results("mx.example.com", Some(&r));
    let body = h
        .strip_prefix("Authentication-Results:")
        .expect("field name");
    let f = arparse::parse(body).expect("parses");
    assert_eq!(f.authserv_id, "mx.example.com");
    let got: Vec<_> = f
        .results
        .iter()
        .map(|i| (i.method.as_str(), i.result.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("spf", "pass"),
            ("spf", "none"),
            ("dkim", "fail"),
            ("dmarc", "pass"),
            ("arc", "fail")
        ]
    );
    assert_eq!(
        f.results[0].property("smtp", "mailfrom"),
        Some("odd \"user\"@example.org")
    );
    assert_eq!(f.results[1].property("smtp", "helo"), Some("[192.0.2.1]"));
    assert_eq!(f.results[2].property("header", "b"), Some("AbC+/dEf"));
    assert_eq!(f.results[3].property("header", "from"), Some("example.org"));
}

#[test]
fn forged_results_naming_us_are_removed_and_others_kept() {
    let msg = b"Received: from a\r\n\
        Authentication-Results: MX.example.com; spf=pass\r\n\
        \tsmtp.mailfrom=x@y\r\n\
        Subject: hi\r\n\
        Authentication-Results: other.example; dkim=pass\r\n\
        authentication-results : (c) mx.example.com;\r\n\
        \x20dmarc=pass\r\n\
        \r\n\
        Authentication-Results: mx.example.com; body text stays\r\n";
    let (out, removed) = strip_ours(msg, "mx.example.com");
    assert_eq!(removed, 2);
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        "Received: from a\r\n\
         Subject: hi\r\n\
         Authentication-Results: other.example; dkim=pass\r\n\
         \r\n\
         Authentication-Results: mx.example.com; body text stays\r\n"
    );
}

#[test]
fn strip_handles_header_only_and_empty_content() {
    let (out, n) = strip_ours(
        b"Authentication-Results: mx.example.com; none\r\n",
        "mx.example.com",
    );
    assert_eq!((out.as_slice(), n), (&b""[..], 1));
    let (out, n) = strip_ours(b"", "mx.example.com");
    assert_eq!((out.as_slice(), n), (&b""[..], 0));
    let (out, n) = strip_ours(b"\r\nbody only\r\n", "mx.example.com");
    assert_eq!((out.as_slice(), n), (&b"\r\nbody only\r\n"[..], 0));
}
