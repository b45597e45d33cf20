//! The writer of one ingest, and its commit.
//!
//! Bytes are hashed as they arrive and appended to `ingest/<id>/data` in large positional
//! writes; no database transaction is open while they flow. Commit checks size and digest,
//! then hands the fsynced file to [`Store::commit_ingest`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::content::{Labels, Status, Writer, validate_labels};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::ingest::hash_prefix;
use crate::store::locks::RefLock;
use crate::store::records::{IngestRecord, Nanos};

/// Bytes gathered before one write to the data file.
const BUFFER: usize = 1 << 20;

pub(crate) struct StoreWriter {
    store: Store,
    reference: String,
    lock: RefLock,
    file: File,
    data_path: PathBuf,
    hasher: Hasher,
    /// Bytes received, buffered ones included.
    offset: u64,
    /// Bytes received but not yet in the file.
    buf: Vec<u8>,
    record: IngestRecord,
    expected: Option<Digest>,
    updated: Nanos,
    /// Whether the ingest's record is in the database (written before the first byte
    /// reaches the file, so that bytes on disk always belong to a recorded ingest).
    recorded: bool,
    /// Committed (or found committed): the ingest is gone, drop must not bring it back.
    finished: bool,
}

impl StoreWriter {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Store,
        reference: String,
        lock: RefLock,
        file: File,
        data_path: PathBuf,
        hasher: Hasher,
        offset: u64,
        record: IngestRecord,
        expected: Option<Digest>,
        recorded: bool,
    ) -> Self {
        StoreWriter {
            store,
            reference,
            lock,
            file,
            data_path,
            hasher,
            offset,
            buf: Vec::new(),
            updated: record.started,
            record,
            expected,
            recorded,
            finished: false,
        }
    }

    fn ensure_recorded(&mut self) -> Result<()> {
        if !self.recorded {
            self.store
                .put_ingest_record(&self.reference, &self.record)?;
            self.recorded = true;
        }
        Ok(())
    }

    fn flushed(&self) -> u64 {
        self.offset - self.buf.len() as u64
    }

    fn write_at(&mut self, bytes: &[u8], at: u64) -> Result<()> {
        self.ensure_recorded()?;
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| Error::io("write ingest data", &self.data_path, e))
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let at = self.flushed();
            let buf = std::mem::take(&mut self.buf);
            let written = self.write_at(&buf, at);
            self.buf = buf;
            written?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the buffer without recording the ingest: for commit, whose transaction drops
    /// the record anyway. A crash before that transaction leaves bytes without a record,
    /// which the next writer of the reference discards.
    fn flush_for_commit(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let at = self.flushed();
            self.file
                .write_all_at(&self.buf, at)
                .map_err(|e| Error::io("write ingest data", &self.data_path, e))?;
            self.buf.clear();
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if self.buf.len() + bytes.len() > BUFFER {
            self.flush_buf()?;
        }
        if bytes.len() >= BUFFER {
            self.write_at(bytes, self.offset)?;
        } else {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(BUFFER);
            }
            self.buf.extend_from_slice(bytes);
        }
        // Hashed only once accepted, so a failed write leaves digest and offset in step.
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        self.updated = Nanos::now();
        Ok(())
    }

    /// The digest to check against `expected`: the running one, or a re-hash of the file when
    /// the caller names another algorithm than the writer was opened with.
    fn final_digest(&mut self, expected: Option<&Digest>) -> Result<Digest> {
        match expected {
            Some(e) if e.algorithm() != self.hasher.algorithm() => {
                let (h, _) = hash_prefix(&mut self.file, &self.data_path, e.algorithm(), u64::MAX)?;
                Ok(h.finalize())
            }
            _ => Ok(self.hasher.current()),
        }
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
            offset: self.offset,
            total: self.record.total,
            expected: self.expected.clone(),
            started_at: self.record.started.into(),
            updated_at: self.updated.max(self.record.started).into(),
        })
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        if size > self.offset {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate ingest {:?} to {size} bytes: only {} written",
                self.reference, self.offset
            )));
        }
        self.flush_buf()?;
        self.ensure_recorded()?;
        self.file
            .set_len(size)
            .map_err(|e| Error::io("truncate ingest data", &self.data_path, e))?;
        let (hasher, n) = hash_prefix(
            &mut self.file,
            &self.data_path,
            self.hasher.algorithm(),
            size,
        )?;
        self.hasher = hasher;
        self.offset = n;
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
        w.flush_for_commit()?;
        w.file
            .sync_data()
            .map_err(|e| Error::io("fsync ingest data", &w.data_path, e))?;
        if let Some(want) = size.or(w.record.total)
            && want != w.offset
        {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {}, expected {want} (ingest {:?})",
                w.offset, w.reference
            )));
        }
        let expected = expected.cloned().or_else(|| w.expected.clone());
        let actual = w.final_digest(expected.as_ref())?;
        if let Some(want) = &expected
            && *want != actual
        {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {actual}, expected {want} (ingest {:?})",
                w.reference
            )));
        }
        let committed = w.store.commit_ingest(
            &w.reference,
            &w.lock,
            &w.data_path,
            &actual,
            w.offset,
            labels,
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
        w.ensure_recorded()
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        // Keep what was received resumable even when the caller forgot to close.
        if self.finished {
            return;
        }
        if let Err(e) = self.flush_buf().and_then(|()| self.ensure_recorded()) {
            tracing::warn!(reference = %self.reference, error = %e, "could not flush ingest on drop");
        }
    }
}
