//! The single writer thread: group commit, segment rotation, collection.
//!
//! Every commit, removal, state and hold change becomes a request on a
//! channel. The writer
//! takes whatever is queued, checks it against the index, appends all of
//! it with one write, makes it durable with one fdatasync and only then
//! updates the index and wakes each waiter. While one fdatasync runs the
//! next batch queues up, so the number of syncs falls as concurrency
//! rises (and `linger` merges the groups that would otherwise alternate).
//! Rotation and segment deletion also happen before the waiters wake, so
//! what a caller observes after `remove` returns is already on disk. A
//! failed append or sync is cut back to the last durable offset, so the
//! file never holds a record nobody was told about. After a batch that
//! changed anything, whoever waits in `Spool::changed` is woken.
//!
//! A batch with a step that delivery events may precede also carries, in
//! a record of its own, the event-log lines not durable elsewhere yet
//! (see `carry`): one fdatasync for the step and its events. A segment
//! holding such lines is deleted only once the event log has synced them.
//!
//! When an append fails for want of space the writer goes into "full"
//! mode (see `reserve`): it releases the reserve, starts a new segment so
//! the old one can be deleted once its messages leave, writes the batch's
//! removals and states into the room that gave, and refuses new messages
//! until the reserve fits again.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use super::admit::Ahead;
use super::compact::{Compactor, Step};
use super::disk::Disk;
use super::error::SpoolError;
use super::index::Index;
use super::linger::Linger;
use super::op::{Op, Request, Waiter};
use super::record;
use super::reserve::Reserve;
use super::segment::{self, SEGMENT_HEADER_LEN};
use super::state::{SegmentHandle, Shared};
use super::types::Location;

/// Stop adding to a batch past this: bounds the writer's buffer and the
/// overshoot past the segment size.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// A batch on disk (or not): who to wake, and with what.
struct Written {
    waiters: Vec<Waiter>,
    outcome: Result<(), SpoolError>,
    /// Something other than a plain commit: a segment may be spent now.
    released: bool,
}

/// The segment being appended to.
pub(crate) struct Active {
    pub number: u64,
    pub handle: SegmentHandle,
    /// Durable length: everything before it is synced records.
    pub len: u64,
}

pub(crate) struct Writer {
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    disk: Arc<dyn Disk>,
    queue_dir: PathBuf,
    segment_bytes: u64,
    active: Active,
    next_number: u64,
    /// A failed append left bytes past `active.len` that could not be cut
    /// off yet; nothing is appended until they are.
    dirty: bool,
    buf: Vec<u8>,
    linger: Linger,
    reserve: Reserve,
    compactor: Compactor,
    /// Event-log lines carried in batches so far: every sequence number
    /// below it is durable (in a segment or in the event log).
    carried: u64,
    /// Per segment, one past the last event-log line carried in it: the
    /// segment may go only once the event log holds them (see `collect`).
    carried_in: BTreeMap<u64, u64>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        rx: Receiver<Request>,
        shared: Arc<Shared>,
        disk: Arc<dyn Disk>,
        queue_dir: PathBuf,
        segment_bytes: u64,
        compaction: bool,
        active: Active,
        next_number: u64,
        reserve: Reserve,
    ) -> Writer {
        let mut carried_in = BTreeMap::new();
        for c in &shared.lock().carried {
            let end: &mut u64 = carried_in.entry(c.location.segment).or_default();
            *end = (*end).max(c.end);
        }
        Writer {
            rx,
            shared,
            disk,
            queue_dir,
            segment_bytes,
            active,
            next_number,
            dirty: false,
            buf: Vec::new(),
            linger: Linger::default(),
            reserve,
            compactor: Compactor::new(compaction),
            carried: 0,
            carried_in,
        }
    }

    fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::SeqCst)
    }

    /// Write the reserve when the spool opens; without room for it the
    /// spool starts refusing new mail.
    pub(crate) fn fill_reserve(&mut self) {
        if let Err(e) = self.reserve.fill(self.disk.as_ref()) {
            tracing::error!(reserve = %self.reserve.path().display(), error = %e,
                "spool: no room for the reserve; refusing new mail until there is");
            self.shared.full.store(true, Ordering::SeqCst);
        }
    }

    /// The disk is full: free the reserve for delivery's records, refuse
    /// new mail, and move on to a new segment so the current one can be
    /// deleted once the messages in it are delivered.
    fn enter_full(&mut self) {
        self.shared.full.store(true, Ordering::SeqCst);
        tracing::error!(dir = %self.queue_dir.display(),
            "spool: disk full; refusing new mail (452 4.3.1) until space comes back; delivery goes on");
        if let Err(e) = self.reserve.release() {
            tracing::warn!(reserve = %self.reserve.path().display(), error = %e, "spool: cannot release the reserve");
        }
        if self.active.len > SEGMENT_HEADER_LEN as u64 {
            self.rotate();
        }
    }

    /// While full: has space come back? (Twice the reserve fits.)
    fn look_for_space(&mut self) {
        if !self.reserve.due() {
            return;
        }
        match self.reserve.refill(self.disk.as_ref()) {
            Ok(()) => {
                self.shared.full.store(false, Ordering::SeqCst);
                tracing::info!(dir = %self.queue_dir.display(), "spool: space is back; taking new mail again");
            }
            Err(e) => tracing::debug!(error = %e, "spool: still no room"),
        }
    }

    /// Until every `Spool` handle is gone.
    pub(crate) fn run(mut self) {
        // A crash may have cut a pass short.
        self.compactor.start(&self.shared, self.active.number);
        while let Some(mut batch) = self.next_batch() {
            let probes: Vec<Waiter> = batch
                .extract_if(.., |r| matches!(r.op, Op::Probe))
                .map(|r| r.done)
                .collect();
            if self.is_full() && (!probes.is_empty() || batch.iter().any(|r| r.op.is_new_mail())) {
                self.look_for_space();
            }
            for probe in probes {
                let _ = probe.send(Ok(()));
            }
            let written = self.write_batch(batch);
            // Before waking anyone, so that a caller who sees `remove`
            // return also sees the segment it emptied gone.
            let rotated = self.active.len >= self.segment_bytes;
            if rotated {
                self.rotate();
                self.collect();
            } else if written.released {
                self.collect();
            }
            let finished = self.compactor.is_done();
            if finished {
                // The pass's sources are spent now.
                self.collect();
                self.compactor.finish(&self.shared);
            }
            if rotated || written.released || finished {
                self.compactor.start(&self.shared, self.active.number);
            }
            let changed = written.outcome.is_ok() && !written.waiters.is_empty();
            for waiter in written.waiters {
                // The caller may have given up waiting; the record stays.
                let _ = waiter.send(written.outcome.clone());
            }
            if changed {
                self.shared.changed.notify_waiters();
            }
        }
    }

    /// Compaction goes on while nothing else is asked for, and pauses
    /// while the disk is full.
    fn compacting(&self) -> bool {
        self.compactor.is_busy() && !self.is_full()
    }

    /// The event-log lines a batch must carry: with a step that events
    /// may precede, every line appended so far that is durable neither in
    /// the event log nor in an earlier batch — in one frame written before
    /// the batch's records, so the one fdatasync that makes the step
    /// durable makes its events durable too, and no crash, power loss
    /// included, finds the step done without them (see `events`). New
    /// mail alone carries none: its Reception is rebuilt from the spool.
    fn carry(&self, accepted: &[Request]) -> Option<(Vec<u8>, u64)> {
        let log = &self.shared.before_steps.get()?.0;
        if !accepted.iter().any(|r| r.op.may_follow_events()) {
            return None;
        }
        let lines = log.carry(self.carried)?;
        let end = lines.first + u64::from(lines.count);
        match record::encode_events(
            self.active.handle.salt,
            lines.first,
            lines.count,
            &lines.bytes,
        ) {
            Some(frame) => Some((frame, end)),
            None => {
                // Over 4 GiB of lines: sync them where they are instead.
                log.wait(end);
                None
            }
        }
    }

    /// The requests waiting; while compacting, an empty batch when there
    /// are none (the step then goes alone), without waiting.
    fn next_batch(&self) -> Option<Vec<Request>> {
        let first = if self.compacting() {
            match self.rx.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Empty) => return Some(Vec::new()),
                Err(TryRecvError::Disconnected) => return None,
            }
        } else {
            self.rx.recv().ok()?
        };
        let mut bytes = first.op.frame().len();
        let mut batch = vec![first];
        while bytes < MAX_BATCH_BYTES {
            let Ok(request) = self.rx.try_recv() else {
                break;
            };
            bytes += request.op.frame().len();
            batch.push(request);
        }
        if let Some((most, gap)) = self.linger.budget() {
            let deadline = Instant::now() + most;
            while bytes < MAX_BATCH_BYTES {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(request) = self.rx.recv_timeout(left.min(gap)) else {
                    break;
                };
                bytes += request.op.frame().len();
                batch.push(request);
            }
        }
        Some(batch)
    }

    fn write_batch(&mut self, batch: Vec<Request>) -> Written {
        let accepted = self.accept(batch);
        let step = if self.compacting() {
            self.compactor.step(&self.shared, self.active.handle.salt)
        } else {
            None
        };
        self.write_accepted(step, accepted)
    }

    /// Write a compaction step (if any) and the accepted requests, in
    /// that order, with one append and one sync; then apply them.
    fn write_accepted(&mut self, step: Option<Step>, accepted: Vec<Request>) -> Written {
        let mut written = Written {
            waiters: Vec::with_capacity(accepted.len()),
            outcome: Ok(()),
            released: false,
        };
        let moves = step.as_ref().map_or(0, |s| s.moves.len());
        if accepted.is_empty() && moves == 0 {
            return written;
        }
        let carry = self.carry(&accepted);
        let base = self.active.len;
        self.buf.clear();
        if let Some((frame, _)) = &carry {
            self.buf.extend_from_slice(frame);
        }
        let mut offsets = Vec::with_capacity(moves + accepted.len());
        let frames = step
            .iter()
            .flat_map(|s| s.moves.iter().map(|(_, f)| f.as_slice()));
        for frame in frames.chain(accepted.iter().map(|r| r.op.frame())) {
            offsets.push(base + self.buf.len() as u64);
            self.buf.extend_from_slice(frame);
        }
        if let Err(e) = self.append(base) {
            // A step that did not fit is planned again once there is
            // room. One that failed otherwise is given up rather than
            // retried at once (the writer would spin on a failing disk):
            // the next change starts a pass over.
            if step.is_some() && !e.is_no_space() {
                self.compactor.abandon(&self.shared);
            }
            if e.is_no_space() && !self.is_full() {
                return self.write_after_filling_up(accepted);
            }
            written.outcome = Err(e);
            written.waiters = accepted.into_iter().map(|r| r.done).collect();
            return written;
        }
        self.active.len = base + self.buf.len() as u64;
        let segment = self.active.number;
        if let Some((_, end)) = carry {
            self.carried = end;
            self.carried_in.insert(segment, end);
        }
        let mut commits = 0;
        let mut offsets = offsets.into_iter();
        let mut state = self.shared.lock();
        state.index.set_segment_bytes(segment, self.active.len);
        if let Some(step) = step {
            let (mut records, mut bytes) = (0, 0);
            for ((planned, frame), offset) in step.moves.into_iter().zip(offsets.by_ref()) {
                let location = Location {
                    segment,
                    offset,
                    len: frame.len() as u64,
                };
                match planned.from {
                    Some(_) => state.index.relocate(&planned.id, location),
                    None => state.index.snapshot(&planned.id, &planned.state, location),
                }
                records += 1;
                bytes += location.len;
            }
            self.shared
                .compacted_records
                .fetch_add(records, Ordering::Relaxed);
            self.shared
                .compacted_bytes
                .fetch_add(bytes, Ordering::Relaxed);
            self.compactor.advance(step.next, records, bytes);
        }
        for (request, offset) in accepted.into_iter().zip(offsets) {
            let (commit, released) = apply(&mut state.index, request.op, segment, offset);
            commits += u64::from(commit);
            written.released |= released;
            written.waiters.push(request.done);
        }
        drop(state);
        self.shared.commits.fetch_add(commits, Ordering::Relaxed);
        written
    }

    /// The batch did not fit: go full, refuse its new messages and write
    /// the rest (delivery's records) into the room the reserve leaves.
    fn write_after_filling_up(&mut self, mut accepted: Vec<Request>) -> Written {
        self.enter_full();
        let full = self.full_error();
        for refused in accepted.extract_if(.., |r| r.op.is_new_mail()) {
            let _ = refused.done.send(Err(full.clone()));
        }
        // Admitted against the index before the failure; nothing of the
        // batch was applied, so the judgement still holds. Full now: a
        // second failure is reported, not retried. Compaction waits.
        self.write_accepted(None, accepted)
    }

    fn full_error(&self) -> SpoolError {
        SpoolError::Full {
            dir: self.queue_dir.clone(),
        }
    }

    /// Answer the requests the index rules out; keep the rest, in order.
    fn accept(&self, batch: Vec<Request>) -> Vec<Request> {
        let mut accepted = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        let full = self.is_full();
        {
            let state = self.shared.lock();
            let mut ahead = Ahead::new(&state.index);
            for request in batch {
                if full && request.op.is_new_mail() {
                    rejected.push((request.done, self.full_error()));
                    continue;
                }
                match ahead.admit(&request.op) {
                    Ok(()) => accepted.push(request),
                    Err(e) => rejected.push((request.done, e)),
                }
            }
        }
        for (done, error) in rejected {
            let _ = done.send(Err(error));
        }
        accepted
    }

    /// Write and sync `self.buf` at `base`; on failure cut the file back.
    fn append(&mut self, base: u64) -> Result<(), SpoolError> {
        if self.dirty {
            self.cut_back()?;
        }
        let file = Arc::clone(&self.active.handle.file);
        let path = &self.active.handle.path;
        let result = self
            .disk
            .write_at(&file, &self.buf, base)
            .map_err(|e| SpoolError::io("append to", path, e))
            .and_then(|()| {
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let synced = self.disk.sync_data(&file);
                self.linger.record_sync(started.elapsed());
                synced.map_err(|e| SpoolError::io("fdatasync", path, e))
            });
        if let Err(e) = &result {
            tracing::warn!(error = %e, "spool: append failed; cutting the segment back");
            self.dirty = true;
            if let Err(e) = self.cut_back() {
                tracing::warn!(error = %e, "spool: cannot cut the segment back yet; will retry before the next append");
            }
        }
        result
    }

    fn cut_back(&mut self) -> Result<(), SpoolError> {
        let handle = &self.active.handle;
        handle
            .file
            .set_len(self.active.len)
            .map_err(|e| SpoolError::io("truncate", &handle.path, e))?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.disk
            .sync_data(&handle.file)
            .map_err(|e| SpoolError::io("fdatasync", &handle.path, e))?;
        self.dirty = false;
        Ok(())
    }

    fn rotate(&mut self) {
        let number = self.next_number;
        let salt = self.active.handle.salt;
        match segment::create(&self.queue_dir, number, salt) {
            Ok((file, path)) => {
                let handle = SegmentHandle {
                    file: Arc::new(file),
                    path,
                    salt,
                };
                let len = SEGMENT_HEADER_LEN as u64;
                self.shared.lock().add_segment(number, handle.clone(), len);
                self.active = Active {
                    number,
                    handle,
                    len,
                };
                self.next_number = number + 1;
                self.dirty = false;
                tracing::debug!(segment = number, "spool: started a new segment");
            }
            Err(e) => {
                tracing::warn!(error = %e, "spool: cannot start a new segment; appending to the current one");
            }
        }
    }

    /// Delete every segment the index no longer needs, oldest first, each
    /// deletion made durable before the next so none can be undone by a
    /// crash after a later one (see `index` for why order matters).
    pub(crate) fn collect(&mut self) {
        loop {
            let (number, path) = {
                let mut state = self.shared.lock();
                let Some(number) = state.index.collectable(self.active.number) else {
                    return;
                };
                let Some(handle) = state.files.get(&number) else {
                    state.drop_segment(number);
                    continue;
                };
                (number, handle.path.clone())
            };
            if let Some(&end) = self.carried_in.get(&number) {
                // Event-log lines live here until the event log has them.
                // Before the log is back (start-up) it cannot take them
                // over yet: the segment waits, and so do later ones.
                let Some(log) = self.shared.before_steps.get() else {
                    return;
                };
                log.0.wait(end);
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "spool: cannot delete a spent segment");
                    return;
                }
            }
            if let Err(e) = segment::sync_dir(&self.queue_dir) {
                tracing::warn!(error = %e, "spool: cannot make a segment deletion durable");
                return;
            }
            self.shared.lock().drop_segment(number);
            self.carried_in.remove(&number);
            tracing::debug!(segment = number, "spool: deleted a spent segment");
        }
    }
}

/// Apply one written request to the index: whether it was a commit, and
/// whether it may have released a segment.
fn apply(index: &mut Index, op: Op, segment: u64, offset: u64) -> (bool, bool) {
    let (mut commit, mut released) = (false, false);
    match op {
        Op::Commit {
            id,
            meta,
            frame,
            notice,
            carried,
        } => {
            let len = carried
                .as_ref()
                .map_or(frame.len() as u64, |c| c.message_len);
            let location = Location {
                segment,
                offset,
                len,
            };
            index.insert_new(id, meta, location);
            if let Some((about, notice)) = notice {
                index.notice(&about, notice, location);
                released = true;
            }
            if let Some(carried) = carried {
                // The frame is the message's record, then the
                // states record, then the hold record.
                let at = |start: u64, len: u64| Location {
                    segment,
                    offset: offset + start,
                    len,
                };
                let (m, s) = (carried.message_len, carried.states_len);
                if !carried.states.is_empty() {
                    index.set_states(&id, &carried.states, at(m, s));
                }
                if carried.held {
                    let held_len = (frame.len() as u64).saturating_sub(m + s);
                    index.set_held(&id, true, at(m + s, held_len));
                }
            }
            commit = true;
        }
        Op::Remove { id, .. } => {
            index.remove(&id, segment);
            released = true;
        }
        Op::States { id, updates, frame } => {
            let location = Location {
                segment,
                offset,
                len: frame.len() as u64,
            };
            index.set_states(&id, &updates, location);
            released = true;
        }
        Op::Held { id, held, frame } => {
            let location = Location {
                segment,
                offset,
                len: frame.len() as u64,
            };
            index.set_held(&id, held, location);
            released = true;
        }
        Op::Probe => {}
    }
    (commit, released)
}
