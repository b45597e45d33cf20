//! Conveniences over the content traits, the way containerd's `content` package has them:
//! copy a reader into a writer, write or read a whole blob, open a writer with retries.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use crate::content::{ContentStore, Ingester, Labels, Provider, ReaderAt, Writer};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};

/// A reader that can also seek.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Where [`copy`] takes its bytes from. A resumed writer skips the bytes it already has:
/// by seeking when the source can, else by reading and discarding them.
pub enum Source<'a> {
    /// A plain stream, read once from its current position.
    Stream(&'a mut dyn Read),
    /// A seekable stream (a file); positions are absolute.
    Seekable(&'a mut dyn ReadSeek),
    /// Random access (another store's blob).
    At(&'a dyn ReaderAt),
}

/// How long [`open_writer`] keeps retrying a reference held by another writer.
pub const OPEN_WRITER_PATIENCE: Duration = Duration::from_secs(10);

/// Opens a writer for `reference`, retrying with bounded exponential backoff (10 ms up to
/// 500 ms a step, [`OPEN_WRITER_PATIENCE`] in all) while a live writer holds it; then the last
/// `Unavailable`. Other errors return at once.
pub fn open_writer(
    ingester: &dyn Ingester,
    reference: &str,
    size: Option<u64>,
    expected: Option<&Digest>,
) -> Result<Box<dyn Writer>> {
    let deadline = Instant::now() + OPEN_WRITER_PATIENCE;
    let mut pause = Duration::from_millis(10);
    loop {
        match ingester.writer(reference, size, expected) {
            Err(e) if e.kind() == ErrorKind::Unavailable && Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// What [`copy`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The content's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// `false` when the content was already committed (by someone else, or before).
    pub created: bool,
}

/// Copies `source` into `writer` and commits it with `size`, `expected` and `labels`.
///
/// If the writer resumes at an offset, that many bytes of the source are skipped. Content
/// that turns out to be committed already counts as success (`created: false`).
pub fn copy(
    mut writer: Box<dyn Writer>,
    source: Source<'_>,
    size: Option<u64>,
    expected: Option<&Digest>,
    labels: Labels,
) -> Result<Committed> {
    let offset = writer.status()?.offset;
    let remaining = size.map(|s| s.saturating_sub(offset));
    match source {
        Source::Stream(r) => {
            io::copy(&mut r.take(offset), &mut io::sink())
                .map_err(|e| Error::from_io(e, "skip the resumed prefix of", "input"))?;
            copy_stream(r, &mut *writer, remaining)?;
        }
        Source::Seekable(r) => {
            r.seek(SeekFrom::Start(offset))
                .map_err(|e| Error::io("seek", "input", e))?;
            copy_stream(r, &mut *writer, remaining)?;
        }
        Source::At(r) => {
            let mut at = AtReader::new(r);
            at.pos = offset;
            copy_stream(&mut at, &mut *writer, remaining)?;
        }
    }
    // What names the content if the commit finds it already there.
    let named = match expected {
        Some(d) => *d,
        None => writer.digest(),
    };
    let written = writer.status()?.offset;
    match writer.commit(size, expected, labels) {
        Ok(digest) => Ok(Committed {
            digest,
            size: written,
            created: true,
        }),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Committed {
            digest: named,
            size: written,
            created: false,
        }),
        Err(e) => Err(e),
    }
}

/// Streams `reader` into `writer` through a buffer of up to 1 MiB: sized to `expected`
/// bytes (plus one, to see the end in one read) when known, else starting at 64 KiB and
/// doubling each time as many bytes as it holds have gone through. A small blob so costs
/// no 1 MiB allocation to zero.
fn copy_stream(
    reader: &mut dyn Read,
    writer: &mut dyn Writer,
    expected: Option<u64>,
) -> Result<u64> {
    const MAX: usize = 1 << 20;
    let first = expected
        .and_then(|e| usize::try_from(e.saturating_add(1)).ok())
        .unwrap_or(64 << 10)
        .clamp(4 << 10, MAX);
    let mut buf = vec![0u8; first];
    let mut n = 0u64;
    loop {
        if buf.len() < MAX && n >= buf.len() as u64 {
            buf.resize((buf.len() * 2).min(MAX), 0);
        }
        let k = match reader.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::from_io(e, "read", "input")),
        };
        writer
            .write_all(&buf[..k])
            .map_err(|e| Error::from_io(e, "write", "ingest"))?;
        n += k as u64;
    }
}

/// Writes a whole blob from `reader` under `reference`.
///
/// When `expected` is already committed it returns at once without touching the reader.
/// A resumed ingest skips what it has. Content committed meanwhile counts as success.
pub fn write_blob(
    store: &dyn ContentStore,
    reference: &str,
    reader: &mut dyn Read,
    size: Option<u64>,
    expected: Option<&Digest>,
    labels: Labels,
) -> Result<Digest> {
    if let Some(d) = expected {
        match store.info(d) {
            Ok(_) => return Ok(*d),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let writer = match open_writer(store, reference, size, expected) {
        Ok(w) => w,
        Err(e) if e.kind() == ErrorKind::AlreadyExists && expected.is_some() => {
            return Ok(expected.cloned().expect("checked"));
        }
        Err(e) => return Err(e),
    };
    copy(writer, Source::Stream(reader), size, expected, labels).map(|c| c.digest)
}

/// Reads a whole blob into memory. `NotFound` when absent.
pub fn read_blob(provider: &dyn Provider, digest: &Digest) -> Result<Vec<u8>> {
    let r = provider.reader_at(digest)?;
    let mut out = Vec::with_capacity(usize::try_from(r.size()).unwrap_or(0).min(1 << 30));
    AtReader::new(&*r)
        .read_to_end(&mut out)
        .map_err(|e| Error::from_io(e, "read", digest.to_string()))?;
    Ok(out)
}

/// Reads at most `limit` bytes from the start of a blob (manifests, configs, indexes).
pub fn read_blob_prefix(provider: &dyn Provider, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
    let r = provider.reader_at(digest)?;
    // Sized once from the record: no probing reads, no regrowth.
    let want = usize::try_from(r.size().min(limit)).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(want.min(64 << 20));
    AtReader::new(&*r)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Error::from_io(e, "read", digest.to_string()))?;
    Ok(out)
}

/// Streams a whole blob into `out`, returning the bytes written.
pub fn copy_blob_to(provider: &dyn Provider, digest: &Digest, out: &mut dyn Write) -> Result<u64> {
    let r = provider.reader_at(digest)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = r.read_at(&mut buf, pos)?;
        if n == 0 {
            return Ok(pos);
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("write", "output", e))?;
        pos += n as u64;
    }
}

/// Reads a whole blob and checks it against its digest: `Corrupted` when the bytes on disk
/// no longer hash to it, never the wrong bytes.
pub fn read_blob_verified(provider: &dyn Provider, digest: &Digest) -> Result<Vec<u8>> {
    let bytes = read_blob(provider, digest)?;
    let actual = digest.algorithm().digest(&bytes);
    if actual != *digest {
        return Err(Error::Corrupted(format!(
            "content {digest} reads back as {actual}: its bytes on disk have changed"
        )));
    }
    Ok(bytes)
}

/// An `io::Read + io::Seek` view of a [`ReaderAt`].
pub struct AtReader<'a> {
    inner: &'a dyn ReaderAt,
    pos: u64,
}

impl<'a> AtReader<'a> {
    /// A reader positioned at the start.
    pub fn new(inner: &'a dyn ReaderAt) -> Self {
        AtReader { inner, pos: 0 }
    }
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(buf, self.pos).map_err(Error::into_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for AtReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let base = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.inner.size().checked_add_signed(d),
        };
        self.pos = base
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Runs `work` on every item, `workers` at a time, largest first (`size` says how large);
/// the results in the items' order. The first error stops the rest from starting and is
/// returned.
pub(crate) fn largest_first<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    size: impl Fn(&T) -> u64,
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if items.len() <= 1 || workers <= 1 {
        // Nothing to overlap: no thread.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(size(&items[i])));
        let mut results: Vec<Option<R>> = items.iter().map(|_| None).collect();
        for i in order {
            results[i] = Some(work(&items[i])?);
        }
        return Ok(results.into_iter().flatten().collect());
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(&items[i])));
    let queue =
        parking_lot::Mutex::new(order.into_iter().collect::<std::collections::VecDeque<_>>());
    let results: parking_lot::Mutex<Vec<Option<R>>> =
        parking_lot::Mutex::new(items.iter().map(|_| None).collect());
    let failure: parking_lot::Mutex<Option<Error>> = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()).max(1) {
            s.spawn(|| {
                while failure.lock().is_none() {
                    let Some(i) = queue.lock().pop_front() else {
                        return;
                    };
                    match work(&items[i]) {
                        Ok(r) => results.lock()[i] = Some(r),
                        Err(e) => {
                            failure.lock().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect())
}
