//! Prune: keep the store inside a budget by removing what was used least recently.
//!
//! The budget is blob usage (the bytes of committed blobs, what `du` counts under `blobs/`)
//! at most `max_used`, and at least `min_free` bytes available on the store's file system.
//! Inside one write transaction, prune
//!
//! 1. removes abandoned ingests (no writer holds them, no lease, untouched for
//!    `ingest_expiry`: cancelled pulls, dead writers), whatever the budget;
//! 2. while over budget, removes unnamed content (what gc would take) least recently used
//!    first: the blobs a read-through cache fetched, the layers of images removed earlier;
//! 3. while still over budget, removes images (their names) least recently used first, each
//!    together with the content only it kept; names that point at the same manifest go
//!    together, since removing one alone frees nothing.
//!
//! It never removes leased content or names, `containerd.io/gc.root` blobs (or anything
//! they reach), live ingests, images labelled `ocistore.pin`, images not matched by the
//! filters, or images and unnamed blobs used within `keep_duration`. When the budget cannot
//! be reached it stops there and reports what stood in the way ([`Outcome::held`]).
//!
//! Why unnamed content before any image (the issue asked for images first): unnamed content
//! is what gc removes anyway, and a budget that its removal meets should not cost a user an
//! image. Within that, least recently used first keeps a read-through cache's hot blobs.
//!
//! Decisions and removals happen in one write transaction (a dry run aborts it), so a pull
//! or import committing concurrently is either seen (its name is a root, the blobs it found
//! present are leased by its batch) or commits after the prune. Last use: see
//! [`crate::store::uses`]; an item with no recorded use counts as used when its record was
//! last written (a recorded use, older or not, wins: labelling an image is no use of it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use redb::ReadableTable;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::filter;
use crate::gc::{self, Removed};
use crate::query::ImageFields;
use crate::store::Store;
use crate::store::mark::{self, Roots, mark};
use crate::store::records::{self, BlobRecord, Nanos};
use crate::store::schema::{BLOBS, NAMES, USES};
use crate::store::uses::{self, forget_in};

/// The label that keeps an image from prune, whatever its value.
pub const PIN_LABEL: &str = "ocistore.pin";

/// What to prune to.
#[derive(Debug, Clone)]
pub struct Options {
    /// Blob usage to get down to, in bytes.
    pub max_used: Option<u64>,
    /// Bytes to leave available on the store's file system.
    pub min_free: Option<u64>,
    /// Images and unnamed blobs used within this long are kept.
    pub keep_duration: Option<Duration>,
    /// Only images matching any of these filters (containerd's language; fields `name`,
    /// `target.digest`, `target.mediatype`, `labels.<key>`) may be removed.
    pub filters: Vec<String>,
    /// Report what a real run would remove, remove nothing.
    pub dry_run: bool,
    /// Ingests that no writer holds, no lease protects, and nobody wrote for this long go.
    pub ingest_expiry: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_used: None,
            min_free: None,
            keep_duration: None,
            filters: Vec::new(),
            dry_run: false,
            ingest_expiry: Duration::from_secs(3600),
        }
    }
}

/// Something prune kept that stood in the way of the budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    /// An image name, or a kind of content.
    pub what: String,
    /// Why it stays: `pinned`, `recently used`, `not matched by the filters`, `leased`,
    /// `leased or gc.root`.
    pub why: &'static str,
    /// Bytes of the blobs it keeps (shared blobs count for each holder).
    pub bytes: u64,
}

/// What a prune did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Images removed, least recently used first.
    pub removed_images: Vec<String>,
    /// Blobs removed.
    pub removed_blobs: u64,
    /// Bytes freed: blobs, ingests, and the staging of processes that died.
    pub bytes_freed: u64,
    /// Blob usage before, in bytes.
    pub used_before: u64,
    /// Blob usage after, in bytes.
    pub used_after: u64,
    /// Bytes available on the file system before.
    pub free_before: u64,
    /// Whether the budget holds after the run.
    pub budget_reached: bool,
    /// When it does not: what stood in the way.
    pub held: Vec<Held>,
    /// Every blob and ingest removed, in removal order.
    pub removed: Vec<Removed>,
}

/// A blob as prune sees it.
struct Blob {
    size: u64,
    last_used: Nanos,
    /// Labelled `containerd.io/gc.root`: never taken.
    pinned: bool,
}

impl Store {
    /// Prunes the store; see the module docs. Durable on return.
    ///
    /// `InvalidArgument` when no budget and no keep duration is given (that would remove
    /// every image) or a filter does not parse.
    pub fn prune(&self, opts: &Options) -> Result<Outcome> {
        if opts.max_used.is_none() && opts.min_free.is_none() && opts.keep_duration.is_none() {
            return Err(Error::InvalidArgument(
                "prune needs a budget or an age: --max-used, --min-free or --keep-duration".into(),
            ));
        }
        let filter = filter::parse_all(&opts.filters)?;
        let now = SystemTime::now();
        let recent = |t: Nanos| {
            opts.keep_duration
                .is_some_and(|keep| now.duration_since(t.into()).unwrap_or_default() < keep)
        };
        let _removal = self.begin_removal("prune")?;
        let txn = self.write_txn("prune")?;
        // This process's own reads count: written in this transaction.
        let wrote_uses = self.write_uses_in(&txn, &[], Nanos::from(now))?;
        let mut out = Outcome {
            free_before: available_bytes(self.root())?,
            ..Outcome::default()
        };
        let gc_opts = gc::Options {
            dry_run: opts.dry_run,
            ingest_expiry: opts.ingest_expiry,
        };
        let mut dropped = gc::Outcome::default();
        let owner_locks = self.drop_dead_owners_in(&txn, &mut dropped)?;
        let Graph {
            blobs,
            mut children,
            loose_pinned,
        } = load_graph(self, &txn, !wrote_uses)?;
        mark::turn_subject_edges(self, &mut children)?;
        let roots = Roots::read(&txn, now, &children)?;
        let held_locks =
            self.abandon_ingests(&txn, &gc_opts, &roots.leased_ingests, now, &mut dropped)?;
        let ingest_bytes = dropped.bytes_freed;
        out.bytes_freed += ingest_bytes;
        out.removed.extend(dropped.removed);

        let image_uses = {
            let table = txn
                .open_table(USES)
                .map_err(|e| Error::db("open the uses table", e))?;
            uses::all_in(&table, "image")?
        };
        out.used_before = blobs.values().map(|b| b.size).sum::<u64>() + loose_pinned;
        let mut used = out.used_before;
        let free_before = out.free_before;
        let over = |used: u64, freed: u64| {
            let free = free_before.saturating_add(freed);
            let budgeted = opts.max_used.is_some() || opts.min_free.is_some();
            !budgeted
                || opts.max_used.is_some_and(|m| used > m)
                || opts.min_free.is_some_and(|m| free < m)
        };

        // Images, grouped by target; a group is held when any of its names is.
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut held_images: Vec<(String, &'static str, String)> = Vec::new();
        for (name, root) in &roots.names {
            let image = crate::store::images::image_of(name, root.record.clone())?;
            let used = image_uses.get(name).map(|u| Nanos::from(u.at));
            let last_used = used.unwrap_or(root.record.updated);
            let why = if roots.leased_names.contains(name) {
                Some("leased")
            } else if root.record.labels.contains_key(PIN_LABEL) {
                Some("pinned")
            } else if recent(last_used) {
                Some("recently used")
            } else if !filter.matches(&ImageFields(&image)) {
                Some("not matched by the filters")
            } else {
                None
            };
            let g = groups.entry(root.target.clone()).or_insert_with(|| Group {
                names: Vec::new(),
                last_used,
                held: None,
            });
            g.names.push(name.clone());
            g.last_used = g.last_used.max(last_used);
            if let Some(why) = why {
                g.held.get_or_insert(why);
                held_images.push((name.clone(), why, root.target.clone()));
            }
        }
        let held_roots: Vec<&str> = (roots.fixed.iter().map(String::as_str))
            .chain(
                groups
                    .iter()
                    .filter(|(_, g)| g.held.is_some())
                    .map(|(t, _)| t.as_str()),
            )
            .collect();
        let mut candidates: Vec<(Nanos, String)> = groups
            .iter()
            .filter(|(_, g)| g.held.is_none())
            .map(|(t, g)| (g.last_used, t.clone()))
            .collect();
        candidates.sort();
        let mut live_targets: BTreeSet<String> = groups.keys().cloned().collect();

        let mut doomed: Vec<String> = Vec::new();
        let mut removed_names: Vec<String> = Vec::new();
        let mut freed = ingest_bytes;
        // Unnamed content first, then images, least recently used first.
        // Each blob is taken once at most: unnamed content is reached by no image, and an
        // image's content goes when the last image reaching it does.
        let mut take =
            |digests: Vec<(String, u64)>, used: &mut u64, freed: &mut u64, out: &mut Outcome| {
                for (d, size) in digests {
                    *used -= size;
                    *freed += size;
                    out.bytes_freed += size;
                    out.removed_blobs += 1;
                    out.removed.push(Removed {
                        kind: "content",
                        id: d.clone(),
                        bytes: size,
                    });
                    doomed.push(d);
                }
            };
        // What the held roots reach is never taken. Each candidate image reaches the rest of
        // its content; a blob goes once no live candidate reaches it (a count per blob of the
        // candidates that reach it), so each image's content is walked once, not the whole
        // graph again for every image taken.
        let held_marked = mark(&children, held_roots.iter().copied());
        let mut reach: FxHashMap<String, Vec<String>> = FxHashMap::default();
        let mut reached_by: FxHashMap<String, u32> = FxHashMap::default();
        for target in groups.keys() {
            let own: Vec<String> = mark(&children, [target.as_str()])
                .into_iter()
                .filter(|d| !held_marked.contains(d) && blobs.get(*d).is_some_and(|b| !b.pinned))
                .map(str::to_owned)
                .collect();
            for d in &own {
                *reached_by.entry(d.clone()).or_default() += 1;
            }
            reach.insert(target.clone(), own);
        }
        let by_last_use = |v: Vec<String>, blobs: &Blobs| {
            let mut keyed: Vec<(Nanos, String, u64)> = v
                .into_iter()
                .filter_map(|d| {
                    let b = blobs.get(&d)?;
                    (!recent(b.last_used)).then_some((b.last_used, d, b.size))
                })
                .collect();
            keyed.sort_unstable();
            keyed
                .into_iter()
                .map(|(_, d, size)| (d, size))
                .collect::<Vec<_>>()
        };
        let unnamed: Vec<String> = (blobs.iter())
            .filter(|(d, b)| {
                !b.pinned && !held_marked.contains(d.as_str()) && !reached_by.contains_key(*d)
            })
            .map(|(d, _)| d)
            .cloned()
            .collect();
        for d in by_last_use(unnamed, &blobs) {
            if !over(used, freed) {
                break;
            }
            take(vec![d], &mut used, &mut freed, &mut out);
        }
        for (_, target) in candidates {
            if !over(used, freed) {
                break;
            }
            live_targets.remove(&target);
            let group = &groups[&target];
            removed_names.extend(group.names.iter().cloned());
            out.removed_images.extend(group.names.iter().cloned());
            let mut garbage = Vec::new();
            for d in reach.remove(&target).unwrap_or_default() {
                let n = reached_by.get_mut(&d).expect("counted above");
                *n -= 1;
                if *n == 0 {
                    garbage.push(d);
                }
            }
            let garbage = by_last_use(garbage, &blobs);
            take(garbage, &mut used, &mut freed, &mut out);
        }
        out.used_after = used;
        out.budget_reached =
            !(opts.max_used.is_some() || opts.min_free.is_some()) || !over(used, freed);
        if !out.budget_reached {
            let size_of = |starts: Vec<&str>| -> u64 {
                mark(&children, starts)
                    .iter()
                    .filter_map(|d| blobs.get(*d))
                    .map(|b| b.size)
                    .sum()
            };
            for (name, why, target) in &held_images {
                out.held.push(Held {
                    what: format!("image {name}"),
                    why,
                    bytes: size_of(vec![target.as_str()]),
                });
            }
            let fixed_reach = mark(&children, roots.fixed.iter().map(String::as_str));
            let fixed = (fixed_reach
                .iter()
                .filter_map(|d| blobs.get(*d))
                .map(|b| b.size))
            .chain(
                (blobs.iter())
                    .filter(|(d, b)| b.pinned && !fixed_reach.contains(d.as_str()))
                    .map(|(_, b)| b.size),
            )
            .sum::<u64>()
                + loose_pinned;
            if fixed > 0 {
                out.held.push(Held {
                    what: "content".into(),
                    why: "leased or gc.root",
                    bytes: fixed,
                });
            }
            let recent_unnamed: u64 = {
                let taken: FxHashSet<&str> = doomed.iter().map(String::as_str).collect();
                let marked = mark(
                    &children,
                    (held_roots.iter().copied()).chain(live_targets.iter().map(String::as_str)),
                );
                blobs
                    .iter()
                    .filter(|(d, b)| {
                        !b.pinned && !marked.contains(d.as_str()) && !taken.contains(d.as_str())
                    })
                    .map(|(_, b)| b.size)
                    .sum()
            };
            if recent_unnamed > 0 {
                out.held.push(Held {
                    what: "unnamed content".into(),
                    why: "recently used",
                    bytes: recent_unnamed,
                });
            }
        }

        if opts.dry_run {
            txn.abort().map_err(|e| Error::db("end the dry run", e))?;
            return Ok(out);
        }
        {
            let mut names = txn
                .open_table(NAMES)
                .map_err(|e| Error::db("open the names table", e))?;
            for n in &removed_names {
                names
                    .remove(n.as_str())
                    .map_err(|e| Error::db("remove a name", e))?;
            }
        }
        for n in &removed_names {
            forget_in(&txn, "image", n)?;
        }
        let mut digests = Vec::with_capacity(doomed.len());
        for key in &doomed {
            self.remove_blob_in(&txn, key)?;
            crate::store::edge_tables::forget(&txn, key)?;
            digests.push(Digest::parse(key).map_err(|_| {
                Error::Corrupted(format!("blob record under malformed key {key:?}"))
            })?);
        }
        txn.commit().map_err(|e| Error::db("commit the prune", e))?;
        for lock in held_locks.iter().flatten() {
            lock.remove_file();
        }
        drop(held_locks);
        crate::store::owner::remove_dead_owner_dirs(owner_locks);
        self.remove_unrecorded_files(&digests)?;
        // Staging directories of processes that died (their leases went above).
        let mut debris = gc::Outcome::default();
        self.sweep_ingest_debris(&gc_opts, now, &mut debris)?;
        out.bytes_freed += debris.bytes_freed;
        out.removed.extend(debris.removed);
        Ok(out)
    }
}

/// Names pointing at one target.
struct Group {
    names: Vec<String>,
    last_used: Nanos,
    held: Option<&'static str>,
}

type Children = mark::Edges;

/// Every blob, by digest.
type Blobs = FxHashMap<String, Blob>;

/// What prune reads of the store's content.
struct Graph {
    /// Every blob that prune might take or must weigh, with its size and last use (its
    /// recorded use, else its last update).
    blobs: Blobs,
    /// Every edge (references and `gc.ref.content` labels).
    children: Children,
    /// Bytes of the `gc.root` blobs that no edge touches: never taken, never part of an
    /// image, so only counted, not kept in memory.
    loose_pinned: u64,
}

/// Reads the graph (see [`Graph`]). The blob records and the content uses come in one key
/// order and are merged. With `uses_on_the_side`, the uses are read on a second thread from
/// a read snapshot, while this one reads the records: the write transaction changed no use
/// (nothing this process noted was pending), and no other process commits while it is
/// open, so the snapshot holds the same uses.
fn load_graph(
    store: &Store,
    txn: &redb::WriteTransaction,
    uses_on_the_side: bool,
) -> Result<Graph> {
    fn read<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
        Error::db("read the blobs for prune", e)
    }
    fn content_uses(
        table: &impl ReadableTable<(&'static str, &'static str), (u64, u64)>,
    ) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in table.range(("content", "")..).map_err(read)? {
            let (k, v) = entry.map_err(read)?;
            let (kind, id) = k.value();
            if kind != "content" {
                break;
            }
            out.push((id.to_owned(), v.value().0));
        }
        Ok(out)
    }
    // A new read transaction, not the reusable snapshot: it must see every commit before
    // this prune's write transaction began.
    let snap = if uses_on_the_side {
        let db = store.writable("prune")?;
        Some(
            redb::ReadableDatabase::begin_read(db)
                .map_err(|e| Error::db("begin a read transaction", e))?,
        )
    } else {
        None
    };
    std::thread::scope(|scope| {
        let on_the_side = snap.as_ref().map(|snap| {
            scope.spawn(move || -> Result<Vec<(String, u64)>> {
                match snap.open_table(USES) {
                    Ok(table) => content_uses(&table),
                    Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
                    Err(e) => Err(read(e)),
                }
            })
        });
        let children = mark::edges(txn)?;
        let named: FxHashSet<&str> = (children.values().flatten().map(String::as_str))
            .chain(children.keys().map(String::as_str))
            .collect();
        let mut records: Vec<(String, Blob)> = Vec::new();
        let mut loose_pinned = 0u64;
        let table = txn.open_table(BLOBS).map_err(read)?;
        for entry in table.iter().map_err(read)? {
            let (k, v) = entry.map_err(read)?;
            let key = k.value();
            let rec: BlobRecord = records::decode(v.value(), key)?;
            let pinned = rec.labels.contains_key(crate::edges::GC_ROOT);
            if pinned && !named.contains(key) {
                loose_pinned += rec.size;
                continue;
            }
            let blob = Blob {
                size: rec.size,
                last_used: rec.updated,
                pinned,
            };
            records.push((key.to_owned(), blob));
        }
        drop(named);
        let uses = match on_the_side {
            Some(handle) => handle
                .join()
                .map_err(|_| Error::Corrupted("reading last uses panicked".into()))??,
            None => content_uses(&txn.open_table(USES).map_err(read)?)?,
        };
        // Both in key order: a use overrides its blob's last update.
        let mut uses = uses.into_iter().peekable();
        let mut blobs = Blobs::default();
        blobs.reserve(records.len());
        for (key, mut blob) in records {
            while let Some((id, ns)) = uses.next_if(|(id, _)| *id <= key) {
                if id == key {
                    blob.last_used = Nanos(ns);
                }
            }
            blobs.insert(key, blob);
        }
        Ok(Graph {
            blobs,
            children,
            loose_pinned,
        })
    })
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub(crate) fn available_bytes(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {path:?} holds a NUL byte")))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points at writable memory of the
    // right type, which statvfs fills on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::io(
            "measure free space",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
