//! The seam between the writer and the two calls whose failure it must
//! survive. Production uses `OsDisk`; tests substitute a disk that fills
//! up or fails to sync, to prove a failed commit leaves the spool usable.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub(crate) trait Disk: Send + Sync {
    /// Write all of `buf` at `offset` (the writer appends at its own offset,
    /// so the file position never matters).
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: data and the size, not the timestamps.
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OsDisk;

impl Disk for OsDisk {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}
