//! The durable spool: a message is acknowledged only once its envelope
//! and body are on disk, and a crash never loses or half-loads one.

mod admit;
mod compact;
mod disk;
mod envelope;
mod error;
mod id;
mod index;
mod ledger;
mod linger;
mod load;
mod op;
pub(crate) use op::{CarriedLines, StepLog};
mod queued;
mod record;
mod recover;
mod reserve;
mod segment;
mod snapshot;
mod state;
mod tally;
mod types;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use self::disk::{Disk, OsDisk};
use self::index::Meta;
use self::op::{Op, Request};
use self::recover::{Access, Loaded};
use self::reserve::Reserve;
use self::segment::SEGMENT_HEADER_LEN;
use self::state::{SegmentHandle, Shared, State};
use self::writer::{Active, Writer};

pub use self::envelope::{Envelope, HandedOff};
pub use self::error::SpoolError;
pub use self::id::{
    IdGenerator, IdSource, ParseQueueIdError, QUEUE_ID_LEN, QueueId, SystemIdSource,
};
pub(crate) use self::index::{Glance, Parked};
pub use self::recover::{SegmentCheck, check_segment};
pub use self::reserve::{DEFAULT_RESERVE_BYTES, DEFAULT_RESERVE_RETRY};
pub use self::snapshot::{SpoolSnapshot, open_readonly};
pub use self::tally::Tally;
pub(crate) use self::types::SpoolStats;
pub use self::types::{Notice, Queued, RecipientState, Recovery};

/// Segments roll over past this size.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// How to open a spool; `Default` is what production uses.
#[derive(Clone)]
pub(crate) struct SpoolOptions {
    segment_bytes: u64,
    ids: Arc<dyn IdSource>,
    disk: Arc<dyn Disk>,
    reserve_bytes: u64,
    reserve_retry: Duration,
    compaction: bool,
}

impl Default for SpoolOptions {
    fn default() -> SpoolOptions {
        SpoolOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            ids: Arc::new(SystemIdSource),
            disk: Arc::new(OsDisk),
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            reserve_retry: DEFAULT_RESERVE_RETRY,
            compaction: true,
        }
    }
}

impl SpoolOptions {
    /// Start a new segment once the current one reaches this size.
    /// Smaller segments are compacted (and deleted) sooner, in smaller
    /// pieces; larger ones mean fewer files.
    pub(crate) fn segment_bytes(mut self, bytes: u64) -> SpoolOptions {
        self.segment_bytes = bytes;
        self
    }

    /// Whether live records of mostly dead segments are copied forward
    /// (see `compact`); off only for tests of what collection alone does.
    #[cfg(test)]
    pub(crate) fn compaction(mut self, on: bool) -> SpoolOptions {
        self.compaction = on;
        self
    }

    /// Room held back for delivery's records when the disk fills up, and
    /// how often a full spool tries to take it back (see `reserve`).
    #[cfg(test)]
    pub(crate) fn reserve(mut self, bytes: u64, retry: Duration) -> SpoolOptions {
        self.reserve_bytes = bytes;
        self.reserve_retry = retry;
        self
    }

    /// Where queue ids get their time and randomness.
    #[cfg(test)]
    pub(crate) fn id_source(mut self, source: Arc<dyn IdSource>) -> SpoolOptions {
        self.ids = source;
        self
    }

    #[cfg(test)]
    pub(crate) fn disk(mut self, disk: Arc<dyn Disk>) -> SpoolOptions {
        self.disk = disk;
        self
    }
}

impl fmt::Debug for SpoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("reserve_bytes", &self.reserve_bytes)
            .field("compaction", &self.compaction)
            .finish_non_exhaustive()
    }
}

/// A handle on an open spool: cheap to clone, usable from any task.
/// Dropping the last handle stops the writer thread (after it finishes the
/// batch in hand) and releases the lock.
///
/// # On disk
///
/// ```text
/// DIR/lock                          flock()ed by the one writing process
/// DIR/queue/seg-0000000000000001.log
/// DIR/queue/seg-0000000000000002.log  ...append-only segments
/// ```
///
/// A segment is a 16-byte header (`MRSPOOL1`, then a random u64 salt)
/// and a sequence of frames `[magic u32][kind u8][len u32][crc32 u32]
/// [payload]` (little-endian; the CRC covers salt, kind, len and payload;
/// see `record`). Kinds: 1 = message (`[id][envelope JSON len u32]
/// [envelope JSON][body]`), 2 = removed (`[id]`), 3 = recipient states
/// (`[id][JSON [[index, state], ...]]`), 4 = held (`[id][0|1]`), 5 =
/// notice (a message the relay generated, plus the id it is about and
/// whether it bounces it or marks it warned, in one frame), 6 = copy (a
/// message moved forward by compaction, with its whole delivery state), 7
/// = snapshot (the whole delivery state of a message). Every payload
/// starts with the queue id and records replay in order, so a later state
/// for a recipient wins, and of two message records for one id (a copy
/// and its original) the later wins. The segments holding the latest
/// states of a queued message are pinned like its message record (see
/// `index`).
///
/// # Why this shape
///
/// - **Group commit.** One file per message costs a create, write, fsync
///   and directory fsync (~400 µs here) for each message. Appending to a
///   segment costs one fdatasync (~80 µs) per *batch*: a single writer
///   thread takes every request queued while the previous sync ran,
///   writes them with one `pwrite`, syncs once and then wakes all their
///   waiters (see `writer`). `commit` returns only after that sync. When
///   syncs are slow the writer waits a fraction of a sync for stragglers
///   before writing (see `linger`).
/// - **Crash safety.** A record becomes visible to recovery only whole and
///   with a matching CRC; a torn tail is cut off at the last good record.
///   Segments are created under a temporary name, synced, renamed and the
///   directory synced before the first record goes in, so an acknowledged
///   record cannot lose its file name. A failed append is truncated back,
///   so disk-full or EIO answers the client 4xx and the spool keeps going.
/// - **Damage is local.** A bad record in the middle of a segment is
///   skipped by searching for the next frame that verifies; the salt in
///   the CRC stops a message body that contains frame-like bytes from
///   being taken for records. One bad record never fails the spool.
/// - **A full disk stops new mail, not delivery.** A ballast file
///   (`DIR/reserve`) holds room back; when an append fails for want of
///   space it is released for removals and delivery states, new messages
///   get `SpoolError::Full` (452 4.3.1) and the ballast is tried again
///   until it fits (see `reserve`).
/// - **Damage is set aside, not lost.** Bytes recovery cannot use (a
///   damaged record, a torn tail, a segment without a readable header) are
///   moved into `DIR/quarantine/` with a log line naming the file, and the
///   rest of the spool loads (see `recover`).
/// - **Space comes back.** When no queued message needs a record in a
///   closed segment (its message, or its latest states) and its removal
///   records no longer matter, the file is deleted (see `ledger`).
///   Segments roll over at `SpoolOptions::segment_bytes`.
/// - **Space stays bounded.** One deferred message must not keep a whole
///   segment of delivered ones: the live records of mostly dead segments
///   are copied forward through the writer, in small steps between
///   batches, and the old segments deleted, so the closed segments hold
///   less than twice the live bytes whatever the deferral rate (see
///   `compact`). A crash at any point leaves the original or the copy or
///   both, and recovery makes one message of them.
///
/// The index of queued messages (record locations, and per recipient the
/// kind of state and when it is due) lives in memory; envelopes, states
/// and bodies are read back from the segments on demand (see `index`,
/// `load`). The delivery-state API (`queued`, `record`, `set_held`,
/// `commit_notice`, `changed`) is in `queued`.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    ids: IdGenerator,
    /// The CRC salt of the segments this process writes.
    salt: u64,
    dir: PathBuf,
    _lock: File,
    /// Told the id of every new message once it is durable (the delivery
    /// manager learns of new mail this way instead of scanning the queue).
    arrivals: std::sync::OnceLock<Arrivals>,
    /// Where the events of the messages in this spool go (see `events`).
    events: std::sync::OnceLock<crate::events::Events>,
    /// This pod's report aggregates, kept beside the spool (see `ops::reports`).
    reports: std::sync::OnceLock<crate::ops::reports::Reports>,
}

/// See [`Spool::on_arrival`].
pub type Arrivals = Box<dyn Fn(Arrival) + Send + Sync>;

/// A message just committed: its id and, for new mail (every recipient
/// pending, not held), the message itself, so delivery need not read back
/// what it was just handed.
pub struct Arrival {
    pub id: QueueId,
    pub queued: Option<Box<Queued>>,
}

impl Arrival {
    fn fresh(id: QueueId, envelope: &Envelope) -> Arrival {
        Arrival {
            id,
            queued: Some(Box::new(Queued {
                id,
                recipients: vec![RecipientState::Pending; envelope.recipients.len()],
                envelope: envelope.clone(),
                held: false,
                warned: envelope.handed_off.as_ref().is_some_and(|h| h.warned),
            })),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "spool: the writer thread panicked");
        }
    }
}

impl Spool {
    /// Create the layout if missing, recover what is there.
    pub async fn open(dir: &Path) -> Result<(Spool, Recovery), SpoolError> {
        Spool::open_with(dir, SpoolOptions::default()).await
    }

    pub(crate) async fn open_with(
        dir: &Path,
        options: SpoolOptions,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || open_blocking(dir, options))
            .await
            .map_err(|_| SpoolError::Closed)?
    }

    pub fn new_id(&self) -> QueueId {
        self.inner.ids.next_id()
    }

    /// Returns once envelope and body are durable. If the future is dropped
    /// after the request was handed to the writer, the message may still
    /// be stored: a client that saw no 250 retries, and a duplicate is the
    /// safe side of that race.
    pub async fn commit(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<(), SpoolError> {
        self.commit_then(id, envelope, body, || {}).await
    }

    /// [`Spool::commit`], calling `durable` once the message is on disk
    /// and before delivery hears of it: what it appends to the event log
    /// (the Receptions) comes before any delivery event of the message,
    /// so the step that delivers it carries them too (see `events`).
    pub(crate) async fn commit_then(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        body: &[u8],
        durable: impl FnOnce(),
    ) -> Result<(), SpoolError> {
        // Encoding (JSON, CRC, copy) happens here, on the caller's thread,
        // so the single writer only concatenates.
        let frame = record::encode_message(self.inner.salt, id, envelope, body)?;
        self.submit(Op::Commit {
            id: *id,
            meta: Meta::of(envelope, body.len() as u64),
            frame,
            notice: None,
            carried: None,
        })
        .await?;
        durable();
        self.arrived(|| Arrival::fresh(*id, envelope));
        Ok(())
    }

    /// Call `f` with every message committed from now on (new mail,
    /// notices, hand-offs), after it is durable. Set once; a second call
    /// is ignored.
    pub(crate) fn on_arrival(&self, f: Arrivals) {
        let _ = self.inner.arrivals.set(f);
    }

    fn arrived(&self, arrival: impl FnOnce() -> Arrival) {
        if let Some(f) = self.inner.arrivals.get() {
            f(arrival());
        }
    }

    /// Send the events of this spool's messages to `events` (its durable
    /// log lives beside the segments). Set once; a second call is ignored.
    /// The event log first takes back the lines it lacks that batches
    /// carried before a crash (see `writer`): only then may the segments
    /// holding them go.
    pub(crate) fn set_events(&self, events: crate::events::Events) {
        if let Some(log) = events.step_barrier() {
            events.restore(self.carried_events(log.durable()));
            let _ = self.inner.shared.before_steps.set(op::StepBarrier(log));
        }
        let _ = self.inner.events.set(events);
    }

    /// The event-log lines from sequence number `from` on that recovery
    /// found carried in the segments: per events record, its first
    /// sequence number and its lines. Taken once.
    fn carried_events(&self, from: u64) -> Vec<(u64, Vec<u8>)> {
        let refs: Vec<_> = {
            let mut state = self.inner.shared.lock();
            let carried = std::mem::take(&mut state.carried);
            carried
                .into_iter()
                .filter(|c| c.end > from)
                .filter_map(|c| state.record_ref(c.location))
                .collect()
        };
        let mut found = Vec::with_capacity(refs.len());
        for at in refs {
            let read = at.read().and_then(|(kind, frame)| {
                match record::parse_record(kind, &frame[record::HEADER_LEN..]) {
                    Ok(record::Record::Events { first, lines, .. }) => Ok((first, lines.to_vec())),
                    Ok(_) => Err(at.corrupt("not an events record".into())),
                    Err(e) => Err(at.corrupt(e.to_string())),
                }
            });
            match read {
                Ok(lines) => found.push(lines),
                Err(e) => {
                    tracing::error!(error = %e, "spool: cannot read carried event lines; their events may be missing from webhooks")
                }
            }
        }
        found
    }

    /// Where events go: the log only, until `set_events`.
    pub(crate) fn events(&self) -> &crate::events::Events {
        self.inner
            .events
            .get()
            .unwrap_or_else(|| crate::events::Events::log_only())
    }

    /// Count this spool's report aggregates in `reports` (its files live
    /// in the spool's `reports/`). Set once; a second call is ignored.
    pub(crate) fn set_reports(&self, reports: crate::ops::reports::Reports) {
        let _ = self.inner.reports.set(reports);
    }

    /// Where report aggregates are counted, once `set_reports` was called.
    pub(crate) fn reports(&self) -> Option<&crate::ops::reports::Reports> {
        self.inner.reports.get()
    }

    /// Whether a new message can be taken: false while the disk is full
    /// (then `commit` would answer `SpoolError::Full`). While it is, each
    /// call first has the writer look for space again, at most once per
    /// retry interval, so a relay that refuses mail at MAIL still notices
    /// when space comes back.
    pub(crate) async fn has_room(&self) -> bool {
        let full = || self.inner.shared.full.load(Ordering::SeqCst);
        if !full() {
            return true;
        }
        // An error means the writer is gone: then there is no room either.
        let _ = self.submit(Op::Probe).await;
        !full()
    }

    /// Durably forget a message (delivered, bounced or deleted).
    pub async fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let frame = record::encode_removed(self.inner.salt, id)?;
        self.submit(Op::Remove { id: *id, frame }).await
    }

    async fn submit(&self, op: Op) -> Result<(), SpoolError> {
        let (done, answer) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(SpoolError::Closed)?;
        tx.send(Request { op, done })
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        let shared = &self.inner.shared;
        let state = shared.lock();
        SpoolStats {
            commits: shared.commits.load(Ordering::Relaxed),
            syncs: shared.syncs.load(Ordering::Relaxed),
            compacted_records: shared.compacted_records.load(Ordering::Relaxed),
            compacted_bytes: shared.compacted_bytes.load(Ordering::Relaxed),
            ..state.stats()
        }
    }

    /// Returns once no compaction pass is under way (each look is a turn
    /// of the writer, which takes a step of a pass when it has nothing
    /// else to do).
    #[cfg(test)]
    pub(crate) async fn compaction_settled(&self) {
        while {
            let _ = self.submit(Op::Probe).await;
            self.inner.shared.compacting.load(Ordering::SeqCst)
        } {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// What is queued, sorted by id (so by arrival); `queued` adds the
    /// delivery state.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<(QueueId, Envelope)> {
        self.queued()
            .into_iter()
            .map(|q| (q.id, q.envelope))
            .collect()
    }

    pub(crate) async fn read_body(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let body = self.inner.shared.lock().body_ref(id)?;
        tokio::task::spawn_blocking(move || body.read())
            .await
            .map_err(|_| SpoolError::Closed)?
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn open_blocking(dir: PathBuf, options: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
    let queue_dir = dir.join("queue");
    create_layout(&dir, &queue_dir)?;
    let lock = lock(&dir)?;
    let Loaded {
        mut state,
        recovery,
        mut next_number,
    } = recover::load(&queue_dir, Access::ReadWrite)?;
    let reserve = Reserve::new(&dir, options.reserve_bytes, options.reserve_retry);
    let active = match reusable(&state, options.segment_bytes) {
        Some(active) => active,
        None => {
            let number = next_number;
            next_number += 1;
            let salt = rand::random();
            let (file, path) = segment::create(&queue_dir, number, salt)?;
            let handle = SegmentHandle {
                file: Arc::new(file),
                path,
                salt,
            };
            let len = SEGMENT_HEADER_LEN as u64;
            state.add_segment(number, handle.clone(), len);
            Active {
                number,
                handle,
                len,
            }
        }
    };
    let salt = active.handle.salt;
    let shared = Arc::new(Shared::new(state));
    let (tx, rx) = mpsc::channel();
    let mut writer = Writer::new(
        rx,
        Arc::clone(&shared),
        options.disk,
        queue_dir,
        options.segment_bytes,
        options.compaction,
        active,
        next_number,
        reserve,
    );
    writer.fill_reserve();
    // Segments emptied just before a crash.
    writer.collect();
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| SpoolError::io("start the writer thread for", &dir, e))?;
    tracing::info!(
        dir = %dir.display(), messages = recovery.messages,
        truncated_bytes = recovery.truncated_bytes, skipped_records = recovery.skipped_records,
        quarantined = recovery.quarantined.len(), "spool: opened"
    );
    let inner = Inner {
        tx: Some(tx),
        writer: Some(thread),
        shared,
        ids: IdGenerator::new(options.ids),
        salt,
        dir,
        _lock: lock,
        arrivals: std::sync::OnceLock::new(),
        events: std::sync::OnceLock::new(),
        reports: std::sync::OnceLock::new(),
    };
    let spool = Spool {
        inner: Arc::new(inner),
    };
    Ok((spool, recovery))
}

/// Keep appending to the newest segment unless it is full: restarts
/// should not leave a trail of small files.
fn reusable(state: &State, segment_bytes: u64) -> Option<Active> {
    let number = state.index.last_segment()?;
    let len = state.index.segment_bytes(number)?;
    if len >= segment_bytes {
        return None;
    }
    let handle = state.files.get(&number)?.clone();
    Some(Active {
        number,
        handle,
        len,
    })
}

fn create_layout(dir: &Path, queue_dir: &Path) -> Result<(), SpoolError> {
    if queue_dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(queue_dir).map_err(|e| SpoolError::io("create", queue_dir, e))?;
    // New directory entries are durable only once their parent is synced.
    segment::sync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(e) = segment::sync_dir(parent)
    {
        tracing::warn!(error = %e, "spool: cannot sync the spool's parent directory");
    }
    Ok(())
}

/// Two writers on one spool would interleave appends; the second is
/// refused. Read-only snapshots take no lock.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked { path }),
        Err(fs::TryLockError::Error(e)) => Err(SpoolError::io("lock", &path, e)),
    }
}
