//! A small tmpfs mounted for one test (tests run as root), so a test can
//! fill a filesystem for real. Unmounted (lazily, so a process still
//! holding files there cannot keep it) when the guard drops.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    pub path: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`24m`) on `path`, created if missing.
    /// Fails the test, saying why, where mounting is impossible.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (this test needs root and mount(2)): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
            mounted: true,
        }
    }

    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let status = Command::new("umount").arg("-l").arg(&self.path).status();
        match status {
            Ok(s) if s.success() => self.mounted = false,
            other => eprintln!("cannot unmount {}: {other:?}", self.path.display()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.unmount();
    }
}
