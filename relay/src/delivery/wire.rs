//! Byte-level pieces shared by the SMTP and LMTP clients: reading a reply,
//! preparing a message body for DATA, and checking an address before it
//! goes into a command line.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::Outcome;

/// Longest reply line we read. RFC 5321 §4.5.3.1.5 allows 512 octets;
/// real servers exceed it, so leave room (Postfix allows 2048).
const MAX_REPLY_LINE: u64 = 2048;
/// Most lines in one reply (an EHLO reply has one per extension).
const MAX_REPLY_LINES: usize = 100;

/// One server reply: the code and the text of each line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply as one line, for an [`Outcome`](super::Outcome) reason:
    /// `550 5.1.1 <bob@x>: Recipient address rejected`. The lines of a
    /// multiline reply are joined with spaces.
    pub(crate) fn text(&self) -> String {
        let mut text = self.code.to_string();
        for line in self.lines.iter().filter(|l| !l.is_empty()) {
            text.push(' ');
            text.push_str(line);
        }
        text
    }

    /// Whether an EHLO/LHLO reply lists `keyword`: the first word of a
    /// line after the first, compared without case (RFC 5321 §4.1.1.1).
    pub(crate) fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
        })
    }
}

/// Why no reply could be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    LineTooLong,
    #[error("reply longer than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line {0:?}")]
    Malformed(String),
}

/// One reply line: `(code, is_last, text)`. Tolerant where servers are
/// sloppy: a bare LF ending, a code with no text at all (`250`, which
/// RFC 5321 §4.2 allows), a trailing space.
fn parse_line(raw: &[u8]) -> Result<(u16, bool, String), WireError> {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let malformed = || WireError::Malformed(String::from_utf8_lossy(line).into_owned());
    let (digits, rest) = line.split_at_checked(3).ok_or_else(malformed)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return Err(malformed());
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let (last, text) = match rest.split_first() {
        None => (true, &[][..]),
        Some((b' ', text)) => (true, text),
        Some((b'-', text)) => (false, text),
        Some(_) => return Err(malformed()),
    };
    let text = String::from_utf8_lossy(text).trim_end().to_string();
    Ok((code, last, text))
}

/// Read one (possibly multiline) reply. RFC 5321 §4.2.1: every line but
/// the last has a hyphen after the code, the last a space; the code of
/// the last line is the reply's.
pub(crate) async fn read_reply<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Reply, WireError> {
    let mut lines = Vec::new();
    let mut raw = Vec::with_capacity(128);
    loop {
        raw.clear();
        let n = (&mut *reader)
            .take(MAX_REPLY_LINE)
            .read_until(b'\n', &mut raw)
            .await?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        if !raw.ends_with(b"\n") {
            return Err(if n as u64 >= MAX_REPLY_LINE {
                WireError::LineTooLong
            } else {
                WireError::Closed
            });
        }
        let (code, last, text) = parse_line(&raw)?;
        lines.push(text);
        if last {
            return Ok(Reply { code, lines });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(WireError::TooManyLines);
        }
    }
}

/// Line endings made CRLF: a lone LF or a lone CR becomes CRLF, and a
/// non-empty body ends with CRLF. RFC 5321 §2.3.8 allows no other line
/// ending on the wire, and the dot-stuffing of §4.5.2 (ours and lettre's)
/// only recognises a line start after CRLF: a `\n.\n` left alone could end
/// the message early at a lenient server (SMTP smuggling).
pub(crate) fn normalize_crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32 + 2);
    let mut rest = body;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        let (line, tail) = rest.split_at(i);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        rest = match tail {
            [b'\r', b'\n', after @ ..] => after,
            [_, after @ ..] => after,
            [] => tail,
        };
    }
    out.extend_from_slice(rest);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The bytes to send after a 354: the body with CRLF line endings, each
/// line that starts with a dot given a second one (RFC 5321 §4.5.2), and
/// the terminating `.` line.
pub(crate) fn encode_data(body: &[u8]) -> Vec<u8> {
    let body = normalize_crlf(body);
    let mut out = Vec::with_capacity(body.len() + 64);
    // After normalisation every LF ends a CRLF line, so this splits lines.
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Why one step of a conversation failed.
#[derive(Debug)]
pub(crate) enum StepError {
    /// The server answered 4xx/5xx (or something unexpected); the
    /// connection is still in step.
    Reply { code: u16, text: String },
    /// Network error, timeout, unreadable reply: the connection is gone.
    Lost(String),
}

impl StepError {
    pub(crate) fn text(&self) -> &str {
        match self {
            StepError::Reply { text, .. } | StepError::Lost(text) => text,
        }
    }

    pub(crate) fn into_outcome(self) -> Outcome {
        match self {
            StepError::Reply { code, text } => Outcome::from_reply(code, text),
            StepError::Lost(reason) => Outcome::temp(reason),
        }
    }
}

/// Every recipient without an outcome yet gets `outcome`: a
/// transaction-level failure (MAIL, DATA, a lost connection) applies to
/// every recipient of the attempt.
pub(crate) fn fill_missing(outcomes: &mut [Option<Outcome>], outcome: &Outcome) {
    for o in outcomes.iter_mut().filter(|o| o.is_none()) {
        *o = Some(outcome.clone());
    }
}

/// The outcomes of a finished attempt. Every path fills each slot; a gap
/// would be our bug, and retrying is the safe reading of it.
pub(crate) fn finish(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::temp("internal error: recipient not attempted")))
        .collect()
}

/// Why an address cannot go into a MAIL or RCPT command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("address {0:?} cannot be sent: it holds a control character or an angle bracket")]
pub(crate) struct BadAddress(pub String);

/// Refuse what would break out of `MAIL FROM:<...>` / `RCPT TO:<...>`:
/// control characters (a CRLF would inject a command) and angle brackets.
/// The session has validated addresses already; this is the last guard.
pub(crate) fn check_address(addr: &str) -> Result<(), BadAddress> {
    if addr.chars().any(|c| c.is_control() || c == '<' || c == '>') {
        return Err(BadAddress(addr.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn line_endings_become_crlf() {
        let cases: [(&[u8], &[u8]); 9] = [
            (b"", b""),
            (b"a", b"a\r\n"),
            (b"a\r\n", b"a\r\n"),
            (b"a\nb", b"a\r\nb\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n"),
            (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),
            (b"a\n\rb", b"a\r\n\r\nb\r\n"),
            (b"\n\n", b"\r\n\r\n"),
            (b"x\r\n.\n.\r\ny", b"x\r\n.\r\n.\r\ny\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_crlf(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn data_is_dot_stuffed_and_terminated() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"", b".\r\n"),
            (
                b"Subject: x\r\n\r\nbody\r\n",
                b"Subject: x\r\n\r\nbody\r\n.\r\n",
            ),
            (b".starts\r\n", b"..starts\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            // The smuggling shapes: a bare-LF dot line must not end DATA.
            (
                b"a\n.\nMAIL FROM:<x>\n",
                b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n",
            ),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                encode_data(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    proptest! {
        #[test]
        fn encoded_data_ends_only_at_its_end(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..200)) {
            let out = encode_data(&body);
            let wire = [b"\r\n".as_slice(), &out].concat();
            let first_end = wire.windows(5).position(|w| w == b"\r\n.\r\n");
            prop_assert_eq!(first_end, Some(wire.len() - 5));
            // No bare CR or LF survives.
            for (i, b) in out.iter().enumerate() {
                if *b == b'\n' { prop_assert!(i > 0 && out[i - 1] == b'\r'); }
                if *b == b'\r' { prop_assert_eq!(out.get(i + 1), Some(&b'\n')); }
            }
            // Un-stuffing gives back the normalised body.
            let mut unstuffed = Vec::new();
            for line in out[..out.len() - 3].split_inclusive(|&b| b == b'\n') {
                unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            prop_assert_eq!(unstuffed, normalize_crlf(&body));
        }
    }

    #[tokio::test]
    async fn replies_are_read_tolerantly() {
        let cases: [(&[u8], Reply); 5] = [
            (
                b"250 2.0.0 Ok\r\n",
                Reply {
                    code: 250,
                    lines: vec!["2.0.0 Ok".into()],
                },
            ),
            (
                b"250\r\n",
                Reply {
                    code: 250,
                    lines: vec![String::new()],
                },
            ),
            (
                b"550 5.1.1 no \n",
                Reply {
                    code: 550,
                    lines: vec!["5.1.1 no".into()],
                },
            ),
            (
                b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                Reply {
                    code: 250,
                    lines: vec!["mx.test".into(), "PIPELINING".into(), "8BITMIME".into()],
                },
            ),
            (
                b"452-4.2.2 mailbox full\r\n452 4.2.2 try later\r\n",
                Reply {
                    code: 452,
                    lines: vec!["4.2.2 mailbox full".into(), "4.2.2 try later".into()],
                },
            ),
        ];
        for (input, want) in cases {
            let mut r = input;
            assert_eq!(read_reply(&mut r).await.expect("reply"), want);
        }
        let reply = Reply {
            code: 452,
            lines: vec!["4.2.2 mailbox full".into(), "4.2.2 try later".into()],
        };
        assert_eq!(reply.text(), "452 4.2.2 mailbox full 4.2.2 try later");
        assert_eq!(
            Reply {
                code: 250,
                lines: vec![String::new()]
            }
            .text(),
            "250"
        );
    }

    #[tokio::test]
    async fn broken_replies_are_errors() {
        let long = [b"250 ".as_slice(), &[b'x'; 3000], b"\r\n"].concat();
        let many: Vec<u8> = b"250-x\r\n".repeat(150);
        let cases: [(&[u8], &str); 7] = [
            (b"", "closed"),
            (b"250-more to come\r\n", "closed"),
            (b"250 no newline", "closed"),
            (b"hello\r\n", "malformed"),
            (b"2500 x\r\n", "malformed"),
            (&long, "longer than"),
            (&many, "lines"),
        ];
        for (input, want) in cases {
            let mut r = input;
            let err = read_reply(&mut r).await.expect_err("must fail").to_string();
            assert!(
                err.contains(want),
                "{err:?} for {:?}",
                String::from_utf8_lossy(&input[..input.len().min(30)])
            );
        }
    }

    #[test]
    fn extensions_are_matched_by_keyword() {
        let ehlo = Reply {
            code: 250,
            lines: vec![
                "mx.test".into(),
                "8BITMIME".into(),
                "SIZE 1000".into(),
                "auth plain".into(),
            ],
        };
        assert!(ehlo.has_extension("8bitmime"));
        assert!(ehlo.has_extension("SIZE"));
        assert!(ehlo.has_extension("AUTH"));
        assert!(!ehlo.has_extension("mx.test"));
        assert!(!ehlo.has_extension("SMTPUTF8"));
    }

    #[test]
    fn addresses_that_would_inject_are_refused() {
        for ok in ["", "bob@example.test", "\"john doe\"@x.test", "jösé@x.test"] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in ["a@b\r\nRCPT TO:<c@d>", "a@b\n", "a\0@b", "a>@b", "<a@b"] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }
}
