//! `Store::push`: an image from the store to a registry.
//!
//! Children before parents: every config and layer first (a few at a time), then the
//! manifests, the index last, then the tag. For each blob: HEAD; if the repository lacks
//! it, mount it from a repository on the same registry where it is known to be (from its
//! `containerd.io/distribution.source.<host>` label), else upload it streamed from its file.
//! A repeated push therefore makes only HEAD requests, and a push to a second repository
//! mounts. After a push, every blob is labelled with the target repository, so the next push
//! elsewhere on that registry can mount. A blob the store lacks (a layer of a platform that
//! was not pulled) is mounted from a repository of the target's registry that the image came
//! from or went to, else streamed from one on another registry, so a partial pull can be
//! pushed whole (promoting `app:rc` to `app:release`, say) without storing the other
//! platforms; with no source, the push fails before uploading anything, naming the ways out. `platforms` pushes a subset of an index as
//! `image export --platform` does (a new index of the kept entries); without it, a
//! multi-platform index keeps its digest. Like an export, a push leases the image's content
//! for its duration, so an `image rm` and a gc in another process cannot take it midway.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use oci_spec::image::Platform;
use serde_json::Value;

use super::pull::Progress;
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::helpers::largest_first;
use crate::names::{self, AsName, Name, platform_matches};
use crate::oci::referrers::Referrer;
use crate::oci::{ChildKind, is_index};
use crate::registry::{MAX_MANIFEST, Registry, Repository, reference_of};
use crate::store::Store;

/// How to push.
#[derive(Clone, Default)]
pub struct PushOptions {
    /// Push only these platforms of an index (empty: everything).
    pub platforms: Vec<Platform>,
    /// Where progress goes.
    pub progress: Option<Arc<dyn Progress>>,
    /// Also push the store's referrers of every manifest pushed (and theirs), after their
    /// subjects, each by digest.
    pub referrers: bool,
    /// With `referrers`: only referrers of this artifact type (and theirs of this type).
    pub artifact_type: Option<String>,
}

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions")
            .field("platforms", &self.platforms)
            .field("referrers", &self.referrers)
            .field("artifact_type", &self.artifact_type)
            .finish()
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushOutcome {
    /// The reference pushed to (normalised).
    pub target: String,
    /// The digest it points at on the registry.
    pub digest: String,
    /// Blobs and manifests uploaded.
    pub blobs_pushed: u64,
    /// Blobs mounted from another repository of the registry.
    pub blobs_mounted: u64,
    /// Blobs and manifests the repository had already.
    pub blobs_skipped: u64,
    /// Bytes uploaded.
    pub bytes_pushed: u64,
    /// Referrers pushed with the image ([`PushOptions::referrers`]).
    pub referrers: u64,
}

/// A manifest or index to put: digest, media type, bytes.
type Doc = (Digest, String, Vec<u8>);

/// What is under a root.
struct PushPlan {
    /// The manifests, parents first, each with its depth in the index (the root's is 0).
    docs: Vec<(Doc, usize)>,
    /// The blobs the store has (digest → size).
    blobs: BTreeMap<Digest, u64>,
    /// The blobs it lacks (a platform of an index that was not pulled): the registry may
    /// have them in a repository the image came from.
    absent: BTreeMap<Digest, u64>,
}

/// A referrer pushed (or found on the registry) that the registry did not say it tracks.
struct Untracked {
    referrer: Referrer,
    /// Whether it was put, and the registry answered without `OCI-Subject` (else it was
    /// there already, and the registry was not asked).
    put: bool,
}

pub(super) enum Sent {
    Pushed(u64),
    Mounted,
    Skipped,
}

impl Store {
    /// Pushes the image `name` to `target` (default: `name` itself); see the module docs.
    /// Blocks until done.
    ///
    /// Errors: `NotFound` when the image or a manifest it needs is not in the store, or a
    /// blob it needs is neither in the store nor in a repository its source labels name (a
    /// pull of one platform keeps every manifest of an index but not the other platforms'
    /// layers: those are mounted or streamed from where the image came from; else push the
    /// platforms you have with `platforms`); registry errors as [`Store::pull`]'s.
    pub fn push(
        &self,
        registry: &Registry,
        name: impl AsName,
        target: Option<&str>,
        opts: &PushOptions,
    ) -> Result<PushOutcome> {
        let image = self.image(&name)?;
        let target_name = match target {
            Some(t) => Name::parse(t)?,
            None => name.as_name()?.into_owned(),
        };
        let name = image.name.as_str();
        let repo = Repository::of(&target_name);
        let root_digest = names::descriptor_digest(&image.target)?;
        // Held until the push is done: an `image rm` and a gc elsewhere cannot take the bytes
        // it is sending (gc marks from a leased root through everything it references).
        let _lease = self.lease_images("push", &[(image.name.as_str(), root_digest)])?;
        let mut root_type = image.target.media_type().to_string();
        let mut root_bytes = crate::helpers::read_blob_prefix(self, &root_digest, MAX_MANIFEST)?;
        if !opts.platforms.is_empty() && is_index(&root_type) {
            root_bytes = filter_index(&root_bytes, &opts.platforms, name)?;
        }
        if root_type.is_empty() {
            root_type = crate::oci::sniff_media_type(&root_bytes);
        }
        let root = (Algorithm::Sha256.digest(&root_bytes), root_type, root_bytes);
        let mut out = PushOutcome {
            target: target_name.to_string(),
            digest: root.0.to_string(),
            ..PushOutcome::default()
        };
        let (docs, mut untracked) = self.push_root(
            registry,
            &repo,
            &root,
            &reference_of(&target_name),
            root_digest,
            name,
            opts,
            &mut out,
        )?;
        if opts.referrers {
            // After their subjects, breadth first: a registry may check that a subject is
            // there, and the tag schema's index is written for a subject the registry has.
            let mut seen: std::collections::BTreeSet<Digest> = docs.iter().copied().collect();
            let mut queue: VecDeque<Digest> = docs.into_iter().collect();
            while let Some(subject) = queue.pop_front() {
                for r in self.referrers(&subject, opts.artifact_type.as_deref())? {
                    if !seen.insert(r.digest) {
                        continue;
                    }
                    if seen.len() > crate::oci::referrers::MAX_REFERRERS {
                        return Err(Error::FailedPrecondition(format!(
                            "image {name}: more than {} referrers",
                            crate::oci::referrers::MAX_REFERRERS
                        )));
                    }
                    let bytes = crate::helpers::read_blob_prefix(self, &r.digest, MAX_MANIFEST)?;
                    let doc = (r.digest, r.media_type.clone(), bytes);
                    let (under, more) = self.push_root(
                        registry,
                        &repo,
                        &doc,
                        &r.digest.to_string(),
                        r.digest,
                        name,
                        opts,
                        &mut out,
                    )?;
                    out.referrers += 1;
                    untracked.extend(more);
                    for d in under {
                        if d == r.digest || seen.insert(d) {
                            queue.push_back(d);
                        }
                    }
                }
            }
        }
        Self::tag_referrers(registry, &repo, untracked)?;
        Ok(out)
    }

    /// Pushes `root` and everything under it to `repo`, the root under `reference`, counting
    /// into `out`: the digests of the manifests pushed (the root's among them), and the
    /// referrers among them that the registry does not track (see [`Self::tag_referrers`]).
    #[allow(clippy::too_many_arguments)]
    fn push_root(
        &self,
        registry: &Registry,
        repo: &Repository,
        root: &Doc,
        reference: &str,
        stored_root: Digest,
        name: &str,
        opts: &PushOptions,
        out: &mut PushOutcome,
    ) -> Result<(Vec<Digest>, Vec<Untracked>)> {
        let repo = repo.clone();
        let PushPlan {
            docs,
            blobs,
            absent,
        } = self.push_plan(root, name)?;
        // Where on the target's registry the image is known to be: what it lacks can be
        // mounted from there.
        let sources = self.sources_of(
            &repo,
            std::iter::once(stored_root).chain(docs.iter().map(|((d, _, _), _)| *d)),
        );
        // What the store lacks first: a few HEADs and mounts, and a push that cannot be
        // whole fails before it uploads anything.
        let each = |blobs: &BTreeMap<Digest, u64>,
                    send: &(dyn Fn(&Digest, u64) -> Result<Sent> + Sync)| {
            let list: Vec<(Digest, u64)> = blobs.iter().map(|(d, s)| (*d, *s)).collect();
            largest_first(
                &list,
                registry.concurrency(),
                |(_, size)| *size,
                |(d, size)| send(d, *size),
            )
        };
        let mount = |d: &Digest, size| Self::bring_absent(registry, &repo, d, size, &sources, name);
        let send = |d: &Digest, size| self.send_blob(registry, &repo, d, size, opts);
        for sent in each(&absent, &mount)?
            .into_iter()
            .chain(each(&blobs, &send)?)
        {
            out.count(sent);
        }
        // Manifests children first, a level of the index at a time from the deepest (a
        // registry may refuse an index naming a manifest it lacks), each level `concurrency`
        // at a time; the root last, by `reference`. A manifest named at several levels goes
        // with the deepest.
        let deepest = docs.iter().map(|(_, depth)| *depth).max().unwrap_or(0);
        let mut done = std::collections::BTreeSet::new();
        let mut untracked = Vec::new();
        for depth in (0..=deepest).rev() {
            let level: Vec<&Doc> = docs
                .iter()
                .filter(|(doc, d)| *d == depth && done.insert(doc.0))
                .map(|(doc, _)| doc)
                .collect();
            let sent = largest_first(
                &level,
                registry.concurrency(),
                |(_, _, bytes)| bytes.len() as u64,
                |doc| self.send_manifest(registry, &repo, doc, root, reference),
            )?;
            for (s, r) in sent {
                out.count(s);
                untracked.extend(r);
            }
        }
        let mut all: Vec<Digest> = blobs.keys().copied().collect();
        all.extend(docs.iter().map(|((d, _, _), _)| *d));
        self.label_source(&repo, &all);
        Ok((
            docs.into_iter().map(|((d, _, _), _)| d).collect(),
            untracked,
        ))
    }

    /// Puts one manifest (the root under `reference`, others by digest) unless the server
    /// has it. A manifest with a `subject` that the registry did not acknowledge with
    /// `OCI-Subject` comes back as a referrer for its subject's tag-schema index (also when
    /// it was there already: an earlier push may have stopped before the index).
    fn send_manifest(
        &self,
        registry: &Registry,
        repo: &Repository,
        (digest, media_type, bytes): &Doc,
        root: &Doc,
        reference: &str,
    ) -> Result<(Sent, Option<Untracked>)> {
        let reference = if *digest == root.0 {
            reference.to_owned()
        } else {
            digest.to_string()
        };
        let present = registry
            .manifest_head_on_server(repo, &reference)?
            .is_some_and(|d| d.digest == *digest);
        let acknowledged = if present {
            None
        } else {
            Some(
                registry
                    .manifest_put(repo, &reference, media_type, bytes)?
                    .subject,
            )
        };
        let mut untracked = None;
        if let Some(subject) = crate::oci::referrers::as_referrer(bytes).map(|(s, ..)| s)
            && acknowledged
                .as_ref()
                .is_none_or(|ack| ack.as_ref() != Some(&subject))
        {
            untracked =
                crate::oci::referrers::referrer_of(bytes, *digest, &subject).map(|mut r| {
                    r.media_type = media_type.clone();
                    Untracked {
                        referrer: r,
                        put: acknowledged.is_some(),
                    }
                });
        }
        let sent = if present {
            Sent::Skipped
        } else {
            Sent::Pushed(bytes.len() as u64)
        };
        Ok((sent, untracked))
    }

    /// Adds the referrers pushed that the registry does not track to their subjects'
    /// tag-schema indexes: one read-modify-write per subject, `concurrency` at a time. A
    /// subject whose referrers were all on the registry already (no PUT told whether it
    /// tracks them) is first asked of the referrers API: a registry that has it needs no
    /// tag.
    fn tag_referrers(
        registry: &Registry,
        repo: &Repository,
        untracked: Vec<Untracked>,
    ) -> Result<()> {
        let mut by_subject: BTreeMap<Digest, (Vec<Referrer>, bool)> = BTreeMap::new();
        for u in untracked {
            let group = by_subject.entry(u.referrer.subject).or_default();
            group.0.push(u.referrer);
            group.1 |= u.put;
        }
        let groups: Vec<(Digest, (Vec<Referrer>, bool))> = by_subject.into_iter().collect();
        largest_first(
            &groups,
            registry.concurrency(),
            |(_, (list, _))| list.len() as u64,
            |(subject, (list, put))| {
                if !put
                    && registry.referrers(repo, subject, None)?.source
                        == crate::registry::referrers::ReferrersSource::Api
                {
                    return Ok(());
                }
                registry.add_to_fallback_tag(repo, subject, list)
            },
        )?;
        Ok(())
    }

    /// What is under `root`: see [`PushPlan`].
    fn push_plan(&self, root: &Doc, name: &str) -> Result<PushPlan> {
        let mut docs: Vec<(Doc, usize)> = Vec::new();
        let mut blobs = BTreeMap::new();
        let mut absent = BTreeMap::new();
        let mut queue = VecDeque::from([(root.clone(), 0usize)]);
        while let Some(((digest, media_type, bytes), depth)) = queue.pop_front() {
            if depth > 8 {
                return Err(Error::FailedPrecondition(format!(
                    "image {name}: indexes nested deeper than 8"
                )));
            }
            let children = crate::oci::try_children(Some(&media_type), &bytes)?.unwrap_or_default();
            docs.push(((digest, media_type, bytes), depth));
            for c in children {
                match c.kind {
                    ChildKind::Manifest => {
                        let missing = || {
                            let platform = c.platform.as_ref().map_or_else(String::new, |p| {
                                format!(" ({})", names::platform_string(p))
                            });
                            Error::NotFound(format!(
                                "manifest {}{platform} of image {name} (not in the store: push \
                                 the platforms you have with --platform)",
                                c.digest
                            ))
                        };
                        if self.blob_record(&c.digest)?.is_none() {
                            return Err(missing());
                        }
                        let bytes =
                            crate::helpers::read_blob_prefix(self, &c.digest, MAX_MANIFEST)?;
                        let mt = if c.media_type.is_empty() {
                            crate::oci::sniff_media_type(&bytes)
                        } else {
                            c.media_type.clone()
                        };
                        queue.push_back(((c.digest, mt, bytes), depth + 1));
                    }
                    ChildKind::Config | ChildKind::Layer | ChildKind::Blob => {
                        match self.blob_record(&c.digest)? {
                            Some(rec) if rec.size == c.size => {
                                blobs.insert(c.digest, c.size);
                            }
                            Some(rec) => {
                                return Err(Error::FailedPrecondition(format!(
                                    "image {name}: {} is {} bytes, its descriptor says {}",
                                    c.digest, rec.size, c.size
                                )));
                            }
                            None => {
                                absent.insert(c.digest, c.size);
                            }
                        }
                    }
                    ChildKind::Subject => {}
                }
            }
        }
        Ok(PushPlan {
            docs,
            blobs,
            absent,
        })
    }
}

impl PushOutcome {
    fn count(&mut self, sent: Sent) {
        match sent {
            Sent::Pushed(n) => {
                self.blobs_pushed += 1;
                self.bytes_pushed += n;
            }
            Sent::Mounted => self.blobs_mounted += 1,
            Sent::Skipped => self.blobs_skipped += 1,
        }
    }
}

/// An index keeping only the entries for `platforms` (entries without a platform stay, as
/// containerd does); the bytes unchanged when every entry stays. No entry left is
/// `NotFound`.
fn filter_index(bytes: &[u8], platforms: &[Platform], name: &str) -> Result<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Corrupted(format!("index of image {name}: {e}")))?;
    let Some(list) = doc.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Ok(bytes.to_vec());
    };
    let before = list.len();
    list.retain(|m| match m.get("platform") {
        None => true,
        Some(p) => serde_json::from_value::<Platform>(p.clone())
            .is_ok_and(|p| platforms.iter().any(|w| platform_matches(w, &p))),
    });
    if list.is_empty() {
        return Err(Error::NotFound(format!(
            "a manifest of image {name} for {}",
            platforms
                .iter()
                .map(names::platform_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if list.len() == before {
        return Ok(bytes.to_vec());
    }
    Ok(crate::oci::canonical_json(doc))
}
