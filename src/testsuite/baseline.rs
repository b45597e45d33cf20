//! A plain way of writing a file durably, for the benches to measure ocistore against in the
//! same run: through the page cache, or around it with direct I/O, whichever is faster on the
//! machine at hand is the reference a put or an import is held to.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const ALIGN: usize = 4096;
const BUF: usize = 1 << 20;

/// A new file written in order and made durable by [`PlainFile::finish`].
pub struct PlainFile {
    file: File,
    /// The same file opened with `O_DIRECT`, when asked for and the file system has it.
    direct: Option<File>,
    /// `BUF + ALIGN` bytes, of which `BUF` from `start` are page aligned (direct I/O only).
    raw: Vec<u8>,
    start: usize,
    fill: usize,
    at: u64,
}

impl PlainFile {
    /// Creates `path`; with `direct`, full 1 MiB pieces are written around the page cache
    /// (from one page-aligned buffer, the unaligned tail through the page cache).
    pub fn create(path: &Path, direct: bool) -> io::Result<PlainFile> {
        let file = File::create(path)?;
        #[cfg(target_os = "linux")]
        let direct = direct
            .then(|| {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten();
        #[cfg(not(target_os = "linux"))]
        let direct: Option<File> = {
            let _ = direct;
            None
        };
        let raw = if direct.is_some() {
            vec![0u8; BUF + ALIGN]
        } else {
            Vec::new()
        };
        let start = raw.as_ptr().align_offset(ALIGN);
        Ok(PlainFile {
            file,
            direct,
            raw,
            start,
            fill: 0,
            at: 0,
        })
    }

    /// Writes what is left and fsyncs the file.
    pub fn finish(self) -> io::Result<()> {
        if self.fill > 0 {
            let tail = &self.raw[self.start..self.start + self.fill];
            self.file.write_all_at(tail, self.at)?;
        }
        self.file.sync_all()
    }
}

impl Write for PlainFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let Some(direct) = &self.direct else {
            return self.file.write(bytes);
        };
        let take = bytes.len().min(BUF - self.fill);
        let buf = &mut self.raw[self.start..self.start + BUF];
        buf[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
        self.fill += take;
        if self.fill == BUF {
            direct.write_all_at(buf, self.at)?;
            self.at += BUF as u64;
            self.fill = 0;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
