//! Referrers (OCI 1.1) as documents: what a manifest says about itself as a referrer (its
//! `subject`, `artifactType`, annotations), the image index that lists the referrers of a
//! manifest (what a registry's referrers API answers, and what the `<alg>-<hex>` tag holds
//! on a registry without that API), and how an entry is added to such an index.
//!
//! Every parser here takes untrusted bytes: sizes, digests and counts are checked, and a
//! listing longer than its caller's bound is an error naming the bound.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};

use super::MEDIA_TYPE_OCI_INDEX;

/// The most referrers a listing holds, or a recursive walk visits: a bound against hostile
/// registries and chains.
pub const MAX_REFERRERS: usize = 100_000;

/// One referrer of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Referrer {
    /// The referrer's digest.
    pub digest: Digest,
    /// Its own `mediaType`.
    pub media_type: String,
    /// Its `artifactType`, else (for an image manifest) its config's media type, as the
    /// referrers API reports it.
    pub artifact_type: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// The manifest it refers to.
    #[serde(skip)]
    pub subject: Digest,
}

impl Referrer {
    /// The referrer as an entry of a referrers index: an OCI descriptor with its
    /// `artifactType` and annotations.
    pub fn descriptor(&self) -> Value {
        let mut d = serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size,
        });
        if let Some(t) = &self.artifact_type {
            d["artifactType"] = t.as_str().into();
        }
        if !self.annotations.is_empty() {
            d["annotations"] = serde_json::to_value(&self.annotations).unwrap_or(Value::Null);
        }
        d
    }
}

/// What a manifest document says about itself as a referrer: its subject, media type,
/// artifact type and annotations; `None` when it is not a JSON manifest with a subject.
#[allow(clippy::type_complexity)]
pub(crate) fn as_referrer(
    bytes: &[u8],
) -> Option<(Digest, String, Option<String>, BTreeMap<String, String>)> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let doc: Value = serde_json::from_slice(bytes).ok()?;
    let subject = Digest::parse(doc.get("subject")?.get("digest")?.as_str()?).ok()?;
    let media_type = doc
        .get("mediaType")
        .and_then(Value::as_str)
        .map_or_else(|| crate::oci::sniff_media_type(bytes), str::to_owned);
    let artifact_type = doc
        .get("artifactType")
        .and_then(Value::as_str)
        .or_else(|| doc.get("config")?.get("mediaType")?.as_str())
        .filter(|t| super::is_media_type(t))
        .map(str::to_owned);
    Some((subject, media_type, artifact_type, annotations_of(&doc)))
}

/// The string annotations of a document or descriptor (others are dropped).
fn annotations_of(v: &Value) -> BTreeMap<String, String> {
    v.get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The referrer `bytes` (a manifest whose subject is `subject`) as a [`Referrer`]; `None`
/// when the document has no subject or names another.
pub fn referrer_of(bytes: &[u8], digest: Digest, subject: &Digest) -> Option<Referrer> {
    let (named, media_type, artifact_type, annotations) = as_referrer(bytes)?;
    (named == *subject).then_some(Referrer {
        digest,
        media_type,
        artifact_type,
        size: bytes.len() as u64,
        annotations,
        subject: *subject,
    })
}

/// A manifest's own `artifactType`, when it declares one (for the descriptor a name keeps).
pub fn artifact_type_of(bytes: &[u8]) -> Option<String> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(rename = "artifactType")]
        artifact_type: Option<String>,
    }
    serde_json::from_slice::<Doc>(bytes)
        .ok()?
        .artifact_type
        .filter(|t| super::is_media_type(t))
}

/// `descriptor` with its `artifactType` set to `artifact_type`, when there is one.
pub fn with_artifact_type(
    mut descriptor: oci_spec::image::Descriptor,
    artifact_type: Option<&str>,
) -> oci_spec::image::Descriptor {
    if let Some(t) = artifact_type {
        descriptor.set_artifact_type(Some(oci_spec::image::MediaType::from(t)));
    }
    descriptor
}

/// The tag that lists the referrers of `subject` on a registry without the referrers API
/// (distribution-spec 1.1's tag schema): `<alg>-<hex>`, cut to the 128 characters a tag
/// may have.
pub fn fallback_tag(subject: &Digest) -> String {
    let mut tag = format!("{}-{}", subject.algorithm(), subject.hex());
    tag.truncate(128);
    tag
}

/// The referrers of `subject` that the image index `bytes` lists (a referrers API page or a
/// tag-schema index): each manifest entry with a valid digest, its media type, size,
/// `artifactType` and annotations. Entries that are not descriptors are skipped; more than
/// `max` entries, or a document that is not an index, is `FailedPrecondition` naming `what`.
pub fn parse_referrers_index(
    bytes: &[u8],
    subject: &Digest,
    max: usize,
    what: &str,
) -> Result<Vec<Referrer>> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::FailedPrecondition(format!("{what}: not a JSON image index: {e}")))?;
    if !doc.is_object() {
        return Err(Error::FailedPrecondition(format!(
            "{what}: not an image index (a JSON object)"
        )));
    }
    let media_type = doc.get("mediaType").and_then(Value::as_str);
    if media_type.is_some_and(|m| m != MEDIA_TYPE_OCI_INDEX) {
        return Err(Error::FailedPrecondition(format!(
            "{what}: a {:?} where an image index of referrers belongs",
            media_type.unwrap_or_default()
        )));
    }
    let Some(entries) = doc.get("manifests") else {
        return Ok(Vec::new());
    };
    let entries = entries
        .as_array()
        .ok_or_else(|| Error::FailedPrecondition(format!("{what}: `manifests` is not a list")))?;
    if entries.len() > max {
        return Err(Error::FailedPrecondition(format!(
            "{what}: lists {} referrers, more than the {max} a listing may have",
            entries.len()
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Some(digest) = e
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| Digest::parse(d).ok())
        else {
            continue;
        };
        let Some(size) = e.get("size").and_then(Value::as_u64) else {
            continue;
        };
        if size > super::layout::MAX_JSON_SIZE {
            continue;
        }
        let media_type = e
            .get("mediaType")
            .and_then(Value::as_str)
            .filter(|m| super::is_media_type(m))
            .unwrap_or(super::MEDIA_TYPE_OCI_MANIFEST)
            .to_owned();
        out.push(Referrer {
            digest,
            media_type,
            // What is not a media type by RFC 6838 is not shown or matched as one.
            artifact_type: e
                .get("artifactType")
                .and_then(Value::as_str)
                .filter(|t| super::is_media_type(t))
                .map(str::to_owned),
            size,
            annotations: annotations_of(e),
            subject: *subject,
        });
    }
    Ok(out)
}

/// `index` (a tag-schema index as read, or `None` when the tag does not exist) with
/// `entry` added, every other entry and field kept as it was: the bytes to put back, or
/// `None` when the index lists `entry` already.
pub fn add_to_referrers_index(index: Option<&[u8]>, entry: &Referrer) -> Result<Option<Vec<u8>>> {
    let mut doc = match index {
        None => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [],
        }),
        Some(bytes) => {
            let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "the referrers tag of {} is not a JSON image index: {e}",
                    entry.subject
                ))
            })?;
            if !doc.is_object() {
                return Err(Error::FailedPrecondition(format!(
                    "the referrers tag of {} is not an image index",
                    entry.subject
                )));
            }
            doc
        }
    };
    let manifests = doc
        .as_object_mut()
        .expect("checked to be an object")
        .entry("manifests")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = manifests.as_array_mut() else {
        return Err(Error::FailedPrecondition(format!(
            "the referrers tag of {}: `manifests` is not a list",
            entry.subject
        )));
    };
    let digest = entry.digest.to_string();
    if list
        .iter()
        .any(|e| e.get("digest").and_then(Value::as_str) == Some(digest.as_str()))
    {
        return Ok(None);
    }
    list.push(entry.descriptor());
    Ok(Some(serde_json::to_vec(&doc).map_err(|e| {
        Error::InvalidArgument(format!("serialise a referrers index: {e}"))
    })?))
}

/// Whether the index `bytes` lists `digest` among its manifests.
pub fn index_lists(bytes: &[u8], digest: &Digest) -> bool {
    let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    let d = digest.to_string();
    doc.get("manifests")
        .and_then(Value::as_array)
        .is_some_and(|l| {
            l.iter()
                .any(|e| e.get("digest").and_then(Value::as_str) == Some(d.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Digest {
        crate::digest::Algorithm::Sha256.digest(b"subject")
    }

    fn referrer(n: u8) -> Referrer {
        Referrer {
            digest: crate::digest::Algorithm::Sha256.digest(&[n]),
            media_type: super::super::MEDIA_TYPE_OCI_MANIFEST.into(),
            artifact_type: Some("application/vnd.dev.sigstore".into()),
            size: 300 + u64::from(n),
            annotations: [(
                "org.opencontainers.image.created".to_owned(),
                "2026-12-06T00:00:00Z".to_owned(),
            )]
            .into(),
            subject: subject(),
        }
    }

    #[test]
    fn the_fallback_tag_is_the_algorithm_and_hex() {
        let s = subject();
        assert_eq!(fallback_tag(&s), format!("sha256-{}", s.hex()));
        assert!(fallback_tag(&s).len() <= 128);
    }

    #[test]
    fn entries_added_are_listed_once_and_others_are_kept() {
        let (a, b) = (referrer(1), referrer(2));
        let first = add_to_referrers_index(None, &a).unwrap().unwrap();
        assert!(add_to_referrers_index(Some(&first), &a).unwrap().is_none());
        let mut other: Value = serde_json::from_slice(&first).unwrap();
        other["annotations"] = serde_json::json!({"kept": "yes"});
        let other = serde_json::to_vec(&other).unwrap();
        let both = add_to_referrers_index(Some(&other), &b).unwrap().unwrap();
        let listed = parse_referrers_index(&both, &subject(), 10, "t").unwrap();
        assert_eq!(listed, vec![a.clone(), b.clone()]);
        assert!(index_lists(&both, &a.digest) && index_lists(&both, &b.digest));
        let doc: Value = serde_json::from_slice(&both).unwrap();
        assert_eq!(doc["annotations"]["kept"], "yes");
        assert_eq!(doc["mediaType"], MEDIA_TYPE_OCI_INDEX);
    }

    #[test]
    fn hostile_listings_fail_naming_what_is_wrong() {
        let s = subject();
        let many = serde_json::json!({"manifests": (0..11).map(|n| referrer(n).descriptor()).collect::<Vec<_>>()});
        let err =
            parse_referrers_index(&serde_json::to_vec(&many).unwrap(), &s, 10, "page").unwrap_err();
        assert!(err.to_string().contains("more than the 10"), "{err}");
        for bad in [
            &b"[]"[..],
            b"{\"manifests\":7}",
            b"{\"mediaType\":\"text/html\"}",
            b"\x1b[2J",
        ] {
            assert!(parse_referrers_index(bad, &s, 10, "page").is_err());
        }
        let skipped = br#"{"manifests":[{"digest":"sha256:nope","size":1},{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},7]}"#;
        assert!(
            parse_referrers_index(skipped, &s, 10, "page")
                .unwrap()
                .is_empty()
        );
        assert!(add_to_referrers_index(Some(b"[1]"), &referrer(1)).is_err());
        assert!(add_to_referrers_index(Some(b"{\"manifests\":{}}"), &referrer(1)).is_err());
    }
}
