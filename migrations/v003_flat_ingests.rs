//! Schema version 3: no table changes; each ingest's bytes move from `ingest/<id>/data`
//! (whose lock was `ingest/<id>/lock`) to `ingest/<id>.data`, which is its own lock.
//!
//! Every old lock is taken first and held until the moves are done: an ingest still written
//! by an older ocistore refuses the migration (`StoreInUse`, naming the process) and leaves
//! every file where it was. Batch staging directories (`ingest/batch-…`) keep their layout.

use std::fs;
use std::path::Path;

use redb::WriteTransaction;

use crate::error::{Error, Result};
use crate::store::locks::RefLock;

pub(crate) fn apply(_txn: &WriteTransaction, blobs_root: &Path) -> Result<()> {
    let Some(ingest_root) = blobs_root.parent().map(|root| root.join("ingest")) else {
        return Ok(());
    };
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
            Err(e) if e.kind() == crate::error::ErrorKind::Unavailable => {
                return Err(Error::StoreInUse(format!(
                    "an older ocistore is writing to '{}' ({e}); let it finish, then open \
                     the store again",
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
