//! `MemoryStore`: the content interfaces over plain maps in memory. It is the reference model
//! the conformance suite and the property tests hold the redb store to, so it follows the
//! same contract (and error kinds) as simply as it can.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::content::{
    Info, IngestManager, Ingester, Labels, Manager, Provider, ReaderAt, Status, Writer,
    apply_label_update, validate_labels, validate_reference,
};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::filter;
use crate::query::{InfoFields, StatusFields};

/// An in-memory content store. Clones share the same contents.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    blobs: BTreeMap<Digest, Blob>,
    ingests: BTreeMap<String, Ingest>,
    /// References held by a live writer.
    locked: BTreeSet<String>,
}

struct Blob {
    bytes: Arc<Vec<u8>>,
    created: SystemTime,
    updated: SystemTime,
    labels: Labels,
}

struct Ingest {
    data: Vec<u8>,
    total: Option<u64>,
    expected: Option<Digest>,
    started: SystemTime,
    updated: SystemTime,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn info_of(digest: &Digest, b: &Blob) -> Info {
    Info {
        digest: *digest,
        size: b.bytes.len() as u64,
        created_at: b.created,
        updated_at: b.updated,
        labels: b.labels.clone(),
    }
}

fn status_of(reference: &str, i: &Ingest) -> Status {
    Status {
        reference: reference.to_owned(),
        offset: i.data.len() as u64,
        total: i.total,
        expected: i.expected,
        started_at: i.started,
        updated_at: i.updated,
    }
}

fn not_found(digest: &Digest) -> Error {
    Error::NotFound(format!("content {digest}"))
}

impl Provider for MemoryStore {
    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>> {
        let st = self.state.lock();
        let b = st.blobs.get(digest).ok_or_else(|| not_found(digest))?;
        Ok(Box::new(BytesReader(b.bytes.clone())))
    }
}

struct BytesReader(Arc<Vec<u8>>);

impl ReaderAt for BytesReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = self.0.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

impl Manager for MemoryStore {
    fn info(&self, digest: &Digest) -> Result<Info> {
        let st = self.state.lock();
        st.blobs
            .get(digest)
            .map(|b| info_of(digest, b))
            .ok_or_else(|| not_found(digest))
    }

    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        let mut st = self.state.lock();
        let b = st
            .blobs
            .get_mut(&info.digest)
            .ok_or_else(|| not_found(&info.digest))?;
        b.labels = apply_label_update(&b.labels, info, fieldpaths)?;
        b.updated = SystemTime::now().max(b.updated);
        Ok(info_of(&info.digest, b))
    }

    fn walk(&self, f: &mut dyn FnMut(&Info) -> Result<()>, filters: &[&str]) -> Result<()> {
        let filter = filter::parse_all(filters)?;
        // Snapshot first so that `f` may call back into the store.
        let infos: Vec<Info> = {
            let st = self.state.lock();
            st.blobs.iter().map(|(d, b)| info_of(d, b)).collect()
        };
        for info in infos.iter().filter(|i| filter.matches(&InfoFields(i))) {
            f(info)?;
        }
        Ok(())
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        let mut st = self.state.lock();
        st.blobs
            .remove(digest)
            .map(|_| ())
            .ok_or_else(|| not_found(digest))
    }
}

impl Ingester for MemoryStore {
    fn writer(
        &self,
        reference: &str,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
    ) -> Result<Box<dyn Writer>> {
        validate_reference(reference)?;
        let mut st = self.state.lock();
        if let Some(d) = expected
            && st.blobs.contains_key(d)
        {
            return Err(Error::AlreadyExists(format!("content {d}")));
        }
        if st.locked.contains(reference) {
            return Err(Error::Unavailable(format!(
                "ingest ref {reference:?} is locked by a live writer"
            )));
        }
        let now = SystemTime::now();
        let ingest = st
            .ingests
            .entry(reference.to_owned())
            .or_insert_with(|| Ingest {
                data: Vec::new(),
                total: None,
                expected: None,
                started: now,
                updated: now,
            });
        if expected_size.is_some() {
            ingest.total = expected_size;
        }
        if expected.is_some() {
            ingest.expected = expected.cloned();
        }
        let algorithm = ingest
            .expected
            .as_ref()
            .map(Digest::algorithm)
            .unwrap_or_default();
        let mut hasher = algorithm.hasher();
        hasher.update(&ingest.data);
        st.locked.insert(reference.to_owned());
        Ok(Box::new(MemoryWriter {
            state: self.state.clone(),
            reference: reference.to_owned(),
            hasher,
        }))
    }
}

impl IngestManager for MemoryStore {
    fn status(&self, reference: &str) -> Result<Status> {
        let st = self.state.lock();
        st.ingests
            .get(reference)
            .map(|i| status_of(reference, i))
            .ok_or_else(|| Error::NotFound(format!("ingest {reference:?}")))
    }

    fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>> {
        let filter = filter::parse_all(filters)?;
        let st = self.state.lock();
        Ok(st
            .ingests
            .iter()
            .map(|(r, i)| status_of(r, i))
            .filter(|s| filter.matches(&StatusFields(s)))
            .collect())
    }

    fn abort(&self, reference: &str) -> Result<()> {
        let mut st = self.state.lock();
        if !st.ingests.contains_key(reference) {
            return Err(Error::NotFound(format!("ingest {reference:?}")));
        }
        if st.locked.contains(reference) {
            return Err(Error::Unavailable(format!(
                "ingest ref {reference:?} is locked by a live writer"
            )));
        }
        st.ingests.remove(reference);
        Ok(())
    }
}

struct MemoryWriter {
    state: Arc<Mutex<State>>,
    reference: String,
    hasher: Hasher,
}

impl MemoryWriter {
    fn with_ingest<T>(&self, f: impl FnOnce(&mut Ingest) -> T) -> T {
        let mut st = self.state.lock();
        let ingest = st
            .ingests
            .get_mut(&self.reference)
            .expect("a live writer's ingest cannot be aborted or committed by others");
        f(ingest)
    }
}

impl io::Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with_ingest(|i| {
            i.data.extend_from_slice(buf);
            i.updated = SystemTime::now();
        });
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Writer for MemoryWriter {
    fn digest(&self) -> Digest {
        self.hasher.current()
    }

    fn status(&self) -> Result<Status> {
        Ok(self.with_ingest(|i| status_of(&self.reference, i)))
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        let algorithm = self.hasher.algorithm();
        let hasher = self.with_ingest(|i| {
            if size > i.data.len() as u64 {
                return Err(Error::InvalidArgument(format!(
                    "cannot truncate ingest to {size} bytes: only {} written",
                    i.data.len()
                )));
            }
            i.data.truncate(size as usize);
            i.updated = SystemTime::now();
            let mut h = algorithm.hasher();
            h.update(&i.data);
            Ok(h)
        })?;
        self.hasher = hasher;
        Ok(())
    }

    fn commit(
        self: Box<Self>,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<Digest> {
        validate_labels(&labels)?;
        let mut st = self.state.lock();
        let ingest = st
            .ingests
            .get(&self.reference)
            .expect("a live writer's ingest exists");
        let offset = ingest.data.len() as u64;
        if let Some(want) = size.or(ingest.total)
            && want != offset
        {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {offset}, expected {want}"
            )));
        }
        let expected = expected.cloned().or(ingest.expected);
        let actual = match &expected {
            Some(e) if e.algorithm() != self.hasher.algorithm() => {
                e.algorithm().digest(&ingest.data)
            }
            _ => self.hasher.current(),
        };
        if let Some(want) = &expected
            && *want != actual
        {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {actual}, expected {want}"
            )));
        }
        let ingest = st.ingests.remove(&self.reference).expect("checked above");
        if st.blobs.contains_key(&actual) {
            return Err(Error::AlreadyExists(format!("content {actual}")));
        }
        let now = SystemTime::now();
        st.blobs.insert(
            actual,
            Blob {
                bytes: Arc::new(ingest.data),
                created: now,
                updated: now,
                labels,
            },
        );
        Ok(actual)
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    fn abort(self: Box<Self>) -> Result<()> {
        self.state.lock().ingests.remove(&self.reference);
        Ok(())
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        self.state.lock().locked.remove(&self.reference);
    }
}
