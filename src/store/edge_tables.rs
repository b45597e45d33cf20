//! The edge tables (`refs` and `refs_rev` on disk): edges from a manifest or index to its
//! children, recorded in the transaction that commits the parent, queryable forwards and in
//! reverse.

use redb::{ReadableTable, WriteTransaction};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::schema::{REFS, REFS_REV};

/// Inserts the edges `parent → child` for every child, both directions.
pub(crate) fn record(txn: &WriteTransaction, parent: &str, children: &[Digest]) -> Result<()> {
    if children.is_empty() {
        return Ok(());
    }
    let mut fwd = txn
        .open_table(REFS)
        .map_err(|e| Error::db("open the refs table", e))?;
    let mut rev = txn
        .open_table(REFS_REV)
        .map_err(|e| Error::db("open the refs_rev table", e))?;
    for child in children {
        let c = child.to_string();
        fwd.insert((parent, c.as_str()), ())
            .map_err(|e| Error::db("record a reference", e))?;
        rev.insert((c.as_str(), parent), ())
            .map_err(|e| Error::db("record a reference", e))?;
    }
    Ok(())
}

/// Removes every edge out of `parent` (its bytes are gone, so are the facts about them).
pub(crate) fn forget(txn: &WriteTransaction, parent: &str) -> Result<()> {
    let mut fwd = txn
        .open_table(REFS)
        .map_err(|e| Error::db("open the refs table", e))?;
    let mut rev = txn
        .open_table(REFS_REV)
        .map_err(|e| Error::db("open the refs_rev table", e))?;
    let children: Vec<String> = range_second(&fwd, parent)?;
    for c in children {
        fwd.remove((parent, c.as_str()))
            .map_err(|e| Error::db("remove a reference", e))?;
        rev.remove((c.as_str(), parent))
            .map_err(|e| Error::db("remove a reference", e))?;
    }
    Ok(())
}

/// The second components of every `(first, *)` key.
pub(crate) fn range_second(
    table: &impl ReadableTable<(&'static str, &'static str), ()>,
    first: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in table
        .range((first, "")..)
        .map_err(|e| Error::db("read references", e))?
    {
        let (k, _) = entry.map_err(|e| Error::db("read references", e))?;
        let (a, b) = k.value();
        if a != first {
            break;
        }
        out.push(b.to_owned());
    }
    Ok(out)
}

impl Store {
    /// The children `digest` names (config, layers, manifests, subject), sorted. Empty for a
    /// blob that is not a manifest or index, or not stored.
    pub fn children(&self, digest: &Digest) -> Result<Vec<Digest>> {
        self.edges(REFS, digest)
    }

    /// The manifests and indexes that name `digest` as a child, sorted.
    pub fn parents(&self, digest: &Digest) -> Result<Vec<Digest>> {
        self.edges(REFS_REV, digest)
    }

    fn edges(
        &self,
        table: redb::TableDefinition<(&'static str, &'static str), ()>,
        digest: &Digest,
    ) -> Result<Vec<Digest>> {
        let txn = self.read_txn()?;
        let t = txn
            .open_table(table)
            .map_err(|e| Error::db("open a refs table", e))?;
        range_second(&t, &digest.to_string())?
            .into_iter()
            .map(|s| {
                Digest::parse(&s)
                    .map_err(|_| Error::Corrupted(format!("reference to malformed digest {s:?}")))
            })
            .collect()
    }
}
