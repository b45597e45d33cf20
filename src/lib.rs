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
//!
//! # Where things are
//!
//! | concept | where | may use |
//! |---|---|---|
//! | blobs, ingests, labels (containerd's content API) | [`content`] (the traits), [`Store`] | — |
//! | digests, filters, image names | [`digest`], [`filter`], [`names`] (with [`names::grammar`]) | each other only |
//! | the store: tables, commits, names, leases, batches | [`store`] ([`Store`], [`store::batch`], [`store::lease`]) | the vocabulary above, [`oci`] |
//! | gc, prune, fsck, diffIDs | [`gc`], [`prune`], [`verify`], [`uncompressed`] (in the store) | the store's tables |
//! | OCI documents: media types, children, referrers, layouts | [`oci`], [`oci::referrers`], [`oci::import`], [`oci::export`] | the content traits, not the store |
//! | a registry's API (feature `registry`) | `registry` (`Registry`, `registry::referrers`) | [`oci`]'s document model; never the store |
//! | pull and push (feature `registry`) | `transfer` (`PullOptions`, `PushOptions`) | `registry` and the store |
//! | the read-through cache (feature `registry`) | `cache` | `registry`, `transfer`, the store |
//! | containerd's content service (feature `containerd`) | `serve` | the store's public API |
//! | the conformance suite and model (feature `testsuite`) | `testsuite` | the public API |
//!
//! Options and outcomes of an operation live beside it (`gc::Options`, `prune::Options`,
//! `oci::import::Options`; `PullOptions` and `PushOptions` also at the root). Every
//! error is an [`Error`] whose [`ErrorKind`] follows containerd's classes.
#![deny(missing_docs)]

pub mod blobs;
#[cfg(feature = "registry")]
pub mod cache;
pub mod content;
pub mod digest;
pub mod edges;
pub mod error;
pub mod filter;
pub mod helpers;
pub mod memory;
pub mod names;
pub mod oci;
pub mod query;
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
pub use names::{AsName, Image, Name};
#[cfg(feature = "registry")]
pub use registry::{Registry, RegistryOptions};
// gc, prune, fsck and the diffID labels work on the store's tables, so they live in it;
// their paths stay one hop from the crate root.
pub use store::completeness::Completeness;
pub use store::lease::{Lease, Resource};
pub use store::owner::LeaseOwner;
pub use store::uses::{LastUse, Used};
pub use store::{OpenOptions, Store};
pub use store::{gc, prune, uncompressed, verify};
#[cfg(feature = "registry")]
pub use transfer::{pull::PullOptions, push::PushOptions};
