//! Segment rotation and deletion of spent segments.

use super::{message, open, open_with, segment_files};
use crate::spool::{QueueId, Spool, SpoolOptions};

async fn commit(spool: &Spool, n: usize) -> QueueId {
    let (envelope, body) = message(n, 200);
    let id = spool.new_id();
    spool.commit(&id, &envelope, &body).await.unwrap();
    id
}

fn ids(spool: &Spool) -> Vec<QueueId> {
    spool.messages().into_iter().map(|(id, _)| id).collect()
}

/// Every batch fills a segment, so each record lands in its own; no
/// compaction, so what collection alone does shows.
fn tiny_segments() -> SpoolOptions {
    SpoolOptions::default().segment_bytes(1).compaction(false)
}

#[tokio::test]
async fn segments_roll_over_and_spent_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    let mut ids_committed = Vec::new();
    for n in 0..5 {
        ids_committed.push(commit(&spool, n).await);
    }
    assert_eq!(
        segment_files(dir.path()).len(),
        6,
        "five full and the active one"
    );
    for id in &ids_committed[..4] {
        spool.remove(id).await.unwrap();
    }
    assert_eq!(
        segment_files(dir.path()).len(),
        2,
        "the last message's and the active one"
    );
    assert_eq!(spool.stats().segments, 2);
    drop(spool);

    let (spool, recovery) = open_with(dir.path(), tiny_segments()).await;
    assert_eq!(recovery.messages, 1);
    assert_eq!(ids(&spool), [ids_committed[4]]);
    spool.remove(&ids_committed[4]).await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_removal_is_kept_while_its_message_segment_exists() {
    let dir = tempfile::tempdir().unwrap();
    // Segment 1 holds A and C.
    let (spool, _) = open(dir.path()).await;
    let a = commit(&spool, 1).await;
    let c = commit(&spool, 3).await;
    drop(spool);

    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    let b = commit(&spool, 2).await; // segment 2
    spool.remove(&a).await.unwrap(); // segment 3, pinned by C in segment 1
    spool.remove(&b).await.unwrap(); // segment 4: 2 and 4 are spent
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "seg-0000000000000001.log",
            "seg-0000000000000003.log",
            "seg-0000000000000005.log"
        ]
    );
    drop(spool);

    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    assert_eq!(ids(&spool), [c], "A must not come back");
    spool.remove(&c).await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    drop(spool);
    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 0);
    assert!(ids(&spool).is_empty());
}

#[tokio::test]
async fn a_full_segment_is_not_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    commit(&spool, 1).await;
    drop(spool);
    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    assert_eq!(spool.stats().segments, 2);
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    assert_eq!(spool.stats().segments, 2, "the newest, empty one is reused");
}
