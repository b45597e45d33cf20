//! Schema version 1: the content store — blobs with labels, the label index, ingests.

use redb::WriteTransaction;

use crate::error::{Error, Result};
use crate::store::schema::{BLOB_LABELS, BLOBS, INGESTS, META};

pub(crate) fn apply(txn: &WriteTransaction, _blobs: &std::path::Path) -> Result<()> {
    let create = |e| Error::db("create the version 1 tables", e);
    txn.open_table(META).map_err(create)?;
    txn.open_table(BLOBS).map_err(create)?;
    txn.open_table(BLOB_LABELS).map_err(create)?;
    txn.open_table(INGESTS).map_err(create)?;
    Ok(())
}
