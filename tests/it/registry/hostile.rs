//! What a hostile or broken registry may send, and what ocistore does with it: documents
//! that say nothing of what they are, media types that are no media types (control
//! characters, no `type/subtype`), sizes at the edges of what JSON and u64 can say, sizes
//! that disagree with the blobs the store has, a million tags, a tag page of 60 MiB, an index
//! of a thousand 4 MiB manifests, and redirects and `Link`s to a second host that must never
//! see the registry's credentials.
//!
//! Every test asserts outcomes: the exit code (1 for anything the registry sent wrong), the
//! cause named on stderr (host and what), no panic, time under a bound, peak RSS where memory
//! is the point, nothing named after a refusal, `fsck` clean. The doubles are in
//! `doubles.rs` ([`Scripted`] records every request's headers), each saying why no real
//! registry can do what it does.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::doubles::{
    Fault, FaultProxy, Reply, Rule, Scripted, Served, document_registry, seen_list,
};
use crate::harness::{Env, Reg, RegOpts, Run, p, pulled_whole, run_max_rss, sha256, skopeo_push};
use crate::test_images::{AMD64, OCI_INDEX, OCI_MANIFEST};

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The largest u64, which JSON can write and f64 cannot hold.
const U64_MAX: &str = "18446744073709551615";

// ================================================================ helpers

/// A registry of documents a test builds (a [`document_registry`]) for one repository.
struct Docs {
    docs: Arc<Mutex<Served>>,
    reg: Scripted,
    repo: &'static str,
}

impl Docs {
    fn start(repo: &'static str) -> Docs {
        let docs = Arc::new(Mutex::new(Served::new()));
        let reg = document_registry(docs.clone());
        Docs { docs, reg, repo }
    }

    fn host(&self) -> &str {
        &self.reg.server.host
    }

    fn put(&self, path: String, content_type: &str, bytes: &[u8]) {
        self.docs
            .lock()
            .unwrap()
            .push((path, content_type.to_owned(), bytes.to_vec()));
    }

    /// A blob: its digest.
    fn blob(&self, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        self.put(
            format!("/v2/{}/blobs/{d}", self.repo),
            "application/octet-stream",
            bytes,
        );
        d
    }

    /// A manifest or index served as `content_type`, by digest and under `tag`: its digest.
    fn manifest(&self, tag: Option<&str>, content_type: &str, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        self.put(
            format!("/v2/{}/manifests/{d}", self.repo),
            content_type,
            bytes,
        );
        if let Some(t) = tag {
            self.put(
                format!("/v2/{}/manifests/{t}", self.repo),
                content_type,
                bytes,
            );
        }
        d
    }

    /// `HOST/REPO:TAG`, or `HOST/REPO@DIGEST`.
    fn reference(&self, tag_or_digest: &str) -> String {
        let sep = if tag_or_digest.contains(':') {
            '@'
        } else {
            ':'
        };
        format!("{}/{}{sep}{tag_or_digest}", self.host(), self.repo)
    }

    fn blob_gets(&self) -> usize {
        self.reg.blob_gets().len()
    }
}

/// A descriptor of `bytes` as `media_type`.
fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

/// A layer's bytes (deterministic, distinct per `seed`) and a config naming it as the one
/// uncompressed layer of `arch`.
fn config_and_layer(arch: &str, seed: u32, len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut layer = format!("layer {seed} of {arch};").into_bytes();
    while layer.len() < len {
        layer.extend_from_slice(format!("{seed}:{}.", layer.len()).as_bytes());
    }
    layer.truncate(len);
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    })
    .to_string()
    .into_bytes();
    (config, layer)
}

/// Asserts that no raw ESC, BEL or NUL reached the terminal: what the registry sent is
/// shown escaped, if at all.
fn no_raw_controls(r: &Run) {
    for (name, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        for c in ['\u{1b}', '\u{7}', '\u{0}'] {
            assert!(!text.contains(c), "a raw {c:?} on {name}: {text:?}");
        }
    }
}

/// Runs `ocistore --json ARGS` and asserts it fails with exit 1 within `within`, without a
/// panic or a raw control character, its error naming each of `parts`; the run.
fn refused(env: &Env, root: &Path, args: &[&str], parts: &[&str], within: Duration) -> Run {
    let started = Instant::now();
    let r = env.run(root, args);
    let took = started.elapsed();
    assert_eq!(r.code, Some(1), "{args:?} exits 1: {r:?}");
    assert!(
        !r.stderr.contains("panicked"),
        "{args:?} panicked: {}",
        r.stderr
    );
    for part in parts {
        assert!(
            r.stderr.contains(part),
            "{args:?}: the error names {part:?}: {:?}",
            r.stderr
        );
    }
    no_raw_controls(&r);
    assert!(
        took < within,
        "{args:?} took {took:?}, more than {within:?}"
    );
    r
}

/// Asserts `image check NAME --platform P` says complete (exit 0), showing what it said
/// otherwise.
fn check_complete(env: &Env, root: &Path, name: &str, platform: &str) {
    let r = env.run(root, &["image", "check", name, "--platform", platform]);
    assert!(
        r.code == Some(0) && r.json()["complete"] == true,
        "image check {name} --platform {platform} says complete: {} {}",
        r.stdout,
        r.stderr
    );
}

/// After a pull of `name` that succeeded: what the store, `image check` (for each of
/// `platforms`) and `image export` (into `export-<root's name>`) disagree with `needed` on,
/// one line each.
fn agreement(
    env: &Env,
    root: &Path,
    name: &str,
    platforms: &[&str],
    needed: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let stored = env.content(root);
    if &stored != needed {
        problems.push(format!(
            "{name}: the pull stored {stored:?}, the image needs {needed:?}"
        ));
    }
    for platform in platforms {
        let r = env.run(root, &["image", "check", name, "--platform", platform]);
        if r.code != Some(0) {
            problems.push(format!(
                "{name}: the pull succeeded, `image check --platform {platform}` exits {:?}: {}",
                r.code,
                r.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    let dir = env.path(&format!(
        "export-{}",
        root.file_name().unwrap().to_string_lossy()
    ));
    let r = env.run(
        root,
        &[
            "image",
            "export",
            name,
            "-o",
            p(&dir),
            "--format",
            "oci-dir",
        ],
    );
    if r.code != Some(0) {
        problems.push(format!(
            "{name}: the pull succeeded, `image export` exits {:?}: {}",
            r.code,
            r.stderr.trim()
        ));
    } else {
        let written = layout_blobs(&dir);
        if &written != needed || r.json()["blobs"] != needed.len() {
            problems.push(format!(
                "{name}: `image export` wrote {written:?} ({}), the image needs {needed:?}",
                r.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    problems
}

fn nothing_named(env: &Env, root: &Path) {
    assert_eq!(env.ok(root, &["image", "ls"]), json!([]), "nothing named");
}

/// The names `image ls --json` lists.
fn names(env: &Env, root: &Path) -> Vec<String> {
    env.ok(root, &["image", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The blobs of an OCI layout directory: digest → size.
fn layout_blobs(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for alg in std::fs::read_dir(dir.join("blobs")).unwrap() {
        let alg = alg.unwrap();
        for f in std::fs::read_dir(alg.path()).unwrap() {
            let f = f.unwrap();
            out.insert(
                format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ),
                f.metadata().unwrap().len(),
            );
        }
    }
    out
}

// ================================================================ what a document is

/// One rule decides what a fetched document is (`oci::document_media_type`): a registry
/// that serves an index and its manifests as `application/json`, none of the documents with
/// a `mediaType` of its own, is pulled by their shape and the types the index's entries
/// give; the name gets the OCI index (or, pulled by a manifest's digest, the OCI manifest)
/// media type, and `image check` and `image export` read what the pull stored alike:
/// complete, every blob written. An index whose entries give no media type, or a layer's,
/// is refused (exit 1, naming the entry) before anything is named: check and export walk an
/// index by its entries' types, so storing it would leave them disagreeing with the pull. A
/// double: no real registry stores a manifest without a media type.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn documents_known_only_by_their_shape_are_pulled_checked_and_exported_alike() {
    let started = Instant::now();
    let env = Env::new();
    let reg = Docs::start("shape/app");
    let mut entries = Vec::new();
    let mut lying = Vec::new();
    let mut untyped = Vec::new();
    let mut blobs: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_manifest = None;
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let (config, layer) = config_and_layer(arch, i as u32, 20 << 10);
        for b in [&config, &layer] {
            blobs.insert(reg.blob(b), b.len() as u64);
        }
        let manifest = json!({
            "schemaVersion": 2,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": [descriptor(OCI_LAYER_TAR, &layer)],
        })
        .to_string();
        let d = reg.manifest(None, "application/json", manifest.as_bytes());
        blobs.insert(d.clone(), manifest.len() as u64);
        if first_manifest.is_none() {
            let own: BTreeMap<String, u64> = [&config, &layer, &manifest.as_bytes().to_vec()]
                .into_iter()
                .map(|b| (sha256(b), b.len() as u64))
                .collect();
            first_manifest = Some((d.clone(), own));
        }
        let platform = json!({"os": "linux", "architecture": arch});
        entries.push(json!({"mediaType": OCI_MANIFEST, "digest": d, "size": manifest.len(), "platform": platform}));
        lying.push(json!({"mediaType": OCI_LAYER_TAR, "digest": d, "size": manifest.len(), "platform": platform}));
        untyped.push(json!({"digest": d, "size": manifest.len(), "platform": platform}));
    }
    let index = json!({"schemaVersion": 2, "manifests": entries}).to_string();
    let index_digest = reg.manifest(Some("1"), "application/json", index.as_bytes());
    blobs.insert(index_digest.clone(), index.len() as u64);

    // What each scenario finds that pull, check and export disagree on, all told at the end.
    let mut problems: Vec<String> = Vec::new();

    // The index: pulled, listed, checked and exported as an OCI index.
    let root = env.path("store");
    let reference = reg.reference("1");
    let out = env.pull(&root, &[&reference, "--all-platforms"], &index_digest);
    assert_eq!(out["media_type"], OCI_INDEX, "{out}");
    assert_eq!(out["blobs_fetched"], blobs.len(), "{out}");
    let ls = env.ok(&root, &["image", "ls"]);
    assert_eq!(ls[0]["media_type"], OCI_INDEX, "{ls}");
    problems.extend(agreement(
        &env,
        &root,
        &reference,
        &["linux/amd64", "linux/arm64"],
        &blobs,
    ));
    let index_json: Value = std::fs::read(env.path("export-store").join("index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if index_json["manifests"][0]["mediaType"] != OCI_INDEX
        || index_json["manifests"][0]["digest"] != index_digest.as_str()
    {
        problems.push(format!(
            "{reference}: the layout's index.json does not name the OCI index: {index_json}"
        ));
    }
    env.fsck_clean(&root);

    // One of its manifests, by digest: an OCI manifest.
    let (manifest_digest, one) = first_manifest.unwrap();
    let single = env.path("single");
    let by_digest = reg.reference(&manifest_digest);
    let out = env.pull(&single, &[&by_digest], &manifest_digest);
    assert_eq!(out["media_type"], OCI_MANIFEST, "{out}");
    assert_eq!(
        env.ok(&single, &["image", "ls"])[0]["media_type"],
        OCI_MANIFEST
    );
    problems.extend(agreement(&env, &single, &by_digest, &["linux/amd64"], &one));
    env.fsck_clean(&single);

    // Indexes whose entries call their manifests layers, or give no type: refused before
    // anything is named.
    for (tag, list) in [("lying", lying), ("untyped", untyped)] {
        let bad_index = json!({"schemaVersion": 2, "manifests": list}).to_string();
        reg.manifest(Some(tag), "application/json", bad_index.as_bytes());
        let third = env.path(tag);
        let reference = reg.reference(tag);
        let r = env.run(&third, &["image", "pull", &reference, "--all-platforms"]);
        no_raw_controls(&r);
        assert_eq!(r.code, Some(1), "{tag}: {r:?}");
        assert!(
            r.stderr.contains(reg.host()) && r.stderr.contains("not a manifest or index type"),
            "{tag}: {}",
            r.stderr
        );
        nothing_named(&env, &third);
        env.fsck_clean(&third);
    }
    assert!(
        problems.is_empty(),
        "pull, check and export disagree:\n{}",
        problems.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// A document nothing says is a manifest or an index (neither its own `mediaType`, nor its
/// `Content-Type`, nor its shape) fails the pull with exit 1 naming the host and why, before
/// anything is fetched or named: as the root, and as an entry of an index. A double: no
/// real registry serves `{}` as a manifest.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn a_document_nothing_says_is_a_manifest_fails_the_pull_before_anything_is_named() {
    let env = Env::new();
    let root = env.path("store");
    let reg = Docs::start("undecided/app");
    let (config, layer) = config_and_layer("amd64", 3, 4 << 10);
    reg.blob(&config);
    reg.blob(&layer);
    let bodies: &[(&str, &str)] = &[
        ("{}", "application/json"),
        (r#"{"foo":1}"#, "application/json"),
        ("[]", "application/json"),
        ("null", "application/json"),
        (r#""a string""#, "application/json"),
        (r#"{"manifests":{}}"#, "application/json"),
        (r#"{"config":{}}"#, "application/json"),
        (r#"{"layers":[]}"#, "application/json"),
        (
            r#"{"mediaType":"application/vnd.oci.image.config.v1+json"}"#,
            "application/json",
        ),
        (r#"{"schemaVersion":2}"#, "text/plain"),
        ("<html>not found</html>", "text/html"),
        (r#"{"foo":1}"#, "application/octet-stream"),
    ];
    for (i, (body, ct)) in bodies.iter().enumerate() {
        let tag = format!("t{i}");
        reg.manifest(Some(&tag), ct, body.as_bytes());
        refused(
            &env,
            &root,
            &["image", "pull", &reg.reference(&tag)],
            &[reg.host(), "manifest or an index"],
            Duration::from_secs(10),
        );
    }
    // As an entry of an index that names no media type for it: the entry is refused
    // before the document is fetched.
    let odd = br#"{"foo":1}"#;
    let odd_digest = reg.manifest(None, "application/json", odd);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"digest": odd_digest, "size": odd.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    })
    .to_string();
    reg.manifest(Some("index"), OCI_INDEX, index.as_bytes());
    refused(
        &env,
        &root,
        &["image", "pull", &reg.reference("index"), "--all-platforms"],
        &[reg.host(), &odd_digest, "not a manifest or index type"],
        Duration::from_secs(10),
    );
    assert_eq!(
        reg.blob_gets(),
        0,
        "nothing fetched: {:?}",
        reg.reg.blob_gets()
    );
    nothing_named(&env, &root);
    assert!(env.content(&root).is_empty(), "nothing stored");
    env.fsck_clean(&root);
}

// ================================================================ strings from the wire

/// A manifest whose layer's or config's `mediaType` (or an index whose entry's) holds
/// control characters (ESC, BEL, NUL, CR, LF, a trailing newline) or is not `type/subtype`
/// by RFC 6838 is refused: exit 1, the error saying "RFC 6838" and naming the host, the
/// value shown escaped (no raw ESC, BEL or NUL reaches the terminal), nothing fetched, nothing
/// named. A double: a real registry refuses such manifests on push.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn a_media_type_with_control_characters_or_outside_rfc_6838_is_refused() {
    let started = Instant::now();
    let env = Env::new();
    let root = env.path("store");
    let reg = Docs::start("strings/app");
    let (config, layer) = config_and_layer("amd64", 4, 4 << 10);
    reg.blob(&config);
    reg.blob(&layer);
    let manifest = |config_type: &str, layer_type: &str| {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config_type, &config),
            "layers": [descriptor(layer_type, &layer)],
        })
        .to_string()
    };
    let bad_layer_types = [
        "application/vnd.oci.image.layer.v1.tar\u{1b}[2J",
        "application/vnd.oci.image.layer.v1.tar\u{7}",
        "application/vnd.oci.image.layer.v1.tar\u{0}",
        "application/vnd.oci.image.layer.v1.tar\nX-Forged: 1",
        "application/vnd.oci.image.layer.v1.tar\n",
        "application/vnd.oci.image.layer.v1.tar\r\n",
        "application/vnd.oci.image.layer.v1.tar\u{b}",
        "application/vnd.oci.image.layer.v1.tar; x=\u{1b}]0;pwned\u{7}",
        "tar",
        "application/",
        "/vnd.oci.image.layer.v1.tar",
        "../../etc/passwd",
        "appli cation/tar",
        "application/vnd.oci.image.layer.v1.tar/extra",
    ];
    let mut cases: Vec<(String, String)> = bad_layer_types
        .iter()
        .map(|t| (t.escape_debug().to_string(), manifest(OCI_CONFIG, t)))
        .collect();
    for t in [
        "application/vnd.oci.image.config.v1+json\u{1b}]0;pwned\u{7}",
        "json",
        "application/vnd.oci.image.config.v1+json\n",
    ] {
        cases.push((
            format!("config {}", t.escape_debug()),
            manifest(t, OCI_LAYER_TAR),
        ));
    }
    // Each case in a store of its own; what each did wrong is told at the end, all of it.
    let mut wrong = Vec::new();
    for (i, (what, m)) in cases.iter().enumerate() {
        let tag = format!("m{i}");
        reg.manifest(Some(&tag), OCI_MANIFEST, m.as_bytes());
        let store = env.path(&format!("store-{tag}"));
        let gets = reg.blob_gets();
        let r = env.run(&store, &["image", "pull", &reg.reference(&tag)]);
        no_raw_controls(&r);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        let refused_well = r.code == Some(1)
            && r.stderr.contains("RFC 6838")
            && r.stderr.contains(reg.host())
            && r.stderr.trim_end().lines().count() == 1;
        if !refused_well {
            let ls = env.ok(&store, &["image", "ls"]);
            wrong.push(format!(
                "{what}: not refused with exit 1, one line naming RFC 6838 and the host: exit \
                 {:?}, stderr {:?}, {} blob GET(s), image ls {}",
                r.code,
                r.stderr.trim(),
                reg.blob_gets() - gets,
                ls.as_array().map_or(0, Vec::len)
            ));
        } else {
            assert_eq!(reg.blob_gets(), gets, "{what}: nothing fetched");
            nothing_named(&env, &store);
        }
        env.fsck_clean(&store);
    }
    // An index entry's.
    let good = manifest(OCI_CONFIG, OCI_LAYER_TAR);
    let good_digest = reg.manifest(None, OCI_MANIFEST, good.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json\u{1b}[31m",
                       "digest": good_digest, "size": good.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    })
    .to_string();
    reg.manifest(Some("index"), OCI_INDEX, index.as_bytes());
    refused(
        &env,
        &root,
        &["image", "pull", &reg.reference("index"), "--all-platforms"],
        &["RFC 6838", reg.host()],
        Duration::from_secs(10),
    );
    // A raw ESC inside a JSON string (not even JSON): refused, not echoed.
    let raw = manifest(OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar@@")
        .replace("@@", "\u{1b}[2J\u{7}");
    reg.manifest(Some("raw"), OCI_MANIFEST, raw.as_bytes());
    refused(
        &env,
        &root,
        &["image", "pull", &reg.reference("raw")],
        &[reg.host()],
        Duration::from_secs(10),
    );
    nothing_named(&env, &root);
    env.fsck_clean(&root);
    assert!(
        wrong.is_empty(),
        "media types that are none were let through:\n{}",
        wrong.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// An `artifactType` that is not a media type (control characters, a trailing newline, no
/// `type/subtype`) is not shown: the pull succeeds, and `image ls --json` and `remote
/// inspect --json` give `artifact_type: null`, while a well-formed one is shown; nothing
/// raw reaches the terminal in the plain listing either. A double: no real registry is
/// needed to carry such a manifest, but distribution refuses none, so this is what a
/// hostile one would serve.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn an_artifact_type_that_is_not_a_media_type_is_not_shown() {
    let started = Instant::now();
    let env = Env::new();
    let root = env.path("store");
    let reg = Docs::start("artifact/app");
    let (config, layer) = config_and_layer("amd64", 5, 4 << 10);
    reg.blob(&config);
    reg.blob(&layer);
    let good = "application/vnd.example.sbom+json";
    let types = [
        Some(good),
        None,
        Some("evil\u{1b}[2J"),
        Some("application/spdx+json\u{7}"),
        Some("not a media type"),
        Some("application/"),
        Some(""),
        Some("application/spdx+json\n"),
        Some("application/spdx+json\r\n"),
    ];
    // What is shown that should not be, all told at the end.
    let mut shown = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": [descriptor(OCI_LAYER_TAR, &layer)],
        });
        if let Some(t) = t {
            m["artifactType"] = json!(t);
        }
        let m = m.to_string();
        let tag = format!("a{i}");
        let digest = reg.manifest(Some(&tag), OCI_MANIFEST, m.as_bytes());
        let reference = reg.reference(&tag);
        env.pull(&root, &[&reference], &digest);
        let expected = if *t == Some(good) {
            json!(good)
        } else {
            Value::Null
        };
        let ls = env.ok(&root, &["image", "ls"]);
        let listed = ls
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == reference.as_str())
            .unwrap_or_else(|| panic!("{reference} listed: {ls}"));
        if listed["artifact_type"] != expected {
            shown.push(format!(
                "artifactType {t:?}: image ls shows {}",
                listed["artifact_type"]
            ));
        }
        let remote = env.ok(&root, &["remote", "inspect", &reference]);
        if remote["artifact_type"] != expected {
            shown.push(format!(
                "artifactType {t:?}: remote inspect shows {}",
                remote["artifact_type"]
            ));
        }
    }
    let plain = env.ocistore(&root).args(["image", "ls"]).output().unwrap();
    let plain = Run {
        code: plain.status.code(),
        stdout: String::from_utf8_lossy(&plain.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&plain.stderr).into_owned(),
    };
    assert_eq!(plain.code, Some(0), "{plain:?}");
    no_raw_controls(&plain);
    env.fsck_clean(&root);
    assert!(
        shown.is_empty(),
        "artifact types that are no media types are shown:\n{}",
        shown.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

// ================================================================ sizes

/// A manifest naming a blob the store already has, with another size than the blob's, is
/// refused before anything is fetched: exit 1, the error naming the blob and both sizes;
/// nothing new is named, the store's content is as it was. Whether the blob came with an
/// earlier pull (a config, a layer) or was put by hand. A double: a real registry checks
/// descriptor sizes on push.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn a_manifest_giving_a_present_blob_another_size_is_refused_before_fetching() {
    let started = Instant::now();
    let env = Env::new();
    let root = env.path("store");
    let reg = Docs::start("sizes/app");
    let (config, layer) = config_and_layer("amd64", 6, 8 << 10);
    let (_, new_layer) = config_and_layer("amd64", 7, 8 << 10);
    let by_hand = b"a blob put by hand, named by nothing".to_vec();
    for b in [&config, &layer, &new_layer, &by_hand] {
        reg.blob(b);
    }
    let manifest = |config: Value, layers: Vec<Value>| {
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers})
            .to_string()
    };
    let with_size = |mut d: Value, size: u64| {
        d["size"] = json!(size);
        d
    };
    let first = manifest(
        descriptor(OCI_CONFIG, &config),
        vec![descriptor(OCI_LAYER_TAR, &layer)],
    );
    let first_digest = reg.manifest(Some("first"), OCI_MANIFEST, first.as_bytes());
    env.pull(&root, &[&reg.reference("first")], &first_digest);
    let file = env.path("by-hand");
    std::fs::write(&file, &by_hand).unwrap();
    env.ok(&root, &["content", "put", p(&file)]);
    let before_names = names(&env, &root);
    let before_content = env.content(&root);
    let gets_before = reg.blob_gets();

    let (c, l, h) = (
        config.len() as u64,
        layer.len() as u64,
        by_hand.len() as u64,
    );
    let cases: Vec<(&str, String, u64, u64)> = vec![
        // The config one byte longer than it is, with a layer the store lacks.
        (
            "config",
            manifest(
                with_size(descriptor(OCI_CONFIG, &config), c + 1),
                vec![descriptor(OCI_LAYER_TAR, &new_layer)],
            ),
            c + 1,
            c,
        ),
        // The present layer as empty.
        (
            "layer",
            manifest(
                descriptor(OCI_CONFIG, &config),
                vec![
                    descriptor(OCI_LAYER_TAR, &new_layer),
                    with_size(descriptor(OCI_LAYER_TAR, &layer), 0),
                ],
            ),
            0,
            l,
        ),
        // The blob put by hand, a GiB longer.
        (
            "by hand",
            manifest(
                descriptor(OCI_CONFIG, &config),
                vec![with_size(
                    descriptor(OCI_LAYER_TAR, &by_hand),
                    h + (1 << 30),
                )],
            ),
            h + (1 << 30),
            h,
        ),
    ];
    for (i, (what, m, said, is)) in cases.iter().enumerate() {
        let tag = format!("wrong{i}");
        reg.manifest(Some(&tag), OCI_MANIFEST, m.as_bytes());
        let blob = match *what {
            "config" => sha256(&config),
            "layer" => sha256(&layer),
            _ => sha256(&by_hand),
        };
        refused(
            &env,
            &root,
            &["image", "pull", &reg.reference(&tag)],
            &[
                reg.host(),
                &blob,
                &format!("{said} bytes"),
                &format!("{is} bytes"),
            ],
            Duration::from_secs(10),
        );
    }
    assert_eq!(
        reg.blob_gets(),
        gets_before,
        "nothing fetched: {:?}",
        reg.reg.blob_gets()
    );
    assert_eq!(names(&env, &root), before_names, "nothing new named");
    assert_eq!(env.content(&root), before_content, "nothing new stored");
    env.fsck_clean(&root);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// Descriptor sizes at the edges of what JSON and u64 say: 2^53 (past what f64 holds
/// exactly), 2^63-1, 2^64-1, 2^64 (past u64), negative ones, fractions, strings, `null`,
/// on a layer, on the config and on an index's entry; each fails the pull cleanly (exit 1,
/// the host named, no panic), quickly, with nothing fetched and nothing named, also when
/// `--max-size` is the largest u64 (so that the free-space check, not the maximum, refuses
/// them). A double: a real registry refuses such manifests on push.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn descriptor_sizes_at_the_edges_of_json_and_u64_fail_cleanly_before_fetching() {
    let env = Env::new();
    let root = env.path("store");
    let reg = Docs::start("edges/app");
    let (config, layer) = config_and_layer("amd64", 8, 4 << 10);
    reg.blob(&config);
    reg.blob(&layer);
    let as_u64 = [
        "9007199254740992",
        "9007199254740993",
        "9223372036854775807",
        "9223372036854775808",
        U64_MAX,
    ];
    let not_u64 = [
        "18446744073709551616",
        "99999999999999999999999999999999999999",
        "-1",
        "-9223372036854775808",
        "1.5",
        "4096.0",
        "1e3",
        "1e400",
        "\"4096\"",
        "null",
        "true",
        "{}",
    ];
    // The size written as JSON text, in place of a placeholder.
    let manifest = |field: &str, size: &str| {
        let mut cfg = descriptor(OCI_CONFIG, &config);
        let mut lay = descriptor(OCI_LAYER_TAR, &layer);
        match field {
            "config" => cfg["size"] = json!("@SIZE@"),
            _ => lay["size"] = json!("@SIZE@"),
        }
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [lay]})
            .to_string()
            .replace("\"@SIZE@\"", size)
    };
    let mut n = 0;
    for field in ["layer", "config"] {
        for size in as_u64.iter().chain(&not_u64) {
            n += 1;
            let tag = format!("e{n}");
            let m = manifest(field, size);
            reg.manifest(Some(&tag), OCI_MANIFEST, m.as_bytes());
            let reference = reg.reference(&tag);
            let mut parts = vec![reg.host()];
            if as_u64.contains(size) {
                parts.push(size);
            }
            refused(
                &env,
                &root,
                &["image", "pull", &reference],
                &parts,
                Duration::from_secs(10),
            );
            if as_u64.contains(size) {
                // Past the maximum: the free space refuses it, naming it.
                refused(
                    &env,
                    &root,
                    &["image", "pull", &reference, "--max-size", U64_MAX],
                    &[reg.host(), "free"],
                    Duration::from_secs(10),
                );
            }
        }
    }
    // An index entry whose size is the largest u64, or negative: its manifest is fetched (at
    // most 4 MiB of it) and refused, its blobs never.
    let good = manifest("layer", &layer.len().to_string());
    let good_digest = reg.manifest(None, OCI_MANIFEST, good.as_bytes());
    for size in [U64_MAX, "-1", "18446744073709551616"] {
        n += 1;
        let tag = format!("e{n}");
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": good_digest, "size": "@SIZE@",
                           "platform": {"os": "linux", "architecture": "amd64"}}],
        })
        .to_string()
        .replace("\"@SIZE@\"", size);
        reg.manifest(Some(&tag), OCI_INDEX, index.as_bytes());
        let mut parts = vec![reg.host()];
        if size == U64_MAX {
            parts.extend([good_digest.as_str(), U64_MAX]);
        }
        refused(
            &env,
            &root,
            &[
                "image",
                "pull",
                &reg.reference(&tag),
                "--all-platforms",
                "--max-size",
                U64_MAX,
            ],
            &parts,
            Duration::from_secs(10),
        );
    }
    assert_eq!(
        reg.blob_gets(),
        0,
        "nothing fetched: {:?}",
        reg.reg.blob_gets()
    );
    nothing_named(&env, &root);
    assert!(env.content(&root).is_empty(), "nothing stored");
    env.fsck_clean(&root);
}

// ================================================================ memory

/// `remote tags` over a million tags in 10,000 `Link`-paged pages holds one page at a time:
/// peak RSS at most 64 MiB, every tag printed once, in order (counted line by line from the
/// output file, never held whole). A double: distribution 2.8 ignores `n` and sends no
/// `Link`, and a million tags pushed to it would take hours; the double makes each page as it
/// is asked for.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn a_million_tags_in_ten_thousand_pages_are_listed_in_flat_memory() {
    const PAGES: usize = 10_000;
    const PER_PAGE: usize = 100;
    let env = Env::new();
    let root = env.path("store");
    let reg = Scripted::start(|h| {
        if h.path() == "/v2/" {
            return Reply::ok("application/json", "{}");
        }
        if h.path() != "/v2/many/tags/tags/list" {
            return Reply::not_found();
        }
        let page: usize = h.param("page").and_then(|p| p.parse().ok()).unwrap_or(0);
        let tags: Vec<String> = (page * PER_PAGE..(page + 1) * PER_PAGE)
            .map(|i| format!("t{i:07}"))
            .collect();
        let body = json!({"name": "many/tags", "tags": tags}).to_string();
        let reply = Reply::ok("application/json", body);
        if page + 1 < PAGES {
            let link = format!(
                "</v2/many/tags/tags/list?page={}&n={PER_PAGE}>; rel=\"next\"",
                page + 1
            );
            reply.header("Link", &link)
        } else {
            reply
        }
    });
    let repo = format!("{}/many/tags", reg.server.host);
    let started = Instant::now();
    let (r, kib) = run_max_rss(&env, &root, &["remote", "tags", &repo]);
    let took = started.elapsed();
    println!(
        "remote tags: {} tags in {PAGES} pages in {took:?}, peak RSS {kib} KiB",
        PAGES * PER_PAGE
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.is_empty(), "no warning: {}", r.stderr);
    // `--json`: "[", then a tag a line (a comma after all but the last), then "]".
    let file = std::fs::File::open(env.path("rss.stdout")).unwrap();
    let mut lines = std::io::BufReader::new(file).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "[");
    let total = PAGES * PER_PAGE;
    for i in 0..total {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("only {i} tags"))
            .unwrap();
        let comma = if i + 1 < total { "," } else { "" };
        assert_eq!(line, format!("\"t{i:07}\"{comma}"), "line {}", i + 1);
    }
    assert_eq!(lines.next().unwrap().unwrap(), "]");
    assert!(lines.next().is_none(), "nothing after the list");
    assert_eq!(reg.count(), PAGES, "one request a page");
    assert!(kib > 1024, "a measurement, not a zero: {kib} KiB");
    assert!(kib <= 64 * 1024, "peak RSS {kib} KiB over 64 MiB");
    assert!(took < Duration::from_secs(180), "took {took:?}");
}

/// A single tag page of 60 MiB sent chunked, with no `Content-Length` to refuse it by, is
/// cut at the 8 MiB cap while it is read: exit 1 naming the host and the cap, peak RSS at
/// most 64 MiB, within seconds. (The test in registry.rs sends its large page with a
/// length.) A double: no real registry sends a tag page of 60 MiB.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn a_sixty_mib_tag_page_without_a_length_is_cut_at_the_cap_in_flat_memory() {
    let env = Env::new();
    let root = env.path("store");
    let reg = Scripted::start(|h| {
        if h.path() == "/v2/" {
            return Reply::ok("application/json", "{}");
        }
        if h.path() != "/v2/huge/page/tags/list" {
            return Reply::not_found();
        }
        // 960 chunks of 64 KiB of tags, made as they are sent.
        let per_chunk = (64 << 10) / 11;
        let chunks = std::iter::once(br#"{"name":"huge/page","tags":["#.to_vec()).chain(
            (0..960usize)
                .map(move |c| {
                    let mut out = Vec::with_capacity(64 << 10);
                    for i in c * per_chunk..(c + 1) * per_chunk {
                        out.extend_from_slice(format!("\"t{i:08}\",").as_bytes());
                    }
                    out
                })
                .chain(std::iter::once(br#""end"]}"#.to_vec())),
        );
        Reply::chunked("application/json", chunks)
    });
    let repo = format!("{}/huge/page", reg.server.host);
    let started = Instant::now();
    let (r, kib) = run_max_rss(&env, &root, &["remote", "tags", &repo]);
    let took = started.elapsed();
    println!(
        "a 60 MiB chunked tag page: failed after {took:?}, peak RSS {kib} KiB: {}",
        r.stderr.trim()
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("8388608 bytes") && r.stderr.contains(&reg.server.host),
        "the error names the host and the cap: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(!r.stdout.contains("t0000"), "no tag of the page printed");
    assert!(kib > 1024, "a measurement, not a zero: {kib} KiB");
    assert!(kib <= 64 * 1024, "peak RSS {kib} KiB over 64 MiB");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    nothing_named(&env, &root);
}

/// `image pull --all-platforms` of an index of 1,000 manifests of almost 4 MiB each (a valid
/// manifest, one small config and one small layer shared by all, padded with a large
/// annotation; no platforms) holds memory flat: peak RSS at most 64 MiB, every manifest
/// stored, the image complete, fsck clean. (A pull that held every manifest of the index in
/// memory until its commit would peak at 4 GB here.) A double:
/// the manifests are made as they are asked for (a real registry would have to hold 4 GB).
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn an_index_of_a_thousand_four_mib_manifests_pulls_in_flat_memory() {
    const N: usize = 1000;
    // Just under the 4 MiB a manifest may have.
    const SIZE: usize = (4 << 20) - 4096;
    let env = Env::new();
    let root = env.path("store");
    let (config, layer) = config_and_layer("amd64", 9, 8 << 10);
    let (config_d, layer_d) = (
        descriptor(OCI_CONFIG, &config),
        descriptor(OCI_LAYER_TAR, &layer),
    );
    // Copied, not written byte by byte (this file is built without optimisation).
    let pad = vec![b'p'; SIZE];
    let manifest = Arc::new(move |i: usize| -> Vec<u8> {
        let head = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config_d},"layers":[{layer_d}],"annotations":{{"org.example.n":"{i:04}","org.example.pad":""#
        );
        let tail = r#""}}"#;
        let mut out = Vec::with_capacity(SIZE);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&pad[..SIZE - tail.len() - head.len()]);
        out.extend_from_slice(tail.as_bytes());
        out
    });
    let made = Instant::now();
    let digests: Vec<String> = (0..N).map(|i| sha256(&manifest(i))).collect();
    println!(
        "1,000 manifests of {SIZE} bytes hashed in {:?}",
        made.elapsed()
    );
    let by_digest: BTreeMap<String, usize> = digests
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i))
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": digests.iter().map(|d| json!({"mediaType": OCI_MANIFEST, "digest": d, "size": SIZE})).collect::<Vec<_>>(),
    })
    .to_string();
    let index_digest = sha256(index.as_bytes());
    let (config_digest, layer_digest) = (sha256(&config), sha256(&layer));
    let served = {
        let (index, manifest) = (index.clone(), manifest.clone());
        let (config, layer) = (config.clone(), layer.clone());
        let (cd, ld) = (config_digest.clone(), layer_digest.clone());
        Scripted::start(move |h| {
            let path = h.path();
            if path == "/v2/" {
                return Reply::ok("application/json", "{}");
            }
            if let Some(r) = path.strip_prefix("/v2/big/index/manifests/") {
                if r == "1" {
                    return Reply::ok(OCI_INDEX, index.clone());
                }
                return match by_digest.get(r) {
                    Some(&i) => Reply::ok(OCI_MANIFEST, manifest(i)),
                    None => Reply::not_found(),
                };
            }
            match path.strip_prefix("/v2/big/index/blobs/") {
                Some(d) if d == cd => Reply::ok("application/octet-stream", config.clone()),
                Some(d) if d == ld => Reply::ok("application/octet-stream", layer.clone()),
                _ => Reply::not_found(),
            }
        })
    };
    let reference = served.reference("big/index:1");
    let started = Instant::now();
    let (r, kib) = run_max_rss(
        &env,
        &root,
        &["image", "pull", "--all-platforms", &reference],
    );
    let took = started.elapsed();
    println!(
        "pull of an index of {N} manifests of {SIZE} bytes: exit {:?} after {took:?}, peak RSS \
         {kib} KiB ({} MiB)",
        r.code,
        kib / 1024
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let out = r.json();
    assert_eq!(out["digest"], index_digest.as_str(), "{out}");
    assert_eq!(
        out["blobs_fetched"],
        N + 3,
        "the index, its manifests, config and layer: {out}"
    );
    assert_eq!(env.ok(&root, &["image", "ls"])[0]["media_type"], OCI_INDEX);
    let content = env.content(&root);
    assert_eq!(content.len(), N + 3, "every manifest stored");
    assert!(
        digests
            .iter()
            .all(|d| content.get(d) == Some(&(SIZE as u64)))
    );
    check_complete(&env, &root, &reference, "linux/amd64");
    env.fsck_clean(&root);
    assert!(kib > 1024, "a measurement, not a zero: {kib} KiB");
    assert!(
        kib <= 64 * 1024,
        "peak RSS {kib} KiB ({} MiB) over 64 MiB",
        kib / 1024
    );
    assert!(took < Duration::from_secs(600), "took {took:?}");
}

// ================================================================ credentials and other hosts

/// A registry with basic auth (distribution with htpasswd) whose blob GETs are redirected
/// (307, as to a storage backend's presigned URL) to a second loopback host: the pull
/// follows, the second host never sees the `Authorization` the registry got, neither on the
/// layer read around ureq (2 MiB) nor on the small ones. And when that host answers 401
/// with a Bearer challenge naming a token realm on a third host, the registry's credentials
/// go to neither: the pull fails with exit 1, nothing named. Doubles: the fault proxy in
/// front of the registry answers the 307s (distribution on a filesystem never redirects),
/// and two recording servers stand for the storage and the realm.
#[test]
#[ignore = "needs docker-registry, htpasswd and skopeo; run by .ci/run's interop suite"]
fn a_blob_redirected_to_another_host_never_carries_the_registry_s_credentials() {
    let env = Env::new();
    let (user, pass) = ("tester", "s3cret-pw");
    let reg = Reg::start(RegOpts {
        auth: Some((user.into(), pass.into())),
        ..RegOpts::default()
    });
    let image = env.image("1", AMD64, &[2 << 20, 64 << 10], 71);
    skopeo_push(&image, &reg, "auth/app:1", Some((user, pass)));
    // A third host: a token realm that hands out a token to whoever asks.
    let realm = Scripted::start(|_| Reply::ok("application/json", r#"{"token":"from-elsewhere"}"#));
    // The second host: serves the layout's blobs at /storage/<hex>, and 401 at /deny/<hex>.
    let storage = {
        let dir = image.dir.clone();
        let challenge = format!(
            "Bearer realm=\"http://{}/token\",service=\"storage\"",
            realm.server.host
        );
        Scripted::start(move |h| {
            if h.path().starts_with("/deny/") {
                return Reply::status(401)
                    .header("WWW-Authenticate", &challenge)
                    .header("Content-Type", "application/json")
                    .with_body(r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
            }
            let Some(hex) = h.path().strip_prefix("/storage/") else {
                return Reply::not_found();
            };
            match std::fs::read(dir.join("blobs/sha256").join(hex)) {
                Ok(b) => Reply::ok("application/octet-stream", b),
                Err(_) => Reply::not_found(),
            }
        })
    };
    let redirect_to = |prefix: &str| -> Vec<Rule> {
        image
            .plain_blobs()
            .keys()
            .map(|d| {
                let hex = d.strip_prefix("sha256:").unwrap();
                let location = format!(
                    "Location: http://{}/{prefix}/{hex}?X-Amz-Signature=presigned\r\n",
                    storage.server.host
                );
                let location: &'static str = Box::leak(location.into_boxed_str());
                Rule::new("GET", &format!("/blobs/{d}"), Fault::Status(307, location))
            })
            .collect()
    };

    // Redirected to storage that serves: the pull succeeds, no credentials went there.
    let proxy = FaultProxy::start(reg.port, redirect_to("storage"));
    env.login(&proxy.server.host, user, pass);
    let reference = proxy.reference("auth/app:1");
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    pulled_whole(&env, &root, &reference, &image);
    let heard = storage.heard();
    for d in image.plain_blobs().keys() {
        let hex = d.strip_prefix("sha256:").unwrap();
        assert!(
            heard
                .iter()
                .any(|h| h.method == "GET" && h.path() == format!("/storage/{hex}")),
            "{d} was fetched from the storage it was redirected to:\n{}\n{}",
            seen_list(&proxy.seen()),
            heard
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let leaked = storage.authorized();
    assert!(
        leaked.is_empty(),
        "the registry's Authorization reached the second host:\n{}",
        leaked
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Without credentials the registry refuses: they were needed, and sent, to it alone.
    env.logout();
    refused(
        &env,
        &env.path("anonymous"),
        &["image", "pull", &reference],
        &[&proxy.server.host, "unauthorized"],
        Duration::from_secs(30),
    );
    drop(proxy);

    // Redirected to storage that answers 401 with a realm of its own: the registry's
    // credentials go neither to it nor to its realm.
    let proxy = FaultProxy::start(reg.port, redirect_to("deny"));
    env.login(&proxy.server.host, user, pass);
    let reference = proxy.reference("auth/app:1");
    let denied = env.path("denied");
    let started = Instant::now();
    let r = env.run(&denied, &["image", "pull", &reference]);
    println!(
        "a pull redirected to a 401 with a realm elsewhere: {:?} after {:?}: {}",
        r.code,
        started.elapsed(),
        r.stderr.trim()
    );
    let leaked: Vec<String> = storage
        .authorized()
        .iter()
        .chain(&realm.authorized())
        .map(ToString::to_string)
        .collect();
    assert!(
        leaked.is_empty(),
        "the registry's credentials reached another host (the storage, or the realm it named):\n{}",
        leaked.join("\n")
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(60));
    nothing_named(&env, &denied);
    env.fsck_clean(&denied);
}

/// A registry with basic auth whose tag list's `Link` names the next page on a second host:
/// the listing follows it (an absolute `Link` is allowed) without the registry's
/// `Authorization`; when that host answers 401 with a Bearer challenge naming a realm on a
/// third host, neither sees the credentials, and the listing fails with exit 1 naming the
/// host. Doubles: distribution 2.8 sends no `Link`, let alone one to another host.
#[test]
#[ignore = "needs nothing but test doubles; run by .ci/run's interop suite"]
fn a_tag_page_linked_on_another_host_never_carries_the_registry_s_credentials() {
    use base64::Engine;
    let env = Env::new();
    let root = env.path("store");
    let (user, pass) = ("tester", "s3cret-pw");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    let realm = Scripted::start(|_| Reply::ok("application/json", r#"{"token":"from-elsewhere"}"#));
    let challenge = format!(
        "Bearer realm=\"http://{}/token\",service=\"elsewhere\"",
        realm.server.host
    );
    // The second host: page 2 of `auth/app` at /v2/…?page=2, a 401 at /deny/….
    let other = Scripted::start(move |h| {
        if h.path().starts_with("/deny/") {
            return Reply::status(401).header("WWW-Authenticate", &challenge);
        }
        if h.path() == "/v2/auth/app/tags/list" {
            return Reply::ok(
                "application/json",
                r#"{"name":"auth/app","tags":["b1","b2"]}"#,
            );
        }
        Reply::not_found()
    });
    // The registry: basic auth on everything; page 1 links to the second host.
    let registry = {
        let other = other.server.host.clone();
        Scripted::start(move |h| {
            if h.header("authorization") != Some(expected.as_str()) {
                return Reply::status(401).header("WWW-Authenticate", "Basic realm=\"registry\"");
            }
            let link = match h.path() {
                "/v2/" => return Reply::ok("application/json", "{}"),
                "/v2/auth/app/tags/list" => {
                    format!("<http://{other}/v2/auth/app/tags/list?page=2>; rel=\"next\"")
                }
                "/v2/deny/app/tags/list" => {
                    format!("<http://{other}/deny/app/tags/list?page=2>; rel=\"next\"")
                }
                _ => return Reply::not_found(),
            };
            Reply::ok(
                "application/json",
                r#"{"name":"auth/app","tags":["a1","a2"]}"#,
            )
            .header("Link", &link)
        })
    };
    env.login(&registry.server.host, user, pass);
    let r = env.run(
        &root,
        &[
            "remote",
            "tags",
            &format!("{}/auth/app", registry.server.host),
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.json(), json!(["a1", "a2", "b1", "b2"]), "both pages");
    assert!(
        !registry.authorized().is_empty(),
        "the registry got its credentials"
    );
    let started = Instant::now();
    let denied = env.run(
        &root,
        &[
            "remote",
            "tags",
            &format!("{}/deny/app", registry.server.host),
        ],
    );
    println!(
        "a Link to a 401 with a realm elsewhere: {:?} after {:?}: {}",
        denied.code,
        started.elapsed(),
        denied.stderr.trim()
    );
    let leaked: Vec<String> = other
        .authorized()
        .iter()
        .chain(&realm.authorized())
        .map(ToString::to_string)
        .collect();
    assert!(
        leaked.is_empty(),
        "the registry's credentials reached another host (the linked one, or the realm it named):\n{}",
        leaked.join("\n")
    );
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert!(
        denied.stderr.contains(&other.server.host) || denied.stderr.contains(&registry.server.host),
        "{}",
        denied.stderr
    );
    assert!(!denied.stderr.contains("panicked"), "{}", denied.stderr);
    assert!(started.elapsed() < Duration::from_secs(60));
    nothing_named(&env, &root);
}
