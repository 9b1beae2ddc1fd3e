use hyper::StatusCode;
use mailrelay_crds::reports::{internal_key, sign_request};

use super::authorize;

const PQ: &str = "/internal/reports?start=3600";

#[test]
fn a_signed_request_is_let_in_and_anything_else_gets_401_with_the_reason() {
    let key = internal_key(b"0123456789abcdef0123456789abcdef");
    let good = sign_request(&key, 1000, "GET", PQ, b"");
    assert_eq!(authorize(&key, Some(&good), 1010, "GET", PQ, b""), Ok(()));
    let refused = |r: Result<(), (StatusCode, &'static str, String)>| {
        let (status, _, text) = r.unwrap_err();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        text
    };
    let other = internal_key(b"fedcba9876543210fedcba9876543210");
    let wrong = sign_request(&other, 1000, "GET", PQ, b"");
    assert!(
        refused(authorize(&key, Some(&wrong), 1010, "GET", PQ, b"")).contains("does not match")
    );
    assert!(refused(authorize(&key, Some(&good), 1000 + 301, "GET", PQ, b"")).contains("300 s"));
    assert!(
        refused(authorize(&key, None, 1010, "GET", PQ, b""))
            .contains("x-mailrelay-internal-signature")
    );
    let post = sign_request(&key, 1000, "POST", "/internal/submit", b"{\"to\":[]}");
    assert_eq!(
        authorize(
            &key,
            Some(&post),
            1000,
            "POST",
            "/internal/submit",
            b"{\"to\":[]}"
        ),
        Ok(())
    );
    let tampered = refused(authorize(
        &key,
        Some(&post),
        1000,
        "POST",
        "/internal/submit",
        b"{\"to\":[1]}",
    ));
    assert!(tampered.contains("does not match"), "{tampered}");
    assert!(refused(authorize(&key, Some("t=1000"), 1000, "GET", PQ, b"")).contains("not t=UNIX"));
}

#[test]
fn the_period_comes_from_the_query() {
    assert_eq!(super::start_of(Some("start=3600")), Some(3600));
    assert_eq!(super::start_of(Some("x=1&start=-86400")), Some(-86400));
    assert_eq!(super::start_of(Some("start=soon")), None);
    assert_eq!(super::start_of(None), None);
}
