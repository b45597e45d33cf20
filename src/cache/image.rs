//! [`ImageSource`]: one platform's image read through a [`ReadThrough`] (see the module
//! docs of [`crate::cache`]).

use std::collections::BTreeMap;
use std::io::Read;

use oci_spec::image::{Descriptor, ImageManifest, Platform};

use super::{ReadThrough, Source, read_document};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::names::{self, Name, descriptor_digest, platform_matches};
use crate::oci::{ChildKind, is_index};

/// Indexes nested deeper than this are refused (as a pull refuses them).
const MAX_DEPTH: usize = 8;

impl<S: Source> ReadThrough<S> {
    /// An image source for `platform` (linuxkit's `NewSource`): `reference` (a name, a
    /// `name@digest` or a digest) resolves in the store when the store has that name or
    /// blob (no request), else at the source ([`Source::manifest`]); then as
    /// [`ReadThrough::image_at`]. Blocks while documents are fetched; what is fetched is
    /// durable on return; no name is written, so a tag the store has no name for is asked
    /// of the source each time (one manifest request): a digest, or [`ImageSource::root`]
    /// given to [`ReadThrough::image_at`], makes none once the image is kept.
    ///
    /// Errors: `NotFound` when neither has the reference, or when the image has no manifest
    /// for `platform` (naming it and the platforms it has); `FailedPrecondition` for a
    /// document that does not match its digest or size, or is not a manifest or index; the
    /// source's errors.
    pub fn image(&self, reference: &str, platform: &Platform) -> Result<ImageSource<'_, S>> {
        let root = match self.store.resolve(reference) {
            Ok(d) => d,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidArgument) => {
                let (desc, bytes) = self.source.manifest(reference)?;
                let asked = Digest::parse(reference)
                    .ok()
                    .or_else(|| Name::parse(reference).ok().and_then(|n| n.digest));
                let digest = descriptor_digest(&desc)?;
                if let Some(asked) = asked
                    && asked != digest
                {
                    return Err(Error::FailedPrecondition(format!(
                        "{reference}: the source answered with manifest {digest}"
                    )));
                }
                self.keep(&desc, &digest, &bytes)?;
                desc
            }
            Err(e) => return Err(e),
        };
        self.image_at(&root, platform)
    }

    /// An image source for `platform` from the manifest or index `root` (linuxkit's
    /// `NewSource` given a descriptor): an index is walked to the first manifest whose
    /// platform matches ([`platform_matches`]); a lone manifest must have a config of that
    /// platform. Documents and the config come from the store, else from the source, and are
    /// kept (verified) as blobs. Blocks; durable on return; no name is written.
    ///
    /// Errors as [`ReadThrough::image`].
    pub fn image_at(&self, root: &Descriptor, platform: &Platform) -> Result<ImageSource<'_, S>> {
        let mut desc = root.clone();
        let mut members = BTreeMap::new();
        let mut from_index = false;
        for _depth in 0..=MAX_DEPTH {
            let digest = descriptor_digest(&desc)?;
            let bytes = self.document(&desc, &digest)?;
            let media_type =
                crate::oci::document_media_type(&bytes, Some(desc.media_type().as_ref()))
                    .unwrap_or_default();
            let children =
                crate::oci::try_children(Some(&media_type), &bytes)?.ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "{digest} ({media_type}) is not a manifest or index"
                    ))
                })?;
            members.insert(digest, (desc.size(), true));
            // An index by its media type, or (undeclared) by having no config.
            let index = is_index(&media_type)
                || (!crate::oci::is_manifest(&media_type)
                    && !children.iter().any(|c| c.kind == ChildKind::Config));
            if index {
                let entries: Vec<_> = children
                    .into_iter()
                    .filter(|c| c.kind == ChildKind::Manifest)
                    .collect();
                let Some(chosen) = entries.iter().find(|c| {
                    c.platform
                        .as_ref()
                        .is_some_and(|p| platform_matches(platform, p))
                }) else {
                    let offered: Vec<String> = entries
                        .iter()
                        .filter_map(|c| c.platform.as_ref().map(names::platform_string))
                        .collect();
                    return Err(Error::NotFound(format!(
                        "a manifest for {} in index {digest} (it has {})",
                        names::platform_string(platform),
                        if offered.is_empty() {
                            "no platforms".to_owned()
                        } else {
                            offered.join(", ")
                        }
                    )));
                };
                desc = names::descriptor(&chosen.media_type, &chosen.digest, chosen.size)?;
                desc.set_platform(chosen.platform.clone());
                from_index = true;
                continue;
            }
            if media_type != desc.media_type().to_string() {
                desc.set_media_type(media_type.as_str().into());
            }
            let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "manifest {digest} is not an image manifest: {e}"
                ))
            })?;
            for c in &children {
                if matches!(c.kind, ChildKind::Config | ChildKind::Layer) {
                    members.entry(c.digest).or_insert((c.size, false));
                }
            }
            let config = self.config(&manifest, &digest)?;
            if !from_index {
                check_config_platform(&config, platform, &digest)?;
            }
            return Ok(ImageSource {
                cache: self,
                platform: platform.clone(),
                root: root.clone(),
                descriptor: desc,
                manifest,
                config,
                members,
            });
        }
        Err(Error::FailedPrecondition(format!(
            "indexes nested deeper than {MAX_DEPTH} under {}",
            root.digest()
        )))
    }

    /// The bytes of the manifest or index `desc`: from the store, else from the source
    /// (checked against `desc`'s digest and size, then kept as a blob).
    fn document(&self, desc: &Descriptor, digest: &Digest) -> Result<Vec<u8>> {
        if let Some(bytes) = read_document(&self.store, digest, desc.size())? {
            return Ok(bytes);
        }
        let (_, bytes) = self.source.manifest(digest.as_str())?;
        self.keep(desc, digest, &bytes)?;
        Ok(bytes)
    }

    /// Commits a manifest or index from the source as a blob, after checking that `bytes`
    /// hash to `digest` (the commit checks it again).
    fn keep(&self, desc: &Descriptor, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let actual = digest.algorithm().digest(bytes);
        if actual != *digest {
            return Err(Error::FailedPrecondition(format!(
                "manifest {digest}: the source sent bytes that hash to {actual}"
            )));
        }
        if bytes.len() as u64 != desc.size() {
            return Err(Error::FailedPrecondition(format!(
                "manifest {digest} is {} bytes from the source, its descriptor says {}",
                bytes.len(),
                desc.size()
            )));
        }
        crate::helpers::write_blob(
            &self.store,
            &format!("pull-{digest}"),
            &mut &bytes[..],
            Some(desc.size()),
            Some(digest),
            self.source.labels(),
        )?;
        Ok(())
    }

    /// The config of `manifest`, read through (so kept once read to its end).
    fn config(&self, manifest: &ImageManifest, of: &Digest) -> Result<Vec<u8>> {
        let desc = manifest.config();
        let digest = descriptor_digest(desc)?;
        if desc.size() > crate::edges::MAX_PARSED {
            return Err(Error::FailedPrecondition(format!(
                "config {digest} of manifest {of} is {} bytes, more than {}",
                desc.size(),
                crate::edges::MAX_PARSED
            )));
        }
        let mut bytes = Vec::new();
        self.open(&digest, Some(desc.size()))?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::from_io(e, "read config", digest.to_string()))?;
        Ok(bytes)
    }
}

/// A lone manifest is for `platform` only when its config says so.
fn check_config_platform(config: &[u8], platform: &Platform, manifest: &Digest) -> Result<()> {
    let own: Option<Platform> = serde_json::from_slice(config).ok();
    match own {
        Some(p) if platform_matches(platform, &p) => Ok(()),
        own => Err(Error::NotFound(format!(
            "a manifest for {} (the image's one manifest, {manifest}, is for {})",
            names::platform_string(platform),
            own.as_ref().map_or_else(
                || "no platform its config names".to_owned(),
                names::platform_string
            )
        ))),
    }
}

/// One platform's image read through a [`ReadThrough`] (linuxkit's image source): the
/// manifest chosen for the platform, its config, and readers of its blobs. Made by
/// [`ReadThrough::image`] or [`ReadThrough::image_at`].
pub struct ImageSource<'a, S> {
    cache: &'a ReadThrough<S>,
    platform: Platform,
    root: Descriptor,
    descriptor: Descriptor,
    manifest: ImageManifest,
    config: Vec<u8>,
    /// Every blob of this image that may be opened: size, and whether it is a manifest or
    /// index (those are read from the store, or fetched as documents, never as blobs).
    members: BTreeMap<Digest, (u64, bool)>,
}

impl<S> std::fmt::Debug for ImageSource<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSource")
            .field("platform", &names::platform_string(&self.platform))
            .field("root", &self.root)
            .field("descriptor", &self.descriptor)
            .finish_non_exhaustive()
    }
}

impl<'a, S: Source> ImageSource<'a, S> {
    /// The platform asked for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The manifest or index the reference resolved to.
    pub fn root(&self) -> &Descriptor {
        &self.root
    }

    /// The descriptor of the platform's manifest (with the platform its index states).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The platform's manifest, parsed.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// The descriptor of the manifest's config.
    pub fn config_descriptor(&self) -> &Descriptor {
        self.manifest.config()
    }

    /// The config's bytes (verified against its digest).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The manifest's layers, in order.
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers()
    }

    /// A reader of the blob `digest` of this image (an index walked, the manifest, the
    /// config or a layer) from its first byte, through the cache ([`ReadThrough::open`]; a
    /// manifest or index missing from the store is fetched as a document and kept first).
    /// Blocks on the source only while bytes flow.
    ///
    /// Errors: `NotFound`, naming the digest, when the blob is not part of this image; as
    /// [`ReadThrough::open`] otherwise.
    pub fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send + 'a>> {
        let Some(&(size, document)) = self.members.get(digest) else {
            return Err(Error::NotFound(format!(
                "content {digest} in image {} for {}",
                self.root.digest(),
                names::platform_string(&self.platform)
            )));
        };
        if document {
            let desc = names::descriptor("", digest, size)?;
            self.cache.document(&desc, digest)?;
        }
        self.cache.open(digest, Some(size))
    }

    /// A reader of layer `i` (from 0), as [`ImageSource::open`]; `NotFound` past the last.
    pub fn layer(&self, i: usize) -> Result<Box<dyn Read + Send + 'a>> {
        let desc = self.layers().get(i).ok_or_else(|| {
            Error::NotFound(format!(
                "layer {i} of manifest {} (it has {})",
                self.descriptor.digest(),
                self.layers().len()
            ))
        })?;
        self.open(&descriptor_digest(desc)?)
    }
}
