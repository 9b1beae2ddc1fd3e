//! Compaction: live records of mostly dead segments move forward, the old
//! segments go, the state comes along, and a crash at any point of it
//! loses nothing and brings nothing back.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::state::{commit, deferred, delivered};
use super::{message, open_with, segment_files, small_reserve};
use crate::spool::disk::Disk;
use crate::spool::record::{self, HEADER_LEN, MAGIC, Record, kind};
use crate::spool::segment::{self, SEGMENT_HEADER_LEN};
use crate::spool::{Notice, QueueId, Queued, Spool, SpoolOptions};

/// Small segments: a few messages each.
fn small_segments() -> SpoolOptions {
    small_reserve().segment_bytes(1500)
}

/// Every message-bearing record (message, notice, copy) on disk, by id.
fn records_on_disk(dir: &Path) -> BTreeMap<QueueId, usize> {
    let mut found = BTreeMap::new();
    for path in segment_files(dir) {
        let bytes = std::fs::read(&path).unwrap();
        let salt = segment::decode_header(&bytes).unwrap();
        for r in segment::scan(&bytes, SEGMENT_HEADER_LEN, salt).records {
            if let Ok(
                Record::Message { id, .. } | Record::Notice { id, .. } | Record::Copy { id, .. },
            ) = record::parse_record(r.kind, r.payload)
            {
                *found.entry(id).or_default() += 1;
            }
        }
    }
    found
}

fn segment_numbers(dir: &Path) -> BTreeSet<String> {
    segment_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn live_messages_move_forward_with_their_state_and_the_old_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open_with(dir.path(), small_segments()).await;
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(commit(&spool, n).await);
    }
    // Keep three, each with a state of its own kind; the rest go.
    let (kept, gone) = ([ids[1], ids[5], ids[8]], ids.clone());
    spool.record(&kept[0], &[(1, delivered())]).await.unwrap();
    spool.set_held(&kept[1], true).await.unwrap();
    spool
        .record(&kept[2], &[(0, deferred(2, "451 later"))])
        .await
        .unwrap();
    let (envelope, body) = message(99, 100);
    let warning = spool.new_id();
    spool
        .commit_notice(&warning, &envelope, &body, &kept[2], Notice::DelayWarning)
        .await
        .unwrap();
    let first_segments = segment_numbers(dir.path());
    for id in gone.iter().filter(|id| !kept.contains(id)) {
        spool.remove(id).await.unwrap();
    }
    spool.compaction_settled().await;
    let stats = spool.stats();
    assert!(stats.compacted_records >= 3, "{stats:?}");
    let want: Vec<Queued> = spool.queued();
    assert_eq!(want.len(), 4);
    assert!(want[0].recipients[1] == delivered() && want[1].held && want[2].warned);
    let left = segment_numbers(dir.path());
    assert!(
        first_segments.iter().take(3).all(|s| !left.contains(s)),
        "the first segments are gone: {first_segments:?} -> {left:?}"
    );
    for (id, count) in records_on_disk(dir.path()) {
        assert_eq!(count, 1, "{id}: one record on disk");
    }
    drop(spool);

    let (spool, recovery) = open_with(dir.path(), small_segments()).await;
    assert_eq!(recovery.messages, 4);
    assert_eq!(spool.queued(), want);
    for n in [1, 5, 8] {
        assert_eq!(spool.read_body(&ids[n]).await.unwrap(), message(n, 150).1);
    }
}

#[tokio::test]
async fn the_closed_segments_hold_at_most_twice_the_live_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_reserve().segment_bytes(16 << 10);
    let (spool, _) = open_with(dir.path(), options.clone()).await;
    // One in twenty stays, deferred; the rest are delivered.
    for n in 0..600 {
        let id = commit(&spool, n).await;
        if n % 20 == 0 {
            spool
                .record(&id, &[(0, deferred(1, "451 later"))])
                .await
                .unwrap();
        } else {
            spool.remove(&id).await.unwrap();
        }
    }
    spool.compaction_settled().await;
    let stats = spool.stats();
    let files = segment_files(dir.path());
    let active = super::file_len(files.last().unwrap());
    let on_disk: u64 = files.iter().map(|f| super::file_len(f)).sum();
    assert_eq!(on_disk, stats.disk_bytes);
    eprintln!(
        "{} queued, {} live bytes; {} segments, {on_disk} bytes on disk, {active} in the active one",
        stats.messages, stats.live_bytes, stats.segments
    );
    assert!(
        on_disk - active <= 2 * stats.live_bytes,
        "closed segments {} > 2 x live {}",
        on_disk - active,
        stats.live_bytes
    );
    drop(spool);
    let (spool, recovery) = open_with(dir.path(), options).await;
    assert_eq!(recovery.messages, 30);
    assert!(
        spool
            .queued()
            .iter()
            .all(|q| q.recipients[0] == deferred(1, "451 later"))
    );
}

/// A copy's segment must outlive the original's: here the original's
/// segment S is spent but waits (it holds the removal of a message in an
/// older, mostly live segment O), the copied message is removed, and the
/// copy's segment A goes dead. Were A deleted before S, its removal could
/// go too, and the stale original in S would come back.
#[tokio::test]
async fn a_removed_message_stays_removed_while_the_segment_of_its_original_waits() {
    let dir = tempfile::tempdir().unwrap();
    let big = |n: usize| message(n, 6000);
    let commit_sized = |spool: Spool, (envelope, body): (crate::spool::Envelope, Vec<u8>)| async move {
        let id = spool.new_id();
        spool.commit(&id, &envelope, &body).await.unwrap();
        id
    };
    // O: Q and a big P (O fills up and closes). S: X, Y, Z and the
    // removals of Y, Z and Q.
    let (spool, _) = open_with(dir.path(), small_reserve().segment_bytes(3000)).await;
    let q = commit(&spool, 1).await;
    let p = commit_sized(spool.clone(), big(2)).await;
    let x = commit(&spool, 3).await;
    let y = commit(&spool, 4).await;
    let z = commit(&spool, 5).await;
    for id in [y, z, q] {
        spool.remove(&id).await.unwrap();
    }
    assert_eq!(segment_files(dir.path()).len(), 2, "O and S");
    drop(spool);

    // Every batch its own segment from here: X moves to A, its removal
    // goes into R.
    let (spool, _) = open_with(dir.path(), small_reserve().segment_bytes(1)).await;
    spool.compaction_settled().await;
    assert_eq!(spool.stats().compacted_records, 1, "X moved");
    spool.remove(&x).await.unwrap();
    spool.compaction_settled().await;
    drop(spool);

    let (spool, _) = open_with(dir.path(), small_reserve()).await;
    let ids: Vec<QueueId> = spool.queued().iter().map(|q| q.id).collect();
    assert_eq!(ids, [p], "X must not come back");
}

/// What a crash image is: taken after a sync, after the sync of a write
/// that held copies, or in the middle of a write of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    Synced,
    CopySynced,
    TornCopy,
}

struct Image {
    dir: PathBuf,
    /// Ops submitted when it was taken: the queue it shows is the one
    /// after all of them, or all but the last.
    submitted: usize,
    moment: Moment,
}

/// A disk that copies the queue directory aside at every sync and in the
/// middle of every write that carries a compacted copy: each copy is what
/// a crash at that moment would leave.
struct CrashDisk {
    queue_dir: PathBuf,
    images_dir: PathBuf,
    submitted: AtomicUsize,
    copy_written: AtomicBool,
    images: Mutex<Vec<Image>>,
}

impl CrashDisk {
    fn new(spool_dir: &Path, images_dir: &Path) -> CrashDisk {
        CrashDisk {
            queue_dir: spool_dir.join("queue"),
            images_dir: images_dir.to_path_buf(),
            submitted: AtomicUsize::new(0),
            copy_written: AtomicBool::new(false),
            images: Mutex::new(Vec::new()),
        }
    }

    fn image(&self, moment: Moment) {
        let mut images = self.images.lock().unwrap();
        let dir = self.images_dir.join(images.len().to_string());
        let queue = dir.join("queue");
        std::fs::create_dir_all(&queue).unwrap();
        for entry in std::fs::read_dir(&self.queue_dir).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, queue.join(path.file_name().unwrap())).unwrap();
        }
        images.push(Image {
            dir,
            submitted: self.submitted.load(Ordering::SeqCst),
            moment,
        });
    }
}

/// Where the first COPY frame in a batch of frames is.
fn first_copy(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut at = 0;
    while buf.get(at..at + 4) == Some(&MAGIC[..]) && buf.len() >= at + HEADER_LEN {
        let len = u32::from_le_bytes(buf[at + 5..at + 9].try_into().unwrap()) as usize;
        let end = at + HEADER_LEN + len;
        if buf[at + 4] == kind::COPY {
            return Some(at..end);
        }
        at = end;
    }
    None
}

impl Disk for CrashDisk {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(copy) = first_copy(buf) {
            let torn = copy.start + copy.len() / 2;
            file.write_all_at(&buf[..torn], offset)?;
            self.image(Moment::TornCopy);
            self.copy_written.store(true, Ordering::SeqCst);
        }
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()?;
        let moment = if self.copy_written.swap(false, Ordering::SeqCst) {
            Moment::CopySynced
        } else {
            Moment::Synced
        };
        self.image(moment);
        Ok(())
    }
}

/// Fails the sync of the first write that carries a copy.
#[derive(Default)]
struct FailFirstCopy {
    failing: AtomicBool,
    failed: AtomicBool,
}

impl Disk for FailFirstCopy {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        if first_copy(buf).is_some() && !self.failed.swap(true, Ordering::SeqCst) {
            self.failing.store(true, Ordering::SeqCst);
        }
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.failing.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO"));
        }
        file.sync_data()
    }
}

/// A step whose write fails is cut back and the pass given up; the next
/// change starts one over, and it completes.
#[tokio::test]
async fn a_failed_copy_is_cut_back_and_compaction_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FailFirstCopy::default());
    let (spool, _) = open_with(dir.path(), small_segments().disk(disk.clone())).await;
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(commit(&spool, n).await);
    }
    for id in ids.iter().skip(1).take(9) {
        // A removal that shared the failed write fails with it, and is
        // tried again, as delivery would.
        if spool.remove(id).await.is_err() {
            spool.remove(id).await.unwrap();
        }
    }
    spool.compaction_settled().await;
    assert!(disk.failed.load(Ordering::SeqCst), "a copy was written");
    spool.remove(&ids[10]).await.unwrap();
    spool.compaction_settled().await;
    let stats = spool.stats();
    assert!(stats.compacted_records > 0, "{stats:?}");
    let want = spool.queued();
    assert_eq!(want.len(), 2);
    drop(spool);
    let (spool, recovery) = open_with(dir.path(), small_segments()).await;
    assert_eq!((recovery.truncated_bytes, recovery.skipped_records), (0, 0));
    assert_eq!(spool.queued(), want);
    for n in [0, 11] {
        assert_eq!(spool.read_body(&ids[n]).await.unwrap(), message(n, 150).1);
    }
}

/// A run of ops, one at a time, with the queue after each.
struct Run {
    spool: Spool,
    disk: Arc<CrashDisk>,
    after: Vec<Vec<Queued>>,
}

impl Run {
    fn begin(&self) {
        self.disk
            .submitted
            .store(self.after.len(), Ordering::SeqCst);
    }

    fn end(&mut self) {
        self.after.push(self.spool.queued());
    }

    async fn commit(&mut self, n: usize) -> QueueId {
        self.begin();
        let id = commit(&self.spool, n).await;
        self.end();
        id
    }

    async fn remove(&mut self, id: &QueueId) {
        self.begin();
        self.spool.remove(id).await.unwrap();
        self.end();
    }
}

/// Crash at every sync of a run with compaction in it, and in the middle
/// of every write of a copy: recovery finds exactly the queue of the ops
/// acknowledged (or of those plus the one in flight), every body intact,
/// nothing removed comes back, and once the reopened spool settles no
/// message has two records on disk.
#[tokio::test]
async fn a_crash_at_any_point_of_compaction_loses_nothing_and_brings_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let disk = Arc::new(CrashDisk::new(dir.path(), images.path()));
    let (spool, _) = open_with(dir.path(), small_segments().disk(disk.clone())).await;
    let mut run = Run {
        spool,
        disk: disk.clone(),
        after: vec![Vec::new()],
    };
    let mut bodies = BTreeMap::new();
    let mut ids = Vec::new();
    for n in 0..16 {
        let id = run.commit(n).await;
        bodies.insert(id, message(n, 150).1);
        ids.push(id);
    }
    run.begin();
    run.spool
        .record(&ids[2], &[(0, delivered())])
        .await
        .unwrap();
    run.end();
    run.begin();
    run.spool.set_held(&ids[6], true).await.unwrap();
    run.end();
    // Most go: the early segments are mostly dead and get compacted
    // while the removals go on.
    for n in (0..16).filter(|n| ![2, 6, 9, 13].contains(n)) {
        run.remove(&ids[n]).await;
    }
    run.spool.compaction_settled().await;
    // Copied messages change and go too: their copies must win, and their
    // originals must not come back.
    run.begin();
    run.spool
        .record(&ids[9], &[(0, deferred(3, "451 still"))])
        .await
        .unwrap();
    run.end();
    run.remove(&ids[2]).await;
    for n in 16..24 {
        let id = run.commit(n).await;
        bodies.insert(id, message(n, 150).1);
        ids.push(id);
    }
    for id in &ids[16..23] {
        run.remove(id).await;
    }
    run.spool.compaction_settled().await;
    let Run { spool, after, .. } = run;
    let stats = spool.stats();
    assert!(stats.compacted_records > 0, "{stats:?}");
    drop(spool);

    let images = std::mem::take(&mut *disk.images.lock().unwrap());
    let count = |m: Moment| images.iter().filter(|i| i.moment == m).count();
    eprintln!(
        "{} crash images: {} after a copy was synced (before its old segment went), {} with a torn copy, {} after other syncs",
        images.len(),
        count(Moment::CopySynced),
        count(Moment::TornCopy),
        count(Moment::Synced)
    );
    assert!(count(Moment::CopySynced) > 0 && count(Moment::TornCopy) > 0);
    let mut after_deletion = 0;
    let mut copied_segments: BTreeSet<String> = BTreeSet::new();
    for image in &images {
        let spool_dir = &image.dir;
        let names = segment_numbers(spool_dir);
        if copied_segments.iter().any(|s| !names.contains(s)) {
            after_deletion += 1;
        }
        if image.moment == Moment::CopySynced {
            copied_segments.extend(names);
        }
        let (spool, _) = open_with(spool_dir, small_segments()).await;
        let queued = spool.queued();
        let lo = image.submitted.saturating_sub(1);
        assert!(
            after[lo..=image.submitted].contains(&queued),
            "image {} ({:?}, {} ops submitted): {queued:#?}",
            spool_dir.display(),
            image.moment,
            image.submitted
        );
        for q in &queued {
            assert_eq!(spool.read_body(&q.id).await.unwrap(), bodies[&q.id]);
        }
        spool.compaction_settled().await;
        drop(spool);
        let on_disk = records_on_disk(spool_dir);
        for q in &queued {
            assert_eq!(
                on_disk.get(&q.id),
                Some(&1),
                "image {}: {} has one record once settled",
                spool_dir.display(),
                q.id
            );
        }
        let (spool, _) = open_with(spool_dir, small_segments()).await;
        assert_eq!(spool.queued(), queued, "and it stays that way");
    }
    eprintln!("{after_deletion} images taken after an old segment was deleted");
    assert!(after_deletion > 0);
}
