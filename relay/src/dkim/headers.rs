//! Which header fields a signature covers and whose signature it is: pure
//! functions over the message as accepted (CRLF line endings).

use mail_parser::{HeaderName, MessageParser};

use crate::smtp::address::{self, Address};

/// Header fields signed when present: RFC 6376 §5.4.1's list, plus the
/// fields that identify and describe the content (Message-ID, MIME) and
/// `List-Unsubscribe-Post`, which RFC 8058 §4 requires to be signed.
/// Absent fields are not listed (an absent `List-Id` in `h=` would break
/// the signature of every mailing list that forwards the message) —
/// except `From`, which is over-signed: see [`signed_header_names`].
pub(crate) const SIGNED: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

/// Names of the header fields of `message`, in order (continuation lines
/// folded into their field), up to the empty line that ends the header.
pub(crate) fn field_names(message: &[u8]) -> Vec<&str> {
    let mut names = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let Ok(name) = std::str::from_utf8(&line[..colon]) {
            names.push(name.trim_end());
        }
    }
    names
}

/// The `h=` list handed to the signer: each field of [`SIGNED`] that the
/// message has, once (the signer covers every instance of a listed name),
/// and `From` one more time. RFC 6376 §5.4.2 and §8.15: naming a field
/// once more than it occurs signs its absence, so nobody can add a second
/// `From:` that a mail client would show instead of the signed one.
pub(crate) fn signed_header_names(message: &[u8]) -> Vec<String> {
    let present = field_names(message);
    let mut names: Vec<String> = SIGNED
        .iter()
        .filter(|wanted| present.iter().any(|p| p.eq_ignore_ascii_case(wanted)))
        .map(|n| n.to_string())
        .collect();
    names.push("From".to_string());
    names
}

/// Why a message carries no author we can sign for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthorError {
    #[error("the message has no From: header")]
    NoFrom,
    #[error("the message has more than one From: header")]
    SeveralFrom,
    #[error("From: does not hold exactly one address")]
    NotOneAddress,
    #[error("the From: address is not usable: {0}")]
    BadAddress(&'static str),
}

/// The one author address of the message's `From:` field (RFC 5322
/// §3.6.2). DMARC, which a signature serves, needs exactly one.
pub(crate) fn author(message: &[u8]) -> Result<Address, AuthorError> {
    let parsed = MessageParser::new()
        .parse_headers(message)
        .ok_or(AuthorError::NoFrom)?;
    let mut froms = parsed.header_values(HeaderName::From);
    let from = froms.next().ok_or(AuthorError::NoFrom)?;
    if froms.next().is_some() {
        return Err(AuthorError::SeveralFrom);
    }
    let list = from.as_address().ok_or(AuthorError::NotOneAddress)?;
    let mut addresses = list.iter();
    let (Some(one), None) = (addresses.next(), addresses.next()) else {
        return Err(AuthorError::NotOneAddress);
    };
    let text = one.address().ok_or(AuthorError::NotOneAddress)?;
    address::parse(text).map_err(|e| AuthorError::BadAddress(e.reason()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Alice <alice@Example.COM>\r\nTo: bob@example.org,\r\n\tcarol@example.org\r\nSubject: hi\r\nX-Mailer: test\r\nDate: Mon, 30 Nov 2026 08:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nFrom: not a header\r\n";

    #[test]
    fn field_names_stop_at_the_body_and_skip_continuations() {
        assert_eq!(
            field_names(MSG),
            ["From", "To", "Subject", "X-Mailer", "Date", "Message-ID"]
        );
    }

    #[test]
    fn present_recommended_fields_are_signed_and_from_once_more() {
        assert_eq!(
            signed_header_names(MSG),
            ["From", "Subject", "Date", "Message-ID", "To", "From"]
        );
    }

    #[test]
    fn absent_fields_are_not_named_and_names_match_case_insensitively() {
        let msg = b"from: a@example.com\r\nLIST-ID: <l.example.com>\r\nreply-to: r@example.com\r\n\r\nbody\r\n";
        assert_eq!(
            signed_header_names(msg),
            ["From", "Reply-To", "List-Id", "From"]
        );
    }

    #[test]
    fn a_message_without_from_still_oversigns_from() {
        assert_eq!(
            signed_header_names(b"Subject: x\r\n\r\n"),
            ["Subject", "From"]
        );
    }

    #[test]
    fn author_is_the_single_from_address_normalised() {
        let a = author(MSG).unwrap();
        assert_eq!(
            (a.local.as_str(), a.domain.as_str()),
            ("alice", "example.com")
        );
        let quoted = b"From: \"Doe, John\" <john@example.com> (work)\r\n\r\n";
        assert_eq!(author(quoted).unwrap().domain, "example.com");
    }

    #[test]
    fn author_refuses_what_dmarc_cannot_align() {
        assert_eq!(
            author(b"To: x@example.com\r\n\r\n"),
            Err(AuthorError::NoFrom)
        );
        assert_eq!(
            author(b"From: a@example.com\r\nFrom: b@example.net\r\n\r\n"),
            Err(AuthorError::SeveralFrom)
        );
        assert_eq!(
            author(b"From: a@example.com, b@example.net\r\n\r\n"),
            Err(AuthorError::NotOneAddress)
        );
        assert!(matches!(
            author(b"From: a@[192.0.2.1]\r\n\r\n"),
            Err(AuthorError::BadAddress(_))
        ));
    }
}
