//! `mailrelay queue`: look at and change the queue of a spool directory,
//! like Postfix's `postqueue -p` and `postsuper`.
//!
//! `list` and `show` read a snapshot (no lock, no repairs), so they work
//! beside a running relay. Changes need the spool's lock: on a stopped
//! relay they open the spool as the relay would; while a relay runs they
//! are refused, since only the process holding the lock may append, and
//! that relay's HTTP admin endpoint is the way to change its queue.
//!
//! Formatting is pure (`format_list`, `format_show`); `execute` is the
//! thin layer of I/O around it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::delivery::classify;
use crate::spool::{self, QueueId, Queued, RecipientState, Spool, SpoolError, SpoolSnapshot};

/// What `mailrelay queue` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueCommand {
    /// Every queued message and the state of each recipient.
    List,
    /// One message: envelope, states and header fields.
    Show(QueueId),
    /// Make deferred recipients due now: of one message, or of all.
    Flush(Option<QueueId>),
    /// Remove a message without a bounce.
    Delete(QueueId),
    /// Stop delivery attempts until released.
    Hold(QueueId),
    Release(QueueId),
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "no spool in {}: it has no queue/ directory (give the relay's spool directory, /var/spool/mailrelay in a pod)",
        .dir.display()
    )]
    NoSpool { dir: PathBuf },
    #[error("no message {id} in {}: `mailrelay queue list` shows what is queued", .dir.display())]
    NoSuchMessage { id: QueueId, dir: PathBuf },
    #[error(
        "the spool in {} is in use by a running relay: change its queue through that relay's HTTP endpoint from the same host (`curl -X POST http://127.0.0.1:PORT/queue/ID/hold`, likewise release, flush, delete, and /queue/flush; PORT is its --http port), or stop the relay first; list and show work while it runs",
        .dir.display()
    )]
    InUse { dir: PathBuf },
    #[error("spool in {}: {source}", .dir.display())]
    Spool {
        dir: PathBuf,
        #[source]
        source: SpoolError,
    },
}

/// How much of a body `show` passes on for its header fields.
const HEAD_BYTES: usize = 64 << 10;

/// Run one command against the spool in `spool_dir`; returns what to print.
/// `now_unix` decides what is due (flush) and how far off retries are.
pub async fn execute(
    spool_dir: &Path,
    command: &QueueCommand,
    now_unix: i64,
) -> Result<String, AdminError> {
    // Checked first so that a mistyped path is reported, not created.
    if !spool_dir.join("queue").is_dir() {
        return Err(AdminError::NoSpool {
            dir: spool_dir.to_path_buf(),
        });
    }
    let errors = Errors { dir: spool_dir };
    match command {
        QueueCommand::List => {
            let snapshot = snapshot(spool_dir).await?;
            let queued = snapshot.queued().map_err(|e| errors.spool(e))?;
            Ok(format_list(&queued, now_unix))
        }
        QueueCommand::Show(id) => {
            let snapshot = snapshot(spool_dir).await?;
            let queued = snapshot
                .queued_one(id)
                .map_err(|e| errors.spool(e))?
                .ok_or_else(|| errors.missing(id))?;
            let body = snapshot.read_body(id).map_err(|e| errors.spool(e))?;
            Ok(format_show(&queued, &body[..body.len().min(HEAD_BYTES)]))
        }
        changing => {
            let spool = open(spool_dir).await?;
            change(&spool, changing, now_unix, &errors).await
        }
    }
}

/// Run a command on the open spool of a running relay (its HTTP endpoint).
pub(crate) async fn execute_live(
    spool: &Spool,
    command: &QueueCommand,
    now_unix: i64,
) -> Result<String, AdminError> {
    let errors = Errors { dir: spool.dir() };
    match command {
        QueueCommand::List => Ok(format_list(&spool.queued(), now_unix)),
        QueueCommand::Show(id) => {
            let queued = read_one(spool, id, &errors)?;
            let body = spool.read_body(id).await.map_err(|e| errors.spool(e))?;
            Ok(format_show(&queued, &body[..body.len().min(HEAD_BYTES)]))
        }
        changing => change(spool, changing, now_unix, &errors).await,
    }
}

/// The commands that change the queue.
async fn change(
    spool: &Spool,
    command: &QueueCommand,
    now_unix: i64,
    errors: &Errors<'_>,
) -> Result<String, AdminError> {
    match command {
        QueueCommand::Flush(target) => flush(spool, target.as_ref(), now_unix, errors).await,
        QueueCommand::Delete(id) => {
            let queued = read_one(spool, id, errors)?;
            crate::events::hooks::admin(spool, &queued, "delete", now_unix).await;
            spool.remove(id).await.map_err(|e| errors.spool(e))?;
            Ok(format!(
                "{id}: deleted; no bounce was sent to {}\n",
                sender(&queued.envelope.sender)
            ))
        }
        QueueCommand::Hold(id) => set_held(spool, id, true, now_unix, errors).await,
        QueueCommand::Release(id) => set_held(spool, id, false, now_unix, errors).await,
        QueueCommand::List | QueueCommand::Show(_) => Ok(String::new()),
    }
}

/// Errors that name the spool directory.
struct Errors<'a> {
    dir: &'a Path,
}

impl Errors<'_> {
    fn missing(&self, id: &QueueId) -> AdminError {
        AdminError::NoSuchMessage {
            id: *id,
            dir: self.dir.to_path_buf(),
        }
    }

    fn spool(&self, error: SpoolError) -> AdminError {
        match error {
            SpoolError::NotFound { id } => self.missing(&id),
            SpoolError::Locked { .. } => AdminError::InUse {
                dir: self.dir.to_path_buf(),
            },
            source => AdminError::Spool {
                dir: self.dir.to_path_buf(),
                source,
            },
        }
    }
}

async fn snapshot(dir: &Path) -> Result<SpoolSnapshot, AdminError> {
    let owned = dir.to_path_buf();
    // Reading every segment is blocking I/O.
    let loaded = tokio::task::spawn_blocking(move || spool::open_readonly(&owned))
        .await
        .unwrap_or(Err(SpoolError::Closed));
    loaded.map_err(|e| Errors { dir }.spool(e))
}

/// The spool with its lock: refused while a relay runs on it.
async fn open(dir: &Path) -> Result<Spool, AdminError> {
    let (spool, _) = Spool::open(dir)
        .await
        .map_err(|e| Errors { dir }.spool(e))?;
    Ok(spool)
}

fn read_one(spool: &Spool, id: &QueueId, errors: &Errors<'_>) -> Result<Queued, AdminError> {
    spool
        .queued_one(id)
        .map_err(|e| errors.spool(e))?
        .ok_or_else(|| errors.missing(id))
}

async fn set_held(
    spool: &Spool,
    id: &QueueId,
    held: bool,
    now_unix: i64,
    errors: &Errors<'_>,
) -> Result<String, AdminError> {
    let queued = read_one(spool, id, errors)?;
    let text = match (queued.held, held) {
        (true, true) => format!("{id}: already on hold\n"),
        (false, false) => format!("{id}: not on hold\n"),
        (false, true) => format!(
            "{id}: on hold; no delivery is attempted until `mailrelay queue release {id}`\n"
        ),
        (true, false) => format!("{id}: released; delivery resumes\n"),
    };
    if queued.held != held {
        let action = if held { "hold" } else { "release" };
        crate::events::hooks::admin(spool, &queued, action, now_unix).await;
        spool
            .set_held(id, held)
            .await
            .map_err(|e| errors.spool(e))?;
    }
    Ok(text)
}

/// Make the deferred recipients of one message (or all) due at `now`.
/// Recipients already due are left as they are.
async fn flush(
    spool: &Spool,
    target: Option<&QueueId>,
    now: i64,
    errors: &Errors<'_>,
) -> Result<String, AdminError> {
    let messages = match target {
        Some(id) => vec![read_one(spool, id, errors)?],
        None => spool.queued(),
    };
    let mut text = String::new();
    let mut flushed = 0;
    for queued in &messages {
        let updates = due_now(queued, now);
        if updates.is_empty() {
            continue;
        }
        crate::events::hooks::admin(spool, queued, "flush", now).await;
        spool
            .record(&queued.id, &updates)
            .await
            .map_err(|e| errors.spool(e))?;
        flushed += updates.len();
        let held = if queued.held {
            " (on hold: release it to deliver)"
        } else {
            ""
        };
        let _ = writeln!(
            text,
            "{}: {} deferred recipient{} due now{held}",
            queued.id,
            updates.len(),
            plural(updates.len())
        );
    }
    if flushed == 0 {
        let what = target.map_or("the queue".to_string(), |id| id.to_string());
        let _ = writeln!(text, "{what}: no deferred recipient is waiting");
    }
    Ok(text)
}

/// The updates that make `queued`'s waiting deferred recipients due.
fn due_now(queued: &Queued, now: i64) -> Vec<(usize, RecipientState)> {
    queued
        .recipients
        .iter()
        .enumerate()
        .filter_map(|(index, state)| match state {
            RecipientState::Deferred {
                attempts,
                next_attempt,
                last_reply,
            } if *next_attempt > now => Some((
                index,
                RecipientState::Deferred {
                    attempts: *attempts,
                    next_attempt: now,
                    last_reply: last_reply.clone(),
                },
            )),
            _ => None,
        })
        .collect()
}

/// `postqueue -p` style: one line per message (id, `!` when held, size,
/// arrival, sender), then one per recipient with its state, then a total.
pub(crate) fn format_list(queued: &[Queued], now_unix: i64) -> String {
    if queued.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = String::from(
        "-Queue ID------------- --Size-- --Arrival (UTC)---- -Sender/Recipient-------\n",
    );
    for q in queued {
        let mark = if q.held { '!' } else { ' ' };
        let warned = if q.warned {
            "  (delay warning sent)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{}{mark} {:>8} {} {}{warned}",
            q.id,
            q.envelope.size,
            time(q.envelope.received_at),
            sender(&q.envelope.sender),
        );
        for (address, state) in q.envelope.recipients.iter().zip(&q.recipients) {
            let _ = writeln!(
                out,
                "    {}: {}",
                printable(address),
                describe(state, Some(now_unix))
            );
        }
        out.push('\n');
    }
    let bytes: u64 = queued.iter().map(|q| q.envelope.size).sum();
    let count = queued.len();
    let _ = writeln!(
        out,
        "-- {} Kbytes in {count} message{}.",
        bytes.div_ceil(1024),
        plural(count)
    );
    if queued.iter().any(|q| q.held) {
        out.push_str("(! = on hold)\n");
    }
    out
}

/// Everything the envelope says, each recipient's state, then the header
/// fields found in `body_head` (the start of the body).
pub(crate) fn format_show(q: &Queued, body_head: &[u8]) -> String {
    let envelope = &q.envelope;
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<11} {value}");
    };
    field("Queue ID:", q.id.to_string());
    let status = match (q.held, q.warned) {
        (false, false) => "queued",
        (true, false) => "on hold",
        (false, true) => "queued, delay warning sent",
        (true, true) => "on hold, delay warning sent",
    };
    field("Status:", status.into());
    field("Arrival:", format!("{} UTC", time(envelope.received_at)));
    field("Size:", format!("{} bytes", envelope.size));
    field("Sender:", sender(&envelope.sender));
    field(
        "Client:",
        format!(
            "{} (HELO {})",
            envelope.client_ip,
            printable(&envelope.helo)
        ),
    );
    let auth = envelope.auth.as_deref().map_or("none".into(), printable);
    field("Auth:", auth);
    field("TLS:", if envelope.tls { "yes" } else { "no" }.into());
    let mut body = vec![if envelope.body_8bit {
        "8BITMIME"
    } else {
        "7BIT"
    }];
    if envelope.smtputf8 {
        body.push("SMTPUTF8");
    }
    field("Body:", body.join(", "));
    out.push_str("Recipients:\n");
    for (address, state) in envelope.recipients.iter().zip(&q.recipients) {
        let _ = write!(out, "  {}: {}", printable(address), describe(state, None));
        // By the built-in table: a Relay's own rules apply in its logs and
        // metrics, where its config is at hand.
        match state {
            RecipientState::Deferred { last_reply: r, .. }
            | RecipientState::Failed { reply: r } => {
                let _ = writeln!(out, " (class {})", classify::builtin(r).as_str());
            }
            RecipientState::Pending | RecipientState::Delivered { .. } => out.push('\n'),
        }
    }
    out.push_str("Headers:\n");
    for line in header_lines(body_head) {
        let _ = writeln!(out, "  {}", printable(&String::from_utf8_lossy(line)));
    }
    out
}

/// The header section's lines: up to the first empty line.
fn header_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
}

/// One recipient's state; with `now`, how far off a retry is.
fn describe(state: &RecipientState, now: Option<i64>) -> String {
    match state {
        RecipientState::Pending => "pending".into(),
        RecipientState::Deferred {
            attempts,
            next_attempt,
            last_reply,
        } => {
            let when = match now {
                Some(now) if *next_attempt <= now => "due now".to_string(),
                Some(now) => format!(
                    "next attempt in {} ({} UTC)",
                    span(next_attempt - now),
                    time(*next_attempt)
                ),
                None => format!("next attempt {} UTC", time(*next_attempt)),
            };
            format!(
                "deferred, {attempts} attempt{}, {when}: {}",
                plural(*attempts as usize),
                printable(last_reply)
            )
        }
        RecipientState::Delivered { reply } => format!("delivered: {}", printable(reply)),
        RecipientState::Failed { reply } => format!("failed: {}", printable(reply)),
    }
}

/// `2023-11-14 22:13:20` (UTC); a time jiff cannot hold stays a number.
fn time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(
        |_| format!("@{unix}"),
        |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// A coarse duration: `45s`, `12m`, `3h05m`, `2d04h`.
fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// The null sender is `<>`; others in angle brackets as in SMTP.
fn sender(address: &str) -> String {
    format!("<{}>", printable(address))
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// Addresses, replies and header fields come from the network: control
/// characters are shown escaped so they cannot drive the terminal or
/// forge extra lines of output.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Envelope;

    const NOW: i64 = 1_700_003_600;

    fn id(n: u32) -> QueueId {
        QueueId::from_parts(1_700_000_000_000, n, 0xABC)
    }

    fn envelope(sender: &str, recipients: &[&str], size: u64) -> Envelope {
        Envelope {
            sender: sender.into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            received_at: 1_700_000_000,
            client_ip: [192, 0, 2, 1].into(),
            helo: "client.example.org".into(),
            auth: Some("alice".into()),
            tls: true,
            size,
            smtputf8: false,
            body_8bit: true,
            handed_off: None,
        }
    }

    fn deferred(attempts: u32, next_attempt: i64, reply: &str) -> RecipientState {
        RecipientState::Deferred {
            attempts,
            next_attempt,
            last_reply: reply.into(),
        }
    }

    fn queued() -> Vec<Queued> {
        vec![
            Queued {
                id: id(1),
                envelope: envelope(
                    "alice@example.org",
                    &["bob@example.net", "carol@example.net", "dave@example.net"],
                    1500,
                ),
                recipients: vec![
                    RecipientState::Pending,
                    deferred(2, NOW + 2_820, "451 4.7.1 Try again later"),
                    RecipientState::Delivered {
                        reply: "250 2.0.0 Ok".into(),
                    },
                ],
                held: false,
                warned: false,
            },
            Queued {
                id: id(2),
                envelope: envelope("", &["erin@example.com", "frank@example.com"], 600),
                recipients: vec![
                    RecipientState::Failed {
                        reply: "550 5.1.1 No such user".into(),
                    },
                    deferred(1, NOW - 5, "421 4.3.2 Shutting down"),
                ],
                held: true,
                warned: true,
            },
        ]
    }

    #[test]
    fn the_list_reads_like_postqueue() {
        let got = format_list(&queued(), NOW);
        let want = [
            "-Queue ID------------- --Size-- --Arrival (UTC)---- -Sender/Recipient-------",
            "01HF7YAT00000100002NW      1500 2023-11-14 22:13:20 <alice@example.org>",
            "    bob@example.net: pending",
            "    carol@example.net: deferred, 2 attempts, next attempt in 47m (2023-11-15 00:00:20 UTC): 451 4.7.1 Try again later",
            "    dave@example.net: delivered: 250 2.0.0 Ok",
            "",
            "01HF7YAT00000200002NW!      600 2023-11-14 22:13:20 <>  (delay warning sent)",
            "    erin@example.com: failed: 550 5.1.1 No such user",
            "    frank@example.com: deferred, 1 attempt, due now: 421 4.3.2 Shutting down",
            "",
            "-- 3 Kbytes in 2 messages.",
            "(! = on hold)",
        ];
        assert_eq!(got.lines().collect::<Vec<_>>(), want, "{got}");
    }

    #[test]
    fn an_empty_queue_says_so() {
        assert_eq!(format_list(&[], NOW), "Mail queue is empty\n");
    }

    #[test]
    fn show_gives_the_envelope_the_states_and_the_header_fields_only() {
        let mut q = queued().remove(1);
        q.envelope.smtputf8 = true;
        q.recipients[0] = RecipientState::Failed {
            reply: "550 5.1.1 No\r\n such user".into(),
        };
        let body = b"Subject: hi \x1b[2J\r\nFrom: a@example.org\r\n\tfolded\r\n\r\nsecret body\r\n";
        let got = format_show(&q, body);
        let want = [
            "Queue ID:   01HF7YAT00000200002NW",
            "Status:     on hold, delay warning sent",
            "Arrival:    2023-11-14 22:13:20 UTC",
            "Size:       600 bytes",
            "Sender:     <>",
            "Client:     192.0.2.1 (HELO client.example.org)",
            "Auth:       alice",
            "TLS:        yes",
            "Body:       8BITMIME, SMTPUTF8",
            "Recipients:",
            r"  erin@example.com: failed: 550 5.1.1 No\r\n such user (class InvalidRecipient)",
            "  frank@example.com: deferred, 1 attempt, next attempt 2023-11-14 23:13:15 UTC: 421 4.3.2 Shutting down (class Other)",
            "Headers:",
            r"  Subject: hi \u{1b}[2J",
            "  From: a@example.org",
            "  \tfolded",
        ];
        assert_eq!(got.lines().collect::<Vec<_>>(), want, "{got}");
    }

    #[test]
    fn spans_are_coarse() {
        let cases = [
            (-5, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3_599, "59m"),
            (3_660, "1h01m"),
            (90_000, "1d01h"),
        ];
        for (seconds, want) in cases {
            assert_eq!(span(seconds), want, "{seconds}");
        }
    }

    /// A stopped relay's spool: `a` with a deferred and a delivered
    /// recipient, `b` deferred and held, `c` from the null sender.
    async fn spool_with_messages(dir: &Path) -> [QueueId; 3] {
        let (spool, _) = Spool::open(dir).await.unwrap();
        let body = b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nthe body\r\n";
        let rcpts = ["bob@example.net", "carol@example.net", "dave@example.net"];
        let messages = [
            (id(1), envelope("alice@example.org", &rcpts, 1200)),
            (id(2), envelope("bob@example.org", &["x@example.com"], 900)),
            (
                id(3),
                envelope("", &["y@example.com", "z@example.com"], 500),
            ),
        ];
        for (id, envelope) in &messages {
            spool.commit(id, envelope, body).await.unwrap();
        }
        let greylisted = deferred(1, NOW + 3_600, "451 4.7.1 Greylisted");
        let delivered = RecipientState::Delivered {
            reply: "250 2.0.0 Ok".into(),
        };
        let updates = [(1, greylisted), (2, delivered)];
        spool.record(&id(1), &updates).await.unwrap();
        let later = deferred(4, NOW + 600, "421 4.4.2 Timeout");
        spool.record(&id(2), &[(0, later)]).await.unwrap();
        spool.set_held(&id(2), true).await.unwrap();
        [id(1), id(2), id(3)]
    }

    fn on_disk(dir: &Path, id: &QueueId) -> Option<Queued> {
        spool::open_readonly(dir).unwrap().queued_one(id).unwrap()
    }

    async fn run(dir: &Path, command: QueueCommand) -> Result<String, AdminError> {
        execute(dir, &command, NOW).await
    }

    #[tokio::test]
    async fn list_and_show_read_a_real_spool() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = spool_with_messages(dir.path()).await;
        let list = run(dir.path(), QueueCommand::List).await.unwrap();
        let lines: Vec<&str> = list.lines().collect();
        for want in [
            format!("{a}      1200 2023-11-14 22:13:20 <alice@example.org>"),
            "    bob@example.net: pending".into(),
            "    carol@example.net: deferred, 1 attempt, next attempt in 1h00m (2023-11-15 00:13:20 UTC): 451 4.7.1 Greylisted".into(),
            "    dave@example.net: delivered: 250 2.0.0 Ok".into(),
            format!("{b}!      900 2023-11-14 22:13:20 <bob@example.org>"),
            "    x@example.com: deferred, 4 attempts, next attempt in 10m (2023-11-14 23:23:20 UTC): 421 4.4.2 Timeout".into(),
            format!("{c}       500 2023-11-14 22:13:20 <>"),
            "-- 3 Kbytes in 3 messages.".into(),
        ] {
            assert!(lines.contains(&want.as_str()), "{want:?} not in\n{list}");
        }

        let show = run(dir.path(), QueueCommand::Show(a)).await.unwrap();
        assert!(
            show.starts_with(&format!("Queue ID:   {a}\nStatus:     queued\n")),
            "{show}"
        );
        assert!(
            show.ends_with("Headers:\n  Subject: hello\n  From: alice@example.org\n"),
            "{show}"
        );
    }

    #[tokio::test]
    async fn flush_makes_deferred_recipients_due_now() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = spool_with_messages(dir.path()).await;
        let text = run(dir.path(), QueueCommand::Flush(Some(a))).await.unwrap();
        assert_eq!(text, format!("{a}: 1 deferred recipient due now\n"));
        let after = on_disk(dir.path(), &a).unwrap();
        assert_eq!(
            after.recipients[1],
            deferred(1, NOW, "451 4.7.1 Greylisted")
        );
        assert_eq!(after.recipients[0], RecipientState::Pending);
        assert!(matches!(
            after.recipients[2],
            RecipientState::Delivered { .. }
        ));
        assert_eq!(
            on_disk(dir.path(), &b).unwrap().recipients,
            [deferred(4, NOW + 600, "421 4.4.2 Timeout")],
            "only the one asked for"
        );

        let text = run(dir.path(), QueueCommand::Flush(None)).await.unwrap();
        assert_eq!(
            text,
            format!("{b}: 1 deferred recipient due now (on hold: release it to deliver)\n")
        );
        let after = on_disk(dir.path(), &b).unwrap();
        assert_eq!(after.recipients, [deferred(4, NOW, "421 4.4.2 Timeout")]);
        assert!(after.held, "flush does not release");
        let text = run(dir.path(), QueueCommand::Flush(None)).await.unwrap();
        assert_eq!(text, "the queue: no deferred recipient is waiting\n");
        let text = run(dir.path(), QueueCommand::Flush(Some(c))).await.unwrap();
        assert_eq!(text, format!("{c}: no deferred recipient is waiting\n"));
    }

    #[tokio::test]
    async fn delete_removes_a_message_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = spool_with_messages(dir.path()).await;
        let text = run(dir.path(), QueueCommand::Delete(c)).await.unwrap();
        assert_eq!(text, format!("{c}: deleted; no bounce was sent to <>\n"));
        let left: Vec<QueueId> = spool::open_readonly(dir.path())
            .unwrap()
            .queued()
            .unwrap()
            .into_iter()
            .map(|q| q.id)
            .collect();
        assert_eq!(left, [a, b]);
        let again = run(dir.path(), QueueCommand::Delete(c)).await.unwrap_err();
        assert_eq!(
            again.to_string(),
            format!(
                "no message {c} in {}: `mailrelay queue list` shows what is queued",
                dir.path().display()
            )
        );
    }

    #[tokio::test]
    async fn hold_and_release_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let [a, ..] = spool_with_messages(dir.path()).await;
        let text = run(dir.path(), QueueCommand::Hold(a)).await.unwrap();
        assert!(text.starts_with(&format!("{a}: on hold;")), "{text}");
        assert!(on_disk(dir.path(), &a).unwrap().held);
        let text = run(dir.path(), QueueCommand::Hold(a)).await.unwrap();
        assert_eq!(text, format!("{a}: already on hold\n"));
        let text = run(dir.path(), QueueCommand::Release(a)).await.unwrap();
        assert_eq!(text, format!("{a}: released; delivery resumes\n"));
        assert!(!on_disk(dir.path(), &a).unwrap().held);
        let text = run(dir.path(), QueueCommand::Release(a)).await.unwrap();
        assert_eq!(text, format!("{a}: not on hold\n"));
    }

    #[tokio::test]
    async fn an_unknown_id_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        spool_with_messages(dir.path()).await;
        let unknown = id(99);
        for command in [
            QueueCommand::Show(unknown),
            QueueCommand::Flush(Some(unknown)),
            QueueCommand::Delete(unknown),
            QueueCommand::Hold(unknown),
            QueueCommand::Release(unknown),
        ] {
            let error = run(dir.path(), command.clone()).await.unwrap_err();
            assert!(
                matches!(&error, AdminError::NoSuchMessage { id, .. } if *id == unknown),
                "{command:?}: {error}"
            );
            let text = error.to_string();
            assert!(text.contains(&unknown.to_string()), "{text}");
            assert!(text.contains(&dir.path().display().to_string()), "{text}");
        }
    }

    #[tokio::test]
    async fn beside_a_running_relay_list_works_and_changes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let [a, ..] = spool_with_messages(dir.path()).await;
        let (relay, _) = Spool::open(dir.path()).await.unwrap();
        let list = run(dir.path(), QueueCommand::List).await.unwrap();
        assert!(list.contains(&a.to_string()), "{list}");
        assert!(run(dir.path(), QueueCommand::Show(a)).await.is_ok());
        for command in [
            QueueCommand::Hold(a),
            QueueCommand::Delete(a),
            QueueCommand::Flush(None),
        ] {
            let error = run(dir.path(), command).await.unwrap_err();
            assert!(matches!(error, AdminError::InUse { .. }), "{error}");
            let text = error.to_string();
            assert!(text.contains("in use by a running relay"), "{text}");
            assert!(text.contains("/queue/ID/hold"), "{text}");
            assert!(text.contains(&dir.path().display().to_string()), "{text}");
        }
        assert!(!relay.queued_one(&a).unwrap().unwrap().held);
        assert_eq!(relay.queued().len(), 3);
    }

    #[tokio::test]
    async fn a_directory_without_a_spool_is_reported_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        for command in [QueueCommand::List, QueueCommand::Hold(id(1))] {
            let error = run(&missing, command).await.unwrap_err();
            assert!(matches!(error, AdminError::NoSpool { .. }), "{error}");
            assert!(error.to_string().contains("nope"), "{error}");
        }
        assert!(!missing.exists());
    }
}
