//! The lock that makes one writer per ingest reference: an OS file lock (`flock`) on
//! `ingest/<id>/lock`. It excludes other processes and other writers of this process alike
//! (each writer opens its own file description), and the kernel releases it when the
//! holder dies, so a crashed writer never holds its reference.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::store::records::Nanos;

/// A held reference lock; dropping it releases the reference.
#[derive(Debug)]
pub(crate) struct RefLock {
    _file: File,
    path: PathBuf,
}

impl RefLock {
    /// Takes the lock of the ingest directory `dir` without waiting. `Unavailable`, naming the
    /// holder and how long it has held the reference, when a live writer has it.
    pub(crate) fn try_acquire(dir: &Path, reference: &str) -> Result<RefLock> {
        let path = dir.join("lock");
        // A holder that removes the directory after committing leaves a file description
        // behind for whoever opened it meanwhile: such a lock is on an unlinked file, so check
        // that the path still names the locked file, and start over when it does not.
        for _ in 0..64 {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(_) => fs::create_dir_all(dir)
                    .map_err(|e| Error::io("create ingest directory", dir, e))?,
            }
            // Created new (the common case: a fresh reference) it is empty, so writing the
            // holder needs no truncate first.
            let open = |new: bool| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(!new)
                    .create_new(new)
                    .truncate(false)
                    .open(&path)
            };
            let (mut file, new) = match open(true) {
                Ok(f) => (f, true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match open(false) {
                    Ok(f) => (f, false),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("open ingest lock", &path, e)),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open ingest lock", &path, e)),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Unavailable(format!(
                        "ingest ref {reference:?} is locked by {}",
                        describe_holder(&path)
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("lock ingest", &path, e));
                }
            }
            let same = match (file.metadata(), fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            // Who holds it, for the Unavailable message of the next comer. Best effort.
            if !new {
                let _ = file.set_len(0);
            }
            let _ = write!(file, "{} {}", std::process::id(), Nanos::now().0);
            return Ok(RefLock { _file: file, path });
        }
        Err(Error::Unavailable(format!(
            "ingest ref {reference:?}: its directory keeps being replaced under us"
        )))
    }

    /// Removes the lock file (the caller is about to remove the ingest directory); the lock
    /// itself is released when this value is dropped.
    pub(crate) fn remove_file(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// "pid 123 for 2.5s", read from the lock file's contents.
fn describe_holder(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut parts = text.split_whitespace();
    let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
    let since = parts.next().and_then(|p| p.parse::<u64>().ok());
    match (pid, since) {
        (Some(pid), Some(since)) => {
            let held = SystemTime::now()
                .duration_since(SystemTime::from(Nanos(since)))
                .unwrap_or(Duration::ZERO);
            let me = if pid == std::process::id() {
                " (this process)"
            } else {
                ""
            };
            format!(
                "a live writer, pid {pid}{me}, held for {:.1}s",
                held.as_secs_f64()
            )
        }
        _ => "a live writer".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn second_holder_is_unavailable_until_release() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x");
        let a = RefLock::try_acquire(&dir, "r").unwrap();
        let err = RefLock::try_acquire(&dir, "r").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("held for"), "{err}");
        drop(a);
        RefLock::try_acquire(&dir, "r").unwrap();
    }

    #[test]
    fn removed_directory_is_recreated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x");
        let a = RefLock::try_acquire(&dir, "r").unwrap();
        a.remove_file();
        fs::remove_dir(&dir).unwrap();
        drop(a);
        RefLock::try_acquire(&dir, "r").unwrap();
    }
}
