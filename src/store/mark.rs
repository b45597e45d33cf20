//! What gc, prune and containerd's release keep: the roots (names, leases, pins, gc.root
//! labels, live ingests), the edges between blobs, and marking from the roots through
//! them and to the referrers of what is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use redb::ReadableTable;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::digest::Digest;
use crate::edges::{GC_REF_CONTENT_PREFIX, GC_ROOT};
use crate::error::{Error, Result, db};
use crate::store::Store;
use crate::store::records::{self, LeaseRecord, NameRecord};
use crate::store::schema::{BLOB_LABELS, LEASE_RESOURCES, LEASES, NAMES, REFS};

/// A name as gc and prune see it.
#[derive(Debug, Clone)]
pub(crate) struct NameRoot {
    /// The digest the name points at.
    pub target: String,
    /// The name's record.
    pub record: NameRecord,
}

/// The roots of a collection, read inside its write transaction.
#[derive(Debug, Default)]
pub(crate) struct Roots {
    /// Every name, by name.
    pub names: BTreeMap<String, NameRoot>,
    /// Roots other than names: leased content, targets of leased names, and the `gc.root`
    /// blobs that keep other blobs (a `gc.root` blob without edges keeps only itself: the
    /// sweep keeps it by its label, so that a store of a million pinned records does not
    /// hold a million roots in memory).
    pub fixed: rustc_hash::FxHashSet<String>,
    /// Names a lease holds.
    pub leased_names: BTreeSet<String>,
    /// Ingests a lease holds.
    pub leased_ingests: BTreeSet<String>,
}

impl Roots {
    /// Reads every root visible to `txn`; leases expired at `now` hold nothing. `edges` tells
    /// which `gc.root` blobs keep others (see [`Roots::fixed`]).
    pub(crate) fn read(
        txn: &redb::WriteTransaction,
        now: SystemTime,
        edges: &Edges,
    ) -> Result<Roots> {
        Roots::read_except(txn, now, edges, None)
    }

    /// Where gc's marking starts: the fixed roots and every name's target.
    pub(crate) fn starts(&self) -> impl Iterator<Item = &str> {
        (self.fixed.iter().map(String::as_str))
            .chain(self.names.values().map(|n| n.target.as_str()))
    }

    /// [`Roots::read`] as if lease `except` did not exist.
    pub(crate) fn read_except(
        txn: &redb::WriteTransaction,
        now: SystemTime,
        edges: &Edges,
        except: Option<&str>,
    ) -> Result<Roots> {
        let mut roots = Roots::default();
        let names = txn.open_table(NAMES).map_err(db("open the names table"))?;
        for entry in names.iter().map_err(db("read names"))? {
            let (k, v) = entry.map_err(db("read names"))?;
            let record: NameRecord = records::decode(v.value(), k.value())?;
            let target: oci_spec::image::Descriptor = serde_json::from_str(&record.target)
                .map_err(|e| Error::Corrupted(format!("name {}: {e}", k.value())))?;
            roots.names.insert(
                k.value().to_owned(),
                NameRoot {
                    target: target.digest().to_string(),
                    record,
                },
            );
        }
        let index = txn
            .open_table(BLOB_LABELS)
            .map_err(db("open the label index"))?;
        for entry in index
            .range((GC_ROOT, "", "")..)
            .map_err(db("read the label index"))?
        {
            let (k, _) = entry.map_err(db("read the label index"))?;
            let (key, _, digest) = k.value();
            if key != GC_ROOT {
                break;
            }
            if edges.contains_key(digest) {
                roots.fixed.insert(digest.to_owned());
            }
        }
        let leases = txn
            .open_table(LEASES)
            .map_err(db("open the leases table"))?;
        let resources = txn
            .open_table(LEASE_RESOURCES)
            .map_err(db("open the lease resources"))?;
        for entry in leases.iter().map_err(db("read leases"))? {
            let (k, v) = entry.map_err(db("read leases"))?;
            let rec: LeaseRecord = records::decode(v.value(), k.value())?;
            if rec.expires.is_some_and(|e| SystemTime::from(e) <= now) || except == Some(k.value())
            {
                continue;
            }
            for (kind, value) in crate::store::lease::resources_in(&resources, k.value())? {
                match kind.as_str() {
                    "content" => {
                        roots.fixed.insert(value);
                    }
                    "name" => {
                        if let Some(n) = roots.names.get(&value) {
                            roots.fixed.insert(n.target.clone());
                        }
                        roots.leased_names.insert(value);
                    }
                    _ => {
                        roots.leased_ingests.insert(value);
                    }
                }
            }
        }
        Ok(roots)
    }
}

/// Edges from a blob to the blobs it keeps: a manifest's or index's children and what its
/// `containerd.io/gc.ref.content.*` labels name.
pub(crate) type Edges = FxHashMap<String, Vec<String>>;

/// Every edge, read from the references table and the label index (one scan each; no blob
/// record is read).
pub(crate) fn edges(txn: &redb::WriteTransaction) -> Result<Edges> {
    let mut children = Edges::default();
    let refs = txn.open_table(REFS).map_err(db("open the refs table"))?;
    for entry in refs.iter().map_err(db("read references"))? {
        let (k, _) = entry.map_err(db("read references"))?;
        let (parent, child) = k.value();
        children
            .entry(parent.to_owned())
            .or_default()
            .push(child.to_owned());
    }
    let index = txn
        .open_table(BLOB_LABELS)
        .map_err(db("open the label index"))?;
    for entry in index
        .range((GC_REF_CONTENT_PREFIX, "", "")..)
        .map_err(db("read the label index"))?
    {
        let (k, _) = entry.map_err(db("read the label index"))?;
        let (key, value, digest) = k.value();
        if !key.starts_with(GC_REF_CONTENT_PREFIX) {
            break;
        }
        if let Ok(child) = Digest::parse(value) {
            children
                .entry(digest.to_owned())
                .or_default()
                .push(child.to_string());
        }
    }
    Ok(children)
}

/// Adds to `marked` every referrer of marked content (a manifest whose `subject` is marked:
/// a signature, SBOM or attestation of a kept image) and what it reaches, until nothing
/// changes. The candidates are the unmarked parents of marked blobs; each is read once (a
/// small JSON file) to learn its subject.
pub(crate) fn mark_referrers<'a>(
    store: &Store,
    edges: &'a Edges,
    mut marked: FxHashSet<&'a str>,
) -> Result<FxHashSet<&'a str>> {
    let mut subjects: FxHashMap<&'a str, Option<String>> = FxHashMap::default();
    loop {
        let mut found: Vec<&'a str> = Vec::new();
        for (parent, children) in edges {
            let parent = parent.as_str();
            if marked.contains(parent) || !children.iter().any(|c| marked.contains(c.as_str())) {
                continue;
            }
            let subject = match subjects.get(parent) {
                Some(s) => s.clone(),
                None => {
                    let s =
                        crate::store::referrers::subject_of(store, parent)?.map(|d| d.to_string());
                    subjects.insert(parent, s.clone());
                    s
                }
            };
            if subject.is_some_and(|s| marked.contains(s.as_str())) {
                found.push(parent);
            }
        }
        if found.is_empty() {
            return Ok(marked);
        }
        while let Some(d) = found.pop() {
            if !marked.insert(d) {
                continue;
            }
            if let Some(c) = edges.get(d) {
                found.extend(c.iter().map(String::as_str).filter(|c| !marked.contains(c)));
            }
        }
    }
}

/// Turns every subject edge around, for prune, which treats an image and its referrers as one
/// unit: the subject reaches its referrer (its signatures and SBOMs go, and stay, with it),
/// and a referrer no longer reaches its subject (a referrer alone never keeps an image).
/// Reads each parent's document once (small JSON files only).
pub(crate) fn turn_subject_edges(store: &Store, edges: &mut Edges) -> Result<()> {
    let mut turned: Vec<(String, String)> = Vec::new();
    for (parent, children) in edges.iter() {
        if let Some(subject) = crate::store::referrers::subject_of(store, parent)? {
            let subject = subject.to_string();
            if children.contains(&subject) {
                turned.push((parent.clone(), subject));
            }
        }
    }
    for (referrer, subject) in turned {
        if let Some(c) = edges.get_mut(&referrer) {
            c.retain(|d| *d != subject);
        }
        edges.entry(subject).or_default().push(referrer);
    }
    Ok(())
}

/// Every blob reachable from `starts` along `edges` (the starts included, whether they exist
/// or not), borrowed from them.
pub(crate) fn mark<'a>(
    edges: &'a Edges,
    starts: impl IntoIterator<Item = &'a str>,
) -> FxHashSet<&'a str> {
    let mut marked = FxHashSet::default();
    let mut stack: Vec<&str> = starts.into_iter().collect();
    while let Some(d) = stack.pop() {
        if !marked.insert(d) {
            continue;
        }
        if let Some(c) = edges.get(d) {
            stack.extend(c.iter().map(String::as_str).filter(|c| !marked.contains(c)));
        }
    }
    marked
}
