//! fsck: re-hash every blob, reconcile records with files, check names and references; with
//! `repair`, put right what can be put right.
//!
//! Without `repair` nothing on disk changes (the CLI opens the store read-only for it).
//! Repair quarantines blobs whose bytes no longer match their digest (moved to
//! `<root>/quarantine/`, their records dropped, so the next put or import fetches them again),
//! drops records whose file is gone, removes blob files without a record (crash debris) and
//! references whose parent is gone. Names pointing at missing content are reported, not
//! removed: re-importing or pulling the content mends them.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use redb::ReadableTable;
use serde::Serialize;

use crate::digest::{Digest, hash_reader};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::records::{self, BlobRecord, NameRecord};
use crate::store::schema::{BLOBS, NAMES, REFS};

/// How to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Put right what can be put right (see the module docs).
    pub repair: bool,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `corrupt` (bytes do not match the digest), `size` (file length differs from the
    /// record), `missing` (record without file), `debris` (file without record),
    /// `dangling-name` (a name whose target is missing), `dangling-ref` (a reference whose
    /// parent is gone).
    pub kind: &'static str,
    /// The digest or name concerned.
    pub id: String,
    /// The file concerned, when there is one.
    pub path: Option<PathBuf>,
    /// What is wrong, with both sides of a mismatch.
    pub detail: String,
    /// What repair did about it; `None` when nothing was done.
    pub repaired: Option<String>,
}

/// What fsck found (and did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Blobs re-hashed.
    pub blobs_checked: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Names checked.
    pub names_checked: u64,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
}

impl Outcome {
    /// Problems that repair did not put right.
    pub fn remaining(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.repaired.is_none())
            .count()
    }
}

impl Store {
    /// Checks the store; see the module docs. Reads every blob once.
    pub fn fsck(&self, opts: &Options) -> Result<Outcome> {
        if opts.repair {
            self.writable("repair")?;
        }
        let mut out = Outcome::default();
        let mut recorded: BTreeSet<Digest> = BTreeSet::new();
        let mut bad_records: Vec<(Digest, bool /*quarantine*/)> = Vec::new();
        {
            let txn = self.read_txn()?;
            let blobs = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            for entry in blobs.iter().map_err(|e| Error::db("walk blobs", e))? {
                let (k, v) = entry.map_err(|e| Error::db("walk blobs", e))?;
                let key = k.value();
                let Ok(digest) = Digest::parse(key) else {
                    out.problems.push(Problem {
                        kind: "corrupt",
                        id: key.to_owned(),
                        path: None,
                        detail: "record under a malformed digest".into(),
                        repaired: None,
                    });
                    continue;
                };
                let rec: BlobRecord = records::decode(v.value(), key)?;
                recorded.insert(digest);
                let path = self.blob_dir().path_for(&digest);
                let mut file = match fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        out.problems.push(Problem {
                            kind: "missing",
                            id: key.to_owned(),
                            path: Some(path),
                            detail: "recorded, but its file is missing".into(),
                            repaired: None,
                        });
                        bad_records.push((digest, false));
                        continue;
                    }
                    Err(e) => return Err(Error::io("open blob", path, e)),
                };
                let (actual, len) = hash_reader(digest.algorithm(), &mut file)
                    .map_err(|e| Error::io("read blob", &path, e))?;
                out.blobs_checked += 1;
                out.bytes_checked += len;
                if len != rec.size {
                    out.problems.push(Problem {
                        kind: "size",
                        id: key.to_owned(),
                        path: Some(path),
                        detail: format!("file is {len} bytes, the record says {}", rec.size),
                        repaired: None,
                    });
                    bad_records.push((digest, true));
                } else if actual != digest {
                    out.problems.push(Problem {
                        kind: "corrupt",
                        id: key.to_owned(),
                        path: Some(path),
                        detail: format!("bytes hash to {actual}"),
                        repaired: None,
                    });
                    bad_records.push((digest, true));
                }
            }
            let names = txn
                .open_table(NAMES)
                .map_err(|e| Error::db("open the names table", e))?;
            for entry in names.iter().map_err(|e| Error::db("walk names", e))? {
                let (k, v) = entry.map_err(|e| Error::db("walk names", e))?;
                let rec: NameRecord = records::decode(v.value(), k.value())?;
                out.names_checked += 1;
                let target: serde_json::Value =
                    serde_json::from_str(&rec.target).unwrap_or_default();
                let digest = target
                    .get("digest")
                    .and_then(|d| d.as_str())
                    .and_then(|d| Digest::parse(d).ok());
                match digest {
                    Some(d) if recorded.contains(&d) => {}
                    Some(d) => out.problems.push(Problem {
                        kind: "dangling-name",
                        id: k.value().to_owned(),
                        path: None,
                        detail: format!("points at {d}, which is not in the store"),
                        repaired: None,
                    }),
                    None => out.problems.push(Problem {
                        kind: "dangling-name",
                        id: k.value().to_owned(),
                        path: None,
                        detail: "its descriptor has no valid digest".into(),
                        repaired: None,
                    }),
                }
            }
            let refs = txn
                .open_table(REFS)
                .map_err(|e| Error::db("open the refs table", e))?;
            let mut last = String::new();
            for entry in refs.iter().map_err(|e| Error::db("walk references", e))? {
                let (k, _) = entry.map_err(|e| Error::db("walk references", e))?;
                let (parent, _) = k.value();
                if parent == last {
                    continue;
                }
                last = parent.to_owned();
                if !Digest::parse(parent).is_ok_and(|d| recorded.contains(&d)) {
                    out.problems.push(Problem {
                        kind: "dangling-ref",
                        id: parent.to_owned(),
                        path: None,
                        detail: "references recorded for a blob that is not in the store".into(),
                        repaired: None,
                    });
                }
            }
        }
        let scan = self.blob_dir().scan()?;
        let mut debris = Vec::new();
        for (d, len) in scan.blobs {
            if !recorded.contains(&d) {
                out.problems.push(Problem {
                    kind: "debris",
                    id: d.to_string(),
                    path: Some(self.blob_dir().path_for(&d)),
                    detail: format!("{len}-byte file without a record"),
                    repaired: None,
                });
                debris.push(d);
            }
        }
        for stray in scan.strays {
            out.problems.push(Problem {
                kind: "debris",
                id: stray.display().to_string(),
                path: Some(stray),
                detail: "file in the blob tree that is not a blob".into(),
                repaired: None,
            });
        }
        if opts.repair {
            self.repair(&mut out, &bad_records, &debris)?;
        }
        Ok(out)
    }

    fn repair(&self, out: &mut Outcome, bad: &[(Digest, bool)], debris: &[Digest]) -> Result<()> {
        let quarantine = self.root().join("quarantine");
        let txn = self.write_txn("repair")?;
        for (d, move_file) in bad {
            let key = d.to_string();
            self.remove_blob_in(&txn, &key)?;
            crate::store::graph::forget(&txn, &key)?;
            let what = if *move_file {
                fs::create_dir_all(&quarantine)
                    .map_err(|e| Error::io("create directory", &quarantine, e))?;
                let dest = quarantine.join(format!(
                    "{}-{}-{}",
                    d.algorithm(),
                    d.hex(),
                    crate::store::records::Nanos::now().0
                ));
                let src = self.blob_dir().path_for(d);
                fs::rename(&src, &dest).map_err(|e| Error::io("quarantine blob", &src, e))?;
                format!("record dropped, file moved to {}", dest.display())
            } else {
                "record dropped".to_owned()
            };
            for p in out
                .problems
                .iter_mut()
                .filter(|p| p.id == key && p.repaired.is_none())
            {
                p.repaired = Some(what.clone());
            }
        }
        // References whose parent is gone.
        let dangling: Vec<String> = out
            .problems
            .iter()
            .filter(|p| p.kind == "dangling-ref")
            .map(|p| p.id.clone())
            .collect();
        for parent in &dangling {
            crate::store::graph::forget(&txn, parent)?;
        }
        txn.commit()
            .map_err(|e| Error::db("commit the repair", e))?;
        for p in out.problems.iter_mut().filter(|p| p.kind == "dangling-ref") {
            p.repaired = Some("references removed".into());
        }
        self.remove_unrecorded_files(debris)?;
        for p in out.problems.iter_mut().filter(|p| p.kind == "debris") {
            // Blob-named debris went above (only if still unrecorded); strays go here.
            let gone = p
                .path
                .as_ref()
                .is_some_and(|path| !path.exists() || fs::remove_file(path).is_ok());
            if gone {
                p.repaired = Some("file removed".into());
            }
        }
        Ok(())
    }
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RebuildOutcome {
    /// Where the old metadata file was moved, when there was one.
    pub old_metadata: Option<PathBuf>,
    /// Whether the old metadata could be read (its labels and names were carried over).
    pub salvaged: bool,
    /// Blob files re-hashed and recorded again.
    pub blobs_recovered: u64,
    /// Blob files whose bytes did not match their name, moved to `quarantine/`.
    pub blobs_quarantined: u64,
    /// Names carried over from the old metadata.
    pub names_recovered: u64,
    /// What could not be recovered, one line each.
    pub lost: Vec<String>,
}

/// Recreates `meta.redb` under `root` from the blob files, for when it is lost or unreadable.
///
/// The old file, if any, is moved aside (`meta.redb.broken-<time>`); if it can still be read,
/// labels and names are carried over, else they are reported lost. Every blob file is
/// re-hashed: matching ones get their records (and references) back, the others go to
/// `quarantine/`. In-progress ingests are dropped (their bytes stay until `gc`).
pub fn rebuild(root: &std::path::Path) -> Result<RebuildOutcome> {
    use crate::store::OpenOptions;
    let mut out = RebuildOutcome::default();
    let meta = root.join("meta.redb");
    let mut salvage_labels: std::collections::BTreeMap<Digest, crate::content::Labels> =
        Default::default();
    let mut salvage_names: Vec<crate::names::Image> = Vec::new();
    if meta.exists() {
        match OpenOptions::new()
            .read_only(true)
            .wait(std::time::Duration::ZERO)
            .open(root)
        {
            Ok(old) => {
                let mut infos = Vec::new();
                let walked = crate::content::Manager::walk(
                    &old,
                    &mut |i| {
                        infos.push(i.clone());
                        Ok(())
                    },
                    &[],
                );
                if walked.is_ok() {
                    salvage_labels = infos.into_iter().map(|i| (i.digest, i.labels)).collect();
                    out.salvaged = true;
                }
                salvage_names = old.images(&[]).unwrap_or_default();
            }
            Err(e) => out.lost.push(format!(
                "old metadata unreadable ({e}): every label and name is lost"
            )),
        }
        let aside = root.join(format!(
            "meta.redb.broken-{}",
            crate::store::records::Nanos::now().0
        ));
        fs::rename(&meta, &aside).map_err(|e| Error::io("move aside", &meta, e))?;
        out.old_metadata = Some(aside);
    } else {
        out.lost
            .push("no metadata file: every label and name is lost".into());
    }
    let store = OpenOptions::new().read_only(false).open(root)?;
    let scan = store.blob_dir().scan()?;
    let quarantine = root.join("quarantine");
    let mut recovered = Vec::new();
    for (digest, _) in scan.blobs {
        let path = store.blob_dir().path_for(&digest);
        let mut f = fs::File::open(&path).map_err(|e| Error::io("open blob", &path, e))?;
        let (actual, len) = hash_reader(digest.algorithm(), &mut f)
            .map_err(|e| Error::io("read blob", &path, e))?;
        if actual == digest {
            let labels = salvage_labels.remove(&digest).unwrap_or_default();
            recovered.push((digest, len, labels));
        } else {
            fs::create_dir_all(&quarantine)
                .map_err(|e| Error::io("create directory", &quarantine, e))?;
            let dest = quarantine.join(format!("{}-{}", digest.algorithm(), digest.hex()));
            fs::rename(&path, &dest).map_err(|e| Error::io("quarantine blob", &path, e))?;
            out.blobs_quarantined += 1;
            out.lost.push(format!(
                "{digest}: bytes do not match, moved to {}",
                dest.display()
            ));
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
    Ok(out)
}
