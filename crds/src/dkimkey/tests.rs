use super::*;

const RSA_OPENSSL: &str = include_str!("../../../relay/src/dkim/testdata/rsa.pem");
const RSA_OPENSSL_PUB: &str = include_str!("../../../relay/src/dkim/testdata/rsa.pub.b64");
const ED_OPENSSL: &str = include_str!("../../../relay/src/dkim/testdata/ed25519.pem");
const ED_OPENSSL_PUB: &str = include_str!("../../../relay/src/dkim/testdata/ed25519.pub.b64");

#[test]
fn public_keys_match_what_openssl_derives() {
    let rsa = public_key(RSA_OPENSSL, DkimAlgorithm::RsaSha256).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(STANDARD.encode(rsa), RSA_OPENSSL_PUB.trim());
    let ed = public_key(ED_OPENSSL, DkimAlgorithm::Ed25519Sha256).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(STANDARD.encode(ed), ED_OPENSSL_PUB.trim());
}

#[test]
fn generated_keys_are_pkcs8_pem_of_the_asked_algorithm() {
    let rsa = generate(DkimAlgorithm::RsaSha256).unwrap_or_else(|e| panic!("{e}"));
    assert!(rsa.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{rsa}");
    let parsed = RsaPrivateKey::from_pkcs8_pem(&rsa).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.size() * 8, RSA_BITS);
    let ed = generate(DkimAlgorithm::Ed25519Sha256).unwrap_or_else(|e| panic!("{e}"));
    assert!(ed.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{ed}");
    assert_eq!(
        public_key(&ed, DkimAlgorithm::Ed25519Sha256)
            .map(|p| p.len())
            .ok(),
        Some(32)
    );
    // Each key its own.
    assert_ne!(generate(DkimAlgorithm::Ed25519Sha256).ok(), Some(ed));
}

#[test]
fn a_key_of_the_other_algorithm_is_refused() {
    assert!(matches!(
        public_key(ED_OPENSSL, DkimAlgorithm::RsaSha256),
        Err(KeyError::Rsa(_))
    ));
    assert!(matches!(
        public_key(RSA_OPENSSL, DkimAlgorithm::Ed25519Sha256),
        Err(KeyError::Ed25519(_))
    ));
    assert!(matches!(
        public_key("garbage", DkimAlgorithm::Ed25519Sha256),
        Err(KeyError::Pem(_))
    ));
}

/// The quoted strings of a record line, joined: what a resolver returns.
fn unquote(record: &str) -> (String, Vec<String>) {
    let (name, rest) = record
        .split_once(" IN TXT ")
        .unwrap_or_else(|| panic!("{record}"));
    let strings: Vec<String> = rest
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    (name.to_string(), strings)
}

#[test]
fn an_rsa_record_is_split_into_255_octet_strings() {
    let public =
        public_key(RSA_OPENSSL, DkimAlgorithm::RsaSha256).unwrap_or_else(|e| panic!("{e}"));
    let value = txt_value(DkimAlgorithm::RsaSha256, &public);
    assert!(
        value.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
        "{value}"
    );
    let line = record("s1", "example.com", &value);
    assert!(
        line.starts_with("s1._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p="),
        "{line}"
    );
    let (name, strings) = unquote(&line);
    assert_eq!(name, "s1._domainkey.example.com.");
    assert_eq!(strings.len(), 2, "{line}");
    assert_eq!(strings[0].len(), 255);
    assert_eq!(strings.concat(), value);
}

#[test]
fn an_ed25519_record_is_one_string() {
    let public =
        public_key(ED_OPENSSL, DkimAlgorithm::Ed25519Sha256).unwrap_or_else(|e| panic!("{e}"));
    let line = record(
        "ed",
        "example.com",
        &txt_value(DkimAlgorithm::Ed25519Sha256, &public),
    );
    assert_eq!(
        line,
        format!(
            "ed._domainkey.example.com. IN TXT \"v=DKIM1; k=ed25519; p={}\"",
            ED_OPENSSL_PUB.trim()
        )
    );
}
