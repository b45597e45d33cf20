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
                recorded.insert(digest.clone());
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
