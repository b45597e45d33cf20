//! OCI interchange: import and export of image layouts and `docker save` archives, over the
//! in-memory store and a test sink that stages in memory and commits at the end.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::rc::Rc;

use ocistore::oci::export::{self, ExportImage, Format};
use ocistore::oci::import::{self, Outcome, Sink, Staged};
use ocistore::oci::layout::MAX_DEPTH;
use ocistore::oci::{self, sample};
use ocistore::{
    Algorithm, Digest, Error, ErrorKind, Manager, MemoryStore, Provider, Result, helpers,
};
use serde_json::{Value, json};
use tar::EntryType;

// ---------------------------------------------------------------- the test sink

/// Stages into a map; `commit` writes everything into the store.
struct TestSink<'a> {
    store: &'a MemoryStore,
    staged: BTreeMap<Digest, Vec<u8>>,
}

impl<'a> TestSink<'a> {
    fn new(store: &'a MemoryStore) -> Self {
        TestSink {
            store,
            staged: BTreeMap::new(),
        }
    }

    fn commit(self) {
        for (d, bytes) in self.staged {
            helpers::write_blob(
                self.store,
                &d.to_string(),
                &mut &bytes[..],
                Some(bytes.len() as u64),
                Some(&d),
                Default::default(),
            )
            .unwrap();
        }
    }
}

impl Sink for TestSink<'_> {
    fn is_committed(&mut self, digest: &Digest) -> Result<bool> {
        match self.store.info(digest) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn stage(
        &mut self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Staged> {
        let mut bytes = Vec::new();
        if let Err(e) = reader.read_to_end(&mut bytes) {
            return Err(Error::Io {
                action: "read",
                path: "input".into(),
                source: e,
            });
        }
        let alg = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let digest = alg.digest(&bytes);
        if let Some(s) = size.filter(|s| *s != bytes.len() as u64) {
            return Err(Error::FailedPrecondition(format!(
                "unexpected size {}, expected {s}",
                bytes.len()
            )));
        }
        if let Some(e) = expected.filter(|e| **e != digest) {
            return Err(Error::FailedPrecondition(format!(
                "unexpected digest {digest}, expected {e}"
            )));
        }
        let size = bytes.len() as u64;
        let written = !self.is_committed(&digest)? && !self.staged.contains_key(&digest);
        if written {
            self.staged.insert(digest, bytes);
        }
        Ok(Staged {
            digest,
            size,
            written,
        })
    }

    fn read(&mut self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let bytes = match self.staged.get(digest) {
            Some(b) => b.clone(),
            None => helpers::read_blob(self.store, digest)?,
        };
        if bytes.len() as u64 > limit {
            return Err(Error::FailedPrecondition(format!(
                "{digest} is larger than {limit}"
            )));
        }
        Ok(bytes)
    }

    fn committed_size(&mut self, digest: &Digest) -> Result<Option<u64>> {
        match self.store.info(digest) {
            Ok(i) => Ok(Some(i.size)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn import_bytes(store: &MemoryStore, bytes: &[u8], opts: import::Options) -> Result<Outcome> {
    let mut sink = TestSink::new(store);
    let outcome = import::import_reader(&mut &bytes[..], &mut sink, opts)?;
    sink.commit();
    Ok(outcome)
}

fn import_err(bytes: &[u8]) -> Error {
    let store = MemoryStore::new();
    import_bytes(&store, bytes, Default::default()).expect_err("import should fail")
}

fn sample_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    sample::sample_archive(&mut out).unwrap();
    out
}

fn digest_of(d: &oci_spec::image::Descriptor) -> Digest {
    Digest::parse(d.digest().as_ref()).unwrap()
}

/// Exports every imported image under its name and tag.
fn export_images(
    store: &MemoryStore,
    outcome: &Outcome,
    opts: &export::Options,
) -> Result<Vec<u8>> {
    let images: Vec<ExportImage> = outcome
        .images
        .iter()
        .map(|i| ExportImage {
            name: i.name.clone(),
            tag: i.name.rsplit_once(':').map(|(_, t)| t.to_owned()),
            descriptor: i.descriptor.clone(),
        })
        .collect();
    let mut out = Vec::new();
    export::export_archive(store, &images, opts, &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------- building archives

/// A tar of raw entries: (path bytes written verbatim into the header, type, data, link).
fn raw_tar(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn blob_entry(bytes: &[u8]) -> (String, Vec<u8>) {
    (
        format!("blobs/sha256/{}", Algorithm::Sha256.digest(bytes).hex()),
        bytes.to_vec(),
    )
}

/// An OCI layout archive of `index` and `blobs`.
fn layout_tar(index: &Value, blobs: &[Vec<u8>]) -> Vec<u8> {
    let index = serde_json::to_vec(index).unwrap();
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let files: Vec<(String, Vec<u8>)> = [
        ("oci-layout".to_owned(), layout),
        ("index.json".to_owned(), index),
    ]
    .into_iter()
    .chain(blobs.iter().map(|b| blob_entry(b)))
    .collect();
    let entries: Vec<(&str, EntryType, &[u8], Option<&str>)> = files
        .iter()
        .map(|(p, d)| (p.as_str(), EntryType::Regular, d.as_slice(), None))
        .collect();
    raw_tar(&entries)
}

fn desc(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": Algorithm::Sha256.digest(bytes).to_string(), "size": bytes.len()})
}

/// A manifest with a config and one layer; returns (manifest, config, layer) bytes.
fn small_image(tag: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"x":"{tag}"}}"#).into_bytes();
    let layer = format!("layer of {tag}").into_bytes();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_TYPE_OCI_MANIFEST,
        "config": desc(oci::MEDIA_TYPE_OCI_CONFIG, &config),
        "layers": [desc(oci::MEDIA_TYPE_OCI_LAYER_TAR, &layer)],
    }))
    .unwrap();
    (manifest, config, layer)
}

fn index_of(entries: Vec<Value>) -> Value {
    json!({"schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_OCI_INDEX, "manifests": entries})
}

// ---------------------------------------------------------------- round trips

#[test]
fn sample_round_trip_keeps_every_digest_and_bytes() {
    let original = sample_bytes();
    let a = MemoryStore::new();
    let first = import_bytes(&a, &original, Default::default()).unwrap();
    assert_eq!(first.images.len(), 1);
    assert_eq!(first.images[0].name, sample::SAMPLE_NAME);
    assert_eq!(
        first.images[0].descriptor.media_type().to_string(),
        oci::MEDIA_TYPE_OCI_INDEX
    );
    // index + 2 manifests + 2 configs + a shared layer + 2 hello layers.
    assert_eq!((first.blobs_written, first.blobs_present), (8, 0));
    assert_eq!(first.bytes_written, {
        let mut n = 0;
        a.walk(
            &mut |i| {
                n += i.size;
                Ok(())
            },
            &[],
        )
        .unwrap();
        n
    });

    // Export of what was imported is the very archive it came from.
    let exported = export_images(&a, &first, &Default::default()).unwrap();
    assert!(
        exported == original,
        "re-export differs from the sample archive"
    );
    assert!(
        export_images(&a, &first, &Default::default()).unwrap() == exported,
        "exports differ"
    );

    let b = MemoryStore::new();
    let second = import_bytes(&b, &exported, Default::default()).unwrap();
    assert_eq!(second.images, first.images);
    let digests = |s: &MemoryStore| {
        let mut v = Vec::new();
        s.walk(
            &mut |i| {
                v.push((i.digest, i.size));
                Ok(())
            },
            &[],
        )
        .unwrap();
        v.sort();
        v
    };
    assert_eq!(digests(&a), digests(&b));

    // Importing again writes nothing.
    let again = import_bytes(&a, &original, Default::default()).unwrap();
    assert_eq!(
        (
            again.blobs_written,
            again.blobs_present,
            again.bytes_written
        ),
        (0, 8, 0)
    );
}

#[test]
fn export_is_independent_of_image_order() {
    let store = MemoryStore::new();
    let multi = sample::sample_index(&store).unwrap();
    let single = sample::sample_manifest(&store).unwrap();
    let img = |name: &str, d: &oci_spec::image::Descriptor| ExportImage {
        name: name.into(),
        tag: Some("t".into()),
        descriptor: d.clone(),
    };
    let mut one = Vec::new();
    let mut two = Vec::new();
    let o1 = export::export_archive(
        &store,
        &[img("b/x:t", &multi), img("a/y:t", &single)],
        &Default::default(),
        &mut one,
    )
    .unwrap();
    export::export_archive(
        &store,
        &[img("a/y:t", &single), img("b/x:t", &multi)],
        &Default::default(),
        &mut two,
    )
    .unwrap();
    assert!(one == two);
    assert_eq!(o1.images[0].0, "a/y:t");
    // The amd64 manifest and its blobs are shared: 8 blobs in all.
    assert_eq!(o1.blobs, 8);
    let back = import_bytes(&MemoryStore::new(), &one, Default::default()).unwrap();
    let names: Vec<&str> = back.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a/y:t", "b/x:t"]);
}

#[test]
fn archive_entries_are_reproducible_and_ordered() {
    let bytes = sample_bytes();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut paths = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(
            (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
            (0, 0, 0)
        );
        assert_eq!(h.username().unwrap(), Some(""));
        let dir = h.entry_type() == EntryType::Directory;
        assert_eq!(h.mode().unwrap(), if dir { 0o755 } else { 0o644 });
        paths.push(String::from_utf8(e.path_bytes().into_owned()).unwrap());
    }
    assert_eq!(
        &paths[..4],
        ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
    );
    let blobs = &paths[4..];
    assert!(blobs.windows(2).all(|w| w[0] < w[1]), "{blobs:?}");
    assert_eq!(blobs.len(), 8);
}

#[test]
fn gzip_zstd_and_plain_tar_import_alike() {
    let plain = sample_bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst =
        ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest);
    // Two zstd frames, as parallel compressors write.
    let (h1, h2) = plain.split_at(plain.len() / 3);
    let mut zst2 =
        ruzstd::encoding::compress_to_vec(h1, ruzstd::encoding::CompressionLevel::Fastest);
    zst2.extend(ruzstd::encoding::compress_to_vec(
        h2,
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    let expected = import_bytes(&MemoryStore::new(), &plain, Default::default()).unwrap();
    for (what, bytes) in [("gzip", &gz), ("zstd", &zst), ("zstd frames", &zst2)] {
        let got = import_bytes(&MemoryStore::new(), bytes, Default::default()).unwrap();
        assert_eq!(got.images, expected.images, "{what}");
        assert_eq!(got.blobs_written, 8, "{what}");
    }
}

#[test]
fn progress_reports_the_total() {
    let bytes = sample_bytes();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let opts = import::Options {
        progress: Some(Box::new(move |n| s.borrow_mut().push(n))),
        ..Default::default()
    };
    import_bytes(&MemoryStore::new(), &bytes, opts).unwrap();
    assert_eq!(seen.borrow().last().copied(), Some(bytes.len() as u64));
}

#[test]
fn directory_layout_import_and_export() {
    let src = MemoryStore::new();
    let d = sample::sample_index(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let image = ExportImage {
        name: sample::SAMPLE_NAME.into(),
        tag: Some("1.0".into()),
        descriptor: d.clone(),
    };
    let opts = export::Options {
        format: Format::OciDir,
        platforms: vec![],
        ..Default::default()
    };
    let out = export::export_path(&src, std::slice::from_ref(&image), &opts, &dir).unwrap();
    assert_eq!(out.blobs, 8);
    // A second export into the same directory is refused.
    let err = export::export_dir(&src, std::slice::from_ref(&image), &opts, &dir).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    // An unreferenced blob in the layout is not staged.
    let (path, junk) = blob_entry(b"unreferenced");
    std::fs::write(dir.join(path), junk).unwrap();
    let store = MemoryStore::new();
    let mut sink = TestSink::new(&store);
    let got = import::import_path(&dir, &mut sink, Default::default()).unwrap();
    assert_eq!(got.blobs_written, 8);
    assert_eq!(digest_of(&got.images[0].descriptor), digest_of(&d));
    sink.commit();

    // Same layout as an archive file, through import_path.
    let file = tmp.path().join("image.tar");
    export::export_path(&src, &[image], &Default::default(), &file).unwrap();
    let mut sink = TestSink::new(&store);
    let again = import::import_path(&file, &mut sink, Default::default()).unwrap();
    assert_eq!((again.blobs_written, again.blobs_present), (0, 8));
}

#[cfg(unix)]
#[test]
fn directory_with_a_symlinked_blob_is_refused() {
    let src = MemoryStore::new();
    let d = sample::sample_manifest(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let image = ExportImage {
        name: "x:1".into(),
        tag: Some("1".into()),
        descriptor: d.clone(),
    };
    export::export_dir(&src, &[image], &Default::default(), &dir).unwrap();
    let blob = dir.join(format!("blobs/sha256/{}", digest_of(&d).hex()));
    let moved = tmp.path().join("outside");
    std::fs::rename(&blob, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &blob).unwrap();
    let store = MemoryStore::new();
    let err =
        import::import_path(&dir, &mut TestSink::new(&store), Default::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

// ---------------------------------------------------------------- docker save

#[test]
fn docker_legacy_manifest_json() {
    let id1 = "1".repeat(64);
    let id2 = "2".repeat(64);
    let layer1 = raw_tar(&[("hello.txt", EntryType::Regular, b"hi\n", None)]);
    let layer2 = raw_tar(&[("bye.txt", EntryType::Regular, b"bye\n", None)]);
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}"#.to_vec();
    let config_name = format!("{}.json", Algorithm::Sha256.digest(&config).hex());
    let manifest = serde_json::to_vec(&json!([
        {"Config": config_name, "RepoTags": ["hello:legacy", "example.com/hello:also"],
         "Layers": [format!("{id1}/layer.tar"), format!("{id2}/layer.tar")]},
        // A second image whose layer.tar is docker's link to the first image's layer.
        {"Config": config_name, "RepoTags": null, "Layers": [format!("./{id2}/layer.tar"), "3333333333333333333333333333333333333333333333333333333333333333/layer.tar"]},
    ]))
    .unwrap();
    let id3 = "3".repeat(64);
    let (p1, p2, p3) = (
        format!("{id1}/layer.tar"),
        format!("{id2}/layer.tar"),
        format!("{id3}/layer.tar"),
    );
    let link = format!("../{id1}/layer.tar");
    let (v1, j1) = (format!("{id1}/VERSION"), format!("{id1}/json"));
    let archive = raw_tar(&[
        (&format!("{id1}/"), EntryType::Directory, b"", None),
        (&v1, EntryType::Regular, b"1.0", None),
        (&j1, EntryType::Regular, b"{}", None),
        (&p1, EntryType::Regular, &layer1, None),
        (&p2, EntryType::Regular, &layer2, None),
        (&p3, EntryType::Symlink, b"", Some(&link)),
        (&config_name, EntryType::Regular, &config, None),
        ("manifest.json", EntryType::Regular, &manifest, None),
        ("repositories", EntryType::Regular, b"{}", None),
    ]);
    let store = MemoryStore::new();
    let opts = import::Options {
        name: Some("unnamed:1".into()),
        ..Default::default()
    };
    let out = import_bytes(&store, &archive, opts).unwrap();
    let names: Vec<&str> = out.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["hello:legacy", "example.com/hello:also", "unnamed:1"]
    );
    assert_eq!(out.images[0].descriptor, out.images[1].descriptor);
    let first = &out.images[0].descriptor;
    assert_eq!(
        first.media_type().to_string(),
        oci::MEDIA_TYPE_DOCKER_MANIFEST
    );
    let bytes = helpers::read_blob(&store, &digest_of(first)).unwrap();
    let children = oci::try_children(Some(oci::MEDIA_TYPE_DOCKER_MANIFEST), &bytes)
        .unwrap()
        .unwrap();
    assert_eq!(children[0].media_type, oci::MEDIA_TYPE_DOCKER_CONFIG);
    assert_eq!(children[0].digest, Algorithm::Sha256.digest(&config));
    assert_eq!(children[1].media_type, oci::MEDIA_TYPE_DOCKER_LAYER_TAR);
    assert_eq!(children[1].digest, Algorithm::Sha256.digest(&layer1));
    let second = oci::children(
        None,
        &helpers::read_blob(&store, &digest_of(&out.images[2].descriptor)).unwrap(),
    )
    .unwrap();
    assert_eq!(second[2].digest, Algorithm::Sha256.digest(&layer1));

    // The made manifest is deterministic.
    let again = import_bytes(
        &MemoryStore::new(),
        &archive,
        import::Options {
            name: Some("unnamed:1".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(again.images, out.images);
}

#[test]
fn skopeo_docker_archive_layout() {
    // skopeo copy ... docker-archive: layers at the top as <hex>.tar, <id>/layer.tar links.
    let layer = raw_tar(&[("a.txt", EntryType::Regular, b"a\n", None)]);
    let hex = Algorithm::Sha256.digest(&layer).hex().to_owned();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_name = format!("{}.json", Algorithm::Sha256.digest(&config).hex());
    let manifest = serde_json::to_vec(
        &json!([{"Config": config_name, "RepoTags": ["docker.io/library/hello:docker"], "Layers": [format!("{hex}.tar")]}]),
    )
    .unwrap();
    let id = "c".repeat(64);
    let (layer_name, link_path, link) = (
        format!("{hex}.tar"),
        format!("{id}/layer.tar"),
        format!("../{hex}.tar"),
    );
    let archive = raw_tar(&[
        (&layer_name, EntryType::Regular, &layer, None),
        (&config_name, EntryType::Regular, &config, None),
        (&link_path, EntryType::Symlink, b"", Some(&link)),
        ("manifest.json", EntryType::Regular, &manifest, None),
    ]);
    let out = import_bytes(&MemoryStore::new(), &archive, Default::default()).unwrap();
    assert_eq!(out.images[0].name, "docker.io/library/hello:docker");
    assert_eq!(out.blobs_written, 3);
    // A link out of the archive root is still refused.
    let evil = raw_tar(&[(
        &link_path,
        EntryType::Symlink,
        b"",
        Some("../../etc/passwd.tar"),
    )]);
    assert_eq!(import_err(&evil).kind(), ErrorKind::InvalidArgument);
    let evil = raw_tar(&[(&layer_name, EntryType::Symlink, b"", Some(&link))]);
    assert_eq!(import_err(&evil).kind(), ErrorKind::InvalidArgument);
}

#[test]
fn newer_docker_save_prefers_index_json() {
    let (m, c, l) = small_image("new");
    let mut entry = desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m);
    entry["annotations"] = json!({"io.containerd.image.name": "docker.io/library/new:1", "org.opencontainers.image.ref.name": "1"});
    let index = serde_json::to_vec(&index_of(vec![entry])).unwrap();
    let manifest_json = serde_json::to_vec(
        &json!([{"Config": blob_entry(&c).0, "RepoTags": ["new:1"], "Layers": [blob_entry(&l).0]}]),
    )
    .unwrap();
    let files: Vec<(String, Vec<u8>)> = vec![
        blob_entry(&m),
        blob_entry(&c),
        blob_entry(&l),
        ("index.json".into(), index),
        ("manifest.json".into(), manifest_json),
    ];
    let entries: Vec<_> = files
        .iter()
        .map(|(p, d)| (p.as_str(), EntryType::Regular, d.as_slice(), None))
        .collect();
    let out = import_bytes(&MemoryStore::new(), &raw_tar(&entries), Default::default()).unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.images[0].name, "docker.io/library/new:1");
    assert_eq!(
        digest_of(&out.images[0].descriptor),
        Algorithm::Sha256.digest(&m)
    );
}

// ---------------------------------------------------------------- names

#[test]
fn bare_tag_joins_the_given_repository() {
    let (m, c, l) = small_image("t");
    let mut entry = desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m);
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "v2"});
    let archive = layout_tar(&index_of(vec![entry]), &[m, c, l]);
    let opts = import::Options {
        name: Some("localhost:5000/app:v1".into()),
        ..Default::default()
    };
    let out = import_bytes(&MemoryStore::new(), &archive, opts).unwrap();
    assert_eq!(out.images[0].name, "localhost:5000/app:v2");
    assert_eq!(import_err(&archive).kind(), ErrorKind::InvalidArgument);
}

#[test]
fn unnamed_images() {
    let (m1, c1, l1) = small_image("a");
    let (m2, c2, l2) = small_image("b");
    let two = layout_tar(
        &index_of(vec![
            desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m1),
            desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m2),
        ]),
        &[m1.clone(), c1.clone(), l1.clone(), m2, c2, l2],
    );
    let out = import_bytes(&MemoryStore::new(), &two, Default::default()).unwrap();
    assert!(out.images.iter().all(|i| i.name.is_empty()));
    let opts = import::Options {
        name: Some("x:1".into()),
        ..Default::default()
    };
    assert_eq!(
        import_bytes(&MemoryStore::new(), &two, opts)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let one = layout_tar(
        &index_of(vec![desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m1)]),
        &[m1, c1, l1],
    );
    let opts = import::Options {
        name: Some("x:1".into()),
        ..Default::default()
    };
    assert_eq!(
        import_bytes(&MemoryStore::new(), &one, opts)
            .unwrap()
            .images[0]
            .name,
        "x:1"
    );
}

// ---------------------------------------------------------------- platforms

#[test]
fn platform_export_changes_the_index_only_when_it_drops_something() {
    let store = MemoryStore::new();
    let d = sample::sample_index(&store).unwrap();
    let image = ExportImage {
        name: sample::SAMPLE_NAME.into(),
        tag: Some("1.0".into()),
        descriptor: d.clone(),
    };
    let p = |s: &str| ocistore::names::parse_platform(s).unwrap();
    let export_with = |platforms: Vec<oci_spec::image::Platform>| {
        let mut out = Vec::new();
        let opts = export::Options {
            platforms,
            ..Default::default()
        };
        let o = export::export_archive(&store, std::slice::from_ref(&image), &opts, &mut out);
        o.map(|o| (o, out))
    };
    let (all, _) = export_with(vec![p("linux/amd64"), p("linux/arm64")]).unwrap();
    assert_eq!(
        all.images[0].1,
        digest_of(&d),
        "nothing dropped: the original index"
    );
    assert_eq!(all.blobs, 8);

    let (arm, bytes) = export_with(vec![p("linux/arm64/v8")]).unwrap();
    assert_ne!(
        arm.images[0].1,
        digest_of(&d),
        "an entry dropped: a new index"
    );
    assert_eq!(arm.blobs, 5, "new index + manifest + config + 2 layers");
    let store2 = MemoryStore::new();
    let back = import_bytes(&store2, &bytes, Default::default()).unwrap();
    assert_eq!(digest_of(&back.images[0].descriptor), arm.images[0].1);
    let index = helpers::read_blob(&store2, &arm.images[0].1).unwrap();
    let kept = oci::children(Some(oci::MEDIA_TYPE_OCI_INDEX), &index).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0]
            .platform
            .as_ref()
            .unwrap()
            .architecture()
            .to_string(),
        "arm64"
    );

    assert_eq!(
        export_with(vec![p("linux/s390x")]).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn export_of_a_missing_blob_names_it() {
    let store = MemoryStore::new();
    let (m, c, _layer) = small_image("gone");
    for b in [&m, &c] {
        helpers::write_blob(&store, "x", &mut &b[..], None, None, Default::default()).unwrap();
    }
    let descriptor = ocistore::names::descriptor(
        oci::MEDIA_TYPE_OCI_MANIFEST,
        &Algorithm::Sha256.digest(&m),
        m.len() as u64,
    )
    .unwrap();
    let image = ExportImage {
        name: "x:1".into(),
        tag: None,
        descriptor,
    };
    let err =
        export::export_archive(&store, &[image], &Default::default(), &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string()
            .contains(&Algorithm::Sha256.digest(b"layer of gone").to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------- unusual but valid

#[test]
fn manifest_of_unknown_media_type_imports() {
    let thing = br#"{"whatever":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}}"#.to_vec();
    let index = index_of(vec![desc("application/vnd.example.thing.v1+json", &thing)]);
    let out = import_bytes(
        &MemoryStore::new(),
        &layout_tar(&index, &[thing]),
        Default::default(),
    )
    .unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.blobs_written, 1);
}

#[test]
fn tar_with_dot_slash_prefixes_and_pax_global_header() {
    let (m, c, l) = small_image("dots");
    let index =
        serde_json::to_vec(&index_of(vec![desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m)])).unwrap();
    let files: Vec<(String, Vec<u8>)> = [
        blob_entry(&m),
        blob_entry(&c),
        blob_entry(&l),
        ("index.json".into(), index),
    ]
    .into_iter()
    .map(|(p, d)| (format!("./{p}"), d))
    .collect();
    let mut entries: Vec<_> = vec![
        (
            "pax_global_header",
            EntryType::XGlobalHeader,
            &b"52 comment=0000000000000000000000000000000000000000\n"[..],
            None,
        ),
        ("./", EntryType::Directory, b"", None),
        ("./blobs/", EntryType::Directory, b"", None),
        ("./blobs/sha256/", EntryType::Directory, b"", None),
    ];
    entries.extend(
        files
            .iter()
            .map(|(p, d)| (p.as_str(), EntryType::Regular, d.as_slice(), None)),
    );
    import_bytes(&MemoryStore::new(), &raw_tar(&entries), Default::default()).unwrap();
}

// ---------------------------------------------------------------- hostile input

fn one_entry(path: &str, kind: EntryType, data: &[u8], link: Option<&str>) -> Vec<u8> {
    let (m, c, l) = small_image("h");
    let mut archive = layout_tar(
        &index_of(vec![desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m)]),
        &[m, c, l],
    );
    // Put the hostile entry first: drop the end-of-archive blocks after it instead.
    let mut hostile = raw_tar(&[(path, kind, data, link)]);
    hostile.truncate(hostile.len() - 1024);
    hostile.append(&mut archive);
    hostile
}

#[test]
fn hostile_entries_are_refused_by_name() {
    let hex = "a".repeat(64);
    let upper = format!("blobs/sha256/{}", "A".repeat(64));
    let short = format!("blobs/sha256/{}", &hex[..63]);
    let long = format!("blobs/sha256/{hex}0");
    let cases: Vec<(&str, EntryType, Option<&str>)> = vec![
        ("../evil", EntryType::Regular, None),
        ("blobs/../../evil", EntryType::Regular, None),
        ("/etc/passwd", EntryType::Regular, None),
        ("blobs/sha256/../../x", EntryType::Regular, None),
        (&upper, EntryType::Regular, None),
        (&short, EntryType::Regular, None),
        (&long, EntryType::Regular, None),
        (
            "blobs/md5/d41d8cd98f00b204e9800998ecf8427e",
            EntryType::Regular,
            None,
        ),
        ("etc/passwd", EntryType::Regular, None),
        ("index.json.bak", EntryType::Regular, None),
        ("evil-dir/", EntryType::Directory, None),
        ("oci-layout", EntryType::Symlink, Some("/etc/passwd")),
        (
            "blobs/sha256/x",
            EntryType::Symlink,
            Some("../../../etc/passwd"),
        ),
        ("index.json", EntryType::Link, Some("oci-layout")),
        ("oci-layout", EntryType::Char, None),
        ("oci-layout", EntryType::Block, None),
        ("oci-layout", EntryType::Fifo, None),
    ];
    for (path, kind, link) in cases {
        let err = import_err(&one_entry(path, kind, b"x", link));
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{path} {kind:?}: {err}"
        );
        let shown = path.trim_end_matches('/');
        assert!(err.to_string().contains(shown), "{path}: {err}");
    }
}

#[test]
fn blob_bytes_must_match_their_name() {
    let (_, _, l) = small_image("h");
    let (path, _) = blob_entry(&l);
    // The forged copy comes first; the genuine one later in the archive does not help.
    let err = import_err(&one_entry(
        &path,
        EntryType::Regular,
        b"not the layer",
        None,
    ));
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains(&path), "{err}");
}

#[test]
fn descriptor_size_that_lies_is_refused() {
    let (m, c, l) = small_image("size");
    let mut entry = desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m);
    entry["size"] = json!(m.len() + 1);
    let err = import_err(&layout_tar(
        &index_of(vec![entry]),
        &[m.clone(), c.clone(), l.clone()],
    ));
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    // A layer descriptor that lies about its size.
    let mut manifest: Value = serde_json::from_slice(&m).unwrap();
    manifest["layers"][0]["size"] = json!(l.len() - 1);
    let m2 = serde_json::to_vec(&manifest).unwrap();
    let err = import_err(&layout_tar(
        &index_of(vec![desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m2)]),
        &[m2.clone(), c, l],
    ));
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(
        err.to_string()
            .contains(&Algorithm::Sha256.digest(&m2).to_string()),
        "{err}"
    );
}

#[test]
fn truncated_archives_are_refused() {
    let plain = sample_bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst =
        ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest);
    // A plain tar cut inside its end-of-archive blocks is whole; cut it in the last blob.
    for (what, bytes, tail) in [("tar", &plain, 1100), ("gzip", &gz, 3), ("zstd", &zst, 3)] {
        for cut in [bytes.len() / 2 + 100, bytes.len() - tail] {
            let err = import_err(&bytes[..cut]);
            assert!(
                matches!(err.kind(), ErrorKind::InvalidArgument | ErrorKind::NotFound),
                "{what} cut at {cut}: {err}"
            );
        }
        let err = import_err(&bytes[..bytes.len() / 2 + 100]);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
    }
    assert_eq!(import_err(b"").kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        import_err(&[0x1f, 0x8b, 0x08]).kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn index_json_that_is_not_json() {
    let archive = raw_tar(&[("index.json", EntryType::Regular, b"{not json", None)]);
    assert_eq!(import_err(&archive).kind(), ErrorKind::InvalidArgument);
    let archive = raw_tar(&[(
        "index.json",
        EntryType::Regular,
        b"{\"manifests\":[{\"digest\":\"sha256:zz\",\"size\":1}]}",
        None,
    )]);
    assert_eq!(import_err(&archive).kind(), ErrorKind::InvalidArgument);
    let archive = raw_tar(&[
        (
            "oci-layout",
            EntryType::Regular,
            br#"{"imageLayoutVersion":"9"}"#,
            None,
        ),
        (
            "index.json",
            EntryType::Regular,
            b"{\"manifests\":[]}",
            None,
        ),
    ]);
    assert_eq!(import_err(&archive).kind(), ErrorKind::InvalidArgument);
    let archive = raw_tar(&[(
        "oci-layout",
        EntryType::Regular,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        None,
    )]);
    assert_eq!(
        import_err(&archive).kind(),
        ErrorKind::InvalidArgument,
        "no index.json"
    );
}

#[test]
fn index_pointing_at_a_missing_blob() {
    let (m, c, _l) = small_image("missing");
    let err = import_err(&layout_tar(
        &index_of(vec![desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m)]),
        &[m.clone(), c],
    ));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string()
            .contains(&Algorithm::Sha256.digest(&m).to_string()),
        "names the referrer: {err}"
    );
    let err = import_err(&layout_tar(
        &index_of(vec![desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m)]),
        &[],
    ));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("index.json"), "{err}");
}

#[test]
fn indexes_nested_too_deep() {
    // Real digests cannot make a loop (the unit tests of the walk fake one); they can make
    // a chain deeper than the limit.
    let (m, c, l) = small_image("deep");
    let mut blobs = vec![m.clone(), c, l];
    let mut top = desc(oci::MEDIA_TYPE_OCI_MANIFEST, &m);
    for _ in 0..=MAX_DEPTH {
        let index = serde_json::to_vec(&index_of(vec![top])).unwrap();
        top = desc(oci::MEDIA_TYPE_OCI_INDEX, &index);
        blobs.push(index);
    }
    let err = import_err(&layout_tar(&index_of(vec![top]), &blobs));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("deeper"), "{err}");
}

#[test]
fn decompression_is_bounded() {
    let bytes = sample_bytes();
    let opts = import::Options {
        max_bytes: 10_000,
        ..Default::default()
    };
    let err = import_bytes(&MemoryStore::new(), &bytes, opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    // A JSON document above its cap.
    let big = vec![b' '; (4 << 20) + 1];
    assert_eq!(
        import_err(&raw_tar(&[("index.json", EntryType::Regular, &big, None)])).kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn reader_at_is_used_for_export() {
    // Provider is object-safe and export takes any provider.
    let store = MemoryStore::new();
    let d = sample::sample_manifest(&store).unwrap();
    let p: &dyn Provider = &store;
    let image = ExportImage {
        name: "x:1".into(),
        tag: Some("1".into()),
        descriptor: d,
    };
    let o = export::export_archive(p, &[image], &Default::default(), &mut std::io::sink()).unwrap();
    assert_eq!(o.blobs, 4);
}

#[test]
fn long_name_bomb_is_refused_before_it_is_read() {
    // A GNU long-name entry of 256 MiB, gzip'd to a few hundred KiB: the tar parser would
    // read it whole into memory.
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(256 << 20);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, h.as_bytes()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut gz, &chunk).unwrap();
    }
    let bomb = gz.finish().unwrap();
    let err = import_err(&bomb);
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("extension header"), "{err}");
}

// ---------------------------------------------------------------- interop (run by .ci/run)

/// The interop tools are required: a missing one fails the test, never skips it.
fn tool(name: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "interop tool {name:?} is not installed (CI installs it in .ci/run)"
    );
    true
}

fn run(cmd: &str, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
#[ignore = "interop: needs skopeo and umoci (run by .ci/run)"]
fn skopeo_and_umoci_read_the_export_and_skopeo_output_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("sample.tar");
    std::fs::write(&archive, sample_bytes()).unwrap();
    let mut single = Vec::new();
    sample::sample_single(&mut single).unwrap();
    let single_dir = tmp.path().join("single");
    let store = MemoryStore::new();
    let mut sink = TestSink::new(&store);
    let imported = import::import_reader(&mut &single[..], &mut sink, Default::default()).unwrap();
    sink.commit();
    let image = ExportImage {
        name: sample::SAMPLE_SINGLE_NAME.into(),
        tag: Some("single".into()),
        descriptor: imported.images[0].descriptor.clone(),
    };
    export::export_dir(&store, &[image], &Default::default(), &single_dir).unwrap();

    if tool("skopeo") {
        let a = archive.to_str().unwrap();
        let raw = run("skopeo", &["inspect", "--raw", &format!("oci-archive:{a}")]);
        let index = oci::children(None, &raw).unwrap();
        assert_eq!(index.len(), 2);
        let copy = tmp.path().join("copy");
        let c = copy.to_str().unwrap();
        run(
            "skopeo",
            &[
                "copy",
                "--all",
                &format!("oci-archive:{a}:1.0"),
                &format!("oci:{c}:v1"),
            ],
        );
        let store = MemoryStore::new();
        let mut sink = TestSink::new(&store);
        let opts = import::Options {
            name: Some("example.com/copied:x".into()),
            ..Default::default()
        };
        let out = import::import_path(&copy, &mut sink, opts).unwrap();
        assert_eq!(out.images[0].name, "example.com/copied:v1");
        assert_eq!(out.blobs_written, 8);
    } else {
        eprintln!("skopeo not found: skipped");
    }
    if tool("umoci") {
        let bundle = tmp.path().join("bundle");
        let image = format!("{}:single", single_dir.display());
        run(
            "umoci",
            &[
                "unpack",
                "--rootless",
                "--image",
                &image,
                bundle.to_str().unwrap(),
            ],
        );
        let hello = std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap();
        assert_eq!(hello, "hello from linux/amd64\n");
    } else {
        eprintln!("umoci not found: skipped");
    }
}
