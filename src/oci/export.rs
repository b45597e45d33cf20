//! Export of named images as an OCI image layout: a tar archive or a directory that
//! skopeo (`oci-archive:`/`oci:`), umoci and `ctr images import` read.
//!
//! The layout holds `oci-layout` (`{"imageLayoutVersion":"1.0.0"}`), `index.json` with one
//! entry per image, and `blobs/<alg>/<hex>` for every blob the images reach (index →
//! manifests → config and layers, nested indexes, subjects when present), each written once.
//! Each `index.json` entry carries the annotations [`ANNOTATION_IMAGE_NAME`] (the full name,
//! which containerd reads) and [`ANNOTATION_REF_NAME`] (the tag, which skopeo and umoci read).
//!
//! Output is reproducible: the same images give byte-identical archives. Entries come in a
//! fixed order (`oci-layout`, `index.json`, then everything under `blobs/` sorted by path,
//! each directory before its files), with mtime 0, uid/gid 0, no user or group names, mode
//! 0644 for files and 0755 for directories; JSON written here has sorted keys and no
//! whitespace; images are listed in `index.json` sorted by name, then digest.
//!
//! Blob bytes stream from the provider in 1 MiB reads and are verified against their
//! digest on the way (`Corrupted` when they no longer match).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Platform};
use serde_json::{Value, json};

use super::layout::{
    BLOBS_DIR, Found, INDEX_FILE, MAX_JSON_SIZE, OCI_LAYOUT_FILE, OciLayout, Source, Walker,
    blob_path,
};
use super::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Child, ChildKind, MEDIA_TYPE_OCI_INDEX,
    canonical_json, descriptor_value, is_index,
};
use crate::content::Provider;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, ErrorKind, Result};
use crate::helpers::AtReader;
use crate::names::{descriptor_digest, platform_matches, platform_string};
use crate::oci::referrers::Referrer;

/// An image to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportImage {
    /// Full normalised name, e.g. `docker.io/library/alpine:3.19`; written as
    /// [`ANNOTATION_IMAGE_NAME`].
    pub name: String,
    /// The tag, written as [`ANNOTATION_REF_NAME`] when given.
    pub tag: Option<String>,
    /// The image's manifest or index. Its other fields (platform, annotations, artifact
    /// type) are kept in `index.json`.
    pub descriptor: Descriptor,
}

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A tar archive of the layout (skopeo's `oci-archive:`).
    #[default]
    OciArchive,
    /// A layout directory (skopeo's `oci:`).
    OciDir,
}

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Archive or directory; [`export_path`] follows it.
    pub format: Format,
    /// Platforms to keep (os/architecture/variant, as [`platform_matches`] compares them);
    /// empty keeps all. See [`export_archive`] for what filtering does to an index.
    pub platforms: Vec<Platform>,
    /// Referrers (signatures, SBOMs) to carry along, each with everything under it: listed
    /// in `index.json` without a name, after the images, as oras-go and regclient write
    /// them ([`crate::Store::referrers_of_images`] finds those of the exported images).
    pub referrers: Vec<Referrer>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Distinct blobs written.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
    /// Each image's name and the digest its `index.json` entry points at, in `index.json`
    /// order.
    pub images: Vec<(String, Digest)>,
    /// Referrers listed in `index.json` ([`Options::referrers`]).
    pub referrers: u64,
}

/// Writes `images` as an OCI image layout tar archive to `out`.
///
/// With [`Options::platforms`], an image whose root is an index keeps only the entries of
/// its `manifests` whose platform matches one of them (entries without a platform are
/// kept, as containerd does). When that leaves something out, a NEW index holding only the
/// kept entries (other fields unchanged, keys sorted) is written, and `index.json` points
/// at its new digest; when everything matches, the original index is written untouched and
/// keeps its digest. Nested indexes are not filtered, and an image whose root is a manifest
/// is exported as it is. No matching entry at all is `NotFound`.
///
/// Blocks while it writes. Errors: `NotFound` naming a blob that a manifest references
/// and the provider lacks, with its referrer; `FailedPrecondition` when a blob's size
/// differs from its descriptor; `Corrupted` when stored bytes no longer match their digest;
/// `Io` when writing fails. Every check that needs no blob bytes runs before anything is
/// written; a failure while blob bytes stream leaves `out` holding a partial archive.
pub fn export_archive(
    provider: &dyn Provider,
    images: &[ExportImage],
    opts: &Options,
    out: &mut dyn Write,
) -> Result<Outcome> {
    let plan = plan(provider, images, opts)?;
    let mut builder = tar::Builder::new(out);
    let write_err = |e: io::Error| Error::from_io(e, "write", "archive");
    let layout = OciLayout::bytes();
    append(
        &mut builder,
        OCI_LAYOUT_FILE,
        tar::EntryType::Regular,
        layout.len() as u64,
        &layout[..],
    )
    .map_err(write_err)?;
    append(
        &mut builder,
        INDEX_FILE,
        tar::EntryType::Regular,
        plan.index_json.len() as u64,
        &plan.index_json[..],
    )
    .map_err(write_err)?;
    append(
        &mut builder,
        &format!("{BLOBS_DIR}/"),
        tar::EntryType::Directory,
        0,
        io::empty(),
    )
    .map_err(write_err)?;
    let mut last_alg = None;
    for blob in &plan.blobs {
        if last_alg != Some(blob.digest.algorithm()) {
            last_alg = Some(blob.digest.algorithm());
            let dir = format!("{BLOBS_DIR}/{}/", blob.digest.algorithm());
            append(
                &mut builder,
                &dir,
                tar::EntryType::Directory,
                0,
                io::empty(),
            )
            .map_err(write_err)?;
        }
        let path = blob_path(&blob.digest);
        match &blob.made {
            Some(bytes) => append(
                &mut builder,
                &path,
                tar::EntryType::Regular,
                blob.size,
                &bytes[..],
            ),
            None => {
                let r = provider.reader_at(&blob.digest)?;
                let reader = Verified::new(&*r, &blob.digest, blob.size);
                append(
                    &mut builder,
                    &path,
                    tar::EntryType::Regular,
                    blob.size,
                    reader,
                )
            }
        }
        .map_err(write_err)?;
    }
    builder.into_inner().map_err(write_err)?;
    Ok(plan.outcome())
}

/// Writes `images` as an OCI image layout directory at `dir`, which must not exist or be
/// empty (`AlreadyExists` otherwise). Blobs are written first, `index.json` last.
/// Filtering and errors as [`export_archive`].
pub fn export_dir(
    provider: &dyn Provider,
    images: &[ExportImage],
    opts: &Options,
    dir: &Path,
) -> Result<Outcome> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::AlreadyExists(format!(
                    "directory '{}' with content",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("read directory", dir, e)),
    }
    let plan = plan(provider, images, opts)?;
    for blob in &plan.blobs {
        let path: PathBuf = dir.join(blob_path(&blob.digest));
        let parent = path.parent().expect("a blob path has a parent");
        fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        let mut file = File::create_new(&path).map_err(|e| Error::io("create", &path, e))?;
        let copied = match &blob.made {
            Some(bytes) => file.write_all(bytes),
            None => {
                // Through a 1 MiB buffer: io::copy then reads into it directly, and the file
                // gets 1 MiB writes rather than 8 KiB ones.
                let r = provider.reader_at(&blob.digest)?;
                let mut out = io::BufWriter::with_capacity(1 << 20, &mut file);
                io::copy(&mut Verified::new(&*r, &blob.digest, blob.size), &mut out)
                    .and_then(|_| out.flush())
            }
        };
        copied.map_err(|e| Error::from_io(e, "write", &path))?;
    }
    fs::create_dir_all(dir.join(BLOBS_DIR)).map_err(|e| Error::io("create directory", dir, e))?;
    for (name, bytes) in [
        (OCI_LAYOUT_FILE, OciLayout::bytes()),
        (INDEX_FILE, plan.index_json.clone()),
    ] {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(plan.outcome())
}

/// Writes an archive or a directory at `path`, as [`Options::format`] says. An archive file
/// must not exist yet (`Io` otherwise); a directory must not exist or be empty. On failure
/// nothing is left behind: the archive file, or what was written into the directory, is
/// removed.
pub fn export_path(
    provider: &dyn Provider,
    images: &[ExportImage],
    opts: &Options,
    path: &Path,
) -> Result<Outcome> {
    match opts.format {
        Format::OciDir => {
            let existed = path.exists();
            let outcome = export_dir(provider, images, opts, path);
            if outcome.is_err() && !matches!(&outcome, Err(Error::AlreadyExists(_))) {
                let _ = fs::remove_dir_all(path);
                if existed {
                    let _ = fs::create_dir(path);
                }
            }
            outcome
        }
        Format::OciArchive => {
            let file = File::create_new(path).map_err(|e| Error::io("create", path, e))?;
            let written = (|| {
                let mut out = io::BufWriter::with_capacity(1 << 20, file);
                let outcome = export_archive(provider, images, opts, &mut out)?;
                let file = out
                    .into_inner()
                    .map_err(|e| Error::io("write", path, e.into_error()))?;
                file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
                Ok(outcome)
            })();
            if written.is_err() {
                let _ = fs::remove_file(path);
            }
            written
        }
    }
}

/// Everything an export writes, decided before a byte is written.
struct Plan {
    index_json: Vec<u8>,
    /// Sorted by path.
    blobs: Vec<PlannedBlob>,
    images: Vec<(String, Digest)>,
    referrers: u64,
}

struct PlannedBlob {
    digest: Digest,
    size: u64,
    /// Bytes made by this export (a filtered index); `None` streams from the provider.
    made: Option<Vec<u8>>,
}

impl Plan {
    fn outcome(&self) -> Outcome {
        Outcome {
            blobs: self.blobs.len() as u64,
            bytes: self.blobs.iter().map(|b| b.size).sum(),
            images: self.images.clone(),
            referrers: self.referrers,
        }
    }
}

fn plan(provider: &dyn Provider, images: &[ExportImage], opts: &Options) -> Result<Plan> {
    let mut sorted: Vec<(&ExportImage, Digest)> = Vec::with_capacity(images.len());
    for image in images {
        sorted.push((image, descriptor_digest(&image.descriptor)?));
    }
    sorted.sort_by(|a, b| (&a.0.name, &a.1, &a.0.tag).cmp(&(&b.0.name, &b.1, &b.0.tag)));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut source = ExportSource {
        provider,
        made: HashMap::new(),
    };
    let mut walker = Walker::new();
    let mut entries = Vec::with_capacity(sorted.len());
    let mut out_images = Vec::with_capacity(sorted.len());
    for (image, digest) in sorted {
        let d = &image.descriptor;
        let mut root = Child {
            digest,
            size: d.size(),
            media_type: d.media_type().to_string(),
            platform: d.platform().clone(),
            kind: ChildKind::Manifest,
        };
        if !opts.platforms.is_empty() && is_index(&root.media_type) {
            root = filter_index(&mut source, root, &image.name, &opts.platforms)?;
        }
        walker.walk(&root, &image.name, &mut source)?;
        let mut entry = descriptor_value(d);
        entry["digest"] = json!(root.digest.to_string());
        entry["size"] = json!(root.size);
        if !entry.get("annotations").is_some_and(Value::is_object) {
            entry["annotations"] = json!({});
        }
        let annotations = entry["annotations"]
            .as_object_mut()
            .expect("made an object above");
        annotations.insert(ANNOTATION_IMAGE_NAME.into(), json!(image.name));
        match &image.tag {
            Some(tag) => annotations.insert(ANNOTATION_REF_NAME.into(), json!(tag)),
            None => annotations.remove(ANNOTATION_REF_NAME),
        };
        entries.push(entry);
        out_images.push((image.name.clone(), root.digest));
    }
    let mut referrers: Vec<&Referrer> = opts.referrers.iter().collect();
    referrers.sort_by_key(|r| r.digest);
    referrers.dedup_by_key(|r| r.digest);
    referrers.retain(|r| !out_images.iter().any(|(_, d)| *d == r.digest));
    for r in &referrers {
        let child = Child {
            digest: r.digest,
            size: r.size,
            media_type: r.media_type.clone(),
            platform: None,
            kind: ChildKind::Manifest,
        };
        walker.walk(&child, &format!("referrer of {}", r.subject), &mut source)?;
        entries.push(r.descriptor());
    }
    let index_json = canonical_json(json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": entries,
    }));
    let mut blobs: Vec<PlannedBlob> = walker
        .seen()
        .into_iter()
        .map(|(digest, size)| PlannedBlob {
            made: source.made.remove(&digest),
            digest,
            size,
        })
        .collect();
    blobs.sort_by_cached_key(|b| blob_path(&b.digest));
    Ok(Plan {
        index_json,
        blobs,
        images: out_images,
        referrers: referrers.len() as u64,
    })
}

/// The index `root` with only the `manifests` entries that match `platforms` (or have no
/// platform): `root` itself when all match, else a new index kept in `source.made`.
fn filter_index(
    source: &mut ExportSource<'_>,
    root: Child,
    name: &str,
    platforms: &[Platform],
) -> Result<Child> {
    if root.size > MAX_JSON_SIZE {
        return Err(Error::InvalidArgument(format!(
            "index {} of {name} is larger than {MAX_JSON_SIZE} bytes",
            root.digest
        )));
    }
    let bytes = source
        .read(&root.digest, MAX_JSON_SIZE)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => {
                Error::NotFound(format!("blob {} (the index of {name})", root.digest))
            }
            _ => e,
        })?;
    let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidArgument(format!("index {} of {name} is not JSON: {e}", root.digest))
    })?;
    let Some(manifests) = doc.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Err(Error::InvalidArgument(format!(
            "index {} of {name} has no manifests array",
            root.digest
        )));
    };
    let total = manifests.len();
    manifests.retain(|m| match m.get("platform") {
        None | Some(Value::Null) => true,
        Some(p) => serde_json::from_value::<Platform>(p.clone())
            .is_ok_and(|p| platforms.iter().any(|w| platform_matches(w, &p))),
    });
    if manifests.len() == total {
        return Ok(root);
    }
    if manifests.is_empty() {
        let wanted: Vec<String> = platforms.iter().map(platform_string).collect();
        return Err(Error::NotFound(format!(
            "a manifest of {name} for platform {}",
            wanted.join(", ")
        )));
    }
    let made = canonical_json(doc);
    let digest = root.digest.algorithm().digest(&made);
    let size = made.len() as u64;
    source.made.insert(digest, made);
    Ok(Child {
        digest,
        size,
        ..root
    })
}

/// The walk's view of the provider, plus the documents this export made.
struct ExportSource<'p> {
    provider: &'p dyn Provider,
    made: HashMap<Digest, Vec<u8>>,
}

impl Source for ExportSource<'_> {
    fn locate(&mut self, child: &Child) -> Result<Found> {
        if let Some(bytes) = self.made.get(&child.digest) {
            return Ok(Found::Present(Some(bytes.len() as u64)));
        }
        match self.provider.reader_at(&child.digest) {
            Ok(r) => Ok(Found::Present(Some(r.size()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Found::Missing),
            Err(e) => Err(e),
        }
    }

    fn read(&mut self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        if let Some(bytes) = self.made.get(digest) {
            return Ok(bytes.clone());
        }
        let bytes = crate::helpers::read_blob_prefix(self.provider, digest, limit)?;
        let actual = digest.algorithm().digest(&bytes);
        if actual != *digest {
            return Err(Error::Corrupted(format!(
                "content {digest} reads back as {actual}"
            )));
        }
        Ok(bytes)
    }
}

/// Appends one entry of `size` bytes with the fixed metadata that makes archives
/// reproducible.
fn append<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    kind: tar::EntryType,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_username("")?;
    h.set_groupname("")?;
    h.set_size(size);
    b.append_data(&mut h, path, data)
}

/// Streams a stored blob in 1 MiB reads, yielding exactly `size` bytes and checking them
/// against the digest as they pass; a mismatch is an `io::Error` carrying `Corrupted`.
struct Verified<'r> {
    inner: BufReader<AtReader<'r>>,
    digest: &'r Digest,
    hasher: Option<Hasher>,
    remaining: u64,
}

impl<'r> Verified<'r> {
    fn new(reader: &'r dyn crate::content::ReaderAt, digest: &'r Digest, size: u64) -> Self {
        Verified {
            inner: BufReader::with_capacity(1 << 20, AtReader::new(reader)),
            digest,
            hasher: Some(digest.algorithm().hasher()),
            remaining: size,
        }
    }
}

impl Read for Verified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = if want == 0 {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        if n > 0 {
            return Ok(n);
        }
        if want > 0 {
            return Err(Error::Corrupted(format!(
                "content {} ended {} bytes short of its size",
                self.digest, self.remaining
            ))
            .into_io());
        }
        // The stated size is reached: the bytes must hash to the digest, and end there.
        let actual = self.hasher.take().expect("checked above").finalize();
        let mut probe = [0u8; 1];
        if actual != *self.digest || self.inner.read(&mut probe)? != 0 {
            return Err(Error::Corrupted(format!(
                "content {} no longer matches its digest or size: its stored bytes have changed",
                self.digest
            ))
            .into_io());
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helpers;
    use crate::memory::MemoryStore;

    #[test]
    fn verified_reader_checks_length_and_digest() {
        let store = MemoryStore::new();
        let data = vec![7u8; 3 << 20];
        let d = helpers::write_blob(&store, "x", &mut &data[..], None, None, Default::default())
            .unwrap();
        let r = store.reader_at(&d).unwrap();
        let mut out = Vec::new();
        Verified::new(&*r, &d, data.len() as u64)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let err = Verified::new(&*r, &d, data.len() as u64 + 1)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            Error::from_io(err, "read", "x").kind(),
            ErrorKind::Corrupted
        );
        let err = Verified::new(&*r, &d, 5)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            Error::from_io(err, "read", "x").kind(),
            ErrorKind::Corrupted
        );
    }
}
