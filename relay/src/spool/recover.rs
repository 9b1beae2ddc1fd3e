//! Recovery: rebuild the index from the segments, in write order.
//!
//! A torn tail (the crash interrupted an append) is cut off; a damaged
//! record with good ones after it is skipped, never fatal; a segment whose
//! header is unreadable is not loaded. Whatever is not loaded goes to
//! `DIR/quarantine/` — a segment without a header is moved there, the
//! bytes of a damaged record or a torn tail are copied there — with a log
//! line naming the file, so a human can look and nothing vanishes
//! silently. Read-only recovery (for admin commands on a live spool) does
//! the same bookkeeping without touching any file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::SpoolError;
use super::record::{self, PayloadError, Record};
use super::segment::{self, Found, SEGMENT_HEADER_LEN};
use super::state::{CarriedEvents, SegmentHandle, State};
use super::types::{Location, Recovery};

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
        recovery.skipped_records += 1;
        let aside = set_aside(path, access);
        recovery.quarantined.extend(aside);
        return Ok(());
    };
    let scan = segment::scan(&buf, SEGMENT_HEADER_LEN, salt);
    let quarantine = Quarantine { path, access };
    for range in &scan.skipped {
        let saved = quarantine.save(&buf[range.clone()], range.start, "damaged");
        tracing::warn!(
            segment = %path.display(), offset = range.start, bytes = range.len(),
            quarantined = %shown(&saved),
            "spool: skipping a damaged record; the records after it are kept"
        );
        recovery.skipped_records += 1;
        recovery.quarantined.extend(saved);
    }
    let mut end = buf.len();
    if let Some(torn) = &scan.torn {
        // A crash during an append leaves part of a record nobody was told
        // about; damage at the end of a file looks the same, so bytes that
        // are not just zeros are kept for a human before being cut off.
        let bytes = &buf[torn.clone()];
        let saved = if bytes.iter().any(|b| *b != 0) {
            quarantine.save(bytes, torn.start, "torn")
        } else {
            None
        };
        tracing::warn!(
            segment = %path.display(), offset = torn.start, bytes = torn.len(),
            quarantined = %shown(&saved),
            "spool: cutting off an incomplete write (crash during an append, or damage at the end)"
        );
        recovery.truncated_bytes += torn.len() as u64;
        recovery.quarantined.extend(saved);
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
        if let Err(e) = replay(number, found, state) {
            let saved = quarantine.save(
                &buf[found.offset..found.offset + found.len()],
                found.offset,
                "unreadable",
            );
            tracing::warn!(
                segment = %path.display(), offset = found.offset, error = %e,
                quarantined = %shown(&saved),
                "spool: skipping a record that cannot be read"
            );
            recovery.skipped_records += 1;
            recovery.quarantined.extend(saved);
        }
    }
    Ok(())
}

/// Apply one verified record to the index.
fn replay(number: u64, found: &Found<'_>, state: &mut State) -> Result<(), PayloadError> {
    let record = record::parse_record(found.kind, found.payload)?;
    let location = Location {
        segment: number,
        offset: found.offset as u64,
        len: found.len() as u64,
    };
    if let Record::Events { first, count, .. } = record {
        state.carried.push(CarriedEvents {
            location,
            end: first.saturating_add(u64::from(count)),
        });
    }
    state.index.apply(location, record);
    Ok(())
}

/// What recovery makes of one segment's bytes, with no file involved: for
/// checking a copied segment, and for the fuzz target of the decoder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentCheck {
    /// The bytes start with a segment header (without one nothing is read).
    pub header: bool,
    /// Records that verify and were replayed.
    pub records: usize,
    /// Records that verify but whose payload cannot be used.
    pub unreadable: usize,
    /// Damaged byte ranges skipped between good records.
    pub damaged: usize,
    /// Bytes after the last good record.
    pub torn_bytes: u64,
    /// Messages queued once every record is replayed.
    pub messages: usize,
}

pub fn check_segment(bytes: &[u8]) -> SegmentCheck {
    let Some(salt) = segment::decode_header(bytes) else {
        return SegmentCheck::default();
    };
    let scan = segment::scan(bytes, SEGMENT_HEADER_LEN, salt);
    let mut state = State::default();
    state.index.add_segment(1, bytes.len() as u64);
    let mut check = SegmentCheck {
        header: true,
        damaged: scan.skipped.len(),
        torn_bytes: scan.torn.as_ref().map_or(0, |t| t.len() as u64),
        ..SegmentCheck::default()
    };
    for found in &scan.records {
        match replay(1, found, &mut state) {
            Ok(()) => check.records += 1,
            Err(_) => check.unreadable += 1,
        }
    }
    check.messages = state.index.len();
    check
}

fn truncate(file: &File, path: &Path, len: u64) -> Result<(), SpoolError> {
    file.set_len(len)
        .map_err(|e| SpoolError::io("truncate", path, e))?;
    file.sync_all()
        .map_err(|e| SpoolError::io("fsync", path, e))
}

/// Without its header a segment's records cannot be verified: move the
/// file into the quarantine for a human, out of the way of the next
/// recovery. Returns where it went.
fn set_aside(path: &Path, access: Access) -> Option<PathBuf> {
    if access == Access::ReadOnly {
        tracing::error!(segment = %path.display(), "spool: segment header unreadable; its messages are not loaded");
        return None;
    }
    let name = path.file_name()?;
    let moved = quarantine_dir(path).and_then(|dir| {
        let aside = dir.join(name);
        fs::rename(path, &aside)?;
        if let Some(queue_dir) = path.parent() {
            let _ = segment::sync_dir(queue_dir);
        }
        let _ = segment::sync_dir(&dir);
        Ok(aside)
    });
    match moved {
        Ok(aside) => {
            tracing::error!(segment = %path.display(), quarantined = %aside.display(),
                "spool: segment header unreadable; the file is quarantined and its messages are not loaded");
            Some(aside)
        }
        Err(e) => {
            tracing::error!(segment = %path.display(), error = %e,
                "spool: segment header unreadable and the file cannot be quarantined; its messages are not loaded");
            None
        }
    }
}

/// `DIR/quarantine` for a segment in `DIR/queue`, created if missing.
fn quarantine_dir(segment: &Path) -> std::io::Result<PathBuf> {
    let spool_dir = segment
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| std::io::Error::other("segment outside a spool directory"))?;
    let dir = spool_dir.join("quarantine");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Copies of bytes recovery cannot use, so nothing is silently dropped.
struct Quarantine<'a> {
    path: &'a Path,
    access: Access,
}

impl Quarantine<'_> {
    /// Write `bytes` (found at `offset`) to
    /// `quarantine/<segment>.<offset>.<what>`; where, if it worked.
    fn save(&self, bytes: &[u8], offset: usize, what: &str) -> Option<PathBuf> {
        if self.access == Access::ReadOnly {
            return None;
        }
        let name = self.path.file_name()?.to_string_lossy().into_owned();
        let written = quarantine_dir(self.path).and_then(|dir| {
            let target = dir.join(format!("{name}.{offset}.{what}"));
            let mut file = File::create(&target)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            let _ = segment::sync_dir(&dir);
            Ok(target)
        });
        match written {
            Ok(target) => Some(target),
            Err(e) => {
                tracing::error!(segment = %self.path.display(), offset, error = %e,
                    "spool: cannot quarantine unusable bytes");
                None
            }
        }
    }
}

fn shown(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or_else(|| "-".to_string(), |p| p.display().to_string())
}
