//! Streaming import of an OCI image layout or a `docker save` archive into a [`Sink`].
//!
//! Input: a tar stream (plain, gzip or zstd, told apart by their magic bytes, never by a
//! file name) or a layout directory. A stream is read once and never unpacked: every
//! `blobs/<alg>/<hex>` entry is staged as it streams past, verified against its name and
//! tar size; `index.json`, `oci-layout` and docker's `manifest.json` are kept in memory (at
//! most [`MAX_JSON_SIZE`] bytes each). Then every image is walked (index → manifests →
//! config and layers) and each blob it references must be staged or already committed,
//! with the size its descriptor states. A directory is read the other way round: the
//! index first, then exactly the blobs the walk reaches.
//!
//! Only regular files at the paths an image archive has are accepted; `..`, absolute
//! paths, links, devices and any other path are `InvalidArgument` naming the entry. (The
//! one exception: `docker save` and skopeo link `<id>/layer.tar` to `../<other id>/layer.tar`
//! or `../<hex>.tar`; such a link is recorded as an alias, never followed on disk.)
//!
//! Nothing staged is visible until the caller commits the sink: an import that fails
//! leaves the store as it was. In a stream, blobs arrive before anyone knows whether an
//! image references them; unreferenced blobs are staged too.
//!
//! Image names come from `index.json` annotations ([`ANNOTATION_IMAGE_NAME`] first, then
//! [`ANNOTATION_REF_NAME`]; a bare tag there is joined to the repository of
//! [`Options::name`]) or docker's `RepoTags`. Names are returned as found, not normalised.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::Path;

use oci_spec::image::Descriptor;

use super::archive::{self, Gathered, Meter, Metered, StagedFile};
use super::layout::{
    BLOBS_DIR, Found, INDEX_FILE, MAX_JSON_SIZE, OCI_LAYOUT_FILE, OciLayout, Source, Walker,
    blob_path, parse_index,
};
use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Child, legacy};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Where imported blobs go. The store implements this over a transactional batch: nothing
/// staged is visible until the import commits as a whole.
pub trait Sink {
    /// Whether `digest` is already committed in the store.
    fn is_committed(&mut self, digest: &Digest) -> Result<bool>;

    /// Streams `reader` to staging while hashing with `expected`'s algorithm (sha256 if None),
    /// checks `size`/`expected` when given (FailedPrecondition naming both values on mismatch)
    /// and returns what it staged. Content already committed or already staged is hashed and
    /// verified but not written again (`written: false`).
    fn stage(
        &mut self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Staged>;

    /// Reads a staged or committed blob whole; `limit` caps the bytes (FailedPrecondition above it).
    fn read(&mut self, digest: &Digest, limit: u64) -> Result<Vec<u8>>;

    /// The size of a committed blob, when the sink can tell without reading it; `None` when
    /// it cannot. The walk checks the size a descriptor states for committed content that
    /// the input does not carry with this; the default (`None`) skips that check.
    fn committed_size(&mut self, digest: &Digest) -> Result<Option<u64>> {
        let _ = digest;
        Ok(None)
    }
}

/// What [`Sink::stage`] staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The content's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// `false` when the content was committed or staged already and nothing was written.
    pub written: bool,
}

/// How to import.
pub struct Options {
    /// `repo[:tag]`: names the image when the input names it only by a bare tag (joined to
    /// this repository), or not at all (the only unnamed image takes this name whole).
    pub name: Option<String>,
    /// Most uncompressed bytes read from the input, in all; beyond it the import fails
    /// with `InvalidArgument`. Bounds decompression bombs. Default 64 GiB.
    pub max_bytes: u64,
    /// Called with the bytes read so far, about once per MiB and once at the end.
    pub progress: Option<Box<dyn FnMut(u64)>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: None,
            max_bytes: 64 << 30,
            progress: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("name", &self.name)
            .field("max_bytes", &self.max_bytes)
            .field("progress", &self.progress.as_ref().map(|_| "FnMut(u64)"))
            .finish()
    }
}

/// An image the input holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedImage {
    /// The name as found in the input or joined with [`Options::name`]; not normalised (the
    /// caller normalises with docker's rules). Empty when the image has no name and
    /// [`Options::name`] was not given.
    pub name: String,
    /// The image's manifest or index, as `index.json` describes it (annotations and
    /// platform included), or the docker schema 2 manifest made for a `docker save` image.
    pub descriptor: Descriptor,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Every image, in the order of `index.json` (or `manifest.json` and its `RepoTags`).
    pub images: Vec<ImportedImage>,
    /// Distinct blobs written to staging.
    pub blobs_written: u64,
    /// Distinct blobs that were committed already (verified when the input carried them).
    pub blobs_present: u64,
    /// Bytes of the blobs written.
    pub bytes_written: u64,
}

/// Imports a layout directory, or an archive file (plain, gzip or zstd tar).
///
/// Blocks while it reads. On success everything the images need is staged or committed in
/// `sink`; the caller commits. Errors: `InvalidArgument` for malformed or hostile input,
/// `FailedPrecondition` for a digest or size mismatch, `NotFound` for a blob an image
/// references and the input lacks, `Io` naming the path.
pub fn import_path(path: &Path, sink: &mut dyn Sink, opts: Options) -> Result<Outcome> {
    let meta = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if meta.is_dir() {
        return import_dir(path, sink, opts);
    }
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    import_reader(&mut BufReader::with_capacity(1 << 20, file), sink, opts)
}

/// Imports an archive stream (plain, gzip or zstd tar), reading it once to its end.
/// Contract and errors as [`import_path`].
pub fn import_reader(reader: &mut dyn Read, sink: &mut dyn Sink, opts: Options) -> Result<Outcome> {
    let Options {
        name,
        max_bytes,
        progress,
    } = opts;
    let mut meter = Meter::new(max_bytes, progress);
    let mut imp = Importer::new(sink);
    let g = archive::read_stream(reader, &mut imp, &mut meter)?;
    finish(&mut imp, g, name.as_deref(), None, &mut meter)
}

fn import_dir(dir: &Path, sink: &mut dyn Sink, opts: Options) -> Result<Outcome> {
    let Options {
        name,
        max_bytes,
        progress,
    } = opts;
    let mut meter = Meter::new(max_bytes, progress);
    let mut imp = Importer::new(sink);
    let mut g = Gathered {
        oci_layout: read_doc(dir, OCI_LAYOUT_FILE, &mut meter)?,
        ..Default::default()
    };
    g.index = read_doc(dir, INDEX_FILE, &mut meter)?;
    if g.index.is_none() {
        g.docker_manifest = read_doc(dir, archive::DOCKER_MANIFEST_FILE, &mut meter)?;
    }
    finish(&mut imp, g, name.as_deref(), Some(dir), &mut meter)
}

/// The staging side of an import: the sink, and what has been staged and counted.
pub(super) struct Importer<'s> {
    pub sink: &'s mut dyn Sink,
    /// Every digest staged by this import, with its size.
    pub staged: HashMap<Digest, u64>,
    written: HashSet<Digest>,
    present: HashSet<Digest>,
    bytes_written: u64,
}

impl<'s> Importer<'s> {
    fn new(sink: &'s mut dyn Sink) -> Self {
        Importer {
            sink,
            staged: HashMap::new(),
            written: HashSet::new(),
            present: HashSet::new(),
            bytes_written: 0,
        }
    }

    /// Stages through the sink and counts the blob once.
    pub fn stage(
        &mut self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Staged> {
        let s = self.sink.stage(reader, expected, size)?;
        if self.staged.insert(s.digest, s.size).is_none() {
            if s.written {
                self.written.insert(s.digest);
                self.bytes_written += s.size;
            } else {
                self.present.insert(s.digest);
            }
        }
        Ok(s)
    }
}

/// After the input is read: check the layout, walk every image, name the images.
fn finish(
    imp: &mut Importer<'_>,
    g: Gathered,
    name: Option<&str>,
    dir: Option<&Path>,
    meter: &mut Meter,
) -> Result<Outcome> {
    if let Some(bytes) = &g.oci_layout {
        OciLayout::parse(bytes)?;
    }
    let mut walker = Walker::new();
    let mut found: Vec<(Option<String>, Descriptor)> = Vec::new();
    if let Some(index) = &g.index {
        let entries = parse_index(index)?;
        let mut source = ImportSource {
            imp: &mut *imp,
            meter: &mut *meter,
            dir,
        };
        for e in &entries {
            walker.walk(&e.child, INDEX_FILE, &mut source)?;
        }
        for e in entries {
            found.push((annotated_name(&e.descriptor, name)?, e.descriptor));
        }
    } else if let Some(doc) = &g.docker_manifest {
        let mut resolve = |imp: &mut Importer<'_>, path: &str| -> Result<Option<StagedFile>> {
            match dir {
                Some(dir) => stage_legacy_file(imp, dir, path, &mut *meter),
                None => Ok(lookup(&g, path)),
            }
        };
        let images = legacy::images(doc, &mut resolve, imp)?;
        let mut source = ImportSource {
            imp: &mut *imp,
            meter: &mut *meter,
            dir,
        };
        for image in images {
            walker.walk(&image.child, archive::DOCKER_MANIFEST_FILE, &mut source)?;
            if image.tags.is_empty() {
                found.push((None, image.descriptor.clone()));
            }
            for tag in image.tags {
                found.push((Some(tag), image.descriptor.clone()));
            }
        }
    } else {
        return Err(Error::InvalidArgument(format!(
            "the input has no {INDEX_FILE} (OCI image layout) and no {} (docker save)",
            archive::DOCKER_MANIFEST_FILE
        )));
    }
    let images = name_unnamed(found, name)?;
    meter.finish();
    Ok(Outcome {
        images,
        blobs_written: imp.written.len() as u64,
        blobs_present: imp.present.len() as u64,
        bytes_written: imp.bytes_written,
    })
}

/// The staged file at `path` (as `manifest.json` spells it), following `docker save`'s
/// layer links.
fn lookup(g: &Gathered, path: &str) -> Option<StagedFile> {
    let (mut path, _) = archive::classify(path.as_bytes(), false).ok()?;
    for _ in 0..8 {
        if let Some(f) = g.by_path.get(&path) {
            return Some(f.clone());
        }
        path = g.aliases.iter().find(|(from, _)| *from == path)?.1.clone();
    }
    None
}

/// The name `index.json` gives an entry: [`ANNOTATION_IMAGE_NAME`], else
/// [`ANNOTATION_REF_NAME`] (a bare tag joined to the repository of `name`).
fn annotated_name(d: &Descriptor, name: Option<&str>) -> Result<Option<String>> {
    let annotations = d.annotations().as_ref();
    let get = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .filter(|v| !v.is_empty())
    };
    if let Some(full) = get(ANNOTATION_IMAGE_NAME) {
        return Ok(Some(full.clone()));
    }
    let Some(reference) = get(ANNOTATION_REF_NAME) else {
        return Ok(None);
    };
    if reference.contains(['/', ':', '@']) {
        return Ok(Some(reference.clone()));
    }
    match name {
        Some(n) => Ok(Some(format!("{}:{reference}", repository_of(n)))),
        None => Err(Error::InvalidArgument(format!(
            "{INDEX_FILE} names image {} only by the tag {reference:?}; give the repository to join it to (Options::name)",
            d.digest()
        ))),
    }
}

/// `repo[:tag][@digest]` → `repo` (a `:` before the last `/` is a registry port).
fn repository_of(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// Gives `name` to the only unnamed image; `InvalidArgument` when several are unnamed and
/// `name` is given; without `name`, unnamed images keep an empty name.
fn name_unnamed(
    found: Vec<(Option<String>, Descriptor)>,
    name: Option<&str>,
) -> Result<Vec<ImportedImage>> {
    let unnamed = found.iter().filter(|(n, _)| n.is_none()).count();
    if unnamed > 1 && name.is_some() {
        return Err(Error::InvalidArgument(format!(
            "the input holds {unnamed} images without a name; Options::name can name only one"
        )));
    }
    Ok(found
        .into_iter()
        .map(|(n, descriptor)| ImportedImage {
            name: n.unwrap_or_else(|| name.unwrap_or_default().to_owned()),
            descriptor,
        })
        .collect())
}

/// The walk's view of an import: staged blobs, committed blobs, and (for a directory) the
/// layout's blob files, staged as the walk reaches them.
struct ImportSource<'a, 's> {
    imp: &'a mut Importer<'s>,
    meter: &'a mut Meter,
    dir: Option<&'a Path>,
}

impl Source for ImportSource<'_, '_> {
    fn locate(&mut self, child: &Child) -> Result<Found> {
        let d = &child.digest;
        if let Some(&size) = self.imp.staged.get(d) {
            return Ok(Found::Present(Some(size)));
        }
        if self.imp.sink.is_committed(d)? {
            self.imp.present.insert(*d);
            return Ok(Found::Present(self.imp.sink.committed_size(d)?));
        }
        let Some(dir) = self.dir else {
            return Ok(Found::Missing);
        };
        let path = blob_path(d);
        let Some((file, len)) = open_in(dir, &path)? else {
            return Ok(Found::Missing);
        };
        let mut reader = Metered {
            inner: file,
            meter: &mut *self.meter,
        };
        let staged = archive::stage_reader(self.imp, &mut reader, Some(d), len, &path)?;
        Ok(Found::Present(Some(staged.size)))
    }

    fn read(&mut self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        self.imp.sink.read(digest, limit)
    }
}

/// Stages the file a directory's `manifest.json` names.
fn stage_legacy_file(
    imp: &mut Importer<'_>,
    dir: &Path,
    path: &str,
    meter: &mut Meter,
) -> Result<Option<StagedFile>> {
    let (path, kind) = archive::classify(path.as_bytes(), false)?;
    let expected = match kind {
        archive::EntryKind::Blob(d) => Some(d),
        archive::EntryKind::Legacy => None,
        _ => return Ok(None),
    };
    let Some((file, len)) = open_in(dir, &path)? else {
        return Ok(None);
    };
    let mut reader = Metered { inner: file, meter };
    archive::stage_reader(imp, &mut reader, expected.as_ref(), len, &path).map(Some)
}

/// Reads a small document of the layout, or `None` when it is absent.
fn read_doc(dir: &Path, name: &str, meter: &mut Meter) -> Result<Option<Vec<u8>>> {
    let Some((file, len)) = open_in(dir, name)? else {
        return Ok(None);
    };
    if len > MAX_JSON_SIZE {
        return Err(Error::InvalidArgument(format!(
            "{name} in '{}' is {len} bytes, larger than the {MAX_JSON_SIZE} bytes allowed",
            dir.display()
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    Metered { inner: file, meter }
        .take(MAX_JSON_SIZE)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::from_io(e, "read", dir.join(name)))?;
    Ok(Some(bytes))
}

/// Opens the regular file `rel` (a validated relative path) under `root`, refusing
/// symlinks at every component; `None` when it does not exist.
fn open_in(root: &Path, rel: &str) -> Result<Option<(File, u64)>> {
    let mut path = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    let mut meta = None;
    for part in &parts {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat", &path, e)),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::InvalidArgument(format!(
                    "'{}' is a symbolic link; a layout is read without following links",
                    path.display()
                )));
            }
            Ok(m) => meta = Some(m),
        }
    }
    let meta = meta.expect("rel has at least one component");
    if !meta.is_file() {
        let what = if parts[0] == BLOBS_DIR {
            "blob"
        } else {
            "layout file"
        };
        return Err(Error::InvalidArgument(format!(
            "{what} '{}' is not a regular file",
            path.display()
        )));
    }
    let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
    #[cfg(unix)]
    {
        // The file opened must be the one checked: no link swapped in between.
        use std::os::unix::fs::MetadataExt;
        let opened = file.metadata().map_err(|e| Error::io("stat", &path, e))?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(Error::InvalidArgument(format!(
                "'{}' changed while it was opened",
                path.display()
            )));
        }
    }
    Ok(Some((file, meta.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn repositories() {
        assert_eq!(repository_of("repo"), "repo");
        assert_eq!(repository_of("repo:tag"), "repo");
        assert_eq!(repository_of("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(repository_of("localhost:5000/x:1"), "localhost:5000/x");
        let d = crate::digest::Algorithm::Sha256.digest(b"");
        assert_eq!(repository_of(&format!("a/b:c@{d}")), "a/b");
    }

    fn desc(annotations: &[(&str, &str)]) -> Descriptor {
        let d = crate::digest::Algorithm::Sha256.digest(b"m");
        let mut desc =
            crate::names::descriptor(super::super::MEDIA_TYPE_OCI_MANIFEST, &d, 1).unwrap();
        if !annotations.is_empty() {
            desc.set_annotations(Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ));
        }
        desc
    }

    #[test]
    fn names_from_annotations() {
        let full = desc(&[
            (ANNOTATION_IMAGE_NAME, "docker.io/x/y:1"),
            (ANNOTATION_REF_NAME, "1"),
        ]);
        assert_eq!(
            annotated_name(&full, None).unwrap().unwrap(),
            "docker.io/x/y:1"
        );
        let tag = desc(&[(ANNOTATION_REF_NAME, "v2")]);
        assert_eq!(
            annotated_name(&tag, Some("reg:5000/app:v1"))
                .unwrap()
                .unwrap(),
            "reg:5000/app:v2"
        );
        assert_eq!(
            annotated_name(&tag, None).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let named = desc(&[(ANNOTATION_REF_NAME, "alpine:3.19")]);
        assert_eq!(
            annotated_name(&named, None).unwrap().unwrap(),
            "alpine:3.19"
        );
        assert_eq!(annotated_name(&desc(&[]), Some("x")).unwrap(), None);
    }

    #[test]
    fn unnamed_images() {
        let one = vec![(None, desc(&[])), (Some("a:1".into()), desc(&[]))];
        let named = name_unnamed(one.clone(), Some("b:2")).unwrap();
        assert_eq!(named[0].name, "b:2");
        assert_eq!(named[1].name, "a:1");
        assert_eq!(name_unnamed(one, None).unwrap()[0].name, "");
        let two = vec![(None, desc(&[])), (None, desc(&[]))];
        assert_eq!(
            name_unnamed(two.clone(), Some("b")).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(name_unnamed(two, None).unwrap().len(), 2);
    }
}
