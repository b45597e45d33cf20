//! Brings a store's schema up to [`SCHEMA_VERSION`] when it is opened.

use redb::{Database, ReadableDatabase, ReadableTable, TableError};

use crate::error::{Error, Result};
use crate::store::schema::{
    META, META_CREATED, META_SCHEMA_VERSION, META_STORE_ID, SCHEMA_VERSION,
};

#[path = "../../migrations/mod.rs"]
mod steps;

/// The schema version recorded in `db` (0 for a new, empty database).
pub(crate) fn recorded_version(db: &dyn ReadableDatabase) -> Result<u32> {
    let txn = db
        .begin_read()
        .map_err(|e| Error::db("begin a read transaction", e))?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(Error::db("open the meta table", e)),
    };
    read_version(&table)
}

fn read_version(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u32> {
    let Some(v) = table
        .get(META_SCHEMA_VERSION)
        .map_err(|e| Error::db("read the schema version", e))?
    else {
        return Ok(0);
    };
    let bytes: [u8; 4] = v
        .value()
        .try_into()
        .map_err(|_| Error::Corrupted("schema version record is not 4 bytes".into()))?;
    Ok(u32::from_le_bytes(bytes))
}

/// Refuses a store newer than this code.
pub(crate) fn check_supported(found: u32) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::IncompatibleSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies every missing step in one write transaction. Several processes may race here:
/// the version is read again inside the transaction, so each step runs once.
pub(crate) fn migrate(db: &Database, blobs_root: &std::path::Path) -> Result<()> {
    let found = recorded_version(db)?;
    check_supported(found)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let txn = db
        .begin_write()
        .map_err(|e| Error::db("begin the migration transaction", e))?;
    let found = {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| Error::db("open the meta table", e))?;
        let found = read_version(&meta)?;
        check_supported(found)?;
        if found == 0 {
            let now = crate::store::records::Nanos::now().0;
            let id = blake3::hash(format!("{}:{now}", std::process::id()).as_bytes());
            meta.insert(META_STORE_ID, &id.as_bytes()[..16])
                .map_err(|e| Error::db("write the store id", e))?;
            meta.insert(META_CREATED, &now.to_le_bytes()[..])
                .map_err(|e| Error::db("write the creation time", e))?;
        }
        found
    };
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    // A new store's steps create its tables; its open should not pay for moving old layouts
    // (step 3 reads /proc/locks, up to 15 ms on a busy machine, on every `pull` into a new
    // directory).
    let steps = steps::STEPS
        .iter()
        .filter(|s| s.to > found && (found > 0 || s.on_create));
    for step in steps {
        tracing::info!(to = step.to, what = step.what, "migrating store schema");
        (step.apply)(&txn, blobs_root)?;
    }
    txn.open_table(META)
        .map_err(|e| Error::db("open the meta table", e))?
        .insert(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_le_bytes()[..])
        .map_err(|e| Error::db("write the schema version", e))?;
    txn.commit()
        .map_err(|e| Error::db("commit the migration", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_contiguous_and_end_at_current() {
        for (i, step) in steps::STEPS.iter().enumerate() {
            assert_eq!(step.to as usize, i + 1);
        }
        assert_eq!(steps::STEPS.last().map(|s| s.to), Some(SCHEMA_VERSION));
    }
}
