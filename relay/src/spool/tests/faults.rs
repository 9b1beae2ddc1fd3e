//! Disk failures through the writer's `Disk` seam.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{file_len, message, open, open_with, segment_files, small_reserve};
use crate::spool::disk::Disk;
use crate::spool::{QueueId, Spool, SpoolError};

/// A disk that fills up at `quota` bytes per file (writing what fits, as a
/// real full disk does), fails the next `failing_syncs` syncs, and can
/// make every sync slow.
#[derive(Debug)]
pub(crate) struct FaultDisk {
    quota: AtomicU64,
    failing_syncs: AtomicU32,
    sync_delay: Duration,
}

impl FaultDisk {
    pub(crate) fn new() -> FaultDisk {
        FaultDisk {
            quota: AtomicU64::new(u64::MAX),
            failing_syncs: AtomicU32::new(0),
            sync_delay: Duration::ZERO,
        }
    }

    pub(crate) fn with_sync_delay(delay: Duration) -> FaultDisk {
        FaultDisk {
            sync_delay: delay,
            ..FaultDisk::new()
        }
    }

    fn fill_at(&self, bytes: u64) {
        self.quota.store(bytes, Ordering::SeqCst);
    }

    fn fail_syncs(&self, count: u32) {
        self.failing_syncs.store(count, Ordering::SeqCst);
    }
}

impl Disk for FaultDisk {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let quota = self.quota.load(Ordering::SeqCst);
        let room = usize::try_from(quota.saturating_sub(offset)).unwrap_or(usize::MAX);
        if buf.len() <= room {
            return file.write_all_at(buf, offset);
        }
        file.write_all_at(&buf[..room], offset)?;
        Err(io::Error::from(ErrorKind::StorageFull))
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        let failing = self
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(io::Error::other("injected EIO"));
        }
        std::thread::sleep(self.sync_delay);
        file.sync_data()
    }
}

async fn commit(spool: &Spool, n: usize) -> Result<QueueId, SpoolError> {
    let (envelope, body) = message(n, 300);
    let id = spool.new_id();
    spool.commit(&id, &envelope, &body).await.map(|()| id)
}

fn ids(spool: &Spool) -> Vec<QueueId> {
    spool.messages().into_iter().map(|(id, _)| id).collect()
}

async fn open_faulty(dir: &std::path::Path) -> (Spool, Arc<FaultDisk>) {
    let disk = Arc::new(FaultDisk::new());
    let options = small_reserve().disk(disk.clone());
    (open_with(dir, options).await.0, disk)
}

#[tokio::test]
async fn a_full_disk_fails_the_commit_and_the_spool_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, disk) = open_faulty(dir.path()).await;
    let first = commit(&spool, 1).await.unwrap();
    let segment = segment_files(dir.path())[0].clone();
    let good = file_len(&segment);

    disk.fill_at(good + 50);
    let failed = commit(&spool, 2).await;
    assert!(
        matches!(&failed, Err(SpoolError::Full { .. })),
        "{failed:?}"
    );
    assert_eq!(file_len(&segment), good, "the partial record is cut off");
    assert_eq!(ids(&spool), [first]);

    disk.fill_at(u64::MAX);
    let third = commit(&spool, 3).await.unwrap();
    assert_eq!(spool.stats().commits, 2);
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(recovery.skipped_records, 0);
    assert_eq!(ids(&spool), [first, third]);
}

#[tokio::test]
async fn a_failed_sync_fails_the_commit_and_cuts_back() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, disk) = open_faulty(dir.path()).await;
    let first = commit(&spool, 1).await.unwrap();
    let segment = segment_files(dir.path())[0].clone();
    let good = file_len(&segment);

    disk.fail_syncs(1);
    assert!(matches!(
        commit(&spool, 2).await,
        Err(SpoolError::Io {
            op: "fdatasync",
            ..
        })
    ));
    assert_eq!(file_len(&segment), good);
    let third = commit(&spool, 3).await.unwrap();
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(
        recovery,
        crate::spool::Recovery {
            messages: 2,
            ..Default::default()
        }
    );
    assert_eq!(ids(&spool), [first, third]);
}

#[tokio::test]
async fn a_cut_back_that_fails_is_retried_before_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, disk) = open_faulty(dir.path()).await;
    let first = commit(&spool, 1).await.unwrap();
    // The append's sync fails, then so does the sync after cutting back.
    disk.fail_syncs(2);
    assert!(commit(&spool, 2).await.is_err());
    let third = commit(&spool, 3).await.unwrap();
    assert_eq!(ids(&spool), [first, third]);
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(
        recovery.skipped_records + recovery.truncated_bytes as usize,
        0
    );
    assert_eq!(ids(&spool), [first, third]);
}

#[tokio::test]
async fn a_removal_that_hits_a_full_disk_is_written_in_the_room_of_the_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, disk) = open_faulty(dir.path()).await;
    let first = commit(&spool, 1).await.unwrap();
    let segment = segment_files(dir.path())[0].clone();
    disk.fill_at(file_len(&segment) + 3);
    spool.remove(&first).await.unwrap();
    assert!(ids(&spool).is_empty());
    assert!(!spool.has_room().await);
    // The first segment is spent and deleted: its room is free again.
    assert!(!segment.exists());
    drop(spool);
    let (spool, recovery) = open(dir.path()).await;
    assert!(ids(&spool).is_empty());
    assert_eq!(
        recovery.skipped_records + recovery.truncated_bytes as usize,
        0
    );
}

/// An I/O error that is not "no space" fails the removal and changes
/// nothing else: the caller retries.
#[tokio::test]
async fn a_failing_sync_fails_a_removal_which_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, disk) = open_faulty(dir.path()).await;
    let first = commit(&spool, 1).await.unwrap();
    disk.fail_syncs(1);
    assert!(spool.remove(&first).await.is_err());
    assert_eq!(ids(&spool), [first]);
    assert!(spool.has_room().await);
    spool.remove(&first).await.unwrap();
    assert!(ids(&spool).is_empty());
}

/// The whole disk fills up (the quota applies to every file, the reserve
/// too): new mail is refused, delivery's records still go in, and mail is
/// taken again once there is room.
#[tokio::test]
async fn a_full_disk_refuses_new_mail_keeps_delivery_records_going_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, disk) = open_faulty(dir.path()).await;
    let first = commit(&spool, 1).await.unwrap();
    let second = commit(&spool, 2).await.unwrap();
    let segment = segment_files(dir.path())[0].clone();
    assert!(spool.has_room().await);

    // Room for a few hundred bytes in any file: less than a message, and
    // less than the 4 KiB reserve, which therefore cannot come back.
    disk.fill_at(file_len(&segment).min(400));
    let refused = commit(&spool, 3).await;
    assert!(
        matches!(refused, Err(SpoolError::Full { .. })),
        "{refused:?}"
    );
    assert!(!spool.has_room().await);
    assert!(matches!(
        commit(&spool, 4).await,
        Err(SpoolError::Full { .. })
    ));
    assert!(
        !dir.path().join("reserve").exists(),
        "the reserve was given up"
    );
    assert_eq!(
        segment_files(dir.path()).len(),
        2,
        "a new segment took over"
    );

    // Delivery goes on: a state and a removal fit in the new segment.
    let deferred = crate::spool::RecipientState::Deferred {
        attempts: 1,
        next_attempt: 0,
        last_reply: "451 later".into(),
    };
    spool
        .record(&second, &[(0, deferred.clone())])
        .await
        .unwrap();
    spool.remove(&first).await.unwrap();
    assert_eq!(ids(&spool), [second]);

    // Space comes back: the reserve fits again, and so does mail.
    disk.fill_at(u64::MAX);
    assert!(spool.has_room().await);
    assert_eq!(file_len(&dir.path().join("reserve")), 4096);
    let fifth = commit(&spool, 5).await.unwrap();
    drop(spool);

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.skipped_records, 0);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(ids(&spool), [second, fifth]);
    assert_eq!(
        spool.queued_one(&second).unwrap().unwrap().recipients[0],
        deferred
    );
}

/// A message that does not fit also releases the reserve; with the room
/// it gave, the next probe finds the reserve fits again and mail resumes.
#[tokio::test]
async fn one_message_too_big_for_the_room_left_is_refused_and_mail_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, disk) = open_faulty(dir.path()).await;
    let first = commit(&spool, 1).await.unwrap();
    let segment = segment_files(dir.path())[0].clone();
    disk.fill_at(file_len(&segment) + 50);
    assert!(matches!(
        commit(&spool, 2).await,
        Err(SpoolError::Full { .. })
    ));
    disk.fill_at(u64::MAX);
    assert!(spool.has_room().await);
    let third = commit(&spool, 3).await.unwrap();
    assert_eq!(ids(&spool), [first, third]);
}

/// A spool opened on a disk without room for its reserve refuses new mail
/// from the start, and takes it once there is room.
#[tokio::test]
async fn a_spool_opened_on_a_full_disk_refuses_mail_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultDisk::new());
    disk.fill_at(100);
    let (spool, _) = open_with(dir.path(), small_reserve().disk(disk.clone())).await;
    assert!(!spool.has_room().await);
    assert!(matches!(
        commit(&spool, 1).await,
        Err(SpoolError::Full { .. })
    ));
    disk.fill_at(u64::MAX);
    assert!(spool.has_room().await);
    let id = commit(&spool, 2).await.unwrap();
    assert_eq!(ids(&spool), [id]);
}
