//! Real SMTP clients: swaks, Python's smtplib and Postfix's smtp-source,
//! run as child processes with their results parsed into typed values.
//! A missing peer fails the test and says how to get it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use serde::{Deserialize, Serialize};

use super::smtp::{Reply, parse_reply_line};

pub const SWAKS: &str = "/usr/bin/swaks";
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

/// Panic unless the program at `path` is installed.
#[track_caller]
pub fn require(path: &str, what: &str) {
    assert!(
        Path::new(path).exists(),
        "{what} not installed ({path} is missing): run tests/run, which installs the test peers"
    );
}

fn run(what: &str, command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{what} could not be run ({command:?}): {e}; run tests/run"))
}

/// One line of a swaks transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// What swaks sent (a command or a line of content).
    Sent(String),
    Reply(Reply),
}

/// A finished swaks run.
#[derive(Debug)]
pub struct Swaks {
    pub success: bool,
    pub transcript: Vec<Line>,
    /// Everything swaks printed, for failure messages.
    pub output: String,
}

impl Swaks {
    /// The reply to the first command sent that starts with `prefix`.
    pub fn reply_to(&self, prefix: &str) -> Option<&Reply> {
        let at = self.transcript.iter().position(
            |l| matches!(l, Line::Sent(s) if s.to_ascii_uppercase().starts_with(prefix)),
        )?;
        self.transcript[at..].iter().find_map(|l| match l {
            Line::Reply(r) => Some(r),
            Line::Sent(_) => None,
        })
    }

    /// The last reply before the first command that starts with `prefix`
    /// (for AUTH LOGIN, whose 334 challenges come before its outcome).
    pub fn reply_before(&self, prefix: &str) -> Option<&Reply> {
        let at = self.transcript.iter().position(
            |l| matches!(l, Line::Sent(s) if s.to_ascii_uppercase().starts_with(prefix)),
        )?;
        self.transcript[..at].iter().rev().find_map(|l| match l {
            Line::Reply(r) => Some(r),
            Line::Sent(_) => None,
        })
    }

    pub fn replies(&self) -> impl Iterator<Item = &Reply> {
        self.transcript.iter().filter_map(|l| match l {
            Line::Reply(r) => Some(r),
            Line::Sent(_) => None,
        })
    }

    /// The id of the message the relay queued, if it did.
    pub fn queue_id(&self) -> Option<String> {
        self.replies().find_map(Reply::queue_id)
    }
}

/// Run swaks against `server` with extra `args`; a 30 s timeout per step.
pub fn swaks(server: SocketAddr, args: &[&str]) -> Swaks {
    require(SWAKS, "swaks");
    let output = run(
        "swaks",
        Command::new(SWAKS)
            .arg("--server")
            .arg(server.ip().to_string())
            .arg("--port")
            .arg(server.port().to_string())
            .args(["--timeout", "30", "--helo", "client.test"])
            .args(args),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Swaks {
        success: output.status.success(),
        transcript: parse_swaks(&text),
        output: text,
    }
}

/// swaks marks server lines `<- ` (`<~ ` under TLS, with `*` for an
/// error) and client lines ` -> ` (` ~> `), then the text.
fn parse_swaks(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for raw in text.lines() {
        let marker = raw.get(..4).unwrap_or_default();
        let rest = raw.get(4..).unwrap_or_default();
        if marker.starts_with("<-") || marker.starts_with("<~") {
            if let Some((code, last, t)) = parse_reply_line(rest) {
                pending.push(t);
                if last {
                    lines.push(Line::Reply(Reply::new(code, &pending)));
                    pending.clear();
                }
            }
        } else if marker == " -> " || marker == " ~> " {
            lines.push(Line::Sent(rest.to_string()));
        }
    }
    lines
}

/// How a Python client uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// None: plain SMTP.
    Plain,
    /// STARTTLS after the first EHLO.
    Starttls,
    /// TLS from the first byte (SMTP_SSL).
    Ssl,
}

/// One session for `smtplib_client.py`.
#[derive(Clone, Debug, Serialize)]
pub struct PySession {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    /// Before STARTTLS, try these AUTH commands (`PLAIN <base64>`, `LOGIN`).
    pub auth_before_tls: Vec<String>,
    /// SASL mechanism (`PLAIN`, `LOGIN`) with alice's account, after TLS.
    pub auth: Option<String>,
    pub user: String,
    pub password: String,
    pub from: String,
    pub to: Vec<String>,
    pub body: String,
}

impl PySession {
    pub fn new(server: SocketAddr, tls: Tls, from: &str, to: &[&str], body: &str) -> PySession {
        PySession {
            host: server.ip().to_string(),
            port: server.port(),
            tls,
            auth_before_tls: Vec::new(),
            auth: None,
            user: super::manifests::ALICE.into(),
            password: super::manifests::PASSWORD.into(),
            from: from.into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            body: body.into(),
        }
    }

    pub fn auth(mut self, mechanism: &str) -> PySession {
        self.auth = Some(mechanism.into());
        self
    }
}

/// A reply as smtplib reports it: the code and the text after it.
#[derive(Debug, Deserialize)]
struct PyReply {
    code: u16,
    text: String,
}

impl From<PyReply> for Reply {
    fn from(r: PyReply) -> Reply {
        let lines: Vec<String> = r.text.lines().map(str::to_string).collect();
        Reply::new(r.code, &lines)
    }
}

/// Deserialize `{"code", "text"}` (or null) from a Python script.
pub fn reply<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Reply>, D::Error> {
    Ok(Option::<PyReply>::deserialize(d)?.map(Reply::from))
}

/// Deserialize a list of `{"code", "text"}` from a Python script.
pub fn replies<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Reply>, D::Error> {
    Ok(Vec::<PyReply>::deserialize(d)?
        .into_iter()
        .map(Reply::from)
        .collect())
}

/// What one smtplib session got.
#[derive(Debug, Deserialize)]
pub struct PyOutcome {
    #[serde(deserialize_with = "reply", default)]
    pub ehlo: Option<Reply>,
    /// EHLO keywords before TLS (smtplib lower-cases them).
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(deserialize_with = "replies", default)]
    pub auth_before_tls: Vec<Reply>,
    #[serde(deserialize_with = "reply", default)]
    pub starttls: Option<Reply>,
    /// EHLO keywords after STARTTLS.
    #[serde(default)]
    pub features_tls: Vec<String>,
    #[serde(deserialize_with = "reply", default)]
    pub auth: Option<Reply>,
    #[serde(deserialize_with = "reply", default)]
    pub mail: Option<Reply>,
    #[serde(deserialize_with = "replies", default)]
    pub rcpt: Vec<Reply>,
    /// The reply after the content (or the refusal of DATA).
    #[serde(deserialize_with = "reply", default)]
    pub data: Option<Reply>,
    /// A Python exception that ended the session early.
    pub error: Option<String>,
}

impl PyOutcome {
    pub fn queue_id(&self) -> Option<String> {
        self.data.as_ref().and_then(Reply::queue_id)
    }
}

const SMTPLIB_CLIENT: &str = include_str!("smtplib_client.py");

/// Run the sessions, one after the other, in one Python process.
pub fn smtplib(sessions: &[PySession]) -> Vec<PyOutcome> {
    let input = serde_json::to_string(sessions).expect("sessions as JSON");
    let out = python(SMTPLIB_CLIENT, &[&input]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("smtplib_client.py printed {out:?}: {e}"))
}

/// Run a Python 3 script with arguments; its standard output.
pub fn python(script: &str, args: &[&str]) -> String {
    let output = run(
        "python3",
        Command::new("python3").arg("-c").arg(script).args(args),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python3 failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Run Postfix's smtp-source with `args` against `server`.
pub fn smtp_source(server: SocketAddr, args: &[&str]) -> Output {
    require(SMTP_SOURCE, "Postfix's smtp-source (package postfix)");
    run(
        "smtp-source",
        Command::new(SMTP_SOURCE).args(args).arg(server.to_string()),
    )
}
