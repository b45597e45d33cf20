//! The bodies of the fuzz targets (`fuzz/`), here so that every crash input committed under
//! `fuzz/regressions/<target>/` is replayed as an ordinary test (`tests/fuzz_regressions.rs`).
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
        let ours = crate::reference::parse(text).map(|p| (p.registry, p.repository, p.tag));
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
    let _ = crate::refs::children(data);
    let _ = crate::store::images::sniff_media_type(data);
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
    match which % 6 {
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
