//! How the relay connects out over SMTP: our name, TLS policy,
//! credentials, timeouts; and what TLS a connection ended up with.

use std::fmt;

use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
use mailrelay_crds::maildomain::TlsMode;

use super::Timeouts;

/// Settings for [`SmtpClient::connect`](super::SmtpClient::connect).
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// Our name in EHLO (RFC 5321 §4.1.1.1: the client's FQDN).
    pub hostname: String,
    /// STARTTLS / implicit TLS policy. For MX delivery `Opportunistic`;
    /// for a smarthost or a mailbox server whatever its config says.
    pub tls: TlsMode,
    /// AUTH for a smarthost; only ever sent over TLS.
    pub auth: Option<Credentials>,
    /// DER certificates trusted besides the webpki (Mozilla) roots when a
    /// certificate is verified: a private CA of an internal smarthost.
    pub extra_roots: Vec<Vec<u8>>,
    pub timeouts: Timeouts,
    /// With `TlsMode::Required`: the handshake takes any certificate and
    /// the caller checks it before any mail is sent (DANE, whose TLSA
    /// records replace the Web PKI). The connection is `Encrypted`.
    pub check_after_handshake: bool,
}

impl OutboundConfig {
    pub fn new(hostname: impl Into<String>, tls: TlsMode) -> Self {
        OutboundConfig {
            hostname: hostname.into(),
            tls,
            auth: None,
            extra_roots: Vec::new(),
            timeouts: Timeouts::default(),
            check_after_handshake: false,
        }
    }

    pub(crate) fn with_auth(mut self, credentials: Credentials) -> Self {
        self.auth = Some(credentials);
        self
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_extra_root(mut self, der: Vec<u8>) -> Self {
        self.extra_roots.push(der);
        self
    }
}

/// A user name and password for AUTH PLAIN or LOGIN.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    /// The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What protection a connection has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// No TLS: the policy says none, or (opportunistic) the server does
    /// not offer STARTTLS.
    Clear,
    /// Opportunistic: STARTTLS was offered but failed, and this is a new
    /// connection in clear (as Postfix does at `smtp_tls_security_level =
    /// may`). `error` says what failed, for the logs.
    ClearAfterTlsFailure { error: String },
    /// TLS whose certificate was not checked: opportunistic TLS, where an
    /// MX certificate is rarely valid for the MX name (RFC 7435: some
    /// protection beats none).
    Encrypted,
    /// TLS with the certificate verified against the host name.
    Verified,
}

/// Whether the certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CertCheck {
    Verify,
    Accept,
}

/// TLS parameters for `host` (the SNI name and the name the certificate
/// must carry when verified).
pub(super) fn tls_parameters(
    host: &str,
    check: CertCheck,
    extra_roots: &[Vec<u8>],
) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(host.to_string());
    match check {
        CertCheck::Verify => {
            builder = builder.certificate_store(CertificateStore::WebpkiRoots);
            for der in extra_roots {
                let cert = Certificate::from_der(der.clone())
                    .map_err(|e| format!("unusable extra root certificate: {e}"))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        CertCheck::Accept => {
            builder = builder
                .dangerous_accept_invalid_certs(true)
                .dangerous_accept_invalid_hostnames(true);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up TLS for {host}: {e}"))
}
