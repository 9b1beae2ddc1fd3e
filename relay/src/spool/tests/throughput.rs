//! Measurements, not timed tests: run with
//! `cargo test --release -p mailrelay spool -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::faults::FaultDisk;
use super::{message, open_with};
use crate::spool::SpoolOptions;

const SESSIONS: usize = 20;
const PER_SESSION: usize = 1_000;

async fn measure(label: &str, options: SpoolOptions, per_session: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open_with(dir.path(), options).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let spool = spool.clone();
            tokio::spawn(async move {
                for n in 0..per_session {
                    let (envelope, body) = message(s * per_session + n, 1024);
                    spool
                        .commit(&spool.new_id(), &envelope, &body)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let stats = spool.stats();
    let total = SESSIONS * per_session;
    println!(
        "spool throughput ({label}): {total} x 1 KiB from {SESSIONS} tasks in {:.3} s \
         = {:.0} msgs/s; {} fdatasyncs ({:.1} commits per sync), {} segment(s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        stats.syncs,
        stats.commits as f64 / stats.syncs.max(1) as f64,
        stats.segments,
    );
    assert_eq!(stats.commits, total as u64);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly in release mode"]
async fn throughput_of_20_sessions_committing_1_kib_messages() {
    measure("this disk", SpoolOptions::default(), PER_SESSION).await;
}

/// What a congested or networked disk does to group commit: every sync
/// takes 4 ms more than it does here.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly in release mode"]
async fn throughput_of_20_sessions_when_each_sync_takes_4_ms_more() {
    let disk = Arc::new(FaultDisk::with_sync_delay(Duration::from_millis(4)));
    let options = SpoolOptions::default().disk(disk);
    measure("sync + 4 ms", options, PER_SESSION / 4).await;
}
