//! Schema version 3: no table changes; each ingest's bytes move from `ingest/<id>/data`
//! (whose lock was `ingest/<id>/lock`) to `ingest/<id>.data`, which is its own lock.
//!
//! An older ocistore that has the store open would go on using the old paths, so that two
//! writers of one reference could run at once: the step refuses (`StoreInUse`, naming the
//! processes) while any process holds `meta.redb` without holding `layout-v3.lock`, which
//! every process of this version takes before opening the database. It also refuses while
//! an old writer holds an ingest's lock. Every old lock is taken first and held until the
//! moves are done, so a refusal moves nothing. Batch staging directories (`ingest/batch-…`)
//! keep their layout.

use std::fs;
use std::path::Path;

use redb::WriteTransaction;

use crate::error::{Error, ErrorKind, Result};
use crate::store::locks::{self, RefLock};

pub(crate) fn apply(_txn: &WriteTransaction, blobs_root: &Path) -> Result<()> {
    let Some(root) = blobs_root.parent() else {
        return Ok(());
    };
    refuse_older_processes(root)?;
    let ingest_root = root.join("ingest");
    let entries = match fs::read_dir(&ingest_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list ingests to migrate", &ingest_root, e)),
    };
    let mut held = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list ingests to migrate", &ingest_root, e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str() else { continue };
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir || id.starts_with("batch-") {
            continue;
        }
        let dir = entry.path();
        let lock = match RefLock::acquire_existing(&dir.join("lock"), id) {
            Ok(lock) => lock,
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                return Err(Error::StoreInUse(format!(
                    "an older ocistore is writing the ingest in '{}'; let it finish (or stop \
                     it), then open the store again to move it to the new layout",
                    dir.display()
                )));
            }
            Err(e) => return Err(e),
        };
        held.push((id.to_owned(), dir, lock));
    }
    for (id, dir, _lock) in &held {
        let data = dir.join("data");
        let target = ingest_root.join(format!("{id}.data"));
        match fs::rename(&data, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("move ingest data", &data, e)),
        }
        // The rest is debris of the old layout; gc removes what is left.
        let _ = fs::remove_file(dir.join("lock"));
        let _ = fs::remove_dir(dir);
    }
    if !held.is_empty() {
        crate::blobs::sync_dir(&ingest_root)?;
    }
    Ok(())
}

/// `StoreInUse` when a process holds `meta.redb` but not the layout lock of this version.
fn refuse_older_processes(root: &Path) -> Result<()> {
    let me = std::process::id().to_string();
    let Some(holders) = locks::holder_pids(&root.join("meta.redb")) else {
        return Ok(());
    };
    let current = locks::holder_pids(&root.join(locks::LAYOUT_LOCK)).unwrap_or_default();
    let older: Vec<String> = holders
        .into_iter()
        .filter(|pid| *pid != me && !current.contains(pid))
        .collect();
    if older.is_empty() {
        return Ok(());
    }
    Err(Error::StoreInUse(format!(
        "'{}' is open in process {} of an older ocistore; its ingests would clash with the \
         new layout: stop it, then open the store again",
        root.display(),
        older.join(", ")
    )))
}
