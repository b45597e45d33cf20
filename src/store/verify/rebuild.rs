//! `fsck --rebuild`: recreate `meta.redb` from the blob files.
//!
//! A rebuild replaces the metadata file itself, so it must be alone: it takes the store lock
//! (`store.lock`) exclusively, which every open holds shared, and refuses with `StoreInUse`
//! naming the processes that have the store open when they do not close it within the wait.
//! While it runs, opens in other processes wait (bounded) or fail naming the rebuild.
//!
//! The new metadata is built in `meta.redb.new` and put in place with one atomic rename, the
//! old file kept under `meta.redb.broken-<time>` (a hard link made before the rename). A
//! rebuild killed at any point leaves either the old metadata, untouched (and a
//! `meta.redb.new` that the next open reports and the next rebuild starts over), or the new
//! one. Files whose bytes do not match their name go to `quarantine/` only after the switch.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::content::Labels;
use crate::digest::{Digest, hash_reader};
use crate::error::{Error, Result};
use crate::store::records::Nanos;
use crate::store::{OpenAt, REBUILD_FILE, Store, locks};

/// How to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// How long to wait for the processes that have the store open to close it (default
    /// 10 s); after that, `StoreInUse` naming them.
    pub wait: Duration,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            wait: Duration::from_secs(10),
        }
    }
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RebuildOutcome {
    /// Where the old metadata file was kept, when there was one.
    pub old_metadata: Option<PathBuf>,
    /// Whether the old metadata could be read (its labels and names were carried over).
    pub salvaged: bool,
    /// Whether an earlier rebuild had been killed halfway (its `meta.redb.new` was discarded
    /// and this one started over).
    pub resumed_interrupted: bool,
    /// Blob files re-hashed and recorded again.
    pub blobs_recovered: u64,
    /// Blob files whose bytes did not match their name, moved to `quarantine/`.
    pub blobs_quarantined: u64,
    /// Names carried over from the old metadata.
    pub names_recovered: u64,
    /// What could not be recovered, one line each.
    pub lost: Vec<String>,
}

/// [`rebuild_with`] with the default options.
pub fn rebuild(root: &Path) -> Result<RebuildOutcome> {
    rebuild_with(root, &RebuildOptions::default())
}

/// Recreates `meta.redb` under `root` from the blob files, for when it is lost or unreadable;
/// see the module docs.
///
/// If the old file can still be read, labels and names are carried over, else they are
/// reported lost. Every blob file is re-hashed: matching ones get their records (and
/// references) back, the others go to `quarantine/`. Ingests and leases are not carried over
/// (ingest bytes stay until `gc`). Blocks up to `opts.wait` for other processes to close the
/// store, then fails with `StoreInUse` naming them; durable on return.
pub fn rebuild_with(root: &Path, opts: &RebuildOptions) -> Result<RebuildOutcome> {
    let root = root
        .canonicalize()
        .map_err(|e| Error::io("open store directory", root, e))?;
    let _alone = locks::exclusive_store_lock(&root, opts.wait)?;
    let meta = root.join("meta.redb");
    refuse_other_holders(&meta)?;
    let mut out = RebuildOutcome::default();
    let new = root.join(REBUILD_FILE);
    if new.exists() {
        fs::remove_file(&new).map_err(|e| Error::io("discard an interrupted rebuild", &new, e))?;
        out.resumed_interrupted = true;
    }
    let (mut salvage_labels, salvage_names, salvage_uses) = salvage(&root, &meta, &mut out)?;
    let store = Store::open_private(
        &root,
        &OpenAt {
            meta: REBUILD_FILE,
            read_only: false,
            wait: Duration::ZERO,
            store_lock: false,
        },
    )?;
    let scan = store.blob_dir().scan()?;
    let mut recovered = Vec::new();
    let mut mismatched = Vec::new();
    for (digest, _) in scan.blobs {
        let path = store.blob_dir().path_for(&digest);
        let mut f = fs::File::open(&path).map_err(|e| Error::io("open blob", &path, e))?;
        let (actual, len) = hash_reader(digest.algorithm(), &mut f)
            .map_err(|e| Error::io("read blob", &path, e))?;
        if actual == digest {
            let labels = salvage_labels.remove(&digest).unwrap_or_default();
            recovered.push((digest, len, labels));
        } else {
            salvage_labels.remove(&digest);
            mismatched.push(digest);
        }
    }
    for d in salvage_labels.keys() {
        out.lost.push(format!(
            "{d}: recorded in the old metadata but its file is gone"
        ));
    }
    out.blobs_recovered = recovered.len() as u64;
    store.insert_existing(&recovered)?;
    for image in salvage_names {
        match image.digest() {
            Ok(d) if store.blob_record(&d)?.is_some() => {
                store.put_image(
                    &image.name,
                    image.target.clone(),
                    Some(image.labels.clone()),
                )?;
                out.names_recovered += 1;
            }
            _ => out
                .lost
                .push(format!("name {}: its content is gone", image.name)),
        }
    }
    store.restore_uses(&salvage_uses)?;
    drop(store);
    fs::File::open(&new)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync the new metadata", &new, e))?;
    if meta.exists() {
        let aside = root.join(format!("meta.redb.broken-{}", Nanos::now().0));
        fs::hard_link(&meta, &aside).map_err(|e| Error::io("keep the old metadata", &aside, e))?;
        out.old_metadata = Some(aside);
    }
    // The switch: one rename, durable with the directory.
    fs::rename(&new, &meta).map_err(|e| Error::io("put the new metadata in place", &meta, e))?;
    crate::blobs::sync_dir(&root)?;
    // Unrecorded now: safe to move (no other process has the store open).
    let quarantine = root.join("quarantine");
    for digest in mismatched {
        let path = crate::blobs::BlobDir::new(root.join("blobs")).path_for(&digest);
        fs::create_dir_all(&quarantine)
            .map_err(|e| Error::io("create directory", &quarantine, e))?;
        let dest = quarantine.join(format!(
            "{}-{}-{}",
            digest.algorithm(),
            digest.hex(),
            Nanos::now().0
        ));
        fs::rename(&path, &dest).map_err(|e| Error::io("quarantine blob", &path, e))?;
        out.blobs_quarantined += 1;
        out.lost.push(format!(
            "{digest}: bytes do not match, moved to {}",
            dest.display()
        ));
    }
    Ok(out)
}

/// An ocistore older than the store lock (or another program) may hold `meta.redb` without
/// holding `store.lock`: refuse, naming it.
fn refuse_other_holders(meta: &Path) -> Result<()> {
    let me = std::process::id().to_string();
    let others: Vec<String> = locks::holder_pids(meta)
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| *pid != me)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::StoreInUse(format!(
        "'{}' is held by pid {} (a program that does not take store.lock); a rebuild \
         must be alone",
        meta.display(),
        others.join(", pid ")
    )))
}

type Salvaged = (
    BTreeMap<Digest, Labels>,
    Vec<crate::names::Image>,
    Vec<(crate::store::uses::Used, crate::store::uses::LastUse)>,
);

/// Labels and names from the old metadata, when it can be read. `FailedPrecondition` when it
/// is readable but of an older schema.
fn salvage(root: &Path, meta: &Path, out: &mut RebuildOutcome) -> Result<Salvaged> {
    if !meta.exists() {
        out.lost
            .push("no metadata file: every label and name is lost".into());
        return Ok(Default::default());
    }
    let old = Store::open_private(
        root,
        &OpenAt {
            meta: "meta.redb",
            read_only: true,
            wait: Duration::ZERO,
            store_lock: false,
        },
    );
    let old = match old {
        Ok(old) => old,
        // Readable, but an older schema (a read-only open cannot migrate): rebuilding now
        // would lose every name and label it holds.
        Err(e) if e.kind() == crate::error::ErrorKind::FailedPrecondition => {
            return Err(Error::FailedPrecondition(format!(
                "{e}; open the store once with this ocistore (which migrates it) and rebuild \
                 then, or move meta.redb aside to rebuild from the blob files alone"
            )));
        }
        Err(e) => {
            out.lost.push(format!(
                "old metadata unreadable ({e}): every label and name is lost"
            ));
            return Ok(Default::default());
        }
    };
    let mut infos = Vec::new();
    let walked = crate::content::Manager::walk(
        &old,
        &mut |i| {
            infos.push(i.clone());
            Ok(())
        },
        &[],
    );
    let labels = match walked {
        Ok(()) => {
            out.salvaged = true;
            infos.into_iter().map(|i| (i.digest, i.labels)).collect()
        }
        Err(e) => {
            out.lost
                .push(format!("old labels unreadable ({e}): they are lost"));
            BTreeMap::new()
        }
    };
    let names = old.images(&[]).unwrap_or_else(|e| {
        out.lost
            .push(format!("old names unreadable ({e}): they are lost"));
        Vec::new()
    });
    // Last uses are worth keeping (prune orders by them) but not worth failing for.
    let uses = old.all_uses().unwrap_or_default();
    Ok((labels, names, uses))
}
