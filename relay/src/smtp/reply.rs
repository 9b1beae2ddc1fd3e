//! SMTP replies as typed values: a code, an enhanced status code (RFC 3463),
//! text lines, and whether the server closes the connection after it.

use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `x.y.z`, written after the code on every line (RFC 2034).
    pub enhanced: Option<&'static str>,
    pub lines: Vec<String>,
    /// Close the connection once the reply is sent.
    pub close: bool,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
            close: false,
        }
    }

    /// A reply without an enhanced code (greeting, EHLO, 334 challenges).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines: vec![text.into()],
            close: false,
        }
    }

    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines,
            close: false,
        }
    }

    pub fn and_close(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The reply on the wire: `250-a`, `250 b` (RFC 5321 §4.2.1). Text is
    /// stripped of CR and LF so no reply can grow extra lines.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        let mut line = String::new();
        for (i, text) in self.lines.iter().enumerate() {
            line.clear();
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(line, "{}{}", self.code, sep);
            if let Some(enhanced) = self.enhanced {
                line.push_str(enhanced);
                line.push(' ');
            }
            line.extend(text.chars().filter(|c| *c != '\r' && *c != '\n'));
            line.push_str("\r\n");
            out.extend_from_slice(line.as_bytes());
        }
        if self.lines.is_empty() {
            let _ = write!(line, "{} \r\n", self.code);
            out.extend_from_slice(line.as_bytes());
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(String::from_utf8_lossy(&self.to_bytes()).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_replies() {
        assert_eq!(
            Reply::new(250, "2.1.0", "Ok").to_bytes(),
            b"250 2.1.0 Ok\r\n"
        );
        let ehlo = Reply::multiline(
            250,
            vec!["mx.example".into(), "PIPELINING".into(), "SIZE 100".into()],
        );
        assert_eq!(
            ehlo.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::new(550, "5.7.1", "blocked\r\n250 2.0.0 ok");
        assert_eq!(r.to_bytes(), b"550 5.7.1 blocked250 2.0.0 ok\r\n");
    }
}
