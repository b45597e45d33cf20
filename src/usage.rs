//! Disk usage of a store: blobs, ingests, the metadata file, and the total, in apparent and
//! allocated bytes. The total walks the whole root (directories included), so it agrees with
//! the filesystem's own measure (`du -s --block-size=1 <root>`). Like `du`, a file with
//! several names counts once: a blob being committed has its ingest's name too, for a
//! moment, and a pull's sealed download keeps both until its batch lands; it counts under
//! `blobs`, which is walked first.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::Store;

/// Bytes of one part of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Part {
    /// Files counted.
    pub count: u64,
    /// Sum of file lengths.
    pub apparent_bytes: u64,
    /// Sum of blocks allocated on disk.
    pub allocated_bytes: u64,
}

/// What [`Store::usage`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Committed blob files.
    pub blobs: Part,
    /// In-progress ingest data (and batch staging).
    pub ingests: Part,
    /// `meta.redb`.
    pub metadata: Part,
    /// Unused space inside `meta.redb` that redb will reuse; `None` on a read-only store.
    pub metadata_free_bytes: Option<u64>,
    /// Everything under the root: files of every kind and the directories themselves.
    pub total: Part,
}

impl Part {
    fn add(&mut self, meta: &fs::Metadata) {
        self.count += 1;
        self.apparent_bytes += meta.len();
        self.allocated_bytes += meta.blocks() * 512;
    }
}

/// The entry's metadata, or `None` when it was removed since it was listed.
fn stat_entry(entry: &fs::DirEntry) -> Result<Option<fs::Metadata>> {
    match entry.metadata() {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", entry.path(), e)),
    }
}

/// Files with more than one name counted so far, by device and inode.
type Seen = HashSet<(u64, u64)>;

/// Whether `meta`'s file is counted for the first time (always, for a file with one name).
fn first_sight(meta: &fs::Metadata, seen: &mut Seen) -> bool {
    meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino()))
}

fn walk(dir: &Path, part: &mut Part, dirs: &mut Part, seen: &mut Seen) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        // Another process may remove what was listed (a commit unlinks its ingest name, gc
        // and deletes remove blobs): gone is not an error, it just no longer counts.
        let Some(meta) = stat_entry(&entry)? else {
            continue;
        };
        if meta.is_dir() {
            dirs.add(&meta);
            walk(&entry.path(), part, dirs, seen)?;
        } else if first_sight(&meta, seen) {
            part.add(&meta);
        }
    }
    Ok(())
}

impl Store {
    /// Measures the store on disk. Walks the blob tree (this is the one listing that does).
    pub fn usage(&self) -> Result<Usage> {
        let root = self.root();
        let mut u = Usage::default();
        let mut dirs = Part::default();
        let root_meta = fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
        dirs.add(&root_meta);
        let mut other = Part::default();
        let mut seen = Seen::new();
        let mut entries = fs::read_dir(root)
            .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
            .map_err(|e| Error::io("read directory", root, e))?;
        // `blobs` first: a file that is also an ingest counts as the blob it is (becoming).
        entries.sort_by_key(|e| e.file_name() != "blobs");
        for entry in entries {
            let path = entry.path();
            let Some(meta) = stat_entry(&entry)? else {
                continue;
            };
            let name = entry.file_name();
            if meta.is_dir() {
                dirs.add(&meta);
                let part = match name.to_str() {
                    Some("blobs") => &mut u.blobs,
                    Some("ingest") => &mut u.ingests,
                    _ => &mut other,
                };
                walk(&path, part, &mut dirs, &mut seen)?;
            } else if name == "meta.redb" {
                u.metadata.add(&meta);
            } else if first_sight(&meta, &mut seen) {
                other.add(&meta);
            }
        }
        u.metadata_free_bytes = self.metadata_free_bytes()?;
        for p in [u.blobs, u.ingests, u.metadata, other, dirs] {
            u.total.count += p.count;
            u.total.apparent_bytes += p.apparent_bytes;
            u.total.allocated_bytes += p.allocated_bytes;
        }
        Ok(u)
    }

    fn metadata_free_bytes(&self) -> Result<Option<u64>> {
        if self.is_read_only() {
            return Ok(None);
        }
        let len = fs::metadata(self.root().join("meta.redb"))
            .map_err(|e| Error::io("stat", self.root().join("meta.redb"), e))?
            .len();
        let txn = self.write_txn("measure the metadata")?;
        let stats = txn
            .stats()
            .map_err(|e| Error::db("read database stats", e))?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort()
            .map_err(|e| Error::db("end the measuring transaction", e))?;
        Ok(Some(len.saturating_sub(used)))
    }
}
