//! ocistore: an embedded, transactional content store for OCI content.
//!
//! Metadata (descriptors, labels, ingest status) lives in one redb database; blob bytes live in
//! sharded read-only files under `blobs/<alg>/<hh>/<hex>`. The store implements containerd's
//! content interfaces — [`Provider`], [`Manager`], [`Ingester`], [`IngestManager`] — with
//! containerd's filter language, crash-safe commits, and safe sharing between processes.
//!
//! ```
//! use ocistore::{Store, Manager, helpers};
//!
//! # fn main() -> ocistore::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path())?;
//! let digest = helpers::write_blob(&store, "example", &mut &b"hello"[..], None, None, Default::default())?;
//! assert_eq!(store.info(&digest)?.size, 5);
//! assert_eq!(helpers::read_blob(&store, &digest)?, b"hello");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod blobs;
#[cfg(feature = "registry")]
pub mod cache;
pub mod content;
pub mod digest;
pub mod error;
pub mod filter;
pub mod helpers;
pub mod memory;
pub mod names;
pub mod oci;
pub mod query;
pub mod reference;
pub mod refs;
#[cfg(feature = "registry")]
pub mod registry;
#[cfg(feature = "containerd")]
pub mod serve;
pub mod store;
#[cfg(feature = "testsuite")]
pub mod testsuite;
#[cfg(feature = "registry")]
pub mod transfer;
pub mod usage;

pub use content::{
    ContentStore, Info, IngestManager, Ingester, Labels, Manager, Provider, ReaderAt, Status,
    Writer,
};
pub use digest::{Algorithm, Digest, Hasher};
pub use error::{Error, ErrorKind, Result};
pub use memory::MemoryStore;
pub use names::{Image, Name};
#[cfg(feature = "registry")]
pub use registry::{Registry, RegistryOptions};
// gc, prune, fsck and the diffID labels work on the store's tables, so they live in it;
// their paths stay one hop from the crate root.
pub use store::images::Completeness;
pub use store::lease::{Lease, Resource};
pub use store::owner::LeaseOwner;
pub use store::uses::{LastUse, Used};
pub use store::{OpenOptions, Store};
pub use store::{gc, prune, uncompressed, verify};
#[cfg(feature = "registry")]
pub use transfer::{pull::PullOptions, push::PushOptions};
