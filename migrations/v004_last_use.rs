//! Schema version 4: the `uses` table, when each image (name) and blob was last used and how
//! often. Nothing is backfilled: an item without a row counts as last used when its record
//! was last written (a name's `updated`, a blob's `updated`), which is what prune falls back
//! to.

use std::path::Path;

use redb::WriteTransaction;

use crate::error::{Error, Result};
use crate::store::schema::USES;

pub(crate) fn apply(txn: &WriteTransaction, _blobs_root: &Path) -> Result<()> {
    txn.open_table(USES)
        .map_err(|e| Error::db("create the version 4 table uses", e))?;
    Ok(())
}
