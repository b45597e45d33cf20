//! Sharded blob files: `blobs/<alg>/<hh>/<hex>`, read-only once published.
//!
//! This module only moves files. Whether a file is visible is decided by the metadata: a file
//! without a record is debris, reclaimed by `gc`/`fsck`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};

/// How long a blob file linked without a record may belong to a commit in flight (a file
/// with a second name younger than this is not debris).
pub const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the file at `path`, which has no record, may be a blob that a commit in another
/// process is publishing: a commit hard-links its ingest or staging file into the tree and
/// unlinks that other name only after its transaction, so such a file has a second name and
/// was linked (its ctime) within [`IN_FLIGHT_GRACE`]. A file with one name is never in
/// flight. `None` when the file is gone.
pub(crate) fn in_flight(path: &Path, now: std::time::SystemTime) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).ok()?;
    let ctime = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            m.ctime().max(0) as u64,
            m.ctime_nsec().clamp(0, 999_999_999) as u32,
        );
    let age = now.duration_since(ctime).unwrap_or_default();
    Some(m.nlink() > 1 && age < IN_FLIGHT_GRACE)
}

/// The blob tree of one store.
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
}

impl BlobDir {
    /// The blob tree under `root` (`<store>/blobs`). Creates nothing.
    pub fn new(root: PathBuf) -> Self {
        BlobDir { root }
    }

    /// The directory of the tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the bytes of `digest` live.
    pub fn path_for(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// Publishes the (already fsynced) file at `data` as the bytes of `digest`: hard-links it
    /// into place and fsyncs the shard directory, so that the name survives a power cut.
    ///
    /// A file already in place is kept when its length is `size` (same digest, same bytes,
    /// unless it rotted, which `fsck` finds); otherwise it is replaced atomically.
    pub fn publish(&self, data: &Path, digest: &Digest, size: u64) -> Result<PathBuf> {
        let target = self.link(data, digest, size)?;
        sync_dir(target.parent().expect("a blob path has a shard directory"))?;
        Ok(target)
    }

    /// [`BlobDir::publish`] without the directory fsync: for batches, which fsync each shard
    /// directory once after linking all their files.
    pub fn link(&self, data: &Path, digest: &Digest, size: u64) -> Result<PathBuf> {
        let target = self.path_for(digest);
        let shard = target.parent().expect("a blob path has a shard directory");
        if !shard.is_dir() {
            // A new shard (or algorithm) directory: its own name must be durable too, or a
            // power cut could lose every blob linked into it.
            let alg_dir = shard.parent().expect("a shard has an algorithm directory");
            let new_alg = !alg_dir.is_dir();
            fs::create_dir_all(shard).map_err(|e| Error::io("create directory", shard, e))?;
            sync_dir(alg_dir)?;
            if new_alg {
                sync_dir(&self.root)?;
            }
        }
        match fs::hard_link(data, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = fs::metadata(&target).map(|m| m.len()).ok();
                if existing != Some(size) {
                    // Debris of another length: replace it with our verified bytes.
                    let tmp = shard.join(format!(".{}.tmp", digest.hex()));
                    let _ = fs::remove_file(&tmp);
                    fs::hard_link(data, &tmp).map_err(|e| Error::io("link", &tmp, e))?;
                    fs::rename(&tmp, &target).map_err(|e| Error::io("rename", &target, e))?;
                }
            }
            Err(e) => return Err(Error::io("link blob into", &target, e)),
        }
        set_read_only(&target);
        Ok(target)
    }

    /// Removes the bytes of `digest`; a file already gone is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.path_for(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove blob", path, e)),
        }
    }

    /// Whether a file for `digest` is present.
    pub fn exists(&self, digest: &Digest) -> bool {
        self.path_for(digest).is_file()
    }

    /// Every well-named blob file in the tree with its length, in digest order. Files whose
    /// names are not digests are returned in `strays`. Only `fsck` and `gc` call this: opening,
    /// listing and reading never scan the tree.
    pub fn scan(&self) -> Result<Scan> {
        let mut scan = Scan::default();
        for alg in Algorithm::ALL {
            let alg_dir = self.root.join(alg.name());
            for shard in read_dir_sorted(&alg_dir)? {
                if !shard.is_dir() {
                    scan.strays.push(shard);
                    continue;
                }
                for file in read_dir_sorted(&shard)? {
                    // Removed since it was listed (by gc or a delete in another process):
                    // neither a blob nor a stray.
                    let meta = match fs::symlink_metadata(&file) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io("stat", &file, e)),
                    };
                    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let parsed = Digest::parse(&format!("{alg}:{name}")).ok();
                    match parsed {
                        Some(d) if shard.ends_with(&d.hex()[..2]) && meta.is_file() => {
                            scan.blobs.push((d, meta.len()));
                        }
                        _ => scan.strays.push(file),
                    }
                }
            }
        }
        scan.blobs.sort();
        Ok(scan)
    }
}

/// One shard directory of the tree (`<alg>/<hh>`) and the names in it, sorted.
#[derive(Debug)]
pub(crate) struct Shard {
    pub alg: Algorithm,
    pub hh: String,
    pub dir: PathBuf,
    pub names: Vec<String>,
}

impl BlobDir {
    /// Every shard directory with the names in it. Reads each directory once and stats
    /// nothing: a caller that wants a file's metadata asks for that file alone.
    pub(crate) fn list_shards(&self) -> Result<Vec<Shard>> {
        let mut shards = Vec::new();
        for alg in Algorithm::ALL {
            let alg_dir = self.root.join(alg.name());
            for dir in read_dir_sorted(&alg_dir)? {
                let Some(hh) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                    continue;
                };
                let rd = match fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    // A file where a shard should be, or a shard removed meanwhile.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(Error::io("read directory", &dir, e)),
                };
                let mut names = Vec::new();
                for entry in rd {
                    let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
                    if let Ok(name) = entry.file_name().into_string() {
                        names.push(name);
                    }
                }
                names.sort_unstable();
                shards.push(Shard {
                    alg,
                    hh,
                    dir,
                    names,
                });
            }
        }
        Ok(shards)
    }
}

/// What [`BlobDir::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Blob files with their lengths, in digest order.
    pub blobs: Vec<(Digest, u64)>,
    /// Files in the tree whose names are not blobs (temporary links of a crashed publish).
    pub strays: Vec<PathBuf>,
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        out.push(
            entry
                .map_err(|e| Error::io("read directory", dir, e))?
                .path(),
        );
    }
    out.sort();
    Ok(out)
}

/// fsyncs a directory so that the names in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Marks a published blob read-only; a failure only costs the protection, so it is ignored.
fn set_read_only(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mut perms = meta.permissions();
        if !perms.readonly() {
            perms.set_readonly(true);
            let _ = fs::set_permissions(path, perms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_sharded_by_first_two_hex_chars() {
        let d = Algorithm::Sha256.digest(b"hello");
        let dir = BlobDir::new(PathBuf::from("/s/blobs"));
        let p = dir.path_for(&d);
        assert_eq!(
            p,
            PathBuf::from(format!("/s/blobs/sha256/{}/{}", &d.hex()[..2], d.hex()))
        );
    }

    #[test]
    fn publish_links_and_scan_finds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BlobDir::new(tmp.path().join("blobs"));
        let data = tmp.path().join("data");
        fs::write(&data, b"hello").unwrap();
        let d = Algorithm::Sha256.digest(b"hello");
        let p = dir.publish(&data, &d, 5).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        // Publishing again over a wrong-length file replaces it.
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"he").unwrap();
        dir.publish(&data, &d, 5).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        let scan = dir.scan().unwrap();
        assert_eq!(scan.blobs, vec![(d, 5)]);
        assert!(scan.strays.is_empty());
        dir.remove(&d).unwrap();
        dir.remove(&d).unwrap();
        assert!(!dir.exists(&d));
    }
}
