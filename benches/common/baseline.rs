//! A plain way of writing a file durably, for the benches to measure ocistore against in the
//! same run: through the page cache, or around it with direct I/O, whichever is faster on the
//! machine at hand is the reference a put or an import is held to. It shares no code with
//! the store: a baseline that borrowed the store's writer would move with it.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes per direct write, as the store's pipe writes them.
const BUFFER: usize = 1 << 20;
/// Alignment of the buffer and of direct writes: the page size.
const ALIGN: usize = 4096;

/// A page-aligned buffer of [`BUFFER`] bytes, or an empty one.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    start: usize,
}

impl Buffer {
    fn allocate() -> Buffer {
        let bytes = vec![0u8; BUFFER + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        Buffer { bytes, start }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + BUFFER]
    }

    fn filled(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len]
    }
}

/// `path` (the file `file` just created) opened again with `O_DIRECT`; `None` where the file
/// system refuses it.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// A new file written in order and made durable by [`PlainFile::finish`].
pub struct PlainFile {
    file: File,
    /// The same file opened with `O_DIRECT` (the store's own way of opening it), when asked
    /// for and the file system has it.
    direct: Option<File>,
    /// One page-aligned buffer, for direct I/O only.
    buf: Buffer,
    fill: usize,
    at: u64,
}

impl PlainFile {
    /// Creates `path`; with `direct`, full 1 MiB pieces are written around the page cache
    /// (from one page-aligned buffer, the unaligned tail through the page cache).
    pub fn create(path: &Path, direct: bool) -> io::Result<PlainFile> {
        let file = File::create(path)?;
        let direct = if direct { open_direct(path) } else { None };
        let buf = if direct.is_some() {
            Buffer::allocate()
        } else {
            Buffer::default()
        };
        Ok(PlainFile {
            file,
            direct,
            buf,
            fill: 0,
            at: 0,
        })
    }

    /// Writes what is left and fsyncs the file.
    pub fn finish(self) -> io::Result<()> {
        if self.fill > 0 {
            self.file
                .write_all_at(self.buf.filled(self.fill), self.at)?;
        }
        self.file.sync_all()
    }
}

impl Write for PlainFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let Some(direct) = &self.direct else {
            return self.file.write(bytes);
        };
        let take = bytes.len().min(BUFFER - self.fill);
        self.buf.as_mut()[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
        self.fill += take;
        if self.fill == BUFFER {
            direct.write_all_at(self.buf.filled(BUFFER), self.at)?;
            self.at += BUFFER as u64;
            self.fill = 0;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
