//! Leases: named holds on content, ingests and names that protect them from gc until the
//! lease is deleted or expires.

use std::time::SystemTime;

use redb::ReadableTable;

use crate::content::{Labels, validate_labels};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;
use crate::store::images::image_in;
use crate::store::owner::{LeaseOwner, OwnerDir, owner_of};
use crate::store::records::{self, LeaseRecord, Nanos};
use crate::store::schema::{BLOBS, LEASE_RESOURCES, LEASES, NAMES};

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The caller-chosen id.
    pub id: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it stops protecting anything; `None` never.
    pub expires_at: Option<SystemTime>,
    /// Its labels.
    pub labels: Labels,
    /// The process that holds it for itself (a batch, pull, push or export), when it is such
    /// a lease: it is dropped by the next gc or prune once that process is dead.
    pub owner: Option<LeaseOwner>,
}

impl Lease {
    /// Whether the lease still protects what it holds at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// Something a lease holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// A committed blob.
    Content(Digest),
    /// An ingest, by reference.
    Ingest(String),
    /// An image name (normalised), and through it its content.
    Name(String),
}

impl Resource {
    fn parts(&self) -> (&'static str, String) {
        match self {
            Resource::Content(d) => ("content", d.to_string()),
            Resource::Ingest(r) => ("ingest", r.clone()),
            Resource::Name(n) => ("name", n.clone()),
        }
    }

    fn from_parts(kind: &str, value: &str) -> Result<Resource> {
        match kind {
            "content" => Digest::parse(value)
                .map(Resource::Content)
                .map_err(|_| Error::Corrupted(format!("lease holds malformed digest {value:?}"))),
            "ingest" => Ok(Resource::Ingest(value.to_owned())),
            "name" => Ok(Resource::Name(value.to_owned())),
            other => Err(Error::Corrupted(format!(
                "lease holds unknown resource kind {other:?}"
            ))),
        }
    }

    /// Parses `content:<digest>`, `ingest:<ref>` or `name:<reference>`.
    pub fn parse(s: &str) -> Result<Resource> {
        let bad = || {
            Error::InvalidArgument(format!(
                "lease resource {s:?} is not content:<digest>, ingest:<ref> or name:<reference>"
            ))
        };
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "content" => Ok(Resource::Content(Digest::parse(value)?)),
            "ingest" if !value.is_empty() => Ok(Resource::Ingest(value.to_owned())),
            "name" => Ok(Resource::Name(
                crate::names::Name::parse(value)?.to_string(),
            )),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (k, v) = self.parts();
        write!(f, "{k}:{v}")
    }
}

fn lease_of(store: &Store, id: &str, rec: LeaseRecord) -> Lease {
    let owner = owner_of(id, &rec.labels).map(|owner| LeaseOwner {
        pid: (rec.labels.get(crate::store::owner::OWNER_PID_LABEL))
            .and_then(|p| p.parse().ok())
            .or_else(|| owner.split('-').nth(1).and_then(|p| p.parse().ok())),
        alive: store.owner_alive(&owner),
        id: owner,
    });
    Lease {
        id: id.to_owned(),
        created_at: rec.created.into(),
        expires_at: rec.expires.map(Into::into),
        labels: rec.labels,
        owner,
    }
}

/// A lease that keeps content from gc while this process reads it (an export, a push),
/// released when dropped. Should the process die first, the next gc or prune drops it (its
/// owner directory is no longer locked; see `store::owner`).
pub(crate) struct ReadLease {
    store: Store,
    id: String,
    /// Dropped after `Drop::drop` has dropped the lease.
    _owner: OwnerDir,
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        if let Err(e) = self.store.delete_lease(&self.id)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(lease = %self.id, error = %e, "could not drop a reader's lease; the next gc drops it");
        }
    }
}

impl Store {
    /// Leases the targets of `images` (normalised names and the digests the caller resolved
    /// them to), and so everything they reference, for the length of an operation (`what`:
    /// "export", "push"), in one transaction that checks each name still points at its digest
    /// and the digest is committed: `NotFound` naming the first image removed or moved since
    /// the caller looked it up (a prune may have taken part of what it pointed at); nothing
    /// is leased then. `None` on a read-only store, which cannot hold leases.
    pub(crate) fn lease_images(
        &self,
        what: &str,
        images: &[(&str, Digest)],
    ) -> Result<Option<ReadLease>> {
        if self.is_read_only() {
            return Ok(None);
        }
        let owner = self.claim_owner_dir(what)?;
        let id = format!("ocistore.{what}/{}", owner.id());
        let rec = LeaseRecord {
            created: Nanos::now(),
            expires: Some(Nanos::from(
                SystemTime::now() + std::time::Duration::from_secs(24 * 3600),
            )),
            labels: owner.labels(),
        };
        let txn = self.write_txn("lease content for reading")?;
        {
            let blobs = txn
                .open_table(BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?;
            let mut resources = txn
                .open_table(LEASE_RESOURCES)
                .map_err(|e| Error::db("open the lease resources", e))?;
            let names = txn
                .open_table(NAMES)
                .map_err(|e| Error::db("open the names table", e))?;
            for (name, d) in images {
                let now_at = match image_in(&names, name) {
                    Ok(image) => Some(crate::names::descriptor_digest(&image.target)?),
                    Err(e) if e.kind() == ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                let recorded = blobs
                    .get(d.as_str())
                    .map_err(|e| Error::db("read a blob record", e))?
                    .is_some();
                if now_at.as_ref() != Some(d) || !recorded {
                    return Err(Error::NotFound(format!(
                        "image {name} (removed or moved as the {what} started)"
                    )));
                }
                resources
                    .insert((id.as_str(), "content", d.as_str()), ())
                    .map_err(|e| Error::db("add a lease resource", e))?;
            }
            txn.open_table(LEASES)
                .map_err(|e| Error::db("open the leases table", e))?
                .insert(id.as_str(), records::encode(&rec).as_slice())
                .map_err(|e| Error::db("write a lease", e))?;
        }
        txn.commit().map_err(|e| Error::db("commit a lease", e))?;
        Ok(Some(ReadLease {
            store: self.clone(),
            id,
            _owner: owner,
        }))
    }

    /// Creates a lease; `AlreadyExists` when the id is taken, `InvalidArgument` for an empty
    /// id or bad labels. Durable on return.
    pub fn create_lease(
        &self,
        id: &str,
        expires_at: Option<SystemTime>,
        labels: Labels,
    ) -> Result<Lease> {
        if id.is_empty() || id.len() > crate::content::MAX_REFERENCE_LEN {
            return Err(Error::InvalidArgument(format!(
                "lease id {id:?} must be 1 to 4096 bytes"
            )));
        }
        validate_labels(&labels)?;
        crate::store::owner::refuse_owner_labels(&labels)?;
        if id == crate::store::hold::CONTAINERD_LEASE {
            return Err(Error::InvalidArgument(format!(
                "lease id {id:?} is reserved: it holds what containerd keeps through \
                 `ocistore serve --containerd`"
            )));
        }
        let rec = LeaseRecord {
            created: Nanos::now(),
            expires: expires_at.map(Nanos::from),
            labels,
        };
        let txn = self.write_txn("create a lease")?;
        insert_lease(&txn, id, &rec)?;
        txn.commit().map_err(|e| Error::db("commit a lease", e))?;
        Ok(lease_of(self, id, rec))
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let txn = self.read_txn()?;
        let t = txn
            .open_table(LEASES)
            .map_err(|e| Error::db("open the leases table", e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| Error::db("list leases", e))? {
            let (k, v) = entry.map_err(|e| Error::db("list leases", e))?;
            out.push(lease_of(
                self,
                k.value(),
                records::decode(v.value(), k.value())?,
            ));
        }
        Ok(out)
    }

    /// Deletes a lease and releases what it held; `NotFound` when there is none.
    pub fn delete_lease(&self, id: &str) -> Result<()> {
        let txn = self.write_txn("delete a lease")?;
        {
            let mut t = txn
                .open_table(LEASES)
                .map_err(|e| Error::db("open the leases table", e))?;
            if t.remove(id)
                .map_err(|e| Error::db("remove a lease", e))?
                .is_none()
            {
                return Err(Error::NotFound(format!("lease {id:?}")));
            }
            let mut r = txn
                .open_table(LEASE_RESOURCES)
                .map_err(|e| Error::db("open the lease resources", e))?;
            let held: Vec<(String, String)> = resources_in(&r, id)?;
            for (k, v) in held {
                r.remove((id, k.as_str(), v.as_str()))
                    .map_err(|e| Error::db("release a lease resource", e))?;
            }
        }
        txn.commit()
            .map_err(|e| Error::db("commit a lease removal", e))
    }

    /// Adds `resource` to lease `id` (`NotFound` when the lease does not exist). The resource
    /// need not exist yet: a lease taken before a pull protects what the pull writes.
    pub fn add_lease_resource(&self, id: &str, resource: &Resource) -> Result<()> {
        let (kind, value) = resource.parts();
        let txn = self.write_txn("add a lease resource")?;
        {
            let leases = txn
                .open_table(LEASES)
                .map_err(|e| Error::db("open the leases table", e))?;
            if leases
                .get(id)
                .map_err(|e| Error::db("read a lease", e))?
                .is_none()
            {
                return Err(Error::NotFound(format!("lease {id:?}")));
            }
            txn.open_table(LEASE_RESOURCES)
                .map_err(|e| Error::db("open the lease resources", e))?
                .insert((id, kind, value.as_str()), ())
                .map_err(|e| Error::db("add a lease resource", e))?;
        }
        txn.commit()
            .map_err(|e| Error::db("commit a lease resource", e))
    }

    /// Removes `resource` from lease `id`; `NotFound` when the lease does not hold it.
    pub fn remove_lease_resource(&self, id: &str, resource: &Resource) -> Result<()> {
        let (kind, value) = resource.parts();
        let txn = self.write_txn("remove a lease resource")?;
        let removed = txn
            .open_table(LEASE_RESOURCES)
            .map_err(|e| Error::db("open the lease resources", e))?
            .remove((id, kind, value.as_str()))
            .map_err(|e| Error::db("remove a lease resource", e))?
            .is_some();
        if !removed {
            return Err(Error::NotFound(format!(
                "resource {resource} in lease {id:?}"
            )));
        }
        txn.commit()
            .map_err(|e| Error::db("commit a lease resource removal", e))
    }

    /// What lease `id` holds, sorted.
    pub fn lease_resources(&self, id: &str) -> Result<Vec<Resource>> {
        let txn = self.read_txn()?;
        let r = txn
            .open_table(LEASE_RESOURCES)
            .map_err(|e| Error::db("open the lease resources", e))?;
        resources_in(&r, id)?
            .into_iter()
            .map(|(k, v)| Resource::from_parts(&k, &v))
            .collect()
    }
}

/// The (kind, value) pairs held by lease `id`.
pub(crate) fn resources_in(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), ()>,
    id: &str,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in table
        .range((id, "", "")..)
        .map_err(|e| Error::db("read lease resources", e))?
    {
        let (k, _) = entry.map_err(|e| Error::db("read lease resources", e))?;
        let (lid, kind, value) = k.value();
        if lid != id {
            break;
        }
        out.push((kind.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// Inserts the lease `id` in `txn`; `AlreadyExists` when there is one.
pub(crate) fn insert_lease(
    txn: &redb::WriteTransaction,
    id: &str,
    rec: &LeaseRecord,
) -> Result<()> {
    let mut t = txn
        .open_table(LEASES)
        .map_err(|e| Error::db("open the leases table", e))?;
    if t.get(id)
        .map_err(|e| Error::db("read a lease", e))?
        .is_some()
    {
        return Err(Error::AlreadyExists(format!("lease {id:?}")));
    }
    t.insert(id, records::encode(rec).as_slice())
        .map_err(|e| Error::db("write a lease", e))?;
    Ok(())
}
