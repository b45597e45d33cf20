//! Asking a registry whether it has an image, and for which platform: one HEAD, and with a
//! platform one GET of the index (or of a single manifest's config).

use std::io::Read;

use oci_spec::image::Platform;

use super::{MAX_MANIFEST, Registry, RemoteDescriptor, Repository, reference_of};
use crate::error::{Error, Result};
use crate::names::{Name, platform_matches};
use crate::oci::{ChildKind, is_index};

impl Registry {
    /// Whether the registry has `reference` (linuxkit's `ImageInRegistry`): its descriptor,
    /// or, with `platform` and an index, the descriptor of that platform's manifest; `None`
    /// when it is absent (or the index has no such platform).
    pub fn image_in_registry(
        &self,
        reference: &str,
        platform: Option<&Platform>,
    ) -> Result<Option<RemoteDescriptor>> {
        let registry = self;
        let name = Name::parse(reference)?;
        let repo = Repository::of(&name);
        let Some(head) = registry.manifest_head(&repo, &reference_of(&name))? else {
            return Ok(None);
        };
        let Some(platform) = platform else {
            return Ok(Some(head));
        };
        let Some(root) = registry.manifest_get(&repo, head.digest.as_str())? else {
            return Ok(None);
        };
        if !is_index(&root.descriptor.media_type) {
            // A single manifest: its config says its platform.
            let config = crate::oci::try_children(Some(&root.descriptor.media_type), &root.bytes)?
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.kind == ChildKind::Config);
            let Some(config) = config else {
                return Ok(None);
            };
            let mut stream = registry.blob_get(&repo, &config.digest, 0, Some(config.size))?;
            let mut bytes = Vec::new();
            (&mut stream.reader)
                .take(MAX_MANIFEST)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::from_io(e, "read", "config"))?;
            let own: Option<Platform> = serde_json::from_slice(&bytes).ok();
            return Ok(own
                .filter(|p| platform_matches(platform, p))
                .map(|_| root.descriptor));
        }
        let children = crate::oci::try_children(Some(&root.descriptor.media_type), &root.bytes)?
            .unwrap_or_default();
        Ok(children
            .into_iter()
            .find(|c| {
                c.kind == ChildKind::Manifest
                    && c.platform
                        .as_ref()
                        .is_some_and(|p| platform_matches(platform, p))
            })
            .map(|c| RemoteDescriptor {
                digest: c.digest,
                media_type: c.media_type,
                size: c.size,
            }))
    }
}
