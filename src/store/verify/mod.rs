//! fsck: re-hash every blob, reconcile records with files, check names and references; with
//! `repair`, put right what can be put right.
//!
//! Without `repair` nothing on disk changes (the CLI opens the store read-only for it).
//! Repair quarantines blobs whose bytes no longer match their digest (moved to
//! `<root>/quarantine/`, their records dropped, so the next put or import fetches them again),
//! drops records whose file is gone, removes blob files without a record (crash debris) and
//! references whose parent is gone. Names pointing at missing content are reported, not
//! removed: re-importing or pulling the content mends them.
//!
//! # Beside other processes
//!
//! fsck runs while other processes write. What it reads from a snapshot is only a suspicion:
//! a file without a record may be a commit in flight (published, its transaction not yet
//! committed), a record without a file may have been deleted meanwhile. Every suspicion is
//! checked again against a newer snapshot before it is reported, and a blob file that may be
//! being published (see `blobs::in_flight`: a second name, linked within
//! [`IN_FLIGHT_GRACE`]) is counted as in flight, not reported. A removal (`content rm`, `gc`,
//! `prune`, a manifest's deletion) drops records first and files after, holding the removal
//! lock (`removal.lock`, shared) from before its transaction until its files are gone; fsck
//! judges files without a record only once it holds that lock exclusively, so a file whose
//! removal is under way is never reported as debris. A quarantine is the other way round (the
//! file moves inside repair's transaction, the record goes at its commit), so repair holds the
//! same lock and a record without a file is judged under it too. Repair decides each removal,
//! quarantine and record drop inside the write transaction that performs it, against what that transaction sees; committers
//! re-check their file under their own transaction, so nothing committed is lost either way.

mod rebuild;

pub use rebuild::{RebuildOptions, RebuildOutcome, rebuild, rebuild_with};

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use redb::ReadableTable;
use serde::Serialize;

use crate::digest::{Digest, hash_reader};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::locks::{Removals, quiet_removals};
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
    /// record), `missing` (record without file), `debris` (blob file without record),
    /// `stray` (a file in the blob tree that is not a blob), `dangling-name` (a name whose
    /// target is missing), `dangling-ref` (a reference whose parent is gone),
    /// `interrupted-rebuild` (a rebuild killed before it put its new metadata in place).
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
    /// Blob files of commits in flight in other processes (or that landed while fsck ran):
    /// not problems.
    pub in_flight: u64,
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

pub use crate::blobs::IN_FLIGHT_GRACE;

/// A record a snapshot showed wrong, checked again before it is reported or acted on.
struct Suspect {
    digest: Digest,
    /// The file as it was hashed (device, inode); `None` when it was missing.
    file: Option<(u64, u64)>,
}

/// How long fsck waits for removals in other processes to finish before it judges files
/// without a record.
const REMOVALS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Said of a problem judged while other processes never stopped removing content.
fn busy_detail() -> String {
    format!(
        " (other processes were removing content throughout fsck's wait of {REMOVALS_WAIT:?}: \
         it may be theirs)"
    )
}

fn recorded_in(txn: &redb::WriteTransaction, key: &str) -> Result<bool> {
    Ok(txn
        .open_table(BLOBS)
        .map_err(|e| Error::db("open the blobs table", e))?
        .get(key)
        .map_err(|e| Error::db("read a blob record", e))?
        .is_some())
}

impl Store {
    /// Checks the store; see the module docs. Reads every blob once. Safe beside other
    /// processes writing: their commits in flight are counted in `in_flight`, not reported.
    pub fn fsck(&self, opts: &Options) -> Result<Outcome> {
        if opts.repair {
            self.writable("repair")?;
        }
        let mut out = Outcome::default();
        if let Some(new) = self.interrupted_rebuild() {
            out.problems.push(Problem {
                kind: "interrupted-rebuild",
                id: new.display().to_string(),
                path: Some(new.to_path_buf()),
                detail: "a rebuild was killed before it replaced meta.redb: the store runs on \
                         its old metadata; `ocistore fsck --rebuild` finishes it, deleting \
                         this file abandons it"
                    .into(),
                repaired: None,
            });
        }
        let mut recorded: BTreeSet<Digest> = BTreeSet::new();
        let mut suspects = Vec::new();
        self.check_snapshot(&mut out, &mut recorded, &mut suspects)?;
        // What a newer snapshot no longer shows was deleted (or replaced) meanwhile. A repair
        // in another process moves a corrupt blob's file away inside its transaction and drops
        // the record at its commit, holding the removal lock: a missing file is judged once
        // no removal is half done.
        let quiet = if suspects.iter().any(|(_, s)| s.file.is_none()) {
            Some(quiet_removals(self.root(), REMOVALS_WAIT)?)
        } else {
            None
        };
        let busy = matches!(quiet, Some(Removals::Busy));
        let mut bad = Vec::new();
        for (mut problem, suspect) in suspects {
            let fresh = self.read_txn()?;
            let still = crate::store::lookup_blob(&fresh, &suspect.digest)?.is_some();
            let missing_now = !self.blob_dir().exists(&suspect.digest);
            if still && (suspect.file.is_some() || missing_now) {
                if busy && suspect.file.is_none() {
                    problem.detail.push_str(&busy_detail());
                }
                out.problems.push(problem);
                bad.push(suspect);
            } else {
                out.in_flight += 1;
            }
        }
        drop(quiet);
        let now = SystemTime::now();
        let scan = self.blob_dir().scan()?;
        let unrecorded: Vec<(Digest, u64)> = (scan.blobs.into_iter())
            .filter(|(d, _)| !recorded.contains(d))
            .collect();
        let debris = self.confirm_debris(unrecorded, now, &mut out)?;
        let mut strays = Vec::new();
        for stray in scan.strays {
            // A publish's temporary link, in flight, or gone meanwhile.
            if crate::blobs::in_flight(&stray, now).is_none_or(|f| f) {
                continue;
            }
            out.problems.push(Problem {
                kind: "stray",
                id: stray.display().to_string(),
                path: Some(stray.clone()),
                detail: "file in the blob tree that is not a blob".into(),
                repaired: None,
            });
            strays.push(stray);
        }
        if opts.repair {
            self.repair(&mut out, &bad, &debris, &strays)?;
        }
        Ok(out)
    }

    /// Of the blob files that had no record in fsck's snapshot, those that are debris: no
    /// record now, not a commit in flight, and not a removal in flight. A process removing
    /// content drops the records first and the files after, holding the removal lock in
    /// between; the files are judged once no removal is half done (waiting up to
    /// [`REMOVALS_WAIT`]), so that a `gc` or `rm` beside fsck is not reported as debris.
    fn confirm_debris(
        &self,
        unrecorded: Vec<(Digest, u64)>,
        now: SystemTime,
        out: &mut Outcome,
    ) -> Result<Vec<Digest>> {
        if unrecorded.is_empty() {
            return Ok(Vec::new());
        }
        let removals = quiet_removals(self.root(), REMOVALS_WAIT)?;
        let busy = matches!(removals, Removals::Busy);
        let mut debris = Vec::new();
        for (d, len) in unrecorded {
            let path = self.blob_dir().path_for(&d);
            let Some(in_flight) = crate::blobs::in_flight(&path, now) else {
                continue; // removed meanwhile
            };
            if in_flight || crate::store::lookup_blob(&*self.read_txn()?, &d)?.is_some() {
                out.in_flight += 1;
                continue;
            }
            let mut detail = format!("{len}-byte file without a record");
            if busy {
                detail.push_str(&busy_detail());
            }
            out.problems.push(Problem {
                kind: "debris",
                id: d.to_string(),
                path: Some(path),
                detail,
                repaired: None,
            });
            debris.push(d);
        }
        drop(removals);
        Ok(debris)
    }

    /// The checks made on one snapshot: every record against its file, names and references
    /// against the records. Record problems are returned as suspects, to be confirmed.
    fn check_snapshot(
        &self,
        out: &mut Outcome,
        recorded: &mut BTreeSet<Digest>,
        suspects: &mut Vec<(Problem, Suspect)>,
    ) -> Result<()> {
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
            let problem = |kind, detail: String| Problem {
                kind,
                id: key.to_owned(),
                path: Some(path.clone()),
                detail,
                repaired: None,
            };
            let mut file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    suspects.push((
                        problem("missing", "recorded, but its file is missing".into()),
                        Suspect { digest, file: None },
                    ));
                    continue;
                }
                Err(e) => return Err(Error::io("open blob", path, e)),
            };
            let id = file
                .metadata()
                .map(|m| (m.dev(), m.ino()))
                .map_err(|e| Error::io("stat blob", &path, e))?;
            let (actual, len) = hash_reader(digest.algorithm(), &mut file)
                .map_err(|e| Error::io("read blob", &path, e))?;
            out.blobs_checked += 1;
            out.bytes_checked += len;
            let found = if len != rec.size {
                Some(problem(
                    "size",
                    format!("file is {len} bytes, the record says {}", rec.size),
                ))
            } else if actual != digest {
                Some(problem("corrupt", format!("bytes hash to {actual}")))
            } else {
                None
            };
            if let Some(p) = found {
                suspects.push((
                    p,
                    Suspect {
                        digest,
                        file: Some(id),
                    },
                ));
            }
        }
        let names = txn
            .open_table(NAMES)
            .map_err(|e| Error::db("open the names table", e))?;
        for entry in names.iter().map_err(|e| Error::db("walk names", e))? {
            let (k, v) = entry.map_err(|e| Error::db("walk names", e))?;
            let rec: NameRecord = records::decode(v.value(), k.value())?;
            out.names_checked += 1;
            let target: serde_json::Value = serde_json::from_str(&rec.target).unwrap_or_default();
            let digest = target
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| Digest::parse(d).ok());
            let detail = match digest {
                Some(d) if recorded.contains(&d) => continue,
                Some(d) => format!("points at {d}, which is not in the store"),
                None => "its descriptor has no valid digest".into(),
            };
            out.problems.push(Problem {
                kind: "dangling-name",
                id: k.value().to_owned(),
                path: None,
                detail,
                repaired: None,
            });
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
        Ok(())
    }

    /// Puts right what fsck found, in one write transaction that decides every step against
    /// what it sees (see the module docs).
    fn repair(
        &self,
        out: &mut Outcome,
        bad: &[Suspect],
        debris: &[Digest],
        strays: &[PathBuf],
    ) -> Result<()> {
        let quarantine = self.root().join("quarantine");
        // A quarantine is a removal: its file goes before its record.
        let _removal = self.begin_removal("repair")?;
        let txn = self.write_txn("repair")?;
        let now = SystemTime::now();
        let mut wrote = false;
        let mut done: Vec<(String, String)> = Vec::new();
        for s in bad {
            let key = s.digest.to_string();
            let path = self.blob_dir().path_for(&s.digest);
            let what = if !recorded_in(&txn, &key)? {
                "no longer recorded: nothing to do".to_owned()
            } else {
                let on_disk = fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
                match (s.file, on_disk) {
                    (None, Some(_)) => "its file is back: nothing to do".to_owned(),
                    (Some(hashed), Some(now_id)) if hashed != now_id => {
                        continue; // replaced since it was hashed: the next fsck judges it
                    }
                    (Some(_), Some(_)) => {
                        fs::create_dir_all(&quarantine)
                            .map_err(|e| Error::io("create directory", &quarantine, e))?;
                        let dest = quarantine.join(format!(
                            "{}-{}-{}",
                            s.digest.algorithm(),
                            s.digest.hex(),
                            crate::store::records::Nanos::now().0
                        ));
                        // Inside the transaction: no commit can re-publish it meanwhile.
                        fs::rename(&path, &dest)
                            .map_err(|e| Error::io("quarantine blob", &path, e))?;
                        self.remove_blob_in(&txn, &key)?;
                        crate::store::edge_tables::forget(&txn, &key)?;
                        wrote = true;
                        format!("record dropped, file moved to {}", dest.display())
                    }
                    (_, None) => {
                        self.remove_blob_in(&txn, &key)?;
                        crate::store::edge_tables::forget(&txn, &key)?;
                        wrote = true;
                        "record dropped".to_owned()
                    }
                }
            };
            done.push((key, what));
        }
        for p in out.problems.iter().filter(|p| p.kind == "dangling-ref") {
            if !recorded_in(&txn, &p.id)? {
                crate::store::edge_tables::forget(&txn, &p.id)?;
                wrote = true;
                done.push((p.id.clone(), "references removed".into()));
            }
        }
        for d in debris {
            let key = d.to_string();
            let path = self.blob_dir().path_for(d);
            let what = if recorded_in(&txn, &key)? {
                "recorded meanwhile: kept".to_owned()
            } else if crate::blobs::in_flight(&path, now).unwrap_or(false) {
                "linked again meanwhile (a commit in flight): kept".to_owned()
            } else {
                self.blob_dir().remove(d)?;
                "file removed".to_owned()
            };
            done.push((key, what));
        }
        for stray in strays {
            match fs::remove_file(stray) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove a stray file", stray, e)),
            }
            done.push((stray.display().to_string(), "file removed".into()));
        }
        if wrote {
            txn.commit()
                .map_err(|e| Error::db("commit the repair", e))?;
        } else {
            txn.abort()
                .map_err(|e| Error::db("end the repair transaction", e))?;
        }
        for (id, what) in done {
            for p in out
                .problems
                .iter_mut()
                .filter(|p| p.id == id && p.repaired.is_none() && p.kind != "dangling-name")
            {
                p.repaired = Some(what.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Commits `bytes` as a blob, then drops its record the way a removal does, holding the
    /// removal lock from before that transaction; the file stays, and so does the lock until
    /// the returned file is dropped.
    fn half_removed(store: &Store, bytes: &[u8]) -> (Digest, fs::File) {
        let mut batch = store.batch().unwrap();
        let mut reader = bytes;
        let digest = batch
            .stage(&mut reader, None, None, Default::default())
            .unwrap()
            .digest;
        batch.commit().unwrap();
        let removal = store.begin_removal("test").unwrap();
        let txn = store.write_txn("test").unwrap();
        assert!(store.remove_blob_in(&txn, &digest.to_string()).unwrap());
        txn.commit().unwrap();
        (digest, removal)
    }

    /// A removal half done in another process (here: this test, holding the removal lock
    /// between dropping a record and removing its file, as `content rm` and `gc` do) is not
    /// debris: fsck waits for it, then finds the file gone and nothing wrong.
    #[test]
    fn a_file_whose_removal_is_under_way_is_not_debris() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (digest, removal) = half_removed(&store, b"being removed");
        let checker = store.clone();
        let fsck = std::thread::spawn(move || {
            let out = checker.fsck(&Options::default()).unwrap();
            (out, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !fsck.is_finished(),
            "fsck judged the file while its removal ran"
        );
        let removal_ends = Instant::now();
        store.remove_unrecorded_files(&[digest]).unwrap();
        drop(removal);
        let (out, finished) = fsck.join().unwrap();
        assert!(out.problems.is_empty(), "{out:?}");
        assert!(
            finished >= removal_ends,
            "fsck finished before the removal did"
        );

        // A remover that died in between leaves its file: that is debris, reported at once.
        let (_, removal) = half_removed(&store, b"left behind");
        drop(removal);
        let out = store.fsck(&Options::default()).unwrap();
        let kinds: Vec<&str> = out.problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, ["debris"], "{out:?}");
    }

    /// A quarantine half done in another process (here: this test, holding the removal lock
    /// and a write transaction, with the file moved away and the record not yet dropped, as
    /// `fsck --repair` does) is not a missing blob: fsck waits for it, then finds nothing
    /// wrong. A file gone with no removal under way is reported at once.
    #[test]
    fn a_blob_whose_quarantine_is_under_way_is_not_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let commit = |bytes: &[u8]| {
            let mut batch = store.batch().unwrap();
            let digest = batch
                .stage(&mut &*bytes, None, None, Default::default())
                .unwrap()
                .digest;
            batch.commit().unwrap();
            digest
        };
        let digest = commit(b"going to quarantine");
        let removal = store.begin_removal("test").unwrap();
        let txn = store.write_txn("test").unwrap();
        let path = store.blob_dir().path_for(&digest);
        fs::rename(&path, dir.path().join("quarantined")).unwrap();
        let checker = store.clone();
        let fsck = std::thread::spawn(move || checker.fsck(&Options::default()).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !fsck.is_finished(),
            "fsck judged the blob while its quarantine ran"
        );
        assert!(store.remove_blob_in(&txn, &digest.to_string()).unwrap());
        txn.commit().unwrap();
        drop(removal);
        let out = fsck.join().unwrap();
        assert!(out.problems.is_empty(), "{out:?}");

        let lost = commit(b"lost");
        fs::remove_file(store.blob_dir().path_for(&lost)).unwrap();
        let started = Instant::now();
        let out = store.fsck(&Options::default()).unwrap();
        let kinds: Vec<&str> = out.problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, ["missing"], "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
