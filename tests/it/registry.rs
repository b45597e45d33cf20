//! The registry client against a real registry: `ocistore image pull|push` and `ocistore
//! remote …` with distribution's `docker-registry` on loopback, cross-checked with skopeo
//! (and containerd's `ctr`).
//!
//! Every test is `#[ignore]`d so that `cargo test` needs nothing but Rust; `.ci/run`
//! installs the tools and runs `cargo test --test it registry:: -- --ignored --test-threads=1`.
//! A missing tool fails the test with a message naming it: nothing is skipped silently.
//!
//! Each test starts its own registries (private config, storage and log in a temporary
//! directory, a free loopback port) and kills them when it ends. Requests are counted from
//! the registry's access log (`"METHOD URI HTTP/1.1" STATUS SIZE "REFERER" "USER-AGENT"`),
//! keeping only those whose user agent is `ocistore/…`. Test images are OCI layouts built
//! here from deterministic pseudo-random bytes (gzip-framed, so that skopeo pushes them
//! unchanged) and put into a registry with `skopeo copy --all --preserve-digests`.
//!
//! Tiny fake servers stand in where distribution 2.8 cannot: one that pages tag lists with
//! `Link` (2.8 ignores `n` and `last`), a broken mirror that drops every connection (to count
//! how often it is tried), a fault-injecting proxy in front of a real registry (cut
//! connections, 429/503, a 200 to a `Range`, wrong or extra bytes, delays: [`FaultProxy`]),
//! and a token server for distribution's token auth ([`TokenServer`]).
//!
//! The tests are here; the harness (tools, [`Reg`], [`Env`], skopeo, containerd, TLS, the
//! fixtures and shared checks) is in `registry/harness.rs`, the test images in
//! `registry/images.rs` and the test doubles in `registry/doubles.rs`.

use crate::cmd;
use crate::doubles;
use crate::harness;
use crate::private_containerd as containerd;
#[path = "registry/hostile.rs"]
mod hostile;
use crate::test_images as images;
#[path = "registry/referrers.rs"]
mod referrers;
use crate::streams;

#[path = "registry/auth.rs"]
mod auth;
#[path = "registry/cache.rs"]
mod cache;
#[path = "registry/concurrency.rs"]
mod concurrency;
#[path = "registry/faults.rs"]
mod faults;
#[path = "registry/memory.rs"]
mod memory;
#[path = "registry/prune.rs"]
mod prune;
#[path = "registry/pull.rs"]
mod pull;
#[path = "registry/push.rs"]
mod push;
#[path = "registry/remote.rs"]
mod remote;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ocistore::registry::Repository;
use serde_json::{Value, json};

use containerd::Containerd;
use doubles::{
    ConnectProxy, Documents, Fault, FaultProxy, PagingTags, Routes, Rule, Seen, Slammer,
    TokenServer, seen_list,
};
use harness::{
    Env, MIB, Reg, RegOpts, Req, anonymous, auth_json, blob_gets, failed_pull_left, faulty,
    fetched_once_from, free_port, host_platform, ingest_bytes, list, mirror_toml,
    nothing_unverified, p, poll, pulled_whole, pushed, registry_with, repull_adopts, run_max_rss,
    sh, sha256, skopeo_copy, skopeo_digest, skopeo_push, skopeo_reads, succeed, tls_registry,
};
use images::{AMD64, AMD64_ARM64, OCI_INDEX, OCI_MANIFEST, PlatformImage};
use streams::{Stream, maintenance, name_not_found, never, owned, run_streams, succeeded};
