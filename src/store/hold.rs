//! Holds of an outside owner: a lease that content joins as it is written or adopted, and that
//! gives each blob back one at a time.
//!
//! containerd's metadata layer keeps its own database of what its namespaces use and treats
//! the content store below it as a bag of blobs: it writes, adopts (asks `Info` of a digest it
//! was about to fetch, and records it when present), and deletes whatever its own gc finds
//! unused. `ocistore serve --containerd` keeps everything containerd wrote or adopted in one
//! lease ([`CONTAINERD_LEASE`]), so that ocistore's gc and prune leave it alone, and answers
//! containerd's delete with [`Store::release_content`]: the blob leaves the lease, and goes
//! only when nothing else keeps it by gc's rules (a name, another lease, a `gc.root` label, a
//! kept parent).

use redb::ReadableTable;

use crate::content::Writer;
use crate::digest::Digest;
use crate::edges::GC_ROOT;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::edge_tables;
use crate::store::mark::{Roots, edges, mark};
use crate::store::records::{self, BlobRecord, LeaseRecord, Nanos};
use crate::store::schema::{BLOBS, LEASE_RESOURCES, LEASES};

/// The lease that holds what containerd wrote or adopted through `ocistore serve
/// --containerd`.
pub const CONTAINERD_LEASE: &str = "ocistore.containerd";

/// What [`Store::release_content`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The lease held the blob and nothing else kept it: its record and file are gone.
    Removed,
    /// The lease gave up its hold (or had none); something else keeps the blob.
    Kept,
    /// The lease did not hold the blob: nothing changed.
    NotHeld,
}

/// Adds `content:<key>` to lease `id` in `txn`, creating the lease (no expiry, no labels)
/// when it is missing.
pub(crate) fn hold_in(txn: &redb::WriteTransaction, id: &str, key: &str) -> Result<()> {
    hold_kind_in(txn, id, "content", key)
}

/// Drops `ingest:<reference>` from lease `id` in `txn` (nothing when it is not there).
pub(crate) fn release_ingest_in(
    txn: &redb::WriteTransaction,
    id: &str,
    reference: &str,
) -> Result<()> {
    txn.open_table(LEASE_RESOURCES)
        .map_err(|e| Error::db("open the lease resources", e))?
        .remove((id, "ingest", reference))
        .map_err(|e| Error::db("release a lease resource", e))?;
    Ok(())
}

fn hold_kind_in(txn: &redb::WriteTransaction, id: &str, kind: &str, key: &str) -> Result<()> {
    let mut leases = txn
        .open_table(LEASES)
        .map_err(|e| Error::db("open the leases table", e))?;
    let missing = leases
        .get(id)
        .map_err(|e| Error::db("read a lease", e))?
        .is_none();
    if missing {
        let rec = LeaseRecord {
            created: Nanos::now(),
            expires: None,
            labels: Default::default(),
        };
        leases
            .insert(id, records::encode(&rec).as_slice())
            .map_err(|e| Error::db("write a lease", e))?;
    }
    txn.open_table(LEASE_RESOURCES)
        .map_err(|e| Error::db("open the lease resources", e))?
        .insert((id, kind, key), ())
        .map_err(|e| Error::db("add a lease resource", e))?;
    Ok(())
}

impl Store {
    /// [`crate::Ingester::writer`] in lease `lease` (created when missing): the ingest is
    /// held while it lasts (gc's ingest expiry does not remove it; an abort or the commit
    /// releases it), and the commit puts the blob in the lease in its own transaction.
    /// Content that turns out to be committed already (`AlreadyExists`, at open or at
    /// commit) joins the lease too.
    pub fn writer_in_lease(
        &self,
        lease: &str,
        reference: &str,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
    ) -> Result<Box<dyn Writer>> {
        match self.store_writer(reference, expected_size, expected) {
            Ok(w) => {
                self.hold_ingest(lease, reference)?;
                Ok(Box::new(w.in_lease(lease.to_owned())))
            }
            Err(e) if e.kind() == crate::ErrorKind::AlreadyExists => {
                if let Some(d) = expected {
                    self.hold(lease, d)?;
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Puts committed blob `digest` in lease `lease` (created when missing), unless it is
    /// there already; `NotFound` when there is no such blob. A read answers when the lease
    /// holds it: no write transaction.
    pub fn hold(&self, lease: &str, digest: &Digest) -> Result<()> {
        if self.lease_holds_content(lease, digest)? {
            return Ok(());
        }
        let key = digest.to_string();
        let txn = self.write_txn("hold content")?;
        let present = txn
            .open_table(BLOBS)
            .map_err(|e| Error::db("open the blobs table", e))?
            .get(key.as_str())
            .map_err(|e| Error::db("read a blob record", e))?
            .is_some();
        if !present {
            return Err(Error::NotFound(format!("content {digest}")));
        }
        hold_in(&txn, lease, &key)?;
        txn.commit().map_err(|e| Error::db("commit a hold", e))
    }

    /// Puts ingest `reference` in lease `lease` (created when missing), unless it is there.
    fn hold_ingest(&self, lease: &str, reference: &str) -> Result<()> {
        let held = self
            .read_txn()?
            .open_table(LEASE_RESOURCES)
            .map_err(|e| Error::db("open the lease resources", e))?
            .get((lease, "ingest", reference))
            .map_err(|e| Error::db("read a lease resource", e))?
            .is_some();
        if held {
            return Ok(());
        }
        let txn = self.write_txn("hold an ingest")?;
        hold_kind_in(&txn, lease, "ingest", reference)?;
        txn.commit().map_err(|e| Error::db("commit a hold", e))
    }

    /// Drops ingest `reference` from lease `lease` (nothing when it is not there).
    pub fn release_ingest(&self, lease: &str, reference: &str) -> Result<()> {
        let txn = self.write_txn("release an ingest")?;
        release_ingest_in(&txn, lease, reference)?;
        txn.commit().map_err(|e| Error::db("commit a release", e))
    }

    /// Whether lease `lease` holds blob `digest` (one read).
    pub fn lease_holds_content(&self, lease: &str, digest: &Digest) -> Result<bool> {
        let txn = self.read_txn()?;
        let key = digest.to_string();
        Ok(txn
            .open_table(LEASE_RESOURCES)
            .map_err(|e| Error::db("open the lease resources", e))?
            .get((lease, "content", key.as_str()))
            .map_err(|e| Error::db("read a lease resource", e))?
            .is_some())
    }

    /// The blobs lease `lease` holds, in digest order.
    pub fn lease_content(&self, lease: &str) -> Result<Vec<Digest>> {
        let txn = self.read_txn()?;
        let table = txn
            .open_table(LEASE_RESOURCES)
            .map_err(|e| Error::db("open the lease resources", e))?;
        let mut out = Vec::new();
        for entry in table
            .range((lease, "content", "")..)
            .map_err(|e| Error::db("read lease resources", e))?
        {
            let (k, _) = entry.map_err(|e| Error::db("read lease resources", e))?;
            let (id, kind, value) = k.value();
            if id != lease || kind != "content" {
                break;
            }
            out.push(Digest::parse(value).map_err(|_| {
                Error::Corrupted(format!("lease {lease:?} holds malformed digest {value:?}"))
            })?);
        }
        Ok(out)
    }

    /// Takes blob `digest` out of lease `lease` and, in the same transaction, removes the
    /// blob when nothing else keeps it by gc's rules: a name, another live lease, a
    /// `gc.root` label, or a blob kept by those that references it (what the lease itself
    /// still holds does not count: the blob's parents go the same way). `NotFound` when there is no such
    /// blob. A blob the lease does not hold is left as it is ([`Released::NotHeld`]).
    /// Durable on return.
    pub fn release_content(&self, lease: &str, digest: &Digest) -> Result<Released> {
        let key = digest.to_string();
        let record = self.blob_record(digest)?;
        if record.is_none() {
            return Err(Error::NotFound(format!("content {digest}")));
        }
        if !self.lease_holds_content(lease, digest)? {
            return Ok(Released::NotHeld);
        }
        let _removal = self.begin_removal("release content")?;
        let txn = self.write_txn("release content")?;
        let held = txn
            .open_table(LEASE_RESOURCES)
            .map_err(|e| Error::db("open the lease resources", e))?
            .remove((lease, "content", key.as_str()))
            .map_err(|e| Error::db("release a lease resource", e))?
            .is_some();
        let record: Option<BlobRecord> = txn
            .open_table(BLOBS)
            .map_err(|e| Error::db("open the blobs table", e))?
            .get(key.as_str())
            .map_err(|e| Error::db("read a blob record", e))?
            .map(|v| records::decode(v.value(), &key))
            .transpose()?;
        let Some(record) = record else {
            txn.commit().map_err(|e| Error::db("commit a release", e))?;
            return Err(Error::NotFound(format!("content {digest}")));
        };
        if !held {
            txn.commit().map_err(|e| Error::db("commit a release", e))?;
            return Ok(Released::NotHeld);
        }
        let kept = record.labels.contains_key(GC_ROOT) || {
            let edges = edges(&txn)?;
            let now = std::time::SystemTime::now();
            let roots = Roots::read_except(&txn, now, &edges, Some(lease))?;
            crate::store::mark::mark_referrers(self, &edges, mark(&edges, roots.starts()))?
                .contains(key.as_str())
        };
        if kept {
            txn.commit().map_err(|e| Error::db("commit a release", e))?;
            return Ok(Released::Kept);
        }
        self.remove_blob_in(&txn, &key)?;
        edge_tables::forget(&txn, &key)?;
        txn.commit().map_err(|e| Error::db("commit a release", e))?;
        if let Err(e) = self.remove_unrecorded_files(std::slice::from_ref(digest)) {
            tracing::warn!(%digest, error = %e, "blob record released but its file remains");
        }
        Ok(Released::Removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Manager;
    use crate::store::lease::Resource;

    fn put(store: &Store, reference: &str, bytes: &[u8]) -> Digest {
        let mut w = store
            .writer_in_lease(CONTAINERD_LEASE, reference, None, None)
            .unwrap();
        std::io::Write::write_all(&mut w, bytes).unwrap();
        w.commit(None, None, Default::default()).unwrap()
    }

    fn manifest_of(config: &Digest, size: usize) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{size}}},"layers":[]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_commit_in_a_lease_is_held_and_gc_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = put(&store, "r1", b"held by containerd");
        assert!(store.lease_holds_content(CONTAINERD_LEASE, &d).unwrap());
        assert_eq!(store.lease_content(CONTAINERD_LEASE).unwrap(), vec![d]);
        store.gc(&Default::default()).unwrap();
        assert!(store.info(&d).is_ok(), "gc keeps what the lease holds");
        // Committed again (AlreadyExists): still held, once.
        let mut w = store
            .writer_in_lease(CONTAINERD_LEASE, "r2", None, None)
            .unwrap();
        std::io::Write::write_all(&mut w, b"held by containerd").unwrap();
        let e = w.commit(None, None, Default::default()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::AlreadyExists);
        assert_eq!(store.lease_content(CONTAINERD_LEASE).unwrap(), vec![d]);
        // Opening with the digest expected: AlreadyExists, and held.
        let other = crate::helpers::write_blob(
            &store,
            "plain",
            &mut &b"written by ocistore"[..],
            None,
            None,
            Default::default(),
        )
        .unwrap();
        let e = store
            .writer_in_lease(CONTAINERD_LEASE, "r3", None, Some(&other))
            .err()
            .unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::AlreadyExists);
        assert!(store.lease_holds_content(CONTAINERD_LEASE, &other).unwrap());
    }

    #[test]
    fn release_removes_only_what_nothing_else_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alone = put(&store, "a", b"containerd's alone");
        assert_eq!(
            store.release_content(CONTAINERD_LEASE, &alone).unwrap(),
            Released::Removed
        );
        assert_eq!(
            store.info(&alone).unwrap_err().kind(),
            crate::ErrorKind::NotFound
        );
        assert_eq!(
            store
                .release_content(CONTAINERD_LEASE, &alone)
                .unwrap_err()
                .kind(),
            crate::ErrorKind::NotFound
        );

        // Another lease keeps it.
        let leased = put(&store, "b", b"also in a user's lease");
        store
            .create_lease("mine", None, Default::default())
            .unwrap();
        store
            .add_lease_resource("mine", &Resource::Content(leased))
            .unwrap();
        assert_eq!(
            store.release_content(CONTAINERD_LEASE, &leased).unwrap(),
            Released::Kept
        );
        assert!(store.info(&leased).is_ok());
        assert!(
            !store
                .lease_holds_content(CONTAINERD_LEASE, &leased)
                .unwrap()
        );

        // A gc.root label keeps it.
        let rooted = put(&store, "c", b"a gc root");
        let mut info = store.info(&rooted).unwrap();
        info.labels
            .insert(crate::edges::GC_ROOT.to_owned(), "yes".to_owned());
        store.update(&info, &["labels"]).unwrap();
        assert_eq!(
            store.release_content(CONTAINERD_LEASE, &rooted).unwrap(),
            Released::Kept
        );

        // A parent kept by another lease keeps its child; a parent containerd alone holds
        // does not.
        let child = put(&store, "d", b"a config");
        let parent = put(&store, "e", &manifest_of(&child, 8));
        assert_eq!(
            store.release_content(CONTAINERD_LEASE, &child).unwrap(),
            Released::Removed,
            "a parent only containerd holds keeps nothing"
        );
        let child = put(&store, "f", b"another config");
        let parent2 = put(&store, "g", &manifest_of(&child, 14));
        store
            .add_lease_resource("mine", &Resource::Content(parent2))
            .unwrap();
        assert_eq!(
            store.release_content(CONTAINERD_LEASE, &child).unwrap(),
            Released::Kept
        );
        let _ = parent;

        // A blob containerd never held is left alone.
        let theirs = crate::helpers::write_blob(
            &store,
            "plain",
            &mut &b"ocistore's"[..],
            None,
            None,
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            store.release_content(CONTAINERD_LEASE, &theirs).unwrap(),
            Released::NotHeld
        );
        assert!(store.info(&theirs).is_ok());
    }

    #[test]
    fn the_containerd_lease_id_is_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = store
            .create_lease(CONTAINERD_LEASE, None, Default::default())
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    }
}
