//! `Store::pull`: an image from a registry into the store.
//!
//! Resolve the reference (one manifest HEAD, then a GET by digest), keep every manifest and
//! config of an index, fetch layers only for the asked platforms, skip every blob the store
//! has. A pull is a batch: the blobs it finds present are leased by it (a concurrent gc
//! cannot take them), each download is sealed in its ingest (durable, size and digest
//! checked), and when all of it is durable the batch adopts the sealed ingests (their files
//! become the blobs, no copy) and one transaction publishes the blobs, their references and
//! the name.
//!
//! Each blob downloads into an ingest whose reference is `pull-<digest>`, a few at a time,
//! largest first. A connection cut mid-blob resumes from the bytes written with `Range`
//! (only a 206 whose `Content-Range` starts there continues; a 200 restarts the blob); a
//! pull killed outright resumes from the bytes on disk at the next pull; a second process
//! pulling the same blob waits for the first (the ingest's lock), takes over if it dies, and
//! never downloads it twice. More bytes than the descriptor says, or bytes that do not hash
//! to its digest, fail the blob and drop its ingest: nothing unverified is ever visible.

use std::sync::Arc;

use oci_spec::image::Platform;

use crate::content::Labels;
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::names::{self, AsName};
use crate::registry::{Registry, Repository, reference_of};
use crate::store::Store;

use super::fetch::Fetched;
use super::plan::{DocBytes, Plan};

/// Reports transfer progress (the CLI draws bars with it). Every method has a do-nothing
/// default.
pub trait Progress: Send + Sync {
    /// A blob transfer starts; `offset` bytes are already there (a resumed download).
    fn start(&self, _digest: &Digest, _size: u64, _offset: u64) {}
    /// `bytes` more bytes of `digest` went across.
    fn advance(&self, _digest: &Digest, _bytes: u64) {}
    /// The blob is done (transferred, present, or mounted).
    fn finish(&self, _digest: &Digest) {}
}

/// How to pull.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// Platforms whose layers to fetch (variant-aware); empty means this machine's.
    pub platforms: Vec<Platform>,
    /// Fetch the layers of every platform.
    pub all_platforms: bool,
    /// When the name is present and complete, make no request at all (linuxkit's "do not
    /// pull if present").
    pub if_missing: bool,
    /// Where progress goes.
    pub progress: Option<Arc<dyn Progress>>,
    /// The largest blob or document to fetch; `None`: [`DEFAULT_MAX_SIZE`] (as import).
    pub max_size: Option<u64>,
    /// Also fetch the referrers (signatures, SBOMs, attestations) of every manifest pulled,
    /// and theirs, with their blobs; they are stored in the same transaction as the name
    /// and kept by it (see [`Store::referrers`]).
    pub referrers: bool,
    /// With `referrers`: only referrers of this artifact type (and theirs of this type).
    pub artifact_type: Option<String>,
}

/// The bytes of manifests a pull fetches side by side: with manifests of 4 MiB (the most a
/// registry may send), two at a time; with ordinary ones, `concurrency` at a time.
pub(super) const MANIFESTS_IN_FLIGHT: u64 = 8 << 20;

/// How deep [`PullOptions::referrers`] follows referrers of referrers: a bound against a
/// hostile registry's endless chain (a signature on an SBOM is depth 2).
pub const MAX_REFERRER_DEPTH: usize = 32;

/// The largest blob a pull fetches unless told otherwise: 64 GiB, as import reads.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 30;

/// Room a pull leaves on the root's file system beyond what it fetches: 1% of what it
/// fetches, at least 64 MiB (metadata, the file system's own needs).
fn free_space_margin(fetch: u64) -> u64 {
    (fetch / 100).max(64 << 20)
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platforms", &self.platforms)
            .field("all_platforms", &self.all_platforms)
            .field("if_missing", &self.if_missing)
            .field("max_size", &self.max_size)
            .field("referrers", &self.referrers)
            .field("artifact_type", &self.artifact_type)
            .finish()
    }
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PullOutcome {
    /// The name written (normalised).
    pub name: String,
    /// The digest it points at.
    pub digest: String,
    /// The media type of that manifest or index.
    pub media_type: String,
    /// Blobs fetched (manifests included).
    pub blobs_fetched: u64,
    /// Blobs the store already had.
    pub blobs_present: u64,
    /// Bytes that crossed the wire for blobs (a resumed blob counts what was fetched now).
    pub bytes_fetched: u64,
    /// Referrers stored with the image ([`PullOptions::referrers`]).
    pub referrers: u64,
}

/// The label that records where a blob came from (containerd's convention): the value is
/// the comma-separated repositories on that host.
pub fn source_label(host: &str) -> String {
    format!("containerd.io/distribution.source.{host}")
}

impl Store {
    /// Pulls `reference` from its registry; see the module docs. Blocks until done; the
    /// name and everything it needs for the asked platforms are durable on return.
    ///
    /// Errors: `InvalidArgument` for a malformed reference; `NotFound` when the registry
    /// does not have it; `Unauthorized`; `Unavailable` for network failures once retries
    /// are spent; `FailedPrecondition` for content that does not match its descriptor.
    /// Each names host, repository and what was asked.
    pub fn pull(
        &self,
        registry: &Registry,
        reference: impl AsName,
        opts: &PullOptions,
    ) -> Result<PullOutcome> {
        self.writable("pull")?;
        let name = reference.as_name()?.into_owned();
        let key = name.to_string();
        let repo = Repository::of(&name);
        let platforms = if opts.all_platforms {
            Vec::new()
        } else if opts.platforms.is_empty() {
            vec![names::host_platform()]
        } else {
            opts.platforms.clone()
        };
        let local = self.image(&name).ok();
        // Checked by the target seen, not the name: a prune or `image rm` elsewhere may
        // remove the name meanwhile, and then the pull just goes on.
        let complete = |store: &Store, image: &crate::names::Image| -> Result<bool> {
            if opts.all_platforms {
                return Ok(false);
            }
            for p in &platforms {
                if !store.check_target(&image.target, p)?.complete {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        if let Some(image) = local.as_ref().filter(|_| opts.if_missing)
            && complete(self, image)?
        {
            self.record_use([crate::store::uses::Used::Image(key.clone())]);
            return Ok(PullOutcome {
                name: key,
                digest: image.target.digest().to_string(),
                media_type: image.target.media_type().to_string(),
                ..PullOutcome::default()
            });
        }
        let wanted = reference_of(&name);
        let root = match &local {
            // Nothing here to compare with: one GET resolves and fetches (a HEAD first would
            // cost a round trip, about a tenth of a small image's pull).
            None => registry
                .manifest_get(&repo, &wanted)?
                .ok_or_else(|| Error::NotFound(format!("{repo}: manifest {wanted}")))?,
            Some(image) => {
                let head = registry
                    .manifest_head(&repo, &wanted)?
                    .ok_or_else(|| Error::NotFound(format!("{repo}: manifest {wanted}")))?;
                if image.target.digest().to_string() == head.digest.to_string()
                    && !opts.referrers
                    && complete(self, image)?
                {
                    self.record_use([crate::store::uses::Used::Image(key.clone())]);
                    return Ok(PullOutcome {
                        name: key,
                        digest: head.digest.to_string(),
                        media_type: image.target.media_type().to_string(),
                        ..PullOutcome::default()
                    });
                }
                registry
                    .manifest_get(&repo, head.digest.as_str())?
                    .ok_or_else(|| Error::NotFound(format!("{repo}: manifest {}", head.digest)))?
            }
        };
        if let Some(pinned) = name.digest
            && pinned != root.descriptor.digest
        {
            return Err(Error::FailedPrecondition(format!(
                "{repo}: asked for {pinned}, the registry answered for {}",
                root.descriptor.digest
            )));
        }
        let artifact_type = crate::store::referrers::artifact_type_of(&root.bytes);
        let root_desc = root.descriptor.clone();
        let mut plan = Plan::make(
            self,
            registry,
            &repo,
            Plan::root(&repo, root.descriptor, root.bytes)?,
            &platforms,
        )?;
        let referrers = if opts.referrers {
            plan.add_referrers(self, registry, &repo, opts.artifact_type.as_deref())?
        } else {
            0
        };
        self.check_sizes(&repo, &plan, opts.max_size.unwrap_or(DEFAULT_MAX_SIZE))?;
        let mut labels = Labels::new();
        labels.insert(source_label(&repo.host), repo.path.clone());
        let mut out = PullOutcome {
            name: key.clone(),
            digest: root_desc.digest.to_string(),
            media_type: root_desc.media_type.clone(),
            referrers,
            ..PullOutcome::default()
        };
        // One batch, whose lease is made together with leases on every blob wanted before
        // the downloads start: what the store has, so that a gc meanwhile cannot take it
        // from under the name, and the downloads, which once sealed wait unlocked for the
        // batch to adopt them. The batch commits everything with the name in one transaction.
        let wanted: Vec<(String, u64, Digest)> = plan
            .blobs
            .iter()
            .map(|job| (job.digest, job.size))
            .chain(
                plan.docs
                    .iter()
                    .filter(|(_, doc)| !matches!(doc, DocBytes::Memory(_)))
                    .map(|(d, _)| (d.digest, d.size)),
            )
            .map(|(digest, size)| (format!("pull-{digest}"), size, digest))
            .collect();
        let (mut batch, _) = self.batch_wanting(&wanted)?;
        let mut sealed = Vec::new();
        for (job, got) in
            plan.blobs
                .iter()
                .zip(self.fetch_all(registry, &repo, &plan.blobs, opts)?)
        {
            match got {
                Fetched::Present => {
                    // Leased by the batch, so that a gc cannot take it before the name lands.
                    if !batch.is_committed(&job.digest)? {
                        return Err(Error::FailedPrecondition(format!(
                            "content {} was removed while the pull ran; pull again",
                            job.digest
                        )));
                    }
                    out.blobs_present += 1;
                }
                Fetched::Sealed(s, bytes) => {
                    if bytes > 0 {
                        out.blobs_fetched += 1;
                        out.bytes_fetched += bytes;
                    } else {
                        out.blobs_present += 1; // another process's complete download
                    }
                    sealed.push(*s);
                }
            }
        }
        // Adopted in digest order.
        sealed.sort_by_key(|s| s.digest);
        for s in &sealed {
            batch.adopt(s, labels.clone())?;
        }
        for (desc, doc) in &plan.docs {
            match doc {
                DocBytes::Memory(bytes) => {
                    let staged = batch.stage(
                        &mut &bytes[..],
                        Some(&desc.digest),
                        Some(desc.size),
                        labels.clone(),
                    )?;
                    if staged.written {
                        out.blobs_fetched += 1;
                        out.bytes_fetched += desc.size;
                    } else {
                        out.blobs_present += 1;
                    }
                }
                // A document was sealed or found before the batch could lease it: another
                // pull may have committed it since, and an `image rm` and a gc removed it.
                // Then it is fetched again (one document, in memory) and staged.
                DocBytes::Sealed(s) => {
                    match batch.adopt(s, labels.clone()) {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::FailedPrecondition => {
                            tracing::debug!(digest = %desc.digest, error = %e, "fetched again");
                            self.restage(&mut batch, registry, &repo, desc, &labels)?;
                            // Its ingest's file went with another pull's commit: no record
                            // of it is left behind.
                            if !s.path.exists() {
                                self.drop_ingest(&s.reference);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                    out.blobs_fetched += 1;
                    out.bytes_fetched += desc.size;
                }
                DocBytes::Present => {
                    if batch.is_committed(&desc.digest)? {
                        out.blobs_present += 1;
                    } else {
                        self.restage(&mut batch, registry, &repo, desc, &labels)?;
                        out.blobs_fetched += 1;
                        out.bytes_fetched += desc.size;
                    }
                }
            }
        }
        let target = crate::store::referrers::with_artifact_type(
            names::descriptor(&root_desc.media_type, &root_desc.digest, root_desc.size)?,
            artifact_type.as_deref(),
        );
        batch.put_name(&name, target, None)?;
        batch.commit()?;
        Ok(out)
    }

    /// Refuses a plan before anything is fetched when a blob is larger than `max_size`, when
    /// a descriptor's size disagrees with the blob the store has, or when what the store
    /// lacks would not fit the root's free space with a margin; the error names the blob
    /// (or the total), its size and the limit.
    fn check_sizes(&self, repo: &Repository, plan: &Plan, max_size: u64) -> Result<()> {
        let mut missing = 0u64;
        for job in &plan.blobs {
            if job.size > max_size {
                return Err(Error::FailedPrecondition(format!(
                    "{repo}: blob {} is {} bytes, more than the pull's maximum of {max_size} \
                     (--max-size)",
                    job.digest, job.size
                )));
            }
            match self.blob_record(&job.digest)? {
                None => missing = missing.saturating_add(job.size),
                // The digest is the bytes: a descriptor that gives another size is wrong,
                // and naming it would leave an image that check, export and push refuse.
                Some(rec) if rec.size != job.size => {
                    return Err(Error::FailedPrecondition(format!(
                        "{repo}: a manifest gives blob {} a size of {} bytes; it is {} bytes",
                        job.digest, job.size, rec.size
                    )));
                }
                Some(_) => {}
            }
        }
        let free = crate::prune::available_bytes(self.root())?;
        let need = missing.saturating_add(free_space_margin(missing));
        if need > free {
            return Err(Error::FailedPrecondition(format!(
                "{repo}: the pull needs {missing} bytes (and a margin of {} bytes) but the \
                 store's file system has {free} bytes free",
                need - missing
            )));
        }
        Ok(())
    }
}
