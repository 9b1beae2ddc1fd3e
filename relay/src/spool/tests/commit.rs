use std::sync::Arc;
use std::time::Duration;

use super::faults::FaultDisk;
use super::{message, open, open_with};
use crate::spool::{IdSource, QueueId, SpoolError, SpoolOptions};

#[tokio::test]
async fn a_committed_message_comes_back_identical_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery, Default::default());
    let (envelope, body) = message(1, 300);
    let id = spool.new_id();
    spool.commit(&id, &envelope, &body).await.unwrap();
    assert_eq!(spool.messages(), [(id, envelope.clone())]);
    assert_eq!(spool.read_body(&id).await.unwrap(), body);
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 1);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(recovery.skipped_records, 0);
    assert_eq!(spool.messages(), [(id, envelope.clone())]);
    assert_eq!(
        spool.queued_one(&id).unwrap().map(|q| q.envelope),
        Some(envelope)
    );
    assert_eq!(spool.read_body(&id).await.unwrap(), body);
}

#[tokio::test]
async fn a_large_body_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let (envelope, body) = message(2, 3 << 20);
    let id = spool.new_id();
    spool.commit(&id, &envelope, &body).await.unwrap();
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    assert_eq!(spool.read_body(&id).await.unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_commits_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let (envelope, body) = message(n, 200 + n * 10);
                let id = spool.new_id();
                spool.commit(&id, &envelope, &body).await.unwrap();
                (id, envelope, body)
            })
        })
        .collect();
    let mut committed = Vec::new();
    for task in tasks {
        committed.push(task.await.unwrap());
    }
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 50);
    committed.sort_by_key(|(id, _, _)| *id);
    let listed = spool.messages();
    assert_eq!(listed.len(), 50);
    for ((id, envelope, body), listed) in committed.iter().zip(&listed) {
        assert_eq!(&(*id, envelope.clone()), listed);
        assert_eq!(&spool.read_body(id).await.unwrap(), body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_one_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    // A slow sync, so the batching does not depend on the disk under /tmp.
    let disk = Arc::new(FaultDisk::with_sync_delay(Duration::from_millis(5)));
    let (spool, _) = open_with(dir.path(), SpoolOptions::default().disk(disk)).await;
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let (envelope, body) = message(n, 100);
                spool.commit(&spool.new_id(), &envelope, &body).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = spool.stats();
    assert_eq!(stats.commits, 40);
    assert!(stats.syncs < stats.commits / 4, "{stats:?}");
}

#[tokio::test]
async fn a_removed_message_stays_removed_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (envelope, body) = message(n, 100);
        let id = spool.new_id();
        spool.commit(&id, &envelope, &body).await.unwrap();
        ids.push(id);
    }
    spool.remove(&ids[1]).await.unwrap();
    let listed = |spool: &crate::spool::Spool| -> Vec<QueueId> {
        spool.messages().into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(listed(&spool), [ids[0], ids[2]]);
    assert!(matches!(
        spool.read_body(&ids[1]).await,
        Err(SpoolError::NotFound { .. })
    ));
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 2);
    assert_eq!(listed(&spool), [ids[0], ids[2]]);
}

#[tokio::test]
async fn duplicate_commits_and_unknown_removals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let (envelope, body) = message(1, 50);
    let id = spool.new_id();
    spool.commit(&id, &envelope, &body).await.unwrap();
    assert!(matches!(
        spool.commit(&id, &envelope, &body).await,
        Err(SpoolError::Duplicate { .. })
    ));
    spool.remove(&id).await.unwrap();
    assert!(matches!(
        spool.remove(&id).await,
        Err(SpoolError::NotFound { .. })
    ));
    let never = spool.new_id();
    assert!(matches!(
        spool.remove(&never).await,
        Err(SpoolError::NotFound { .. })
    ));
    assert_eq!(spool.stats().commits, 1);
}

#[tokio::test]
async fn stats_count_messages_bytes_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let mut bytes = 0;
    for n in 0..4 {
        let (envelope, body) = message(n, 1000);
        bytes += body.len() as u64;
        spool
            .commit(&spool.new_id(), &envelope, &body)
            .await
            .unwrap();
    }
    let stats = spool.stats();
    assert_eq!(stats.messages, 4);
    assert_eq!(stats.bytes, bytes);
    assert_eq!(stats.commits, 4);
    assert_eq!(stats.syncs, 4, "sequential commits cannot share a sync");
    assert_eq!(stats.segments, 1);
}

#[tokio::test]
async fn a_second_writer_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    assert!(matches!(
        crate::spool::Spool::open(dir.path()).await,
        Err(SpoolError::Locked { .. })
    ));
    drop(spool);
    open(dir.path()).await;
}

struct Fixed;

impl IdSource for Fixed {
    fn unix_millis(&self) -> u64 {
        1_700_000_000_000
    }
    fn random_u64(&self) -> u64 {
        0xDEAD_BEEF_CAFE
    }
}

#[tokio::test]
async fn new_id_uses_the_injected_clock_and_randomness() {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions::default().id_source(Arc::new(Fixed));
    let (spool, _) = open_with(dir.path(), options).await;
    assert_eq!(spool.new_id().to_string(), "01HF7YAT000000PZEZJQY");
    assert_eq!(spool.new_id().to_string(), "01HF7YAT000001PZEZJQY");
}
