//! The committed corpus of hostile inputs (`tests/fixtures/hostile-corpus/`, listed with what
//! is wrong in its README): each must give its error, through the library (ErrorKind) and
//! the CLI (exit code, one `ocistore: ` line), and leave `content ls` and `image ls` exactly as
//! they were. `regenerate_hostile_corpus` (ignored) rebuilds the files.

use std::io::Write;
use std::path::{Path, PathBuf};

use ocistore::testsuite::fuzzing::listing;
use ocistore::{Algorithm, ErrorKind, Store};
use serde_json::json;

use crate::cmd;
use cmd::ocistore;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile-corpus")
}

/// (file, what is wrong, the kind it must give, extra CLI arguments)
const CASES: &[(&str, &str, Option<ErrorKind>, &[&str])] = &[
    (
        "traversal.tar",
        "an entry named ../escape",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "absolute.tar",
        "an entry with an absolute path",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "symlink.tar",
        "a symlink entry at a blob path",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "hardlink.tar",
        "a hard link entry at a blob path",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "wrong-bytes.tar",
        "a blob whose bytes do not hash to its name",
        Some(ErrorKind::FailedPrecondition),
        &[],
    ),
    (
        "size-lies.tar",
        "index.json states a manifest size 5 bytes larger than it is",
        Some(ErrorKind::FailedPrecondition),
        &[],
    ),
    (
        "truncated.tar",
        "a valid archive cut in the middle of a blob",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "truncated.tar.gz",
        "a gzip stream cut in half",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "index-not-json.tar",
        "index.json is not JSON",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "missing-blob.tar",
        "index.json names a manifest the archive lacks",
        Some(ErrorKind::NotFound),
        &[],
    ),
    (
        "nested-too-deep.tar",
        "indexes nested 20 deep (a content-addressed loop cannot exist; depth is what a loop would exhaust)",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "dotdot-digest.tar",
        "a blob path blobs/sha256/../../x",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "uppercase-digest.tar",
        "a blob path with uppercase hex",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "short-digest.tar",
        "a blob path with a 3-character digest",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "gzip-bomb.tar.gz",
        "160 KiB of gzip expanding to 160 MiB of zeros at a blob path",
        Some(ErrorKind::InvalidArgument),
        &["--max-size", "32MiB"],
    ),
    (
        "zstd-bomb.tar.zst",
        "a zstd stream expanding to 160 MiB of zeros at an unexpected path",
        Some(ErrorKind::InvalidArgument),
        &[],
    ),
    (
        "docker-missing-layer.tar",
        "a docker save manifest.json naming a layer the archive lacks",
        Some(ErrorKind::NotFound),
        &[],
    ),
    (
        "unknown-media-type.tar",
        "a manifest of an unknown media type: stored, not fatal",
        None,
        &[],
    ),
];

fn header(path: &str, size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    // Written raw: `set_path` refuses the hostile names this corpus is made of.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
    h
}

fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes) in entries {
        let h = header(path, bytes.len() as u64, tar::EntryType::Regular);
        b.append(&h, &bytes[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn blob_path(bytes: &[u8]) -> String {
    format!("blobs/sha256/{}", Algorithm::Sha256.digest(bytes).hex())
}

/// A minimal valid layout: config, one layer, manifest (of `media_type`), index.json.
fn layout(media_type: &str, size_delta: i64) -> Vec<(String, Vec<u8>)> {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"hostile corpus layer".to_vec();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Algorithm::Sha256.digest(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Algorithm::Sha256.digest(&layer).to_string(), "size": layer.len()}],
    })).unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": media_type, "digest": Algorithm::Sha256.digest(&manifest).to_string(),
            "size": manifest.len() as i64 + size_delta,
            "annotations": {"io.containerd.image.name": "example.com/hostile/app:1"}}],
    })).unwrap();
    vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (blob_path(&config), config),
        (blob_path(&layer), layer),
        (blob_path(&manifest), manifest),
        ("index.json".into(), index),
    ]
}

fn tar_layout(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(p, b)| (p.as_str(), b.clone()))
        .collect();
    tar_of(&refs)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn with_link(kind: tar::EntryType) -> Vec<u8> {
    let good = layout("application/vnd.oci.image.manifest.v1+json", 0);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(&good[1].0, 0, kind);
    h.set_link_name("../../../etc/passwd").unwrap();
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    b.into_inner().unwrap()
}

/// A tar whose single entry `path` holds `zeros` zero bytes, streamed (never in memory).
fn zeros_tar(path: &str, zeros: u64, out: &mut dyn Write) {
    let h = header(path, zeros, tar::EntryType::Regular);
    out.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    out.write_all(&[0u8; 1024]).unwrap();
}

#[test]
#[ignore = "run by hand to regenerate tests/fixtures/hostile-corpus"]
fn regenerate_hostile_corpus() {
    let d = dir();
    std::fs::create_dir_all(&d).unwrap();
    let put = |name: &str, bytes: Vec<u8>| std::fs::write(d.join(name), bytes).unwrap();
    let good = layout("application/vnd.oci.image.manifest.v1+json", 0);
    let mut sample = Vec::new();
    ocistore::oci::sample::sample_archive(&mut sample).unwrap();

    put("traversal.tar", tar_of(&[("../escape", b"x".to_vec())]));
    put("absolute.tar", tar_of(&[("/etc/escape", b"x".to_vec())]));
    put("symlink.tar", with_link(tar::EntryType::Symlink));
    put("hardlink.tar", with_link(tar::EntryType::Link));
    let mut wrong = good.clone();
    wrong[2].1 = b"not the layer's bytes".to_vec();
    put("wrong-bytes.tar", tar_layout(&wrong));
    put(
        "size-lies.tar",
        tar_layout(&layout("application/vnd.oci.image.manifest.v1+json", 5)),
    );
    put("truncated.tar", sample[..sample.len() / 2].to_vec());
    let gz = gzip(&sample);
    put("truncated.tar.gz", gz[..gz.len() / 2].to_vec());
    let mut bad_index = good.clone();
    bad_index[4].1 = b"{ this is not json".to_vec();
    put("index-not-json.tar", tar_layout(&bad_index));
    let missing: Vec<_> = good
        .iter()
        .filter(|(p, _)| !p.contains(&good[3].0[13..]))
        .cloned()
        .collect();
    put("missing-blob.tar", tar_layout(&missing));
    // Indexes nested 20 deep, each naming the next.
    let mut entries = good[..4].to_vec();
    let mut child = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": Algorithm::Sha256.digest(&good[3].1).to_string(), "size": good[3].1.len()});
    for _ in 0..20 {
        let idx = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [child]})).unwrap();
        child = json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": Algorithm::Sha256.digest(&idx).to_string(), "size": idx.len()});
        entries.push((blob_path(&idx), idx));
    }
    child["annotations"] = json!({"io.containerd.image.name": "example.com/hostile/deep:1"});
    entries.push((
        "index.json".into(),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [child]})).unwrap(),
    ));
    put("nested-too-deep.tar", tar_layout(&entries));
    put(
        "dotdot-digest.tar",
        tar_of(&[("blobs/sha256/../../x", b"x".to_vec())]),
    );
    let upper = format!(
        "blobs/sha256/{}",
        Algorithm::Sha256.digest(b"x").hex().to_uppercase()
    );
    put(
        "uppercase-digest.tar",
        tar_of(&[(upper.as_str(), b"x".to_vec())]),
    );
    put(
        "short-digest.tar",
        tar_of(&[("blobs/sha256/abc", b"x".to_vec())]),
    );
    // Bombs: written through the compressor, never held whole.
    let bomb_path = blob_path(b"anything");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    zeros_tar(&bomb_path, 160 << 20, &mut gz);
    put("gzip-bomb.tar.gz", gz.finish().unwrap());
    let mut raw = Vec::new();
    zeros_tar("bomb/zeros", 160 << 20, &mut raw);
    put(
        "zstd-bomb.tar.zst",
        ruzstd::encoding::compress_to_vec(&raw[..], ruzstd::encoding::CompressionLevel::Fastest),
    );
    let layer = b"docker layer".to_vec();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let cfg_name = format!("{}.json", Algorithm::Sha256.digest(&config).hex());
    let manifest = serde_json::to_vec(&json!([{"Config": cfg_name, "RepoTags": ["example.com/hostile/docker:1"], "Layers": ["0123abcd/layer.tar"]}])).unwrap();
    let _ = layer;
    put(
        "docker-missing-layer.tar",
        tar_of(&[(cfg_name.as_str(), config), ("manifest.json", manifest)]),
    );
    put(
        "unknown-media-type.tar",
        tar_layout(&layout("application/vnd.example.unknown+json", 0)),
    );

    let mut readme = String::from(
        "# Hostile inputs\n\nEach file must fail to import with the error kind shown and leave the store exactly as it was (`tests/it/hostile_corpus.rs`), except the last, which imports. Regenerate with `cargo test --test it -- --ignored hostile_corpus::regenerate`.\n\n| file | what is wrong | error kind |\n|---|---|---|\n",
    );
    for (file, what, kind, _) in CASES {
        readme.push_str(&format!(
            "| `{file}` | {what} | {} |\n",
            kind.map_or("none (imports)".to_owned(), |k| format!("{k:?}"))
        ));
    }
    readme.push_str("\nThe gzip bomb is bounded by `image import --max-size` (64 GiB by default; the test passes 32 MiB); the zstd bomb's entry is refused at its header, before its body is read.\n");
    std::fs::write(d.join("README.md"), readme).unwrap();
}

fn seeded() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    Store::open(&root)
        .unwrap()
        .import_path(&sample, Default::default())
        .unwrap();
    (tmp, root)
}

#[test]
fn every_hostile_input_gives_its_error_and_changes_nothing() {
    let (_tmp, root) = seeded();
    for (i, (file, what, kind, extra)) in CASES.iter().enumerate() {
        let path = dir().join(file);
        assert!(path.exists(), "{file} is missing: regenerate the corpus");
        let before = listing(&Store::open(&root).unwrap());
        let mut args = vec!["image", "import"];
        args.extend_from_slice(extra);
        // Every third case goes through stdin.
        let via_stdin = i % 3 == 0;
        args.push(if via_stdin {
            "-"
        } else {
            path.to_str().unwrap()
        });
        let mut cmd = ocistore(&root, &args);
        if via_stdin {
            cmd.stdin(&std::fs::read(&path).unwrap());
        }
        let out = cmd.raw_output();
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match kind {
            None => assert_eq!(code, 0, "{file} ({what}) should import: {stderr}"),
            Some(k) => {
                let want = if *k == ErrorKind::InvalidArgument {
                    2
                } else {
                    1
                };
                assert_eq!(code, want, "{file} ({what}): exit code, stderr: {stderr}");
                assert_eq!(stderr.lines().count(), 1, "{file}: one line: {stderr}");
                assert!(stderr.starts_with("ocistore: "), "{file}: {stderr}");
                let store = Store::open(&root).unwrap();
                assert_eq!(listing(&store), before, "{file} ({what}) changed the store");
                // The library says the same, by kind.
                let mut opts = ocistore::oci::import::Options::default();
                if !extra.is_empty() {
                    opts.max_bytes = 32 << 20;
                }
                let err = store.import_path(&path, opts).expect_err(file);
                assert_eq!(err.kind(), *k, "{file} ({what}): {err}");
                assert_eq!(
                    listing(&store),
                    before,
                    "{file} ({what}) changed the store (library)"
                );
            }
        }
    }
}

#[test]
fn malformed_arguments_are_usage_errors_and_change_nothing() {
    let (_tmp, root) = seeded();
    let before = listing(&Store::open(&root).unwrap());
    let long_label = format!("k={}", "v".repeat(5000));
    let long_name = format!("example.com/{}:1", "a".repeat(2000));
    let cases: Vec<Vec<&str>> = vec![
        vec!["content", "put", "-", "--label", &long_label],
        vec!["image", "tag", "hello:1.0", &long_name],
        vec!["image", "tag", "hello:1.0", "Bad/Name"],
        vec!["content", "info", "sha256:../../x"],
        vec![
            "content",
            "info",
            "SHA256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        ],
        vec!["content", "info", "sha256:e3b0c442"],
        vec!["content", "ls", "labels.a=="],
        vec!["content", "ls", "a<b"],
        vec!["ingest", "ls", "ref~=("],
        vec!["image", "ls", "name=="],
    ];
    for args in cases {
        let out = ocistore(&root, &args).stdin(b"").raw_output();
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("ocistore: ") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(listing(&Store::open(&root).unwrap()), before);
}
