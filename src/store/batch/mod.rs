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

use crate::content::{Labels, validate_labels};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, ErrorKind, Result};
use crate::names::AsName;
use crate::store::Store;
use crate::store::locks::RefLock;
use crate::store::owner::OwnerDir;
use crate::store::records::Nanos;
use crate::store::schema::{BLOBS, INGESTS, LEASE_RESOURCES};

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
        name: impl AsName,
        target: Descriptor,
        labels: Option<Labels>,
    ) -> Result<String> {
        let key = name.as_name()?.to_string();
        crate::names::descriptor_digest(&target)?;
        self.names.push((key.clone(), target, labels));
        Ok(key)
    }
}

mod commit;
#[cfg(test)]
mod tests;
