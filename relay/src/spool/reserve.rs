//! Room kept back for delivery when the disk fills up.
//!
//! A full disk must stop new mail (452 4.3.1) but not delivery: a
//! delivered message still needs its removal record, a deferred one its
//! new state, and a spent segment can only be deleted once a newer one
//! exists. So the spool keeps a ballast file, `DIR/reserve`, on its own
//! filesystem. When an append fails because the disk is full, the ballast
//! is deleted — the room it held is now free for those small records —
//! and new messages are refused. At most once per retry interval (when a
//! commit or a session asks), the spool checks whether twice the ballast
//! fits; when it does, space has come back: the ballast is written again
//! and new mail is taken. Twice, so that taking mail again leaves room
//! for some mail, instead of failing the next message and going full at
//! once.
//!
//! This needs no free-space query (std has none, and a quota or a
//! reserved-blocks setting makes one misleading anyway): the filesystem
//! answers the only question that matters, "do these bytes fit?".

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::disk::Disk;

/// The ballast written when the spool opens and after the disk was full.
pub const DEFAULT_RESERVE_BYTES: u64 = 8 << 20;
/// How often a full spool looks for space again.
/// Each look writes up to twice the reserve before the disk says no, so
/// not too often.
pub const DEFAULT_RESERVE_RETRY: Duration = Duration::from_secs(5);

const CHUNK: usize = 64 << 10;

/// Whether an I/O error means "no space" (as opposed to a failing disk).
pub(crate) fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge
    )
}

#[derive(Debug)]
pub(crate) struct Reserve {
    path: PathBuf,
    bytes: u64,
    retry: Duration,
    last_try: Option<Instant>,
}

impl Reserve {
    pub(crate) fn new(dir: &Path, bytes: u64, retry: Duration) -> Reserve {
        Reserve {
            path: dir.join("reserve"),
            bytes,
            retry,
            last_try: None,
        }
    }

    /// Write the ballast unless it is already whole. `Err`: it does not fit
    /// (what was written of it is removed again).
    pub(crate) fn fill(&mut self, disk: &dyn Disk) -> io::Result<()> {
        self.last_try = Some(Instant::now());
        if self.bytes == 0 || fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes) {
            return Ok(());
        }
        let written = write_zeros(disk, &self.path, self.bytes);
        if written.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        written
    }

    /// Give the ballast's room to whoever writes next.
    pub(crate) fn release(&mut self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether space has come back: twice the ballast fits. If so, the
    /// ballast is written again. `Err`: not yet (nothing is kept).
    pub(crate) fn refill(&mut self, disk: &dyn Disk) -> io::Result<()> {
        self.last_try = Some(Instant::now());
        let probe = self.path.with_extension("probe");
        let fits = write_zeros(disk, &probe, self.bytes.saturating_mul(2));
        let _ = fs::remove_file(&probe);
        fits?;
        self.fill(disk)
    }

    /// A retry interval has passed since the last `fill`.
    pub(crate) fn due(&self) -> bool {
        self.last_try.is_none_or(|t| t.elapsed() >= self.retry)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Real blocks, not a sparse file: the room must actually be taken.
/// Through the writer's `Disk`, so tests can fill the disk for it too.
fn write_zeros(disk: &dyn Disk, path: &Path, bytes: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = [0u8; CHUNK];
    let mut offset = 0;
    while offset < bytes {
        let n = usize::try_from(bytes - offset).map_or(CHUNK, |l| l.min(CHUNK));
        disk.write_at(&file, &zeros[..n], offset)?;
        offset += n as u64;
    }
    disk.sync_data(&file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::disk::OsDisk;

    #[test]
    fn the_ballast_is_written_whole_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut reserve = Reserve::new(dir.path(), 100_000, Duration::ZERO);
        reserve.fill(&OsDisk).unwrap();
        assert_eq!(fs::metadata(reserve.path()).unwrap().len(), 100_000);
        reserve.fill(&OsDisk).unwrap();
        reserve.release().unwrap();
        assert!(!reserve.path().exists());
        reserve.release().unwrap();
        assert!(reserve.due());
        reserve.refill(&OsDisk).unwrap();
        assert_eq!(fs::metadata(reserve.path()).unwrap().len(), 100_000);
        assert!(!reserve.path().with_extension("probe").exists());
    }

    #[test]
    fn only_running_out_of_room_counts_as_full() {
        assert!(is_no_space(&io::Error::from(ErrorKind::StorageFull)));
        assert!(is_no_space(&io::Error::from(ErrorKind::QuotaExceeded)));
        assert!(!is_no_space(&io::Error::other("EIO")));
    }
}
