//! Spool tests against real files in a temporary directory. Crashes are
//! simulated the way they look on disk afterwards: a file cut short, a
//! flipped byte, a leftover temporary file.

mod collect;
mod commit;
mod compact;
mod faults;
mod notice;
mod recovery;
mod state;
mod throughput;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{Envelope, Recovery, Spool, SpoolError, SpoolOptions};

/// A distinct, fully populated envelope per `n`.
pub(crate) fn envelope(n: usize) -> Envelope {
    Envelope {
        sender: if n % 4 == 3 {
            String::new()
        } else {
            format!("sender{n}@example.org")
        },
        recipients: (0..=n % 3)
            .map(|i| format!("rcpt{i}.{n}@example.net"))
            .collect(),
        received_at: 1_700_000_000 + n as i64,
        client_ip: if n.is_multiple_of(2) {
            IpAddr::from([192, 0, 2, (n % 250) as u8])
        } else {
            "2001:db8::25".parse().unwrap()
        },
        helo: "client.example.org".into(),
        auth: (n.is_multiple_of(2)).then(|| format!("user{n}")),
        tls: n.is_multiple_of(3),
        size: 0,
        smtputf8: n.is_multiple_of(5),
        body_8bit: n.is_multiple_of(7),
        handed_off: None,
    }
}

/// An envelope and a body of about `len` bytes that says which it is.
pub(crate) fn message(n: usize, len: usize) -> (Envelope, Vec<u8>) {
    let mut body = format!("Subject: message {n}\r\n\r\n").into_bytes();
    body.extend((0..len.saturating_sub(body.len())).map(|i| b'a' + (i % 26) as u8));
    body.extend_from_slice(b"\r\n");
    let mut envelope = envelope(n);
    envelope.size = body.len() as u64;
    (envelope, body)
}

/// A small reserve, so each open does not write megabytes.
pub(crate) fn small_reserve() -> SpoolOptions {
    SpoolOptions::default().reserve(4096, std::time::Duration::ZERO)
}

pub(crate) async fn open(dir: &Path) -> (Spool, Recovery) {
    open_with(dir, small_reserve()).await
}

/// Open, waiting out a lock another test's child process may hold for a
/// moment: a fork copies every descriptor, the spool's locked one too,
/// until the child execs (which closes it, O_CLOEXEC). A reopen right
/// after a drop can land in that window and see `Locked`.
pub(crate) async fn open_with(dir: &Path, options: SpoolOptions) -> (Spool, Recovery) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Spool::open_with(dir, options.clone()).await {
            Err(SpoolError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other.unwrap(),
        }
    }
}

/// The segment files, in order.
pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("queue"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}
