//! The redb-backed store: metadata in `meta.redb`, bytes in `blobs/`, ingests in `ingest/`.
//!
//! # Concurrency
//!
//! One [`Store`] per process per root: [`Store::open`] hands out clones of the same store to
//! every caller in a process. Between processes, the database is opened in redb's
//! `ConcurrencyMode::MultiWriter`: any number of processes keep it open, read from their own
//! MVCC snapshots without blocking, and take turns for write transactions (redb serialises
//! them with a byte-range lock on the file and uses two-phase commit). Blob bytes are always
//! written outside any transaction. Ingest references are locked with an OS file lock on
//! their data file `ingest/<id>.data`, which the kernel releases when its holder dies.
//!
//! # Invariant: a record implies its file
//!
//! A blob file is published (hard-linked and its directory fsynced) before the transaction
//! that inserts its record, and that transaction checks the file is still there. A file is
//! only ever removed inside a write transaction that has seen no record for it. As write
//! transactions are serialised across processes, a concurrent delete can never remove the
//! file of a blob that another process is committing.

pub mod artifact;
pub mod batch;
pub(crate) mod completeness;
pub(crate) mod edge_tables;
pub mod gc;
pub(crate) mod group;
pub mod hold;
pub mod images;
mod ingest;
pub mod interchange;
pub mod lease;
pub(crate) mod locks;
pub(crate) mod manager;
pub(crate) mod mark;
pub(crate) mod migrate;
pub mod owner;
pub(crate) mod pipe;
pub mod prune;
pub(crate) mod records;
pub mod referrers;
pub(crate) mod schema;
mod snapshot;
pub mod uncompressed;
pub mod uses;
pub mod verify;
pub(crate) mod writer;

pub use writer::Sealed;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redb::{ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase};

use crate::blobs::BlobDir;
use crate::digest::Digest;
use crate::error::{Error, Result};
use records::BlobRecord;

/// How to open a store. `OpenOptions::default()` opens read-write, creating the root when it
/// is missing, and falls back to read-only when the root cannot be written.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    read_only: Option<bool>,
    wait: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: None,
            wait: Duration::from_secs(10),
        }
    }
}

impl OpenOptions {
    /// Options with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// `true`: open read-only (nothing is created or modified; mutations fail with
    /// `ReadOnly`). `false`: open read-write or fail. Unset: read-write when the root is
    /// writable, else read-only.
    pub fn read_only(&mut self, read_only: bool) -> &mut Self {
        self.read_only = Some(read_only);
        self
    }

    /// How long to keep retrying while another program holds the database exclusively or a
    /// rebuild runs (then `StoreInUse`), and, read-only, while the processes writing to the
    /// store recover a file one of them left marked for recovery (then `FailedPrecondition`);
    /// default 10 s.
    pub fn wait(&mut self, wait: Duration) -> &mut Self {
        self.wait = wait;
        self
    }

    /// Opens the store at `root`. See [`Store::open`].
    pub fn open(&self, root: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(root.as_ref(), self)
    }
}

/// A content store on local disk. `Send + Sync`; clones share one open database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    committer: group::Committer,
    generation: Option<snapshot::Generation>,
    snapshots: snapshot::SnapshotCache,
    buffers: Arc<pipe::BufferPool>,
    root: PathBuf,
    db: Db,
    blobs: BlobDir,
    ingest_root: PathBuf,
    /// A shared lock on `layout-v3.lock`, held while open read-write: it tells a migrating
    /// process which holders of `meta.redb` already use this layout (see
    /// `migrations/v003_flat_ingests.rs`).
    _layout: Option<fs::File>,
    /// A shared lock on `store.lock`, held while open: a rebuild waits for it (see
    /// `locks::STORE_LOCK`). `None` for the rebuild's own opens, which hold it exclusively.
    _store_lock: Option<fs::File>,
    /// The leftover of a rebuild that was killed before it replaced `meta.redb`.
    interrupted_rebuild: Option<PathBuf>,
    /// Uses noted and not yet written (see `uses.rs`).
    uses: Mutex<uses::Pending>,
    /// Blob files opened for reading through [`Store::reader_at`](crate::Provider::reader_at).
    blob_opens: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    /// The last handle is going: the uses still noted are written if any is due.
    fn drop(&mut self) {
        let pending = std::mem::take(&mut *self.uses.lock());
        if let Db::ReadWrite(db) = &self.db
            && let Err(e) = uses::flush_due(db, pending, self.generation.as_ref())
        {
            tracing::warn!(error = %e, "could not record last uses");
        }
    }
}

/// How long a read-only open keeps retrying a file marked for recovery when no process is
/// writing to it: the moment between one writer's close and the next one's open.
const RECOVERY_HANDOVER: Duration = Duration::from_millis(250);

/// Where a rebuild builds the new metadata before it atomically replaces `meta.redb`.
pub(crate) const REBUILD_FILE: &str = "meta.redb.new";

/// How [`Inner::open`] opens: which metadata file, and whether to take the store lock.
pub(crate) struct OpenAt<'a> {
    pub(crate) meta: &'a str,
    pub(crate) read_only: bool,
    pub(crate) wait: Duration,
    /// `false` only for a rebuild, which already holds the store lock exclusively.
    pub(crate) store_lock: bool,
}

enum Db {
    ReadWrite(Database),
    ReadOnly(ReadOnlyDatabase),
}

/// Stores open in this process, by canonical root, so that a second `open` shares the first
/// (redb's file locks are per process: two handles in one process must not coexist).
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(HashMap::new()))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .field("read_only", &self.is_read_only())
            .finish()
    }
}

impl Store {
    /// Opens the store at `root` with default [`OpenOptions`], creating it when missing.
    ///
    /// Creates `meta.redb`, `blobs/` and `ingest/` as needed and brings the schema up to date;
    /// never scans the blob tree. A store written by a newer ocistore is
    /// `IncompatibleSchema`; a database held exclusively by another program for longer than
    /// the wait is `StoreInUse`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        OpenOptions::default().open(root)
    }

    fn open_with(root: &Path, opts: &OpenOptions) -> Result<Store> {
        let want_ro = opts.read_only == Some(true);
        if !want_ro && !root.exists() {
            fs::create_dir_all(root).map_err(|e| Error::io("create store directory", root, e))?;
        }
        let canonical = root
            .canonicalize()
            .map_err(|e| Error::io("open store directory", root, e))?;
        let mut open = registry().lock();
        open.retain(|_, weak| weak.strong_count() > 0);
        if let Some(inner) = open.get(&canonical).and_then(Weak::upgrade) {
            let store = Store { inner };
            if opts.read_only == Some(false) && store.is_read_only() {
                return Err(Error::StoreInUse(format!(
                    "'{}' is already open read-only in this process",
                    canonical.display()
                )));
            }
            return Ok(store);
        }
        let read_only = match opts.read_only {
            Some(ro) => ro,
            None => looks_read_only(&canonical),
        };
        let at = |read_only| OpenAt {
            meta: "meta.redb",
            read_only,
            wait: opts.wait,
            store_lock: true,
        };
        let inner = match Inner::open(canonical.clone(), &at(read_only)) {
            // Not ours to write (another user's cache): read it.
            Err(Error::Database { source, .. })
                if opts.read_only.is_none() && !read_only && is_permission_denied(&*source) =>
            {
                Inner::open(canonical.clone(), &at(true))?
            }
            other => other?,
        };
        let inner = Arc::new(inner);
        open.insert(canonical, Arc::downgrade(&inner));
        Ok(Store { inner })
    }

    /// Opens `root` outside the per-process registry: a rebuild's own handles on the old and
    /// the new metadata file, which must not be shared with (or block) ordinary opens.
    pub(crate) fn open_private(root: &Path, at: &OpenAt<'_>) -> Result<Store> {
        Ok(Store {
            inner: Arc::new(Inner::open(root.to_path_buf(), at)?),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Whether the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        matches!(self.inner.db, Db::ReadOnly(_))
    }

    /// The blob tree.
    pub fn blob_dir(&self) -> &BlobDir {
        &self.inner.blobs
    }

    /// The metadata a rebuild killed halfway left beside `meta.redb` (`meta.redb.new`), if
    /// any. The store still runs on its old metadata, which that rebuild did not touch;
    /// `fsck --rebuild` (or [`crate::verify::rebuild`]) finishes the job, and deleting the
    /// file abandons it.
    pub fn interrupted_rebuild(&self) -> Option<&Path> {
        self.inner.interrupted_rebuild.as_deref()
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u32> {
        migrate::recorded_version(self.inner.readable())
    }

    /// A read snapshot: the current one when nothing was committed since it was taken (see
    /// `snapshot.rs`), else a new one.
    pub(crate) fn read_txn(&self) -> Result<Arc<snapshot::Snapshot>> {
        self.inner
            .snapshots
            .get(self.inner.generation.as_ref(), || {
                self.inner.readable().begin_read()
            })
            .map_err(|e| Error::db("begin a read transaction", e))
    }

    /// The database for writing, or `ReadOnly` naming `action`.
    pub(crate) fn writable(&self, action: &str) -> Result<&Database> {
        match &self.inner.db {
            Db::ReadWrite(db) => Ok(db),
            Db::ReadOnly(_) => Err(Error::ReadOnly {
                root: self.inner.root.clone(),
                action: action.to_owned(),
            }),
        }
    }

    pub(crate) fn write_txn(&self, action: &str) -> Result<WriteTxn> {
        let txn = self
            .writable(action)?
            .begin_write()
            .map_err(|e| Error::db("begin a write transaction", e))?;
        Ok(WriteTxn {
            txn,
            store: self.clone(),
        })
    }

    /// The record of `digest`, if committed.
    /// How many blob files this store (all its clones in this process) has opened for
    /// reading: instrumentation, for tests that pin which commands read documents.
    pub fn blob_files_opened(&self) -> u64 {
        self.inner
            .blob_opens
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_blob_open(&self) {
        (self.inner.blob_opens).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        lookup_blob(&*self.read_txn()?, digest)
    }

    pub(crate) fn committer(&self) -> &group::Committer {
        &self.inner.committer
    }

    /// A pipe appending to `file` from `end`, drawing on this store's buffers.
    pub(crate) fn pipe(&self, file: Arc<std::fs::File>, path: PathBuf, end: u64) -> pipe::Pipe {
        pipe::Pipe::new(file, path, end, Arc::clone(&self.inner.buffers))
    }

    pub(crate) fn ingest_root(&self) -> &Path {
        &self.inner.ingest_root
    }
}

/// The record of `digest` in `snap`, or `None` when it is not committed.
pub(crate) fn lookup_blob(
    snap: &snapshot::Snapshot,
    digest: &Digest,
) -> Result<Option<BlobRecord>> {
    let Some(table) = &snap.blobs else {
        return Err(Error::Corrupted("the blobs table is missing".into()));
    };
    let key = digest.as_str();
    match table
        .get(key)
        .map_err(|e| Error::db("read a blob record", e))?
    {
        Some(v) => Ok(Some(records::decode(v.value(), key)?)),
        None => Ok(None),
    }
}

/// A write transaction whose commit also bumps the store's commit counter, so that readers
/// in every process stop reusing older snapshots. Derefs to redb's transaction.
pub(crate) struct WriteTxn {
    txn: redb::WriteTransaction,
    store: Store,
}

impl std::ops::Deref for WriteTxn {
    type Target = redb::WriteTransaction;
    fn deref(&self) -> &redb::WriteTransaction {
        &self.txn
    }
}

impl WriteTxn {
    /// Commits (durably), then bumps the commit counter.
    pub(crate) fn commit(self) -> std::result::Result<(), redb::CommitError> {
        self.txn.commit()?;
        if let Some(g) = &self.store.inner.generation {
            g.bump();
        }
        self.store.inner.snapshots.clear();
        Ok(())
    }

    /// Abandons the transaction.
    pub(crate) fn abort(self) -> std::result::Result<(), redb::StorageError> {
        self.txn.abort()
    }
}

/// Whether a process holds the store at `root` open for writing (each holds the layout lock).
fn writers_live(root: &Path) -> bool {
    locks::holder_pids(&root.join(locks::LAYOUT_LOCK)).is_some_and(|pids| !pids.is_empty())
}

impl Inner {
    pub(crate) fn open(root: PathBuf, at: &OpenAt<'_>) -> Result<Inner> {
        let (read_only, wait) = (at.read_only, at.wait);
        let meta = root.join(at.meta);
        let blobs = root.join("blobs");
        let ingest_root = root.join("ingest");
        // First of all: no open while a rebuild replaces meta.redb (it waits, bounded).
        let store_lock = if at.store_lock {
            locks::hold_store_lock(&root, wait)?
        } else {
            None
        };
        let leftover = root.join(REBUILD_FILE);
        let interrupted_rebuild = (at.store_lock && leftover.exists()).then_some(leftover);
        if let Some(new) = &interrupted_rebuild
            && !meta.exists()
        {
            return Err(Error::FailedPrecondition(format!(
                "store '{}' has no meta.redb: a rebuild was killed before it put its new \
                 metadata ({}) in place; run `ocistore fsck --rebuild` to finish it",
                root.display(),
                new.display()
            )));
        }
        // Taken before the database, so that a process migrating meanwhile counts us as
        // current. A root we cannot write fails below, at the database, with its own error.
        let layout = if read_only {
            None
        } else {
            locks::hold_layout_lock(&root).ok()
        };
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
        let opened_at = Instant::now();
        let deadline = opened_at + wait;
        let db = loop {
            let attempt = if read_only {
                if !meta.exists() {
                    return Err(Error::NotFound(format!(
                        "store '{}' (no meta.redb; a read-only open creates nothing)",
                        root.display()
                    )));
                }
                builder.open_read_only(&meta).map(Db::ReadOnly)
            } else {
                builder.create(&meta).map(Db::ReadWrite)
            };
            match attempt {
                // A new store another process is creating: meta.redb is there, its schema not
                // yet (the creator commits it next). Wait for it, as for its recovery below.
                Ok(Db::ReadOnly(db)) if migrate::recorded_version(&db)? == 0 => {
                    drop(db);
                    if writers_live(&root) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    return Err(Error::FailedPrecondition(format!(
                        "store '{}' is not yet created: its meta.redb has no schema (another \
                         process is creating it, or was killed doing so); any command that \
                         writes to the store finishes it",
                        root.display()
                    )));
                }
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    let holder = locks::lock_holders(&meta)
                        .map(|pids| format!("process {pids}"))
                        .unwrap_or_else(|| "another program".to_owned());
                    return Err(Error::StoreInUse(format!(
                        "'{}' is held exclusively by {holder} (waited {:?})",
                        meta.display(),
                        wait,
                    )));
                }
                // A read-only open finds the file marked for recovery, which only a writing
                // open performs, when a writer crashed, and for moments while other processes
                // open and close it for writing (a closing writer that cannot take redb's
                // writer lock skips its clean shutdown and leaves it to the others). While a
                // writer is live, wait for it; with none, say what would recover the file.
                Err(redb::DatabaseError::RepairAborted) if read_only => {
                    let writers = writers_live(&root);
                    // A hand-over between writer processes can show no live writer for a
                    // moment: a short grace even then.
                    let handing_over = opened_at.elapsed() < RECOVERY_HANDOVER;
                    if (writers || handing_over) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    return Err(Error::FailedPrecondition(format!(
                        "'{}' needs recovery (a process writing to it crashed or was killed, \
                         or closed while another was opening it){}; a read-only open cannot \
                         recover it: any command that writes to the store does, e.g. \
                         `ocistore --root {} fsck --repair`",
                        meta.display(),
                        if writers {
                            format!(
                                " and the processes writing to it did not recover it within {wait:?}"
                            )
                        } else {
                            String::new()
                        },
                        root.display(),
                    )));
                }
                Err(e) => return Err(Error::db("open meta.redb", e)),
            }
        };
        match &db {
            Db::ReadWrite(db) => {
                let mut created = false;
                for dir in [&blobs, &ingest_root] {
                    if !dir.is_dir() {
                        fs::create_dir_all(dir)
                            .map_err(|e| Error::io("create directory", dir, e))?;
                        created = true;
                    }
                }
                if created {
                    // The new names (and meta.redb's) durable before anything is put in them.
                    crate::blobs::sync_dir(&root)?;
                }
                migrate::migrate(db, &blobs)?;
            }
            Db::ReadOnly(db) => {
                let found = migrate::recorded_version(db)?;
                migrate::check_supported(found)?;
                if found < schema::SCHEMA_VERSION {
                    return Err(Error::FailedPrecondition(format!(
                        "store '{}' has schema version {found} and needs migrating to {}, \
                         which a read-only open cannot do",
                        root.display(),
                        schema::SCHEMA_VERSION
                    )));
                }
            }
        }
        let generation = snapshot::Generation::open(&root, matches!(db, Db::ReadWrite(_)));
        Ok(Inner {
            committer: group::Committer::default(),
            generation,
            snapshots: snapshot::SnapshotCache::default(),
            buffers: Arc::default(),
            blobs: BlobDir::new(blobs),
            ingest_root,
            root,
            db,
            _layout: layout,
            _store_lock: store_lock,
            interrupted_rebuild,
            uses: Mutex::default(),
            blob_opens: Default::default(),
        })
    }

    fn readable(&self) -> &dyn ReadableDatabase {
        match &self.db {
            Db::ReadWrite(db) => db,
            Db::ReadOnly(db) => db,
        }
    }
}

/// Whether the root is marked read-only: no write permission bit on the directory or on
/// `meta.redb`. The bits are honoured even for root, who could write anyway: `chmod -R a-w`
/// is how a user says "do not touch this cache".
fn is_permission_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::PermissionDenied;
        }
        if e.to_string().contains("Permission denied") {
            return true;
        }
        cur = e.source();
    }
    false
}

fn looks_read_only(dir: &Path) -> bool {
    let ro = |p: &Path| fs::metadata(p).is_ok_and(|m| m.permissions().readonly());
    ro(dir) || ro(&dir.join("meta.redb"))
}
