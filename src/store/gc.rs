//! Garbage collection: mark from the roots along references, sweep the rest.
//!
//! Roots: every name's target, blobs labelled `containerd.io/gc.root`, what unexpired leases
//! hold (content, names, ingests). Edges: the children a manifest or index names (the `refs`
//! table) and `containerd.io/gc.ref.content.*` labels. Marking and the removal of records
//! happen in one write transaction, so a name or lease committed concurrently is either seen
//! as a root or commits after the sweep; files go afterwards, each only if it still has no
//! record (see `Store::remove_unrecorded_files`). Also reclaimed: blob files without a record
//! (crash debris), files under `ingest/` that no ingest owns (crash debris of writers and
//! batches), and ingests that no live writer holds, no lease protects, and nobody has
//! written for `ingest_expiry`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use redb::ReadableTable;
use serde::Serialize;

use crate::digest::Digest;
use crate::edges::GC_ROOT;
use crate::error::{Error, ErrorKind, Result, db};
use crate::store::Store;
use crate::store::locks::RefLock;
use crate::store::mark::{Roots, edges, mark, mark_referrers};
use crate::store::records::{self, BlobRecord, IngestRecord};
use crate::store::schema::{BLOBS, INGESTS};

/// How to collect.
#[derive(Debug, Clone)]
pub struct Options {
    /// Report what would go, remove nothing.
    pub dry_run: bool,
    /// An ingest untouched for this long, held by no writer and no lease, is abandoned.
    pub ingest_expiry: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            ingest_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// One thing removed (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// `content`, `ingest`, `lease` (held by a process that died) or `debris` (a blob file
    /// with no record, or a file under `ingest/` that belongs to no ingest).
    pub kind: &'static str,
    /// The digest, ingest reference or file path.
    pub id: String,
    /// Bytes it took on disk (apparent size).
    pub bytes: u64,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Everything removed, content first, in digest order.
    pub removed: Vec<Removed>,
    /// Bytes freed (or that would be).
    pub bytes_freed: u64,
}

/// Files under `ingest/` younger than this are never debris: a writer or batch creates its
/// file or directory a moment before it locks it. (Blob files: see `blobs::in_flight`.)
const DEBRIS_GRACE: Duration = crate::blobs::IN_FLIGHT_GRACE;

impl Store {
    /// Collects garbage; see the module docs. Blocks other writers only while marking and
    /// removing records; durable on return.
    pub fn gc(&self, opts: &Options) -> Result<Outcome> {
        let now = SystemTime::now();
        let _removal = self.begin_removal("collect garbage")?;
        // The blob tree is listed on another thread while this one marks and sweeps: the
        // listing is mostly the kernel's time, the marking this process's. A file the sweep
        // removes meanwhile is gone when looked at; one created after its shard was listed is
        // the next collection's to look at.
        let blob_dir = self.blob_dir().clone();
        let listing = std::thread::spawn(move || blob_dir.list_shards());
        let txn = self.write_txn("collect garbage")?;
        let mut out = Outcome::default();
        let owner_locks = self.drop_dead_owners_in(&txn, &mut out)?;
        let edges = edges(&txn)?;
        let roots = Roots::read(&txn, now, &edges)?;
        let marked = mark_referrers(self, &edges, mark(&edges, roots.starts()))?;
        let blobs = txn.open_table(BLOBS).map_err(db("open the blobs table"))?;
        // Sweep records.
        let mut doomed: Vec<(String, u64)> = Vec::new();
        for entry in blobs.iter().map_err(db("walk blobs"))? {
            let (k, v) = entry.map_err(db("walk blobs"))?;
            if !marked.contains(k.value()) {
                let rec: BlobRecord = records::decode(v.value(), k.value())?;
                // A `gc.root` blob that keeps nothing else is kept here, by its own label.
                if !rec.labels.contains_key(GC_ROOT) {
                    doomed.push((k.value().to_owned(), rec.size));
                }
            }
        }
        drop(blobs);
        let mut doomed_digests = Vec::new();
        for (key, size) in doomed {
            if !opts.dry_run {
                self.remove_blob_in(&txn, &key)?;
                crate::store::edge_tables::forget(&txn, &key)?;
            }
            doomed_digests.push(Digest::parse(&key).map_err(|_| {
                Error::Corrupted(format!("blob record under malformed key {key:?}"))
            })?);
            out.bytes_freed += size;
            out.removed.push(Removed {
                kind: "content",
                id: key,
                bytes: size,
            });
        }
        let held_locks = self.abandon_ingests(&txn, opts, &roots.leased_ingests, now, &mut out)?;
        if opts.dry_run {
            txn.abort().map_err(db("end the dry run"))?;
        } else {
            txn.commit().map_err(db("commit the collection"))?;
            for lock in held_locks.iter().flatten() {
                lock.remove_file();
            }
            self.remove_unrecorded_files(&doomed_digests)?;
        }
        drop(held_locks);
        if opts.dry_run {
            drop(owner_locks);
        } else {
            crate::store::owner::remove_dead_owner_dirs(owner_locks);
        }
        // Ingest debris first: a crashed writer's leftover name on a published file goes here,
        // and the blob file it shared is then plain debris below.
        self.sweep_ingest_debris(opts, now, &mut out)?;
        // Debris: blob files nobody recorded (a crash between publish and commit). One that
        // may be a commit in flight in another process is left alone; the decision is made
        // again inside the removal's write transaction.
        let shards = listing
            .join()
            .map_err(|_| Error::Corrupted("listing the blob tree panicked".into()))??;
        let debris = self.unrecorded_blob_files(shards, now)?;
        let gone: BTreeSet<Digest> = if opts.dry_run {
            debris.iter().map(|(d, _)| *d).collect()
        } else {
            let digests: Vec<Digest> = debris.iter().map(|(d, _)| *d).collect();
            self.remove_unrecorded_files_if(&digests, true)?
                .into_iter()
                .collect()
        };
        for (d, len) in debris.into_iter().filter(|(d, _)| gone.contains(d)) {
            out.bytes_freed += len;
            out.removed.push(Removed {
                kind: "debris",
                id: self.blob_dir().path_for(&d).display().to_string(),
                bytes: len,
            });
        }
        Ok(out)
    }

    /// Drops (inside `txn`) the leases of dead processes (see `store::owner`), reporting
    /// each; returns the dead owners' locks, to be held until `txn` has ended.
    pub(crate) fn drop_dead_owners_in(
        &self,
        txn: &redb::WriteTransaction,
        out: &mut Outcome,
    ) -> Result<Vec<RefLock>> {
        let (dead, locks) = self.drop_dead_owner_leases(txn)?;
        for id in dead {
            tracing::info!(lease = %id, "dropping the lease of a process that died");
            out.removed.push(Removed {
                kind: "lease",
                id,
                bytes: 0,
            });
        }
        Ok(locks)
    }

    /// Removes (inside `txn`; a dry run only reports) the ingests that no live writer holds,
    /// no lease protects, and nobody has written for `opts.ingest_expiry`. Their locks are
    /// taken and returned, to be held until the transaction has committed.
    pub(crate) fn abandon_ingests(
        &self,
        txn: &redb::WriteTransaction,
        opts: &Options,
        leased: &BTreeSet<String>,
        now: SystemTime,
        out: &mut Outcome,
    ) -> Result<Vec<Option<RefLock>>> {
        let mut held_locks = Vec::new();
        let mut ingests = txn
            .open_table(INGESTS)
            .map_err(db("open the ingests table"))?;
        let mut candidates = Vec::new();
        for entry in ingests.iter().map_err(db("read ingests"))? {
            let (k, _) = entry.map_err(db("read ingests"))?;
            if !leased.contains(k.value()) {
                candidates.push(k.value().to_owned());
            }
        }
        for reference in candidates {
            let status = match crate::content::IngestManager::status(self, &reference) {
                Ok(s) => s,
                Err(_) => continue,
            };
            let idle = now.duration_since(status.updated_at).unwrap_or_default();
            if idle < opts.ingest_expiry {
                continue;
            }
            let path = self.ingest_data(&reference);
            // A dry run creates nothing; a real one creates a missing file to hold its
            // lock, so that no writer can take up the reference while it decides.
            let acquired = if opts.dry_run {
                RefLock::acquire_existing(&path, &reference)
            } else {
                RefLock::acquire(&path, &reference).map(Some)
            };
            match acquired {
                Ok(lock) => held_locks.push(lock),
                Err(e) if e.kind() == ErrorKind::Unavailable => continue,
                Err(e) => return Err(e),
            }
            if !opts.dry_run {
                ingests
                    .remove(reference.as_str())
                    .map_err(db("remove an ingest"))?;
            }
            out.bytes_freed += status.offset;
            out.removed.push(Removed {
                kind: "ingest",
                id: reference,
                bytes: status.offset,
            });
        }
        Ok(held_locks)
    }

    /// Files under `ingest/` that belong to no ingest: data files without a record (a writer
    /// that crashed before recording, an abort or commit that crashed before unlinking) and
    /// staging directories of batches whose process died. Each is locked before it goes, so
    /// a live writer's file is never touched.
    pub(crate) fn sweep_ingest_debris(
        &self,
        opts: &Options,
        now: SystemTime,
        out: &mut Outcome,
    ) -> Result<()> {
        let root = self.ingest_root();
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("list ingests", root, e)),
        };
        let recorded = self.recorded_ingest_ids()?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list ingests", root, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            let (lock_path, bytes) = if meta.is_dir() {
                (path.join("lock"), tree_bytes(&path))
            } else if let Some(id) = name.strip_suffix(".data") {
                if recorded.contains(id) {
                    continue;
                }
                // A name left on a committed blob's file frees nothing.
                (path.clone(), if meta.nlink() > 1 { 0 } else { meta.len() })
            } else {
                continue;
            };
            let idle = now
                .duration_since(meta.modified().unwrap_or(now))
                .unwrap_or_default();
            // A file or batch directory created this instant may not be locked yet.
            if idle < DEBRIS_GRACE {
                continue;
            }
            let lock = match RefLock::acquire_existing(&lock_path, &name) {
                Ok(lock) => lock,
                Err(e) if e.kind() == ErrorKind::Unavailable => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                // A directory without a lock file: a batch that died before taking it, or
                // one still starting; only an old one is taken for debris.
                if lock.is_none() && idle < opts.ingest_expiry {
                    continue;
                }
            } else if lock.is_none()
                // Gone meanwhile, or recorded while we looked (a writer that closed between
                // our listing and our lock).
                || self.recorded_ingest_ids()?.contains(&name[..name.len() - 5])
            {
                continue;
            }
            out.bytes_freed += bytes;
            out.removed.push(Removed {
                kind: "debris",
                id: path.display().to_string(),
                bytes,
            });
            if !opts.dry_run {
                let removed = if meta.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match removed {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove ingest debris", &path, e)),
                }
            }
            drop(lock);
        }
        Ok(())
    }

    /// The file ids every ingest record names.
    fn recorded_ingest_ids(&self) -> Result<BTreeSet<String>> {
        let txn = self.read_txn()?;
        let ingests = txn
            .open_table(INGESTS)
            .map_err(db("open the ingests table"))?;
        let mut ids = BTreeSet::new();
        for entry in ingests.iter().map_err(db("read ingests"))? {
            let (k, v) = entry.map_err(db("read ingests"))?;
            let rec: IngestRecord = records::decode(v.value(), k.value())?;
            ids.insert(rec.id);
        }
        Ok(ids)
    }
}

/// Apparent size of the files under `dir` (best effort).
fn tree_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Store {
    /// Blob files without a record, and not a commit in flight (see `blobs::in_flight`),
    /// with their lengths: crash debris. Each shard directory is read once and merged with
    /// the records of that shard, in order, on a fresh snapshot; only a file without a record
    /// is looked at (stat) further.
    fn unrecorded_blob_files(
        &self,
        shards: Vec<crate::blobs::Shard>,
        now: SystemTime,
    ) -> Result<Vec<(Digest, u64)>> {
        let snap = self.read_txn()?;
        let Some(blobs) = &snap.blobs else {
            return Err(Error::Corrupted("the blobs table is missing".into()));
        };
        let mut debris = Vec::new();
        for crate::blobs::Shard {
            alg,
            hh,
            dir,
            names,
        } in shards
        {
            let (hh, dir) = (hh.as_str(), dir.as_path());
            let consider = |name: String, debris: &mut Vec<(Digest, u64)>| {
                if !name.starts_with(hh) {
                    return; // not a blob's name here: a stray, fsck's to report
                }
                let Ok(d) = Digest::parse(&format!("{}:{name}", alg.name())) else {
                    return;
                };
                let path = dir.join(&name);
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    return; // removed since it was listed
                };
                if meta.is_file() && crate::blobs::in_flight(&path, now) == Some(false) {
                    debris.push((d, meta.len()));
                }
            };
            let prefix = format!("{}:{hh}", alg.name());
            let mut names = names.into_iter().peekable();
            for entry in blobs.range(prefix.as_str()..).map_err(db("walk blobs"))? {
                let (k, _) = entry.map_err(db("walk blobs"))?;
                // The record's hex digits after the shard's two, against each name's.
                let Some(rest) = k.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                fn tail<'n>(name: &'n str, hh: &str) -> Option<&'n str> {
                    name.strip_prefix(hh)
                }
                while let Some(name) = names.next_if(|n| tail(n, hh).is_none_or(|t| t < rest)) {
                    consider(name, &mut debris);
                }
                names.next_if(|n| tail(n, hh) == Some(rest));
                if names.peek().is_none() {
                    break;
                }
            }
            for name in names {
                consider(name, &mut debris);
            }
        }
        Ok(debris)
    }
}
