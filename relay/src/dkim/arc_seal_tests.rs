use mail_auth::AuthenticatedMessage;
use mailrelay_crds::maildomain::DkimAlgorithm;

use super::*;
use crate::dkim::keys;

const ED25519: &[u8] = include_bytes!("testdata/ed25519.pem");

fn shape(seals: &[(u32, Arc)], signatures: &[u32], results: &[u32]) -> Shape {
    Shape {
        malformed: false,
        seals: seals.to_vec(),
        signatures: signatures.to_vec(),
        results: results.to_vec(),
    }
}

fn at(i: u32, cv: Arc) -> Result<Instance, NotSealed> {
    Ok(Instance { i, cv })
}

#[test]
fn the_new_set_follows_the_chain_with_the_checks_verdict_as_cv() {
    use Arc::{Fail, None, Pass};
    let one = shape(&[(1, None)], &[1], &[1]);
    let two = shape(&[(1, None), (2, Pass)], &[1, 2], &[1, 2]);
    let rows: Vec<(&str, Shape, Arc, Result<Instance, NotSealed>)> = vec![
        ("no chain", Shape::default(), None, at(1, None)),
        ("one set that validates", one.clone(), Pass, at(2, Pass)),
        ("one set that does not", one.clone(), Fail, at(2, Fail)),
        ("a verdict of none on sets", one.clone(), None, at(2, Fail)),
        ("two sets", two.clone(), Pass, at(3, Pass)),
        (
            "newest seal cv=fail",
            shape(&[(1, None), (2, Fail)], &[1, 2], &[1, 2]),
            Fail,
            Err(NotSealed::AlreadyFailed),
        ),
        (
            "a seal without its signature",
            shape(&[(1, None), (2, Pass)], &[1], &[1, 2]),
            Fail,
            Err(NotSealed::Malformed),
        ),
        (
            "results without a seal",
            shape(&[], &[], &[1]),
            None,
            Err(NotSealed::Malformed),
        ),
        (
            "a gap in the numbers",
            shape(&[(1, None), (3, Pass)], &[1, 3], &[1, 3]),
            Fail,
            Err(NotSealed::Malformed),
        ),
        (
            "a field that did not parse",
            Shape {
                malformed: true,
                ..one.clone()
            },
            Fail,
            Err(NotSealed::Malformed),
        ),
    ];
    for (what, s, chain, expected) in rows {
        assert_eq!(instance(&s, chain), expected, "{what}");
    }
    let full: Vec<u32> = (1..=50).collect();
    let mut seals = vec![(1, None)];
    seals.extend((2..=50).map(|i| (i, Pass)));
    assert_eq!(
        instance(&shape(&seals, &full, &full), Pass),
        Err(NotSealed::TooLong)
    );
    seals.pop();
    assert_eq!(
        instance(&shape(&seals, &full[..49], &full[..49]), Pass),
        at(50, Pass)
    );
}

#[test]
fn results_become_one_line_with_single_spaces() {
    assert_eq!(
        one_line(
            "Authentication-Results: mx.example.com;\r\n\tspf=pass  smtp.mailfrom=a@b.example;\r\n\tdkim=none (no signature);\r\n\tarc=none\r\n"
        ),
        "mx.example.com; spf=pass smtp.mailfrom=a@b.example; dkim=none (no signature); arc=none"
    );
    assert_eq!(one_line("mx.example.com; none\r\n"), "mx.example.com; none");
}

const MESSAGE: &str = "From: <alice@sender.example>\r\nTo: <bob@fwd.example>\r\nSubject: hi\r\nDKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s; h=from; bh=x; b=y\r\n\r\nbody\r\n";

fn sealed(message: &str, results: &str, chain: Arc) -> String {
    let key = std::sync::Arc::new(
        keys::parse(ED25519, DkimAlgorithm::Ed25519Sha256, "k").expect("test key parses"),
    );
    seal(
        key,
        "fwd.example",
        "arc1",
        message.as_bytes(),
        results,
        chain,
    )
    .expect("sealed")
}

/// Each field of `set`, unfolded, by name.
fn field(set: &str, name: &str) -> String {
    let message = format!("{set}\r\n");
    let parsed = AuthenticatedMessage::parse(message.as_bytes()).expect("parses");
    let (_, value) = parsed
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .unwrap_or_else(|| panic!("no {name} in {set}"));
    String::from_utf8_lossy(value)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_sealed_message_gets_instance_1_and_a_second_seal_instance_2_with_cv_pass() {
    let first = sealed(
        MESSAGE,
        "Authentication-Results: mx.example.com;\r\n\tspf=pass smtp.mailfrom=alice@sender.example;\r\n\tarc=none\r\n",
        Arc::None,
    );
    assert!(
        first.starts_with("ARC-Seal: i=1; a=ed25519-sha256; s=arc1; d=fwd.example; cv=none;"),
        "{first}"
    );
    let ams = field(&first, "ARC-Message-Signature");
    assert!(
        ams.starts_with("i=1; a=ed25519-sha256; s=arc1; d=fwd.example; c=relaxed/relaxed;"),
        "{ams}"
    );
    let h = ams
        .split("h=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        h.contains("dkim-signature") && h.contains("from") && h.contains("subject"),
        "{h}"
    );
    assert!(
        !h.contains("arc-") && !h.contains("authentication-results"),
        "{h}"
    );
    assert_eq!(
        field(&first, "ARC-Authentication-Results"),
        "i=1; mx.example.com; spf=pass smtp.mailfrom=alice@sender.example; arc=none"
    );

    // The next hop sees the first set and a chain that validated.
    let forwarded = format!("{first}{MESSAGE}");
    let second = sealed(
        &forwarded,
        "Authentication-Results: mx2.example.com; arc=pass\r\n",
        Arc::Pass,
    );
    assert!(
        second.starts_with("ARC-Seal: i=2; a=ed25519-sha256; s=arc1; d=fwd.example; cv=pass;"),
        "{second}"
    );
    assert!(field(&second, "ARC-Message-Signature").starts_with("i=2;"));
    assert_eq!(
        field(&second, "ARC-Authentication-Results"),
        "i=2; mx2.example.com; arc=pass"
    );

    // A chain that did not validate is sealed cv=fail, and then no more.
    let failed = sealed(
        &forwarded,
        "Authentication-Results: mx2.example.com; arc=fail\r\n",
        Arc::Fail,
    );
    assert!(
        failed.starts_with("ARC-Seal: i=2; a=ed25519-sha256; s=arc1; d=fwd.example; cv=fail;"),
        "{failed}"
    );
    let key = std::sync::Arc::new(
        keys::parse(ED25519, DkimAlgorithm::Ed25519Sha256, "k").expect("test key parses"),
    );
    let after_fail = format!("{failed}{forwarded}");
    assert!(matches!(
        seal(
            key,
            "fwd.example",
            "arc1",
            after_fail.as_bytes(),
            "Authentication-Results: x; none",
            Arc::Fail
        ),
        Err(SealError::NotSealed(NotSealed::AlreadyFailed))
    ));
}
