//! Reading an archive as a stream: compression detected by magic bytes, a meter that
//! bounds and reports the bytes read, and the tar entries an image archive may hold.
//! Nothing is unpacked to disk; blobs go to the sink as they stream past.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
use tar::EntryType;

use super::import::Importer;
use super::layout::{BLOBS_DIR, INDEX_FILE, MAX_JSON_SIZE, OCI_LAYOUT_FILE};
use super::with_context;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// docker's manifest file in a `docker save` archive.
pub(super) const DOCKER_MANIFEST_FILE: &str = "manifest.json";
/// docker's legacy tag file, ignored.
const DOCKER_REPOSITORIES_FILE: &str = "repositories";

/// How a staged file's bytes begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Tells gzip and zstd apart by their magic bytes; anything else is `None`.
    pub(crate) fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A file staged from the archive, by path.
#[derive(Debug, Clone)]
pub(super) struct StagedFile {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
}

/// What a pass over an archive (or a layout directory) gathered besides the staged blobs.
#[derive(Debug, Default)]
pub(super) struct Gathered {
    pub oci_layout: Option<Vec<u8>>,
    pub index: Option<Vec<u8>>,
    pub docker_manifest: Option<Vec<u8>>,
    /// Every staged file by its normalised path.
    pub by_path: BTreeMap<String, StagedFile>,
    /// `docker save` layer symlinks: path → the path it points at.
    pub aliases: Vec<(String, String)>,
}

/// Counts the uncompressed bytes read, refuses more than the limit, and reports progress.
pub(super) struct Meter {
    read: u64,
    max: u64,
    reported: u64,
    progress: Option<Box<dyn FnMut(u64)>>,
}

/// Progress is reported at most once per this many bytes (and once at the end).
const REPORT_EVERY: u64 = 1 << 20;

impl Meter {
    pub fn new(max: u64, progress: Option<Box<dyn FnMut(u64)>>) -> Self {
        Meter {
            read: 0,
            max,
            reported: 0,
            progress,
        }
    }

    pub fn add(&mut self, n: usize) -> Result<()> {
        self.read += n as u64;
        if self.read > self.max {
            return Err(Error::InvalidArgument(format!(
                "the input holds more than {} bytes, the import limit (Options::max_bytes)",
                self.max
            )));
        }
        if self.read - self.reported >= REPORT_EVERY {
            self.report();
        }
        Ok(())
    }

    pub fn finish(&mut self) {
        if self.read != self.reported || self.read == 0 {
            self.report();
        }
    }

    fn report(&mut self) {
        self.reported = self.read;
        if let Some(p) = self.progress.as_mut() {
            p(self.read);
        }
    }
}

/// A reader that feeds a [`Meter`] and turns every error into one carrying an [`Error`]
/// of the right kind (see [`recover`]).
pub(super) struct Metered<'m, R> {
    pub inner: R,
    pub meter: &'m mut Meter,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| recover(e).into_io())?;
        self.meter.add(n).map_err(Error::into_io)?;
        Ok(n)
    }
}

/// The [`Error`] an I/O error from the input stands for: an [`Error`] it carries; an
/// operating-system error as I/O; anything a decoder or the tar parser made up (unexpected
/// end, bad checksum, corrupt deflate stream) as `InvalidArgument`: the input is malformed.
pub(super) fn recover(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Error::from_io(e, "read", "input");
    }
    if e.raw_os_error().is_some() {
        return Error::io("read", "input", e);
    }
    Error::InvalidArgument(format!("the archive is truncated or malformed: {e}"))
}

/// A reader that keeps the first error it meets, so that what a sink reports about a
/// failed read can be replaced by the real cause, and remembers how its bytes begin.
struct Guarded<R> {
    inner: R,
    error: Option<Error>,
    head: Vec<u8>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let want = 4usize.saturating_sub(self.head.len()).min(n);
                self.head.extend_from_slice(&buf[..want]);
                Ok(n)
            }
            Err(e) => {
                let err = recover(e);
                let copy = io::Error::other(err.to_string());
                self.error.get_or_insert(err);
                Err(copy)
            }
        }
    }
}

/// Reads a whole archive stream: detects gzip or zstd by magic bytes, then streams the tar
/// entries, staging blobs through `imp` and keeping the small JSON documents.
pub(super) fn read_stream(
    reader: &mut dyn Read,
    imp: &mut Importer<'_>,
    meter: &mut Meter,
) -> Result<Gathered> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", "input", e)),
        }
    }
    if n == 0 {
        return Err(Error::InvalidArgument("the archive is empty".into()));
    }
    let prefixed = io::Cursor::new(head[..n].to_vec()).chain(reader);
    let decoded: Box<dyn Read + '_> = match Compression::sniff(&head[..n]) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 16,
            prefixed,
        ))),
        Compression::Zstd => Box::new(ZstdFrames::new(prefixed)),
        Compression::None => Box::new(prefixed),
    };
    let guarded = super::targuard::TarGuard::new(decoded);
    let mut archive = tar::Archive::new(Metered {
        inner: guarded,
        meter,
    });
    let mut g = Gathered::default();
    for entry in archive.entries().map_err(recover)? {
        let mut entry = entry.map_err(recover)?;
        read_entry(&mut entry, imp, &mut g)?;
    }
    // Drain what follows the end-of-archive blocks so that a compressed stream's trailer
    // (gzip's CRC) is checked and a truncated stream noticed.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(recover)?;
    Ok(g)
}

/// What an entry's path says it is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EntryKind {
    /// A directory that may appear in a layout or a `docker save` archive.
    Dir,
    OciLayout,
    Index,
    DockerManifest,
    /// `repositories`, `<id>/json`, `<id>/VERSION`: legacy metadata this import does not use.
    Ignored,
    Blob(Digest),
    /// `<id>/layer.tar`, or a `<hex>.json` config, of a `docker save` archive.
    Legacy,
}

/// Normalises an entry path (a leading `./` dropped, a directory's trailing `/` dropped) and
/// says what it is. `InvalidArgument` naming the entry for an absolute path, a `..`
/// component, or a path an image archive does not have.
pub(super) fn classify(raw: &[u8], is_dir: bool) -> Result<(String, EntryKind)> {
    let shown = String::from_utf8_lossy(raw);
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "archive entry {shown:?}: {why}"
        )))
    };
    let Ok(path) = std::str::from_utf8(raw) else {
        return bad("path is not UTF-8");
    };
    if path.starts_with('/') {
        return bad("absolute path");
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.contains(&"..") {
        return bad("path has a '..' component");
    }
    if is_dir && parts.len() > 1 && parts.last() == Some(&"") {
        parts.pop();
    }
    while parts.len() > 1 && parts[0] == "." {
        parts.remove(0);
    }
    if parts.iter().any(|p| p.is_empty() || *p == ".") && parts != ["."] {
        return bad("path has an empty or '.' component");
    }
    let norm = parts.join("/");
    let hex64 =
        |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let kind = if is_dir {
        match parts.as_slice() {
            ["."] | [BLOBS_DIR] => EntryKind::Dir,
            [BLOBS_DIR, alg]
                if alg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
            {
                EntryKind::Dir
            }
            [id] if hex64(id) => EntryKind::Dir,
            _ => return bad("unexpected directory in an image archive"),
        }
    } else {
        match parts.as_slice() {
            [OCI_LAYOUT_FILE] => EntryKind::OciLayout,
            [INDEX_FILE] => EntryKind::Index,
            [DOCKER_MANIFEST_FILE] => EntryKind::DockerManifest,
            [DOCKER_REPOSITORIES_FILE] => EntryKind::Ignored,
            [BLOBS_DIR, alg, hex] => EntryKind::Blob(
                Digest::parse(&format!("{alg}:{hex}"))
                    .map_err(|e| with_context(e, &format!("archive entry {shown:?}")))?,
            ),
            [id, "json" | "VERSION"] if hex64(id) => EntryKind::Ignored,
            [id, "layer.tar"] if hex64(id) => EntryKind::Legacy,
            [file] if file.strip_suffix(".json").is_some_and(hex64) => EntryKind::Legacy,
            // skopeo's docker-archive keeps layers at the top, named by their digest.
            [file] if file.strip_suffix(".tar").is_some_and(hex64) => EntryKind::Legacy,
            _ => return bad("unexpected file in an image archive"),
        }
    };
    Ok((norm, kind))
}

fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    imp: &mut Importer<'_>,
    g: &mut Gathered,
) -> Result<()> {
    let raw = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let refuse = |what: &str| {
        Err(Error::InvalidArgument(format!(
            "archive entry {shown:?} is {what}"
        )))
    };
    match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous => {}
        EntryType::Directory => return classify(&raw, true).map(drop),
        // A pax global header carries metadata for the whole archive (git archive writes one).
        EntryType::XGlobalHeader => return Ok(()),
        EntryType::Symlink => return legacy_alias(entry, &raw, &shown, g),
        EntryType::Link => return refuse("a hard link"),
        EntryType::Char | EntryType::Block | EntryType::Fifo => return refuse("a device or fifo"),
        other => {
            return refuse(&format!(
                "of tar entry type {:?}, not a regular file",
                other.as_byte() as char
            ));
        }
    }
    let (path, kind) = classify(&raw, false)?;
    let size = entry.header().size().map_err(recover)?;
    let doc = |slot: &mut Option<Vec<u8>>, entry: &mut tar::Entry<'_, R>| -> Result<()> {
        if slot.is_some() {
            return refuse("a second copy of that file");
        }
        if size > MAX_JSON_SIZE {
            return refuse(&format!(
                "{size} bytes, larger than the {MAX_JSON_SIZE} bytes allowed"
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(recover)?;
        *slot = Some(bytes);
        Ok(())
    };
    match kind {
        EntryKind::OciLayout => doc(&mut g.oci_layout, entry),
        EntryKind::Index => doc(&mut g.index, entry),
        EntryKind::DockerManifest => doc(&mut g.docker_manifest, entry),
        EntryKind::Ignored | EntryKind::Dir => Ok(()),
        EntryKind::Blob(digest) => stage_entry(entry, imp, g, path, Some(&digest), size),
        EntryKind::Legacy => stage_entry(entry, imp, g, path, None, size),
    }
}

fn stage_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    imp: &mut Importer<'_>,
    g: &mut Gathered,
    path: String,
    expected: Option<&Digest>,
    size: u64,
) -> Result<()> {
    let staged = stage_reader(imp, entry, expected, size, &path)?;
    g.by_path.insert(path, staged);
    Ok(())
}

/// Stages `reader` (the file at `path`, `size` bytes) through `imp`. Errors name `path`;
/// when reading the input failed, the error is that failure, whatever the sink made of it.
pub(super) fn stage_reader(
    imp: &mut Importer<'_>,
    reader: &mut dyn Read,
    expected: Option<&Digest>,
    size: u64,
    path: &str,
) -> Result<StagedFile> {
    let mut guarded = Guarded {
        inner: reader,
        error: None,
        head: Vec::new(),
    };
    let staged = imp.stage(&mut guarded, expected, Some(size));
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            return Err(with_context(
                guarded.error.take().unwrap_or(e),
                &format!("entry {path:?}"),
            ));
        }
    };
    Ok(StagedFile {
        digest: staged.digest,
        size: staged.size,
        compression: Compression::sniff(&guarded.head),
    })
}

/// Older `docker save` writes a layer that two images share once and links the second
/// `<id>/layer.tar` to it as `../<other id>/layer.tar`; skopeo's docker-archive links every
/// `<id>/layer.tar` to `../<hex>.tar`. Nothing is unpacked, so such a link is safe to record
/// as an alias; every other symlink is refused.
fn legacy_alias<R: Read>(
    entry: &tar::Entry<'_, R>,
    raw: &[u8],
    shown: &str,
    g: &mut Gathered,
) -> Result<()> {
    let refuse = || {
        Err(Error::InvalidArgument(format!(
            "archive entry {shown:?} is a symbolic link"
        )))
    };
    let Ok((path, EntryKind::Legacy)) = classify(raw, false) else {
        return refuse();
    };
    let Some(target) = entry.link_name_bytes() else {
        return refuse();
    };
    let Some(rest) = target.strip_prefix(b"../") else {
        return refuse();
    };
    match classify(rest, false) {
        Ok((target, EntryKind::Legacy))
            if path.ends_with("/layer.tar") && target.ends_with(".tar") =>
        {
            g.aliases.push((path, target));
            Ok(())
        }
        _ => refuse(),
    }
}

/// Serves `pending` bytes before those of `inner`; lets the zstd reader look at a frame's
/// magic number and hand it back.
struct Pushback<R> {
    pending: Vec<u8>,
    inner: R,
}

impl<R: Read> Read for Pushback<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// A zstd stream of any number of frames (pzstd and `zstd -T` write several), skippable
/// frames skipped. ruzstd's decoder reads one frame.
pub(crate) struct ZstdFrames<R: Read> {
    source: Option<Pushback<R>>,
    decoder: Option<StreamingDecoder<Pushback<R>, FrameDecoder>>,
    spare: Option<FrameDecoder>,
}

impl<R: Read> ZstdFrames<R> {
    /// A decoder of the frames `inner` holds.
    pub(crate) fn new(inner: R) -> Self {
        ZstdFrames {
            source: Some(Pushback {
                pending: Vec::new(),
                inner,
            }),
            decoder: None,
            spare: None,
        }
    }

    /// Starts the next data frame; `false` at the clean end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        let Some(mut source) = self.source.take() else {
            return Err(io::Error::other("the zstd stream failed earlier"));
        };
        if !skip_to_data_frame(&mut source)? {
            self.source = Some(source);
            return Ok(false);
        }
        let frames = self.spare.take().unwrap_or_default();
        let decoder =
            StreamingDecoder::new_with_decoder(source, frames).map_err(io::Error::other)?;
        self.decoder = Some(decoder);
        Ok(true)
    }
}

/// Skips skippable frames; `true` when a data frame follows (its magic pushed back),
/// `false` at the clean end of the stream.
fn skip_to_data_frame<R: Read>(source: &mut Pushback<R>) -> io::Result<bool> {
    loop {
        let mut magic = [0u8; 4];
        let mut n = 0;
        while n < 4 {
            match source.read(&mut magic[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if u32::from_le_bytes(magic) & 0xffff_fff0 != 0x184d_2a50 {
            source.pending.splice(0..0, magic);
            return Ok(true);
        }
        let mut len = [0u8; 4];
        source.read_exact(&mut len)?;
        let len = u64::from(u32::from_le_bytes(len));
        if io::copy(&mut Read::take(&mut *source, len), &mut io::sink())? != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(d) = self.decoder.as_mut() {
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                let (source, frames) = self.decoder.take().expect("checked").into_parts();
                self.source = Some(source);
                self.spare = Some(frames);
            }
            if !self.next_frame()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn kind(p: &str, dir: bool) -> Result<EntryKind> {
        classify(p.as_bytes(), dir).map(|(_, k)| k)
    }

    #[test]
    fn paths() {
        let hex = "a".repeat(64);
        assert_eq!(kind("./index.json", false).unwrap(), EntryKind::Index);
        assert_eq!(kind("oci-layout", false).unwrap(), EntryKind::OciLayout);
        assert!(matches!(
            kind(&format!("blobs/sha256/{hex}"), false).unwrap(),
            EntryKind::Blob(_)
        ));
        assert_eq!(
            kind(&format!("{hex}/layer.tar"), false).unwrap(),
            EntryKind::Legacy
        );
        assert_eq!(
            kind(&format!("{hex}.json"), false).unwrap(),
            EntryKind::Legacy
        );
        assert_eq!(
            kind(&format!("{hex}/json"), false).unwrap(),
            EntryKind::Ignored
        );
        assert_eq!(kind("./", true).unwrap(), EntryKind::Dir);
        assert_eq!(kind("blobs/sha256/", true).unwrap(), EntryKind::Dir);
        for bad in [
            "../x",
            "/index.json",
            "blobs/sha256/../../x",
            "etc/passwd",
            "blobs/sha256/ABC",
            "a//b",
            "blobs/./sha256/x",
        ] {
            assert_eq!(
                kind(bad, false).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
        assert_eq!(
            kind("etc", true).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn zstd_frames_concatenate() {
        use ruzstd::encoding::{CompressionLevel, compress_to_vec};
        let mut stream = compress_to_vec(&b"hello "[..], CompressionLevel::Fastest);
        // A skippable frame between the two data frames.
        stream.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        stream.extend(compress_to_vec(&b"world"[..], CompressionLevel::Fastest));
        let mut out = String::new();
        ZstdFrames::new(&stream[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
    }
}
