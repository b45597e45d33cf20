//! Committed content of the redb store: Manager (info, update, walk, delete), Provider
//! (reader_at), and the transaction that turns an ingest into a blob.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use redb::{ReadableTable, Table};

use crate::content::{Info, Labels, Manager, Provider, ReaderAt, apply_label_update};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::filter::{self, Filter};
use crate::query::InfoFields;
use crate::store::locks::RefLock;
use crate::store::records::{self, BlobRecord, Nanos};
use crate::store::schema::{BLOB_LABELS, BLOBS, INGESTS};
use crate::store::{Store, edge_tables};

type LabelIndex<'txn> = Table<'txn, (&'static str, &'static str, &'static str), ()>;

fn info_of(digest: Digest, rec: BlobRecord) -> Info {
    Info {
        digest,
        size: rec.size,
        created_at: rec.created.into(),
        updated_at: rec.updated.into(),
        labels: rec.labels,
    }
}

type BlobTable<'txn> = Table<'txn, &'static str, &'static [u8]>;

/// Inserts a new blob record under `key` with its label index entries.
pub(crate) fn insert_record(
    table: &mut BlobTable<'_>,
    index: &mut LabelIndex<'_>,
    key: &str,
    size: u64,
    labels: Labels,
    now: Nanos,
) -> Result<()> {
    let rec = BlobRecord {
        size,
        created: now,
        updated: now,
        labels,
    };
    table
        .insert(key, records::encode(&rec).as_slice())
        .map_err(|e| Error::db("write a blob record", e))?;
    index_labels(index, key, &rec.labels)
}

fn index_labels(index: &mut LabelIndex<'_>, digest: &str, labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        index
            .insert((k.as_str(), v.as_str(), digest), ())
            .map_err(|e| Error::db("index a label", e))?;
    }
    Ok(())
}

fn unindex_labels(index: &mut LabelIndex<'_>, digest: &str, labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        index
            .remove((k.as_str(), v.as_str(), digest))
            .map_err(|e| Error::db("unindex a label", e))?;
    }
    Ok(())
}

/// The digest strings the label index holds under `key`=`value`, in order: a range read,
/// never a scan of the blobs.
pub(crate) fn labelled(
    index: &impl ReadableTable<(&'static str, &'static str, &'static str), ()>,
    key: &str,
    value: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let range = index
        .range((key, value, "")..)
        .map_err(|e| Error::db("read the label index", e))?;
    for entry in range {
        let (k, _) = entry.map_err(|e| Error::db("read the label index", e))?;
        let (ik, iv, d) = k.value();
        if ik != key || iv != value {
            break;
        }
        out.push(d.to_owned());
    }
    Ok(out)
}

/// What [`set_label_in`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelSet {
    /// The blob has no record (never committed, or deleted meanwhile); nothing was written.
    NoRecord,
    /// The label had this value before (`None`: it was absent); it now has the new one,
    /// unless it had a value and `overwrite` was false.
    Was(Option<String>),
}

/// Sets label `name`=`value` on the record of `key` inside `txn`, keeping the label index in
/// step and moving `updated`. With `overwrite` false an existing value is left as it is. A
/// record that already has the value is not rewritten.
pub(crate) fn set_label_in(
    txn: &redb::WriteTransaction,
    key: &str,
    name: &str,
    value: &str,
    overwrite: bool,
) -> Result<LabelSet> {
    let mut blobs = txn
        .open_table(BLOBS)
        .map_err(|e| Error::db("open the blobs table", e))?;
    let mut rec: BlobRecord = match blobs
        .get(key)
        .map_err(|e| Error::db("read a blob record", e))?
    {
        Some(v) => records::decode(v.value(), key)?,
        None => return Ok(LabelSet::NoRecord),
    };
    let previous = rec.labels.get(name).cloned();
    if previous.as_deref() == Some(value) || (previous.is_some() && !overwrite) {
        return Ok(LabelSet::Was(previous));
    }
    let mut index = txn
        .open_table(BLOB_LABELS)
        .map_err(|e| Error::db("open the label index", e))?;
    if let Some(old) = &previous {
        index
            .remove((name, old.as_str(), key))
            .map_err(|e| Error::db("unindex a label", e))?;
    }
    index
        .insert((name, value, key), ())
        .map_err(|e| Error::db("index a label", e))?;
    rec.labels.insert(name.to_owned(), value.to_owned());
    rec.updated = Nanos::now().max(rec.updated);
    blobs
        .insert(key, records::encode(&rec).as_slice())
        .map_err(|e| Error::db("write a blob record", e))?;
    Ok(LabelSet::Was(previous))
}

impl Store {
    /// Turns the fsynced, verified ingest `reference` into the blob `digest`: publish the file,
    /// then one transaction inserts the record with its labels and drops the ingest record.
    /// `AlreadyExists` (and the ingest removed) when the blob is already committed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit_ingest(
        &self,
        reference: &str,
        lock: &RefLock,
        digest: &Digest,
        size: u64,
        labels: Labels,
        children: Vec<Digest>,
        arrival: crate::store::group::Arrival,
        lease: Option<&str>,
    ) -> Result<()> {
        if self.blob_record(digest)?.is_some() {
            // Not joining a group with this commit: withdraw, or a leader waits for it.
            drop(arrival);
            self.remove_ingest(reference, lock)?;
            if let Some(lease) = lease {
                self.hold(lease, digest)?;
                self.release_ingest(lease, reference)?;
            }
            return Err(Error::AlreadyExists(format!("content {digest}")));
        }
        let data = lock.path();
        // Linked and its directory fsynced on this thread, before joining the group: the
        // directory syncs of concurrent writers overlap each other and the leader's commit,
        // where a leader syncing every directory of its group would queue them one by one.
        let target = self.blob_dir().link(data, digest, size)?;
        let shard = target.parent().expect("blob paths have a shard");
        crate::blobs::sync_dir(shard)?;
        let key = digest.to_string();
        let (store, digest_owned, data_owned, reference_owned) = (
            self.clone(),
            *digest,
            data.to_path_buf(),
            reference.to_owned(),
        );
        let lease = lease.map(str::to_owned);
        let existed = self.group_write_announced("commit a blob", Some(arrival), move |txn| {
            let mut blobs = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            let existed = blobs
                .get(key.as_str())
                .map_err(|e| Error::db("read a blob record", e))?
                .is_some();
            if !existed {
                // A delete or gc in another process may have removed the file between our
                // publish and this transaction; while we hold the transaction it cannot.
                if !store.blob_dir().exists(&digest_owned) {
                    store.blob_dir().publish(&data_owned, &digest_owned, size)?;
                }
                let mut index = txn
                    .open_table(BLOB_LABELS)
                    .map_err(|e| Error::db("open the label index", e))?;
                insert_record(&mut blobs, &mut index, &key, size, labels, Nanos::now())?;
                edge_tables::record(txn, &key, &children)?;
            }
            if let Some(lease) = &lease {
                crate::store::hold::hold_in(txn, lease, &key)?;
                crate::store::hold::release_ingest_in(txn, lease, &reference_owned)?;
            }
            let mut ingests = txn
                .open_table(INGESTS)
                .map_err(|e| Error::db("open the ingests table", e))?;
            ingests
                .remove(reference_owned.as_str())
                .map_err(|e| Error::db("remove an ingest record", e))?;
            Ok(existed)
        })?;
        lock.remove_file();
        if existed {
            return Err(Error::AlreadyExists(format!("content {digest}")));
        }
        Ok(())
    }

    /// Records blob files that are already in place and verified (fsck's rebuild), with
    /// their labels and references, in one transaction.
    pub(crate) fn insert_existing(&self, blobs: &[(Digest, u64, Labels)]) -> Result<()> {
        let txn = self.write_txn("record recovered blobs")?;
        {
            let mut table = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            let mut index = txn
                .open_table(BLOB_LABELS)
                .map_err(|e| Error::db("open the label index", e))?;
            let now = Nanos::now();
            for (digest, size, labels) in blobs {
                let key = digest.to_string();
                insert_record(&mut table, &mut index, &key, *size, labels.clone(), now)?;
            }
        }
        for (digest, _, _) in blobs {
            if let Some(children) =
                crate::edges::children_of_path(&self.blob_dir().path_for(digest))?
            {
                edge_tables::record(&txn, &digest.to_string(), &children)?;
            }
        }
        txn.commit()
            .map_err(|e| Error::db("commit recovered blobs", e))
    }

    /// Opens a removal: until the returned lock is dropped, a blob whose record this process
    /// drops may keep its file without fsck calling it debris. Take it before the transaction
    /// that drops records and keep it until [`Store::remove_unrecorded_files`] has run.
    pub(crate) fn begin_removal(&self, action: &str) -> Result<File> {
        self.writable(action)?;
        crate::store::locks::hold_removal_lock(self.root())
    }

    /// Removes the file of `digest` if, inside a write transaction, it has no record. Deletes
    /// and gc use this so that a file is never removed under a concurrent commit.
    pub(crate) fn remove_unrecorded_files(&self, digests: &[Digest]) -> Result<()> {
        self.remove_unrecorded_files_if(digests, false).map(drop)
    }

    /// [`Store::remove_unrecorded_files`], with `spare_in_flight`: of the files that may be a
    /// commit in flight (see `blobs::in_flight`) none is removed. Returns the digests whose
    /// files went.
    pub(crate) fn remove_unrecorded_files_if(
        &self,
        digests: &[Digest],
        spare_in_flight: bool,
    ) -> Result<Vec<Digest>> {
        let mut removed = Vec::new();
        if digests.is_empty() {
            return Ok(removed);
        }
        let txn = self.write_txn("remove blob files")?;
        let now = std::time::SystemTime::now();
        {
            let blobs = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            for d in digests {
                let recorded = blobs
                    .get(d.to_string().as_str())
                    .map_err(|e| Error::db("read a blob record", e))?
                    .is_some();
                let path = self.blob_dir().path_for(d);
                let spared =
                    spare_in_flight && crate::blobs::in_flight(&path, now).unwrap_or(false);
                if !recorded && !spared {
                    self.blob_dir().remove(d)?;
                    removed.push(*d);
                }
            }
        }
        // Nothing was written: abort instead of paying a commit.
        txn.abort()
            .map_err(|e| Error::db("end the file-removal transaction", e))?;
        Ok(removed)
    }

    /// Removes the record of `key` and its label index entries inside `txn`; whether it
    /// existed. The file is left for [`Store::remove_unrecorded_files`].
    pub(crate) fn remove_blob_in(&self, txn: &redb::WriteTransaction, key: &str) -> Result<bool> {
        let mut blobs = txn
            .open_table(BLOBS)
            .map_err(|e| Error::db("open the blobs table", e))?;
        let rec: BlobRecord = match blobs
            .remove(key)
            .map_err(|e| Error::db("remove a blob record", e))?
        {
            Some(v) => records::decode(v.value(), key)?,
            None => return Ok(false),
        };
        let mut index = txn
            .open_table(BLOB_LABELS)
            .map_err(|e| Error::db("open the label index", e))?;
        unindex_labels(&mut index, key, &rec.labels)?;
        crate::store::uses::forget_in(txn, "content", key)?;
        Ok(true)
    }

    fn walk_filtered(&self, filter: &Filter, f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let txn = self.read_txn()?;
        let blobs = txn
            .open_table(BLOBS)
            .map_err(|e| Error::db("open the blobs table", e))?;
        let mut emit = |key: &str, value: &[u8]| -> Result<()> {
            let digest = Digest::parse(key).map_err(|_| {
                Error::Corrupted(format!("blob record under malformed key {key:?}"))
            })?;
            let info = info_of(digest, records::decode(value, key)?);
            if filter.matches(&InfoFields(&info)) {
                f(&info)?;
            }
            Ok(())
        };
        // Answer from an index when every branch pins a label or the digest: the candidates
        // are few, so gather them (sorted, deduplicated) and look each one up.
        let candidates: Option<BTreeSet<String>> =
            if let Some(digests) = filter.equality_hints("digest") {
                Some(digests.into_iter().collect())
            } else if let Some(pairs) = filter.index_hints("labels") {
                let index = txn
                    .open_table(BLOB_LABELS)
                    .map_err(|e| Error::db("open the label index", e))?;
                let mut set = BTreeSet::new();
                for (k, v) in &pairs {
                    set.extend(labelled(&index, k, v)?);
                }
                Some(set)
            } else {
                None
            };
        match candidates {
            Some(set) => {
                for key in set {
                    if let Some(v) = blobs
                        .get(key.as_str())
                        .map_err(|e| Error::db("read a blob record", e))?
                    {
                        emit(&key, v.value())?;
                    }
                }
            }
            None => {
                for entry in blobs.iter().map_err(|e| Error::db("walk blobs", e))? {
                    let (k, v) = entry.map_err(|e| Error::db("walk blobs", e))?;
                    emit(k.value(), v.value())?;
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// The records of many blobs from one snapshot (one read transaction): `None` for each
    /// digest that is not committed. For callers that look up many blobs at once, this avoids
    /// the per-call cost of starting a read transaction, which in multi-process mode takes
    /// file locks.
    pub fn infos(&self, digests: &[Digest]) -> Result<Vec<Option<Info>>> {
        let snap = self.read_txn()?;
        digests
            .iter()
            .map(|d| Ok(super::lookup_blob(&snap, d)?.map(|rec| info_of(*d, rec))))
            .collect()
    }
}

impl Manager for Store {
    fn info(&self, digest: &Digest) -> Result<Info> {
        match self.blob_record(digest)? {
            Some(rec) => Ok(info_of(*digest, rec)),
            None => Err(Error::NotFound(format!("content {digest}"))),
        }
    }

    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        let key = info.digest.to_string();
        let txn = self.write_txn("update labels")?;
        let rec = {
            let mut blobs = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            let mut rec: BlobRecord = match blobs
                .get(key.as_str())
                .map_err(|e| Error::db("read a blob record", e))?
            {
                Some(v) => records::decode(v.value(), &key)?,
                None => return Err(Error::NotFound(format!("content {}", info.digest))),
            };
            let labels = apply_label_update(&rec.labels, info, fieldpaths)?;
            let mut index = txn
                .open_table(BLOB_LABELS)
                .map_err(|e| Error::db("open the label index", e))?;
            unindex_labels(&mut index, &key, &rec.labels)?;
            index_labels(&mut index, &key, &labels)?;
            rec.labels = labels;
            rec.updated = Nanos::now().max(rec.updated);
            blobs
                .insert(key.as_str(), records::encode(&rec).as_slice())
                .map_err(|e| Error::db("write a blob record", e))?;
            rec
        };
        txn.commit()
            .map_err(|e| Error::db("commit a label update", e))?;
        Ok(info_of(info.digest, rec))
    }

    fn walk(&self, f: &mut dyn FnMut(&Info) -> Result<()>, filters: &[&str]) -> Result<()> {
        let filter = filter::parse_all(filters)?;
        self.walk_filtered(&filter, f)
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        let key = digest.to_string();
        let _removal = self.begin_removal("delete a blob")?;
        let txn = self.write_txn("delete a blob")?;
        if !self.remove_blob_in(&txn, &key)? {
            return Err(Error::NotFound(format!("content {digest}")));
        }
        edge_tables::forget(&txn, &key)?;
        txn.commit().map_err(|e| Error::db("commit a delete", e))?;
        // The record is gone and durable; the bytes follow. If this fails the file is debris
        // that gc reclaims, never a visible blob.
        if let Err(e) = self.remove_unrecorded_files(std::slice::from_ref(digest)) {
            tracing::warn!(%digest, error = %e, "blob record deleted but its file remains");
        }
        Ok(())
    }
}

/// Positional reads of one blob file, bounded by the recorded size.
struct FileReader {
    file: File,
    size: u64,
    path: std::path::PathBuf,
}

impl ReaderAt for FileReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let room = usize::try_from(self.size - offset).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let mut done = 0;
        // Fill as much as asked: a short read happens only at the end of the blob.
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => {
                    return Err(Error::Corrupted(format!(
                        "blob file '{}' is shorter than its recorded size {}",
                        self.path.display(),
                        self.size
                    )));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read blob", &self.path, e)),
            }
        }
        Ok(done)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

impl Provider for Store {
    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>> {
        let rec = self
            .blob_record(digest)?
            .ok_or_else(|| Error::NotFound(format!("content {digest}")))?;
        let path = self.blob_dir().path_for(digest);
        self.count_blob_open();
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // Deleted between our lookup and the open? Then the record is gone too.
                match self.blob_record(digest) {
                    Ok(None) => Error::NotFound(format!("content {digest}")),
                    _ => Error::Corrupted(format!(
                        "content {digest} is recorded but its file '{}' is missing",
                        path.display()
                    )),
                }
            } else {
                Error::io("open blob", &path, e)
            }
        })?;
        Ok(Box::new(FileReader {
            file,
            size: rec.size,
            path,
        }))
    }
}
