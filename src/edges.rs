//! Edges between blobs: the children a manifest or index names (config, layers, manifests,
//! subject, blobs) and the `containerd.io/gc.ref.content.*` labels. The store records the
//! first kind in its edge tables (`store/edge_tables.rs`; on disk, the `refs` tables) when
//! the parent is committed, with no size cap; gc follows both.

use std::io::Read;
use std::path::Path;

use crate::content::Labels;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Blobs larger than this are not parsed for children (no manifest is that large).
pub const MAX_PARSED: u64 = 4 << 20;

/// Label prefix whose values name content a blob keeps alive (containerd's convention).
pub const GC_REF_CONTENT_PREFIX: &str = "containerd.io/gc.ref.content";

/// Label that makes a blob a gc root.
pub const GC_ROOT: &str = "containerd.io/gc.root";

/// The children named by a manifest or index, in document order, deduplicated; `None` when
/// `bytes` is not a JSON manifest or index. Never fails: a child whose digest does not parse
/// is skipped (it cannot name stored content).
pub fn children(bytes: &[u8]) -> Option<Vec<Digest>> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let obj = doc.as_object()?;
    let is_index = obj
        .get("manifests")
        .is_some_and(serde_json::Value::is_array);
    let is_manifest =
        obj.contains_key("config") || obj.contains_key("layers") || obj.contains_key("blobs");
    if !is_index && !is_manifest {
        return None;
    }
    let mut out: Vec<Digest> = Vec::new();
    let mut push = |v: Option<&serde_json::Value>| {
        if let Some(d) = v
            .and_then(|d| d.get("digest"))
            .and_then(serde_json::Value::as_str)
            .and_then(|s| Digest::parse(s).ok())
            && !out.contains(&d)
        {
            out.push(d);
        }
    };
    push(obj.get("config"));
    for list in ["manifests", "layers", "blobs"] {
        if let Some(items) = obj.get(list).and_then(serde_json::Value::as_array) {
            for item in items {
                push(Some(item));
            }
        }
    }
    push(obj.get("subject"));
    Some(out)
}

/// [`children`] of the file at `path`, reading it only when it is small and starts like JSON.
pub fn children_of_path(path: &Path) -> Result<Option<Vec<Digest>>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    if len > MAX_PARSED {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(children(&bytes))
}

/// The digests named by `containerd.io/gc.ref.content*` labels.
pub fn label_refs(labels: &Labels) -> impl Iterator<Item = Digest> + '_ {
    labels
        .range(GC_REF_CONTENT_PREFIX.to_owned()..)
        .take_while(|(k, _)| k.starts_with(GC_REF_CONTENT_PREFIX))
        .filter_map(|(_, v)| Digest::parse(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn manifest_and_index_children() {
        let c = Algorithm::Sha256.digest(b"config");
        let l = Algorithm::Sha256.digest(b"layer");
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{c}","size":6}},"layers":[{{"digest":"{l}","size":5}},{{"digest":"{l}","size":5}}]}}"#
        );
        assert_eq!(children(m.as_bytes()), Some(vec![c, l]));
        let i = format!(r#"{{"manifests":[{{"digest":"{c}"}}],"subject":{{"digest":"{l}"}}}}"#);
        assert_eq!(children(i.as_bytes()), Some(vec![c, l]));
        assert_eq!(children(b"{\"a\":1}"), None);
        assert_eq!(children(b"\x00\x01garbage"), None);
        assert_eq!(children(b"{not json"), None);
    }

    #[test]
    fn gc_ref_labels() {
        let d = Algorithm::Sha256.digest(b"x");
        let labels: Labels = [
            ("containerd.io/gc.ref.content.l.0".to_owned(), d.to_string()),
            (
                "containerd.io/gc.ref.content.m".to_owned(),
                "not a digest".to_owned(),
            ),
            ("other".to_owned(), d.to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(label_refs(&labels).collect::<Vec<_>>(), vec![d]);
    }
}
