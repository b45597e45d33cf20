//! A batch's commit: staged files synced and linked into the blob tree, then every record,
//! reference and name in one transaction; and what dropping an uncommitted batch cleans up.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;

use redb::ReadableTable;

use crate::blobs::sync_dir;
use crate::error::{Error, ErrorKind, Result};
use crate::store::locks::RefLock;
use crate::store::records::Nanos;
use crate::store::schema::{BLOB_LABELS, BLOBS, INGESTS, LEASE_RESOURCES, LEASES};
use crate::store::uses::Used;
use crate::store::{edge_tables, images};

use super::{Batch, BatchOutcome};

/// How many fsyncs a batch's commit runs at once.
const SYNCS_AT_ONCE: usize = 4;

impl Batch {
    /// Makes every staged blob and name durable and visible at once; see the module docs.
    pub fn commit(mut self) -> Result<BatchOutcome> {
        let blobs = self.store.blob_dir().clone();
        let mut shards = BTreeSet::new();
        let mut children = BTreeMap::new();
        // Every file durable before any is linked: the links then land together, just before
        // the transaction, which keeps the window in which another process sees a published
        // file without its record (and counts it as a commit in flight) short. The syncs run
        // a few at a time: the disk takes concurrent ones together, where one after another
        // each waits for its own cache flush.
        let unsynced: Vec<&PathBuf> = (self.staged.iter())
            .filter(|(d, _)| !self.durable.contains(d))
            .map(|(_, (path, _, _))| path)
            .collect();
        crate::helpers::largest_first(
            &unsynced,
            SYNCS_AT_ONCE,
            |_| 0,
            |path| {
                File::open(path)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| Error::io("fsync staged blob", path, e))
            },
        )?;
        for (digest, (path, size, _)) in &self.staged {
            let target = blobs.link(path, digest, *size)?;
            shards.insert(
                target
                    .parent()
                    .expect("blob paths have a shard")
                    .to_path_buf(),
            );
            if let Some(c) = crate::edges::children_of_path(path)? {
                children.insert(digest.to_string(), c);
            }
        }
        let shards: Vec<PathBuf> = shards.into_iter().collect();
        crate::helpers::largest_first(&shards, SYNCS_AT_ONCE, |_| 0, |shard| sync_dir(shard))?;
        let mut outcome = BatchOutcome {
            blobs_present: self.present.len() as u64,
            names: self.names.iter().map(|(n, _, _)| n.clone()).collect(),
            ..BatchOutcome::default()
        };
        let txn = self.store.write_txn("commit a batch")?;
        {
            let mut table = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            let mut index = txn
                .open_table(BLOB_LABELS)
                .map_err(|e| Error::db("open the label index", e))?;
            let now = Nanos::now();
            for (digest, (path, size, labels)) in &self.staged {
                let key = digest.to_string();
                if table
                    .get(key.as_str())
                    .map_err(|e| Error::db("read a blob record", e))?
                    .is_some()
                {
                    outcome.blobs_present += 1;
                    continue;
                }
                // A concurrent gc may have taken the file for debris; it cannot while we hold
                // the transaction.
                if !blobs.exists(digest) {
                    blobs.publish(path, digest, *size)?;
                }
                crate::store::manager::insert_record(
                    &mut table,
                    &mut index,
                    &key,
                    *size,
                    labels.clone(),
                    now,
                )?;
                outcome.blobs_written += 1;
                outcome.bytes_written += size;
            }
            // Content counted as present is leased; check it is still here all the same.
            for digest in &self.present {
                if table
                    .get(digest.to_string().as_str())
                    .map_err(|e| Error::db("read a blob record", e))?
                    .is_none()
                {
                    return Err(Error::FailedPrecondition(format!(
                        "content {digest} was removed while the batch ran"
                    )));
                }
            }
        }
        for (parent, c) in &children {
            edge_tables::record(&txn, parent, c)?;
        }
        images::put_names(&txn, &self.names)?;
        // Pulls and imports use what they name and what they hold: recorded exactly, here.
        let used: Vec<Used> = (self.names.iter().map(|(n, _, _)| Used::Image(n.clone())))
            .chain(
                self.staged
                    .keys()
                    .chain(&self.present)
                    .map(|d| Used::Content(*d)),
            )
            .collect();
        self.store.write_uses_in(&txn, &used, Nanos::now())?;
        crate::uncompressed::label_from_configs(&txn, &self.store, children.keys())?;
        if !self.adopted.is_empty() {
            let mut ingests = txn
                .open_table(INGESTS)
                .map_err(|e| Error::db("open the ingests table", e))?;
            for (reference, _, _) in &self.adopted {
                ingests
                    .remove(reference.as_str())
                    .map_err(|e| Error::db("remove an ingest record", e))?;
            }
        }
        {
            txn.open_table(LEASES)
                .map_err(|e| Error::db("open the leases table", e))?
                .remove(self.lease.as_str())
                .map_err(|e| Error::db("drop the batch lease", e))?;
            let mut r = txn
                .open_table(LEASE_RESOURCES)
                .map_err(|e| Error::db("open the lease resources", e))?;
            for d in &self.leased_content {
                r.remove((self.lease.as_str(), "content", d.to_string().as_str()))
                    .map_err(|e| Error::db("drop the batch lease", e))?;
            }
            for reference in &self.leased_ingests {
                r.remove((self.lease.as_str(), "ingest", reference.as_str()))
                    .map_err(|e| Error::db("drop the batch lease", e))?;
            }
        }
        txn.commit().map_err(|e| Error::db("commit a batch", e))?;
        self.done = true;
        for (reference, path, inode) in self.adopted.drain(..) {
            use std::os::unix::fs::MetadataExt;
            // The blob keeps the inode under its own name; the ingest's name goes, under its
            // lock and only while it still names that inode (a live writer's new file is not
            // ours to remove).
            if let Ok(Some(lock)) = RefLock::acquire_existing(&path, &reference)
                && lock
                    .file()
                    .metadata()
                    .is_ok_and(|m| (m.dev(), m.ino()) == inode)
            {
                lock.remove_file();
            }
        }
        Ok(outcome)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // The lease goes before its owner directory (a field, dropped after this): a gc that
        // finds the directory gone would take the lease for a dead process's.
        if !self.done
            && let Err(e) = self.store.delete_lease(&self.lease)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(lease = %self.lease, error = %e, "could not drop an abandoned batch's lease; the next gc drops it");
        }
        if !self.done
            && let Err(e) = self.forget_unstarted_ingests()
        {
            tracing::warn!(error = %e, "could not drop the records of downloads that never started");
        }
    }
}

impl Batch {
    /// The records [`Store::batch_wanting`] made for downloads that never wrote a byte (no
    /// data file): an abandoned batch leaves no empty ingests behind.
    fn forget_unstarted_ingests(&self) -> Result<()> {
        let unstarted: Vec<&String> = (self.leased_ingests.iter())
            .filter(|r| !self.store.ingest_data(r).exists())
            .collect();
        if unstarted.is_empty() {
            return Ok(());
        }
        let txn = self.store.write_txn("drop unstarted ingests")?;
        {
            let mut ingests = txn
                .open_table(INGESTS)
                .map_err(|e| Error::db("open the ingests table", e))?;
            for reference in unstarted {
                // Started meanwhile (by another pull of the same blob): theirs now.
                if !self.store.ingest_data(reference).exists() {
                    ingests
                        .remove(reference.as_str())
                        .map_err(|e| Error::db("remove an ingest record", e))?;
                }
            }
        }
        txn.commit()
            .map_err(|e| Error::db("commit dropped ingests", e))
    }
}
