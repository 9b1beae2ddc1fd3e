//! Envelope addresses: the forms we accept, and the classic relay tricks
//! we refuse outright.
//!
//! A relay decides by the domain after the last `@`. Old mailers also routed
//! by `%` (`user%remote@hosted`), by `!` (`remote!user`), by a quoted local
//! part holding an `@`, and by source routes (`@hosted:user@remote`). Any of
//! these that reached a mailbox server or another MTA could turn a hosted
//! recipient into a relayed one, so none of them is accepted.

use mailrelay_crds::compile::normalize;

/// A checked envelope address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Local part as sent (case kept: it is the mailbox server's to fold).
    pub local: String,
    /// Domain as a lower-case A-label name.
    pub domain: String,
}

impl Address {
    pub(crate) fn as_string(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// Lower-cased form, for comparisons.
    pub(crate) fn normalised(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }
}

/// Why an address is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AddressError {
    /// Not an address at all.
    Syntax(&'static str),
    /// A routing form that could make us relay (see the module doc).
    Routing(&'static str),
}

impl AddressError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Syntax(r) | Self::Routing(r) => r,
        }
    }
}

/// Parse the path given in MAIL FROM or RCPT TO (without the angle
/// brackets). A source route is ignored as RFC 5321 §4.1.1.3 allows for the
/// forward path; we refuse it instead, as its only modern use is abuse.
pub(crate) fn parse(path: &str) -> Result<Address, AddressError> {
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(AddressError::Syntax(
            "control characters are not allowed in an address",
        ));
    }
    if path.starts_with('@') {
        return Err(AddressError::Routing("source routes are not accepted"));
    }
    if path.starts_with('"') {
        return Err(AddressError::Routing("quoted local parts are not accepted"));
    }
    let Some((local, domain)) = path.rsplit_once('@') else {
        if path.contains('!') {
            return Err(AddressError::Routing(
                "UUCP-style (!) addresses are not accepted",
            ));
        }
        return Err(AddressError::Syntax(
            "an address needs a domain (user@example.com)",
        ));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(AddressError::Syntax(
            "the local part must have 1 to 64 octets",
        ));
    }
    if local.contains('@') {
        return Err(AddressError::Routing("more than one @ is not accepted"));
    }
    if local.contains('%') || local.contains('!') {
        return Err(AddressError::Routing(
            "% and ! routing in the local part is not accepted",
        ));
    }
    if local
        .bytes()
        .any(|b| b == b' ' || b == b'"' || b == b'\\' || b == b'<' || b == b'>')
    {
        return Err(AddressError::Syntax(
            "the local part holds a character that needs quoting",
        ));
    }
    if domain.starts_with('[') {
        return Err(AddressError::Routing("address literals are not accepted"));
    }
    if domain.ends_with('.') {
        return Err(AddressError::Routing(
            "a domain with a trailing dot is not accepted",
        ));
    }
    let domain = normalize::domain_name(domain)
        .map_err(|_| AddressError::Syntax("the domain is not a valid domain name"))?;
    Ok(Address {
        local: local.to_string(),
        domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_parse_with_normalised_domains() {
        let a = parse("Alice@Bücher.Example").unwrap();
        assert_eq!(a.local, "Alice");
        assert_eq!(a.domain, "xn--bcher-kva.example");
        assert_eq!(a.normalised(), "alice@xn--bcher-kva.example");
    }

    #[test]
    fn routing_tricks_are_refused() {
        for trick in [
            "user%remote.example@hosted.example",
            "\"user@remote.example\"@hosted.example",
            "@hosted.example:user@remote.example",
            "user@remote.example@hosted.example",
            "remote.example!user",
            "remote!user@hosted.example",
            "user@remote.example.",
            "user@[192.0.2.1]",
        ] {
            assert!(
                matches!(parse(trick), Err(AddressError::Routing(_))),
                "{trick} must be refused"
            );
        }
    }

    #[test]
    fn malformed_addresses_are_syntax_errors() {
        for bad in [
            "",
            "user",
            "@",
            "user@",
            "a b@x.example",
            "a\r\n@x.example",
            "user@exa mple.com",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
