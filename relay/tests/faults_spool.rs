//! A damaged spool is repaired without losing track of anything: with 30
//! messages queued (the remote host down) the relay is killed, and its
//! spool damaged three ways — a flipped byte inside one message's record,
//! the last record cut short, and a garbage segment file. The restarted
//! relay moves or copies every unusable byte into `spool/quarantine/`
//! with a log line naming the file, loads the rest and delivers it when
//! the host comes up. Every acknowledged message is either delivered or
//! in the quarantine; only the damaged one is not delivered.
//!
//! Host: 127.0.0.65 (unique in the suite).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::manifests::{REMOTE_SENDER, Setup};
use common::sink::{Answer, Sink, saved};
use common::{Env, LOCALHOST};

const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 65);
const MESSAGES: usize = 30;
const DAMAGED: usize = 10;
const WITHIN: Duration = Duration::from_secs(60);

fn marker(n: usize) -> String {
    format!("spool-marker-{n:04}")
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool.join("queue"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a_damaged_spool_is_quarantined_with_a_log_line_and_the_rest_is_delivered() {
    let mut env = Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec(
                "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
            )
            .dns_records(&format!(
                "mx-host=spool.test,mx.spool.test,10\nhost-record=mx.spool.test,{MX}"
            )),
    );
    let mut smtp = env.smtp_from(LOCALHOST);
    for n in 0..MESSAGES {
        let content = format!("Subject: {0}\r\n\r\nbody of {0}\r\nEND {0}\r\n", marker(n));
        let sent = smtp.send_mail(REMOTE_SENDER, &["bob@spool.test"], &content);
        assert!(sent.queue_id().is_some(), "{}: {sent:?}", marker(n));
    }
    smtp.quit();
    env.relay.kill();

    // The damage.
    let spool_dir = env.spool_dir();
    let files = segments(&spool_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = find(&bytes, format!("body of {}", marker(DAMAGED)).as_bytes())
        .expect("the message is in the segment");
    bytes[at] ^= 0x20;
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&files[0], &bytes).unwrap();
    let last = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let number: u64 = last["seg-".len()..last.len() - ".log".len()]
        .parse()
        .unwrap();
    let garbage_name = format!("seg-{:016}.log", number + 1);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(spool_dir.join("queue").join(&garbage_name), &garbage).unwrap();

    env.restart();
    let quarantine = spool_dir.join("quarantine");
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&quarantine)
        .unwrap_or_else(|e| panic!("no quarantine: {e}\n{}", env.relay.log_text()))
        .map(|e| e.unwrap().path())
        .collect();
    kept.sort();
    let log = env.relay.log_text();
    eprintln!("quarantined: {kept:#?}");
    for file in &kept {
        let name = file.display().to_string();
        assert!(log.contains(&name), "no log line names {name}:\n{log}");
    }
    let moved = quarantine.join(&garbage_name);
    assert_eq!(
        std::fs::read(&moved).unwrap(),
        garbage,
        "the garbage segment is moved whole"
    );
    assert!(!spool_dir.join("queue").join(&garbage_name).exists());
    let in_quarantine: Vec<u8> = kept
        .iter()
        .filter(|p| **p != moved)
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    let damaged_text = format!("body of {}", marker(DAMAGED));
    let mut flipped = damaged_text.clone().into_bytes();
    flipped[0] ^= 0x20;
    assert!(
        find(&in_quarantine, &flipped).is_some(),
        "the damaged record's bytes are in the quarantine"
    );

    // The rest loads and is delivered.
    let sink_root = tempfile::tempdir().unwrap();
    let mail = sink_root.path().join("mx");
    let _mx = Sink::start(MX, &mail, Answer::Accept);
    env.wait_until_spool_is_empty(WITHIN);
    let arrived: BTreeSet<String> = saved(&mail)
        .iter()
        .filter_map(|m| {
            m.lines()
                .find(|l| l.starts_with("END "))
                .map(|l| l[4..].to_string())
        })
        .collect();
    assert!(
        !arrived.contains(&marker(DAMAGED)),
        "the damaged message was delivered"
    );
    let mut accounted = 0;
    for n in (0..MESSAGES).filter(|n| *n != DAMAGED) {
        let delivered = arrived.contains(&marker(n));
        let set_aside = find(&in_quarantine, marker(n).as_bytes()).is_some();
        assert!(
            delivered || set_aside,
            "{} is neither delivered nor in the quarantine\n{}",
            marker(n),
            env.relay.log_text()
        );
        accounted += usize::from(delivered);
    }
    eprintln!(
        "delivered {accounted} of {} undamaged messages; the rest are in the quarantine",
        MESSAGES - 1
    );
    assert!(
        accounted >= MESSAGES - 2,
        "at most the cut record is not delivered"
    );
}
