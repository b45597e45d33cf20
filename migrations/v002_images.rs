//! Schema version 2: the image layer — names, the references between manifests and their
//! children (both directions), leases. References of manifests and indexes already stored
//! are computed from their bytes, so that gc sees the edges of content committed under v1.

use std::path::Path;

use redb::{ReadableTable, WriteTransaction};

use crate::error::{Error, Result};
use crate::store::schema::{BLOBS, LEASE_RESOURCES, LEASES, NAMES, REFS, REFS_REV};

pub(crate) fn apply(txn: &WriteTransaction, blobs_root: &Path) -> Result<()> {
    let create = |e| Error::db("create the version 2 tables", e);
    txn.open_table(NAMES).map_err(create)?;
    txn.open_table(LEASES).map_err(create)?;
    txn.open_table(LEASE_RESOURCES).map_err(create)?;
    let mut refs = txn.open_table(REFS).map_err(create)?;
    let mut rev = txn.open_table(REFS_REV).map_err(create)?;
    let blobs = txn.open_table(BLOBS).map_err(create)?;
    let read = |e| Error::db("read blobs for references", e);
    let mut backfill = Vec::new();
    for entry in blobs.iter().map_err(read)? {
        let (k, v) = entry.map_err(read)?;
        let rec: crate::store::records::BlobRecord =
            crate::store::records::decode(v.value(), k.value())?;
        if rec.size <= crate::edges::MAX_PARSED {
            backfill.push(k.value().to_owned());
        }
    }
    drop(blobs);
    for key in backfill {
        let digest = crate::digest::Digest::parse(&key)
            .map_err(|_| Error::Corrupted(format!("blob record under malformed key {key:?}")))?;
        let path = crate::blobs::BlobDir::new(blobs_root.to_path_buf()).path_for(&digest);
        let Some(children) = crate::edges::children_of_path(&path)? else {
            continue;
        };
        for child in children {
            let c = child.to_string();
            refs.insert((key.as_str(), c.as_str()), ())
                .map_err(|e| Error::db("record a reference", e))?;
            rev.insert((c.as_str(), key.as_str()), ())
                .map_err(|e| Error::db("record a reference", e))?;
        }
    }
    Ok(())
}
