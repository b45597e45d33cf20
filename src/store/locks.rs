//! The lock that makes one writer per ingest reference: an OS file lock (`flock`) on the
//! ingest's own data file, `ingest/<id>.data` (a batch locks `ingest/batch-…/lock`). It
//! excludes other processes and other writers of this process alike (each writer opens its
//! own file description), and the kernel releases it when the holder dies, so a crashed
//! writer never holds its reference.
//!
//! Locking the data file itself, rather than a lock file in a directory of its own, makes an
//! ingest cost one inode: a put creates its data file, links it into `blobs/` and unlinks
//! the ingest name, and the file system frees nothing (freeing and re-allocating inodes per
//! blob was the largest cost of concurrent small puts on ext4).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};

/// How long to ask again, in turn, before a lock found held is reported held. A process that
/// starts a child (fork, then exec) gives the child a copy of every descriptor it has open
/// until the exec closes them, and a lock dropped by one of its writers in that moment stays
/// held by the copy: without these few milliseconds, a program that runs commands while it
/// writes (a build tool) would see its own reference "locked" right after closing it.
const LOCKED_WAITS_MS: [u64; 5] = [1, 2, 4, 8, 16];

/// A held lock on one file; dropping it (and every clone of [`RefLock::file`]) releases it.
#[derive(Debug)]
pub(crate) struct RefLock {
    file: Arc<File>,
    path: PathBuf,
    created: bool,
}

impl RefLock {
    /// Opens `path` read-write, creating it when missing, and locks it without waiting.
    /// `Unavailable`, naming the holder, when a live writer has it; `what` names the
    /// reference in that message.
    pub(crate) fn acquire(path: &Path, what: &str) -> Result<RefLock> {
        Self::acquire_with(path, what, true).map(|l| l.expect("created when missing"))
    }

    /// [`RefLock::acquire`] of a file that exists; `None` when it does not.
    pub(crate) fn acquire_existing(path: &Path, what: &str) -> Result<Option<RefLock>> {
        Self::acquire_with(path, what, false)
    }

    fn acquire_with(path: &Path, what: &str, create: bool) -> Result<Option<RefLock>> {
        // A holder that unlinks the file after committing leaves a file description behind
        // for whoever opened it meanwhile: such a lock is on an unlinked file, so check that
        // the path still names the locked file, and start over when it does not.
        for _ in 0..64 {
            let open = |new: bool| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(new)
                    .open(path)
            };
            let (file, created) = match create.then(|| open(true)) {
                Some(Ok(f)) => (f, true),
                Some(Err(e)) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(Error::io("create ingest file", path, e));
                }
                _ => match open(false) {
                    Ok(f) => (f, false),
                    Err(e) if e.kind() == io::ErrorKind::NotFound && create => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io("open ingest file", path, e)),
                },
            };
            let mut waits = LOCKED_WAITS_MS.iter();
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(fs::TryLockError::WouldBlock) => match waits.next() {
                        Some(ms) => std::thread::sleep(std::time::Duration::from_millis(*ms)),
                        None => {
                            return Err(Error::Unavailable(format!(
                                "ingest ref {what:?} is locked by {}",
                                describe_holder(path)
                            )));
                        }
                    },
                    Err(fs::TryLockError::Error(e)) => {
                        return Err(Error::io("lock ingest", path, e));
                    }
                }
            }
            let same = match (file.metadata(), fs::metadata(path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if same {
                return Ok(Some(RefLock {
                    file: Arc::new(file),
                    path: path.to_path_buf(),
                    created,
                }));
            }
        }
        Err(Error::Unavailable(format!(
            "ingest ref {what:?}: its file keeps being replaced under us"
        )))
    }

    /// The locked file, open read-write.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The path of the locked file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this acquire created the file (it is empty and had no other name).
    pub(crate) fn created(&self) -> bool {
        self.created
    }

    /// Unlinks the locked file's name (the ingest is over); the lock itself is released when
    /// this value is dropped. Best effort: a leftover file is debris that `gc` reclaims.
    pub(crate) fn remove_file(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The file every process that has the store open read-write holds a shared lock on, from
/// schema 3 on: a holder of `meta.redb` without it is an older ocistore.
pub(crate) const LAYOUT_LOCK: &str = "layout-v3.lock";

/// Opens (creating) `<root>/layout-v3.lock` and takes a shared lock on it, kept as long as
/// the returned file is open.
pub(crate) fn hold_layout_lock(root: &Path) -> Result<File> {
    let path = root.join(LAYOUT_LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open the layout lock", &path, e))?;
    file.lock_shared()
        .map_err(|e| Error::io("lock the layout lock", &path, e))?;
    Ok(file)
}

/// The file every open of the store holds a shared lock on, and `fsck --rebuild` an
/// exclusive one: a rebuild, which replaces `meta.redb`, runs only when no other process has
/// the store open, and no process opens it while a rebuild runs.
pub(crate) const STORE_LOCK: &str = "store.lock";

/// Takes a shared lock on `<root>/store.lock` for as long as the returned file is open,
/// waiting at most `wait` while a rebuild holds it (then `StoreInUse` naming the rebuild).
/// `None` when the file can be neither opened nor created (a read-only root that never had
/// one: no rebuild can be running on it).
pub(crate) fn hold_store_lock(root: &Path, wait: Duration) -> Result<Option<File>> {
    let path = root.join(STORE_LOCK);
    let file = match open_lock_file(&path) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            match File::open(&path) {
                Ok(f) => f,
                Err(_) => return Ok(None),
            }
        }
        Err(e) => return Err(Error::io("open the store lock", &path, e)),
    };
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock_shared() {
            Ok(()) => return Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::StoreInUse(format!(
                    "'{}' is being rebuilt (fsck --rebuild) by {}; waited {wait:?}",
                    root.display(),
                    describe_pids(&path).unwrap_or_else(|| "another process".into())
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock the store lock", &path, e));
            }
        }
    }
}

/// Takes the exclusive lock on `<root>/store.lock` that a rebuild needs, waiting at most
/// `wait` for the processes that have the store open to close it; then `StoreInUse` naming
/// them (pid and command).
pub(crate) fn exclusive_store_lock(root: &Path, wait: Duration) -> Result<File> {
    let path = root.join(STORE_LOCK);
    let file = open_lock_file(&path).map_err(|e| Error::io("open the store lock", &path, e))?;
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::StoreInUse(format!(
                    "'{}' is open in {}; a rebuild replaces meta.redb and must be alone \
                     (waited {wait:?}; close them and try again)",
                    root.display(),
                    describe_pids(&path).unwrap_or_else(|| "another process".into())
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock the store lock", &path, e));
            }
        }
    }
}

/// The file that processes removing content hold a shared lock on while a blob they took
/// out of the metadata still has its file (from before their transaction until the files are
/// gone), and that fsck locks exclusively, briefly, before it calls a file without a record
/// debris: with the lock it knows that no removal is half done.
pub(crate) const REMOVAL_LOCK: &str = "removal.lock";

/// Takes a shared lock on `<root>/removal.lock` (creating it), kept while the returned file is
/// open. Waits while an fsck confirms its debris (a moment).
pub(crate) fn hold_removal_lock(root: &Path) -> Result<File> {
    let path = root.join(REMOVAL_LOCK);
    let file = open_lock_file(&path).map_err(|e| Error::io("open the removal lock", &path, e))?;
    file.lock_shared()
        .map_err(|e| Error::io("lock the removal lock", &path, e))?;
    Ok(file)
}

/// What [`quiet_removals`] found.
#[derive(Debug)]
pub(crate) enum Removals {
    /// No removal is half done while this is held (`None`: the store never had a removal
    /// lock, so no process has ever removed content from it).
    Quiet { _held: Option<File> },
    /// Other processes kept removing content for the whole wait.
    Busy,
}

/// Takes `<root>/removal.lock` exclusively, waiting at most `wait` for the removals under way
/// to finish. Needs no write access: the lock file is only opened.
pub(crate) fn quiet_removals(root: &Path, wait: Duration) -> Result<Removals> {
    let path = root.join(REMOVAL_LOCK);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Removals::Quiet { _held: None });
        }
        Err(e) => return Err(Error::io("open the removal lock", &path, e)),
    };
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Removals::Quiet { _held: Some(file) }),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(fs::TryLockError::WouldBlock) => return Ok(Removals::Busy),
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock the removal lock", &path, e));
            }
        }
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// "pid 123 (ocistore), pid 456 (this process)": every holder of a lock on `path`, with its
/// command name; `None` when none can be told.
pub(crate) fn describe_pids(path: &Path) -> Option<String> {
    let pids = holder_pids(path)?;
    let me = std::process::id().to_string();
    let named: Vec<String> = pids
        .iter()
        .map(|pid| {
            if *pid == me {
                format!("pid {pid} (this process)")
            } else if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
                format!("pid {pid} ({})", comm.trim())
            } else {
                format!("pid {pid}")
            }
        })
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

/// The pids holding file locks on `path`, from `/proc/locks` (Linux), e.g. "1234" or
/// "1234, 5678"; `None` when they cannot be told.
pub(crate) fn lock_holders(path: &Path) -> Option<String> {
    let pids = holder_pids(path)?;
    (!pids.is_empty()).then(|| pids.join(", "))
}

/// The pids holding file locks on `path`, sorted; `None` when they cannot be told. Open file
/// description locks (which `/proc/locks` shows without a pid) are not counted.
pub(crate) fn holder_pids(path: &Path) -> Option<Vec<String>> {
    let ino = fs::metadata(path).ok()?.ino();
    let locks = proc_locks()?;
    let mut pids: Vec<String> = locks
        .lines()
        .filter_map(|line| {
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; an OFD lock shows pid -1.
            let f: Vec<&str> = line.split_whitespace().collect();
            let (pid, dev_ino) = if f.get(1) == Some(&"->") {
                (f.get(5)?, f.get(6)?)
            } else {
                (f.get(4)?, f.get(5)?)
            };
            let lock_ino: u64 = dev_ino.rsplit(':').next()?.parse().ok()?;
            (lock_ino == ino && *pid != "-1").then(|| (*pid).to_owned())
        })
        .collect();
    pids.sort();
    pids.dedup();
    Some(pids)
}

/// `/proc/locks` read in one `read` call, so that its lines are one snapshot. Read in pieces
/// (`read_to_string` starts with 32 bytes), each piece walks the kernel's list of locks
/// anew from a line number: a lock released by another thread between two pieces shifts
/// the list, and the line after it (ours, say) is never seen.
fn proc_locks() -> Option<String> {
    use std::io::Read;
    let mut cap = 1 << 16;
    while cap <= 64 << 20 {
        let mut buf = vec![0u8; cap];
        let n = File::open("/proc/locks").ok()?.read(&mut buf).ok()?;
        if n < cap {
            buf.truncate(n);
            return String::from_utf8(buf).ok();
        }
        cap *= 4;
    }
    None
}

/// "a live writer, pid 123 (ocistore), last write 2.5s ago": the holder from `/proc/locks`,
/// its command name, and the locked file's modification time (an ingest's last append).
fn describe_holder(path: &Path) -> String {
    let mut out = "a live writer".to_owned();
    if let Some(pid) = holder_pids(path).and_then(|p| p.into_iter().next()) {
        out.push_str(&format!(", pid {pid}"));
        if pid == std::process::id().to_string() {
            out.push_str(" (this process)");
        } else if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
            out.push_str(&format!(" ({})", comm.trim()));
        }
    }
    if let Some(age) = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
    {
        out.push_str(&format!(", last write {:.1}s ago", age.as_secs_f64()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn second_holder_is_unavailable_until_release() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.data");
        let a = RefLock::acquire(&path, "r").unwrap();
        assert!(a.created());
        let err = RefLock::acquire(&path, "r").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {} (this process)", std::process::id()))
                && msg.contains("last write"),
            "{msg}"
        );
        drop(a);
        let b = RefLock::acquire(&path, "r").unwrap();
        assert!(!b.created());
    }

    /// A child started while a lock is dropped holds a copy of its descriptor until its exec:
    /// the lock must still be had again at once by this process.
    #[test]
    fn a_lock_dropped_while_children_start_is_had_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.data");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
            let stop = &stop;
            for _ in 0..2 {
                s.spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && std::time::Instant::now() < until
                    {
                        let _ = std::process::Command::new("true").status();
                    }
                });
            }
            let mut lock = RefLock::acquire(&path, "r").unwrap();
            let mut round = 0;
            while std::time::Instant::now() < until && round < 100_000 {
                drop(lock);
                lock = match RefLock::acquire(&path, "r") {
                    Ok(l) => l,
                    Err(e) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        panic!("round {round}: {e}");
                    }
                };
                round += 1;
            }
        });
    }

    #[test]
    fn a_lock_on_an_unlinked_file_does_not_hold_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.data");
        let a = RefLock::acquire(&path, "r").unwrap();
        a.remove_file();
        // `a` still holds its (now nameless) file; the path is free for a new one.
        let b = RefLock::acquire(&path, "r").unwrap();
        assert!(b.created());
        assert_ne!(
            a.file().metadata().unwrap().ino(),
            b.file().metadata().unwrap().ino()
        );
    }

    #[test]
    fn acquire_existing_does_not_create() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.data");
        assert!(RefLock::acquire_existing(&path, "r").unwrap().is_none());
        assert!(!path.exists());
        let a = RefLock::acquire(&path, "r").unwrap();
        let err = RefLock::acquire_existing(&path, "r").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        drop(a);
        assert!(RefLock::acquire_existing(&path, "r").unwrap().is_some());
    }
}
