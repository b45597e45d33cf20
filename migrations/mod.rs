//! The schema history of ocistore's metadata database: one file per version step, applied in
//! order inside one write transaction when a store is opened (see `src/store/migrate.rs`).
//!
//! A step never changes once it has shipped; a new schema version adds a file here, appends
//! it to [`STEPS`], bumps `SCHEMA_VERSION` in `src/store/schema.rs`, and commits a fixture
//! store of the old version under `tests/fixtures/`.

use redb::WriteTransaction;

use crate::error::Result;

mod v001_initial;

/// One schema step: brings a store at version `to - 1` to version `to`.
pub(crate) struct Step {
    /// The version the store has after this step.
    pub to: u32,
    /// What the step does, for logs.
    pub what: &'static str,
    /// Applies the step inside the open-time write transaction.
    pub apply: fn(&WriteTransaction) -> Result<()>,
}

/// Every step, in order.
pub(crate) const STEPS: &[Step] = &[Step {
    to: 1,
    what: "blobs, blob_labels, ingests",
    apply: v001_initial::apply,
}];
