//! Recovery: rebuild the index from the segments, in write order.
//!
//! A torn tail (the crash interrupted an append) is cut off; a damaged
//! record with good ones after it is skipped and logged, never fatal; a
//! segment whose header is unreadable is renamed `*.corrupt` and left for
//! a human. Read-only recovery (for admin commands on a live spool) does
//! the same bookkeeping without touching any file.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::Recovery;
use super::error::SpoolError;
use super::index::Location;
use super::record;
use super::segment::{self, SEGMENT_HEADER_LEN};
use super::state::{SegmentHandle, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    ReadWrite,
    ReadOnly,
}

pub(crate) struct Loaded {
    pub state: State,
    pub recovery: Recovery,
    /// Above every segment number on disk, loaded or set aside.
    pub next_number: u64,
}

pub(crate) fn load(queue_dir: &Path, access: Access) -> Result<Loaded, SpoolError> {
    let listing = segment::list(queue_dir)?;
    if access == Access::ReadWrite {
        for leftover in &listing.leftovers {
            if let Err(e) = fs::remove_file(leftover) {
                tracing::warn!(path = %leftover.display(), error = %e, "spool: cannot remove a half-created segment");
            }
        }
    }
    let mut state = State::default();
    let mut recovery = Recovery::default();
    let next_number = listing.segments.last().map_or(1, |(n, _)| n + 1);
    for (number, path) in listing.segments {
        load_segment(number, &path, access, &mut state, &mut recovery)?;
    }
    recovery.messages = state.index.len();
    Ok(Loaded {
        state,
        recovery,
        next_number,
    })
}

fn load_segment(
    number: u64,
    path: &Path,
    access: Access,
    state: &mut State,
    recovery: &mut Recovery,
) -> Result<(), SpoolError> {
    let writable = access == Access::ReadWrite;
    let mut file = match OpenOptions::new().read(true).write(writable).open(path) {
        Ok(file) => file,
        // A live relay collected it between listing and opening.
        Err(e) if !writable && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SpoolError::io("open", path, e)),
    };
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| SpoolError::io("read", path, e))?;
    let Some(salt) = segment::decode_header(&buf) else {
        set_aside(path, access);
        recovery.skipped_records += 1;
        return Ok(());
    };
    let scan = segment::scan(&buf, SEGMENT_HEADER_LEN, salt);
    for range in &scan.skipped {
        tracing::warn!(
            segment = %path.display(), offset = range.start, bytes = range.len(),
            "spool: skipping a damaged record; the records after it are kept"
        );
        recovery.skipped_records += 1;
    }
    let mut end = buf.len();
    if let Some(torn) = &scan.torn {
        tracing::warn!(
            segment = %path.display(), offset = torn.start, bytes = torn.len(),
            "spool: cutting off an incomplete write (crash during an append)"
        );
        recovery.truncated_bytes += torn.len() as u64;
        end = torn.start;
        if writable {
            truncate(&file, path, end as u64)?;
        }
    }
    let handle = SegmentHandle {
        file: Arc::new(file),
        path: path.to_path_buf(),
        salt,
    };
    state.add_segment(number, handle, end as u64);
    for found in &scan.records {
        match record::parse_record(found.kind, found.payload) {
            Ok(record) => {
                let location = Location {
                    segment: number,
                    offset: found.offset as u64,
                    len: found.len() as u64,
                };
                state.index.apply(location, record);
            }
            Err(e) => {
                tracing::warn!(
                    segment = %path.display(), offset = found.offset, error = %e,
                    "spool: skipping a record that cannot be read"
                );
                recovery.skipped_records += 1;
            }
        }
    }
    Ok(())
}

fn truncate(file: &File, path: &Path, len: u64) -> Result<(), SpoolError> {
    file.set_len(len)
        .map_err(|e| SpoolError::io("truncate", path, e))?;
    file.sync_all()
        .map_err(|e| SpoolError::io("fsync", path, e))
}

/// Without its header a segment's records cannot be verified: keep the
/// file for a human, out of the way of the next recovery.
fn set_aside(path: &Path, access: Access) {
    tracing::error!(segment = %path.display(), "spool: segment header unreadable; its messages are not loaded");
    if access == Access::ReadOnly {
        return;
    }
    let aside = path.with_extension("log.corrupt");
    if let Err(e) = fs::rename(path, &aside) {
        tracing::error!(segment = %path.display(), error = %e, "spool: cannot set the segment aside");
    }
}
