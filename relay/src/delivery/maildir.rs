//! Delivery into a maildir (<https://cr.yp.to/proto/maildir.html>):
//! `PATH/<local part>/{tmp,new,cur}`. A message is written to `tmp/`,
//! fsync'd, renamed into `new/` and the directory fsync'd, so a reader
//! (Dovecot looks at `new/`) never sees half a message, and a message
//! reported delivered survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Outcome;

/// Why a maildir delivery failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MaildirError {
    /// The local part cannot be a path component: permanent.
    #[error("local part {0:?} cannot name a maildir")]
    UnsafeLocalPart(String),
    /// The disk said no: full, read-only, gone. Temporary.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<MaildirError> for Outcome {
    fn from(e: MaildirError) -> Self {
        match e {
            MaildirError::UnsafeLocalPart(_) => Outcome::perm(e.to_string()),
            MaildirError::Io { .. } => Outcome::temp(e.to_string()),
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MaildirError {
    let path = path.to_path_buf();
    move |source| MaildirError::Io { op, path, source }
}

/// The maildirs under one directory.
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
    /// Our host name as a file name part (the spec's escapes applied).
    host: String,
    /// The `Q` part of unique names: deliveries within one microsecond.
    counter: Arc<AtomicU64>,
}

/// A message written and synced in `tmp/`, not yet visible in `new/`.
/// Dropped without [`commit`](Pending::commit), it removes its file.
#[derive(Debug)]
pub(crate) struct Pending {
    tmp: PathBuf,
    new: PathBuf,
    new_dir: PathBuf,
    committed: Committed,
}

#[derive(Debug, PartialEq, Eq)]
enum Committed {
    No,
    Yes,
}

impl Maildir {
    pub(crate) fn new(root: impl Into<PathBuf>, hostname: &str) -> Self {
        // The spec: `/` and `:` in the host name become \057 and \072.
        let host = hostname.replace('/', "\\057").replace(':', "\\072");
        Maildir {
            root: root.into(),
            host,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Deliver to `local_part`'s maildir off the async runtime.
    pub(crate) async fn deliver(&self, sender: &str, local_part: &str, body: &[u8]) -> Outcome {
        let (this, sender, local_part, body) = (
            self.clone(),
            sender.to_string(),
            local_part.to_string(),
            body.to_vec(),
        );
        tokio::task::spawn_blocking(move || this.deliver_blocking(&sender, &local_part, &body))
            .await
            .unwrap_or_else(|e| Outcome::temp(format!("maildir delivery task failed: {e}")))
    }

    /// Deliver, blocking the thread on the disk.
    pub(crate) fn deliver_blocking(&self, sender: &str, local_part: &str, body: &[u8]) -> Outcome {
        let outcome = match self
            .write_tmp(sender, local_part, body)
            .and_then(Pending::commit)
        {
            Ok(path) => Outcome::Delivered {
                reply: format!("delivered to maildir {}", path.display()),
            },
            Err(e) => e.into(),
        };
        tracing::info!(
            local_part,
            outcome = outcome.kind(),
            reply = outcome.text(),
            "maildir delivery result"
        );
        outcome
    }

    /// Write the message into `tmp/` and fsync it.
    pub(crate) fn write_tmp(
        &self,
        sender: &str,
        local_part: &str,
        body: &[u8],
    ) -> Result<Pending, MaildirError> {
        check_local_part(local_part)?;
        let dir = self.root.join(local_part);
        let new_dir = dir.join("new");
        let fresh = !new_dir.is_dir();
        for sub in ["tmp", "new", "cur"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io("create", &path))?;
        }
        if fresh {
            // New directory entries are only durable once their parents
            // are synced.
            sync_dir(&dir)?;
            sync_dir(&self.root)?;
        }
        let name = self.unique_name();
        let tmp = dir.join("tmp").join(&name);
        // create_new: never overwrite, even if a name repeats.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        let pending = Pending {
            new: new_dir.join(&name),
            tmp,
            new_dir,
            committed: Committed::No,
        };
        file.write_all(&message_file(sender, body))
            .and_then(|()| file.sync_all())
            .map_err(io("write", &pending.tmp))?;
        Ok(pending)
    }

    /// `<secs>.M<usecs>P<pid>Q<counter>.<host>`, the spec's unique name.
    fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let q = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{q}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.host
        )
    }
}

impl Pending {
    /// Rename into `new/` and fsync `new/`: from here on the message is
    /// visible and durable. Returns its path.
    pub(crate) fn commit(mut self) -> Result<PathBuf, MaildirError> {
        fs::rename(&self.tmp, &self.new).map_err(io("rename", &self.tmp))?;
        self.committed = Committed::Yes;
        sync_dir(&self.new_dir)?;
        Ok(self.new.clone())
    }

    /// Where the message waits in `tmp/`.
    #[cfg(test)]
    pub(crate) fn tmp_path(&self) -> &Path {
        &self.tmp
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.committed == Committed::No {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), MaildirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// The local part must be one harmless path component: no separator, no
/// NUL, nothing that climbs (`..`) or hides (a leading dot is also how
/// maildir++ names folders).
fn check_local_part(local_part: &str) -> Result<(), MaildirError> {
    if local_part.is_empty()
        || local_part.starts_with('.')
        || local_part.contains(['/', '\0'])
        || local_part.contains("..")
    {
        return Err(MaildirError::UnsafeLocalPart(local_part.to_string()));
    }
    Ok(())
}

/// The file's bytes: a Return-Path header (RFC 5321 §4.4: the final
/// delivery adds it) and the message with LF line endings, the Unix
/// convention maildir readers expect (Dovecot itself saves LF).
fn message_file(sender: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + sender.len() + 20);
    out.extend_from_slice(format!("Return-Path: <{sender}>\n").as_bytes());
    let mut rest = body;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        let (line, tail) = rest.split_at(i);
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = match tail {
            [b'\r', b'\n', after @ ..] => after,
            [_, after @ ..] => after,
            [] => tail,
        };
    }
    out.extend_from_slice(rest);
    if !rest.is_empty() {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        // Another process looks, as Dovecot would.
        let out = Command::new("ls")
            .arg("-1")
            .arg(dir)
            .output()
            .expect("run ls");
        assert!(out.status.success(), "ls {}: {:?}", dir.display(), out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn unsafe_local_parts_are_refused_for_good() {
        let root = tempfile::tempdir().expect("tempdir");
        let maildir = Maildir::new(root.path(), "mx.test");
        for bad in [
            "", ".", "..", ".hidden", "a/b", "../etc", "a..b", "nul\0x", "/abs",
        ] {
            let got = maildir.deliver_blocking("a@x.test", bad, b"x\r\n");
            assert!(matches!(got, Outcome::PermFail { .. }), "{bad:?}: {got:?}");
        }
        assert!(
            fs::read_dir(root.path())
                .expect("read root")
                .next()
                .is_none()
        );
    }

    #[test]
    fn a_message_lands_in_new_with_lf_endings_and_a_return_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let maildir = Maildir::new(root.path(), "mx:1/test");
        let body = b"Subject: hi\r\n\r\n.dot line\r\nbare lf\nend";
        let got = maildir.deliver_blocking("", "alice", body);
        assert!(matches!(got, Outcome::Delivered { .. }), "{got:?}");
        let dir = root.path().join("alice");
        assert!(dir.join("cur").is_dir());
        assert!(listing(&dir.join("tmp")).is_empty());
        let names = listing(&dir.join("new"));
        assert_eq!(names.len(), 1, "{names:?}");
        let name = &names[0];
        let pid = format!("P{}Q0.mx\\0721\\057test", std::process::id());
        assert!(name.contains(".M") && name.ends_with(&pid), "{name}");
        let text = fs::read_to_string(dir.join("new").join(name)).expect("read message");
        assert_eq!(
            text,
            "Return-Path: <>\nSubject: hi\n\n.dot line\nbare lf\nend\n"
        );
        // A second message gets another name.
        maildir.deliver_blocking("a@x.test", "alice", b"x\r\n");
        assert_eq!(listing(&dir.join("new")).len(), 2);
    }

    #[test]
    fn a_reader_sees_the_message_only_after_the_rename() {
        let root = tempfile::tempdir().expect("tempdir");
        let maildir = Maildir::new(root.path(), "mx.test");
        let new = root.path().join("bob").join("new");
        let pending = maildir
            .write_tmp("a@x.test", "bob", b"Subject: x\r\n\r\nwhole\r\n")
            .expect("write tmp");
        assert!(listing(&new).is_empty(), "visible before commit");
        assert_eq!(listing(&root.path().join("bob").join("tmp")).len(), 1);
        let path = pending.commit().expect("commit");
        assert_eq!(
            listing(&new),
            vec![
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned()
            ]
        );
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "Return-Path: <a@x.test>\nSubject: x\n\nwhole\n"
        );
        // An abandoned message leaves nothing behind.
        let abandoned = maildir.write_tmp("", "bob", b"x").expect("write tmp");
        let tmp = abandoned.tmp_path().to_path_buf();
        drop(abandoned);
        assert!(!tmp.exists());
        assert_eq!(listing(&new).len(), 1);
    }

    #[tokio::test]
    async fn disk_errors_are_temporary() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("not-a-dir");
        fs::write(&file, b"x").expect("write");
        let got = Maildir::new(&file, "mx.test")
            .deliver("", "alice", b"x\r\n")
            .await;
        assert!(
            matches!(&got, Outcome::TempFail { reason } if reason.starts_with("cannot create")),
            "{got:?}"
        );
    }
}
