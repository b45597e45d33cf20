//! A read-through cache: blobs read through the store from a [`Source`] (a registry
//! repository, or anything else that can stream a blob from an offset) are served from the
//! store when present, and otherwise streamed from the source to the caller while they are
//! written into the ingest `pull-<digest>`, and committed only once fully read and verified.
//!
//! - A reader that stops early leaves no committed blob; the bytes it got stay in the ingest,
//!   and the next reader (or pull) resumes from them with a `Range` request.
//! - Bytes that do not hash to the digest, or more bytes than the size, are refused: the
//!   read ends in an error, nothing is committed and the ingest is dropped. (The caller has
//!   been handed those bytes by then — streaming cannot check a digest before its end — so
//!   a caller that must not act on unverified bytes reads to the end first.)
//! - Concurrent readers of one missing blob fetch it once: the second waits on the ingest's
//!   lock while the first streams, then reads the committed blob.
//!
//! [`ReadThrough::image`] is an image source for one platform over the cache (linuxkit's
//! `NewSource(ref, platform, descriptor)`): the reference resolves in the store when it
//! names an image or blob there, else at the source; an index is walked to the platform's
//! manifest; the index, the manifest and the config read through are kept in the store as
//! blobs, and layers read through it as [`ReadThrough::open`] reads any blob. It never
//! writes a name: the cache keeps blobs, and names are what pulls and imports write (so
//! what it kept is unreferenced, and a gc may take it).

use std::fs::File;
use std::io::{self, Read};

use oci_spec::image::Descriptor;

use crate::content::{Labels, Manager, Provider, Writer};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::names::{self, Name, descriptor_digest};
use crate::registry::{BlobStream, MAX_MANIFEST, Registry, Repository, reference_of};
use crate::store::Store;
use crate::store::uses::Used;
use crate::store::writer::StoreWriter;
use crate::transfer::pull::source_label;

mod image;

pub use image::ImageSource;

/// Where blobs missing from the store come from.
pub trait Source: Send + Sync {
    /// Streams `digest` from `offset` (`size` when known); [`BlobStream::start`] says where
    /// the bytes actually start (a source may restart from 0).
    fn fetch(&self, digest: &Digest, offset: u64, size: Option<u64>) -> Result<BlobStream>;
    /// The blob's size, when the caller did not give it.
    fn size_of(&self, digest: &Digest) -> Result<u64>;
    /// The manifest or index `reference` names (a digest, or a tag or name as the source
    /// understands them): its descriptor and its exact bytes, at most [`MAX_MANIFEST`] of
    /// them. Asked for by digest, the bytes hash to it. Blocks on the source.
    ///
    /// Errors: `NotFound` when the source has no such manifest; `FailedPrecondition` for
    /// a document larger than the limit or bytes that do not match the digest;
    /// `InvalidArgument` for a reference the source cannot take.
    fn manifest(&self, reference: &str) -> Result<(Descriptor, Vec<u8>)>;
    /// Labels recorded on blobs fetched from here.
    fn labels(&self) -> Labels {
        Labels::new()
    }
}

/// A repository on a registry as a [`Source`]; fetched blobs are labelled with
/// `containerd.io/distribution.source.<host>`.
#[derive(Debug, Clone)]
pub struct RegistrySource {
    /// The client.
    pub registry: Registry,
    /// The repository blobs come from.
    pub repository: Repository,
}

impl Source for RegistrySource {
    fn fetch(&self, digest: &Digest, offset: u64, size: Option<u64>) -> Result<BlobStream> {
        self.registry
            .blob_get(&self.repository, digest, offset, size)
    }

    fn size_of(&self, digest: &Digest) -> Result<u64> {
        self.registry
            .blob_head(&self.repository, digest)?
            .ok_or_else(|| Error::NotFound(format!("{}: blob {digest}", self.repository)))
    }

    /// `reference`: a digest, a tag of this repository, or a name in it (`host/path:tag`,
    /// `host/path@digest`); a word that is a valid tag is taken as a tag. One manifest GET;
    /// the client checks the bytes against the digest asked for, or against
    /// `Docker-Content-Digest`, and bounds them at [`MAX_MANIFEST`].
    fn manifest(&self, reference: &str) -> Result<(Descriptor, Vec<u8>)> {
        let wanted = if Digest::parse(reference).is_ok() || crate::names::grammar::is_tag(reference)
        {
            reference.to_owned()
        } else {
            let name = Name::parse(reference)?;
            if Repository::of(&name) != self.repository {
                return Err(Error::InvalidArgument(format!(
                    "reference {reference:?} is not in repository {}",
                    self.repository
                )));
            }
            reference_of(&name)
        };
        let m = self
            .registry
            .manifest_get(&self.repository, &wanted)?
            .ok_or_else(|| Error::NotFound(format!("{}: manifest {wanted}", self.repository)))?;
        let d = &m.descriptor;
        Ok((
            names::descriptor(&d.media_type, &d.digest, d.size)?,
            m.bytes,
        ))
    }

    fn labels(&self) -> Labels {
        Labels::from([(
            source_label(&self.repository.host),
            self.repository.path.clone(),
        )])
    }
}

/// Another store as a [`Source`]: blobs from its files (from any offset), sizes from its
/// records, manifests by [`Store::resolve`] (a name, `name@digest` or a digest). Fetched
/// blobs get no labels.
impl Source for Store {
    fn fetch(&self, digest: &Digest, offset: u64, _size: Option<u64>) -> Result<BlobStream> {
        let inner = Provider::reader_at(self, digest)?;
        let start = if offset <= inner.size() { offset } else { 0 };
        Ok(BlobStream {
            start,
            reader: Box::new(OwnedAtReader { inner, pos: start }),
        })
    }

    fn size_of(&self, digest: &Digest) -> Result<u64> {
        Ok(Manager::info(self, digest)?.size)
    }

    fn manifest(&self, reference: &str) -> Result<(Descriptor, Vec<u8>)> {
        let desc = self.resolve(reference)?;
        let digest = descriptor_digest(&desc)?;
        let bytes = read_document(self, &digest, desc.size())?
            .ok_or_else(|| Error::NotFound(format!("manifest {digest}")))?;
        let actual = digest.algorithm().digest(&bytes);
        if actual != digest {
            return Err(Error::Corrupted(format!(
                "manifest {digest} reads back as {actual}: its bytes on disk have changed"
            )));
        }
        Ok((desc, bytes))
    }
}

/// The bytes of the manifest or index `digest` in `store` (`None` when absent), checked
/// against the `size` its descriptor states and bounded by [`MAX_MANIFEST`].
fn read_document(store: &Store, digest: &Digest, size: u64) -> Result<Option<Vec<u8>>> {
    if size > MAX_MANIFEST {
        return Err(Error::FailedPrecondition(format!(
            "manifest {digest} is {size} bytes, more than the {MAX_MANIFEST} a manifest may be"
        )));
    }
    let bytes = match crate::helpers::read_blob_prefix(store, digest, MAX_MANIFEST + 1) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() as u64 != size {
        return Err(Error::FailedPrecondition(format!(
            "manifest {digest} is {} bytes, its descriptor says {size}",
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

/// The store with a source behind it. See the module docs.
pub struct ReadThrough<S> {
    store: Store,
    source: S,
}

impl<S: Source> ReadThrough<S> {
    /// The store `store` reading through to `source`.
    pub fn new(store: Store, source: S) -> Self {
        ReadThrough { store, source }
    }

    /// A reader of the blob `digest` from its first byte: from the store when it is there
    /// (no request), else from the source as the module docs say. `size`, when known, saves
    /// asking the source for it. Errors: `NotFound` when neither has it; the source's errors.
    pub fn open(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn Read + Send + '_>> {
        if let Some(local) = self.local(digest)? {
            return Ok(local);
        }
        let size = match size {
            Some(n) => n,
            None => self.source.size_of(digest)?,
        };
        let reference = format!("pull-{digest}");
        let Some(mut writer) = self.store.claim_ingest(&reference, digest, size)? else {
            // Committed meanwhile (by a concurrent reader or pull).
            return self
                .local(digest)?
                .ok_or_else(|| Error::NotFound(format!("content {digest}")));
        };
        let mut offset = writer.status()?.offset;
        if offset > size {
            writer.truncate(0)?;
            offset = 0;
        }
        let stream = self.source.fetch(digest, offset, Some(size))?;
        if stream.start != offset {
            writer.truncate(0)?;
            offset = 0;
        }
        // What an earlier, stopped reader left is served from the ingest file first.
        let path = self.store.ingest_data(&reference);
        let prefix = File::open(&path)
            .map_err(|e| Error::io("open ingest data", &path, e))?
            .take(offset);
        Ok(Box::new(Tee {
            store: self.store.clone(),
            reference,
            digest: *digest,
            size,
            labels: self.source.labels(),
            prefix,
            body: stream.reader,
            writer: Some(writer),
            received: offset,
        }))
    }

    /// The store blobs are kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The source behind the store.
    pub fn source(&self) -> &S {
        &self.source
    }

    fn local(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>> {
        match crate::content::Provider::reader_at(&self.store, digest) {
            Ok(r) => {
                // A read through the cache is a use (noted in memory, see `store::uses`).
                self.store.record_use([Used::Content(*digest)]);
                Ok(Some(Box::new(OwnedAtReader { inner: r, pos: 0 })))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A positioned reader over a blob's [`crate::content::ReaderAt`].
struct OwnedAtReader {
    inner: Box<dyn crate::content::ReaderAt>,
    pos: u64,
}

impl Read for OwnedAtReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(buf, self.pos).map_err(Error::into_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Hands the caller the ingest's prefix, then the source's bytes, writing the latter into
/// the ingest; commits at the end.
struct Tee {
    store: Store,
    reference: String,
    digest: Digest,
    size: u64,
    labels: Labels,
    prefix: io::Take<File>,
    body: Box<dyn Read + Send>,
    writer: Option<StoreWriter>,
    received: u64,
}

impl Tee {
    fn refuse(&mut self, why: String) -> io::Error {
        match self.writer.take() {
            // Under the writer's own lock: see `Writer::abort`.
            Some(w) => {
                if let Err(e) = w.discard() {
                    tracing::warn!(reference = %self.reference, error = %e, "could not drop a refused download");
                }
            }
            // A commit that refused the bytes has released the writer: abort from outside.
            None => self.store.drop_ingest(&self.reference),
        }
        Error::FailedPrecondition(format!("content {}: {why}", self.digest)).into_io()
    }
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.prefix.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        let Some(writer) = self.writer.as_mut() else {
            return Ok(0); // committed (or refused) already
        };
        let n = self.body.read(buf)?;
        if n == 0 {
            if self.received != self.size {
                // Cut short: the ingest keeps what came, for the next reader.
                self.writer = None;
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "content {}: the source ended at byte {} of {}",
                        self.digest, self.received, self.size
                    ),
                ));
            }
            let writer = self.writer.take().expect("checked above");
            return match writer.commit_boxed(self.size, &self.digest, self.labels.clone()) {
                Ok(()) => {
                    self.store.record_use([Used::Content(self.digest)]);
                    Ok(0)
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(0),
                Err(e) if e.kind() == ErrorKind::FailedPrecondition => {
                    Err(self.refuse(format!("the source's bytes do not match: {e}")))
                }
                Err(e) => Err(e.into_io()),
            };
        }
        if self.received + n as u64 > self.size {
            return Err(self.refuse(format!("the source sent more than {} bytes", self.size)));
        }
        std::io::Write::write_all(writer, &buf[..n])?;
        self.received += n as u64;
        Ok(n)
    }
}
