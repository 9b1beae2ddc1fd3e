//! The signature of a webhook request: `X-Mailrelay-Signature:
//! t=UNIX,v1=HEX`, HEX being HMAC-SHA256(key, t + "." + body). The time
//! is signed with the body so a receiver can refuse an old request
//! replayed (as Stripe's and Slack's webhooks do).

use ring::hmac;

use super::record::hex;

pub(crate) const HEADER: &str = "x-mailrelay-signature";

/// The header value for `body` sent at `unix` seconds.
pub(crate) fn signature(key: &hmac::Key, unix: i64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(unix.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={unix},v1={}", hex(ctx.sign().as_ref()))
}

/// The signing key from the Secret's bytes: used as they are, less a
/// trailing newline (`kubectl create secret --from-file` keeps one).
pub(crate) fn key(secret: &[u8]) -> hmac::Key {
    let trimmed = secret
        .strip_suffix(b"\n")
        .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
        .unwrap_or(secret);
    hmac::Key::new(hmac::HMAC_SHA256, trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Python: hmac.new(b"key", b"1700000000.[]", hashlib.sha256).hexdigest()
        let sig = signature(&key(b"key\n"), 1_700_000_000, b"[]");
        assert_eq!(
            sig,
            "t=1700000000,v1=2afce10b4f37880815b715635811bcfa4d5334e7213eea5bc2e130e1008055c3"
        );
    }
}
