//! Appending to a file on a second thread, so that hashing and writing overlap.
//!
//! A writer of a large blob spends about as long hashing its bytes as the kernel spends
//! copying them into the page cache; done one after the other, a put costs their sum. A
//! [`Pipe`] gathers bytes into 1 MiB buffers and hands each full buffer to a worker thread
//! that writes it at its offset, while the caller hashes (and gathers) the next one: a large
//! ingest then costs about the larger of the two.
//!
//! Full buffers at aligned offsets are written with direct I/O (`O_DIRECT`, through a second
//! descriptor of the same file): the bytes go from the buffer to the disk, with no copy into
//! the page cache and no writeback later. On this project's machines that took the kernel's
//! share of a 200 MiB import from about 480 ms to 70 ms, and its wall time from 0.6-0.8 s to
//! about 0.2 s whenever the page cache's writeback was slow (it is throttled on virtual disks;
//! a direct `dd` of 200 MiB ran at 1.2-1.7 GB/s while the same write through the page cache
//! and an fsync ran at 0.25-0.38 GB/s). The cost: a blob just written is not in the page
//! cache, so its first read comes from the disk. Everything else (a small blob, a tail, a
//! resumed ingest's unaligned offsets, a file system without direct I/O) goes through the
//! page cache, and the worker then asks the kernel to start writing back every few MiB
//! (`sync_file_range`), so that the fsync at commit finds little left to do.
//!
//! Buffers are reused, within a pipe and across pipes through the store's [`BufferPool`]: at
//! most [`IN_FLIGHT`] are with the worker and one is being filled. Bytes read from a source
//! go straight into the buffer ([`Pipe::read_from`]); bytes written by a caller are copied
//! into it once, the copy any buffered writer makes. Content that fits in one buffer never
//! starts a thread: it is written by [`Pipe::flush`], on the caller's.
//!
//! A write the worker fails is reported by the next call, and every call after it: the bytes
//! the caller has handed over are no longer all in the file, so the pipe is spent.

// Sealing, streaming reads and capture serve pulls and the read-through cache; without the
// `registry` feature nothing calls them.
#![cfg_attr(not(feature = "registry"), allow(dead_code))]

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Bytes gathered before one write.
pub(crate) const BUFFER: usize = 1 << 20;

/// Full buffers the worker may hold at once. With direct I/O a buffer's write takes about as
/// long as hashing it (0.6 ms per MiB each here), so two stages of equal speed need a queue
/// to absorb each other's jitter: the 1 GiB put took 0.82 s with 2, 0.69 s with 3 (the
/// hash alone 0.60 s), and 4 gained nothing more.
const IN_FLIGHT: usize = 3;

/// Bytes written between two requests to start writeback.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Spare buffers a store keeps for its pipes.
const POOLED: usize = 8;

/// Alignment of buffers and direct writes: the page size, which every block device's
/// logical block size divides.
const ALIGN: usize = 4096;

/// A buffer, the bytes of it to write, and the file offset they belong at.
type Job = (Buffer, usize, u64);

/// What the worker sends back: the buffer, and whether its write succeeded.
type Done = (Buffer, io::Result<()>);

/// [`BUFFER`] bytes starting at an [`ALIGN`]ed address (as direct I/O needs), or nothing.
#[derive(Default)]
pub(crate) struct Buffer {
    /// Allocated once, never grown (which would move it): `BUFFER + ALIGN` bytes, or none.
    bytes: Vec<u8>,
    /// Where the aligned part starts in `bytes`.
    start: usize,
}

impl Buffer {
    pub(crate) fn allocate() -> Buffer {
        let bytes = vec![0u8; BUFFER + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        Buffer { bytes, start }
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let len = self.bytes.len().saturating_sub(ALIGN);
        &self.bytes[self.start..self.start + len]
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.bytes.len().saturating_sub(ALIGN);
        &mut self.bytes[self.start..self.start + len]
    }
}

/// Buffers of [`BUFFER`] bytes, zeroed once when first made and reused after: a small put
/// neither allocates nor clears a buffer of its own.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Buffer>>,
}

impl BufferPool {
    fn take(&self) -> Buffer {
        self.free.lock().pop().unwrap_or_else(Buffer::allocate)
    }

    fn give(&self, buf: Buffer) {
        let mut free = self.free.lock();
        if free.len() < POOLED && buf.len() == BUFFER {
            free.push(buf);
        }
    }
}

struct Worker {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    thread: JoinHandle<()>,
    in_flight: usize,
}

/// Appends to one file through a worker thread; see the module docs.
pub(crate) struct Pipe {
    file: Arc<File>,
    path: PathBuf,
    pool: Arc<BufferPool>,
    /// Where the next byte goes: everything before it was handed over.
    end: u64,
    /// The buffer being filled (empty until the first byte), always [`BUFFER`] long...
    buf: Buffer,
    /// ...of which the first `fill` bytes were handed over but not yet given to a write.
    fill: usize,
    worker: Option<Worker>,
    /// A write that failed: every later call reports it.
    failed: Option<(io::ErrorKind, String)>,
}

impl Pipe {
    /// A pipe appending to `file` (named `path` in errors) from offset `end`.
    pub(crate) fn new(file: Arc<File>, path: PathBuf, end: u64, pool: Arc<BufferPool>) -> Pipe {
        Pipe {
            file,
            path,
            pool,
            end,
            buf: Buffer::default(),
            fill: 0,
            worker: None,
            failed: None,
        }
    }

    /// The file it writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The offset after the last byte handed over.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Bytes handed over that no write has been given yet.
    pub(crate) fn pending(&self) -> usize {
        self.fill
    }

    /// Every byte of the file when all of it is still in the buffer (the pipe started at
    /// offset 0 and has written nothing yet): a small blob, readable without the file.
    pub(crate) fn whole(&self) -> Option<&[u8]> {
        (self.worker.is_none() && self.end == self.fill as u64 && self.fill > 0)
            .then(|| &self.buf[..self.fill])
    }

    /// Whether handing over `n` more bytes would start a write.
    pub(crate) fn would_write(&self, n: usize) -> bool {
        self.fill + n >= BUFFER
    }

    /// Hands `bytes` over: they reach the file in order, by [`Pipe::flush`] at the latest.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.check()?;
        while !bytes.is_empty() {
            self.ready_buffer();
            let take = bytes.len().min(BUFFER - self.fill);
            self.buf[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
            self.fill += take;
            self.end += take as u64;
            bytes = &bytes[take..];
            if self.fill == BUFFER {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// Reads `src` to its end straight into the pipe's buffers, calling `each` with every
    /// chunk read (to hash it) before the chunk is written. Returns the bytes read. A read
    /// error is reported as reading `what`.
    pub(crate) fn read_from(
        &mut self,
        src: &mut dyn Read,
        what: &Path,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<u64> {
        self.check()?;
        let mut total = 0u64;
        loop {
            self.ready_buffer();
            let n = loop {
                match src.read(&mut self.buf[self.fill..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::from_io(e, "read", what)),
                }
            };
            if n == 0 {
                return Ok(total);
            }
            each(&self.buf[self.fill..self.fill + n]);
            self.fill += n;
            self.end += n as u64;
            total += n as u64;
            if self.fill == BUFFER {
                self.submit()?;
            }
        }
    }

    /// Puts every byte handed over into the file (not yet durably: see `File::sync_data`).
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.check()?;
        if self.fill > 0 {
            if self.worker.is_some() {
                self.submit()?;
            } else {
                let at = self.end - self.fill as u64;
                self.file
                    .write_all_at(&self.buf[..self.fill], at)
                    .map_err(|e| self.fail(e))?;
                self.fill = 0;
            }
        }
        while self.worker.as_ref().is_some_and(|w| w.in_flight > 0) {
            self.collect()?;
        }
        Ok(())
    }

    /// Forgets bytes not yet written and continues at `end` (after the file was cut there).
    /// Call [`Pipe::flush`] first.
    pub(crate) fn restart_at(&mut self, end: u64) {
        self.fill = 0;
        self.end = end;
    }

    fn ready_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = self.pool.take();
            self.fill = 0;
        }
    }

    /// Gives the current buffer to the worker (starting it), and takes a spare one back.
    fn submit(&mut self) -> Result<()> {
        if self.worker.is_none() {
            self.worker = Some(self.start_worker()?);
        }
        let at = self.end - self.fill as u64;
        let full = std::mem::take(&mut self.buf);
        let len = std::mem::take(&mut self.fill);
        let worker = self.worker.as_mut().expect("started above");
        if worker.jobs.send((full, len, at)).is_err() {
            return Err(self.fail(io::Error::other("the writer thread has stopped")));
        }
        worker.in_flight += 1;
        if worker.in_flight >= IN_FLIGHT {
            self.collect()?;
        }
        Ok(())
    }

    /// Waits for one buffer back from the worker.
    fn collect(&mut self) -> Result<()> {
        let worker = self.worker.as_mut().expect("collect needs a worker");
        let back = worker.done.recv();
        worker.in_flight -= 1;
        match back {
            Ok((b, written)) => {
                if self.buf.is_empty() {
                    self.buf = b;
                } else {
                    self.pool.give(b);
                }
                written.map_err(|e| self.fail(e))
            }
            Err(_) => Err(self.fail(io::Error::other("the writer thread has stopped"))),
        }
    }

    fn start_worker(&self) -> Result<Worker> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(IN_FLIGHT);
        let (tx, done) = crossbeam_channel::unbounded();
        let file = Arc::clone(&self.file);
        let direct = open_direct(&self.path, &self.file);
        let thread = std::thread::Builder::new()
            .name("ocistore-write".into())
            .spawn(move || write_jobs(&file, direct, &rx, &tx))
            .map_err(|e| Error::io("start a writer thread for", &self.path, e))?;
        Ok(Worker {
            jobs,
            done,
            thread,
            in_flight: 0,
        })
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((kind, msg)) => Err(Error::io(
                "write (an earlier write failed)",
                &self.path,
                io::Error::new(*kind, msg.clone()),
            )),
        }
    }

    fn fail(&mut self, e: io::Error) -> Error {
        self.failed = Some((e.kind(), e.to_string()));
        Error::io("write", &self.path, e)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            drop(w.jobs);
            let _ = w.thread.join();
            for (b, _) in w.done.try_iter() {
                self.pool.give(b);
            }
        }
        if !self.buf.is_empty() {
            self.pool.give(std::mem::take(&mut self.buf));
        }
    }
}

/// The worker: writes each buffer at its offset, sends it back, and starts writeback every
/// [`WRITEBACK_EVERY`] bytes. Stops at the first error (sent back) or when the pipe is gone.
/// Aligned buffers go through `direct` when there is one; a file system that refuses a direct
/// write (`EINVAL`) gets it, and every later one, through the page cache.
fn write_jobs(file: &File, mut direct: Option<File>, jobs: &Receiver<Job>, done: &Sender<Done>) {
    let mut unflushed_from: Option<u64> = None;
    for (buf, len, at) in jobs {
        let bytes = &buf[..len];
        let aligned = len % ALIGN == 0 && at % ALIGN as u64 == 0;
        let written = match direct.as_ref().filter(|_| aligned) {
            Some(d) => match d.write_all_at(bytes, at) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    direct = None;
                    file.write_all_at(bytes, at)
                }
                other => other,
            },
            None => {
                let written = file.write_all_at(bytes, at);
                if written.is_ok() {
                    let from = *unflushed_from.get_or_insert(at);
                    let to = at + len as u64;
                    if to - from >= WRITEBACK_EVERY {
                        start_writeback(file, from, to - from);
                        unflushed_from = Some(to);
                    }
                }
                written
            }
        };
        let failed = written.is_err();
        if done.send((buf, written)).is_err() || failed {
            return;
        }
    }
}

/// A second descriptor of the pipe's file that writes around the page cache (`O_DIRECT`), so
/// that a large blob's bytes go from our buffer to the disk with no copy into the page cache
/// and no writeback work later: that copy was a third of a pull's kernel time. `None` where
/// the file system has no direct I/O, or the path no longer names the pipe's file.
pub(crate) fn open_direct(path: &Path, file: &File) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
        let mode = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) } & libc::O_ACCMODE;
        if mode != libc::O_WRONLY && mode != libc::O_RDWR {
            return None; // never write where the pipe's own descriptor could not
        }
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        let (a, b) = (direct.metadata().ok()?, file.metadata().ok()?);
        ((a.dev(), a.ino()) == (b.dev(), b.ino())).then_some(direct)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, file);
        None
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` back to disk, without waiting.
/// Only a head start for the fsync that makes them durable: a failure changes nothing.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on an open descriptor; it reads no memory of ours.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    fn pipe_to(path: &Path, file: File) -> Pipe {
        pooled_pipe_to(path, file, &Arc::new(BufferPool::default()))
    }

    fn pooled_pipe_to(path: &Path, file: File, pool: &Arc<BufferPool>) -> Pipe {
        Pipe::new(Arc::new(file), path.to_path_buf(), 0, Arc::clone(pool))
    }

    #[test]
    fn writes_arrive_in_order_through_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut p = pipe_to(&path, File::create(&path).unwrap());
        let data = bytes(5 * BUFFER + 12345);
        // Uneven pieces, some larger than a buffer.
        for piece in data.chunks(BUFFER + 777) {
            p.write(piece).unwrap();
        }
        assert!(p.worker.is_some());
        p.flush().unwrap();
        assert_eq!(p.end(), data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn unaligned_offsets_mix_direct_and_buffered_writes_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let head = bytes(100);
        std::fs::write(&path, &head).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // Resumed at offset 100: no buffer lands aligned, so every write goes buffered...
        let pool = Arc::new(BufferPool::default());
        let mut p = Pipe::new(Arc::new(file), path.clone(), 100, Arc::clone(&pool));
        let data = bytes(3 * BUFFER + 999);
        p.write(&data).unwrap();
        p.flush().unwrap();
        drop(p);
        let mut want = head.clone();
        want.extend_from_slice(&data);
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // ...and from 0 the full buffers go direct (where the file system has it), the tail
        // through the page cache; reads see both.
        let mut p = pooled_pipe_to(&path, File::create(&path).unwrap(), &pool);
        p.write(&data).unwrap();
        p.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn reads_straight_into_buffers_and_reports_each_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut p = pipe_to(&path, File::create(&path).unwrap());
        let data = bytes(3 * BUFFER + 5);
        let mut seen = Vec::new();
        let n = p
            .read_from(&mut &data[..], Path::new("src"), &mut |c| {
                seen.extend_from_slice(c)
            })
            .unwrap();
        p.flush().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(seen, data);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn small_content_is_written_on_flush_without_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut p = pipe_to(&path, File::create(&path).unwrap());
        p.write(b"hello").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        p.flush().unwrap();
        assert!(p.worker.is_none());
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    }

    #[test]
    fn a_failed_write_is_reported_then_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails.
        let mut p = pipe_to(&path, File::open(&path).unwrap());
        let data = bytes(4 * BUFFER);
        let first = p.write(&data).and_then(|()| p.flush());
        let err = first.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let again = p.write(b"x").unwrap_err().to_string();
        assert!(again.contains("an earlier write failed"), "{again}");
        assert!(p.flush().is_err());
    }

    #[test]
    fn buffers_go_back_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let pool = Arc::new(BufferPool::default());
        {
            let mut p = pooled_pipe_to(&path, File::create(&path).unwrap(), &pool);
            p.write(&bytes(4 * BUFFER)).unwrap();
            p.flush().unwrap();
        }
        let kept = pool.free.lock().len();
        assert!((1..=POOLED).contains(&kept), "{kept}");
    }
}
