//! The writer of one ingest, and its commit.
//!
//! Bytes are hashed as they arrive and appended to `ingest/<id>.data` through a [`Pipe`]
//! (large positional writes on a second thread, overlapping the hashing); no database
//! transaction is open while they flow. Commit checks size and digest,
//! then hands the fsynced file to [`Store::commit_ingest`].

// Sealing, streaming reads and capture serve pulls and the read-through cache; without the
// `registry` feature nothing calls them.
#![cfg_attr(not(feature = "registry"), allow(dead_code))]

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::content::{Labels, Status, Writer, validate_labels};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::ingest::hash_prefix;
use crate::store::locks::RefLock;
use crate::store::pipe::Pipe;
use crate::store::records::{IngestRecord, Nanos};

pub(crate) struct StoreWriter {
    store: Store,
    reference: String,
    lock: RefLock,
    file: Arc<File>,
    data_path: PathBuf,
    hasher: Hasher,
    /// Every byte received, in order; `pipe.end()` is the offset.
    pipe: Pipe,
    record: IngestRecord,
    expected: Option<Digest>,
    updated: Nanos,
    /// Whether the ingest's record is in the database: written before bytes reach the file
    /// other than in a commit, so that what a writer leaves to resume is always recorded.
    /// A commit writes without it (its transaction drops the record anyway).
    recorded: bool,
    /// Committed (or found committed): the ingest is gone, drop must not bring it back.
    finished: bool,
    /// The lease the committed blob joins, in the commit's transaction.
    lease: Option<String>,
}

impl StoreWriter {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Store,
        reference: String,
        lock: RefLock,
        hasher: Hasher,
        offset: u64,
        record: IngestRecord,
        expected: Option<Digest>,
        recorded: bool,
    ) -> Self {
        let file = Arc::clone(lock.file());
        let data_path = lock.path().to_path_buf();
        let pipe = store.pipe(Arc::clone(&file), data_path.clone(), offset);
        // A resumed ingest was last written when its file was (see `keep_write_time`).
        let updated = (offset > 0)
            .then(|| file.metadata().and_then(|m| m.modified()).ok())
            .flatten()
            .map_or(record.started, Nanos::from);
        StoreWriter {
            pipe,
            store,
            reference,
            lock,
            file,
            data_path,
            hasher,
            updated,
            record,
            expected,
            recorded,
            finished: false,
            lease: None,
        }
    }

    /// This writer, with its commit putting the blob in lease `lease`.
    pub(crate) fn in_lease(mut self, lease: String) -> Self {
        self.lease = Some(lease);
        self
    }

    fn ensure_recorded(&mut self) -> Result<()> {
        if !self.recorded {
            self.store
                .put_ingest_record(&self.reference, &self.record)?;
            self.recorded = true;
        }
        Ok(())
    }

    /// Puts every byte received into the file, recording the ingest first if that has not
    /// happened yet.
    fn flush_buf(&mut self) -> Result<()> {
        if self.pipe.pending() > 0 {
            self.ensure_recorded()?;
        }
        self.pipe.flush()
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if self.pipe.would_write(bytes.len()) {
            self.ensure_recorded()?;
        }
        // Hashed as handed over; a failed write spends the pipe, so digest and file never
        // go on out of step.
        self.pipe.write(bytes)?;
        self.hasher.update(bytes);
        self.updated = Nanos::now();
        Ok(())
    }

    /// Reads `src` to its end straight into the pipe's buffers (no copy through a buffer of
    /// the caller's), hashing as it goes; `each` sees every chunk. Returns the bytes taken
    /// and, when `src` failed, its error: the bytes before it are kept, as a cut download's
    /// are. `Err` is the store's own failure (recording the ingest, writing the file).
    pub(crate) fn read_from(
        &mut self,
        src: &mut dyn io::Read,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(u64, Option<io::Error>)> {
        self.ensure_recorded()?;
        let mut src = Capture {
            inner: src,
            failed: None,
            taken: 0,
        };
        let path = self.pipe.path().to_path_buf();
        let hasher = &mut self.hasher;
        let got = self.pipe.read_from(&mut src, &path, &mut |chunk| {
            hasher.update(chunk);
            each(chunk);
        });
        self.updated = Nanos::now();
        match (got, src.failed) {
            (Ok(n), _) => Ok((n, None)),
            (Err(_), Some(e)) => Ok((src.taken, Some(e))),
            (Err(e), None) => Err(e),
        }
    }

    /// The digest to check against `expected`: the running one, or a re-hash of the file when
    /// the caller names another algorithm than the writer was opened with.
    fn final_digest(&mut self, expected: Option<&Digest>) -> Result<Digest> {
        match expected {
            Some(e) if e.algorithm() != self.hasher.algorithm() => {
                let (h, _) = hash_prefix(&self.file, &self.data_path, e.algorithm(), u64::MAX)?;
                Ok(h.finalize())
            }
            _ => Ok(self.hasher.current()),
        }
    }
}

/// Ingests at least this large are fsynced when sealed; smaller ones by their batch.
const SEAL_SYNC_MIN: u64 = 4 << 20;

/// A finished ingest: every byte written, size and digest checked, its reference released.
/// The ingest stays (recorded, resumable) until a batch adopts it and commits
/// ([`Batch::adopt`](crate::store::batch::Batch::adopt)), which makes its file the blob's
/// bytes without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub(crate) reference: String,
    pub(crate) path: PathBuf,
    /// The content's digest (checked).
    pub digest: Digest,
    /// Its size (checked).
    pub size: u64,
    /// The file as sealed (device, inode, ctime): an adopting batch checks it is still that
    /// file, unchanged (any write or truncation moves the ctime).
    pub(crate) identity: (u64, u64, i64, i64),
    /// Whether sealing fsynced it (a large ingest): unchanged since, it needs no other.
    pub(crate) synced: bool,
}

impl StoreWriter {
    /// Writes every byte out and checks `size` and `expected`, then releases the
    /// reference, keeping the ingest. A mismatch is `FailedPrecondition` naming both values,
    /// and the ingest is removed (under this writer's lock, as [`Writer::abort`] does): wrong
    /// bytes are never resumed from.
    pub(crate) fn seal(mut self, size: u64, expected: &Digest) -> Result<Sealed> {
        use std::os::unix::fs::MetadataExt;
        self.flush_buf()?;
        self.ensure_recorded()?;
        // Every file is durable before the adopting batch links any; this decides when: a
        // large file now, while other downloads go on (most of it is being written back
        // already), and the batch does not sync it again if it is unchanged; a small one by
        // the batch, with the others. (An ingest a crash tore is re-hashed when resumed.)
        let synced = self.pipe.end() >= SEAL_SYNC_MIN;
        if synced {
            self.file
                .sync_data()
                .map_err(|e| Error::io("fsync ingest data", &self.data_path, e))?;
        }
        let written = self.pipe.end();
        if written != size {
            let e = Error::FailedPrecondition(format!(
                "unexpected size {written}, expected {size} (ingest {:?})",
                self.reference
            ));
            return Err(self.discard_for(e));
        }
        let actual = self.final_digest(Some(expected))?;
        if actual != *expected {
            let e = Error::FailedPrecondition(format!(
                "unexpected digest {actual}, expected {expected} (ingest {:?})",
                self.reference
            ));
            return Err(self.discard_for(e));
        }
        // Touched: gc takes an ingest nobody wrote for a day as abandoned, and a complete one
        // resumed from an old pull was not written now. Nothing is left for drop to flush or
        // touch: the identity below must stay the file's until the batch adopts it, or the
        // batch would hash it again and sync it again.
        self.finished = true;
        self.file
            .set_modified(std::time::SystemTime::now())
            .map_err(|e| Error::io("touch ingest data", &self.data_path, e))?;
        let m = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat ingest data", &self.data_path, e))?;
        Ok(Sealed {
            reference: self.reference.clone(),
            path: self.data_path.clone(),
            digest: actual,
            size,
            identity: (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()),
            synced,
        })
    }
}

impl StoreWriter {
    /// [`Writer::commit`] without the box, checking `size` and `expected`.
    pub(crate) fn commit_boxed(self, size: u64, expected: &Digest, labels: Labels) -> Result<()> {
        Writer::commit(Box::new(self), Some(size), Some(expected), labels).map(drop)
    }
}

impl io::Write for StoreWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf).map_err(Error::into_io)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf().map_err(Error::into_io)
    }
}

impl Writer for StoreWriter {
    fn digest(&self) -> Digest {
        self.hasher.current()
    }

    fn status(&self) -> Result<Status> {
        Ok(Status {
            reference: self.reference.clone(),
            offset: self.pipe.end(),
            total: self.record.total,
            expected: self.expected,
            started_at: self.record.started.into(),
            updated_at: self.updated.max(self.record.started).into(),
        })
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        if size > self.pipe.end() {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate ingest {:?} to {size} bytes: only {} written",
                self.reference,
                self.pipe.end()
            )));
        }
        self.flush_buf()?;
        self.ensure_recorded()?;
        self.file
            .set_len(size)
            .map_err(|e| Error::io("truncate ingest data", &self.data_path, e))?;
        let (hasher, n) = hash_prefix(&self.file, &self.data_path, self.hasher.algorithm(), size)?;
        self.hasher = hasher;
        self.pipe.restart_at(n);
        self.updated = Nanos::now();
        Ok(())
    }

    fn commit(
        self: Box<Self>,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<Digest> {
        let mut w = *self;
        validate_labels(&labels)?;
        // Not recorded first: the commit's transaction drops the record anyway. A crash before
        // it leaves bytes without a record, which the next writer of the reference discards.
        // A blob still whole in the buffer is parsed for references from there.
        let buffered_children = w.pipe.whole().map(crate::edges::children);
        // Announced to the group commit now when only small syncs remain; a large blob's
        // sync may take seconds, so it announces itself after it.
        let early = buffered_children.is_some().then(|| w.store.announce());
        w.pipe.flush()?;
        w.file
            .sync_data()
            .map_err(|e| Error::io("fsync ingest data", &w.data_path, e))?;
        let arrival = early.unwrap_or_else(|| w.store.announce());
        let written = w.pipe.end();
        if let Some(want) = size.or(w.record.total)
            && want != written
        {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {written}, expected {want} (ingest {:?})",
                w.reference
            )));
        }
        let expected = expected.cloned().or(w.expected);
        let actual = w.final_digest(expected.as_ref())?;
        if let Some(want) = &expected
            && *want != actual
        {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {actual}, expected {want} (ingest {:?})",
                w.reference
            )));
        }
        let children = match buffered_children {
            Some(c) => c,
            None => crate::edges::children_of_path(&w.data_path)?,
        };
        let committed = w.store.commit_ingest(
            &w.reference,
            &w.lock,
            &actual,
            written,
            labels,
            children.unwrap_or_default(),
            arrival,
            w.lease.as_deref(),
        );
        if committed.is_ok()
            || committed
                .as_ref()
                .is_err_and(|e| e.kind() == crate::error::ErrorKind::AlreadyExists)
        {
            w.finished = true;
        }
        committed.map(|()| actual)
    }

    fn close(self: Box<Self>) -> Result<()> {
        let mut w = *self;
        w.flush_buf()?;
        w.keep_write_time();
        w.ensure_recorded()
    }

    fn abort(self: Box<Self>) -> Result<()> {
        (*self).discard()
    }
}

impl StoreWriter {
    /// [`StoreWriter::discard`] after `e`, which it returns (a failed removal is logged:
    /// gc reclaims what it leaves).
    fn discard_for(self, e: Error) -> Error {
        let reference = self.reference.clone();
        if let Err(d) = self.discard() {
            tracing::warn!(%reference, error = %d, "could not remove an ingest of wrong bytes");
        }
        e
    }

    /// Sets the file's mtime to when its last bytes were handed to this writer (they reach
    /// the file later, through the pipe), so that a writer resuming the ingest reports that
    /// time as `updated_at`, as containerd's store does.
    fn keep_write_time(&self) {
        if self.pipe.end() > 0 {
            let _ = self.file.set_modified(self.updated.into());
        }
    }

    /// See [`Writer::abort`].
    pub(crate) fn discard(mut self) -> Result<()> {
        // Nothing to keep resumable: drop must neither flush nor record.
        self.finished = true;
        if self.recorded {
            self.store.remove_ingest(&self.reference, &self.lock)
        } else {
            self.lock.remove_file();
            Ok(())
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        // Keep what was received resumable even when the caller forgot to close.
        if self.finished {
            return;
        }
        let flushed = self.flush_buf();
        self.keep_write_time();
        if let Err(e) = flushed.and_then(|()| self.ensure_recorded()) {
            tracing::warn!(reference = %self.reference, error = %e, "could not flush ingest on drop");
        }
    }
}

/// A reader that keeps its source's error (the pipe only reports that reading failed).
struct Capture<'a> {
    inner: &'a mut dyn io::Read,
    failed: Option<io::Error>,
    taken: u64,
}

impl io::Read for Capture<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.taken += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failed = Some(e);
                Err(io::Error::new(kind, "the source failed"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use crate::content::{IngestManager, Writer};
    use crate::error::ErrorKind;
    use crate::store::Store;

    /// A writer that waits for a reference's lock while its holder commits the blob gets
    /// `AlreadyExists` (or `Unavailable` if the commit outlasts the wait), never a fresh
    /// ingest of a blob that is already there: it would fetch the blob a second time.
    #[test]
    fn a_writer_waiting_on_a_commit_of_its_blob_gets_already_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for round in 0..20u8 {
            let bytes = vec![round; 4096];
            let digest = crate::digest::Algorithm::Sha256.digest(&bytes);
            let mut a = store.store_writer("r", Some(4096), Some(&digest)).unwrap();
            a.write_all(&bytes).unwrap();
            std::thread::scope(|s| {
                let waiter = s.spawn(|| store.store_writer("r", Some(4096), Some(&digest)).err());
                std::thread::sleep(std::time::Duration::from_millis(3));
                Box::new(a)
                    .commit(Some(4096), Some(&digest), crate::content::Labels::new())
                    .unwrap();
                let e = waiter.join().unwrap();
                let kind = e.as_ref().map(|e| e.kind());
                assert!(
                    matches!(
                        kind,
                        Some(ErrorKind::AlreadyExists | ErrorKind::Unavailable)
                    ),
                    "round {round}: {e:?}"
                );
            });
        }
    }

    /// What seal reports as the file's identity stays its identity: dropping the sealed
    /// writer touches nothing, so the adopting batch neither hashes nor syncs it again (a
    /// drop that set the mtime back to the last write would move the ctime past the seal's).
    #[test]
    fn a_sealed_ingest_keeps_the_identity_seal_reported() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes = vec![7u8; 3 << 20];
        let digest = crate::digest::Algorithm::Sha256.digest(&bytes);
        let mut w = store
            .store_writer("ref", Some(bytes.len() as u64), Some(&digest))
            .unwrap();
        w.write_all(&bytes).unwrap();
        // The last write lies well before the seal, so a touch back to it would show.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before_seal = std::time::SystemTime::now();
        let sealed = w.seal(bytes.len() as u64, &digest).unwrap();
        let m = std::fs::metadata(&sealed.path).unwrap();
        assert!(m.modified().unwrap() >= before_seal - std::time::Duration::from_millis(10));
        assert_eq!(
            (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()),
            sealed.identity
        );
    }

    /// A child process that another thread is starting holds a copy of every open file
    /// description until it execs, the lock of a writer's ingest among them. Dropping the
    /// writer and aborting from outside fails in that window (the reference is still
    /// locked); the writer's own abort removes the ingest under the lock it holds.
    #[test]
    fn a_writer_aborts_its_ingest_while_a_fork_still_holds_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for own in [false, true] {
            let mut w = store.store_writer("ref", None, None).unwrap();
            w.write_all(b"partial bytes").unwrap();
            w.flush().unwrap();
            // What a fork inherits: another descriptor of the same open file description.
            let inherited = w.file.try_clone().unwrap();
            if own {
                Box::new(w).abort().unwrap();
            } else {
                drop(w);
                let e = store.abort("ref").unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                drop(inherited);
                store.abort("ref").unwrap();
                continue;
            }
            drop(inherited);
            assert!(store.list_statuses(&[]).unwrap().is_empty());
            assert!(!store.ingest_data("ref").exists());
        }
        // Sealing wrong bytes removes them the same way (a pull never resumes from them).
        let mut w = store.store_writer("sealed", None, None).unwrap();
        w.write_all(b"not what was asked").unwrap();
        let inherited = w.file.try_clone().unwrap();
        let wanted = crate::digest::Algorithm::Sha256.digest(b"what was asked");
        let e = w.seal(18, &wanted).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        drop(inherited);
        assert!(store.list_statuses(&[]).unwrap().is_empty());
        assert!(!store.ingest_data("sealed").exists());
        // A writer whose bytes never left its buffer has no record: its abort leaves nothing.
        let mut w = store.store_writer("small", None, None).unwrap();
        w.write_all(b"x").unwrap();
        Box::new(w).abort().unwrap();
        assert!(store.list_statuses(&[]).unwrap().is_empty());
        assert!(!store.ingest_data("small").exists());
    }
}
