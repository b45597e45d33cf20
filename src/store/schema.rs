//! Every redb table of the store, and the schema version. Change this file in the same commit
//! as any schema change, together with a new step in `migrations/`.
//!
//! ```text
//! meta.redb
//! ├── meta          &str → &[u8]            "schema_version" → u32 LE, "store_id" → 16 bytes,
//! │                                          "created" → u64 LE nanoseconds
//! ├── blobs         &str → BlobRecord       digest string → {size, created, updated, labels}
//! ├── blob_labels   (&str, &str, &str) → () (label key, label value, digest): the label index
//! ├── ingests       &str → IngestRecord     reference → {total, expected, started, file id}
//! │                                                                     (v2 and later:)
//! ├── names         &str → NameRecord       normalised reference → {descriptor JSON, created,
//! │                                          updated, labels}
//! ├── refs          (&str, &str) → ()       (parent digest, child digest): manifest/index edges
//! ├── refs_rev      (&str, &str) → ()       (child digest, parent digest): the same, reversed
//! ├── leases        &str → LeaseRecord      lease id → {created, expires, labels}
//! ├── lease_resources (&str, &str, &str) → () (lease id, kind, value); kind is "content",
//! │                                         "ingest" or "name"
//! │                                                                     (v4 and later:)
//! └── uses          (&str, &str) → (u64, u64) (kind, id) → (last use in ns since the epoch,
//!                                           use count); kind is "image" (id: the name) or
//!                                           "content" (id: the digest)
//! ```
//!
//! Records are encoded by `records.rs` (a format byte, then bincode).
//!
//! Version 3 changed no table: it moved each ingest's bytes from `ingest/<id>/data` (locked
//! through `ingest/<id>/lock`) to `ingest/<id>.data` (locked itself). The version makes a
//! v2 binary, which would lock the old path, refuse a v3 store; the migration refuses while
//! a v2 process has the store open (see `migrations/v003_flat_ingests.rs`).

use redb::TableDefinition;

/// The schema version this code writes and understands.
pub(crate) const SCHEMA_VERSION: u32 = 4;

/// Key of the schema version in [`META`].
pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
/// Key of the store's random id in [`META`].
pub(crate) const META_STORE_ID: &str = "store_id";
/// Key of the store's creation time in [`META`].
pub(crate) const META_CREATED: &str = "created";

/// Store-wide facts.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Committed blobs by digest string.
pub(crate) const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// The label index: (key, value, digest) → ().
pub(crate) const BLOB_LABELS: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("blob_labels");
/// In-progress ingests by reference.
pub(crate) const INGESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("ingests");
/// Image names by normalised reference.
pub(crate) const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");
/// Edges from a manifest or index to its children: (parent, child) → ().
pub(crate) const REFS: TableDefinition<(&str, &str), ()> = TableDefinition::new("refs");
/// The same edges reversed: (child, parent) → ().
pub(crate) const REFS_REV: TableDefinition<(&str, &str), ()> = TableDefinition::new("refs_rev");
/// Leases by id.
pub(crate) const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// What each lease holds: (lease id, kind, value) → ().
pub(crate) const LEASE_RESOURCES: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("lease_resources");
/// When each image and blob was last used, and how often: (kind, id) → (ns, count).
pub(crate) const USES: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("uses");
