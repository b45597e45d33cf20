//! The integration tests, in one binary (one link of the crate): a module per area, and the
//! support they share at the root. `cargo test` runs the areas that need nothing but Rust;
//! the ones that need real tools (`interop`, `oci_interchange`, `registry`, `uncompressed`,
//! `containerd`) mark those tests `#[ignore]`, and `.ci/run` installs the tools and runs them
//! with `--ignored` and those module paths as filters. `tests/crash.rs`, `multiprocess.rs`
//! and `stress.rs` stay binaries of their own: each runs itself again as a child process.

// Support shared by the areas.
#[path = "common/cmd.rs"]
mod cmd;
#[path = "registry/doubles.rs"]
mod doubles;
#[path = "registry/harness.rs"]
mod harness;
#[path = "common/containerd.rs"]
mod private_containerd;
#[path = "common/streams.rs"]
mod streams;
#[path = "registry/images.rs"]
mod test_images;

// The areas.
mod cache;
mod cli;
mod conformance;
mod containerd;
mod fuzz_regressions;
mod hostile_corpus;
mod images;
mod interop;
mod maintenance;
mod model;
mod oci_interchange;
mod prune;
mod referrers_gc;
mod registry;
mod reliability;
mod sample;
mod schema;
mod uncompressed;
