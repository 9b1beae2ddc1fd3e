//! The periods on disk: one small JSON file per period in
//! `SPOOL_DIR/reports/`, replaced atomically (written beside, fsync'd,
//! renamed over, the directory fsync'd) so a crash leaves the old file
//! or the new one, never half of either. A file that cannot be read back
//! (torn by a disk fault, edited by hand) is logged and set aside as
//! `*.corrupt`; the relay starts without its counts rather than not at all.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use mailrelay_crds::reports::PeriodAggregates;

const PREFIX: &str = "period-";
const SUFFIX: &str = ".json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a period's aggregates: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The reports directory.
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    /// `dir`, created if missing.
    pub(crate) fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, start: i64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{start}{SUFFIX}"))
    }

    /// The start of the period a file name holds.
    fn start_of(name: &str) -> Option<i64> {
        name.strip_prefix(PREFIX)?
            .strip_suffix(SUFFIX)?
            .parse()
            .ok()
    }

    /// Every period stored. Unreadable files are logged and renamed
    /// `*.corrupt`; leftover temporary files are removed.
    pub(crate) fn load_all(&self) -> Vec<PeriodAggregates> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot list the report aggregates");
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(start) = Self::start_of(&name) else {
                continue;
            };
            match read(&path) {
                Ok(p) if p.start == start => found.push(p),
                Ok(p) => self.set_aside(
                    &path,
                    &format!("holds period {} under the name of {start}", p.start),
                ),
                Err(e) => self.set_aside(&path, &e.to_string()),
            }
        }
        found.sort_by_key(|p| p.start);
        found
    }

    fn set_aside(&self, path: &Path, why: &str) {
        let aside = path.with_extension("json.corrupt");
        let moved = fs::rename(path, &aside);
        tracing::error!(file = %path.display(), error = why, set_aside = %aside.display(),
            moved = moved.is_ok(), "report aggregates unreadable; set aside, their counts are lost");
    }

    /// Replace the file of `p`'s period with `p`. One writer at a time:
    /// the temporary file's name is the period's (`Reports` serialises
    /// its writes).
    pub(crate) fn write(&self, p: &PeriodAggregates) -> Result<(), StoreError> {
        let path = self.path(p.start);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec(p).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&json).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        self.sync_dir()
    }

    /// Delete the file of the period starting at `start`, if any.
    pub(crate) fn remove(&self, start: i64) -> Result<(), StoreError> {
        let path = self.path(start);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Delete the files of the periods starting at `starts` (memory
    /// holds every stored period from start-up on, so it knows them all).
    pub(crate) fn prune(&self, starts: &[i64]) -> Result<(), StoreError> {
        for s in starts {
            self.remove(*s)?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

fn read(path: &Path) -> Result<PeriodAggregates, StoreError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    })
}
