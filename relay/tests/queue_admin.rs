//! `mailrelay queue` on a real spool: messages deferred by a dead MX are
//! listed with their state and last reply, shown, held, released, flushed
//! and deleted by the binary, as an operator would; an unknown id fails
//! with a message. Changes are refused while the relay runs (it holds the
//! spool's lock), and a flushed message is tried again when the relay is
//! back.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::manifests::{REMOTE_SENDER, Setup};
use common::spool::states;
use common::{Env, LOCALHOST, MAILRELAY, wait_for};
use mailrelay::spool::{Queued, RecipientState};

/// Mail to `remote.test` goes to the harness's dead MX (127.0.0.254:25).
const RCPT: &str = "bob@remote.test";

/// What one run of `mailrelay queue` did.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// `mailrelay queue --spool DIR ARGS...`.
fn queue(spool: &Path, args: &[&str]) -> Run {
    let output = Command::new(MAILRELAY)
        .arg("queue")
        .arg("--spool")
        .arg(spool)
        .args(args)
        .output()
        .expect("run mailrelay queue");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `mailrelay queue ARGS...`, which must succeed; its standard output.
#[track_caller]
fn queue_ok(spool: &Path, args: &[&str]) -> String {
    let run = queue(spool, args);
    assert!(run.success, "mailrelay queue {args:?} failed: {run:?}");
    run.stdout
}

/// The message with this id, as the spool has it.
#[track_caller]
fn on_disk(spool: &Path, id: &str) -> Queued {
    states(spool)
        .into_iter()
        .find(|q| q.id.to_string() == id)
        .unwrap_or_else(|| panic!("{id} is not in the spool"))
}

/// The first line of `list` for a message: id, hold mark, size, arrival.
fn list_line<'a>(list: &'a str, id: &str) -> Option<&'a str> {
    list.lines().find(|l| l.starts_with(id))
}

fn attempts(q: &Queued) -> Option<(u32, i64)> {
    match &q.recipients[0] {
        RecipientState::Deferred {
            attempts,
            next_attempt,
            ..
        } => Some((*attempts, *next_attempt)),
        _ => None,
    }
}

#[test]
fn the_queue_command_lists_shows_holds_releases_flushes_and_deletes_deferred_messages() {
    let mut env = Env::start(Setup::default().relay_from_loopback());
    let spool = env.spool_dir();
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let mut smtp = env.smtp_from(LOCALHOST);
            let content = format!("Subject: queue admin {name}\r\n\r\nbody {name}\r\n");
            let sent = smtp.send_mail(REMOTE_SENDER, &[RCPT], &content);
            smtp.quit();
            sent.queue_id().expect("queued")
        })
        .collect();
    let (a, b, c) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    // The default schedule waits minutes after the first failure.
    wait_for(
        Duration::from_secs(60),
        || {
            let queued = states(&spool);
            (queued.len() == 3 && queued.iter().all(|q| attempts(q).is_some())).then_some(())
        },
        || {
            format!(
                "not all deferred: {:#?}\n{}",
                states(&spool),
                env.relay.log_text()
            )
        },
    );

    // While the relay runs it holds the spool: reading works, changes do not.
    assert!(queue_ok(&spool, &["list"]).contains(a));
    let refused = queue(&spool, &["hold", a]);
    assert!(!refused.success, "hold beside a running relay: {refused:?}");
    assert!(
        refused.stderr.contains("in use by a running relay"),
        "{refused:?}"
    );
    assert!(!on_disk(&spool, a).held);

    env.relay.kill();
    let list = queue_ok(&spool, &["list"]);
    for id in &ids {
        let line = list_line(&list, id).unwrap_or_else(|| panic!("{id} not listed:\n{list}"));
        assert!(line.contains(&format!("<{REMOTE_SENDER}>")), "{line}");
        assert!(!line.contains('!'), "not held: {line}");
    }
    let recipients: Vec<&str> = list
        .lines()
        .filter(|l| l.starts_with(&format!("    {RCPT}: ")))
        .collect();
    assert_eq!(recipients.len(), 3, "{list}");
    for line in &recipients {
        assert!(
            line.contains("deferred, 1 attempt, next attempt in"),
            "{line}"
        );
        assert!(
            line.contains("127.0.0.254:25"),
            "the last reply names the dead host: {line}"
        );
    }
    assert!(list.contains("in 3 messages."), "{list}");

    let show = queue_ok(&spool, &["show", a]);
    for want in [
        format!("Queue ID:   {a}"),
        "Status:     queued".into(),
        format!("Sender:     <{REMOTE_SENDER}>"),
        format!("  {RCPT}: deferred, 1 attempt, next attempt "),
        "Headers:".into(),
        "  Subject: queue admin a".into(),
    ] {
        assert!(show.contains(&want), "{want:?} not in:\n{show}");
    }
    assert!(!show.contains("body a"), "show gives headers only:\n{show}");

    let held = queue_ok(&spool, &["hold", a]);
    assert!(held.starts_with(&format!("{a}: on hold")), "{held}");
    assert!(on_disk(&spool, a).held);
    let list = queue_ok(&spool, &["list"]);
    let line = list_line(&list, a).unwrap();
    assert!(line.starts_with(&format!("{a}!")), "marked held: {line}");
    assert!(list.contains("(! = on hold)"), "{list}");
    assert!(
        list_line(&list, b).is_some_and(|l| !l.contains('!')),
        "{list}"
    );

    let released = queue_ok(&spool, &["release", a]);
    assert!(
        released.starts_with(&format!("{a}: released")),
        "{released}"
    );
    assert!(!on_disk(&spool, a).held);
    assert!(!queue_ok(&spool, &["list"]).contains('!'));

    let before = attempts(&on_disk(&spool, b)).unwrap();
    let now = jiff::Timestamp::now().as_second();
    assert!(before.1 > now, "b waits for its next attempt: {before:?}");
    let flushed = queue_ok(&spool, &["flush", b]);
    assert_eq!(flushed, format!("{b}: 1 deferred recipient due now\n"));
    let after = attempts(&on_disk(&spool, b)).unwrap();
    assert_eq!(after.0, 1, "flush is no attempt");
    assert!(
        after.1 <= jiff::Timestamp::now().as_second(),
        "b is due now: {after:?}"
    );
    assert!(
        attempts(&on_disk(&spool, a)).unwrap().1 > now,
        "only b was flushed"
    );

    let deleted = queue_ok(&spool, &["delete", c]);
    assert_eq!(
        deleted,
        format!("{c}: deleted; no bounce was sent to <{REMOTE_SENDER}>\n")
    );
    let list = queue_ok(&spool, &["list"]);
    assert!(list_line(&list, c).is_none(), "{list}");
    assert!(list.contains("in 2 messages."), "{list}");

    // c is gone now: every command that names it fails and says so.
    for command in ["show", "hold", "release", "flush", "delete"] {
        let run = queue(&spool, &[command, c]);
        assert!(!run.success, "{command} of a deleted message: {run:?}");
        assert!(
            run.stderr.contains(&format!("no message {c}")),
            "{command}: {run:?}"
        );
    }
    let garbage = queue(&spool, &["show", "not-a-queue-id"]);
    assert!(!garbage.success, "{garbage:?}");
    assert!(garbage.stderr.contains("not-a-queue-id"), "{garbage:?}");

    // Back up: the flushed message is tried at once, the other waits.
    env.restart();
    wait_for(
        Duration::from_secs(60),
        || {
            let b = states(&spool).into_iter().find(|q| q.id.to_string() == b)?;
            (attempts(&b)?.0 == 2).then_some(())
        },
        || format!("{b} was not tried again\n{}", env.relay.log_text()),
    );
    assert_eq!(attempts(&on_disk(&spool, a)).unwrap().0, 1, "a still waits");
}
