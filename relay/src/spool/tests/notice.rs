//! Notices (DSNs the relay generates) land together with their effect on
//! the message they are about, or not at all.

use super::state::{commit, deferred, delivered};
use super::{file_len, message, open, open_with, segment_files};
use crate::spool::{Envelope, Notice, QueueId, RecipientState, Spool, SpoolError, SpoolOptions};

/// A DSN: from the null sender to the original sender.
fn dsn(n: usize) -> (Envelope, Vec<u8>) {
    let (mut envelope, body) = message(n, 180);
    envelope.sender = String::new();
    envelope.recipients = vec![format!("sender{n}@example.org")];
    (envelope, body)
}

async fn notice(spool: &Spool, about: &QueueId, notice: Notice) -> Result<QueueId, SpoolError> {
    let (envelope, body) = dsn(7);
    let id = spool.new_id();
    spool
        .commit_notice(&id, &envelope, &body, about, notice)
        .await
        .map(|()| id)
}

fn ids(spool: &Spool) -> Vec<QueueId> {
    spool.queued().into_iter().map(|q| q.id).collect()
}

#[tokio::test]
async fn a_bounce_replaces_the_original_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let original = commit(&spool, 2).await;
    let other = commit(&spool, 1).await;
    let bounce = notice(&spool, &original, Notice::Bounce).await.unwrap();
    assert_eq!(ids(&spool), [other, bounce]);
    assert_eq!(spool.stats().commits, 3);
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 2);
    assert_eq!(ids(&spool), [other, bounce]);
    let queued = spool.queued_one(&bounce).unwrap().unwrap();
    assert_eq!(queued.envelope, dsn(7).0);
    assert_eq!(queued.recipients, [RecipientState::Pending]);
    assert_eq!(spool.read_body(&bounce).await.unwrap(), dsn(7).1);
}

#[tokio::test]
async fn a_delay_warning_marks_the_original_warned() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let original = commit(&spool, 1).await;
    spool
        .record(&original, &[(1, deferred(3, "451 later"))])
        .await
        .unwrap();
    let warning = notice(&spool, &original, Notice::DelayWarning)
        .await
        .unwrap();
    let want = [RecipientState::Pending, deferred(3, "451 later")];
    let check = |spool: &Spool| {
        let queued = spool.queued_one(&original).unwrap().unwrap();
        assert!(queued.warned);
        assert_eq!(queued.recipients, want);
        assert_eq!(ids(spool), [original, warning]);
    };
    check(&spool);
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    check(&spool);
}

#[tokio::test]
async fn a_notice_about_a_message_that_is_not_queued_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let original = commit(&spool, 1).await;
    let segment = segment_files(dir.path())[0].clone();
    let len = file_len(&segment);
    let unknown = spool.new_id();
    for kind in [Notice::Bounce, Notice::DelayWarning] {
        assert!(matches!(
            notice(&spool, &unknown, kind).await,
            Err(SpoolError::NotFound { id }) if id == unknown
        ));
    }
    assert_eq!(file_len(&segment), len);
    assert_eq!(ids(&spool), [original]);

    // A bounce can happen once: the second finds the original gone.
    let bounce = notice(&spool, &original, Notice::Bounce).await.unwrap();
    assert!(notice(&spool, &original, Notice::Bounce).await.is_err());
    assert!(
        notice(&spool, &original, Notice::DelayWarning)
            .await
            .is_err()
    );
    assert_eq!(ids(&spool), [bounce]);
    assert_eq!(spool.stats().commits, 2);
}

#[tokio::test]
async fn a_notice_with_a_taken_id_leaves_the_original_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let original = commit(&spool, 1).await;
    let taken = commit(&spool, 2).await;
    let (envelope, body) = dsn(1);
    assert!(matches!(
        spool
            .commit_notice(&taken, &envelope, &body, &original, Notice::Bounce)
            .await,
        Err(SpoolError::Duplicate { .. })
    ));
    assert_eq!(ids(&spool), [original, taken]);
}

fn tiny_segments() -> SpoolOptions {
    // No compaction: the segment counts below are what collection alone
    // leaves (compaction has tests of its own).
    SpoolOptions::default().segment_bytes(1).compaction(false)
}

#[tokio::test]
async fn a_delivered_bounce_still_keeps_its_original_removed() {
    let dir = tempfile::tempdir().unwrap();
    // Segment 1: the original and a message that stays, pinning it.
    let (spool, _) = open(dir.path()).await;
    let original = commit(&spool, 1).await;
    let stays = commit(&spool, 2).await;
    drop(spool);

    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    let bounce = notice(&spool, &original, Notice::Bounce).await.unwrap(); // 2
    spool.remove(&bounce).await.unwrap(); // 3
    assert_eq!(segment_files(dir.path()).len(), 4, "1, 2 and 3 are needed");
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    assert_eq!(ids(&spool), [stays], "the original must not come back");
}

#[tokio::test]
async fn a_delivered_delay_warning_still_marks_its_original() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    let original = commit(&spool, 1).await; // 1
    let warning = notice(&spool, &original, Notice::DelayWarning)
        .await
        .unwrap(); // 2
    spool.remove(&warning).await.unwrap(); // 3
    assert_eq!(segment_files(dir.path()).len(), 4);
    drop(spool);
    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    assert!(spool.queued_one(&original).unwrap().unwrap().warned);
    assert_eq!(ids(&spool), [original]);
    spool.remove(&original).await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn every_cut_inside_a_state_record_leaves_all_states_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let id = commit(&spool, 2).await;
    let segment = segment_files(dir.path())[0].clone();
    let start = file_len(&segment);
    let updates = [(0, deferred(1, "451 4.7.1 try again")), (2, delivered())];
    spool.record(&id, &updates).await.unwrap();
    drop(spool);
    let whole = std::fs::read(&segment).unwrap();
    let start = usize::try_from(start).unwrap();
    let before = vec![RecipientState::Pending; 3];
    let after = vec![updates[0].1.clone(), RecipientState::Pending, delivered()];

    for cut in start..=whole.len() {
        std::fs::write(&segment, &whole[..cut]).unwrap();
        let (spool, recovery) = open(dir.path()).await;
        let torn = if cut == whole.len() { 0 } else { cut - start };
        assert_eq!(recovery.truncated_bytes, torn as u64, "cut at {cut}");
        let want = if cut == whole.len() { &after } else { &before };
        assert_eq!(
            &spool.queued_one(&id).unwrap().unwrap().recipients,
            want,
            "cut at {cut}"
        );
    }
}

#[tokio::test]
async fn every_cut_inside_a_notice_leaves_both_effects_or_neither() {
    for kind in [Notice::Bounce, Notice::DelayWarning] {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path()).await;
        let original = commit(&spool, 1).await;
        let segment = segment_files(dir.path())[0].clone();
        let start = usize::try_from(file_len(&segment)).unwrap();
        let notice_id = notice(&spool, &original, kind).await.unwrap();
        drop(spool);
        let whole = std::fs::read(&segment).unwrap();

        for cut in start..=whole.len() {
            std::fs::write(&segment, &whole[..cut]).unwrap();
            let (spool, _) = open(dir.path()).await;
            let (ids, warned) = (
                ids(&spool),
                spool.queued_one(&original).unwrap().map(|q| q.warned),
            );
            let whole_notice = cut == whole.len();
            match (kind, whole_notice) {
                (_, false) => {
                    assert_eq!(ids, [original], "{kind:?} cut at {cut}");
                    assert_eq!(warned, Some(false), "{kind:?} cut at {cut}");
                }
                (Notice::Bounce, true) => assert_eq!(ids, [notice_id]),
                (Notice::DelayWarning, true) => {
                    assert_eq!(ids, [original, notice_id]);
                    assert_eq!(warned, Some(true));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bounces_of_one_message_produce_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    // A slow sync, so the racers queue up into shared batches.
    let disk = std::sync::Arc::new(super::faults::FaultDisk::with_sync_delay(
        std::time::Duration::from_millis(5),
    ));
    let (spool, _) = open_with(dir.path(), SpoolOptions::default().disk(disk)).await;
    let original = commit(&spool, 1).await;
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let spool = spool.clone();
            tokio::spawn(async move {
                if n == 0 {
                    spool.remove(&original).await.map(|()| None)
                } else {
                    notice(&spool, &original, Notice::Bounce).await.map(Some)
                }
            })
        })
        .collect();
    let mut won = Vec::new();
    for racer in racers {
        if let Ok(outcome) = racer.await.unwrap() {
            won.push(outcome);
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let expected: Vec<QueueId> = won.into_iter().flatten().collect();
    assert_eq!(ids(&spool), expected);
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    assert_eq!(ids(&spool), expected);
}
