//! containerd's content interfaces: [`Provider`], [`Manager`], [`Ingester`],
//! [`IngestManager`] and the [`Writer`] an ingester hands out, with the records they speak
//! in ([`Info`], [`Status`]).
//!
//! The traits are object safe, so that the conformance suite, the helpers and the CLI can work
//! over `&dyn ContentStore` whichever store is behind it.

use std::collections::BTreeMap;
use std::io;
use std::time::SystemTime;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Labels of a blob: key → value, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The largest key plus value, in bytes, one label may have (as in containerd).
pub const MAX_LABEL_SIZE: usize = 4096;

/// The longest ingest reference accepted, in bytes.
pub const MAX_REFERENCE_LEN: usize = 4096;

/// What the store knows about one committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was committed (stored, not the file's mtime).
    pub created_at: SystemTime,
    /// When its labels last changed.
    pub updated_at: SystemTime,
    /// Its labels.
    pub labels: Labels,
}

/// The state of one in-progress ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The caller-chosen reference that keys the ingest.
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// The expected total size, when the writer was told it.
    pub total: Option<u64>,
    /// The expected digest, when the writer was told it.
    pub expected: Option<Digest>,
    /// When the ingest was first opened; kept across resumes.
    pub started_at: SystemTime,
    /// When bytes were last written.
    pub updated_at: SystemTime,
}

/// Random-access reads of one committed blob.
pub trait ReaderAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read, 0 at or past the
    /// end. A read that crosses the end is short. Never blocks on other store operations.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
    /// The blob's size in bytes.
    fn size(&self) -> u64;
}

/// Hands out readers of committed content.
pub trait Provider {
    /// Opens `digest` for reading. The reader keeps working if the blob is deleted meanwhile.
    /// `NotFound` if there is no such blob.
    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>>;
}

/// Inspects and changes committed content.
pub trait Manager {
    /// The record of `digest`; `NotFound` when absent.
    fn info(&self, digest: &Digest) -> Result<Info>;

    /// Updates the labels of `info.digest` and returns the new record.
    ///
    /// No field paths, or `labels`, replaces every label with `info.labels`;
    /// `labels.<key>` sets that key from `info.labels`, or removes it when it is absent or
    /// empty there. Any other path is `InvalidArgument`; so is a label over
    /// [`MAX_LABEL_SIZE`]. `updated_at` moves. Durable on return.
    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info>;

    /// Calls `f` for every blob matching any of `filters` (containerd's filter language; none
    /// matches everything), in digest order, streaming. An error from `f` stops the walk and
    /// is returned. A filter that does not parse is `InvalidArgument`.
    fn walk(&self, f: &mut dyn FnMut(&Info) -> Result<()>, filters: &[&str]) -> Result<()>;

    /// Removes a blob: its record first, then its bytes. `NotFound` when absent. Readers
    /// opened before keep reading. Durable on return.
    fn delete(&self, digest: &Digest) -> Result<()>;
}

/// Opens writers for new content.
pub trait Ingester {
    /// Opens (or resumes) the ingest keyed by `reference`.
    ///
    /// An empty reference is `InvalidArgument`; a reference held by a live writer, in this
    /// process or another, is `Unavailable`; an `expected` digest that is already committed is
    /// `AlreadyExists`. An existing ingest is resumed: its offset, prefix digest and
    /// `started_at` carry over. (The redb store records a new ingest with its first bytes
    /// on disk, or when the writer is closed: until then other processes do not list it.)
    fn writer(
        &self,
        reference: &str,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
    ) -> Result<Box<dyn Writer>>;
}

/// Inspects and cancels in-progress ingests.
pub trait IngestManager {
    /// The status of the ingest `reference`; `NotFound` when there is none.
    fn status(&self, reference: &str) -> Result<Status>;
    /// Every ingest matching any of `filters` (fields `ref`, `expected`, `offset`, `total`),
    /// sorted by reference.
    fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>>;
    /// Removes the ingest `reference` and its bytes. `NotFound` when there is none,
    /// `Unavailable` while a live writer holds it.
    fn abort(&self, reference: &str) -> Result<()>;
}

/// All four content interfaces together.
pub trait ContentStore: Provider + Manager + Ingester + IngestManager + Send + Sync {}

impl<T: Provider + Manager + Ingester + IngestManager + Send + Sync> ContentStore for T {}

/// A writer of one ingest. It holds its reference until it is committed, closed or dropped.
pub trait Writer: io::Write + Send {
    /// The digest of everything written so far (sha256 unless the expected digest named
    /// another algorithm).
    fn digest(&self) -> Digest;

    /// The ingest's status as this writer sees it.
    fn status(&self) -> Result<Status>;

    /// Cuts the ingest back to `size` bytes (at most the current offset, else
    /// `InvalidArgument`) and re-hashes the kept prefix.
    fn truncate(&mut self, size: u64) -> Result<()>;

    /// Makes the written bytes a committed blob with `labels`, durable on return.
    ///
    /// `size` and `expected`, when given (or given when the writer was opened), must match:
    /// otherwise `FailedPrecondition` naming both values, and the ingest is kept to be resumed.
    /// Content that is already committed gives `AlreadyExists` and removes the ingest. A label
    /// over [`MAX_LABEL_SIZE`] is `InvalidArgument`. The reference is released in every case.
    fn commit(
        self: Box<Self>,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<Digest>;

    /// Releases the reference without committing; the ingest stays, to be resumed.
    fn close(self: Box<Self>) -> Result<()>;

    /// Removes the ingest, its bytes and its record, without committing, while this writer
    /// still holds the reference. Unlike dropping the writer and calling
    /// [`IngestManager::abort`], nothing can come between: no other writer, and no child
    /// process that a thread of this process was starting at that moment (a fork holds every
    /// open file description, and with it the reference's lock, until it execs).
    fn abort(self: Box<Self>) -> Result<()>;
}

/// Checks labels against containerd's limits: a non-empty key, key plus value at most
/// [`MAX_LABEL_SIZE`] bytes.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        validate_label(k, v)?;
    }
    Ok(())
}

/// Checks one label; see [`validate_labels`].
pub fn validate_label(key: &str, value: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("label key must not be empty".into()));
    }
    if key.len() + value.len() > MAX_LABEL_SIZE {
        let shown: String = key.chars().take(40).collect();
        return Err(Error::InvalidArgument(format!(
            "label {shown:?}: key and value are {} bytes, more than the maximum {MAX_LABEL_SIZE}",
            key.len() + value.len()
        )));
    }
    Ok(())
}

/// Checks an ingest reference: non-empty, at most [`MAX_REFERENCE_LEN`] bytes.
pub fn validate_reference(reference: &str) -> Result<()> {
    if reference.is_empty() {
        return Err(Error::InvalidArgument(
            "ingest reference must not be empty".into(),
        ));
    }
    if reference.len() > MAX_REFERENCE_LEN {
        return Err(Error::InvalidArgument(format!(
            "ingest reference is {} bytes, more than the maximum {MAX_REFERENCE_LEN}",
            reference.len()
        )));
    }
    Ok(())
}

/// Applies containerd's label update rules (see [`Manager::update`]) to `current`.
pub fn apply_label_update(current: &Labels, info: &Info, fieldpaths: &[&str]) -> Result<Labels> {
    if fieldpaths.is_empty() {
        validate_labels(&info.labels)?;
        return Ok(info.labels.clone());
    }
    let mut labels = current.clone();
    for path in fieldpaths {
        if *path == "labels" {
            validate_labels(&info.labels)?;
            labels = info.labels.clone();
        } else if let Some(key) = path.strip_prefix("labels.") {
            match info.labels.get(key).filter(|v| !v.is_empty()) {
                Some(v) => {
                    validate_label(key, v)?;
                    labels.insert(key.to_owned(), v.clone());
                }
                None => {
                    labels.remove(key);
                }
            }
        } else {
            return Err(Error::InvalidArgument(format!(
                "field path {path:?} cannot be updated (only \"labels\" and \"labels.<key>\")"
            )));
        }
    }
    Ok(labels)
}
