//! DKIM keys as the API shows them: generating a private key for
//! `spec.dkim.generate`, reading one, and the DNS record of its public key
//! (`status.dkimRecord`, whose format the field's doc promises). Pure; the
//! operator and the relay's standalone mode both use it. RustCrypto `rsa`
//! for RSA (ring cannot generate RSA keys), ring for Ed25519.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::der::pem::{self, LineEnding};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::maildomain::DkimAlgorithm;

/// RSA keys generated here: what RFC 8301 §3.2 recommends and every
/// verifier accepts (4096-bit records do not fit some DNS providers).
pub const RSA_BITS: usize = 2048;

/// A TXT record's character-strings are at most 255 octets (RFC 1035 §3.3).
const TXT_STRING_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key is not PEM: {0}")]
    Pem(String),
    #[error("not an RSA private key in PKCS#8 or PKCS#1 PEM: {0}")]
    Rsa(String),
    #[error("not an Ed25519 private key in PKCS#8 PEM: {0}")]
    Ed25519(String),
    #[error("the RSA key has {0} bits; DKIM needs at least 1024 (RFC 8301 §3.2), 2048 recommended")]
    RsaTooSmall(usize),
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// A fresh private key for `algorithm`, PKCS#8 PEM.
pub fn generate(algorithm: DkimAlgorithm) -> Result<String, KeyError> {
    let generate = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
                .map_err(|e| generate(&e))?;
            let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| generate(&e))?;
            Ok(pem.to_string())
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|e| generate(&e))?;
            pem::encode_string("PRIVATE KEY", LineEnding::LF, doc.as_ref())
                .map_err(|e| generate(&e))
        }
    }
}

/// The `p=` value of the key's DNS record, decoded: the RSA public key as
/// a SubjectPublicKeyInfo (RFC 6376 §3.6.1), or the raw 32-byte Ed25519
/// public key (RFC 8463 §4.2).
pub fn public_key(private_pem: &str, algorithm: DkimAlgorithm) -> Result<Vec<u8>, KeyError> {
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let key = RsaPrivateKey::from_pkcs8_pem(private_pem)
                .or_else(|e| RsaPrivateKey::from_pkcs1_pem(private_pem).map_err(|_| e))
                .map_err(|e| KeyError::Rsa(e.to_string()))?;
            let bits = key.size() * 8;
            if bits < 1024 {
                return Err(KeyError::RsaTooSmall(bits));
            }
            let spki = RsaPublicKey::from(&key)
                .to_public_key_der()
                .map_err(|e| KeyError::Rsa(e.to_string()))?;
            Ok(spki.as_bytes().to_vec())
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let (_, der) = pem::decode_vec(private_pem.as_bytes())
                .map_err(|e| KeyError::Pem(e.to_string()))?;
            // "maybe unchecked": OpenSSL writes PKCS#8 v1, without the public key.
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|e| KeyError::Ed25519(e.to_string()))?;
            Ok(pair.public_key().as_ref().to_vec())
        }
    }
}

/// The TXT value: `v=DKIM1; k=rsa; p=BASE64`.
pub fn txt_value(algorithm: DkimAlgorithm, public: &[u8]) -> String {
    let k = match algorithm {
        DkimAlgorithm::RsaSha256 => "rsa",
        DkimAlgorithm::Ed25519Sha256 => "ed25519",
    };
    format!("v=DKIM1; k={k}; p={}", STANDARD.encode(public))
}

/// The record as a zone file line: `SELECTOR._domainkey.DOMAIN. IN TXT
/// "..." "..."`, the value cut into quoted strings of at most 255 octets
/// (a verifier joins them without separator, RFC 6376 §3.6.2.2). The value
/// holds no `"` or `\`, so nothing needs escaping.
pub fn record(selector: &str, domain: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(TXT_STRING_MAX)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT {}",
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests;
