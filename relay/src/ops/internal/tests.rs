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

mod before_the_body {
    use hyper::{Method, StatusCode};
    use mailrelay_crds::reports::{SUBMIT_PATH, internal_key, sign_request};

    use super::super::{BodyAllowed, admit, body_limit};

    const LIMIT: u64 = 1000;

    fn status(r: Result<BodyAllowed, (StatusCode, &'static str, String)>) -> StatusCode {
        match r {
            Ok(_) => StatusCode::OK,
            Err((s, _, _)) => s,
        }
    }

    #[test]
    fn without_a_fresh_signature_header_no_body_is_read() {
        let key = internal_key(b"0123456789abcdef0123456789abcdef");
        let sig = sign_request(&key, 1000, "POST", SUBMIT_PATH, b"x");
        let post = |header: Option<&str>, now: i64, len: Option<u64>| {
            admit(&Method::POST, SUBMIT_PATH, header, len, true, now, LIMIT)
        };
        // No header, a huge announced body: 401 from the head alone.
        assert_eq!(
            status(post(None, 1000, Some(25 << 20))),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(post(Some("t=1000"), 1000, Some(1))),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(post(Some(&sig), 1000 + 301, Some(1))),
            StatusCode::UNAUTHORIZED,
            "stale"
        );
        // Fresh: the body may be read, up to the limit.
        assert_eq!(
            post(Some(&sig), 1010, Some(1)),
            Ok(BodyAllowed::UpTo(LIMIT))
        );
        assert_eq!(post(Some(&sig), 1010, None), Ok(BodyAllowed::UpTo(LIMIT)));
        assert_eq!(
            status(post(Some(&sig), 1010, Some(LIMIT + 1))),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn only_a_submission_has_a_body() {
        let key = internal_key(b"0123456789abcdef0123456789abcdef");
        let sig = sign_request(&key, 1000, "GET", "/internal/status", b"");
        let get = |has_body: bool| {
            admit(
                &Method::GET,
                "/internal/status",
                Some(&sig),
                has_body.then_some(5),
                has_body,
                1000,
                LIMIT,
            )
        };
        assert_eq!(get(false), Ok(BodyAllowed::None));
        assert_eq!(status(get(true)), StatusCode::BAD_REQUEST);
        let other_post = admit(
            &Method::POST,
            "/internal/status",
            Some(&sig),
            Some(5),
            true,
            1000,
            LIMIT,
        );
        assert_eq!(status(other_post), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_submission_limit_follows_the_message_size_in_base64() {
        let limit = body_limit(25 << 20);
        assert!(limit >= (25 << 20) / 3 * 4 + 4, "{limit}");
        assert!(limit < (25 << 20) / 3 * 4 + (2 << 20), "{limit}");
        assert!(body_limit(u64::MAX) > 0);
    }
}

mod submissions {
    use base64::Engine as _;
    use mailrelay_crds::reports::Submission;

    use super::super::submit::{Recent, SubmitError, check, digest};
    use crate::testutil::runtime;

    fn submission(from: &str, to: usize, message: &str) -> Submission {
        Submission {
            from: from.into(),
            to: (0..to).map(|i| format!("r{i}@example.net")).collect(),
            message: base64::engine::general_purpose::STANDARD.encode(message),
        }
    }

    #[test]
    fn the_from_header_must_be_of_the_senders_domain() {
        let (rt, _dir) = runtime();
        let ok = "From: <reports@Hosted.Example>\r\nSubject: r\r\n\r\nbody\r\n";
        let checked = check(&rt, &submission("reports@hosted.example", 1, ok));
        assert!(checked.is_ok(), "{:?}", checked.err());
        let other = "From: <ceo@bank.example>\r\nSubject: r\r\n\r\nbody\r\n";
        let refused = check(&rt, &submission("reports@hosted.example", 1, other)).err();
        assert!(
            matches!(&refused, Some(SubmitError::FromNotSender { from, .. }) if from == "bank.example"),
            "{refused:?}"
        );
        let none = check(
            &rt,
            &submission("reports@hosted.example", 1, "Subject: r\r\n\r\nx\r\n"),
        );
        assert!(matches!(none, Err(SubmitError::NoFrom(_))));
        assert_eq!(
            refused.map(|e| e.status()),
            Some(hyper::StatusCode::UNPROCESSABLE_ENTITY)
        );
    }

    #[test]
    fn recipients_past_the_relays_limit_are_refused() {
        let (rt, _dir) = runtime();
        let max = rt.config.limits.max_recipients as usize;
        let msg = "From: <reports@hosted.example>\r\n\r\nbody\r\n";
        assert!(check(&rt, &submission("reports@hosted.example", max, msg)).is_ok());
        let over = check(&rt, &submission("reports@hosted.example", max + 1, msg));
        assert!(
            matches!(over, Err(SubmitError::TooManyRecipients { count, .. }) if count == max + 1)
        );
    }

    #[test]
    fn a_body_seen_lately_gets_its_queue_id_again_and_is_forgotten_after_ten_minutes() {
        let recent = Recent::default();
        let (a, b) = (digest(b"report a"), digest(b"report b"));
        assert_eq!(recent.get(&a, 1000), None);
        recent.remember(a, 1000, "Q1".into());
        assert_eq!(recent.get(&a, 1000 + 600).as_deref(), Some("Q1"));
        assert_eq!(recent.get(&b, 1000), None);
        assert_eq!(recent.get(&a, 1000 + 601), None);
    }

    #[test]
    fn the_memory_of_submissions_is_bounded() {
        let recent = Recent::default();
        let n = super::super::submit::REMEMBERED as u32;
        for i in 0..=n {
            recent.remember(digest(&i.to_be_bytes()), 1000, format!("Q{i}"));
        }
        assert_eq!(recent.get(&digest(&0u32.to_be_bytes()), 1000), None);
        assert_eq!(
            recent.get(&digest(&n.to_be_bytes()), 1000),
            Some(format!("Q{n}"))
        );
    }
}
