//! How long each step of an SMTP or LMTP conversation may take.

use std::time::Duration;

/// Per-step limits. The defaults are RFC 5321 §4.5.3.2's minimums for a
/// client (a server is allowed to be that slow, so waiting less would
/// turn a slow but working server into retries), except `connect`, which
/// the RFC leaves open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (and, for implicit TLS, the handshake).
    pub connect: Duration,
    /// The 220 greeting (§4.5.3.2.1: 5 minutes).
    pub greeting: Duration,
    /// EHLO/LHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT (§4.5.3.2.2-3:
    /// 5 minutes).
    pub command: Duration,
    /// The 354 after DATA (§4.5.3.2.4: 2 minutes).
    pub data_start: Duration,
    /// Sending the body and the reply after the final dot (§4.5.3.2.5-6:
    /// 3 minutes per block, 10 minutes for the final reply; lettre writes
    /// the whole body and reads the reply in one call, so one bound
    /// covers both).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_start: Duration::from_secs(120),
            data_end: Duration::from_secs(600),
        }
    }
}

impl Timeouts {
    /// Every step bounded by `d` (tests, and servers on the same network).
    pub fn uniform(d: Duration) -> Self {
        Timeouts {
            connect: d,
            greeting: d,
            command: d,
            data_start: d,
            data_end: d,
        }
    }
}
