//! `docker save`'s own format: a `manifest.json` listing, per image, a config file, its
//! tags and its layer files:
//!
//! ```json
//! [{"Config":"<hex>.json","RepoTags":["alpine:3.19"],"Layers":["<id>/layer.tar"]}]
//! ```
//!
//! (skopeo's docker-archive names layers `<hex>.tar` instead; docker 25 and later name
//! them `blobs/sha256/<hex>` and add an `index.json`, which import prefers.)
//!
//! The files are staged by path as they stream past (their digests computed). For each
//! image a docker schema 2 manifest is then made, serialised canonically (sorted keys, no
//! whitespace: the same image always gives the same manifest digest), and staged. Layers
//! get `application/vnd.docker.image.rootfs.diff.tar`, or the gzip/zstd media type when
//! their bytes are compressed.

use serde_json::{Value, json};

use super::archive::{Compression, DOCKER_MANIFEST_FILE, StagedFile};
use super::import::Importer;
use super::{
    Child, ChildKind, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_TAR, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_LAYER_ZSTD,
    canonical_json,
};
use crate::error::{Error, Result};

/// One image of a `manifest.json`.
pub(super) struct LegacyImage {
    /// Its `RepoTags`, as written.
    pub tags: Vec<String>,
    /// The manifest made for it.
    pub descriptor: oci_spec::image::Descriptor,
    /// The same, for the walk.
    pub child: Child,
}

/// How [`images`] finds a file `manifest.json` names: the staged file, or `None`.
pub(super) type Resolve<'r> = dyn FnMut(&mut Importer<'_>, &str) -> Result<Option<StagedFile>> + 'r;

/// Makes and stages a manifest for every image of the `manifest.json` in `doc`.
pub(super) fn images(
    doc: &[u8],
    resolve: &mut Resolve<'_>,
    imp: &mut Importer<'_>,
) -> Result<Vec<LegacyImage>> {
    let bad = |why: String| Error::InvalidArgument(format!("{DOCKER_MANIFEST_FILE}: {why}"));
    let doc: Value = serde_json::from_slice(doc).map_err(|e| bad(format!("not JSON: {e}")))?;
    let items = doc.as_array().ok_or_else(|| bad("not an array".into()))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let bad = |why: &str| bad(format!("[{i}]: {why}"));
        let config = item
            .get("Config")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no Config path"))?;
        let tags = match item.get("RepoTags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tags)) => tags
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("a RepoTag is not a string"))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("RepoTags is not an array")),
        };
        let layers = match item.get("Layers") {
            Some(Value::Array(layers)) => layers
                .iter()
                .map(|l| {
                    l.as_str()
                        .ok_or_else(|| bad("a layer path is not a string"))
                })
                .collect::<Result<Vec<&str>>>()?,
            _ => return Err(bad("no Layers array")),
        };
        let mut find = |path: &str, what: &str| -> Result<StagedFile> {
            let found = resolve(imp, path)
                .map_err(|e| super::with_context(e, &format!("{DOCKER_MANIFEST_FILE}[{i}]")))?;
            found.ok_or_else(|| {
                Error::NotFound(format!(
                    "{what} {path:?} (referenced by {DOCKER_MANIFEST_FILE}[{i}])"
                ))
            })
        };
        let config = find(config, "config")?;
        let mut layer_values = Vec::with_capacity(layers.len());
        for path in layers {
            let layer = find(path, "layer")?;
            let media_type = match layer.compression {
                Compression::None => MEDIA_TYPE_DOCKER_LAYER_TAR,
                Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
                Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
            };
            layer_values.push(json!({
                "mediaType": media_type,
                "size": layer.size,
                "digest": layer.digest.to_string(),
            }));
        }
        let manifest = canonical_json(json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_DOCKER_CONFIG,
                "size": config.size,
                "digest": config.digest.to_string(),
            },
            "layers": layer_values,
        }));
        let staged = imp.stage(&mut &manifest[..], None, Some(manifest.len() as u64))?;
        let descriptor =
            crate::names::descriptor(MEDIA_TYPE_DOCKER_MANIFEST, &staged.digest, staged.size)?;
        let child = Child {
            digest: staged.digest,
            size: staged.size,
            media_type: MEDIA_TYPE_DOCKER_MANIFEST.to_owned(),
            platform: None,
            kind: ChildKind::Manifest,
        };
        out.push(LegacyImage {
            tags,
            descriptor,
            child,
        });
    }
    Ok(out)
}
