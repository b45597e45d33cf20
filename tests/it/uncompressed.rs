//! Compressed and uncompressed layers (diffIDs): recorded at import from the config's
//! `rootfs.diff_ids`, looked up both ways, computed and corrected on demand, kept as a
//! collectable blob, and refused clearly for input that is not gzip or zstd.
//!
//! The acceptance test that compares with the real `gunzip` and `zstd` is `#[ignore]`d so
//! that `cargo test` needs nothing but Rust; `.ci/run` runs it with `--ignored`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ocistore::uncompressed::{COMPRESSED_LABEL, UNCOMPRESSED_LABEL, UncompressOptions};
use ocistore::{Algorithm, Digest, ErrorKind, Manager, Store, helpers, oci};
use serde_json::{Value, json};

use crate::cmd;
use cmd::ocistore;

// ---------------------------------------------------------------- building images

/// A tar holding `files` (path, contents), with fixed metadata.
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};
    compress_to_vec(bytes, CompressionLevel::Fastest)
}

fn sha256(bytes: &[u8]) -> Digest {
    Algorithm::Sha256.digest(bytes)
}

fn desc(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(bytes).to_string(), "size": bytes.len()})
}

/// One layer of a test image: its media type, its blob, and the diffID its config states.
struct Layer {
    media_type: &'static str,
    blob: Vec<u8>,
    diff_id: Digest,
}

impl Layer {
    /// A layer whose config states the truth.
    fn new(media_type: &'static str, blob: Vec<u8>, uncompressed: &[u8]) -> Layer {
        Layer {
            media_type,
            blob,
            diff_id: sha256(uncompressed),
        }
    }

    fn digest(&self) -> Digest {
        sha256(&self.blob)
    }
}

/// An OCI layout archive of one image named `name`, whose config states `diff_ids`.
fn archive(name: &str, layers: &[Layer], diff_ids: &[Digest]) -> Vec<u8> {
    let diff_ids: Vec<String> = diff_ids.iter().map(ToString::to_string).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_TYPE_OCI_MANIFEST,
        "config": desc(oci::MEDIA_TYPE_OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| desc(l.media_type, &l.blob)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut mdesc = desc(oci::MEDIA_TYPE_OCI_MANIFEST, &manifest);
    mdesc["annotations"] = json!({ "io.containerd.image.name": name });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_TYPE_OCI_INDEX,
        "manifests": [mdesc],
    }))
    .unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
    ];
    for blob in [config, manifest]
        .into_iter()
        .chain(layers.iter().map(|l| l.blob.clone()))
    {
        let path = format!("blobs/sha256/{}", sha256(&blob).hex());
        if !files.iter().any(|(p, _)| *p == path) {
            files.push((path, blob));
        }
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    layer_tar(&refs)
}

/// The test image: two gzip layers (one of two gzip members), one zstd layer, one plain
/// tar layer; with the layers' true diffIDs.
fn mixed_layers() -> (Vec<Layer>, Vec<Vec<u8>>) {
    let tars = vec![
        layer_tar(&[("etc/os-release", b"ID=test\n")]),
        layer_tar(&[("a.txt", b"alpha\n"), ("b.txt", &[7u8; 5000])]),
        layer_tar(&[("z.txt", b"zstd layer\n")]),
        layer_tar(&[("plain.txt", b"not compressed\n")]),
    ];
    let half = tars[1].len() / 2;
    let mut two_members = gzip(&tars[1][..half]);
    two_members.extend(gzip(&tars[1][half..]));
    let layers = vec![
        Layer::new(oci::MEDIA_TYPE_OCI_LAYER_GZIP, gzip(&tars[0]), &tars[0]),
        Layer::new(oci::MEDIA_TYPE_DOCKER_LAYER_GZIP, two_members, &tars[1]),
        Layer::new(oci::MEDIA_TYPE_OCI_LAYER_ZSTD, zstd(&tars[2]), &tars[2]),
        Layer::new(oci::MEDIA_TYPE_OCI_LAYER_TAR, tars[3].clone(), &tars[3]),
    ];
    (layers, tars)
}

fn true_diff_ids(layers: &[Layer]) -> Vec<Digest> {
    layers.iter().map(|l| l.diff_id).collect()
}

fn import(store: &Store, dir: &Path, archive: &[u8]) {
    let path = dir.join(format!("image-{}.tar", sha256(archive).hex()));
    std::fs::write(&path, archive).unwrap();
    store.import_path(&path, Default::default()).unwrap();
}

fn fresh() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    (tmp, store)
}

// ---------------------------------------------------------------- the command line

/// Every blob with its labels, and every ingest: what "the store is unchanged" compares.
fn state(root: &Path) -> (Value, Value) {
    let mut blobs = ocistore(root, &["--json", "content", "ls"]).json();
    for b in blobs.as_array_mut().unwrap() {
        b.as_object_mut().unwrap().remove("updated_at");
    }
    (blobs, ocistore(root, &["--json", "ingest", "ls"]).json())
}

// ---------------------------------------------------------------- recorded at import

#[test]
fn import_records_the_configs_diff_ids_on_compressed_layers() {
    let (tmp, store) = fresh();
    let (layers, _) = mixed_layers();
    import(
        &store,
        tmp.path(),
        &archive("example.com/mixed:1", &layers, &true_diff_ids(&layers)),
    );
    for l in &layers[..3] {
        assert_eq!(store.diff_id(&l.digest()).unwrap(), Some(l.diff_id));
        assert_eq!(store.compressed_of(&l.diff_id).unwrap(), vec![l.digest()]);
        // The label is an answer without reading; verify reads and agrees.
        let quick = store
            .uncompressed(&l.digest(), &UncompressOptions::default())
            .unwrap();
        assert_eq!(
            (quick.diff_id, quick.size, quick.recorded),
            (l.diff_id, None, false)
        );
        let checked = store
            .uncompressed(
                &l.digest(),
                &UncompressOptions {
                    verify: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(checked.diff_id, l.diff_id);
        assert!(checked.size.is_some());
        assert!(!checked.recorded && !checked.corrected);
    }
    // The plain tar layer is its own diffID: no label, nothing to find.
    let plain = &layers[3];
    assert_eq!(store.diff_id(&plain.digest()).unwrap(), None);
    assert!(store.compressed_of(&plain.diff_id).unwrap().is_empty());
    let err = store
        .uncompressed(&plain.digest(), &UncompressOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    // Only the config and compressed layers carry the label; the walk's label filter agrees.
    let mut labelled = Vec::new();
    store
        .walk(
            &mut |i| {
                labelled.push(i.digest);
                Ok(())
            },
            &[&format!("labels.\"{UNCOMPRESSED_LABEL}\"")],
        )
        .unwrap();
    let mut want: Vec<Digest> = layers[..3].iter().map(Layer::digest).collect();
    want.sort();
    assert_eq!(labelled, want);
}

#[test]
fn nothing_is_recorded_when_the_counts_differ_and_a_label_is_never_overwritten() {
    let (tmp, store) = fresh();
    let (layers, _) = mixed_layers();
    // One diffID for four layers: position matching is off, nothing is recorded.
    import(
        &store,
        tmp.path(),
        &archive("example.com/short:1", &layers, &[layers[0].diff_id]),
    );
    for l in &layers {
        assert_eq!(store.diff_id(&l.digest()).unwrap(), None);
    }
    // A label set by hand survives an import whose config says otherwise.
    let mine = sha256(b"set by hand");
    let mut info = store.info(&layers[0].digest()).unwrap();
    info.labels
        .insert(UNCOMPRESSED_LABEL.to_owned(), mine.to_string());
    store
        .update(&info, &[&format!("labels.{UNCOMPRESSED_LABEL}")])
        .unwrap();
    import(
        &store,
        tmp.path(),
        &archive("example.com/full:1", &layers, &true_diff_ids(&layers)),
    );
    assert_eq!(store.diff_id(&layers[0].digest()).unwrap(), Some(mine));
    assert_eq!(
        store.diff_id(&layers[1].digest()).unwrap(),
        Some(layers[1].diff_id)
    );
    // verify finds the hand-set label wrong, replaces it and says what it was.
    let fixed = store
        .uncompressed(
            &layers[0].digest(),
            &UncompressOptions {
                verify: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(fixed.recorded && fixed.corrected);
    assert_eq!(fixed.replaced, Some(mine.to_string()));
    assert_eq!(fixed.diff_id, layers[0].diff_id);
    assert!(store.compressed_of(&mine).unwrap().is_empty());
    assert_eq!(
        store.compressed_of(&layers[0].diff_id).unwrap(),
        vec![layers[0].digest()]
    );
}

#[test]
fn computed_on_demand_for_a_blob_without_a_label() {
    let (_tmp, store) = fresh();
    let tar = layer_tar(&[("x", b"xyz")]);
    for blob in [gzip(&tar), zstd(&tar)] {
        let d = helpers::write_blob(&store, "l", &mut &blob[..], None, None, Default::default())
            .unwrap();
        assert_eq!(store.diff_id(&d).unwrap(), None);
        let out = store
            .uncompressed(&d, &UncompressOptions::default())
            .unwrap();
        assert_eq!(out.diff_id, sha256(&tar));
        assert_eq!(out.size, Some(tar.len() as u64));
        assert!(out.recorded && !out.corrected && out.kept.is_none());
        assert_eq!(store.diff_id(&d).unwrap(), Some(sha256(&tar)));
        assert_eq!(store.compressed_of(&sha256(&tar)).unwrap().len(), 1);
        store.delete(&d).unwrap();
        assert!(store.compressed_of(&sha256(&tar)).unwrap().is_empty());
        let gone = store
            .uncompressed(&d, &UncompressOptions::default())
            .unwrap_err();
        assert_eq!(gone.kind(), ErrorKind::NotFound);
    }
}

#[test]
fn bytes_changed_on_disk_are_corrupted_and_record_nothing() {
    let (_tmp, store) = fresh();
    let tar = layer_tar(&[("x", b"xyz")]);
    let blob = gzip(&tar);
    let d =
        helpers::write_blob(&store, "l", &mut &blob[..], None, None, Default::default()).unwrap();
    // gzip's header mtime is outside its CRC: the bytes still decompress, to the same tar.
    let path = store.blob_dir().path_for(&d);
    let mut changed = blob.clone();
    changed[4] ^= 1;
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, &changed).unwrap();
    for keep in [false, true] {
        let err = store
            .uncompressed(&d, &UncompressOptions { keep, verify: true })
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
        assert_eq!(store.diff_id(&d).unwrap(), None);
        assert!(store.compressed_of(&sha256(&tar)).unwrap().is_empty());
        assert!(
            store.info(&sha256(&tar)).is_err(),
            "kept despite the corruption"
        );
        assert!(
            ocistore::IngestManager::list_statuses(&store, &[])
                .unwrap()
                .is_empty()
        );
    }
}

// ---------------------------------------------------------------- the CLI

#[test]
fn cli_agrees_with_the_config_and_corrects_a_lying_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (layers, _) = mixed_layers();
    let lie = sha256(b"not the layer");
    let mut stated = true_diff_ids(&layers);
    stated[2] = lie;
    let file = tmp.path().join("lying.tar");
    std::fs::write(&file, archive("example.com/liar:1", &layers, &stated)).unwrap();
    ocistore(
        &root,
        &["--json", "image", "import", file.to_str().unwrap()],
    )
    .json();

    let first = layers[0].digest().to_string();
    let out = ocistore(&root, &["--json", "content", "uncompressed", &first]).json();
    assert_eq!(
        out,
        json!({"digest": first, "diff_id": layers[0].diff_id.to_string(), "size": null,
               "recorded": false, "corrected": false, "kept": null})
    );
    // Plain output is the diffID alone.
    let plain = ocistore(&root, &["content", "uncompressed", &first]).stdout();
    assert_eq!(plain.trim(), layers[0].diff_id.to_string());

    // The label says what the config said, until --verify reads the layer.
    let liar = layers[2].digest().to_string();
    let trusted = ocistore(&root, &["--json", "content", "uncompressed", &liar]).json();
    assert_eq!(trusted["diff_id"], lie.to_string());
    let verified = ocistore(
        &root,
        &["--json", "content", "uncompressed", &liar, "--verify"],
    )
    .json();
    assert_eq!(verified["diff_id"], layers[2].diff_id.to_string());
    assert_eq!(verified["corrected"], true);
    assert_eq!(verified["recorded"], true);
    assert_eq!(verified["size"], 2048);
    let info = ocistore(&root, &["--json", "content", "info", &liar]).json();
    assert_eq!(
        info["labels"][UNCOMPRESSED_LABEL],
        layers[2].diff_id.to_string()
    );
    let again = ocistore(
        &root,
        &["--json", "content", "uncompressed", &liar, "--verify"],
    )
    .json();
    assert_eq!(again["corrected"], false);
    assert_eq!(again["recorded"], false);
}

#[test]
fn keep_stores_the_uncompressed_blob_and_gc_collects_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (layers, tars) = mixed_layers();
    let file = tmp.path().join("image.tar");
    std::fs::write(
        &file,
        archive("example.com/keep:1", &layers, &true_diff_ids(&layers)),
    )
    .unwrap();
    ocistore(
        &root,
        &["--json", "image", "import", file.to_str().unwrap()],
    )
    .json();

    for (l, tar) in layers[..3].iter().zip(&tars) {
        let d = l.digest().to_string();
        let out = ocistore(&root, &["--json", "content", "uncompressed", &d, "--keep"]).json();
        assert_eq!(out["kept"], l.diff_id.to_string());
        assert_eq!(out["size"], tar.len());
        let kept = ocistore(
            &root,
            &["--json", "content", "info", &l.diff_id.to_string()],
        )
        .json();
        assert_eq!(kept["labels"][COMPRESSED_LABEL], d);
        assert_eq!(kept["size"], tar.len());
        let cat = ocistore(&root, &["content", "cat", &l.diff_id.to_string()]).raw_output();
        assert_eq!(&cat.stdout, tar);
        // Kept already: answered from the labels, nothing read.
        let again = ocistore(&root, &["--json", "content", "uncompressed", &d, "--keep"]).json();
        assert_eq!(again["kept"], l.diff_id.to_string());
    }
    {
        let store = Store::open(&root).unwrap();
        assert_eq!(
            store.uncompressed_blob_of(&layers[0].digest()).unwrap(),
            Some(layers[0].diff_id)
        );
    }

    // Nothing roots the kept blobs: gc takes them, and only them.
    ocistore(&root, &["gc"]).output();
    for l in &layers[..3] {
        ocistore(&root, &["content", "info", &l.diff_id.to_string()])
            .code(1)
            .output();
        ocistore(
            &root,
            &["--json", "content", "info", &l.digest().to_string()],
        )
        .json();
    }
    let store = Store::open(&root).unwrap();
    assert_eq!(
        store.uncompressed_blob_of(&layers[0].digest()).unwrap(),
        None
    );
    assert_eq!(
        store.diff_id(&layers[0].digest()).unwrap(),
        Some(layers[0].diff_id)
    );
    assert!(store.image("example.com/keep:1").is_ok());
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let tar = layer_tar(&[("big", &vec![42u8; 100_000])]);
    let full = gzip(&tar);
    let mut garbage = vec![0x1f, 0x8b];
    garbage.extend_from_slice(&[0xff; 64]);
    let zfull = zstd(&tar);
    let blobs: Vec<(&str, Vec<u8>, &str)> = vec![
        ("plain", tar.clone(), "not gzip or zstd"),
        (
            "truncated gzip",
            full[..full.len() / 2].to_vec(),
            "does not decompress as gzip",
        ),
        (
            "gzip without its trailer",
            full[..full.len() - 4].to_vec(),
            "does not decompress as gzip",
        ),
        ("gzip garbage", garbage, "does not decompress as gzip"),
        (
            "truncated zstd",
            zfull[..zfull.len() / 2].to_vec(),
            "does not decompress as zstd",
        ),
    ];
    let mut digests = Vec::new();
    for (what, bytes, _) in &blobs {
        let path = tmp.path().join(what.replace(' ', "-"));
        std::fs::write(&path, bytes).unwrap();
        let put = ocistore(&root, &["--json", "content", "put", path.to_str().unwrap()]).json();
        digests.push(put["digest"].as_str().unwrap().to_owned());
    }
    let before = state(&root);
    for ((what, _, message), d) in blobs.iter().zip(&digests) {
        for extra in [&[][..], &["--keep"], &["--verify", "--keep"]] {
            let mut args = vec!["content", "uncompressed", d.as_str()];
            args.extend_from_slice(extra);
            let out = ocistore(&root, &args).raw_output();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what} {extra:?}: {stderr}");
            assert!(stderr.contains(message), "{what}: {stderr}");
            assert!(stderr.contains(d.as_str()), "{what}: {stderr}");
            assert!(out.stdout.is_empty(), "{what}");
        }
    }
    let missing = sha256(b"never stored").to_string();
    let out = ocistore(&root, &["content", "uncompressed", &missing])
        .code(1)
        .output();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    ocistore(&root, &["content", "uncompressed", "sha256:nothex"])
        .code(2)
        .output();
    assert_eq!(state(&root), before, "a refused request changed the store");
}

#[test]
fn decompression_holds_memory_flat() {
    const SIZE: u64 = 256 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let zeros = || std::io::Read::take(std::io::repeat(0), SIZE);
    let (diff_id, _) = ocistore::digest::hash_reader(Algorithm::Sha256, &mut zeros()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::copy(&mut zeros(), &mut gz).unwrap();
    let gz = gz.finish().unwrap();
    let mut zst = Vec::new();
    ruzstd::encoding::compress(
        zeros(),
        &mut zst,
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    for (blob, keep) in [(gz, true), (zst, false)] {
        let path = tmp.path().join("blob");
        std::fs::write(&path, &blob).unwrap();
        let put = ocistore(&root, &["--json", "content", "put", path.to_str().unwrap()]).json();
        let d = put["digest"].as_str().unwrap().to_owned();
        let mut args = vec!["--json", "content", "uncompressed", d.as_str()];
        if keep {
            args.push("--keep");
        }
        let (out, err) = (tmp.path().join("out"), tmp.path().join("err"));
        let measured = ocistore(&root, &args).measure(&out, &err, false);
        let what = format!("decompressing 256 MiB (keep: {keep})");
        cmd::rss::succeeds_within(&measured, &err, 64 * 1024, &what);
        let info = ocistore(&root, &["--json", "content", "info", &d]).json();
        assert_eq!(info["labels"][UNCOMPRESSED_LABEL], diff_id.to_string());
    }
    let kept = ocistore(&root, &["--json", "content", "info", &diff_id.to_string()]).json();
    assert_eq!(kept["size"], SIZE);
}

// ---------------------------------------------------------------- acceptance: real tools

/// What `<tool> -dc | sha256sum` says of `blob`.
fn tool_diff_id(tool: &str, blob: &[u8]) -> Digest {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is not installed (.ci/run installs it)");
    let mut child = Command::new("sh")
        .args(["-c", &format!("{tool} -dc | sha256sum")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let blob = blob.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&blob));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool} -dc | sha256sum failed");
    let hex = String::from_utf8(out.stdout).unwrap();
    Digest::parse(&format!("sha256:{}", &hex[..64])).unwrap()
}

/// `bytes` compressed by the `zstd` tool itself.
fn zstd_tool(bytes: &[u8], dir: &Path) -> Vec<u8> {
    let input = dir.join("layer.tar");
    std::fs::write(&input, bytes).unwrap();
    let out = Command::new("zstd")
        .args(["-q", "-c", "-3", "--no-progress"])
        .arg(&input)
        .output()
        .expect("run zstd");
    assert!(out.status.success());
    out.stdout
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar")
}

#[test]
#[ignore = "acceptance: needs gunzip and zstd (run by .ci/run)"]
fn diff_ids_equal_what_gunzip_and_zstd_print() {
    let (tmp, store) = fresh();
    let (mut layers, tars) = mixed_layers();
    let big = layer_tar(&[(
        "big.bin",
        &(0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )]);
    layers.push(Layer::new(
        oci::MEDIA_TYPE_OCI_LAYER_ZSTD,
        zstd_tool(&big, tmp.path()),
        &big,
    ));
    layers.push(Layer::new(oci::MEDIA_TYPE_OCI_LAYER_GZIP, gzip(&big), &big));
    assert_eq!(tars.len(), 4);
    import(
        &store,
        tmp.path(),
        &archive("example.com/tools:1", &layers, &true_diff_ids(&layers)),
    );
    store.import_path(&sample(), Default::default()).unwrap();

    // Every compressed layer of every manifest in the store.
    let mut checked = 0;
    let mut manifests = Vec::new();
    store
        .walk(
            &mut |i| {
                manifests.push(i.digest);
                Ok(())
            },
            &[],
        )
        .unwrap();
    for m in manifests {
        let bytes = helpers::read_blob(&store, &m).unwrap();
        let Some(children) = oci::children(None, &bytes) else {
            continue;
        };
        for c in children.iter().filter(|c| c.kind == oci::ChildKind::Layer) {
            let tool = if c.media_type.ends_with("zstd") {
                "zstd"
            } else if c.media_type.ends_with("gzip") {
                "gunzip"
            } else {
                continue;
            };
            let blob = helpers::read_blob(&store, &c.digest).unwrap();
            let want = tool_diff_id(tool, &blob);
            assert_eq!(
                store.diff_id(&c.digest).unwrap(),
                Some(want),
                "{}",
                c.digest
            );
            let out = store
                .uncompressed(
                    &c.digest,
                    &UncompressOptions {
                        verify: true,
                        keep: false,
                    },
                )
                .unwrap();
            assert_eq!(out.diff_id, want);
            assert!(!out.corrected);
            checked += 1;
        }
    }
    // 5 compressed layers of the test image, 3 distinct ones of the sample (2 platforms).
    assert!(checked >= 8, "only {checked} layers checked");
}
