//! A parser for the `Authentication-Results:` field body (RFC 8601 §2.2).
//! The relay needs the authserv-id of incoming fields, to remove those
//! that claim to be ours (§5); tests read back the whole field.

/// A parsed field body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthResultsField {
    pub authserv_id: String,
    pub version: Option<u32>,
    /// Empty for `; none`.
    pub results: Vec<ResInfo>,
}

/// `method=result reason=... ptype.property=value ...`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResInfo {
    /// Lower case, as are `result` and property names.
    pub method: String,
    pub result: String,
    pub reason: Option<String>,
    /// `(ptype, property, value)`, in order.
    pub properties: Vec<(String, String, String)>,
}

impl ResInfo {
    /// The value of `ptype.property`, if present.
    pub fn property(&self, ptype: &str, property: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(t, p, _)| t.eq_ignore_ascii_case(ptype) && p.eq_ignore_ascii_case(property))
            .map(|(_, _, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Authentication-Results: {what} at offset {at}")]
pub struct ParseError {
    pub what: &'static str,
    pub at: usize,
}

/// Parse a field body (the text after `Authentication-Results:`),
/// unfolded or not.
pub fn parse(body: &str) -> Result<AuthResultsField, ParseError> {
    let mut c = Cursor { s: body, at: 0 };
    c.cfws()?;
    let authserv_id = c.value()?;
    c.cfws()?;
    let mut version = None;
    if c.peek().is_some_and(|ch| ch.is_ascii_digit()) {
        let digits = c.take_while(|ch| ch.is_ascii_digit());
        version = Some(digits.parse().map_err(|_| c.err("version too large"))?);
        c.cfws()?;
    }
    let mut results = Vec::new();
    loop {
        c.cfws()?;
        match c.peek() {
            None => break,
            Some(';') => c.bump(),
            Some(_) => return Err(c.err("expected ';'")),
        }
        c.cfws()?;
        let method = c.keyword()?;
        c.cfws()?;
        if method == "none" && results.is_empty() && c.peek().is_none() {
            break;
        }
        if c.peek() == Some('/') {
            c.bump();
            c.cfws()?;
            c.take_while(|ch| ch.is_ascii_digit());
            c.cfws()?;
        }
        c.expect('=')?;
        c.cfws()?;
        let result = c.keyword()?;
        let mut info = ResInfo {
            method,
            result,
            reason: None,
            properties: Vec::new(),
        };
        loop {
            c.cfws()?;
            if matches!(c.peek(), None | Some(';')) {
                break;
            }
            let ptype = c.keyword()?;
            c.cfws()?;
            if ptype == "reason" && c.peek() == Some('=') {
                c.bump();
                c.cfws()?;
                info.reason = Some(c.value()?);
                continue;
            }
            c.expect('.')?;
            c.cfws()?;
            let property = c.keyword()?;
            c.cfws()?;
            c.expect('=')?;
            c.cfws()?;
            let value = c.pvalue()?;
            info.properties.push((ptype, property, value));
        }
        results.push(info);
    }
    Ok(AuthResultsField {
        authserv_id,
        version,
        results,
    })
}

/// Just the authserv-id, lower-cased: what RFC 8601 §5 compares.
pub(crate) fn authserv_id(body: &str) -> Option<String> {
    let mut c = Cursor { s: body, at: 0 };
    c.cfws().ok()?;
    c.value().ok().map(|v| v.to_ascii_lowercase())
}

struct Cursor<'a> {
    s: &'a str,
    at: usize,
}

/// RFC 2045 tspecials: a token is anything else but space and controls.
fn is_token_char(ch: char) -> bool {
    !ch.is_control() && !ch.is_whitespace() && !"()<>@,;:\\\"/[]?=".contains(ch)
}

impl Cursor<'_> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError { what, at: self.at }
    }

    fn peek(&self) -> Option<char> {
        self.s[self.at..].chars().next()
    }

    fn bump(&mut self) {
        if let Some(ch) = self.peek() {
            self.at += ch.len_utf8();
        }
    }

    fn expect(&mut self, want: char) -> Result<(), ParseError> {
        if self.peek() == Some(want) {
            self.bump();
            Ok(())
        } else {
            Err(self.err(match want {
                '=' => "expected '='",
                '.' => "expected '.'",
                _ => "unexpected character",
            }))
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &str {
        let start = self.at;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.s[start..self.at]
    }

    /// Whitespace (folding included) and nested comments (RFC 5322 §3.2.2).
    fn cfws(&mut self) -> Result<(), ParseError> {
        loop {
            self.take_while(char::is_whitespace);
            if self.peek() != Some('(') {
                return Ok(());
            }
            let mut depth = 0u32;
            loop {
                match self.peek() {
                    None => return Err(self.err("unterminated comment")),
                    Some('\\') => {
                        self.bump();
                        self.bump();
                    }
                    Some('(') => {
                        depth += 1;
                        self.bump();
                    }
                    Some(')') => {
                        self.bump();
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Some(_) => self.bump(),
                }
            }
        }
    }

    /// An RFC 5321 Keyword (letters, digits, hyphens), lower-cased.
    fn keyword(&mut self) -> Result<String, ParseError> {
        let k = self.take_while(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
        if k.is_empty() {
            return Err(self.err("expected a keyword"));
        }
        Ok(k.to_ascii_lowercase())
    }

    /// RFC 2045 value: a token or a quoted-string.
    fn value(&mut self) -> Result<String, ParseError> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let t = self.take_while(is_token_char);
        if t.is_empty() {
            return Err(self.err("expected a value"));
        }
        Ok(t.to_string())
    }

    /// A property value: a value, or `[local-part] @ domain`.
    fn pvalue(&mut self) -> Result<String, ParseError> {
        let quoted = self.peek() == Some('"');
        let mut out = if quoted {
            self.quoted()?
        } else {
            String::new()
        };
        // After a quoted local part: `@domain`.
        let rest =
            self.take_while(|ch| !ch.is_whitespace() && !ch.is_control() && ch != ';' && ch != '(');
        if !quoted && rest.is_empty() {
            return Err(self.err("expected a property value"));
        }
        out.push_str(rest);
        Ok(out)
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quoted string")),
                Some('"') => {
                    self.bump();
                    return Ok(out);
                }
                Some('\\') => {
                    self.bump();
                    if let Some(ch) = self.peek() {
                        out.push(ch);
                        self.bump();
                    }
                }
                Some(ch) => {
                    out.push(ch);
                    self.bump();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_typical_field_with_comments_and_folding() {
        let f = parse(
            " mx.example.com (mailrelay);\r\n\tspf=pass (sender ok) smtp.mailfrom=a@example.org;\r\n\tdkim=fail (body hash did not verify) header.d=example.org header.s=sel header.b=AbCd+/12;\r\n\tdmarc=fail (p=reject) header.from=example.org",
        )
        .expect("parses");
        assert_eq!(f.authserv_id, "mx.example.com");
        assert_eq!(f.version, None);
        let methods: Vec<_> = f
            .results
            .iter()
            .map(|r| (r.method.as_str(), r.result.as_str()))
            .collect();
        assert_eq!(
            methods,
            [("spf", "pass"), ("dkim", "fail"), ("dmarc", "fail")]
        );
        assert_eq!(
            f.results[0].property("smtp", "mailfrom"),
            Some("a@example.org")
        );
        assert_eq!(f.results[1].property("header", "b"), Some("AbCd+/12"));
        assert_eq!(f.results[2].property("header", "from"), Some("example.org"));
    }

    #[test]
    fn none_version_quoted_id_and_reason() {
        let f = parse(" \"mx.example.com\" 1; none").expect("parses");
        assert_eq!(
            (f.authserv_id.as_str(), f.version, f.results.len()),
            ("mx.example.com", Some(1), 0)
        );
        let f =
            parse("mx; SPF = Pass reason=\"looks (fine)\" smtp . mailfrom = \"odd user\"@x.org")
                .expect("parses");
        assert_eq!(f.results[0].method, "spf");
        assert_eq!(f.results[0].result, "pass");
        assert_eq!(f.results[0].reason.as_deref(), Some("looks (fine)"));
        assert_eq!(
            f.results[0].property("smtp", "mailfrom"),
            Some("odd user@x.org")
        );
    }

    #[test]
    fn malformed_fields_are_errors_and_the_id_is_still_found() {
        for bad in [
            "",
            "mx; spf",
            "mx; spf=",
            "mx; spf=pass smtp",
            "mx (open; none",
            "mx x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            authserv_id(" (c) MX.Example.COM; garbage"),
            Some("mx.example.com".into())
        );
        assert_eq!(authserv_id("  "), None);
    }
}
