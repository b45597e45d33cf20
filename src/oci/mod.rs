//! OCI interchange: image layouts and archives in and out of the store.
//!
//! - [`import`] streams an OCI image layout (a tar archive, gzip- or zstd-compressed or
//!   plain, or a directory) or a `docker save` archive into a [`import::Sink`], verifying
//!   every digest and size, and reports the images it found.
//! - [`export`] writes named images from any [`Provider`](crate::Provider) as a
//!   reproducible OCI image layout (a tar archive or a directory) that skopeo, umoci and
//!   `ctr images import` read.
//! - [`layout`] holds what both share: the `oci-layout` file, `index.json`, the walk of a
//!   descriptor's children with its limits, and blob paths.
//! - [`referrers`] is the OCI 1.1 referrers model: what a manifest says as a referrer, and
//!   the index listing a manifest's referrers (the referrers API's answer, the tag schema).
//! - [`sample`] builds a small deterministic multi-platform image, for tests and demos.
//!
//! This module also parses the children of a manifest or index ([`children`],
//! [`try_children`]) and names the media types and annotations of the interchange formats.

pub mod export;
pub mod import;
pub mod layout;
pub mod referrers;
pub mod sample;

mod archive;
mod legacy;
mod targuard;

pub(crate) use archive::{Compression, ZstdFrames};

use oci_spec::image::Platform;
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, uncompressed tar.
pub const MEDIA_TYPE_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip-compressed tar.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd-compressed tar.
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// The short-lived OCI artifact manifest (image-spec 1.1 release candidates); its `blobs`
/// are walked like layers.
pub const MEDIA_TYPE_OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (docker's image index).
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, gzip-compressed tar.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer, uncompressed tar.
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Annotation carrying an image's full name (containerd's convention,
/// `docker.io/library/alpine:3.19`).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation carrying an image's reference name in an OCI layout (usually just the tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Whether `media_type` is an image index (OCI index or docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// Whether `media_type` is an image manifest (OCI, docker schema 2, or OCI artifact).
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST
        || media_type == MEDIA_TYPE_DOCKER_MANIFEST
        || media_type == MEDIA_TYPE_OCI_ARTIFACT_MANIFEST
}

/// The media type of a manifest or index document, by the one rule every part of ocistore
/// uses (pull, check, export, push, gc): the document's own `mediaType` when it is a known
/// manifest or index type; else `declared` (a registry's `Content-Type`, a descriptor's
/// media type) when it is one; else the document's shape (a `manifests` array: an OCI
/// index; `config` and `layers`, or `blobs`: an OCI image manifest); else the document's
/// own `mediaType` when it is a well-formed media type at all. `None`: nothing says what
/// the document is.
pub fn document_media_type(bytes: &[u8], declared: Option<&str>) -> Option<String> {
    let known = |m: &str| is_index(m) || is_manifest(m);
    let obj = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(obj)) => Some(obj),
            _ => None,
        },
        _ => None,
    };
    let own: Option<String> = obj
        .as_ref()
        .and_then(|o| o.get("mediaType"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(m) = own.as_deref().filter(|m| known(m)) {
        return Some(m.to_owned());
    }
    if let Some(m) = declared.filter(|m| known(m)) {
        return Some(m.to_owned());
    }
    let obj = obj?;
    if obj.get("manifests").is_some_and(Value::is_array) {
        return Some(MEDIA_TYPE_OCI_INDEX.to_owned());
    }
    if (obj.contains_key("config") && obj.contains_key("layers"))
        || obj.get("blobs").is_some_and(Value::is_array)
    {
        return Some(MEDIA_TYPE_OCI_MANIFEST.to_owned());
    }
    own.filter(|m| is_media_type(m))
}

/// [`document_media_type`] of a stored document, `application/octet-stream` when nothing
/// says what it is.
pub fn sniff_media_type(bytes: &[u8]) -> String {
    document_media_type(bytes, None).unwrap_or_else(|| "application/octet-stream".to_owned())
}

/// Whether `s` is a media type by RFC 6838's grammar: `type/subtype`, each a restricted
/// name (a letter or digit, then at most 126 of letters, digits and `!#$&-^_.+`), with
/// optional `; parameter` text after it of printable ASCII.
pub fn is_media_type(s: &str) -> bool {
    fn restricted_name(n: &str) -> bool {
        let b = n.as_bytes();
        !b.is_empty()
            && b.len() <= 127
            && b[0].is_ascii_alphanumeric()
            && b[1..].iter().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    }
    let (essence, params) = match s.split_once(';') {
        // Spaces or tabs may stand before the parameters, nothing else anywhere.
        Some((e, p)) => (e.trim_end_matches([' ', '\t']), p),
        None => (s, ""),
    };
    let Some((t, sub)) = essence.split_once('/') else {
        return false;
    };
    restricted_name(t)
        && restricted_name(sub)
        && params
            .bytes()
            .all(|c| c == b'\t' || (b' '..=b'~').contains(&c))
}

/// Whether `media_type` is a known config or layer type, which never has children.
fn is_leaf(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_TYPE_OCI_CONFIG
            | MEDIA_TYPE_OCI_LAYER_TAR
            | MEDIA_TYPE_OCI_LAYER_GZIP
            | MEDIA_TYPE_OCI_LAYER_ZSTD
            | MEDIA_TYPE_DOCKER_CONFIG
            | MEDIA_TYPE_DOCKER_LAYER_GZIP
            | MEDIA_TYPE_DOCKER_LAYER_TAR
    )
}

/// What a child is to the manifest or index that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// An entry of an index's `manifests`.
    Manifest,
    /// A manifest's `config`.
    Config,
    /// An entry of a manifest's `layers`.
    Layer,
    /// The `subject` of a manifest or index (OCI 1.1 referrers).
    Subject,
    /// An entry of an artifact manifest's `blobs`.
    Blob,
}

/// A descriptor named by a manifest or index.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    /// The child's digest.
    pub digest: Digest,
    /// The size the descriptor states.
    pub size: u64,
    /// The descriptor's media type (empty when the descriptor has none).
    pub media_type: String,
    /// The descriptor's platform, when it has one (index entries).
    pub platform: Option<Platform>,
    /// Where in the parent the descriptor sits.
    pub kind: ChildKind,
}

/// The shape of a document, decided by its media type or, failing that, by its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Index,
    Manifest,
}

/// The children of a manifest or index, in document order (config, layers or manifests,
/// blobs, then subject); `None` when `bytes` is not a manifest or index.
///
/// A known manifest or index media type decides the shape; a known config or layer media
/// type means "no children"; any other (or no) media type is decided by the JSON: a
/// `manifests` array is an index, `config` with `layers` a manifest. Lenient: unknown
/// fields are ignored and a child whose digest or size is malformed is skipped. Never
/// panics. [`try_children`] is the strict variant.
pub fn children(media_type: Option<&str>, bytes: &[u8]) -> Option<Vec<Child>> {
    parse_children(media_type, bytes, false).ok().flatten()
}

/// Like [`children`], but strict: a document whose media type says manifest or index and
/// that is not a JSON object, or any child with a malformed digest, size, media type or
/// platform, is `InvalidArgument` naming the field (`manifests[2].digest`).
pub fn try_children(media_type: Option<&str>, bytes: &[u8]) -> Result<Option<Vec<Child>>> {
    parse_children(media_type, bytes, true)
}

fn parse_children(
    media_type: Option<&str>,
    bytes: &[u8],
    strict: bool,
) -> Result<Option<Vec<Child>>> {
    let declared = match media_type {
        Some(mt) if is_index(mt) => Some(Shape::Index),
        Some(mt) if is_manifest(mt) => Some(Shape::Manifest),
        Some(mt) if is_leaf(mt) => return Ok(None),
        _ => None,
    };
    let doc: Option<Value> = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(bytes).ok(),
        _ => None,
    };
    let Some(Value::Object(obj)) = doc else {
        if declared.is_some() && strict {
            return Err(Error::InvalidArgument(format!(
                "content of media type {} is not a JSON object",
                media_type.unwrap_or_default()
            )));
        }
        return Ok(None);
    };
    let shape = match declared {
        Some(s) => s,
        None if obj.get("manifests").is_some_and(Value::is_array) => Shape::Index,
        None if obj.contains_key("config") && obj.contains_key("layers") => Shape::Manifest,
        None if obj.get("blobs").is_some_and(Value::is_array) => Shape::Manifest,
        None => return Ok(None),
    };
    let mut out = Vec::new();
    let mut push = |field: String, v: &Value, kind: ChildKind| -> Result<()> {
        match parse_child(&field, v, kind) {
            // Strict: what is stored or named must have a media type by the grammar.
            Ok(c) if strict && !c.media_type.is_empty() && !is_media_type(&c.media_type) => {
                return Err(Error::InvalidArgument(format!(
                    "{field}: media type {:?} of {} is not a media type (RFC 6838)",
                    c.media_type, c.digest
                )));
            }
            Ok(c) => out.push(c),
            Err(e) if strict => return Err(e),
            Err(_) => {}
        }
        Ok(())
    };
    let list = |name: &str,
                kind: ChildKind,
                push: &mut dyn FnMut(String, &Value, ChildKind) -> Result<()>|
     -> Result<()> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    push(format!("{name}[{i}]"), item, kind)?;
                }
                Ok(())
            }
            Some(_) if strict => Err(Error::InvalidArgument(format!("{name} is not an array"))),
            Some(_) => Ok(()),
        }
    };
    match shape {
        Shape::Index => list("manifests", ChildKind::Manifest, &mut push)?,
        Shape::Manifest => {
            match obj.get("config") {
                Some(v) => push("config".into(), v, ChildKind::Config)?,
                // Artifact manifests have no config; image manifests must.
                None if strict && !obj.contains_key("blobs") => {
                    return Err(Error::InvalidArgument("manifest has no config".into()));
                }
                None => {}
            }
            list("layers", ChildKind::Layer, &mut push)?;
            list("blobs", ChildKind::Blob, &mut push)?;
        }
    }
    if let Some(v) = obj.get("subject").filter(|v| !v.is_null()) {
        push("subject".into(), v, ChildKind::Subject)?;
    }
    Ok(Some(out))
}

/// Parses one descriptor; `field` names it in errors.
fn parse_child(field: &str, v: &Value, kind: ChildKind) -> Result<Child> {
    let bad = |why: String| Error::InvalidArgument(format!("{field}: {why}"));
    let obj = v
        .as_object()
        .ok_or_else(|| bad("descriptor is not a JSON object".into()))?;
    let digest = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("descriptor has no digest".into()))?;
    let digest = Digest::parse(digest).map_err(|e| with_context(e, field))?;
    let size = obj
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(format!("descriptor of {digest} has no valid size")))?;
    let media_type = match obj.get("mediaType") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(format!("media type of {digest} is not a string"))),
    };
    let platform = match obj.get("platform") {
        None | Some(Value::Null) => None,
        Some(p) => Some(
            serde_json::from_value::<Platform>(p.clone())
                .map_err(|e| bad(format!("platform of {digest}: {e}")))?,
        ),
    };
    Ok(Child {
        digest,
        size,
        media_type,
        platform,
        kind,
    })
}

/// `v` with the keys of every object sorted, at every depth. serde_json keeps insertion
/// order when a dependency turns on its `preserve_order` feature; this makes the output
/// independent of that.
pub(crate) fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The canonical bytes of a JSON document: keys sorted at every depth, no insignificant
/// whitespace. Equal documents give equal bytes, hence equal digests.
pub(crate) fn canonical_json(v: Value) -> Vec<u8> {
    serde_json::to_vec(&sorted(v)).expect("a serde_json::Value always serialises")
}

/// A JSON value for an oci-spec descriptor (annotations are a `HashMap` there; the value
/// is sorted by [`canonical_json`] when written).
pub(crate) fn descriptor_value(d: &oci_spec::image::Descriptor) -> Value {
    serde_json::to_value(d).expect("an oci-spec descriptor always serialises")
}

/// Rebuilds `err` with `context` in front of its message, keeping its kind.
pub(crate) fn with_context(err: Error, context: &str) -> Error {
    match err {
        Error::NotFound(m) => Error::NotFound(format!("{context}: {m}")),
        Error::AlreadyExists(m) => Error::AlreadyExists(format!("{context}: {m}")),
        Error::Unavailable(m) => Error::Unavailable(format!("{context}: {m}")),
        Error::FailedPrecondition(m) => Error::FailedPrecondition(format!("{context}: {m}")),
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{context}: {m}")),
        Error::Corrupted(m) => Error::Corrupted(format!("{context}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::error::ErrorKind;

    #[test]
    fn media_types_follow_rfc_6838() {
        for ok in [
            "application/vnd.oci.image.manifest.v1+json",
            "application/spdx+json",
            "text/plain; charset=utf-8",
            "application/vnd.dev.sigstore.bundle.v0.3+json",
        ] {
            assert!(is_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "json",
            "/json",
            "application/",
            "application/vnd\u{1b}[2J",
            "application/json\nX-Forged: 1",
            "application/json; \u{7}",
            "xx/e..\u{b}",
            "text/plain\t",
            "appli cation/json",
            "../../etc/passwd",
        ] {
            assert!(!is_media_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn one_rule_decides_what_a_document_is() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let own = br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        // The document's own type first, then a known declared type, then the shape.
        assert_eq!(
            document_media_type(own, Some(MEDIA_TYPE_OCI_MANIFEST)).as_deref(),
            Some(MEDIA_TYPE_DOCKER_MANIFEST_LIST)
        );
        assert_eq!(
            document_media_type(index, Some("application/json")).as_deref(),
            Some(MEDIA_TYPE_OCI_INDEX)
        );
        assert_eq!(
            document_media_type(manifest, Some(MEDIA_TYPE_DOCKER_MANIFEST)).as_deref(),
            Some(MEDIA_TYPE_DOCKER_MANIFEST)
        );
        assert_eq!(
            document_media_type(manifest, None).as_deref(),
            Some(MEDIA_TYPE_OCI_MANIFEST)
        );
        assert_eq!(document_media_type(b"{}", Some("application/json")), None);
        assert_eq!(document_media_type(b"\x1b[2J", None), None);
        assert_eq!(sniff_media_type(b"{}"), "application/octet-stream");
        // A child with a media type that is not one is refused when strict, kept when not
        // (gc and reads of what is stored never drop an edge).
        let bad = format!(
            r#"{{"mediaType":"{MEDIA_TYPE_OCI_MANIFEST}","config":{{"mediaType":"x\u001b","digest":"{}","size":1}},"layers":[]}}"#,
            d("c")
        );
        let err = try_children(Some(MEDIA_TYPE_OCI_MANIFEST), bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("RFC 6838"), "{err}");
        assert_eq!(
            children(Some(MEDIA_TYPE_OCI_MANIFEST), bad.as_bytes())
                .unwrap()
                .len(),
            1
        );
    }

    fn d(s: &str) -> String {
        Algorithm::Sha256.digest(s.as_bytes()).to_string()
    }

    #[test]
    fn manifest_children_in_order() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_OCI_MANIFEST}",
            "config":{{"mediaType":"{MEDIA_TYPE_OCI_CONFIG}","digest":"{}","size":3}},
            "layers":[{{"mediaType":"{MEDIA_TYPE_OCI_LAYER_GZIP}","digest":"{}","size":5,"x":1}}],
            "subject":{{"mediaType":"{MEDIA_TYPE_OCI_MANIFEST}","digest":"{}","size":7}}}}"#,
            d("c"),
            d("l"),
            d("s")
        );
        for mt in [
            None,
            Some(MEDIA_TYPE_OCI_MANIFEST),
            Some("application/x-unknown"),
        ] {
            let c = try_children(mt, doc.as_bytes()).unwrap().unwrap();
            let kinds: Vec<ChildKind> = c.iter().map(|c| c.kind).collect();
            assert_eq!(
                kinds,
                [ChildKind::Config, ChildKind::Layer, ChildKind::Subject]
            );
            assert_eq!(c[1].size, 5);
            assert_eq!(c[1].media_type, MEDIA_TYPE_OCI_LAYER_GZIP);
        }
        assert_eq!(children(Some(MEDIA_TYPE_OCI_CONFIG), doc.as_bytes()), None);
    }

    #[test]
    fn index_children_with_platforms() {
        let doc = format!(
            r#"{{"manifests":[{{"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}","digest":"{}","size":1,
            "platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d("m")
        );
        let c = children(None, doc.as_bytes()).unwrap();
        assert_eq!(c[0].kind, ChildKind::Manifest);
        assert_eq!(
            c[0].platform.as_ref().unwrap().variant().as_deref(),
            Some("v8")
        );
    }

    #[test]
    fn garbage_is_not_a_manifest() {
        for junk in [
            &b""[..],
            b"\x00\xff",
            b"[1,2]",
            b"{",
            b"{\"a\":1}",
            b"null",
            b"\"x\"",
        ] {
            assert_eq!(children(None, junk), None);
            assert!(try_children(None, junk).unwrap().is_none());
        }
        let err = try_children(Some(MEDIA_TYPE_OCI_INDEX), b"not json").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn malformed_child_is_skipped_leniently_and_refused_strictly() {
        let doc = format!(
            r#"{{"manifests":[{{"digest":"sha256:BAD","size":1}},{{"digest":"{}","size":2}},
            {{"digest":"{}","size":-1}}]}}"#,
            d("a"),
            d("b")
        );
        assert_eq!(children(None, doc.as_bytes()).unwrap().len(), 1);
        let err = try_children(None, doc.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("manifests[0]"), "{err}");
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"z":1,"y":[{"d":1,"c":2}]}}"#).unwrap();
        assert_eq!(
            canonical_json(v),
            br#"{"a":{"y":[{"c":2,"d":1}],"z":1},"b":1}"#
        );
    }
}
