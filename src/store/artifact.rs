//! OCI 1.1 artifacts from files (an SBOM, a signature, a wasm module): an image manifest with
//! the empty config, one layer per file titled with its name, an `artifactType` and,
//! optionally, a `subject`, written and named in one transaction; and the way back, each
//! titled layer to a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::names;
use crate::store::Store;

/// The empty config's media type and bytes (OCI 1.1).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
/// The annotation that names a layer's file.
pub const TITLE: &str = "org.opencontainers.image.title";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One file of an artifact.
#[derive(Debug, Clone)]
pub struct ArtifactFile {
    /// Where to read it.
    pub path: PathBuf,
    /// Its media type (`application/octet-stream` when `None`).
    pub media_type: Option<String>,
}

/// What [`Store::create_artifact`] writes.
#[derive(Debug, Clone, Default)]
pub struct ArtifactSpec {
    /// The manifest's `artifactType` (required).
    pub artifact_type: String,
    /// The image it refers to: a name or digest in this store.
    pub subject: Option<String>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its files, one layer each, titled with the file's name.
    pub files: Vec<ArtifactFile>,
}

/// A file [`Store::artifact_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Its title, the path under the directory.
    pub title: String,
    /// The layer's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// Checks a layer's title as a path under an output directory: relative, plain components
/// only (no `..`, no root, no `.`-only path), and no NUL.
fn safe_title(title: &str) -> Result<PathBuf> {
    let bad = |why: &str| {
        Err(Error::FailedPrecondition(format!(
            "layer title {title:?} {why}; nothing written"
        )))
    };
    if title.is_empty() {
        return bad("is empty");
    }
    if title.contains('\0') {
        return bad("holds a NUL byte");
    }
    let path = Path::new(title);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return bad("climbs out of the directory (..)"),
            Component::RootDir | Component::Prefix(_) => return bad("is absolute"),
        }
    }
    if out.as_os_str().is_empty() {
        return bad("names no file");
    }
    Ok(out)
}

impl Store {
    /// Writes an artifact manifest for `spec`'s files and points `name` at it, in one
    /// transaction; returns its digest. The subject must be in the store. A file title (its
    /// name) used twice is `InvalidArgument`.
    pub fn create_artifact(&self, name: &str, spec: &ArtifactSpec) -> Result<Digest> {
        if spec.artifact_type.is_empty() {
            return Err(Error::InvalidArgument(
                "an artifact needs an artifact type".into(),
            ));
        }
        let subject = match &spec.subject {
            Some(s) => Some(self.resolve(s)?),
            None => None,
        };
        let mut batch = self.batch()?;
        let config = batch.stage(&mut &EMPTY[..], None, None, Default::default())?;
        let mut layers = Vec::new();
        let mut titles = BTreeSet::new();
        for file in &spec.files {
            let title = file
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{} has no file name to title its layer with",
                        file.path.display()
                    ))
                })?
                .to_owned();
            if !titles.insert(title.clone()) {
                return Err(Error::InvalidArgument(format!(
                    "two files are titled {title:?}"
                )));
            }
            let mut f = std::fs::File::open(&file.path)
                .map_err(|e| Error::io("open an artifact file", &file.path, e))?;
            let staged = batch.stage(&mut f, None, None, Default::default())?;
            let media_type = file
                .media_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into());
            layers.push(serde_json::json!({
                "mediaType": media_type,
                "digest": staged.digest.to_string(),
                "size": staged.size,
                "annotations": {TITLE: title},
            }));
        }
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": spec.artifact_type,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config.digest.to_string(), "size": config.size},
            "layers": layers,
        });
        if let Some(s) = &subject {
            manifest["subject"] = serde_json::to_value(s)
                .map_err(|e| Error::InvalidArgument(format!("the subject's descriptor: {e}")))?;
        }
        if !spec.annotations.is_empty() {
            manifest["annotations"] = serde_json::to_value(&spec.annotations)
                .map_err(|e| Error::InvalidArgument(format!("annotations: {e}")))?;
        }
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::InvalidArgument(format!("the manifest: {e}")))?;
        let staged = batch.stage(&mut &bytes[..], None, None, Default::default())?;
        batch.put_name(
            name,
            crate::store::referrers::with_artifact_type(
                names::descriptor(MANIFEST, &staged.digest, staged.size)?,
                Some(&spec.artifact_type),
            ),
            None,
        )?;
        batch.commit()?;
        Ok(staged.digest)
    }

    /// Writes each titled layer of the artifact `reference` (a name or digest) to
    /// `dir/<title>`. Every title is checked first: one that is absolute, climbs out with
    /// `..`, or repeats another is `FailedPrecondition`, and nothing is written. A layer without
    /// a title is skipped.
    pub fn artifact_files(&self, reference: &str, dir: &Path) -> Result<Vec<WrittenFile>> {
        let target = self.resolve(reference)?;
        let digest = names::descriptor_digest(&target)?;
        let bytes = crate::helpers::read_blob_prefix(self, &digest, crate::edges::MAX_PARSED)?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::InvalidArgument(format!("{reference} is not a JSON manifest: {e}"))
        })?;
        let layers = doc
            .get("layers")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| Error::InvalidArgument(format!("{reference} has no layers")))?;
        let mut plan = Vec::new();
        let mut seen = BTreeSet::new();
        for layer in layers {
            let Some(title) = layer
                .get("annotations")
                .and_then(|a| a.get(TITLE))
                .and_then(serde_json::Value::as_str)
            else {
                continue;
            };
            let rel = safe_title(title)?;
            if !seen.insert(rel.clone()) {
                return Err(Error::FailedPrecondition(format!(
                    "two layers are titled {title:?}; nothing written"
                )));
            }
            let d = layer
                .get("digest")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| Error::InvalidArgument(format!("layer {title:?} has no digest")))?;
            plan.push((title.to_owned(), rel, Digest::parse(d)?));
        }
        let mut out = Vec::new();
        for (title, rel, d) in plan {
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io("create a directory", parent, e))?;
            }
            let mut file =
                std::fs::File::create(&path).map_err(|e| Error::io("create a file", &path, e))?;
            let size = crate::helpers::copy_blob_to(self, &d, &mut file)?;
            out.push(WrittenFile {
                title,
                digest: d,
                size,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_that_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/../..",
            ".",
            "x\0y",
        ] {
            assert!(safe_title(bad).is_err(), "{bad:?}");
        }
        assert_eq!(safe_title("sbom.json").unwrap(), PathBuf::from("sbom.json"));
        assert_eq!(safe_title("./a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
    }
}
