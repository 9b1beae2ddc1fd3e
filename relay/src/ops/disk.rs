//! Free and total space of the filesystem the spool lives on. The spool's
//! own byte counts say nothing about a volume filled by something else, and
//! a relay whose spool cannot grow refuses mail: the alert needs both.

use std::path::Path;

/// Space of one filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiskSpace {
    /// What an unprivileged writer may still use (`f_bavail`): the relay
    /// does not run as root, so the root reserve is not its to count.
    pub free: u64,
    pub total: u64,
}

/// The space of the filesystem holding `path` (statvfs).
pub(crate) fn disk_space(path: &Path) -> std::io::Result<DiskSpace> {
    let s = rustix::fs::statvfs(path)?;
    Ok(DiskSpace {
        free: s.f_bavail.saturating_mul(s.f_frsize),
        total: s.f_blocks.saturating_mul(s.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `df`'s figures for the filesystem of `path`: (available, size).
    fn df(path: &Path) -> (u64, u64) {
        let out = std::process::Command::new("df")
            .args(["--output=avail,size", "-B1"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "df failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let figures: Vec<u64> = text
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        (figures[0], figures[1])
    }

    #[test]
    fn space_is_the_one_df_reports_for_the_same_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(dir.path()).unwrap();
        let (avail, size) = df(dir.path());
        assert_eq!(space.total, size);
        assert!(space.free <= space.total, "{space:?}");
        // Others write to the same disk between the two reads.
        let drift = space.free.abs_diff(avail);
        assert!(drift < size / 100, "statvfs {space:?}, df avail {avail}");
    }

    #[test]
    fn a_missing_directory_is_an_error_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert!(disk_space(&dir.path().join("gone")).is_err());
    }
}
