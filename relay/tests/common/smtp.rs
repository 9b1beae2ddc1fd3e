//! A raw SMTP client over a blocking socket, for the tests that need exact
//! bytes on the wire (smuggling, limits, address tricks), and SMTP replies
//! parsed into (code, enhanced code, text).

use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for any one reply before it fails (never asserted
/// as a timing: it only stops a broken relay from hanging the suite).
pub const REPLY_WAIT: Duration = Duration::from_secs(30);

/// An SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The RFC 3463 code (`5.7.1`) when the reply carries one.
    pub enhanced: Option<String>,
    /// The text of each line, without the code and the enhanced code.
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply from its code and the text of its lines (as sent, with the
    /// enhanced code still in front).
    pub fn new(code: u16, texts: &[String]) -> Reply {
        let enhanced = texts
            .first()
            .and_then(|t| t.split_whitespace().next())
            .filter(|w| is_enhanced(w))
            .map(str::to_string);
        let lines = texts
            .iter()
            .map(|t| match &enhanced {
                Some(e) => t
                    .strip_prefix(e.as_str())
                    .map_or(t.as_str(), str::trim_start),
                None => t.as_str(),
            })
            .map(str::to_string)
            .collect();
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Code and enhanced code are exactly these.
    pub fn is(&self, code: u16, enhanced: &str) -> bool {
        self.code == code && self.enhanced.as_deref() == Some(enhanced)
    }

    /// The queue id of `250 2.0.0 Ok: queued as ID`.
    pub fn queue_id(&self) -> Option<String> {
        if self.code != 250 {
            return None;
        }
        let text = self.text();
        let (_, rest) = text.split_once("queued as ")?;
        rest.split_whitespace().next().map(str::to_string)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        write!(f, " {}", self.lines.join(" | "))
    }
}

/// `x.y.z` with a class of 2, 4 or 5 (RFC 3463 §2).
fn is_enhanced(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// One line of a reply: (code, is the last line, text).
pub fn parse_reply_line(line: &str) -> Option<(u16, bool, String)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let code: u16 = line.get(..3)?.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, true, String::new())),
        Some(b' ') => Some((code, true, line[4..].to_string())),
        Some(b'-') => Some((code, false, line[4..].to_string())),
        Some(_) => None,
    }
}

/// Assert a reply's code and enhanced code, saying what was expected.
#[track_caller]
pub fn assert_reply(reply: &Reply, code: u16, enhanced: &str, what: &str) {
    assert!(
        reply.is(code, enhanced),
        "{what}: expected {code} {enhanced}, got {reply}"
    );
}

/// What a mail transaction got.
#[derive(Debug)]
pub struct Sent {
    pub mail: Reply,
    pub rcpt: Vec<Reply>,
    /// The reply to DATA, if it was sent (some recipient was accepted).
    pub data: Option<Reply>,
    /// The reply after the content, if it was sent.
    pub end: Option<Reply>,
}

impl Sent {
    /// The last reply of the transaction.
    pub fn last(&self) -> &Reply {
        self.end
            .as_ref()
            .or(self.data.as_ref())
            .or(self.rcpt.last())
            .unwrap_or(&self.mail)
    }

    pub fn queue_id(&self) -> Option<String> {
        self.end.as_ref().and_then(Reply::queue_id)
    }
}

/// A message's content made ready for DATA: CRLF line endings, dot
/// stuffing (RFC 5321 §4.5.2) and the end-of-data line.
pub fn data_payload(content: &str) -> Vec<u8> {
    let mut out = String::with_capacity(content.len() + 16);
    for line in content.lines() {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out.into_bytes()
}

/// A plain-text SMTP connection.
pub struct Smtp {
    stream: BufReader<TcpStream>,
    peer: SocketAddr,
}

impl Smtp {
    /// Connect from a chosen loopback address (any 127.0.0.0/8 address
    /// works on Linux without setup), so IP rules and per-IP limits see a
    /// client of the test's own.
    pub fn connect_from(source: IpAddr, addr: SocketAddr) -> Smtp {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a tokio runtime for connect");
        let stream = runtime.block_on(async {
            let socket = match source {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .expect("socket");
            socket
                .bind(SocketAddr::new(source, 0))
                .unwrap_or_else(|e| panic!("bind {source}: {e}"));
            socket
                .connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect from {source} to {addr}: {e}"))
        });
        let stream = stream.into_std().expect("a std socket");
        stream.set_nonblocking(false).expect("blocking socket");
        Smtp::from_stream(stream, addr)
    }

    pub fn from_stream(stream: TcpStream, peer: SocketAddr) -> Smtp {
        stream
            .set_read_timeout(Some(REPLY_WAIT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(REPLY_WAIT))
            .expect("write timeout");
        Smtp {
            stream: BufReader::new(stream),
            peer,
        }
    }

    /// Connect, expect the 220 greeting and say EHLO.
    pub fn hello(source: IpAddr, addr: SocketAddr) -> Smtp {
        let mut smtp = Smtp::connect_from(source, addr);
        let greeting = smtp.reply();
        assert_eq!(greeting.code, 220, "greeting from {addr}: {greeting}");
        let ehlo = smtp.command("EHLO client.test");
        assert_eq!(ehlo.code, 250, "EHLO to {addr}: {ehlo}");
        smtp
    }

    /// The next reply, or `None` when the server closed the connection.
    pub fn next_reply(&mut self) -> Option<Reply> {
        let mut texts = Vec::new();
        loop {
            let mut raw = Vec::new();
            match self.stream.read_until(b'\n', &mut raw) {
                Ok(0) => {
                    assert!(
                        texts.is_empty(),
                        "{}: connection closed inside a reply",
                        self.peer
                    );
                    return None;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("{}: no reply ({e})", self.peer),
            }
            let line = String::from_utf8_lossy(&raw);
            let (code, last, text) = parse_reply_line(&line)
                .unwrap_or_else(|| panic!("{}: not an SMTP reply line: {line:?}", self.peer));
            texts.push(text);
            if last {
                return Some(Reply::new(code, &texts));
            }
        }
    }

    #[track_caller]
    pub fn reply(&mut self) -> Reply {
        let peer = self.peer;
        self.next_reply()
            .unwrap_or_else(|| panic!("{peer}: connection closed where a reply was due"))
    }

    /// Every reply until the server closes the connection.
    pub fn replies_until_close(&mut self) -> Vec<Reply> {
        std::iter::from_fn(|| self.next_reply()).collect()
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let peer = self.peer;
        let stream = self.stream.get_mut();
        stream
            .write_all(bytes.as_ref())
            .and_then(|()| stream.flush())
            .unwrap_or_else(|e| panic!("{peer}: send: {e}"));
    }

    /// Send one command line (CRLF added) and read its reply.
    #[track_caller]
    pub fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n"));
        self.reply()
    }

    /// A whole transaction: MAIL, each RCPT, and DATA with `content` when
    /// a recipient was accepted.
    pub fn send_mail(&mut self, from: &str, to: &[&str], content: &str) -> Sent {
        let mail = self.command(&format!("MAIL FROM:<{from}>"));
        if mail.code != 250 {
            return Sent {
                mail,
                rcpt: Vec::new(),
                data: None,
                end: None,
            };
        }
        let rcpt: Vec<Reply> = to
            .iter()
            .map(|r| self.command(&format!("RCPT TO:<{r}>")))
            .collect();
        if !rcpt.iter().any(|r| r.code == 250) {
            self.command("RSET");
            return Sent {
                mail,
                rcpt,
                data: None,
                end: None,
            };
        }
        let data = self.command("DATA");
        if data.code != 354 {
            return Sent {
                mail,
                rcpt,
                data: Some(data),
                end: None,
            };
        }
        self.send(data_payload(content));
        let end = self.reply();
        Sent {
            mail,
            rcpt,
            data: Some(data),
            end: Some(end),
        }
    }

    /// QUIT, expecting 221.
    pub fn quit(mut self) {
        let reply = self.command("QUIT");
        assert_eq!(reply.code, 221, "QUIT: {reply}");
    }
}

/// A client for load tests that reports I/O errors and unexpected replies
/// instead of panicking: a killed or restarted relay ends its session with
/// one, which the test counts.
pub struct Fallible {
    reader: BufReader<TcpStream>,
}

impl Fallible {
    /// Connect, read the greeting and say EHLO `helo`.
    pub fn open(addr: SocketAddr, helo: &str) -> std::io::Result<Fallible> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(REPLY_WAIT))?;
        let mut s = Fallible {
            reader: BufReader::new(stream),
        };
        s.expect(220)?;
        s.command(&format!("EHLO {helo}"), 250)?;
        Ok(s)
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    pub fn reply(&mut self) -> std::io::Result<Reply> {
        let mut texts = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            let (code, last, text) = parse_reply_line(&line).ok_or(ErrorKind::InvalidData)?;
            texts.push(text);
            if last {
                return Ok(Reply::new(code, &texts));
            }
        }
    }

    pub fn expect(&mut self, code: u16) -> std::io::Result<Reply> {
        let reply = self.reply()?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(std::io::Error::other(format!(
                "expected {code}, got {reply}"
            )))
        }
    }

    /// Send `line` (CRLF added) and expect `code`.
    pub fn command(&mut self, line: &str, code: u16) -> std::io::Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.expect(code)
    }
}
