//! The OCI image layout, as import and export share it: the `oci-layout` file, `index.json`,
//! blob paths, the walk from a descriptor to everything it references, and the limits that
//! keep hostile input bounded.
//!
//! ```text
//! oci-layout              {"imageLayoutVersion":"1.0.0"}
//! index.json              an image index; one entry per image
//! blobs/<alg>/<hex>       every blob, named by its digest
//! ```

use std::collections::HashMap;

use serde_json::Value;

use super::{Child, ChildKind, is_index, is_manifest, try_children};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Name of the layout marker file.
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
/// Name of the layout's index.
pub const INDEX_FILE: &str = "index.json";
/// Name of the blobs directory.
pub const BLOBS_DIR: &str = "blobs";
/// The only `imageLayoutVersion` this code reads and writes.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// Largest JSON document (index.json, manifest.json, a manifest, an index) read into memory.
pub const MAX_JSON_SIZE: u64 = 4 << 20;
/// Deepest nesting of indexes and manifests a walk follows (the root is depth 0).
pub const MAX_DEPTH: usize = 16;

/// The `oci-layout` file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OciLayout {
    /// The layout version; [`LAYOUT_VERSION`].
    #[serde(rename = "imageLayoutVersion")]
    pub image_layout_version: String,
}

impl OciLayout {
    /// Parses an `oci-layout` file; `InvalidArgument` unless it is JSON with
    /// `imageLayoutVersion` [`LAYOUT_VERSION`].
    pub fn parse(bytes: &[u8]) -> Result<OciLayout> {
        let layout: OciLayout = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidArgument(format!("{OCI_LAYOUT_FILE} is not valid: {e}")))?;
        if layout.image_layout_version != LAYOUT_VERSION {
            return Err(Error::InvalidArgument(format!(
                "{OCI_LAYOUT_FILE} says imageLayoutVersion {:?}; only {LAYOUT_VERSION:?} is supported",
                layout.image_layout_version
            )));
        }
        Ok(layout)
    }

    /// The canonical bytes of the file this code writes.
    pub fn bytes() -> Vec<u8> {
        format!(r#"{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}"#).into_bytes()
    }
}

/// One entry of an `index.json`: the descriptor as oci-spec parses it, and as the walk sees it.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The descriptor, annotations and platform included.
    pub descriptor: oci_spec::image::Descriptor,
    /// The same descriptor, validated, for the walk.
    pub child: Child,
}

/// Parses an `index.json` into its entries, in document order. `InvalidArgument` naming
/// the entry when the document is not an index or an entry is malformed.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<IndexEntry>> {
    let bad = |why: String| Error::InvalidArgument(format!("{INDEX_FILE}: {why}"));
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let manifests = doc
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("has no manifests array".into()))?;
    let children = try_children(Some(super::MEDIA_TYPE_OCI_INDEX), bytes)
        .map_err(|e| super::with_context(e, INDEX_FILE))?
        .unwrap_or_default();
    let mut out = Vec::with_capacity(manifests.len());
    for (i, (v, child)) in manifests.iter().zip(children).enumerate() {
        let descriptor =
            serde_json::from_value(v.clone()).map_err(|e| bad(format!("manifests[{i}]: {e}")))?;
        out.push(IndexEntry { descriptor, child });
    }
    Ok(out)
}

/// The path of a blob inside a layout: `blobs/<alg>/<hex>`.
pub fn blob_path(digest: &Digest) -> String {
    format!("{BLOBS_DIR}/{}/{}", digest.algorithm(), digest.hex())
}

/// The digest a `blobs/<alg>/<hex>` path names; `InvalidArgument` when the path has
/// another shape or the digest is malformed (uppercase hex, wrong length, unknown
/// algorithm).
pub fn parse_blob_path(path: &str) -> Result<Digest> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [BLOBS_DIR, alg, hex] => Digest::parse(&format!("{alg}:{hex}"))
            .map_err(|e| super::with_context(e, &format!("blob path {path:?}"))),
        _ => Err(Error::InvalidArgument(format!(
            "{path:?} is not a blob path (blobs/<alg>/<hex>)"
        ))),
    }
}

/// Whether a blob a walk reaches is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// It is not there.
    Missing,
    /// It is there; with its size when the source can tell cheaply.
    Present(Option<u64>),
}

/// What a walk asks of the place the blobs live.
pub trait Source {
    /// Makes `child` available if it can (an importer stages it) and says whether it is
    /// there. Called once per distinct digest, parents before children.
    fn locate(&mut self, child: &Child) -> Result<Found>;
    /// Reads a located manifest or index whole; at most `limit` bytes.
    fn read(&mut self, digest: &Digest, limit: u64) -> Result<Vec<u8>>;
}

/// Walks descriptors to everything they reference, checking each blob is there with the
/// size its descriptor states. One walker over several roots visits each digest once.
///
/// Children are walked for the manifest and index media types ([`is_manifest`],
/// [`is_index`]); content of any other media type is located but not opened. A missing
/// `subject` is skipped (a referrer may travel without its subject); any other missing
/// blob is `NotFound` naming it and its referrer. A size that disagrees with the
/// descriptor is `FailedPrecondition` naming both. Indexes that nest deeper than
/// [`MAX_DEPTH`] or in a loop are `InvalidArgument`.
#[derive(Debug, Default)]
pub struct Walker {
    /// Every digest located so far, with the size it was found to have.
    seen: HashMap<Digest, u64>,
    /// The digests of the manifests and indexes currently being walked, root first.
    stack: Vec<Digest>,
}

impl Walker {
    /// A walker that has seen nothing.
    pub fn new() -> Self {
        Walker::default()
    }

    /// Walks `root`, which `referrer` (a file or image name, for messages) names.
    pub fn walk(&mut self, root: &Child, referrer: &str, source: &mut dyn Source) -> Result<()> {
        self.stack.clear();
        self.visit(root, referrer, source)
    }

    /// Every digest located so far with its size, in digest order.
    pub fn seen(&self) -> Vec<(Digest, u64)> {
        let mut v: Vec<(Digest, u64)> = self.seen.iter().map(|(d, s)| (*d, *s)).collect();
        v.sort();
        v
    }

    fn visit(&mut self, node: &Child, referrer: &str, source: &mut dyn Source) -> Result<()> {
        if self.stack.contains(&node.digest) {
            let mut chain: Vec<String> = self.stack.iter().map(ToString::to_string).collect();
            chain.push(node.digest.to_string());
            return Err(Error::InvalidArgument(format!(
                "index nests in a loop: {}",
                chain.join(" → ")
            )));
        }
        if let Some(&size) = self.seen.get(&node.digest) {
            return check_size(node, size, referrer);
        }
        let size = match source.locate(node)? {
            Found::Missing if node.kind == ChildKind::Subject => return Ok(()),
            Found::Missing => {
                return Err(Error::NotFound(format!(
                    "blob {} ({}, referenced by {referrer})",
                    node.digest,
                    if node.media_type.is_empty() {
                        "no media type"
                    } else {
                        &node.media_type
                    }
                )));
            }
            Found::Present(Some(size)) => {
                check_size(node, size, referrer)?;
                size
            }
            Found::Present(None) => node.size,
        };
        self.seen.insert(node.digest, size);
        if !(is_index(&node.media_type) || is_manifest(&node.media_type)) {
            return Ok(());
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "index nests deeper than {MAX_DEPTH} levels at {} (referenced by {referrer})",
                node.digest
            )));
        }
        if node.size > MAX_JSON_SIZE {
            return Err(Error::InvalidArgument(format!(
                "{} {} is {} bytes, larger than the {MAX_JSON_SIZE} bytes a manifest may have",
                node.media_type, node.digest, node.size
            )));
        }
        let bytes = source.read(&node.digest, MAX_JSON_SIZE)?;
        if bytes.len() as u64 != node.size {
            return Err(Error::FailedPrecondition(format!(
                "{} reads as {} bytes, but {referrer} says {}",
                node.digest,
                bytes.len(),
                node.size
            )));
        }
        let children = try_children(Some(&node.media_type), &bytes)
            .map_err(|e| super::with_context(e, &format!("{} {}", node.media_type, node.digest)))?
            .unwrap_or_default();
        self.stack.push(node.digest);
        let me = node.digest.to_string();
        for child in &children {
            self.visit(child, &me, source)?;
        }
        self.stack.pop();
        Ok(())
    }
}

fn check_size(node: &Child, actual: u64, referrer: &str) -> Result<()> {
    if actual == node.size {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "blob {} has size {actual}, but {referrer} says {}",
        node.digest, node.size
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::error::ErrorKind;
    use crate::oci::{MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER_TAR};

    /// A source that serves whatever documents it is given, digests unchecked: the only way
    /// to build a loop, since real digests cannot.
    struct Fake(HashMap<Digest, Vec<u8>>);

    impl Source for Fake {
        fn locate(&mut self, child: &Child) -> Result<Found> {
            Ok(match self.0.get(&child.digest) {
                Some(b) => Found::Present(Some(b.len() as u64)),
                None => Found::Missing,
            })
        }
        fn read(&mut self, digest: &Digest, _limit: u64) -> Result<Vec<u8>> {
            Ok(self.0[digest].clone())
        }
    }

    fn index_of(entries: &[(&Digest, usize)]) -> Vec<u8> {
        let m: Vec<String> = entries
            .iter()
            .map(|(d, size)| {
                format!(r#"{{"mediaType":"{MEDIA_TYPE_OCI_INDEX}","digest":"{d}","size":{size}}}"#)
            })
            .collect();
        format!(r#"{{"manifests":[{}]}}"#, m.join(",")).into_bytes()
    }

    fn root(d: &Digest, size: usize) -> Child {
        Child {
            digest: *d,
            size: size as u64,
            media_type: MEDIA_TYPE_OCI_INDEX.into(),
            platform: None,
            kind: ChildKind::Manifest,
        }
    }

    #[test]
    fn loop_is_refused() {
        let a = Algorithm::Sha256.digest(b"a");
        let b = Algorithm::Sha256.digest(b"b");
        // Sizes must agree with the fake bytes: both documents have the same length.
        let len = index_of(&[(&a, 100)]).len();
        let mut docs = HashMap::new();
        docs.insert(a, index_of(&[(&b, len)]));
        docs.insert(b, index_of(&[(&a, len)]));
        let err = Walker::new()
            .walk(&root(&a, len), "index.json", &mut Fake(docs))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("loop"), "{err}");
    }

    #[test]
    fn depth_is_bounded() {
        let mut docs = HashMap::new();
        let leaf = Algorithm::Sha256.digest(b"leaf");
        docs.insert(leaf, b"{\"manifests\":[]}".to_vec());
        let (mut top, mut top_len) = (leaf, 16);
        for i in 0..=MAX_DEPTH {
            let d = Algorithm::Sha256.digest(format!("{i}").as_bytes());
            let doc = index_of(&[(&top, top_len)]);
            top_len = doc.len();
            docs.insert(d, doc);
            top = d;
        }
        let err = Walker::new()
            .walk(&root(&top, top_len), "x", &mut Fake(docs))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("deeper"), "{err}");
    }

    #[test]
    fn missing_and_lying_sizes() {
        let l = Algorithm::Sha256.digest(b"layer");
        let mut docs = HashMap::new();
        docs.insert(l, b"layer".to_vec());
        let mut node = root(&l, 5);
        node.media_type = MEDIA_TYPE_OCI_LAYER_TAR.into();
        Walker::new()
            .walk(&node, "x", &mut Fake(docs.clone()))
            .unwrap();
        node.size = 6;
        let err = Walker::new()
            .walk(&node, "x", &mut Fake(docs.clone()))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        node.digest = Algorithm::Sha256.digest(b"other");
        let err = Walker::new()
            .walk(&node, "idx", &mut Fake(docs))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("referenced by idx"), "{err}");
    }

    #[test]
    fn blob_paths() {
        let d = Algorithm::Sha256.digest(b"x");
        assert_eq!(parse_blob_path(&blob_path(&d)).unwrap(), d);
        let upper = format!("blobs/sha256/{}", d.hex().to_uppercase());
        for p in [
            "blobs/sha256/../../x",
            "blobs/sha256/abc",
            upper.as_str(),
            "blobs/md5/x",
            "x",
        ] {
            assert_eq!(
                parse_blob_path(p).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{p}"
            );
        }
    }

    #[test]
    fn layout_file() {
        OciLayout::parse(&OciLayout::bytes()).unwrap();
        for bad in [&b"{}"[..], b"x", br#"{"imageLayoutVersion":"2.0.0"}"#] {
            assert_eq!(
                OciLayout::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
    }
}
