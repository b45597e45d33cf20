//! Process-held leases: the holds a batch, pull, push or export makes for itself live
//! exactly as long as the process that made them.
//!
//! Such a lease names its owner in its labels (`ocistore.owner=<id>`, and
//! `ocistore.owner.pid=<pid>` for people reading `lease ls`). The owner is a directory
//! `ingest/<id>/` whose `lock` file the process holds with an OS file lock from before the
//! lease's transaction commits until after it is dropped. The kernel releases that lock when
//! the process dies, so "is the owner alive" is "is `ingest/<id>/lock` locked": no pid
//! reuse to guess about, nothing to refresh.
//!
//! `gc` and `prune` drop every lease whose owner is dead inside their write transaction,
//! before they read their roots, holding the dead owner's lock until that transaction has
//! committed; the same pass then removes the owner's directory as ingest debris. A lease
//! whose owner directory is gone is dead too: the directory and its lock exist before the
//! lease does, and only a dead owner's directory is ever removed by anyone else.
//!
//! Leases from before owners were recorded (`ocistore.batch/batch-<pid>-<stamp>`) name
//! their batch directory in their id, and are read the same way.

use std::fs::{self, File};
use std::path::PathBuf;

use redb::ReadableTable;

use crate::content::Labels;
use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;
use crate::store::locks::RefLock;
use crate::store::records::{self, LeaseRecord, Nanos};
use crate::store::schema::{LEASE_RESOURCES, LEASES};

/// The label naming a process-held lease's owner directory under `ingest/`.
pub const OWNER_LABEL: &str = "ocistore.owner";
/// The label giving a process-held lease's owner pid (for display only).
pub const OWNER_PID_LABEL: &str = "ocistore.owner.pid";

/// The owner of a process-held lease, as [`Store::leases`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOwner {
    /// The owner's directory under `ingest/`.
    pub id: String,
    /// The owning process, when recorded.
    pub pid: Option<u32>,
    /// Whether the owning process still holds the lease (its lock is held).
    pub alive: bool,
}

/// An owner directory this process holds: `ingest/<id>/` with its `lock` file locked.
/// Dropping it removes the directory and releases the lock.
pub(crate) struct OwnerDir {
    id: String,
    dir: PathBuf,
    /// Released (a field) after `Drop::drop` has removed the directory.
    lock: RefLock,
}

impl OwnerDir {
    /// The owner id (the directory's name).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The labels that tie a lease to this owner.
    pub(crate) fn labels(&self) -> Labels {
        let mut labels = Labels::new();
        labels.insert(OWNER_LABEL.to_owned(), self.id.clone());
        labels.insert(OWNER_PID_LABEL.to_owned(), std::process::id().to_string());
        labels
    }
}

impl Drop for OwnerDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        self.lock.remove_file();
    }
}

impl Store {
    /// Creates and locks a new owner directory `ingest/<kind>-<pid>-<stamp>/`.
    pub(crate) fn claim_owner_dir(&self, kind: &str) -> Result<OwnerDir> {
        let id = format!("{kind}-{}-{}", std::process::id(), Nanos::now().0);
        let dir = self.ingest_root().join(&id);
        fs::create_dir_all(&dir).map_err(|e| Error::io("create an owner directory", &dir, e))?;
        let lock = RefLock::acquire(&dir.join("lock"), &id)?;
        Ok(OwnerDir { id, dir, lock })
    }

    /// Whether the process owning `owner` still holds it. Takes no lock that outlives the
    /// call, and works on a read-only store.
    pub(crate) fn owner_alive(&self, owner: &str) -> bool {
        let path = self.ingest_root().join(owner).join("lock");
        let Ok(file) = File::open(&path) else {
            return false;
        };
        match file.try_lock_shared() {
            Ok(()) => false,
            Err(fs::TryLockError::WouldBlock) => true,
            // Cannot tell: count it alive, so that nothing is dropped on a guess.
            Err(fs::TryLockError::Error(_)) => true,
        }
    }

    /// Removes, inside `txn`, every lease whose owner process is dead, with what it held.
    /// Returns their ids and the dead owners' locks, to be held until `txn` has committed
    /// (or aborted).
    pub(crate) fn drop_dead_owner_leases(
        &self,
        txn: &redb::WriteTransaction,
    ) -> Result<(Vec<String>, Vec<RefLock>)> {
        let mut dead = Vec::new();
        let mut locks = Vec::new();
        {
            let leases = txn
                .open_table(LEASES)
                .map_err(|e| Error::db("open the leases table", e))?;
            for entry in leases.iter().map_err(|e| Error::db("read leases", e))? {
                let (k, v) = entry.map_err(|e| Error::db("read leases", e))?;
                let rec: LeaseRecord = records::decode(v.value(), k.value())?;
                let Some(owner) = owner_of(k.value(), &rec.labels) else {
                    continue;
                };
                let path = self.ingest_root().join(&owner).join("lock");
                match RefLock::acquire_existing(&path, &owner) {
                    Ok(Some(lock)) => locks.push(lock),
                    Ok(None) => {}
                    Err(e) if e.kind() == ErrorKind::Unavailable => continue,
                    Err(e) => return Err(e),
                }
                dead.push(k.value().to_owned());
            }
        }
        if dead.is_empty() {
            return Ok((dead, locks));
        }
        let mut leases = txn
            .open_table(LEASES)
            .map_err(|e| Error::db("open the leases table", e))?;
        let mut resources = txn
            .open_table(LEASE_RESOURCES)
            .map_err(|e| Error::db("open the lease resources", e))?;
        for id in &dead {
            leases
                .remove(id.as_str())
                .map_err(|e| Error::db("remove a dead owner's lease", e))?;
            for (kind, value) in crate::store::lease::resources_in(&resources, id)? {
                resources
                    .remove((id.as_str(), kind.as_str(), value.as_str()))
                    .map_err(|e| Error::db("release a dead owner's resource", e))?;
            }
        }
        Ok((dead, locks))
    }
}

/// Removes the directories of dead owners whose locks `locks` are (taken by
/// [`Store::drop_dead_owner_leases`], after its transaction committed), then lets the locks
/// go. Their staged files go with them, so that a blob file a dead batch had linked into the
/// tree but never recorded is left with one name, plain debris for the same gc to take.
pub(crate) fn remove_dead_owner_dirs(locks: Vec<RefLock>) {
    for lock in locks {
        if let Some(dir) = lock.path().parent() {
            let _ = fs::remove_dir_all(dir);
        }
        drop(lock);
    }
}

/// The owner directory of a process-held lease: its `ocistore.owner` label, or for a batch
/// lease written before owners were labelled, the batch directory its id names. `None` for
/// every other lease, and for an owner that is not a plain directory name.
pub(crate) fn owner_of(lease_id: &str, labels: &Labels) -> Option<String> {
    let owner = match labels.get(OWNER_LABEL) {
        Some(owner) => owner.as_str(),
        None => {
            let id = lease_id.strip_prefix("ocistore.batch/")?;
            let mut parts = id.strip_prefix("batch-")?.split('-');
            let numeric = |p: Option<&str>| {
                p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            };
            if !(numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()) {
                return None;
            }
            id
        }
    };
    let plain = !owner.is_empty()
        && owner.len() <= 128
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !owner.starts_with('-');
    plain.then(|| owner.to_owned())
}

/// `InvalidArgument` when `labels` use the owner labels, which only the store sets.
pub(crate) fn refuse_owner_labels(labels: &Labels) -> Result<()> {
    match labels.keys().find(|k| k.starts_with(OWNER_LABEL)) {
        Some(k) => Err(Error::InvalidArgument(format!(
            "label {k:?} is reserved: ocistore sets it on the leases a process holds for itself"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_labels_or_a_batch_id() {
        let none = Labels::new();
        assert_eq!(
            owner_of("ocistore.batch/batch-12-345", &none).as_deref(),
            Some("batch-12-345")
        );
        assert_eq!(owner_of("ocistore.batch/batch-12-x", &none), None);
        assert_eq!(owner_of("ocistore.batch/batch-12-3-4", &none), None);
        assert_eq!(owner_of("ocistore.export/12-345", &none), None);
        assert_eq!(owner_of("mine", &none), None);
        let mut labels = Labels::new();
        labels.insert(OWNER_LABEL.into(), "export-1-2".into());
        assert_eq!(owner_of("any", &labels).as_deref(), Some("export-1-2"));
        for bad in ["../x", "a/b", "", "-rf", "a b"] {
            labels.insert(OWNER_LABEL.into(), bad.into());
            assert_eq!(owner_of("any", &labels), None, "{bad:?}");
        }
    }

    #[test]
    fn owner_labels_are_reserved() {
        let mut labels = Labels::new();
        labels.insert("x".into(), "y".into());
        assert!(refuse_owner_labels(&labels).is_ok());
        labels.insert(OWNER_PID_LABEL.into(), "1".into());
        let e = refuse_owner_labels(&labels).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
