//! TLSA records (RFC 6698) as SMTP uses them (RFC 7672 §3): which are
//! usable, and whether a server's certificate chain matches them.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (§3.1.3: PKIX-TA(0)
//! and PKIX-EE(1) would need the Web PKI roots, which MX hosts are not
//! expected to use). DANE-EE matches the leaf alone: no name, no expiry
//! (§3.1.1). DANE-TA needs a chain from the leaf to a certificate the
//! record matches, and the leaf's name to be one of the reference
//! identifiers (§3.2.2: the MX host, or the destination domain).

use std::sync::Arc;

use ring::digest;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificate usage DANE-TA: a trust anchor of the chain (RFC 7218).
pub(crate) const DANE_TA: u8 = 2;
/// Certificate usage DANE-EE: the server's own certificate or key.
pub(crate) const DANE_EE: u8 = 3;

/// One TLSA record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tlsa {
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the selected data itself; 1: its SHA-256; 2: its SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether this record can authenticate an SMTP server (RFC 7672
    /// §3.1; unknown parameters are unusable, RFC 6698 §4.1).
    pub(crate) fn usable(&self) -> bool {
        matches!(self.usage, DANE_TA | DANE_EE)
            && matches!(self.selector, 0 | 1)
            && matches!(self.matching, 0..=2)
    }

    /// Whether the certificate `der` matches this record's selector,
    /// matching type and data.
    fn matches(&self, der: &[u8]) -> bool {
        let selected = match self.selector {
            0 => der.to_vec(),
            1 => match X509Certificate::from_der(der) {
                Ok((_, cert)) => cert.tbs_certificate.subject_pki.raw.to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        let digested = match self.matching {
            0 => selected,
            1 => digest::digest(&digest::SHA256, &selected).as_ref().to_vec(),
            2 => digest::digest(&digest::SHA512, &selected).as_ref().to_vec(),
            _ => return false,
        };
        digested == self.data
    }
}

/// Whether `chain` (DER, leaf first, as the server sent it) matches one
/// of the usable `records`; `names` are the reference identifiers for
/// DANE-TA. `Err` says why not, in words for a reply.
pub(crate) fn check_chain(
    records: &[Tlsa],
    chain: &[Vec<u8>],
    names: &[&str],
    now: UnixTime,
) -> Result<(), String> {
    let (leaf, rest) = chain.split_first().ok_or("no server certificate")?;
    let usable: Vec<&Tlsa> = records.iter().filter(|r| r.usable()).collect();
    if usable.is_empty() {
        return Err("no usable TLSA records".into());
    }
    if usable.iter().any(|r| r.usage == DANE_EE && r.matches(leaf)) {
        return Ok(());
    }
    let mut last = None;
    for record in usable.iter().filter(|r| r.usage == DANE_TA) {
        // RFC 7671 §5.2.2: the server sends the trust anchor in its chain.
        for anchor in chain.iter().filter(|c| record.matches(c)) {
            match chain_to(anchor, leaf, rest, names, now) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(match last {
        Some(e) => format!("TLSA trust anchor matched but the chain is not valid: {e}"),
        None => "no certificate of the server's chain matches its TLSA records".into(),
    })
}

/// A chain from `leaf` through `intermediates` to `anchor`, valid now,
/// for one of `names`.
fn chain_to(
    anchor: &[u8],
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    names: &[&str],
    now: UnixTime,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(anchor.to_vec()))
        .map_err(|e| e.to_string())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let mut last = String::from("no reference identifier");
    for name in names {
        let Ok(server) = ServerName::try_from(name.to_string()) else {
            continue;
        };
        match verifier.verify_server_cert(
            &CertificateDer::from(leaf),
            &intermediates,
            &server,
            &[],
            now,
        ) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// A rustls verifier that authenticates a server by its TLSA records
/// instead of the Web PKI: the host's records and reference identifiers.
#[derive(Debug)]
pub(crate) struct DaneVerifier {
    records: Vec<Tlsa>,
    names: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DaneVerifier {
    pub(crate) fn new(records: Vec<Tlsa>, names: Vec<String>) -> Self {
        Self {
            records,
            names,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// [`check_chain`] on a chain as the TLS session kept it.
    pub(crate) fn check(&self, chain: &[Vec<u8>], now: UnixTime) -> Result<(), String> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        check_chain(&self.records, chain, &names, now)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.as_ref().to_vec())
            .collect();
        self.check(&chain, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|e| {
                TlsError::InvalidCertificate(CertificateError::Other(
                    tokio_rustls::rustls::OtherError(Arc::new(DaneMismatch(e))),
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a chain does not match its TLSA records.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DaneMismatch(String);
