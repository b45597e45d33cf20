//! Ingests of the redb store: opening (and resuming) writers, status, listing, abort.
//!
//! An ingest is a record in `ingests` (reference → total, expected, started, file id) plus
//! its data file `ingest/<id>.data`, whose length is the offset and whose `flock` is the
//! reference's lock. A writer records its ingest before it first flushes bytes to the file
//! for resuming (or when it closes); a writer that commits at once never records it, and
//! bytes left without a record by a crash are discarded by the next writer or by gc.
//! Bytes are appended without touching the database.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::ReadableTable;

use crate::content::{IngestManager, Ingester, Status, Writer, validate_reference};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, ErrorKind, Result};
use crate::filter;
use crate::query::StatusFields;
use crate::store::Store;
use crate::store::locks::RefLock;
use crate::store::records::{self, IngestRecord, Nanos};
use crate::store::schema::INGESTS;
use crate::store::writer::StoreWriter;

/// The file id of the ingest `reference`: a hash of it, so any string is a safe key.
pub(crate) fn ingest_id(reference: &str) -> String {
    blake3::hash(reference.as_bytes()).to_hex().as_str()[..32].to_owned()
}

impl Store {
    /// The data file (and lock) of the ingest `reference`.
    pub(crate) fn ingest_data(&self, reference: &str) -> PathBuf {
        self.ingest_root()
            .join(format!("{}.data", ingest_id(reference)))
    }

    pub(crate) fn ingest_record(&self, reference: &str) -> Result<Option<IngestRecord>> {
        let txn = self.read_txn()?;
        let table = txn
            .open_table(INGESTS)
            .map_err(|e| Error::db("open the ingests table", e))?;
        match table
            .get(reference)
            .map_err(|e| Error::db("read an ingest record", e))?
        {
            Some(v) => Ok(Some(records::decode(v.value(), reference)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_ingest_record(&self, reference: &str, record: &IngestRecord) -> Result<()> {
        let (reference, bytes) = (reference.to_owned(), records::encode(record));
        self.group_write("open a writer", move |txn| {
            txn.open_table(INGESTS)
                .map_err(|e| Error::db("open the ingests table", e))?
                .insert(reference.as_str(), bytes.as_slice())
                .map_err(|e| Error::db("write an ingest record", e))?;
            Ok(())
        })
    }

    /// Removes the ingest's record and then its file, under its lock.
    pub(crate) fn remove_ingest(&self, reference: &str, lock: &RefLock) -> Result<()> {
        let owned = reference.to_owned();
        self.group_write("remove an ingest", move |txn| {
            txn.open_table(INGESTS)
                .map_err(|e| Error::db("open the ingests table", e))?
                .remove(owned.as_str())
                .map_err(|e| Error::db("remove an ingest record", e))?;
            Ok(())
        })?;
        lock.remove_file();
        Ok(())
    }

    /// The live owner (a batch of a pull in progress) whose directory holds the ingest file
    /// `data` (whose metadata is `m`) under its adopted name: that batch commits it, so the
    /// file is complete and nobody else may write to it. `None` when no live owner has it
    /// (a second name is then the blob's own, from a commit that died).
    pub(crate) fn adopted_by_live_owner(&self, data: &Path, m: &fs::Metadata) -> Option<String> {
        let name = adopted_name(data);
        let dirs = fs::read_dir(self.ingest_root()).ok()?;
        for entry in dirs.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let staged = entry.path().join(&name);
            let Ok(sm) = fs::metadata(&staged) else {
                continue;
            };
            let owner = entry.file_name().to_string_lossy().into_owned();
            if (sm.dev(), sm.ino()) == (m.dev(), m.ino()) && self.owner_alive(&owner) {
                return Some(owner);
            }
        }
        None
    }

    fn status_of(&self, reference: &str, record: &IngestRecord) -> Result<Status> {
        let data = self.ingest_data(reference);
        let (offset, updated) = match fs::metadata(&data) {
            // Adopted by a live pull's batch: complete, waiting for its commit.
            Ok(m) if m.nlink() > 1 && self.adopted_by_live_owner(&data, &m).is_some() => (
                m.len(),
                m.modified().map(Nanos::from).unwrap_or(record.started),
            ),
            // A file that also names a blob is not resumed (the next writer starts anew).
            Ok(m) if m.nlink() > 1 => (0, record.started),
            Ok(m) => (
                m.len(),
                m.modified().map(Nanos::from).unwrap_or(record.started),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, record.started),
            Err(e) => return Err(Error::io("stat ingest data", data, e)),
        };
        Ok(Status {
            reference: reference.to_owned(),
            offset,
            total: record.total,
            expected: parse_expected(record, reference)?,
            started_at: record.started.into(),
            updated_at: updated.max(record.started).into(),
        })
    }
}

/// The name under which a batch stages the adopted ingest file `data`
/// (`adopted-<id>.data`, in the batch's own directory).
pub(crate) fn adopted_name(data: &Path) -> String {
    format!(
        "adopted-{}",
        data.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    )
}

pub(crate) fn parse_expected(record: &IngestRecord, reference: &str) -> Result<Option<Digest>> {
    record
        .expected
        .as_deref()
        .map(|s| {
            Digest::parse(s).map_err(|_| {
                Error::Corrupted(format!("ingest {reference:?} records a malformed digest"))
            })
        })
        .transpose()
}

impl Ingester for Store {
    fn writer(
        &self,
        reference: &str,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
    ) -> Result<Box<dyn Writer>> {
        Ok(Box::new(self.store_writer(
            reference,
            expected_size,
            expected,
        )?))
    }
}

impl Store {
    /// [`Ingester::writer`] with the concrete type, which can also be sealed (pulls).
    pub(crate) fn store_writer(
        &self,
        reference: &str,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
    ) -> Result<StoreWriter> {
        validate_reference(reference)?;
        self.writable("open a writer")?;
        if let Some(d) = expected
            && self.blob_record(d)?.is_some()
        {
            return Err(Error::AlreadyExists(format!("content {d}")));
        }
        let data_path = self.ingest_data(reference);
        // Bytes without a record are not an ingest (a writer that crashed before its record
        // landed), and a file that also names a blob (a commit that crashed after publishing
        // it) must never be written to, not even by root, whom the blob's read-only mode does
        // not stop: unlink the name and lock a new file. Never truncated in place. The record
        // is read under each lock taken, as gc may drop it while no lock is held.
        let mut attempts = 0;
        let (lock, existing) = loop {
            let lock = RefLock::acquire(&data_path, reference)?;
            let existing = self.ingest_record(reference)?;
            if lock.created() {
                break (lock, existing);
            }
            let meta = lock
                .file()
                .metadata()
                .map_err(|e| Error::io("stat ingest data", &data_path, e))?;
            if existing.is_some() && meta.nlink() == 1 {
                break (lock, existing);
            }
            if let Some(owner) = self.adopted_by_live_owner(&data_path, &meta) {
                return Err(Error::Unavailable(format!(
                    "ingest ref {reference:?} is complete and adopted by the batch of a live \
                     process (ingest/{owner}); it lands with that batch's commit"
                )));
            }
            attempts += 1;
            if attempts == 8 {
                return Err(Error::Unavailable(format!(
                    "ingest ref {reference:?}: its file keeps being replaced under us"
                )));
            }
            fs::remove_file(&data_path)
                .map_err(|e| Error::io("remove stale ingest data", &data_path, e))?;
        };
        // Committed by another writer while this one waited for the lock (the holder's
        // commit released it): asked again under the lock, so no one writes a blob twice.
        if let Some(d) = expected
            && self.blob_record(d)?.is_some()
        {
            if lock.created() {
                lock.remove_file();
            }
            return Err(Error::AlreadyExists(format!("content {d}")));
        }
        let fresh = existing.is_none();
        let record = match existing {
            Some(mut rec) => {
                let want_expected = expected.map(ToString::to_string);
                let changed = (expected_size.is_some() && expected_size != rec.total)
                    || (want_expected.is_some() && want_expected != rec.expected);
                if changed {
                    rec.total = expected_size.or(rec.total);
                    rec.expected = want_expected.or(rec.expected);
                    self.put_ingest_record(reference, &rec)?;
                }
                rec
            }
            None => IngestRecord {
                total: expected_size,
                expected: expected.map(ToString::to_string),
                started: Nanos::now(),
                id: ingest_id(reference),
            },
        };
        let expected = parse_expected(&record, reference)?;
        let algorithm = expected.as_ref().map(Digest::algorithm).unwrap_or_default();
        let (hasher, offset) = if lock.created() {
            // A new file: nothing to hash.
            (algorithm.hasher(), 0)
        } else {
            hash_prefix(lock.file(), &data_path, algorithm, u64::MAX)?
        };
        // A new ingest's record is written with its first bytes (or at close): a writer that
        // opens, writes a small blob and commits pays no transaction for the ingest itself.
        Ok(StoreWriter::new(
            self.clone(),
            reference.to_owned(),
            lock,
            hasher,
            offset,
            record,
            expected,
            !fresh,
        ))
    }

    /// The writer of `reference` for the blob `digest`, or `None` when the blob is committed:
    /// one process downloads a blob, the others wait (pulls and the read-through cache). While another
    /// process (or thread) downloads it, waits for it, for as long as its ingest keeps
    /// growing (up to a minute without progress; ten once it is complete and only waits to be
    /// committed by its holder), and takes over if its holder dies.
    pub(crate) fn claim_ingest(
        &self,
        reference: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<StoreWriter>> {
        let mut last_offset = None;
        let mut idle_since = Instant::now();
        loop {
            if self.blob_record(digest)?.is_some() {
                return Ok(None);
            }
            match self.store_writer(reference, Some(size), Some(digest)) {
                Ok(w) => return Ok(Some(w)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    let offset = self.status(reference).ok().map(|s| s.offset);
                    let patience = if offset == Some(size) {
                        Duration::from_secs(600)
                    } else {
                        Duration::from_secs(60)
                    };
                    if offset != last_offset {
                        last_offset = offset;
                        idle_since = Instant::now();
                    } else if idle_since.elapsed() > patience {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Aborts the ingest `reference` of a failed download; a failure to is only logged.
    pub(crate) fn drop_ingest(&self, reference: &str) {
        if let Err(e) = self.abort(reference)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(reference, error = %e, "could not drop a failed download");
        }
    }
}

/// Hashes the first `limit` bytes of `file` (all of it when shorter), reading from its
/// start without moving its cursor; returns the hasher and how many bytes were hashed.
pub(crate) fn hash_prefix(
    file: &File,
    path: &Path,
    algorithm: Algorithm,
    limit: u64,
) -> Result<(Hasher, u64)> {
    use std::os::unix::fs::FileExt;
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    while n < limit {
        let want = buf
            .len()
            .min(usize::try_from(limit - n).unwrap_or(usize::MAX));
        match file.read_at(&mut buf[..want], n) {
            Ok(0) => break,
            Ok(k) => {
                hasher.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read ingest data", path, e)),
        }
    }
    Ok((hasher, n))
}

impl IngestManager for Store {
    fn status(&self, reference: &str) -> Result<Status> {
        match self.ingest_record(reference)? {
            Some(rec) => self.status_of(reference, &rec),
            None => Err(Error::NotFound(format!("ingest {reference:?}"))),
        }
    }

    fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>> {
        let filter = filter::parse_all(filters)?;
        let txn = self.read_txn()?;
        let table = txn
            .open_table(INGESTS)
            .map_err(|e| Error::db("open the ingests table", e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| Error::db("list ingests", e))? {
            let (k, v) = entry.map_err(|e| Error::db("list ingests", e))?;
            let reference = k.value();
            let rec: IngestRecord = records::decode(v.value(), reference)?;
            let status = self.status_of(reference, &rec)?;
            if filter.matches(&StatusFields(&status)) {
                out.push(status);
            }
        }
        Ok(out)
    }

    fn abort(&self, reference: &str) -> Result<()> {
        self.writable("abort an ingest")?;
        let path = self.ingest_data(reference);
        if self.ingest_record(reference)?.is_none() {
            // A live writer whose first bytes are still in its buffer has no record yet.
            drop(RefLock::acquire_existing(&path, reference)?);
            return Err(Error::NotFound(format!("ingest {reference:?}")));
        }
        let lock = RefLock::acquire(&path, reference)?;
        if self.ingest_record(reference)?.is_none() {
            // Committed or aborted while we took the lock.
            lock.remove_file();
            return Err(Error::NotFound(format!("ingest {reference:?}")));
        }
        self.remove_ingest(reference, &lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    use crate::content::{Labels, Manager};
    use crate::helpers;

    /// A commit that crashed after its transaction but before removing the ingest's file
    /// leaves that file hard-linked to the committed blob. The next writer of the reference
    /// must start a new file, not truncate or append to the blob's bytes.
    #[test]
    fn a_data_file_that_names_a_blob_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = helpers::write_blob(
            &store,
            "ref",
            &mut &b"committed"[..],
            None,
            None,
            Labels::new(),
        )
        .unwrap();
        let blob = store.blob_dir().path_for(&digest);
        let ingest = store.ingest_data("ref");
        for resumed in [false, true] {
            fs::hard_link(&blob, &ingest).unwrap();
            if resumed {
                // As if the crash came before the transaction: the record is still there.
                let rec = IngestRecord {
                    total: None,
                    expected: None,
                    started: Nanos::now(),
                    id: "x".into(),
                };
                store.put_ingest_record("ref", &rec).unwrap();
            }
            let mut w = store.writer("ref", None, None).unwrap();
            assert_eq!(w.status().unwrap().offset, 0);
            w.write_all(b"other bytes").unwrap();
            w.close().unwrap();
            assert_eq!(
                helpers::read_blob_verified(&store, &digest).unwrap(),
                b"committed"
            );
            store.abort("ref").unwrap();
        }
        assert!(store.info(&digest).is_ok());
    }
}
