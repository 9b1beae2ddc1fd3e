//! What the writer and the readers share: the index plus an open handle
//! per segment, behind one mutex held only for bookkeeping, never for I/O.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::error::SpoolError;
use super::id::QueueId;
use super::index::Index;
use super::record::{self, Frame, HEADER_LEN, Record};
use super::types::{Location, SpoolStats};

/// An open segment. Readers keep their own `Arc`, so a body can still be
/// read while the collector unlinks the file.
#[derive(Clone, Debug)]
pub(crate) struct SegmentHandle {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub salt: u64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub index: Index,
    pub files: BTreeMap<u64, SegmentHandle>,
    /// Event-log lines found carried in the segments at recovery, until
    /// the event log takes back those it lacks (see `Spool::carried_events`).
    pub carried: Vec<CarriedEvents>,
}

/// An events record: where it is, and how far its lines go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CarriedEvents {
    pub location: Location,
    /// One past its last line's.
    pub end: u64,
}

impl State {
    pub(crate) fn add_segment(&mut self, number: u64, handle: SegmentHandle, bytes: u64) {
        self.files.insert(number, handle);
        self.index.add_segment(number, bytes);
    }

    pub(crate) fn drop_segment(&mut self, number: u64) {
        self.files.remove(&number);
        self.index.drop_segment(number);
    }

    /// Messages, bytes and segments; the counters are the caller's.
    pub(crate) fn stats(&self) -> SpoolStats {
        SpoolStats {
            messages: self.index.len(),
            bytes: self.index.body_bytes(),
            segments: self.index.segment_count(),
            live_bytes: self.index.segments().live_bytes(),
            disk_bytes: self.index.segments().total_bytes(),
            ..SpoolStats::default()
        }
    }

    /// Where to read `id`'s body from, without holding the lock to read it.
    pub(crate) fn body_ref(&self, id: &QueueId) -> Result<BodyRef, SpoolError> {
        let entry = self.index.get(id).ok_or(SpoolError::NotFound { id: *id })?;
        let record = self
            .record_ref(entry.location())
            .ok_or(SpoolError::NotFound { id: *id })?;
        Ok(BodyRef { id: *id, record })
    }

    /// The record at `location`, to read without holding the lock.
    pub(crate) fn record_ref(&self, location: Location) -> Option<RecordRef> {
        let segment = self.files.get(&location.segment)?;
        Some(RecordRef {
            segment: segment.clone(),
            location,
        })
    }
}

/// One record on disk.
pub(crate) struct RecordRef {
    segment: SegmentHandle,
    location: Location,
}

impl RecordRef {
    /// Read the whole frame back and verify it again, so damage on disk
    /// since recovery is an error rather than a delivered (or copied)
    /// corruption. The record's kind and its frame.
    pub(crate) fn read(&self) -> Result<(u8, Vec<u8>), SpoolError> {
        let len = usize::try_from(self.location.len).map_err(|e| self.corrupt(e.to_string()))?;
        let mut frame = vec![0; len];
        self.segment
            .file
            .read_exact_at(&mut frame, self.location.offset)
            .map_err(|e| SpoolError::io("read", &self.segment.path, e))?;
        let Frame::Complete { kind, payload } = record::decode_frame(&frame, self.segment.salt)
        else {
            return Err(self.corrupt("the record no longer verifies".into()));
        };
        if HEADER_LEN + payload.len() != frame.len() {
            return Err(self.corrupt("the record changed length".into()));
        }
        Ok((kind, frame))
    }

    pub(crate) fn corrupt(&self, reason: String) -> SpoolError {
        SpoolError::Corrupt {
            path: self.segment.path.clone(),
            offset: self.location.offset,
            reason,
        }
    }
}

pub(crate) struct BodyRef {
    id: QueueId,
    record: RecordRef,
}

impl BodyRef {
    pub(crate) fn read(self) -> Result<Vec<u8>, SpoolError> {
        let (kind, frame) = self.record.read()?;
        match record::parse_record(kind, &frame[HEADER_LEN..]) {
            Ok(
                Record::Message { id, body, .. }
                | Record::Notice { id, body, .. }
                | Record::Copy { id, body, .. },
            ) if id == self.id => Ok(body.to_vec()),
            Ok(_) => Err(self
                .record
                .corrupt(format!("the record is not message {}", self.id))),
            Err(e) => Err(self.record.corrupt(e.to_string())),
        }
    }
}

/// Counters and state shared by the `Spool` handles and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub commits: AtomicU64,
    pub syncs: AtomicU64,
    /// Records compaction copied forward, and their bytes.
    pub compacted_records: AtomicU64,
    pub compacted_bytes: AtomicU64,
    /// A compaction pass is under way.
    pub compacting: AtomicBool,
    /// The disk filled up: new messages are refused (see `reserve`).
    pub full: AtomicBool,
    /// Notified by the writer after every batch that changed the queue.
    pub changed: Arc<Notify>,
    /// Set with the spool's events: see [`super::op::StepBarrier`].
    pub before_steps: std::sync::OnceLock<super::op::StepBarrier>,
}

impl Shared {
    pub(crate) fn new(state: State) -> Shared {
        Shared {
            state: Mutex::new(state),
            ..Shared::default()
        }
    }

    /// The state is consistent between statements that touch it, so a
    /// panic elsewhere while it was held does not make it unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
