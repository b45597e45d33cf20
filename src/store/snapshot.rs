//! Read snapshots shared between calls while nothing has been committed.
//!
//! Starting a redb read transaction in multi-process mode takes file locks (a few system
//! calls), which would dominate point queries such as `info`. Every commit made through a
//! store bumps a counter in `<root>/meta.gen`, a small file that every process maps into
//! memory; a read reuses the last snapshot while the counter is unchanged (and for at most
//! [`MAX_AGE`]), else starts a new one. A commit bumps the counter before it returns, so a
//! read that starts after any commit has returned — in any process — sees it. The age limit
//! bounds what a writer that died between its commit and its bump could hide.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redb::{ReadOnlyTable, ReadTransaction};

/// The longest a snapshot is reused.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(50);

/// The commit counter shared by every process that has the store open.
pub(crate) struct Generation {
    map: memmap2::MmapRaw,
}

impl Generation {
    /// Maps `<root>/meta.gen`, creating it when `create`; `None` when it cannot be had (a
    /// read-only root without the file): then every read takes a fresh snapshot.
    pub(crate) fn open(root: &Path, create: bool) -> Option<Generation> {
        let path = root.join("meta.gen");
        let file = OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(false)
            .open(&path)
            .ok()?;
        if create && file.metadata().ok()?.len() < 8 {
            file.set_len(8).ok()?;
        }
        let map = if create {
            memmap2::MmapOptions::new().len(8).map_raw(&file).ok()?
        } else {
            memmap2::MmapOptions::new()
                .len(8)
                .map_raw_read_only(&file)
                .ok()?
        };
        Some(Generation { map })
    }

    fn counter(&self) -> &AtomicU64 {
        // A mapping is page-aligned, so its first 8 bytes are aligned for an AtomicU64, and
        // the mapping lives as long as `self`.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64) }
    }

    pub(crate) fn load(&self) -> u64 {
        self.counter().load(Ordering::SeqCst)
    }

    pub(crate) fn bump(&self) {
        self.counter().fetch_add(1, Ordering::SeqCst);
    }
}

/// A read transaction with the `blobs` table already open (point queries need nothing else).
pub(crate) struct Snapshot {
    txn: ReadTransaction,
    /// `None` in a database that has no `blobs` table yet.
    pub(crate) blobs: Option<ReadOnlyTable<&'static str, &'static [u8]>>,
}

impl Snapshot {
    pub(crate) fn new(txn: ReadTransaction) -> Snapshot {
        let blobs = txn.open_table(crate::store::schema::BLOBS).ok();
        Snapshot { txn, blobs }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = ReadTransaction;
    fn deref(&self) -> &ReadTransaction {
        &self.txn
    }
}

/// Monotonic time at the kernel tick's resolution (a few milliseconds), which is all the age
/// limit needs: reading it costs a few nanoseconds, a tenth of the precise clock, and it is
/// read on every point query.
fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every Linux
    // since 2.6.32. On failure `ts` stays zero, which only makes the cached snapshot look older.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The reusable snapshot of one store: the counter it was taken at, when it stops being
/// reused, and the snapshot.
#[derive(Default)]
pub(crate) struct SnapshotCache {
    cached: Mutex<Option<(u64, Duration, Arc<Snapshot>)>>,
}

impl SnapshotCache {
    /// The cached snapshot if it is still current, else `fresh()`'s, cached.
    pub(crate) fn get<E>(
        &self,
        generation: Option<&Generation>,
        fresh: impl FnOnce() -> Result<ReadTransaction, E>,
    ) -> Result<Arc<Snapshot>, E> {
        let Some(g) = generation else {
            return fresh().map(|t| Arc::new(Snapshot::new(t)));
        };
        let now = g.load();
        if let Some((seen, until, txn)) = &*self.cached.lock()
            && *seen == now
            && coarse_now() < *until
        {
            return Ok(txn.clone());
        }
        let txn = Arc::new(Snapshot::new(fresh()?));
        *self.cached.lock() = Some((now, coarse_now() + MAX_AGE, txn.clone()));
        Ok(txn)
    }

    /// Forgets the snapshot (after this process commits, so that it is released early).
    pub(crate) fn clear(&self) {
        *self.cached.lock() = None;
    }
}
