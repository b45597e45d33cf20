//! Compressed and uncompressed layers: the diffID of a gzip or zstd layer (the digest of its
//! uncompressed bytes) and the layers of a diffID, both ways, by lookup.
//!
//! The relation is recorded as containerd records it: the label
//! `containerd.io/uncompressed=<diffID>` on the compressed blob. The store's label index
//! answers both directions: [`Store::diff_id`] reads the label, [`Store::compressed_of`] is a
//! range read of the index, never a scan. The label comes from three places:
//!
//! - **Import and pull**: when a batch commits a manifest, the config's `rootfs.diff_ids`
//!   are matched to the manifest's layers by position (only when the counts match, and only
//!   for layers whose media type says gzip or zstd), in the batch's own transaction. Nothing
//!   is decompressed, and a label already there is never overwritten: the config is trusted,
//!   not checked.
//! - **On demand**: [`Store::uncompressed`] decompresses the blob once, streaming, hashes
//!   the output with sha256 and records the label. With [`UncompressOptions::verify`] it does
//!   so even when a label exists, and replaces a wrong one (reported as
//!   [`Uncompressed::corrected`]: the config lied).
//! - **By hand**: `content label`, like any other label.
//!
//! With [`UncompressOptions::keep`] the uncompressed bytes also become a blob of their own,
//! streamed into the store as they are decompressed and labelled
//! `ocistore.io/compressed=<compressed digest>` ([`COMPRESSED_LABEL`]), so that
//! [`Store::uncompressed_blob_of`] finds it from its source. No
//! `containerd.io/gc.ref.content.*` label points at it from the compressed blob, on purpose:
//! nothing roots a kept blob, and the next gc removes it unless a name, lease or
//! `containerd.io/gc.root` label holds it. It is a cache, not part of the image.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use crate::content::{IngestManager, Labels, Manager, Provider};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, ErrorKind, Result};
use crate::helpers::{AtReader, open_writer};
use crate::oci::{ChildKind, Compression, ZstdFrames};
use crate::store::Store;
use crate::store::manager::{LabelSet, labelled, set_label_in};
use crate::store::schema::BLOB_LABELS;

/// The label on a compressed blob naming its uncompressed digest (containerd's key).
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// The label on a kept uncompressed blob naming the compressed blob it came from.
pub const COMPRESSED_LABEL: &str = "ocistore.io/compressed";

/// How [`Store::uncompressed`] works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UncompressOptions {
    /// Also store the uncompressed bytes as a blob (collectable; see the module docs).
    pub keep: bool,
    /// Decompress and hash even when a label is recorded, and correct it if it is wrong.
    pub verify: bool,
}

/// What [`Store::uncompressed`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncompressed {
    /// The compressed blob.
    pub digest: Digest,
    /// Its uncompressed digest (sha256).
    pub diff_id: Digest,
    /// The uncompressed size in bytes; `None` when the answer came from the label alone.
    pub size: Option<u64>,
    /// Whether this call wrote the label (it was absent, or wrong).
    pub recorded: bool,
    /// Whether a different recorded label was replaced.
    pub corrected: bool,
    /// The value the label had when it was replaced.
    pub replaced: Option<String>,
    /// The uncompressed blob, when it was kept (or was already in the store) with `keep`.
    pub kept: Option<Digest>,
}

/// Whether a layer of `media_type` is gzip or zstd compressed: OCI's `+gzip` and `+zstd`
/// (non-distributable variants too) and docker's `.tar.gzip` (and `.tar.zstd`).
pub fn is_compressed_layer(media_type: &str) -> bool {
    [".tar+gzip", ".tar+zstd", ".tar.gzip", ".tar.zstd"]
        .iter()
        .any(|suffix| media_type.ends_with(suffix))
}

/// Parses the value of an `containerd.io/uncompressed` label of `digest`.
fn parse_label(digest: &Digest, value: &str) -> Result<Digest> {
    Digest::parse(value).map_err(|e| {
        Error::FailedPrecondition(format!(
            "content {digest} has a malformed {UNCOMPRESSED_LABEL} label {value:?}: {e}"
        ))
    })
}

impl Store {
    /// The recorded uncompressed digest of `digest`: its `containerd.io/uncompressed` label,
    /// or `None` when it has none (nothing is decompressed; see [`Store::uncompressed`]).
    /// `NotFound` when the blob is absent; `FailedPrecondition` when the label is not a
    /// digest.
    pub fn diff_id(&self, digest: &Digest) -> Result<Option<Digest>> {
        let info = self.info(digest)?;
        info.labels
            .get(UNCOMPRESSED_LABEL)
            .map(|v| parse_label(digest, v))
            .transpose()
    }

    /// The compressed blobs whose recorded uncompressed digest is `diff_id`, in digest order;
    /// empty when none is. One range read of the label index.
    pub fn compressed_of(&self, diff_id: &Digest) -> Result<Vec<Digest>> {
        self.labelled_digests(UNCOMPRESSED_LABEL, diff_id)
    }

    /// The kept uncompressed blob of the compressed blob `digest` (the blob labelled
    /// `ocistore.io/compressed=<digest>`), if there is one. One range read of the label index.
    pub fn uncompressed_blob_of(&self, digest: &Digest) -> Result<Option<Digest>> {
        Ok(self
            .labelled_digests(COMPRESSED_LABEL, digest)?
            .into_iter()
            .next())
    }

    fn labelled_digests(&self, key: &str, value: &Digest) -> Result<Vec<Digest>> {
        let snap = self.read_txn()?;
        let index = match snap.open_table(BLOB_LABELS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(Error::db("open the label index", e)),
        };
        labelled(&index, key, value.as_str())?
            .iter()
            .map(|k| {
                Digest::parse(k).map_err(|_| {
                    Error::Corrupted(format!("label index entry under malformed digest {k:?}"))
                })
            })
            .collect()
    }

    /// The uncompressed digest of the gzip or zstd blob `digest`, from its label or by
    /// decompressing it; see the module docs and [`UncompressOptions`].
    ///
    /// When the label is recorded (and neither `verify` nor, for a blob not kept yet, `keep`
    /// asks for more) the answer comes without reading the blob. Otherwise the blob is read
    /// once, streaming (memory stays bounded whatever its size), its own digest checked as it
    /// goes, and the label recorded in one transaction that re-reads the record. Memory:
    /// gzip needs a few hundred KiB; zstd needs the window its frame declares, which the
    /// decoder refuses past 128 MiB (`FailedPrecondition`). Blocks for
    /// as long as the decompression takes; durable on return.
    ///
    /// `NotFound` when the blob is absent (or deleted meanwhile: it is not brought back);
    /// `FailedPrecondition` naming the digest when it is not gzip or zstd, or does not
    /// decompress (truncated, malformed); `Corrupted` when its bytes no longer match its
    /// digest. On any error the store is as it was (a partly written uncompressed ingest is
    /// aborted).
    pub fn uncompressed(&self, digest: &Digest, opts: &UncompressOptions) -> Result<Uncompressed> {
        let info = self.info(digest)?;
        let recorded = info
            .labels
            .get(UNCOMPRESSED_LABEL)
            .and_then(|v| Digest::parse(v).ok());
        if let Some(diff_id) = recorded
            && !opts.verify
        {
            let answer = Uncompressed {
                digest: *digest,
                diff_id,
                size: None,
                recorded: false,
                corrected: false,
                replaced: None,
                kept: None,
            };
            if !opts.keep {
                return Ok(answer);
            }
            if let Some(rec) = self.blob_record(&diff_id)? {
                // Already stored: relate it to its source, without reading either.
                let kept = self.relate_kept(digest, &diff_id)?;
                return Ok(Uncompressed {
                    size: Some(rec.size),
                    kept: kept.then_some(diff_id),
                    ..answer
                });
            }
        }
        let (diff_id, size, kept) = self.decompress(digest, opts.keep)?;
        let txn = self.write_txn("record an uncompressed digest")?;
        let was = match set_label_in(
            &txn,
            digest.as_str(),
            UNCOMPRESSED_LABEL,
            diff_id.as_str(),
            true,
        )? {
            LabelSet::NoRecord => return Err(Error::NotFound(format!("content {digest}"))),
            LabelSet::Was(was) => was,
        };
        let kept = match kept {
            Some(k) => relate(&txn, digest, &k)?.then_some(k),
            None => None,
        };
        txn.commit()
            .map_err(|e| Error::db("commit an uncompressed digest", e))?;
        let recorded = was.as_deref() != Some(diff_id.as_str());
        let corrected = recorded && was.is_some();
        Ok(Uncompressed {
            digest: *digest,
            diff_id,
            size: Some(size),
            recorded,
            corrected,
            replaced: was.filter(|_| corrected),
            kept,
        })
    }

    /// The relation label on the kept blob `kept`, in a transaction of its own: whether
    /// `kept` is still there.
    fn relate_kept(&self, digest: &Digest, kept: &Digest) -> Result<bool> {
        let txn = self.write_txn("relate an uncompressed blob")?;
        let present = relate(&txn, digest, kept)?;
        txn.commit()
            .map_err(|e| Error::db("commit an uncompressed blob's label", e))?;
        Ok(present)
    }

    /// Decompresses `digest` once: its uncompressed digest and size, and with `keep` the
    /// uncompressed blob committed (or found committed). Checks the compressed bytes against
    /// `digest` before anything is committed.
    fn decompress(&self, digest: &Digest, keep: bool) -> Result<(Digest, u64, Option<Digest>)> {
        let reader = self.reader_at(digest)?;
        let mut head = [0u8; 4];
        let n = reader.read_at(&mut head, 0)?;
        let compression = Compression::sniff(&head[..n]);
        let mut checker = digest.algorithm().hasher();
        let mut consumed = 0u64;
        let checked = Checked {
            inner: AtReader::new(&*reader),
            hasher: &mut checker,
            consumed: &mut consumed,
        };
        let (decoder, format): (Box<dyn Read + '_>, &str) = match compression {
            Compression::Gzip => (Box::new(flate2::read::MultiGzDecoder::new(checked)), "gzip"),
            Compression::Zstd => (
                Box::new(ZstdFrames::new(BufReader::with_capacity(1 << 16, checked))),
                "zstd",
            ),
            Compression::None => {
                return Err(Error::FailedPrecondition(format!(
                    "content {digest} is not gzip or zstd compressed"
                )));
            }
        };
        let mut decoded = Decoded {
            inner: decoder,
            digest,
            format,
        };
        let reference = format!(
            "uncompressed-{}-{}-{}",
            digest.hex(),
            std::process::id(),
            crate::store::records::Nanos::now().0
        );
        let result = if keep {
            self.keep_stream(&reference, &mut decoded)
        } else {
            let mut hasher = Algorithm::Sha256.hasher();
            pump(&mut decoded, &mut hasher).map(|n| (hasher.finalize(), n, None))
        };
        drop(decoded);
        // A failed keep_stream has removed its ingest already.
        let (diff_id, size, writer) = result?;
        // Whatever the decoder left unread (nothing, for a well-formed stream) is hashed too.
        let mut rest = AtReader::new(&*reader);
        let intact = io::Seek::seek(&mut rest, io::SeekFrom::Start(consumed))
            .and_then(|_| io::copy(&mut rest, &mut checker))
            .map_err(|e| Error::from_io(e, "read", digest.to_string()))
            .and_then(|_| match checker.finalize() {
                actual if actual == *digest => Ok(()),
                actual => Err(Error::Corrupted(format!(
                    "content {digest} reads back as {actual}: its bytes on disk have changed"
                ))),
            });
        if let Err(e) = intact {
            if let Some(w) = writer {
                discard(w, &reference);
            }
            return Err(e);
        }
        let kept = match writer {
            None => None,
            Some(w) => {
                let labels: Labels = [(COMPRESSED_LABEL.to_owned(), digest.to_string())]
                    .into_iter()
                    .collect();
                match w.commit(Some(size), Some(&diff_id), labels) {
                    Ok(_) => Some(diff_id),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => Some(diff_id),
                    Err(e) => {
                        // A failed commit keeps its ingest to be resumed; nothing resumes
                        // this one.
                        match self.abort(&reference) {
                            Ok(()) => {}
                            Err(a) if a.kind() == ErrorKind::NotFound => {}
                            Err(a) => {
                                tracing::warn!(%reference, error = %a, "could not abort the uncompressed ingest; gc reclaims it");
                            }
                        }
                        return Err(e);
                    }
                }
            }
        };
        Ok((diff_id, size, kept))
    }

    /// Streams `decoded` into a new ingest `reference`; the writer is returned uncommitted.
    fn keep_stream(&self, reference: &str, decoded: &mut dyn Read) -> Result<Streamed> {
        let mut writer = open_writer(self, reference, None, None)?;
        let n = match pump(decoded, &mut writer) {
            Ok(n) => n,
            Err(e) => {
                discard(writer, reference);
                return Err(e);
            }
        };
        // A writer opened with no expected digest hashes with sha256.
        Ok((writer.digest(), n, Some(writer)))
    }
}

/// A decompression's result: the uncompressed digest and size, and the writer still to be
/// committed when the bytes are kept.
type Streamed = (Digest, u64, Option<Box<dyn crate::content::Writer>>);

/// Sets the relation label on the kept blob `kept` (never overwriting one it has): whether
/// `kept` is still in the store.
fn relate(txn: &redb::WriteTransaction, digest: &Digest, kept: &Digest) -> Result<bool> {
    Ok(
        set_label_in(txn, kept.as_str(), COMPRESSED_LABEL, digest.as_str(), false)?
            != LabelSet::NoRecord,
    )
}

/// Removes the ingest `writer` holds (see [`crate::content::Writer::abort`]); a failure is
/// only logged, as gc reclaims what is left.
fn discard(writer: Box<dyn crate::content::Writer>, reference: &str) {
    if let Err(e) = writer.abort() {
        tracing::warn!(%reference, error = %e, "could not abort the uncompressed ingest; gc reclaims it");
    }
}

/// Copies `reader` into `out` through one 256 KiB buffer; the byte count.
fn pump(reader: &mut dyn Read, out: &mut dyn Write) -> Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::from_io(e, "decompress", "content")),
        };
        out.write_all(&buf[..k])
            .map_err(|e| Error::from_io(e, "write", "uncompressed ingest"))?;
        n += k as u64;
    }
}

/// The compressed bytes as the decoder reads them, hashed and counted on the way.
struct Checked<'a> {
    inner: AtReader<'a>,
    hasher: &'a mut Hasher,
    consumed: &'a mut u64,
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        *self.consumed += n as u64;
        Ok(n)
    }
}

/// A decoder whose own complaints (bad header, corrupt stream, unexpected end) become
/// `FailedPrecondition` naming the blob; the store's errors and the OS's pass through.
struct Decoded<'a> {
    inner: Box<dyn Read + 'a>,
    digest: &'a Digest,
    format: &'static str,
}

impl Read for Decoded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<Error>()) || e.raw_os_error().is_some() {
                return e;
            }
            Error::FailedPrecondition(format!(
                "content {} does not decompress as {}: {e}",
                self.digest, self.format
            ))
            .into_io()
        })
    }
}

/// Records `containerd.io/uncompressed` on the compressed layers of the manifests `manifests`
/// (digest strings) inside the batch commit's transaction `txn`, from each manifest's config's
/// `rootfs.diff_ids`, matched by position. Skips, silently, what does not fit: a document
/// that is not an image manifest, a config that is missing or has no (or a different count
/// of) diff_ids, a layer not compressed or not committed, a label already there. Every blob
/// a batch stages is linked into the blob tree before its transaction, so manifests and
/// configs are read from there, staged or committed before.
pub(crate) fn label_from_configs<'a>(
    txn: &redb::WriteTransaction,
    store: &Store,
    manifests: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    for key in manifests {
        let Ok(manifest) = Digest::parse(key) else {
            continue;
        };
        let Some(pairs) = diff_ids_of(store, &manifest) else {
            continue;
        };
        for (layer, diff_id) in pairs {
            set_label_in(
                txn,
                layer.as_str(),
                UNCOMPRESSED_LABEL,
                diff_id.as_str(),
                false,
            )?;
        }
    }
    Ok(())
}

/// The (compressed layer, diffID) pairs the manifest `manifest` and its config state; `None`
/// when they state none that fit.
fn diff_ids_of(store: &Store, manifest: &Digest) -> Option<Vec<(Digest, Digest)>> {
    let bytes = read_small(&store.blob_dir().path_for(manifest))?;
    let children = crate::oci::try_children(None, &bytes).ok()??;
    let config = children.iter().find(|c| c.kind == ChildKind::Config)?;
    let layers: Vec<_> = children
        .iter()
        .filter(|c| c.kind == ChildKind::Layer)
        .collect();
    let config: serde_json::Value =
        serde_json::from_slice(&read_small(&store.blob_dir().path_for(&config.digest))?).ok()?;
    let diff_ids = config.get("rootfs")?.get("diff_ids")?.as_array()?;
    if diff_ids.len() != layers.len() {
        return None;
    }
    Some(
        layers
            .iter()
            .zip(diff_ids)
            .filter(|(l, _)| is_compressed_layer(&l.media_type))
            .filter_map(|(l, d)| Some((l.digest, Digest::parse(d.as_str()?).ok()?)))
            .filter(|(l, d)| l != d && d.algorithm() == Algorithm::Sha256)
            .collect(),
    )
}

/// The bytes of the blob file at `path` when it is small enough to be a manifest or config;
/// `None` when it is absent, larger, or unreadable (logged: the label is a convenience, and
/// a commit does not fail for it).
fn read_small(path: &Path) -> Option<Vec<u8>> {
    let read = std::fs::File::open(path).and_then(|f| {
        let mut out = Vec::new();
        f.take(crate::edges::MAX_PARSED + 1)
            .read_to_end(&mut out)
            .map(|_| out)
    });
    match read {
        Ok(bytes) if bytes.len() as u64 <= crate::edges::MAX_PARSED => Some(bytes),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not read a manifest or config for its diff_ids");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_media_types() {
        for mt in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            assert!(is_compressed_layer(mt), "{mt}");
        }
        for mt in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.docker.image.rootfs.diff.tar",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "",
        ] {
            assert!(!is_compressed_layer(mt), "{mt}");
        }
    }
}
