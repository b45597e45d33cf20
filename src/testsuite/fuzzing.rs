//! The bodies of the fuzz targets (`fuzz/`), here so that every crash input committed under
//! `fuzz/regressions/<target>/` is replayed as an ordinary test (`tests/it/fuzz_regressions.rs`).
//! Each panics exactly when the property it checks is broken.

use std::cell::RefCell;

use crate::content::{ContentStore, Manager};
use crate::filter::{self, Adaptor, Value};
use crate::memory::MemoryStore;
use crate::store::Store;

struct Everything;

impl Adaptor for Everything {
    fn field(&self, path: &[String]) -> Option<Value<'_>> {
        match path.len() {
            1 => Some(Value::Num(path[0].len() as u64)),
            _ => Some(Value::Str(path.join(".").into())),
        }
    }
}

/// Filters: parsing never panics; what parses can be matched; errors point inside the input.
pub fn filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parts: Vec<&str> = text.split('\n').collect();
    match filter::parse_all(&parts) {
        Ok(f) => {
            let _ = f.matches(&Everything);
            let _ = f.index_hints("labels");
        }
        Err(e) => assert!(
            e.position <= e.input.len(),
            "error position past the input: {e:?}"
        ),
    }
}

/// Digests and references: never panic; accepted values print back to themselves (digests)
/// or to a name that parses to itself (references).
pub fn digest_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = crate::digest::Digest::parse(text) {
        assert_eq!(d.to_string(), text, "a digest prints as it was parsed");
    }
    if let Ok(n) = crate::names::Name::parse(text) {
        let again = crate::names::Name::parse(&n.to_string()).expect("a normalised name parses");
        assert_eq!(again, n, "normalisation is idempotent");
    }
    // The hand-written grammar agrees with oci-spec's expression on every ASCII name[:tag].
    if text.is_ascii() && !text.contains('@') {
        let ours = crate::names::grammar::parse(text).map(|p| (p.registry, p.repository, p.tag));
        let theirs = oci_spec::distribution::Reference::try_from(text).map(|r| {
            (
                r.registry().to_owned(),
                r.repository().to_owned(),
                r.tag().unwrap_or("latest").to_owned(),
            )
        });
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{text:?} normalises alike"),
            (Err(_), Err(_)) => {}
            _ => panic!("{text:?}: ours {ours:?}, oci-spec {theirs:?}"),
        }
    }
    let _ = crate::names::parse_platform(text);
    let _ = crate::store::lease::Resource::parse(text);
}

/// Manifests and indexes: reference extraction and sniffing never panic.
pub fn manifest(data: &[u8]) {
    let _ = crate::edges::children(data);
    let _ = crate::oci::sniff_media_type(data);
    let _ = serde_json::from_slice::<oci_spec::image::ImageManifest>(data);
    let _ = serde_json::from_slice::<oci_spec::image::ImageIndex>(data);
}

/// Referrers listings (a referrers API page, a tag-schema index) and what a manifest says
/// as a referrer: never a panic, never more entries than the bound, and an entry added to
/// an index is listed by it once, with every entry it had before.
pub fn referrers(data: &[u8]) {
    use crate::oci::referrers::{
        Referrer, add_to_referrers_index, as_referrer, index_lists, parse_referrers_index,
    };
    let subject = crate::digest::Algorithm::Sha256.digest(b"subject");
    let _ = as_referrer(data);
    let _ = crate::oci::referrers::artifact_type_of(data);
    let before = parse_referrers_index(data, &subject, 8, "fuzz");
    if let Ok(list) = &before {
        assert!(list.len() <= 8);
        assert!(list.iter().all(|r| r.subject == subject));
    }
    let entry = Referrer {
        digest: crate::digest::Algorithm::Sha256.digest(data),
        media_type: crate::oci::MEDIA_TYPE_OCI_MANIFEST.into(),
        artifact_type: Some("application/vnd.example".into()),
        size: 2,
        annotations: Default::default(),
        subject,
    };
    if let Ok(Some(after)) = add_to_referrers_index(Some(data), &entry) {
        assert!(
            index_lists(&after, &entry.digest),
            "the entry added is listed"
        );
        assert!(
            add_to_referrers_index(Some(&after), &entry).is_ok_and(|again| again.is_none()),
            "an entry is added once"
        );
        if let Ok(old) = before {
            let new = parse_referrers_index(&after, &subject, 9, "fuzz")
                .expect("an index that parsed before parses after an entry is added");
            assert!(old.iter().all(|r| new.contains(r)), "no entry is lost");
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<tempfile_dir::Dir>> = const { RefCell::new(None) };
}

/// A scratch directory on tmpfs when there is one (fsync is cheap there).
mod tempfile_dir {
    use std::path::PathBuf;

    pub struct Dir {
        pub path: PathBuf,
        pub n: u64,
    }

    impl Dir {
        pub fn new() -> Dir {
            let base = if std::path::Path::new("/dev/shm").is_dir() {
                "/dev/shm"
            } else {
                "/tmp"
            };
            let path = PathBuf::from(base).join(format!("ocistore-fuzz-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&path);
            Dir { path, n: 0 }
        }

        pub fn fresh(&mut self) -> PathBuf {
            self.n += 1;
            let p = self.path.join(format!("s{}", self.n));
            let _ = std::fs::remove_dir_all(self.path.join(format!("s{}", self.n - 1)));
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn fresh_root() -> std::path::PathBuf {
    SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(tempfile_dir::Dir::new)
            .fresh()
    })
}

/// Operation sequences decoded from bytes agree between the redb store and the model.
pub fn model(data: &[u8]) {
    use super::model::{Op, apply, decode, state};
    let ops = decode(data);
    if ops.is_empty() || ops.len() > 64 {
        return;
    }
    let root = fresh_root();
    let mut store = Store::open(&root).expect("open a scratch store");
    let model = MemoryStore::new();
    for (i, op) in ops.iter().enumerate() {
        if *op == Op::Reopen {
            drop(store);
            store = Store::open(&root).expect("reopen");
            assert_eq!(
                state(&store),
                state(&model),
                "state after reopen at step {i}"
            );
            continue;
        }
        assert_eq!(apply(&store, op), apply(&model, op), "step {i}: {op:?}");
    }
}

/// What a user sees of a store: every blob digest and every image name, each in order.
/// Used to check that a refused input left the store as it was.
pub fn listing(store: &Store) -> (Vec<String>, Vec<String>) {
    let mut blobs = Vec::new();
    store
        .walk(
            &mut |i| {
                blobs.push(i.digest.to_string());
                Ok(())
            },
            &[],
        )
        .expect("walk");
    let names = store
        .images(&[])
        .expect("images")
        .into_iter()
        .map(|i| i.name)
        .collect();
    (blobs, names)
}

/// Arbitrary bytes as an archive: no panic; a failed import changes nothing visible.
pub fn import(data: &[u8]) {
    let root = fresh_root();
    let store = Store::open(&root).expect("open a scratch store");
    let seed = b"seed blob";
    crate::helpers::write_blob(
        &store,
        "seed",
        &mut &seed[..],
        None,
        None,
        Default::default(),
    )
    .expect("seed");
    let before = listing(&store);
    let result = store.import_reader(&mut &data[..], crate::oci::import::Options::default());
    if result.is_err() {
        assert_eq!(
            listing(&store),
            before,
            "a failed import left the store changed"
        );
    }
    let _: &dyn ContentStore = &store;
}

/// What a registry or a config file hands us: the first byte picks the parser, the rest is
/// its input. None may panic; what they accept must hold together.
#[cfg(feature = "registry")]
pub fn registry_wire(data: &[u8]) {
    use crate::registry::{auth, hosts, parse_content_range, parse_link_next};
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let path = std::path::Path::new("/fuzz/host/hosts.toml");
    // 0 to 5 pick what they always picked (the inputs under fuzz/regressions keep their
    // meaning); 6 and 7 are the tag-list page and the descriptor sizes.
    match which % 8 {
        0 => {
            if let Ok(list) = auth::parse_challenges(&text) {
                assert!(!list.is_empty(), "an accepted header has a challenge");
                for c in list {
                    assert!(!c.scheme.is_empty(), "{text:?}");
                    assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
                }
            }
        }
        1 => {
            if let Some(url) = parse_link_next(&text, "http://h") {
                assert!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "{url:?}"
                );
            }
        }
        2 => {
            if let Some((start, end, total)) = parse_content_range(&text) {
                assert!(start <= end, "{text:?}");
                assert!(total.is_none_or(|t| end < t), "{text:?}");
            }
        }
        3 => {
            if let Ok(c) = hosts::parse(&text, path) {
                for e in c.mirrors.iter().chain(c.server.iter()) {
                    assert!(
                        e.url.is_empty()
                            || e.url.starts_with("http://")
                            || e.url.starts_with("https://")
                    );
                }
            }
        }
        4 => {
            // find_in: never runs a credential helper the input names.
            let _ = auth::find_in(&text, path, "127.0.0.1:5000");
            let _ = auth::find_in(&text, path, "docker.io");
        }
        6 => tag_page_wire(rest, &text),
        7 => descriptor_sizes_wire(rest, &text),
        _ => {
            // A manifest or index from the wire, under every media type a registry may claim.
            for mt in [
                crate::oci::MEDIA_TYPE_OCI_INDEX,
                crate::oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
                crate::oci::MEDIA_TYPE_OCI_MANIFEST,
                crate::oci::MEDIA_TYPE_DOCKER_MANIFEST,
                "application/octet-stream",
            ] {
                if let Ok(Some(children)) = crate::oci::try_children(Some(mt), rest) {
                    for c in children {
                        assert!(crate::Digest::parse(c.digest.as_str()).is_ok());
                    }
                }
            }
        }
    }
}

/// A tag-list page as `Registry::tags_page` reads it (`{"tags": [...]}`; what is not a
/// string or not a tag is skipped): whatever passes the distribution spec's tag grammar, of
/// the page or of the input's lines, is 1 to 128 bytes of `[A-Za-z0-9_.-]` not starting with
/// `.` or `-` (no path, no control character, nothing a terminal acts on). The page's `Link`
/// (each line of the input), resolved against odd origins, is an absolute http(s) URL of its
/// own, or the origin followed by the target's path: a relative target never changes host.
#[cfg(feature = "registry")]
fn tag_page_wire(rest: &[u8], text: &str) {
    use crate::registry::{is_valid_tag, parse_link_next};
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        tags: Option<Vec<serde_json::Value>>,
    }
    let listed: Vec<String> = serde_json::from_slice::<Page>(rest)
        .ok()
        .and_then(|p| p.tags)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for tag in listed.iter().map(String::as_str).chain(text.lines()) {
        if is_valid_tag(tag) {
            assert!(!tag.is_empty() && tag.len() <= 128, "{tag:?}");
            assert!(
                tag.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
                "{tag:?}"
            );
            assert!(!tag.starts_with(['.', '-']), "{tag:?}");
        }
    }
    for origin in [
        "http://h",
        "https://registry.example:5000",
        "http://[::1]:5000",
        "http://h/",
        "",
        "ftp://h",
        "http://h?x=1",
    ] {
        for header in std::iter::once(text).chain(text.lines()) {
            let Some(url) = parse_link_next(header, origin) else {
                continue;
            };
            let absolute = url.starts_with("http://") || url.starts_with("https://");
            let relative = url
                .strip_prefix(origin)
                .is_some_and(|path| path.starts_with('/'));
            assert!(
                absolute || relative,
                "Link {header:?} against {origin:?} gave {url:?}"
            );
            if !origin.is_empty() && !absolute {
                // Relative: the origin's host, and the header named that path.
                assert!(header.contains(&url[origin.len()..]), "{header:?} {url:?}");
            }
        }
    }
}

/// A manifest's descriptors as the pull reads them (`oci::try_children`, strict, under every
/// manifest and index media type): every child is a descriptor of the document in document
/// order, its size that descriptor's `size` as written (an unsigned 64-bit integer: 2^64-1
/// round-trips, 2^64, negatives and fractions are refused, nothing panics), its media type
/// empty or one by RFC 6838. `oci::document_media_type` never panics and answers a known
/// manifest or index type or a media type; `oci::is_media_type` never accepts a control
/// character (but HTAB as RFC 7231's optional whitespace around a `;`) or a non-ASCII one.
#[cfg(feature = "registry")]
fn descriptor_sizes_wire(rest: &[u8], text: &str) {
    use crate::oci::{
        MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        MEDIA_TYPE_OCI_ARTIFACT_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
        document_media_type, is_index, is_manifest, is_media_type, try_children,
    };
    use serde_json::Value;
    let doc: Option<Value> = serde_json::from_slice(rest).ok();
    for mt in [
        MEDIA_TYPE_OCI_MANIFEST,
        MEDIA_TYPE_DOCKER_MANIFEST,
        MEDIA_TYPE_OCI_ARTIFACT_MANIFEST,
        MEDIA_TYPE_OCI_INDEX,
        MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    ] {
        let Ok(Some(children)) = try_children(Some(mt), rest) else {
            continue;
        };
        let doc = doc
            .as_ref()
            .unwrap_or_else(|| panic!("{mt}: children of what is not JSON"));
        let list = |name: &str| -> Vec<&Value> {
            doc.get(name)
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        };
        // The descriptors strict parsing took, in its order.
        let mut described: Vec<&Value> = Vec::new();
        if is_index(mt) {
            described.extend(list("manifests"));
        } else {
            described.extend(doc.get("config"));
            described.extend(list("layers"));
            described.extend(list("blobs"));
        }
        described.extend(doc.get("subject").filter(|v| !v.is_null()));
        assert_eq!(described.len(), children.len(), "{mt}: {children:?}");
        for (c, d) in children.iter().zip(described) {
            assert_eq!(
                d.get("size").and_then(Value::as_u64),
                Some(c.size),
                "{mt}: the size of {d}"
            );
            assert_eq!(
                serde_json::from_str::<u64>(&serde_json::to_string(&c.size).unwrap()).ok(),
                Some(c.size),
                "a size round-trips"
            );
            assert_eq!(
                d.get("digest").and_then(Value::as_str),
                Some(c.digest.as_str())
            );
            assert!(
                c.media_type.is_empty() || is_media_type(&c.media_type),
                "{mt}: child media type {:?}",
                c.media_type
            );
        }
    }
    let first_line = text.lines().next();
    for declared in [
        None,
        first_line,
        Some(MEDIA_TYPE_OCI_MANIFEST),
        Some(MEDIA_TYPE_OCI_INDEX),
        Some("application/json"),
    ] {
        if let Some(m) = document_media_type(rest, declared) {
            assert!(
                is_index(&m) || is_manifest(&m) || is_media_type(&m),
                "{declared:?}: {m:?}"
            );
        }
    }
    for s in std::iter::once(text)
        .chain(text.lines())
        .chain(text.split(['\0', ',']))
    {
        if is_media_type(s) {
            // HTAB only as RFC 7231's optional whitespace around a `;`, never in the
            // type or subtype, and no other control character anywhere.
            let essence = s
                .split_once(';')
                .map_or(s, |(e, _)| e.trim_end_matches([' ', '\t']));
            assert!(s.is_ascii(), "{s:?}");
            assert!(!essence.chars().any(char::is_control), "{s:?}");
            assert!(!s.chars().any(|c| c.is_control() && c != '\t'), "{s:?}");
        }
    }
}
