//! A pull's plan: the manifests and indexes to keep (root first, each parsed once) and the
//! blobs to download, with referrers a level at a time.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::image::Platform;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::helpers::largest_first;
use crate::names::{self, platform_matches};
use crate::oci::referrers::MAX_REFERRERS;
use crate::oci::{Child, ChildKind, is_index};
use crate::registry::{Registry, RemoteDescriptor, Repository};
use crate::store::{Sealed, Store};

use super::fetch::Job;
use super::pull::{MANIFESTS_IN_FLIGHT, MAX_REFERRER_DEPTH};

/// Everything a pull needs: manifests and indexes (fetched, root first) and the blobs to
/// download.
pub(super) struct Plan {
    pub(super) docs: Vec<(RemoteDescriptor, DocBytes)>,
    pub(super) blobs: Vec<Job>,
}

/// Where a manifest or index of a plan is: only the root's bytes are held in memory; every
/// other document goes to its ingest as it arrives (an index of a thousand 4 MiB manifests
/// is not held), parsed on the way.
pub(super) enum DocBytes {
    /// The root, as fetched.
    Memory(Vec<u8>),
    /// Sealed in its ingest (`pull-<digest>`), for the batch to adopt.
    Sealed(Box<Sealed>),
    /// The store has it.
    Present,
}

/// A document fetched and parsed: its descriptor, its children, where its bytes are.
pub(super) struct FetchedDoc {
    pub(super) desc: RemoteDescriptor,
    pub(super) children: Vec<Child>,
    pub(super) doc: DocBytes,
}

impl Plan {
    /// The root document as fetched, parsed.
    pub(super) fn root(
        repo: &Repository,
        desc: RemoteDescriptor,
        bytes: Vec<u8>,
    ) -> Result<FetchedDoc> {
        let children = crate::oci::try_children(Some(&desc.media_type), &bytes)
            .map_err(|e| crate::oci::with_context(e, &format!("{repo}: {}", desc.digest)))?
            .unwrap_or_default();
        Ok(FetchedDoc {
            desc,
            children,
            doc: DocBytes::Memory(bytes),
        })
    }

    pub(super) fn make(
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
    pub(super) fn add_referrers(
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
    pub(super) fn child_manifest(
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
