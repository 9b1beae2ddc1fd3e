//! Per-recipient delivery state and holds: durable, replayed in order,
//! refused for what is not queued, and pinning the segments they live in.

use std::time::Duration;

use super::{message, open, open_with, segment_files};
use crate::spool::{QueueId, RecipientState, Spool, SpoolError, SpoolOptions, open_readonly};

/// Commit message `n` (it has `n % 3 + 1` recipients).
pub(super) async fn commit(spool: &Spool, n: usize) -> QueueId {
    let (envelope, body) = message(n, 150);
    let id = spool.new_id();
    spool.commit(&id, &envelope, &body).await.unwrap();
    id
}

pub(super) fn deferred(attempts: u32, reply: &str) -> RecipientState {
    RecipientState::Deferred {
        attempts,
        next_attempt: 1_700_000_000 + i64::from(attempts) * 600,
        last_reply: reply.into(),
    }
}

pub(super) fn delivered() -> RecipientState {
    RecipientState::Delivered {
        reply: "250 2.0.0 Ok: queued as 4F2A0".into(),
    }
}

fn states(spool: &Spool, id: &QueueId) -> Vec<RecipientState> {
    spool.queued_one(id).unwrap().unwrap().recipients
}

fn segment_names(dir: &std::path::Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy();
            name.trim_start_matches("seg-").parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_new_message_has_every_recipient_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let id = commit(&spool, 2).await;
    let queued = spool.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id, id);
    assert_eq!(queued[0].envelope, message(2, 150).0);
    assert_eq!(queued[0].recipients, vec![RecipientState::Pending; 3]);
    assert!(!queued[0].held && !queued[0].warned);
    assert_eq!(spool.queued_one(&spool.new_id()).unwrap(), None);
}

#[tokio::test]
async fn recorded_states_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let id = commit(&spool, 2).await;
    let other = commit(&spool, 1).await;
    spool
        .record(
            &id,
            &[(0, deferred(1, "451 4.7.1 greylisted")), (2, delivered())],
        )
        .await
        .unwrap();
    let want = vec![
        deferred(1, "451 4.7.1 greylisted"),
        RecipientState::Pending,
        delivered(),
    ];
    assert_eq!(states(&spool, &id), want);
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 2);
    assert_eq!(recovery.skipped_records, 0);
    assert_eq!(states(&spool, &id), want);
    assert_eq!(states(&spool, &other), vec![RecipientState::Pending; 2]);
    let snapshot = open_readonly(dir.path()).unwrap();
    assert_eq!(snapshot.queued().unwrap(), spool.queued());
    assert_eq!(
        snapshot.queued_one(&id).unwrap(),
        spool.queued_one(&id).unwrap()
    );
}

#[tokio::test]
async fn a_later_state_for_a_recipient_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let id = commit(&spool, 2).await;
    spool
        .record(
            &id,
            &[(0, deferred(1, "451 first")), (1, deferred(1, "451 b"))],
        )
        .await
        .unwrap();
    spool
        .record(&id, &[(0, deferred(2, "451 second"))])
        .await
        .unwrap();
    spool.record(&id, &[(0, delivered())]).await.unwrap();
    let want = vec![delivered(), deferred(1, "451 b"), RecipientState::Pending];
    assert_eq!(states(&spool, &id), want);
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    assert_eq!(states(&spool, &id), want);
}

#[tokio::test]
async fn hold_and_release_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let id = commit(&spool, 1).await;
    spool.set_held(&id, true).await.unwrap();
    assert!(spool.queued_one(&id).unwrap().unwrap().held);
    drop(spool);

    let (spool, _) = open(dir.path()).await;
    assert!(spool.queued_one(&id).unwrap().unwrap().held);
    spool.set_held(&id, false).await.unwrap();
    assert!(!spool.queued_one(&id).unwrap().unwrap().held);
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    assert!(!spool.queued_one(&id).unwrap().unwrap().held);
}

#[tokio::test]
async fn states_for_what_is_not_queued_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let id = commit(&spool, 1).await; // two recipients
    let unknown = spool.new_id();
    let syncs = spool.stats().syncs;
    assert!(matches!(
        spool.record(&unknown, &[(0, delivered())]).await,
        Err(SpoolError::NotFound { id }) if id == unknown
    ));
    assert!(matches!(
        spool
            .record(&id, &[(0, delivered()), (2, delivered())])
            .await,
        Err(SpoolError::NoSuchRecipient {
            index: 2,
            recipients: 2,
            ..
        })
    ));
    assert!(matches!(
        spool.set_held(&unknown, true).await,
        Err(SpoolError::NotFound { .. })
    ));
    assert_eq!(spool.stats().syncs, syncs, "nothing was written");
    assert_eq!(states(&spool, &id), vec![RecipientState::Pending; 2]);

    spool.remove(&id).await.unwrap();
    assert!(matches!(
        spool.record(&id, &[(0, delivered())]).await,
        Err(SpoolError::NotFound { .. })
    ));
    assert!(matches!(
        spool.set_held(&id, true).await,
        Err(SpoolError::NotFound { .. })
    ));
}

/// Every batch fills a segment, so each record lands in its own.
fn tiny_segments() -> SpoolOptions {
    // No compaction: the segment counts below are what collection alone
    // leaves (compaction has tests of its own).
    SpoolOptions::default().segment_bytes(1).compaction(false)
}

#[tokio::test]
async fn segments_holding_live_state_are_kept_and_outgrown_ones_collected() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    let a = commit(&spool, 2).await; // segment 1
    let b = commit(&spool, 1).await; // 2
    spool
        .record(&a, &[(0, deferred(1, "451 one"))])
        .await
        .unwrap(); // 3
    spool.record(&a, &[(1, delivered())]).await.unwrap(); // 4
    spool.set_held(&a, true).await.unwrap(); // 5
    spool.remove(&b).await.unwrap(); // 6: 2 and 6 are spent
    assert_eq!(segment_names(dir.path()), [1, 3, 4, 5, 7]);
    // Recipient 0's state moves on: segment 3 holds nothing needed.
    spool
        .record(&a, &[(0, deferred(2, "451 two"))])
        .await
        .unwrap(); // 7
    assert_eq!(segment_names(dir.path()), [1, 4, 5, 7, 8]);
    drop(spool);

    let (spool, recovery) = open_with(dir.path(), tiny_segments()).await;
    assert_eq!(recovery.messages, 1);
    let queued = spool.queued_one(&a).unwrap().unwrap();
    assert_eq!(
        queued.recipients,
        [deferred(2, "451 two"), delivered(), RecipientState::Pending]
    );
    assert!(queued.held);
    spool.remove(&a).await.unwrap();
    assert_eq!(segment_names(dir.path()).len(), 1, "only the active one");
    drop(spool);
    let (spool, _) = open(dir.path()).await;
    assert!(spool.queued().is_empty());
}

#[tokio::test]
async fn a_state_record_outliving_its_message_does_not_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    let gone = commit(&spool, 2).await; // segment 1
    drop(spool);
    // Segment 2 (reused while not full): a state of `gone`, and `kept`.
    let (spool, _) = open(dir.path()).await;
    spool.record(&gone, &[(0, delivered())]).await.unwrap();
    let kept = commit(&spool, 1).await;
    drop(spool);

    let (spool, _) = open_with(dir.path(), tiny_segments()).await;
    spool.remove(&gone).await.unwrap(); // segment 3: 1 and 3 are spent
    assert_eq!(segment_names(dir.path()), [2, 4]);
    drop(spool);
    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.skipped_records, 0);
    let ids: Vec<QueueId> = spool.queued().into_iter().map(|q| q.id).collect();
    assert_eq!(ids, [kept]);
}

async fn woken<T>(changed: impl Future<Output = T>) -> bool {
    tokio::time::timeout(Duration::from_secs(5), changed)
        .await
        .is_ok()
}

async fn not_woken(changed: impl Future<Output = ()>) -> bool {
    tokio::time::timeout(Duration::from_millis(50), changed)
        .await
        .is_err()
}

#[tokio::test]
async fn changed_wakes_after_every_successful_change() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    // Each future is made before the change and polled only after it.
    let changed = spool.changed();
    let id = commit(&spool, 1).await;
    assert!(woken(changed).await, "commit");
    let changed = spool.changed();
    spool.record(&id, &[(0, delivered())]).await.unwrap();
    assert!(woken(changed).await, "record");
    let changed = spool.changed();
    spool.set_held(&id, true).await.unwrap();
    assert!(woken(changed).await, "set_held");
    let changed = spool.changed();
    spool.remove(&id).await.unwrap();
    assert!(woken(changed).await, "remove");

    let changed = spool.changed();
    assert!(spool.remove(&id).await.is_err());
    assert!(not_woken(changed).await, "a refused change changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_is_woken_by_a_commit_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let changed = spool.changed();
    let waiter = tokio::spawn(changed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    commit(&spool, 1).await;
    assert!(woken(waiter).await);
}

#[tokio::test]
async fn a_message_committed_with_states_and_hold_has_them_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let (envelope, body) = message(2, 300);
    let id = spool.new_id();
    let carried = vec![(0, delivered()), (2, deferred(4, "451 4.4.1 no answer"))];
    spool
        .commit_with_states(&id, &envelope, &body, &carried, true)
        .await
        .unwrap();
    let want = vec![
        delivered(),
        RecipientState::Pending,
        deferred(4, "451 4.4.1 no answer"),
    ];
    let q = spool.queued_one(&id).unwrap().unwrap();
    assert_eq!((q.recipients.clone(), q.held), (want.clone(), true));
    assert_eq!(spool.read_body(&id).await.unwrap(), body);
    // Without states or hold it is a plain commit.
    let plain = spool.new_id();
    spool
        .commit_with_states(&plain, &envelope, &body, &[], false)
        .await
        .unwrap();
    assert_eq!(states(&spool, &plain), vec![RecipientState::Pending; 3]);
    // A state for a recipient it does not have: nothing is stored.
    let bad = spool.new_id();
    assert!(matches!(
        spool
            .commit_with_states(&bad, &envelope, &body, &[(3, delivered())], false)
            .await,
        Err(SpoolError::NoSuchRecipient { .. })
    ));
    assert_eq!(spool.queued_one(&bad).unwrap(), None);
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!((recovery.messages, recovery.skipped_records), (2, 0));
    let q = spool.queued_one(&id).unwrap().unwrap();
    assert_eq!((q.recipients, q.held), (want, true));
    assert_eq!(spool.read_body(&id).await.unwrap(), body);
    assert_eq!(
        open_readonly(dir.path()).unwrap().queued().unwrap(),
        spool.queued()
    );
}
