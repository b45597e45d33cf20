//! The schema history of ocistore's metadata database: one file per version step, applied in
//! order inside one write transaction when a store is opened (see `src/store/migrate.rs`).
//!
//! A step never changes once it has shipped; a new schema version adds a file here, appends
//! it to [`STEPS`], bumps `SCHEMA_VERSION` in `src/store/schema.rs`, and commits a fixture
//! store of the old version under `tests/fixtures/`.

use std::path::Path;

use redb::WriteTransaction;

use crate::error::Result;

mod v001_initial;
mod v002_images;
mod v003_flat_ingests;
mod v004_last_use;

/// One schema step: brings a store at version `to - 1` to version `to`.
pub(crate) struct Step {
    /// The version the store has after this step.
    pub to: u32,
    /// What the step does, for logs.
    pub what: &'static str,
    /// Applies the step inside the open-time write transaction; the path is the blob tree.
    pub apply: fn(&WriteTransaction, &Path) -> Result<()>,
    /// Whether creating a store runs it: false for a step that only moves what an older
    /// version left on disk (a new store has nothing to move, and no older process can have
    /// it open: one would have recorded a schema version, and now refuses the newer one).
    pub on_create: bool,
}

/// Every step, in order.
pub(crate) const STEPS: &[Step] = &[
    Step {
        to: 1,
        what: "blobs, blob_labels, ingests",
        apply: v001_initial::apply,
        on_create: true,
    },
    Step {
        to: 2,
        what: "names, refs, refs_rev, leases, lease_resources; refs of existing manifests",
        apply: v002_images::apply,
        on_create: true,
    },
    Step {
        to: 3,
        what: "ingest data moves from ingest/<id>/data to ingest/<id>.data, its own lock",
        apply: v003_flat_ingests::apply,
        on_create: false,
    },
    Step {
        to: 4,
        what: "uses: last use and use count of images and blobs",
        apply: v004_last_use::apply,
        on_create: true,
    },
];
