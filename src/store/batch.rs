//! Batches: many blobs and names made durable together, in one transaction.
//!
//! Imports and bulk writers stage blobs into a private directory under `ingest/` (hashing as
//! the bytes stream in, nothing visible), then [`Batch::commit`] fsyncs the staged files,
//! links them into the blob tree with one fsync per shard directory, and inserts every record,
//! reference and name in one redb transaction. Dropping a batch without committing leaves the
//! store exactly as it was.
//!
//! Blobs the batch finds already committed are protected from a concurrent gc by a lease the
//! batch holds (and drops in its commit transaction), so an import never loses a blob it
//! counted as present.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oci_spec::image::Descriptor;
use redb::ReadableTable;

use crate::blobs::sync_dir;
use crate::content::{Labels, validate_labels};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, ErrorKind, Result};
use crate::names::Name;
use crate::store::locks::RefLock;
use crate::store::owner::OwnerDir;
use crate::store::records::Nanos;
use crate::store::schema::{BLOB_LABELS, BLOBS, INGESTS, LEASE_RESOURCES, LEASES};
use crate::store::uses::Used;
use crate::store::{Store, graph, images};

/// How many fsyncs a batch's commit runs at once.
const SYNCS_AT_ONCE: usize = 4;

/// A blob a batch holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// `false` when it was already committed or staged (verified, not written again).
    pub written: bool,
}

/// What a committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Blobs newly committed.
    pub blobs_written: u64,
    /// Blobs that were already there.
    pub blobs_present: u64,
    /// Bytes newly committed.
    pub bytes_written: u64,
    /// Names written.
    pub names: Vec<String>,
}

/// A set of blobs and names to commit together. See the module docs.
pub struct Batch {
    store: Store,
    /// The staging directory, locked while this batch lives: its lease's owner. Dropped
    /// after `Drop::drop` has dropped the lease.
    owner: OwnerDir,
    lease: String,
    staged: BTreeMap<Digest, (PathBuf, u64, Labels)>,
    present: BTreeSet<Digest>,
    /// Content the lease holds: everything [`Store::batch_wanting`] was asked for, present
    /// or not, and what [`Batch::is_committed`] found since.
    leased_content: BTreeSet<Digest>,
    /// Ingests leased by [`Store::batch_wanting`].
    leased_ingests: Vec<String>,
    names: Vec<(String, Descriptor, Option<Labels>)>,
    /// Sealed ingests taken in: (reference, the ingest's path, its device and inode). Each
    /// is staged through a second name in the batch's directory, linked under its lock, so
    /// that no lock (and no file descriptor) is held from adoption to commit: a writer never
    /// writes to a file with two names. Their records go in the commit's transaction, their
    /// names after it.
    adopted: Vec<(String, PathBuf, (u64, u64))>,
    files: u64,
    /// Staged files already durable (sealed ingests fsynced by their seal and unchanged
    /// since): the commit does not sync them again.
    durable: BTreeSet<Digest>,
    done: bool,
}

impl Store {
    /// Starts a batch. It holds a staging directory and a lease until it is committed or
    /// dropped.
    pub fn batch(&self) -> Result<Batch> {
        Ok(self.batch_wanting(&[])?.0)
    }

    /// [`Store::batch`] for a pull: the transaction that makes the batch's lease also leases
    /// what the pull wants, `wanted` (ingest reference, size, digest). Every blob is leased
    /// as content, present or not, so that no gc or prune takes it before the name lands:
    /// also one that another process commits meanwhile (a second pull of the same image,
    /// whose download this pull then finds committed). Each the store lacks is also leased
    /// as an ingest until the batch commits or is dropped (a pull's downloads release their
    /// locks once sealed, and neither gc nor prune may take them while they wait to be
    /// adopted), and recorded if it has no record yet: its writer then opens as a resumed
    /// ingest and pays no transaction of its own. Returns the batch and, in order,
    /// whether each blob was present. One durable commit for all, where asking
    /// [`Batch::is_committed`] of each present blob costs a commit each.
    pub fn batch_wanting(&self, wanted: &[(String, u64, Digest)]) -> Result<(Batch, Vec<bool>)> {
        self.writable("start a batch")?;
        for (reference, _, _) in wanted {
            crate::content::validate_reference(reference)?;
        }
        let owner = self.claim_owner_dir("batch")?;
        let mut batch = Batch {
            store: self.clone(),
            lease: format!("ocistore.batch/{}", owner.id()),
            owner,
            staged: BTreeMap::new(),
            present: BTreeSet::new(),
            leased_content: BTreeSet::new(),
            leased_ingests: Vec::new(),
            names: Vec::new(),
            adopted: Vec::new(),
            files: 0,
            durable: BTreeSet::new(),
            // Until its lease is committed there is nothing for a drop to undo but the
            // directory (which it always removes).
            done: true,
        };
        let present = batch.lease(wanted)?;
        batch.done = false;
        Ok((batch, present))
    }
}

impl Batch {
    /// Makes the batch's lease and leases `wanted` to it, in one transaction (see
    /// [`Store::batch_wanting`]).
    fn lease(&mut self, wanted: &[(String, u64, Digest)]) -> Result<Vec<bool>> {
        let mut present = Vec::with_capacity(wanted.len());
        let txn = self.store.write_txn("start a batch")?;
        let rec = crate::store::records::LeaseRecord {
            created: Nanos::now(),
            // Dropped with its owner (see `store::owner`); the expiry only bounds a lease
            // whose owner cannot be told dead.
            expires: Some(Nanos::from(
                SystemTime::now() + Duration::from_secs(24 * 3600),
            )),
            labels: self.owner.labels(),
        };
        crate::store::lease::insert_lease(&txn, &self.lease, &rec)?;
        if !wanted.is_empty() {
            let blobs = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            let mut r = txn
                .open_table(LEASE_RESOURCES)
                .map_err(|e| Error::db("open the lease resources", e))?;
            let mut ingests = txn
                .open_table(INGESTS)
                .map_err(|e| Error::db("open the ingests table", e))?;
            let started = Nanos::now();
            for (reference, size, digest) in wanted {
                let key = digest.to_string();
                let found = blobs
                    .get(key.as_str())
                    .map_err(|e| Error::db("read a blob record", e))?
                    .is_some();
                present.push(found);
                r.insert((self.lease.as_str(), "content", key.as_str()), ())
                    .map_err(|e| Error::db("lease content", e))?;
                if found {
                    continue;
                }
                r.insert((self.lease.as_str(), "ingest", reference.as_str()), ())
                    .map_err(|e| Error::db("lease an ingest", e))?;
                let recorded = ingests
                    .get(reference.as_str())
                    .map_err(|e| Error::db("read an ingest record", e))?
                    .is_some();
                if !recorded {
                    let rec = crate::store::records::IngestRecord {
                        total: Some(*size),
                        expected: Some(key.clone()),
                        started,
                        id: crate::store::ingest::ingest_id(reference),
                    };
                    ingests
                        .insert(
                            reference.as_str(),
                            crate::store::records::encode(&rec).as_slice(),
                        )
                        .map_err(|e| Error::db("record an ingest", e))?;
                }
            }
        }
        txn.commit()
            .map_err(|e| Error::db("commit a batch's lease", e))?;
        for ((reference, _, digest), found) in wanted.iter().zip(&present) {
            self.leased_content.insert(*digest);
            if *found {
                self.present.insert(*digest);
            } else {
                self.leased_ingests.push(reference.clone());
            }
        }
        Ok(present)
    }

    /// Whether `digest` is committed in the store; if so the batch's lease now protects it.
    pub fn is_committed(&mut self, digest: &Digest) -> Result<bool> {
        if self.present.contains(digest) {
            return Ok(true);
        }
        if self.leased_content.contains(digest) {
            // Leased already (wanted at the start): a look is enough.
            let found = self.store.blob_record(digest)?.is_some();
            if found {
                self.present.insert(*digest);
            }
            return Ok(found);
        }
        let key = digest.to_string();
        let txn = self.store.write_txn("lease present content")?;
        let found = txn
            .open_table(BLOBS)
            .map_err(|e| Error::db("open the blobs table", e))?
            .get(key.as_str())
            .map_err(|e| Error::db("read a blob record", e))?
            .is_some();
        if found {
            txn.open_table(LEASE_RESOURCES)
                .map_err(|e| Error::db("open the lease resources", e))?
                .insert((self.lease.as_str(), "content", key.as_str()), ())
                .map_err(|e| Error::db("lease present content", e))?;
            txn.commit()
                .map_err(|e| Error::db("commit a lease resource", e))?;
            self.present.insert(*digest);
            self.leased_content.insert(*digest);
        }
        Ok(found)
    }

    /// The recorded size of a committed blob, if it is committed.
    pub fn committed_record_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.store.blob_record(digest)?.map(|r| r.size))
    }

    /// Whether `digest` is staged in this batch.
    pub fn is_staged(&self, digest: &Digest) -> bool {
        self.staged.contains_key(digest)
    }

    /// Streams `reader` into the batch while hashing it with `expected`'s algorithm (sha256
    /// when `None`). A size or digest that does not match is `FailedPrecondition` naming both.
    /// Content already committed or staged is verified but not written again.
    pub fn stage(
        &mut self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
        size: Option<u64>,
        labels: Labels,
    ) -> Result<Staged> {
        validate_labels(&labels)?;
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let known = match expected {
            Some(d) => self.is_staged(d) || self.is_committed(d)?,
            None => false,
        };
        let mut hasher = algorithm.hasher();
        let mut hash = |chunk: &[u8]| hasher.update(chunk);
        let input = std::path::Path::new("input");
        let (path, n) = if known {
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        hash(&buf[..k]);
                        n += k as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::from_io(e, "read", input)),
                }
            }
            (None, n)
        } else {
            self.files += 1;
            let path = self.owner.dir().join(format!("{:06}", self.files));
            let file =
                File::create(&path).map_err(|e| Error::io("create staging file", &path, e))?;
            // Hashed on this thread while a worker writes the previous buffer.
            let mut pipe = self.store.pipe(Arc::new(file), path.clone(), 0);
            let n = pipe
                .read_from(reader, input, &mut hash)
                .and_then(|n| pipe.flush().map(|()| n));
            if n.is_err() {
                let _ = fs::remove_file(&path);
            }
            (Some(path), n?)
        };
        let digest = hasher.finalize();
        let fail = |msg: String, path: &Option<PathBuf>| {
            if let Some(p) = path {
                let _ = fs::remove_file(p);
            }
            Err(Error::FailedPrecondition(msg))
        };
        if let Some(want) = size
            && want != n
        {
            return fail(
                format!(
                    "unexpected size {n}, expected {want} (content {})",
                    expected.map_or_else(|| digest.to_string(), ToString::to_string)
                ),
                &path,
            );
        }
        if let Some(want) = expected
            && *want != digest
        {
            return fail(
                format!("unexpected digest {digest}, expected {want}"),
                &path,
            );
        }
        let Some(path) = path else {
            return Ok(Staged {
                digest,
                size: n,
                written: false,
            });
        };
        if self.is_staged(&digest) || self.is_committed(&digest)? {
            let _ = fs::remove_file(&path);
            return Ok(Staged {
                digest,
                size: n,
                written: false,
            });
        }
        self.staged.insert(digest, (path, n, labels));
        Ok(Staged {
            digest,
            size: n,
            written: true,
        })
    }

    /// Takes the sealed ingest `sealed` into the batch: its file becomes the blob's bytes when
    /// the batch commits (no copy; the ingest goes in the same transaction), with `labels`.
    /// Holds the ingest's reference until then; waits up to a minute while another writer
    /// holds it. Adopt in digest order when several processes may adopt the same ingests.
    ///
    /// `false` when the blob is committed already (by another process, say): nothing is
    /// staged, and a leftover ingest is removed with the commit. `FailedPrecondition` when
    /// the ingest's file is no longer the one that was sealed.
    pub fn adopt(&mut self, sealed: &crate::store::Sealed, labels: Labels) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        validate_labels(&labels)?;
        if self.is_staged(&sealed.digest) {
            return Ok(false);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let lock = loop {
            match RefLock::acquire_existing(&sealed.path, &sealed.reference) {
                Ok(lock) => break lock,
                Err(e)
                    if e.kind() == crate::error::ErrorKind::Unavailable
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        let committed = self.is_committed(&sealed.digest)?;
        let Some(lock) = lock else {
            // Gone: whoever removed it committed it, or the pull must start over.
            return if committed {
                Ok(false)
            } else {
                Err(Error::FailedPrecondition(format!(
                    "ingest {:?} of {} vanished before it was committed",
                    sealed.reference, sealed.digest
                )))
            };
        };
        let m = lock
            .file()
            .metadata()
            .map_err(|e| Error::io("stat ingest data", &sealed.path, e))?;
        if committed {
            self.adopted.push((
                sealed.reference.clone(),
                sealed.path.clone(),
                (m.dev(), m.ino()),
            ));
            return Ok(false);
        }
        let changed = || {
            Error::FailedPrecondition(format!(
                "ingest {:?} of {} changed after it was sealed",
                sealed.reference, sealed.digest
            ))
        };
        let (dev, ino, ..) = sealed.identity;
        if (m.dev(), m.ino()) != (dev, ino) || m.len() != sealed.size {
            return Err(changed());
        }
        // A second name (the blob's own, published by a commit that died before its
        // transaction; another batch's staging link) moves the ctime: then the bytes are
        // checked again, as for any change.
        let unchanged = (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()) == sealed.identity;
        if !unchanged {
            // Touched since (another process sealing the same download, say): what counts
            // is that its bytes are still the digest's, checked again under our lock.
            let (hasher, n) = crate::store::ingest::hash_prefix(
                lock.file(),
                &sealed.path,
                sealed.digest.algorithm(),
                u64::MAX,
            )?;
            if n != sealed.size || hasher.finalize() != sealed.digest {
                return Err(changed());
            }
        }
        // Staged through a name of the batch's own, made while the lock is held; the lock
        // (and its descriptor) goes with this call. The name says which ingest it is, so a
        // writer that finds the ingest with two names knows a live batch will commit it
        // (see `Store::adopted_by_live_owner`) and waits instead of starting anew.
        let staged = self
            .owner
            .dir()
            .join(crate::store::ingest::adopted_name(&sealed.path));
        fs::hard_link(&sealed.path, &staged)
            .map_err(|e| Error::io("link a sealed download into the batch", &staged, e))?;
        drop(lock);
        self.staged
            .insert(sealed.digest, (staged, sealed.size, labels));
        if unchanged && sealed.synced {
            self.durable.insert(sealed.digest);
        }
        self.adopted
            .push((sealed.reference.clone(), sealed.path.clone(), (dev, ino)));
        Ok(true)
    }

    /// Reads a staged or committed blob whole, at most `limit` bytes (else
    /// `FailedPrecondition`).
    pub fn read(&mut self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let bytes = match self.staged.get(digest) {
            Some((path, _, _)) => {
                let mut out = Vec::new();
                File::open(path)
                    .and_then(|f| f.take(limit + 1).read_to_end(&mut out))
                    .map_err(|e| Error::io("read staged blob", path, e))?;
                out
            }
            None => match crate::helpers::read_blob_prefix(&self.store, digest, limit + 1) {
                // Leased by this batch, so no gc took it: an explicit delete elsewhere did.
                Err(e) if e.kind() == ErrorKind::NotFound && self.present.contains(digest) => {
                    return Err(Error::FailedPrecondition(format!(
                        "content {digest} was removed while the batch ran; run it again"
                    )));
                }
                other => other?,
            },
        };
        if bytes.len() as u64 > limit {
            return Err(Error::FailedPrecondition(format!(
                "content {digest} is larger than {limit} bytes"
            )));
        }
        Ok(bytes)
    }

    /// Points `name` at `target` when the batch commits. `InvalidArgument` for a bad name.
    pub fn put_name(
        &mut self,
        name: &str,
        target: Descriptor,
        labels: Option<Labels>,
    ) -> Result<String> {
        let key = Name::parse(name)?.to_string();
        crate::names::descriptor_digest(&target)?;
        self.names.push((key.clone(), target, labels));
        Ok(key)
    }

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
            if let Some(c) = crate::refs::children_of_path(path)? {
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
            graph::record(&txn, parent, c)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Manager;

    /// A pull killed while committing, after it linked a sealed download into the blob tree
    /// and before its transaction, leaves the ingest with a second name, the blob's own. The
    /// next pull adopting that ingest takes it (the bytes are checked again) instead of
    /// failing "changed after it was sealed" (seen beside kills in
    /// `pulls_and_pushes_beside_every_other_command`, 1 of about 1,700 runs).
    #[test]
    fn an_ingest_a_dead_commit_published_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let seal = |reference: &str, bytes: &[u8]| {
            let digest = Algorithm::Sha256.digest(bytes);
            let size = bytes.len() as u64;
            let mut w = store
                .store_writer(reference, Some(size), Some(&digest))
                .unwrap();
            std::io::Write::write_all(&mut w, bytes).unwrap();
            w.seal(size, &digest).unwrap()
        };
        let bytes = b"downloaded, sealed, linked by a commit that died";
        let sealed = seal("pull-x", bytes);
        let digest = sealed.digest;
        let target = store.blob_dir().path_for(&digest);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::hard_link(&sealed.path, &target).unwrap();

        let mut batch = store.batch().unwrap();
        assert!(batch.adopt(&sealed, Labels::new()).unwrap());
        batch.commit().unwrap();
        assert_eq!(store.info(&digest).unwrap().size, bytes.len() as u64);
        let out = store.fsck(&Default::default()).unwrap();
        assert!(out.problems.is_empty(), "{out:?}");

        // A second name elsewhere (another batch's staging link) is taken once the bytes
        // are checked again; bytes changed since the seal are refused.
        let sealed = seal("pull-y", b"sealed, then linked somewhere else");
        fs::hard_link(&sealed.path, dir.path().join("elsewhere")).unwrap();
        let mut batch = store.batch().unwrap();
        assert!(batch.adopt(&sealed, Labels::new()).unwrap());
        drop(batch);
        let sealed = seal("pull-z", b"sealed, then overwritten in place");
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&sealed.path)
                .unwrap();
            f.write_all_at(b"S", 0).unwrap();
        }
        let mut batch = store.batch().unwrap();
        let err = batch.adopt(&sealed, Labels::new()).unwrap_err();
        assert!(
            err.to_string().contains("changed after it was sealed"),
            "{err}"
        );
    }

    /// An ingest a live batch has adopted is complete and taken: a second writer (a pull
    /// waiting for the same blob) is refused with `Unavailable` and sees its full length, so
    /// it waits for the commit rather than fetching it again; once that batch is gone
    /// without committing, the ingest is writable again.
    #[test]
    fn an_adopted_ingest_is_complete_and_taken_while_its_batch_lives() {
        use crate::content::IngestManager;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes = b"a download another pull waits for";
        let digest = Algorithm::Sha256.digest(bytes);
        let size = bytes.len() as u64;
        let mut w = store
            .store_writer("pull-w", Some(size), Some(&digest))
            .unwrap();
        std::io::Write::write_all(&mut w, bytes).unwrap();
        let sealed = w.seal(size, &digest).unwrap();
        let mut batch = store.batch().unwrap();
        assert!(batch.adopt(&sealed, Labels::new()).unwrap());
        let Err(err) = store.store_writer("pull-w", Some(size), Some(&digest)) else {
            panic!("a second writer of an adopted ingest");
        };
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("adopted"), "{err}");
        assert_eq!(store.status("pull-w").unwrap().offset, size);
        drop(batch);
        let w = store
            .store_writer("pull-w", Some(size), Some(&digest))
            .unwrap();
        drop(w);
        // Adopted again and committed: the blob, and the ingest gone.
        let mut batch = store.batch().unwrap();
        assert!(batch.adopt(&sealed, Labels::new()).unwrap());
        batch.commit().unwrap();
        assert_eq!(store.info(&digest).unwrap().size, size);
        assert!(!sealed.path.exists());
    }

    /// Adopting holds no lock and no descriptor: 300 sealed downloads adopted by one batch
    /// leave the process's open files about as they were (tests beside it open a few).
    #[test]
    fn adoption_holds_no_descriptor_until_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sealed = Vec::new();
        for i in 0..300 {
            let bytes = format!("download {i}").into_bytes();
            let digest = Algorithm::Sha256.digest(&bytes);
            let mut w = store
                .store_writer(
                    &format!("pull-{i}"),
                    Some(bytes.len() as u64),
                    Some(&digest),
                )
                .unwrap();
            std::io::Write::write_all(&mut w, &bytes).unwrap();
            sealed.push(w.seal(bytes.len() as u64, &digest).unwrap());
        }
        let open_files = || fs::read_dir("/proc/self/fd").unwrap().count();
        let before = open_files();
        let mut batch = store.batch().unwrap();
        for s in &sealed {
            assert!(batch.adopt(s, Labels::new()).unwrap());
        }
        let during = open_files();
        assert!(
            during < before + 64,
            "{during} descriptors open after 300 adoptions, {before} before"
        );
        batch.commit().unwrap();
        for s in &sealed {
            assert!(store.info(&s.digest).is_ok());
            assert!(
                !s.path.exists(),
                "the ingest's name is gone after the commit"
            );
        }
        let out = store.fsck(&Default::default()).unwrap();
        assert!(out.problems.is_empty(), "{out:?}");
    }
}
