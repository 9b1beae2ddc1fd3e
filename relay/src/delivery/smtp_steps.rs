//! The steps of an SMTP conversation through lettre: each bounded by a
//! timeout, each failure turned into a reply to quote or our own words.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::response::Response;

use super::Target;
use super::wire::StepError;

/// The step a failure happened at, for reasons and logs.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stage {
    Connect,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "greeting/EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

pub(super) fn peer(target: &Target) -> String {
    format!("{} ({})", target.host, target.addr)
}

/// A positive reply as one line: `250 2.0.0 Ok: queued as 3F2A1`.
pub(super) fn response_text(response: &Response) -> String {
    let mut text = u16::from(response.code()).to_string();
    for line in response.message().filter(|l| !l.is_empty()) {
        text.push(' ');
        text.push_str(line);
    }
    text
}

fn io_kind(e: &SmtpError) -> Option<io::ErrorKind> {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}

/// The innermost error's words: lettre wraps causes in layers of
/// "Connection error: " that say nothing.
fn root_cause(e: &SmtpError) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

fn classify(target: &Target, stage: Stage, e: &SmtpError) -> StepError {
    if let Some(code) = e.status() {
        // lettre keeps the reply text (all lines, joined) as the source.
        let message = e.source().map(|s| s.to_string()).unwrap_or_default();
        let code = u16::from(code);
        let text = if message.is_empty() {
            code.to_string()
        } else {
            format!("{code} {message}")
        };
        return StepError::Reply { code, text };
    }
    let peer = peer(target);
    StepError::Lost(match (stage, io_kind(e)) {
        (Stage::Connect, Some(io::ErrorKind::ConnectionRefused)) => {
            format!("connection refused by {peer}")
        }
        (Stage::Connect, Some(io::ErrorKind::TimedOut)) => {
            format!("connection to {peer} timed out")
        }
        (Stage::Connect, _) => format!("cannot connect to {peer}: {}", root_cause(e)),
        (stage, _) => format!("{stage} with {peer} failed: {}", root_cause(e)),
    })
}

/// Run one step within `limit`.
pub(super) async fn run<T>(
    target: &Target,
    stage: Stage,
    limit: Duration,
    step: impl Future<Output = Result<T, SmtpError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(limit, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(target, stage, &e)),
        Err(_) => Err(StepError::Lost(format!(
            "{} did not complete {stage} within {}s",
            peer(target),
            limit.as_secs_f32()
        ))),
    }
}
