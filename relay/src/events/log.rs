//! The webhook events' own log, in `SPOOL/events/`: segments of lines
//! `CRC32<TAB>["webhook",…]<TAB>{event}`, named by the sequence number of
//! their first line; a line's sequence number is fixed when it is
//! appended. Appends wait in a buffer; this log's own thread writes them
//! with one write and one fdatasync once they have waited a while (at
//! once when someone awaits them). Until then the spool carries them in
//! the batch of any step they precede (see `events`, `StepLog`), and
//! takes them back here after a crash. Senders only ever see lines that
//! are in this log on disk. A webhook's progress (the first sequence
//! number it has not acknowledged) is kept in `cursors.json`, written
//! without fsync at most once a second: a lost cursor makes a receiver
//! see events again, never miss one. A segment is deleted once every
//! running webhook has acknowledged all of its lines.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

/// Segments roll over past this size.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;
/// How long appended lines wait before the log's own thread syncs them:
/// no step waits for this (the spool carries what a step needs), so it
/// only bounds how late webhooks see an event and how often this log
/// syncs under load.
const LAZY: Duration = Duration::from_millis(50);
const CURSORS: &str = "cursors.json";
/// `cursors.json` is rewritten at most this often (and when the log closes).
const SAVE_CURSORS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the event log writer has stopped")]
    Closed,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

/// One durable event waiting for webhooks.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub seq: u64,
    /// Unix seconds it was appended (retention counts from here).
    pub time: i64,
    pub targets: Targets,
    pub json: Arc<str>,
}

/// The webhooks a line is for.
pub(crate) type Targets = Arc<[Arc<str>]>;

/// What is to be appended.
pub(crate) struct Append {
    pub time: i64,
    pub targets: Targets,
    pub json: Arc<str>,
    /// Told once the line is durable (or could not be written).
    pub done: Option<oneshot::Sender<Result<(), ()>>>,
}

/// What the writer shares with the senders.
pub(crate) struct Backlog {
    state: Mutex<State>,
    /// Woken after each durable batch.
    pub grew: Notify,
    dir: PathBuf,
}

#[derive(Default)]
struct State {
    /// Durable, not yet acknowledged by every running webhook; by seq.
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// First seq of each segment file, ascending; the last is written to.
    segments: Vec<u64>,
    /// Per webhook, the first seq it has not acknowledged.
    cursors: BTreeMap<String, u64>,
    /// Webhooks with a running sender: only they hold the log back.
    running: BTreeSet<String>,
    /// Per webhook, entries at or past its cursor addressed to it.
    pending: HashMap<Arc<str>, u64>,
    /// When `cursors.json` was last written.
    cursors_saved: Option<std::time::Instant>,
}

/// A batch for one webhook.
pub(crate) struct Batch {
    pub entries: Vec<Entry>,
    /// The cursor once this batch is acknowledged.
    pub next: u64,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sender starts: its cursor.
    pub(crate) fn register(&self, name: &str) -> u64 {
        let mut s = self.lock();
        s.running.insert(name.to_string());
        s.cursors.get(name).copied().unwrap_or(0)
    }

    pub(crate) fn unregister(&self, name: &str) {
        self.lock().running.remove(name);
    }

    /// Up to `max` entries for `name` from `cursor` on.
    pub(crate) fn batch(&self, name: &str, cursor: u64, max: usize) -> Batch {
        let s = self.lock();
        let start = s.entries.partition_point(|e| e.seq < cursor);
        let mut entries = Vec::new();
        let mut next = cursor;
        for e in s.entries.iter().skip(start) {
            if entries.len() >= max {
                break;
            }
            next = e.seq + 1;
            if e.targets.iter().any(|t| &**t == name) {
                entries.push(e.clone());
            }
        }
        Batch { entries, next }
    }

    pub(crate) fn pending(&self, name: &str) -> u64 {
        self.lock().pending.get(name).copied().unwrap_or(0)
    }

    /// `name` has everything before `next`; `taken` of them were its own.
    /// Trims what every running webhook has.
    pub(crate) fn ack(&self, name: &str, next: u64, taken: u64) {
        let mut s = self.lock();
        s.cursors.insert(name.to_string(), next);
        if let Some(p) = s.pending.get_mut(name) {
            *p = p.saturating_sub(taken);
        }
        let State {
            cursors, running, ..
        } = &*s;
        let low = running
            .iter()
            .map(|n| cursors.get(n).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        while s.entries.front().is_some_and(|e| e.seq < low) {
            s.entries.pop_front();
        }
        // A segment whose successor starts at or before `low` is all acknowledged.
        while s.segments.len() > 1 && s.segments[1] <= low {
            let first = s.segments.remove(0);
            let path = segment_path(&self.dir, first);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an acknowledged event segment");
            }
        }
        if s.cursors_saved
            .is_some_and(|at| at.elapsed() < SAVE_CURSORS_EVERY)
        {
            return;
        }
        s.cursors_saved = Some(std::time::Instant::now());
        let cursors = s.cursors.clone();
        drop(s);
        self.save_cursors(&cursors);
    }

    /// Write the cursors as they are now (the log closes).
    fn save_all(&self) {
        let cursors = self.lock().cursors.clone();
        if !cursors.is_empty() {
            self.save_cursors(&cursors);
        }
    }

    fn save_cursors(&self, cursors: &BTreeMap<String, u64>) {
        let path = self.dir.join(CURSORS);
        let tmp = self.dir.join("cursors.json.tmp");
        let written = serde_json::to_vec(cursors)
            .map_err(std::io::Error::other)
            .and_then(|json| fs::write(&tmp, json))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save webhook progress; events may be sent again after a restart");
        }
    }
}

/// The log: a buffer of appended lines, who writes them, and the
/// backlog the senders read.
pub(crate) struct EventLog {
    tail: Arc<Tail>,
    flusher: Option<JoinHandle<()>>,
    pub backlog: Arc<Backlog>,
}

/// Lines appended and not yet written, and the file they go to.
pub(crate) struct Tail {
    waiting: Mutex<Waiting>,
    /// Woken when lines wait (or the log closes).
    wake: Condvar,
    /// Held for a whole write and sync: one flush at a time, each taking
    /// every line appended before it started, so lines reach the file
    /// and get their sequence numbers in the order they were appended.
    file: Mutex<Open>,
    /// Lines ever flushed (written and synced, or failed): every line
    /// appended before the `appended` count it was set from. Set under
    /// the waiting lock together with `Waiting::unsynced`, so the two
    /// agree for whoever holds that lock; read without it otherwise.
    flushed: std::sync::atomic::AtomicU64,
    /// The sequence number of this process's first line (the log's next
    /// at open): line `n` appended since has `base + n`.
    base: u64,
    backlog: Arc<Backlog>,
    segment_bytes: u64,
    lazy: Duration,
}

#[derive(Default)]
struct Waiting {
    appends: Vec<Append>,
    /// Every line appended and not flushed yet (taken by a flush under
    /// way included), from line `Tail::flushed` on: what the spool may
    /// carry.
    unsynced: VecDeque<(Targets, Arc<str>)>,
    /// Lines ever appended.
    appended: u64,
    /// Someone awaits durability: flush now rather than lazily.
    urgent: bool,
    closed: bool,
    /// Flushes begun: tells the lazy flusher that a spool step took the
    /// lines it was waiting on.
    flushes: u64,
}

struct Open {
    file: File,
    size: u64,
    buf: Vec<u8>,
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.tail.lock_waiting().closed = true;
        self.tail.wake.notify_all();
        if let Some(w) = self.flusher.take() {
            let _ = w.join();
        }
        self.backlog.save_all();
    }
}

impl EventLog {
    /// Open `dir`, recovering what is there: a line cut short by a crash
    /// (no newline, or a CRC that does not match) is cut off the last
    /// segment; everything before it is kept.
    pub(crate) fn open(dir: &Path) -> Result<EventLog, LogError> {
        EventLog::open_with(dir, SEGMENT_BYTES, LAZY)
    }

    /// `lazy`: how long lines wait for a spool step before the log's own
    /// thread writes them (tests stretch it to see who wrote them).
    pub(crate) fn open_with(
        dir: &Path,
        segment_bytes: u64,
        lazy: Duration,
    ) -> Result<EventLog, LogError> {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut state = State {
            cursors: load_cursors(dir),
            ..State::default()
        };
        let mut firsts: Vec<u64> = fs::read_dir(dir)
            .map_err(io("list", dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_suffix(".log")?.parse::<u64>().ok()
            })
            .collect();
        firsts.sort_unstable();
        for (i, &first) in firsts.iter().enumerate() {
            let last = i + 1 == firsts.len();
            let seq = load_segment(dir, first, last, &mut state)?;
            state.next_seq = state.next_seq.max(seq);
        }
        for e in &state.entries {
            let cursor_of = |t: &str| state.cursors.get(t).copied().unwrap_or(0);
            for t in e.targets.iter().filter(|t| e.seq >= cursor_of(t)) {
                *state.pending.entry(Arc::clone(t)).or_default() += 1;
            }
        }
        let (file, size) = match firsts.last() {
            Some(&first) => {
                let path = segment_path(dir, first);
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                let size = file.metadata().map_err(io("stat", &path))?.len();
                (file, size)
            }
            None => (new_segment(dir, state.next_seq)?, 0),
        };
        state.segments = firsts;
        if state.segments.is_empty() {
            state.segments.push(state.next_seq);
        }
        let base = state.next_seq;
        let backlog = Arc::new(Backlog {
            state: Mutex::new(state),
            grew: Notify::new(),
            dir: dir.to_path_buf(),
        });
        let tail = Arc::new(Tail {
            waiting: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
            file: Mutex::new(Open {
                file,
                size,
                buf: Vec::new(),
            }),
            flushed: std::sync::atomic::AtomicU64::new(0),
            base,
            backlog: Arc::clone(&backlog),
            segment_bytes,
            lazy,
        });
        let lazy = Arc::clone(&tail);
        let flusher = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || lazy.run())
            .map_err(io("start the writer for", dir))?;
        Ok(EventLog {
            tail,
            flusher: Some(flusher),
            backlog,
        })
    }

    /// Queue a line; it is written by the next flush (see [`Tail::flush`]).
    pub(crate) fn append(&self, append: Append) -> Result<(), LogError> {
        let mut w = self.tail.lock_waiting();
        if w.closed {
            return Err(LogError::Closed);
        }
        let urgent = append.done.is_some();
        w.urgent |= urgent;
        // The flusher sleeps until lines wait, or (lazily) until someone
        // waits for them.
        let wake = urgent || w.appends.is_empty();
        w.unsynced
            .push_back((Arc::clone(&append.targets), Arc::clone(&append.json)));
        w.appends.push(append);
        w.appended += 1;
        drop(w);
        if wake {
            self.tail.wake.notify_one();
        }
        Ok(())
    }

    /// What the spool writer asks about (see `StepLog`).
    pub(crate) fn tail(&self) -> Arc<Tail> {
        Arc::clone(&self.tail)
    }
}

impl Tail {
    fn lock_waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write every line appended so far with one write and one
    /// fdatasync, then hand them to the senders and tell their waiters.
    pub(crate) fn flush(&self) {
        let open = self.file.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(open);
    }

    /// Every line below sequence number `end` durable. Nothing to do
    /// when they are; a flush in progress (the log's own thread's,
    /// started earlier) may carry them, so it is waited for before
    /// anything is written anew.
    pub(crate) fn barrier(&self, end: u64) {
        let target = end.saturating_sub(self.base);
        if self.flushed_lines() >= target {
            return;
        }
        let open = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if self.flushed_lines() >= target {
            return;
        }
        self.flush_locked(open);
    }

    fn flushed_lines(&self) -> u64 {
        self.flushed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn flush_locked(&self, mut open: MutexGuard<'_, Open>) {
        let (batch, upto) = {
            let mut w = self.lock_waiting();
            w.urgent = false;
            w.flushes += 1;
            (std::mem::take(&mut w.appends), w.appended)
        };
        if batch.is_empty() {
            return;
        }
        let Open { file, size, buf } = &mut *open;
        buf.clear();
        for a in &batch {
            encode(&a.targets, &a.json, buf);
        }
        let written = file.write_all(buf).and_then(|()| file.sync_data());
        if let Err(e) = &written {
            // The events stay in memory and are still sent; only a crash
            // before then loses them.
            tracing::error!(error = %e, events = batch.len(), "cannot write the event log");
        }
        *size += buf.len() as u64;
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        let backlog = &self.backlog;
        let mut dones = Vec::new();
        {
            let mut s = backlog.lock();
            for a in batch {
                let seq = s.next_seq;
                s.next_seq += 1;
                for t in a.targets.iter() {
                    *s.pending.entry(Arc::clone(t)).or_default() += 1;
                }
                s.entries.push_back(Entry {
                    seq,
                    time: a.time,
                    targets: a.targets,
                    json: a.json,
                });
                dones.extend(a.done);
            }
        }
        if *size >= self.segment_bytes {
            let next = backlog.lock().next_seq;
            match new_segment(&backlog.dir, next) {
                Ok(f) => {
                    *file = f;
                    *size = 0;
                    backlog.lock().segments.push(next);
                }
                Err(e) => tracing::error!(error = %e, "cannot start a new event segment"),
            }
        }
        {
            let mut w = self.lock_waiting();
            let done =
                usize::try_from(upto.saturating_sub(self.flushed_lines())).unwrap_or(usize::MAX);
            let done = done.min(w.unsynced.len());
            w.unsynced.drain(..done);
            self.flushed
                .store(upto, std::sync::atomic::Ordering::Release);
        }
        drop(open);
        // After a roll, so a waiter sees the log as it now is.
        backlog.grew.notify_waiters();
        let result = written.map_err(|_| ());
        for d in dones {
            let _ = d.send(result);
        }
    }

    /// Flush lines no spool step has carried out within `lazy` (or at
    /// once, when someone waits for them), until the log closes.
    fn run(&self) {
        loop {
            let mut w = self.lock_waiting();
            while w.appends.is_empty() && !w.closed {
                w = self.wake.wait(w).unwrap_or_else(|p| p.into_inner());
            }
            if w.closed {
                drop(w);
                self.flush();
                return;
            }
            if !w.urgent {
                // A barrier (a spool segment going) may flush them first;
                // then this waits on, unwoken, for the lines appended
                // since: at most twice LAZY in all.
                let seen = w.flushes;
                let (g, _) = self
                    .wake
                    .wait_timeout_while(w, self.lazy, |w| {
                        !w.urgent && !w.closed && w.flushes == seen
                    })
                    .unwrap_or_else(|p| p.into_inner());
                if g.flushes != seen && !g.urgent && !g.closed {
                    continue;
                }
                w = g;
            }
            drop(w);
            self.flush();
        }
    }
}

impl crate::spool::StepLog for Tail {
    fn carry(&self, from: u64) -> Option<crate::spool::CarriedLines> {
        let (first, lines) = {
            let w = self.lock_waiting();
            let flushed = self.flushed_lines();
            let start = from.saturating_sub(self.base).max(flushed);
            if start >= w.appended {
                return None;
            }
            let skip = usize::try_from(start - flushed).unwrap_or(usize::MAX);
            let lines: Vec<(Targets, Arc<str>)> = w
                .unsynced
                .iter()
                .skip(skip)
                .take(u32::MAX as usize)
                .cloned()
                .collect();
            (self.base + start, lines)
        };
        let mut bytes = Vec::with_capacity(lines.iter().map(|(_, j)| j.len() + 64).sum());
        for (targets, json) in &lines {
            encode(targets, json, &mut bytes);
        }
        Some(crate::spool::CarriedLines {
            first,
            count: u32::try_from(lines.len()).unwrap_or(u32::MAX),
            bytes,
        })
    }

    fn durable(&self) -> u64 {
        self.base + self.flushed_lines()
    }

    fn wait(&self, end: u64) {
        self.barrier(end);
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

/// Create a segment and make its name durable.
fn new_segment(dir: &Path, first: u64) -> Result<File, LogError> {
    let path = segment_path(dir, first);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io("create", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))?;
    Ok(file)
}

fn load_cursors(dir: &Path) -> BTreeMap<String, u64> {
    fs::read(dir.join(CURSORS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// One line, appended to `out`.
pub(crate) fn encode(targets: &[Arc<str>], json: &str, out: &mut Vec<u8>) {
    let names: Vec<&str> = targets.iter().map(|t| &**t).collect();
    let targets = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
    let mut crc = crc32fast::Hasher::new();
    crc.update(targets.as_bytes());
    crc.update(b"\t");
    crc.update(json.as_bytes());
    out.extend_from_slice(super::record::hex(&crc.finalize().to_be_bytes()).as_bytes());
    out.push(b'\t');
    out.extend_from_slice(targets.as_bytes());
    out.push(b'\t');
    out.extend_from_slice(json.as_bytes());
    out.push(b'\n');
}

/// Targets and event of one line (without its newline), if it is whole.
pub(crate) fn decode(line: &[u8]) -> Option<(Targets, Arc<str>)> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, rest) = line.split_once('\t')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(rest.as_bytes()) {
        return None;
    }
    let (targets, json) = rest.split_once('\t')?;
    let targets: Vec<String> = serde_json::from_str(targets).ok()?;
    Some((
        targets.into_iter().map(Arc::<str>::from).collect(),
        Arc::from(json),
    ))
}

/// Read one segment into `state`; returns the seq after its last line.
fn load_segment(dir: &Path, first: u64, last: bool, state: &mut State) -> Result<u64, LogError> {
    let path = segment_path(dir, first);
    let bytes = fs::read(&path).map_err(io("read", &path))?;
    let mut seq = first;
    let mut at = 0usize;
    // Modification time stands in for the append time of old lines:
    // retention is a bound, not an exact age.
    let time = jiff::Timestamp::now().as_second();
    while at < bytes.len() {
        let Some(end) = memchr::memchr(b'\n', &bytes[at..]).map(|n| at + n) else {
            break;
        };
        let Some((targets, json)) = decode(&bytes[at..end]) else {
            break;
        };
        state.entries.push_back(Entry {
            seq,
            time,
            targets,
            json,
        });
        seq += 1;
        at = end + 1;
    }
    if at < bytes.len() {
        if last {
            tracing::warn!(path = %path.display(), bytes = bytes.len() - at, "cutting an interrupted event write off the log");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(at as u64).and_then(|()| f.sync_all()))
                .map_err(io("truncate", &path))?;
        } else {
            tracing::error!(path = %path.display(), offset = at, "a damaged event segment: the rest of it is skipped");
        }
    }
    Ok(seq)
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
