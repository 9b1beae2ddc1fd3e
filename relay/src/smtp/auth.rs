//! SASL PLAIN (RFC 4616) and LOGIN decoding for AUTH (RFC 4954).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Credentials decoded from a client's response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub login: String,
    pub password: String,
}

/// Why a SASL response is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SaslError {
    /// `*`: the client gave up (RFC 4954 §4).
    Cancelled,
    NotBase64,
    Malformed,
}

/// Decode one base64 response line.
pub(crate) fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::NotBase64)
}

/// `authzid NUL authcid NUL passwd`. An authorization identity other than
/// the login itself is refused: nobody may act as another account.
pub(crate) fn plain(response: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authz, login, password) = (text(authz)?, text(authc)?, text(pass)?);
    if login.is_empty() || (!authz.is_empty() && authz != login) {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials { login, password })
}

/// A LOGIN step's text (user name or password).
pub(crate) fn login_text(response: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(response.to_vec()).map_err(|_| SaslError::Malformed)
}

/// The 334 challenges of LOGIN.
pub(crate) const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
pub(crate) const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses() {
        let ok = plain(b"\0alice@example.com\0pw").unwrap();
        assert_eq!(
            ok,
            Credentials {
                login: "alice@example.com".into(),
                password: "pw".into()
            }
        );
        assert!(plain(b"alice@example.com\0alice@example.com\0pw").is_ok());
        assert_eq!(
            plain(b"bob@example.com\0alice@example.com\0pw"),
            Err(SaslError::Malformed)
        );
        assert_eq!(plain(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(plain(b"no-nuls"), Err(SaslError::Malformed));
        assert_eq!(plain(b"\0a\0b\0c"), Err(SaslError::Malformed));
    }

    #[test]
    fn base64_lines() {
        assert_eq!(decode("AGFsaWNlAHB3\r\n").unwrap(), b"\0alice\0pw");
        assert_eq!(decode("*"), Err(SaslError::Cancelled));
        assert_eq!(decode("="), Ok(Vec::new()));
        assert_eq!(decode("!!"), Err(SaslError::NotBase64));
    }
}
