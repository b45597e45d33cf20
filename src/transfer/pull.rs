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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::image::Platform;

use crate::content::{IngestManager, Labels, Writer};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::helpers::largest_first;
use crate::names::{self, Name, platform_matches};
use crate::oci::referrers::MAX_REFERRERS;
use crate::oci::{Child, ChildKind, is_index};
use crate::registry::{Registry, RemoteDescriptor, Repository, reference_of};
use crate::store::writer::StoreWriter;
use crate::store::{Sealed, Store};

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
const MANIFESTS_IN_FLIGHT: u64 = 8 << 20;

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

/// What fetching one blob came to.
enum Fetched {
    /// The store has it.
    Present,
    /// Sealed in its ingest, with the bytes this process transferred for it.
    Sealed(Box<Sealed>, u64),
}

/// A blob to fetch.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
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
        reference: &str,
        opts: &PullOptions,
    ) -> Result<PullOutcome> {
        self.writable("pull")?;
        let name = Name::parse(reference)?;
        let key = name.to_string();
        let repo = Repository::of(&name);
        let platforms = if opts.all_platforms {
            Vec::new()
        } else if opts.platforms.is_empty() {
            vec![names::host_platform()]
        } else {
            opts.platforms.clone()
        };
        let local = self.image(&key).ok();
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
        batch.put_name(&key, target, None)?;
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

    /// Fetches every job, `registry.concurrency()` at a time, largest first; the results in
    /// the jobs' order.
    fn fetch_all(
        &self,
        registry: &Registry,
        repo: &Repository,
        jobs: &[Job],
        opts: &PullOptions,
    ) -> Result<Vec<Fetched>> {
        largest_first(
            jobs,
            registry.concurrency(),
            |j| j.size,
            |j| self.fetch_blob(registry, repo, j, opts),
        )
    }

    /// Fetches one blob into its ingest and seals it (durable, size and digest checked);
    /// `Present` when the store has it (or another process committed it meanwhile).
    fn fetch_blob(
        &self,
        registry: &Registry,
        repo: &Repository,
        job: &Job,
        opts: &PullOptions,
    ) -> Result<Fetched> {
        let reference = format!("pull-{}", job.digest);
        let Some(mut w) = self.claim_ingest(&reference, job)? else {
            if let Some(p) = &opts.progress {
                p.finish(&job.digest);
            }
            return Ok(Fetched::Present);
        };
        let mut offset = w.status()?.offset;
        if offset > job.size {
            w.truncate(0)?;
            offset = 0;
        }
        if let Some(p) = &opts.progress {
            p.start(&job.digest, job.size, offset);
        }
        let mut fetched = 0u64;
        let mut attempt = 0u32;
        while offset < job.size {
            attempt += 1;
            let retry = |attempt: u32, e: Error| -> Result<()> {
                if attempt >= registry.retry_policy().attempts
                    || !matches!(e.kind(), ErrorKind::Unavailable)
                {
                    return Err(e);
                }
                std::thread::sleep(registry.backoff(attempt));
                Ok(())
            };
            // The request itself is retried inside the client; what is retried here is a
            // body cut short (resumed from the bytes written).
            let stream = registry.blob_get(repo, &job.digest, offset, Some(job.size))?;
            if stream.start != offset {
                w.truncate(0)?;
                offset = 0;
            }
            // Straight into the ingest's buffers; one byte more than the descriptor allows
            // is enough to know the registry sent too much.
            let mut body = stream.reader.take((job.size - offset).saturating_add(1));
            let (n, cut) = w.read_from(&mut body, &mut |chunk| {
                if let Some(p) = &opts.progress {
                    p.advance(&job.digest, chunk.len() as u64);
                }
            })?;
            offset += n;
            fetched += n;
            if offset > job.size {
                if let Err(e) = w.discard() {
                    tracing::warn!(reference, error = %e, "could not drop a failed download");
                }
                return Err(Error::FailedPrecondition(format!(
                    "{repo}: blob {}: the registry sent more than the descriptor's {} bytes",
                    job.digest, job.size
                )));
            }
            if offset < job.size {
                if let Some(e) = cut
                    .as_ref()
                    .filter(|e| crate::registry::rate::is_too_slow(e))
                {
                    return Err(Error::Unavailable(format!(
                        "{repo}: blob {}: cut at byte {offset} of {}: {e}",
                        job.digest, job.size
                    )));
                }
                // Cut short: resume from here.
                let why = cut.map_or_else(|| "the body ended early".to_owned(), |e| e.to_string());
                retry(
                    attempt,
                    Error::Unavailable(format!(
                        "{repo}: blob {}: connection cut at byte {offset} of {}: {why}",
                        job.digest, job.size
                    )),
                )?;
            }
        }
        let sealed = match w.seal(job.size, &job.digest) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::FailedPrecondition => {
                // Wrong bytes: seal has removed them.
                return Err(Error::FailedPrecondition(format!(
                    "{repo}: blob {}: the bytes the registry sent do not match: {e}",
                    job.digest
                )));
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = &opts.progress {
            p.finish(&job.digest);
        }
        Ok(Fetched::Sealed(Box::new(sealed), fetched))
    }

    /// The writer of `reference`, or `None` when the blob is committed. While another
    /// process (or thread) downloads it, waits for it, for as long as its ingest keeps
    /// growing (up to a minute without progress; ten once it is complete and only waits to be
    /// committed by its holder), and takes over if its holder dies.
    pub(crate) fn claim_ingest(&self, reference: &str, job: &Job) -> Result<Option<StoreWriter>> {
        let mut last_offset = None;
        let mut idle_since = Instant::now();
        loop {
            if self.blob_record(&job.digest)?.is_some() {
                return Ok(None);
            }
            match self.store_writer(reference, Some(job.size), Some(&job.digest)) {
                Ok(w) => return Ok(Some(w)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    let offset = self.status(reference).ok().map(|s| s.offset);
                    let patience = if offset == Some(job.size) {
                        Duration::from_secs(600)
                    } else {
                        Duration::from_secs(60)
                    };
                    if offset != last_offset {
                        last_offset = offset;
                        idle_since = Instant::now();
                    } else if idle_since.elapsed() > patience {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Keeps a document fetched for a pull (a manifest an index names, a referrer) out of
    /// memory: `Present` when the store has it, else sealed in its ingest `pull-<digest>` for
    /// the batch to adopt (another process writing it meanwhile is waited for, as for a
    /// blob).
    fn keep_document(&self, desc: &RemoteDescriptor, bytes: &[u8]) -> Result<DocBytes> {
        let job = Job {
            digest: desc.digest,
            size: desc.size,
        };
        let reference = format!("pull-{}", desc.digest);
        let Some(mut w) = self.claim_ingest(&reference, &job)? else {
            return Ok(DocBytes::Present);
        };
        // Complete already (another pull's): sealed as it is, its bytes checked by the seal.
        let offset = w.status()?.offset;
        if offset != desc.size {
            if offset != 0 {
                w.truncate(0)?;
            }
            std::io::Write::write_all(&mut w, bytes)
                .map_err(|e| Error::from_io(e, "write", reference.as_str()))?;
        }
        Ok(DocBytes::Sealed(Box::new(w.seal(desc.size, &desc.digest)?)))
    }

    /// Fetches the document `desc` again and stages it in `batch` (see the pull's
    /// adoption of documents).
    fn restage(
        &self,
        batch: &mut crate::store::batch::Batch,
        registry: &Registry,
        repo: &Repository,
        desc: &RemoteDescriptor,
        labels: &Labels,
    ) -> Result<()> {
        let m = registry
            .manifest_get(repo, desc.digest.as_str())?
            .ok_or_else(|| Error::NotFound(format!("{repo}: manifest {}", desc.digest)))?;
        batch.stage(
            &mut &m.bytes[..],
            Some(&desc.digest),
            Some(desc.size),
            labels.clone(),
        )?;
        Ok(())
    }

    pub(crate) fn drop_ingest(&self, reference: &str) {
        if let Err(e) = self.abort(reference)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(reference, error = %e, "could not drop a failed download");
        }
    }
}

/// Everything a pull needs: manifests and indexes (fetched, root first) and the blobs to
/// download.
struct Plan {
    docs: Vec<(RemoteDescriptor, DocBytes)>,
    blobs: Vec<Job>,
}

/// Where a manifest or index of a plan is: only the root's bytes are held in memory; every
/// other document goes to its ingest as it arrives (an index of a thousand 4 MiB manifests
/// is not held), parsed on the way.
enum DocBytes {
    /// The root, as fetched.
    Memory(Vec<u8>),
    /// Sealed in its ingest (`pull-<digest>`), for the batch to adopt.
    Sealed(Box<Sealed>),
    /// The store has it.
    Present,
}

/// A document fetched and parsed: its descriptor, its children, where its bytes are.
struct FetchedDoc {
    desc: RemoteDescriptor,
    children: Vec<Child>,
    doc: DocBytes,
}

impl Plan {
    /// The root document as fetched, parsed.
    fn root(repo: &Repository, desc: RemoteDescriptor, bytes: Vec<u8>) -> Result<FetchedDoc> {
        let children = crate::oci::try_children(Some(&desc.media_type), &bytes)
            .map_err(|e| crate::oci::with_context(e, &format!("{repo}: {}", desc.digest)))?
            .unwrap_or_default();
        Ok(FetchedDoc {
            desc,
            children,
            doc: DocBytes::Memory(bytes),
        })
    }

    fn make(
        store: &Store,
        registry: &Registry,
        repo: &Repository,
        root: FetchedDoc,
        platforms: &[Platform],
    ) -> Result<Plan> {
        let mut plan = Plan {
            docs: Vec::new(),
            blobs: Vec::new(),
        };
        let mut seen: BTreeSet<Digest> = BTreeSet::new();
        let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
        let root_is_index = is_index(&root.desc.media_type);
        let root_digest = root.desc.digest;
        // The root index's entries for the asked platforms, and every platform it has.
        let mut matched = 0usize;
        let mut offered: Vec<String> = Vec::new();
        // Breadth first, a level at a time: (descriptor, bytes, depth, whether its layers are
        // wanted). The manifests a level names are fetched together, `concurrency` at a
        // time: a multi-platform index names a dozen or more, and one after another they
        // cost a round trip each.
        let mut level = vec![(root, 0usize, true)];
        while !level.is_empty() {
            // Manifests the level names: (descriptor, depth, whether its layers are wanted).
            let mut next: Vec<(Child, usize, bool)> = Vec::new();
            for (fetched, depth, wanted) in level {
                let FetchedDoc {
                    desc,
                    children,
                    doc,
                } = fetched;
                if !seen.insert(desc.digest) {
                    continue;
                }
                if depth > 8 {
                    return Err(Error::FailedPrecondition(format!(
                        "{repo}: indexes nested deeper than 8 at {}",
                        desc.digest
                    )));
                }
                let parent = desc.digest;
                plan.docs.push((desc, doc));
                for c in children {
                    match c.kind {
                        // An index names manifests and indexes, by their media type (the
                        // spec requires it): check and export walk the index by these types,
                        // so an entry that does not give one is refused here, before
                        // anything is named, rather than stored and disagreed about.
                        ChildKind::Manifest
                            if !(is_index(&c.media_type)
                                || crate::oci::is_manifest(&c.media_type)) =>
                        {
                            return Err(Error::FailedPrecondition(format!(
                                "{repo}: index {} names {} with media type {:?}, which is not a \
                                 manifest or index type",
                                parent, c.digest, c.media_type
                            )));
                        }
                        ChildKind::Manifest => {
                            let keep_layers = platforms.is_empty()
                                || c.platform.as_ref().is_none_or(|p| {
                                    platforms.iter().any(|w| platform_matches(w, p))
                                });
                            if depth == 0
                                && let Some(p) = &c.platform
                            {
                                offered.push(names::platform_string(p));
                                if platforms.iter().any(|w| platform_matches(w, p)) {
                                    matched += 1;
                                }
                            }
                            if !seen.contains(&c.digest) {
                                next.push((c, depth + 1, keep_layers));
                            }
                        }
                        ChildKind::Config => {
                            blobs.insert(c.digest, c.size);
                        }
                        ChildKind::Layer | ChildKind::Blob if wanted => {
                            blobs.insert(c.digest, c.size);
                        }
                        _ => {}
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            // As many at a time as fit in MANIFESTS_IN_FLIGHT bytes: a thousand manifests of
            // 4 MiB are not all in memory at once.
            let biggest = next
                .iter()
                .map(|(c, _, _)| c.size)
                .max()
                .unwrap_or(1)
                .max(1);
            let workers = usize::try_from(MANIFESTS_IN_FLIGHT / biggest)
                .unwrap_or(usize::MAX)
                .clamp(1, registry.concurrency());
            let fetched = largest_first(
                &next,
                workers,
                |(c, _, _)| c.size,
                |(c, _, _)| Self::child_manifest(store, registry, repo, c),
            )?;
            level = next
                .into_iter()
                .zip(fetched)
                .map(|((_, depth, keep), f)| (f, depth, keep))
                .collect();
        }
        // An index whose entries all lack a platform is wanted whole (see `check_target`):
        // only one that names platforms, none of them asked for, has nothing to pull.
        if root_is_index && !platforms.is_empty() && matched == 0 && !offered.is_empty() {
            return Err(Error::NotFound(format!(
                "{repo}: a manifest for {} in index {} (it has {})",
                platforms
                    .iter()
                    .map(names::platform_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                root_digest,
                if offered.is_empty() {
                    "no platforms".to_owned()
                } else {
                    offered.join(", ")
                }
            )));
        }
        plan.blobs = blobs
            .into_iter()
            .filter(|(d, _)| !seen.contains(d))
            .map(|(digest, size)| Job { digest, size })
            .collect();
        Ok(plan)
    }

    /// Adds the referrers of every manifest in the plan, and theirs, breadth first, with
    /// everything under them (every platform, every layer): a level's listings and
    /// manifests `concurrency` at a time. Only referrers of `artifact_type` when given.
    /// Returns how many were added. Each referrer once, whatever cycles the registry
    /// claims; deeper than [`MAX_REFERRER_DEPTH`] or more than [`MAX_REFERRERS`] fails.
    fn add_referrers(
        &mut self,
        store: &Store,
        registry: &Registry,
        repo: &Repository,
        artifact_type: Option<&str>,
    ) -> Result<u64> {
        let mut seen: BTreeSet<Digest> = self.docs.iter().map(|(d, _)| d.digest).collect();
        let mut blobs: BTreeMap<Digest, u64> =
            self.blobs.iter().map(|j| (j.digest, j.size)).collect();
        let mut level: Vec<(Digest, u64)> =
            self.docs.iter().map(|(d, _)| (d.digest, d.size)).collect();
        let mut added = 0u64;
        let mut depth = 0usize;
        while !level.is_empty() {
            depth += 1;
            let listings = largest_first(
                &level,
                registry.concurrency(),
                |(_, size)| *size,
                |(d, _)| registry.referrers(repo, d, artifact_type),
            )?;
            let mut found: Vec<Child> = Vec::new();
            for r in listings.into_iter().flat_map(|l| l.referrers) {
                if !seen.insert(r.digest) {
                    continue;
                }
                if depth > MAX_REFERRER_DEPTH {
                    return Err(Error::FailedPrecondition(format!(
                        "{repo}: referrers of referrers nested deeper than \
                         {MAX_REFERRER_DEPTH} at {} (a referrer of {})",
                        r.digest, r.subject
                    )));
                }
                if seen.len() > MAX_REFERRERS {
                    return Err(Error::FailedPrecondition(format!(
                        "{repo}: more than {MAX_REFERRERS} referrers"
                    )));
                }
                found.push(Child {
                    digest: r.digest,
                    media_type: r.media_type,
                    size: r.size,
                    kind: ChildKind::Manifest,
                    platform: None,
                });
            }
            let fetched = largest_first(
                &found,
                registry.concurrency(),
                |c| c.size,
                |c| Self::child_manifest(store, registry, repo, c),
            )?;
            level = Vec::new();
            for f in fetched {
                // The referrer and everything under it, all of it wanted.
                let sub = Plan::make(store, registry, repo, f, &[])?;
                added += 1;
                for (d, b) in sub.docs {
                    seen.insert(d.digest);
                    if !self.docs.iter().any(|(have, _)| have.digest == d.digest) {
                        level.push((d.digest, d.size));
                        self.docs.push((d, b));
                    }
                }
                for j in sub.blobs {
                    blobs.insert(j.digest, j.size);
                }
            }
        }
        let docs: BTreeSet<Digest> = self.docs.iter().map(|(d, _)| d.digest).collect();
        self.blobs = blobs
            .into_iter()
            .filter(|(d, _)| !docs.contains(d))
            .map(|(digest, size)| Job { digest, size })
            .collect();
        Ok(added)
    }

    /// Fetches the manifest an index names as `c`, checked against its descriptor's size,
    /// with the media type the index gives it.
    fn child_manifest(
        store: &Store,
        registry: &Registry,
        repo: &Repository,
        c: &Child,
    ) -> Result<FetchedDoc> {
        let m = registry
            .manifest_get(repo, c.digest.as_str())?
            .ok_or_else(|| {
                Error::NotFound(format!("{repo}: manifest {} named by the index", c.digest))
            })?;
        if m.descriptor.size != c.size {
            return Err(Error::FailedPrecondition(format!(
                "{repo}: manifest {} is {} bytes, its descriptor says {}",
                c.digest, m.descriptor.size, c.size
            )));
        }
        // The one rule: the document's own type, else the type its index gives it (checked
        // to be a manifest or index type), else its shape.
        let mut desc = m.descriptor;
        if let Some(mt) = crate::oci::document_media_type(&m.bytes, Some(&c.media_type))
            .filter(|mt| is_index(mt) || crate::oci::is_manifest(mt))
        {
            desc.media_type = mt;
        }
        let children = crate::oci::try_children(Some(&desc.media_type), &m.bytes)
            .map_err(|e| crate::oci::with_context(e, &format!("{repo}: {}", desc.digest)))?
            .unwrap_or_default();
        let doc = store.keep_document(&desc, &m.bytes)?;
        Ok(FetchedDoc {
            desc,
            children,
            doc,
        })
    }
}
