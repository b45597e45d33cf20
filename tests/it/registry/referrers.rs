//! Referrers (signatures, SBOMs, attestations: OCI 1.1 manifests with a `subject`) through
//! registries: `image pull --referrers`, `image push --referrers`, `remote referrers`, the
//! tag schema's `sha256-<hex>` index that ocistore keeps on a registry without the referrers
//! API, and `artifact create|get`.
//!
//! 1. Interop with ORAS: oras-py (PyPI `oras` 0.2.43) through `registry/oras_client.py`, a
//!    stand-in for the oras CLI (not packaged here) whose docstring says what is oras-py's and
//!    what is ours, against distribution 2.8 (no referrers API: every listing is the tag
//!    schema's). The interpreter is `$OCISTORE_ORAS_PYTHON`, else
//!    `<crate>/target/oras-venv/bin/python`, which `.ci/run` creates.
//! 2. The referrers API (paging, `artifactType` and `OCI-Filters-Applied`, `OCI-Subject`) with
//!    a test double, [`ReferrersRegistry`]: distribution 2.8 has no referrers API.
//! 3. Concurrent pushes of referrers of one subject keep every entry of the tag schema's index.
//! 4. Hostile registries: a listing of 100,000 entries, a chain of 1,000 referrers, cycles.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::doubles::{ReferrersRegistry, TypeFilter, referrer_descriptor};
use crate::harness::{
    Env, PROXY_VARS, Reg, host_platform, p, pulled_whole, pushed, registry_with, run_max_rss, sh,
    sha256, succeed,
};
use crate::test_images::{AMD64, OCI_INDEX, OCI_MANIFEST};

const SBOM: &str = "application/spdx+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

// ================================================================ oras-py

/// The Python of the venv holding oras-py: `$OCISTORE_ORAS_PYTHON`, else
/// `<crate>/target/oras-venv/bin/python`. Missing, the test fails saying how to make it.
fn oras_python() -> PathBuf {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_oras_python).clone()
}

fn find_oras_python() -> PathBuf {
    let python = std::env::var_os("OCISTORE_ORAS_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/oras-venv/bin/python"),
        PathBuf::from,
    );
    let ok = Command::new(&python)
        .args([
            "-c",
            "import oras.version as v; assert v.__version__ == '0.2.43', v.__version__",
        ])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no oras-py 0.2.43 at {} (set OCISTORE_ORAS_PYTHON, or create the venv as .ci/run \
         does: python3 -m venv target/oras-venv && target/oras-venv/bin/pip install oras==0.2.43)",
        python.display()
    );
    python
}

/// `oras_client.py ARGS` in `env` (its own HOME, DOCKER_CONFIG, no proxies): its JSON.
fn oras(env: &Env, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/registry/oras_client.py");
    let mut c = Command::new(oras_python());
    c.arg(script)
        .args(args)
        .env("HOME", env.path("home"))
        .env("DOCKER_CONFIG", env.docker_config())
        .current_dir(env.path("home"))
        .stdin(Stdio::null());
    for k in PROXY_VARS {
        c.env_remove(k);
    }
    let out = succeed(&mut c);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oras_client.py {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The digests of the `manifests` of an `oras_client.py discover` answer.
fn discovered(v: &Value) -> BTreeSet<String> {
    v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("discover: {v}"))
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// The entry for `digest` in a list of referrers (ocistore's `"digest"` or oras's).
fn entry<'a>(list: &'a Value, digest: &str) -> &'a Value {
    let l = list.get("manifests").unwrap_or(list);
    l.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|e| e["digest"] == digest)
        .unwrap_or_else(|| panic!("{digest} is not listed: {list}"))
}

/// The digests of ocistore's JSON list of referrers.
fn digests(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|e| e["digest"].as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Writes `bytes` to `env`'s file `name`: its path.
fn file(env: &Env, name: &str, bytes: &[u8]) -> PathBuf {
    let path = env.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Whether the store has a blob.
fn has_blob(env: &Env, root: &Path, digest: &str) -> bool {
    env.content(root).contains_key(digest)
}

/// Proves that referrers attached by ORAS travel through ocistore: oras attaches an SBOM (an
/// OCI 1.1 artifact: `artifactType`, empty config) and a signature (the image-spec 1.0 form:
/// the type in the config's media type) to an image skopeo pushed, writing the tag schema's
/// index as oras-go does; `image pull --referrers` brings both, whole, in one pull; `image
/// push --referrers` to a second registry writes the tag-schema index there that oras's
/// discovery reads, with the same entries.
#[test]
#[ignore = "needs docker-registry, skopeo and oras-py; run by .ci/run's interop suite"]
fn oras_attached_referrers_travel_through_pull_and_push() {
    let env = Env::new();
    oras_python();
    let (_reg, image, reference) = registry_with(&env, "oras/app:1", AMD64, &[64 << 10], 41);
    let sbom = file(
        &env,
        "sbom.spdx.json",
        br#"{"spdxVersion":"SPDX-2.3","name":"app"}"#,
    );
    let sig = file(
        &env,
        "signature.json",
        &ocistore::testsuite::sample(3000, 1),
    );
    let a = oras(
        &env,
        &[
            "attach",
            "--artifact-type",
            SBOM,
            "--annotation",
            "org.opencontainers.image.created=2026-01-02T03:04:05Z",
            &reference,
            &format!("{}:{SBOM}", p(&sbom)),
        ],
    );
    let s = oras(
        &env,
        &[
            "attach",
            "--image-spec",
            "v1.0",
            "--artifact-type",
            SIGNATURE,
            &reference,
            p(&sig),
        ],
    );
    let (a_digest, s_digest) = (a["digest"].as_str().unwrap(), s["digest"].as_str().unwrap());
    assert_eq!(a["subject"], image.root.digest, "{a}");
    assert_eq!(
        a["tag_index_written"], true,
        "distribution 2.8 sends no OCI-Subject: {a}"
    );
    let d = oras(&env, &["discover", &reference]);
    assert_eq!(d["source"], "tag-schema", "{d}");
    assert_eq!(discovered(&d), set(&[a_digest, s_digest]), "{d}");
    // ocistore reads the index oras wrote.
    let remote = env.ok(&env.path("x"), &["remote", "referrers", &reference]);
    assert_eq!(digests(&remote), set(&[a_digest, s_digest]), "{remote}");

    let root = env.path("store");
    let out = env.pull(&root, &[&reference, "--referrers"], &image.root.digest);
    assert_eq!(out["referrers"], 2, "{out}");
    pulled_whole(&env, &root, &reference, &image);
    let listed = env.ok(&root, &["image", "referrers", &reference]);
    assert_eq!(digests(&listed), set(&[a_digest, s_digest]), "{listed}");
    assert_eq!(entry(&listed, a_digest)["artifact_type"], SBOM, "{listed}");
    assert_eq!(
        entry(&listed, s_digest)["artifact_type"],
        SIGNATURE,
        "{listed}"
    );
    assert_eq!(
        entry(&listed, a_digest)["annotations"]["org.opencontainers.image.created"],
        "2026-01-02T03:04:05Z",
        "{listed}"
    );
    for r in [a_digest, s_digest] {
        assert_eq!(entry(&listed, r)["subject"], image.root.digest, "{listed}");
    }
    let files = env.path("sbom-out");
    env.ok(&root, &["artifact", "get", a_digest, "-o", p(&files)]);
    assert_eq!(
        std::fs::read(files.join("sbom.spdx.json")).unwrap(),
        std::fs::read(&sbom).unwrap(),
        "the SBOM's bytes"
    );
    let files = env.path("sig-out");
    env.ok(&root, &["artifact", "get", s_digest, "-o", p(&files)]);
    assert_eq!(
        std::fs::read(files.join("signature.json")).unwrap(),
        std::fs::read(&sig).unwrap(),
        "the signature's bytes"
    );

    // To a second registry: the tag-schema index there is ocistore's.
    let reg2 = Reg::plain();
    let target = reg2.reference("copy/app:1");
    let out = env.push(
        &root,
        &[&reference, &target, "--referrers"],
        &image.root.digest,
    );
    assert_eq!(out["referrers"], 2, "{out}");
    let d2 = oras(&env, &["discover", &target]);
    assert_eq!(d2["source"], "tag-schema", "{d2}");
    assert_eq!(discovered(&d2), set(&[a_digest, s_digest]), "{d2}");
    for (r, t) in [(a_digest, SBOM), (s_digest, SIGNATURE)] {
        let (there, here) = (entry(&d2, r), entry(&d, r));
        assert_eq!(there["artifactType"], t, "{d2}");
        for k in ["mediaType", "size", "artifactType"] {
            assert_eq!(there[k], here[k], "{k} as oras wrote it: {d} vs {d2}");
        }
    }
    assert_eq!(
        entry(&d2, a_digest)["annotations"],
        entry(&d, a_digest)["annotations"],
        "{d2}"
    );
    let only = oras(&env, &["discover", "--artifact-type", SBOM, &target]);
    assert_eq!(discovered(&only), set(&[a_digest]), "{only}");
    // And oras pulls the SBOM's file from there.
    let (host2, _) = target.split_once('/').unwrap();
    let pulled = env.path("oras-sbom");
    let got = oras(
        &env,
        &[
            "pull-files",
            "-o",
            p(&pulled),
            &format!("{host2}/copy/app@{a_digest}"),
        ],
    );
    assert_eq!(got["files"], json!(["sbom.spdx.json"]), "{got}");
    assert_eq!(
        std::fs::read(pulled.join("sbom.spdx.json")).unwrap(),
        std::fs::read(&sbom).unwrap()
    );
}

/// Proves that an artifact made by `ocistore artifact create --subject` and pushed by
/// `image push` is a referrer that ORAS discovers: with its artifact type and annotations,
/// through the tag-schema index ocistore writes on a registry without the referrers API.
#[test]
#[ignore = "needs docker-registry, skopeo and oras-py; run by .ci/run's interop suite"]
fn oras_discovers_an_artifact_ocistore_created_and_pushed() {
    let env = Env::new();
    oras_python();
    let (reg, image, reference) = registry_with(&env, "made/app:1", AMD64, &[32 << 10], 42);
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    let report = file(&env, "vuln.json", br#"{"matches":[]}"#);
    let made = env.ok(
        &root,
        &[
            "artifact",
            "create",
            "lab/vuln:1",
            "--artifact-type",
            "application/vnd.dev.vuln-report+json",
            "--subject",
            &reference,
            "--annotation",
            "org.example.scanner=grype",
            &format!("{}:application/json", p(&report)),
        ],
    );
    let digest = made["digest"].as_str().unwrap().to_owned();
    env.push(
        &root,
        &["lab/vuln:1", &reg.reference("made/app:vuln")],
        &digest,
    );
    let d = oras(&env, &["discover", &reference]);
    assert_eq!(d["source"], "tag-schema", "{d}");
    assert_eq!(discovered(&d), set(&[&digest]), "{d}");
    let e = entry(&d, &digest);
    assert_eq!(
        e["artifactType"], "application/vnd.dev.vuln-report+json",
        "{d}"
    );
    assert_eq!(e["mediaType"], OCI_MANIFEST, "{d}");
    assert_eq!(e["annotations"]["org.example.scanner"], "grype", "{d}");
    let size = e["size"].as_u64().unwrap();
    let info = env.ok(&root, &["content", "info", &digest]);
    assert_eq!(
        info["size"], size,
        "the entry's size is the manifest's: {info}"
    );
    // A second artifact of another type: both listed, each found by its type.
    let sig = file(&env, "sig.bin", &ocistore::testsuite::sample(512, 2));
    let made2 = env.ok(
        &root,
        &[
            "artifact",
            "create",
            "lab/sig:1",
            "--artifact-type",
            SIGNATURE,
            "--subject",
            &reference,
            p(&sig),
        ],
    );
    let digest2 = made2["digest"].as_str().unwrap().to_owned();
    env.push(
        &root,
        &["lab/sig:1", &reg.reference("made/app:sig")],
        &digest2,
    );
    let d = oras(&env, &["discover", &reference]);
    assert_eq!(discovered(&d), set(&[&digest, &digest2]), "{d}");
    let only = oras(
        &env,
        &["discover", "--artifact-type", SIGNATURE, &reference],
    );
    assert_eq!(discovered(&only), set(&[&digest2]), "{only}");
}

/// Proves that an artifact's files survive both ways between ocistore and ORAS byte for
/// byte: files of `ocistore artifact create` pushed by ocistore come back from oras-py's
/// `pull` under their titles, and files pushed by oras-py come back from `ocistore image
/// pull` and `artifact get`.
#[test]
#[ignore = "needs docker-registry and oras-py; run by .ci/run's interop suite"]
fn oras_and_ocistore_artifact_files_round_trip_byte_identical() {
    let env = Env::new();
    oras_python();
    let reg = Reg::plain();
    let root = env.path("store");
    let bin = file(
        &env,
        "model.bin",
        &ocistore::testsuite::sample(300 << 10, 3),
    );
    let text = file(&env, "notes.txt", "héllo\r\nwörld\n\0end".as_bytes());
    let empty = file(&env, "empty.dat", b"");
    let made = env.ok(
        &root,
        &[
            "artifact",
            "create",
            "lab/files:1",
            "--artifact-type",
            "application/vnd.dev.bundle",
            p(&bin),
            &format!("{}:text/plain", p(&text)),
            p(&empty),
        ],
    );
    let digest = made["digest"].as_str().unwrap().to_owned();
    let target = reg.reference("files/out:1");
    env.push(&root, &["lab/files:1", &target], &digest);
    let out = env.path("oras-out");
    let got = oras(&env, &["pull-files", "-o", p(&out), &target]);
    assert_eq!(
        got["files"],
        json!(["empty.dat", "model.bin", "notes.txt"]),
        "{got}"
    );
    for f in [&bin, &text, &empty] {
        let name = f.file_name().unwrap();
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(f).unwrap(),
            "{name:?} through oras-py"
        );
    }

    // The other way: oras-py pushes, ocistore pulls and writes the files back.
    let dir = env.path("in");
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("layer.bin");
    std::fs::write(&a, ocistore::testsuite::sample(200 << 10, 4)).unwrap();
    let b = dir.join("readme.md");
    std::fs::write(&b, "# oras\n").unwrap();
    let source = reg.reference("files/in:1");
    let pushed = oras(
        &env,
        &[
            "push-files",
            &source,
            p(&a),
            &format!("{}:text/markdown", p(&b)),
        ],
    );
    let digest = pushed["digest"].as_str().unwrap();
    let other = env.path("other");
    env.pull(&other, &[&source], digest);
    let back = env.path("back");
    env.ok(&other, &["artifact", "get", &source, "-o", p(&back)]);
    for f in [&a, &b] {
        let name = f.file_name().unwrap();
        assert_eq!(
            std::fs::read(back.join(name)).unwrap(),
            std::fs::read(f).unwrap(),
            "{name:?} through ocistore"
        );
    }
    env.fsck_clean(&other);
}

// ================================================================ the referrers API (a double)

/// A small image in `reg` as `repo:tag` (a config for this machine's platform, one layer: an
/// empty tar): its digest and manifest bytes.
fn double_image(reg: &ReferrersRegistry, repo: &str, tag: &str) -> (String, Vec<u8>) {
    let layer = vec![0u8; 10240];
    let layer_digest = reg.put_blob(repo, &layer);
    let (os, arch) = host_platform().split_once('/').unwrap();
    let arch = arch.split('/').next().unwrap();
    let config = json!({
        "architecture": arch,
        "os": os,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string();
    let config_digest = reg.put_blob(repo, config.as_bytes());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let digest = reg.put_manifest(repo, Some(tag), OCI_MANIFEST, &manifest);
    (digest, manifest)
}

/// An OCI 1.1 artifact manifest of `artifact_type` whose subject is the manifest
/// (`digest`, `size`), with one titled layer (`title`, `bytes`), put in `reg`'s `repo`: its
/// digest and bytes.
fn double_artifact(
    reg: &ReferrersRegistry,
    repo: &str,
    subject: (&str, usize),
    artifact_type: &str,
    title: &str,
    bytes: &[u8],
    annotations: Value,
) -> (String, Vec<u8>) {
    let empty = reg.put_blob(repo, b"{}");
    let layer = reg.put_blob(repo, bytes);
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": bytes.len(),
                    "annotations": {"org.opencontainers.image.title": title}}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
    });
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        m["annotations"] = annotations;
    }
    let m = serde_json::to_vec(&m).unwrap();
    (reg.put_manifest(repo, None, OCI_MANIFEST, &m), m)
}

/// A double holding an image (`lab/app:1`) and two referrers of it, an SBOM (with an
/// annotation) and a signature, each with its file: (double, subject, SBOM, signature,
/// SBOM's bytes).
fn double_with_two_referrers() -> (ReferrersRegistry, String, String, String, Vec<u8>) {
    let reg = ReferrersRegistry::start();
    let (subject, bytes) = double_image(&reg, "lab/app", "1");
    let sbom_bytes = br#"{"spdxVersion":"SPDX-2.3"}"#.to_vec();
    let (sbom, _) = double_artifact(
        &reg,
        "lab/app",
        (&subject, bytes.len()),
        SBOM,
        "sbom.spdx.json",
        &sbom_bytes,
        json!({"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}),
    );
    let (sig, _) = double_artifact(
        &reg,
        "lab/app",
        (&subject, bytes.len()),
        SIGNATURE,
        "sig.bin",
        &ocistore::testsuite::sample(700, 5),
        json!({}),
    );
    (reg, subject, sbom, sig, sbom_bytes)
}

/// The double's request lines that contain `part`.
fn seen_with(reg: &ReferrersRegistry, part: &str) -> Vec<String> {
    reg.seen()
        .into_iter()
        .filter(|l| l.contains(part))
        .collect()
}

/// Proves that `remote referrers` follows the referrers API's pages (`Link` rel=next), and
/// with `--artifact-type` asks the server to filter, trusts its filter only when it says so
/// with `OCI-Filters-Applied` (it does not filter again then), and filters itself when the
/// server does not say so. A test double: distribution 2.8 has no referrers API.
#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn referrers_api_pages_are_followed_and_the_server_filter_trusted_only_when_said() {
    let env = Env::new();
    let root = env.path("store");
    let (reg, subject, sbom, sig, _) = double_with_two_referrers();
    reg.set_page_size(1);
    let reference = reg.reference("lab/app:1");
    let all = env.ok(&root, &["remote", "referrers", &reference]);
    assert_eq!(digests(&all), set(&[&sbom, &sig]), "{all}");
    assert_eq!(entry(&all, &sbom)["artifact_type"], SBOM, "{all}");
    assert_eq!(entry(&all, &sig)["artifact_type"], SIGNATURE, "{all}");
    assert_eq!(entry(&all, &sbom)["subject"], subject, "{all}");
    assert_eq!(
        entry(&all, &sbom)["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z",
        "{all}"
    );
    let pages = seen_with(&reg, "/referrers/");
    assert_eq!(pages.len(), 2, "two pages: {pages:?}");
    assert!(
        pages[1].contains("page=1"),
        "the second page by its Link: {pages:?}"
    );
    assert!(
        seen_with(&reg, "/manifests/sha256-").is_empty(),
        "no tag schema beside the API: {:?}",
        reg.seen()
    );

    // The server filters and says so.
    let filtered = env.ok(
        &root,
        &["remote", "referrers", &reference, "--artifact-type", SBOM],
    );
    assert_eq!(digests(&filtered), set(&[&sbom]), "{filtered}");
    let asked = seen_with(&reg, "artifactType=");
    assert!(
        asked
            .iter()
            .any(|l| l.contains("artifactType=application%2Fspdx%2Bjson")),
        "the filter is asked of the server, encoded: {asked:?}"
    );
    // The server says it filtered (but sent both): it is believed, nothing filtered again.
    reg.set_filter(TypeFilter::Claim);
    let claimed = env.ok(
        &root,
        &["remote", "referrers", &reference, "--artifact-type", SBOM],
    );
    assert_eq!(
        digests(&claimed),
        set(&[&sbom, &sig]),
        "with OCI-Filters-Applied the server's answer stands: {claimed}"
    );
    // The server does not filter and says nothing: the client filters.
    reg.set_filter(TypeFilter::Ignore);
    let own = env.ok(
        &root,
        &["remote", "referrers", &reference, "--artifact-type", SBOM],
    );
    assert_eq!(
        digests(&own),
        set(&[&sbom]),
        "filtered by the client: {own}"
    );
    let none = env.ok(
        &root,
        &[
            "remote",
            "referrers",
            &reference,
            "--artifact-type",
            "application/none",
        ],
    );
    assert_eq!(none, json!([]), "{none}");
    // By digest, too.
    let by_digest = env.ok(
        &root,
        &[
            "remote",
            "referrers",
            &reg.reference(&format!("lab/app@{subject}")),
        ],
    );
    assert_eq!(digests(&by_digest), set(&[&sbom, &sig]), "{by_digest}");
}

/// Proves that `image pull --referrers` brings the referrers the referrers API lists (over
/// several pages), with their blobs, and only those of `--artifact-type` when asked; and
/// that a push of manifests with a subject to a registry that answers `OCI-Subject` writes no
/// `sha256-<hex>` tag (not even a read of one). A test double: distribution 2.8 has no
/// referrers API.
#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn referrers_api_pull_brings_them_and_a_push_writes_no_tag_schema_tag() {
    let env = Env::new();
    let root = env.path("store");
    let (reg, subject, sbom, sig, sbom_bytes) = double_with_two_referrers();
    reg.set_page_size(1);
    let reference = reg.reference("lab/app:1");
    let out = env.pull(&root, &[&reference, "--referrers"], &subject);
    assert_eq!(out["referrers"], 2, "{out}");
    assert!(env.complete(&root, &reference, host_platform()));
    let listed = env.ok(&root, &["image", "referrers", &reference]);
    assert_eq!(digests(&listed), set(&[&sbom, &sig]), "{listed}");
    assert_eq!(entry(&listed, &sbom)["artifact_type"], SBOM, "{listed}");
    assert_eq!(entry(&listed, &sig)["artifact_type"], SIGNATURE, "{listed}");
    let files = env.path("sbom");
    env.ok(&root, &["artifact", "get", &sbom, "-o", p(&files)]);
    assert_eq!(
        std::fs::read(files.join("sbom.spdx.json")).unwrap(),
        sbom_bytes
    );
    env.fsck_clean(&root);

    // Only the SBOM.
    let only = env.path("only");
    let out = env.pull(
        &only,
        &[&reference, "--referrers", "--artifact-type", SBOM],
        &subject,
    );
    assert_eq!(out["referrers"], 1, "{out}");
    let listed = env.ok(&only, &["image", "referrers", &reference]);
    assert_eq!(digests(&listed), set(&[&sbom]), "{listed}");
    assert!(!has_blob(&env, &only, &sig), "the signature stayed behind");

    // Push the image, its two referrers and a new attestation to another repository.
    let att = file(
        &env,
        "att.json",
        br#"{"predicateType":"https://slsa.dev/provenance/v1"}"#,
    );
    let made = env.ok(
        &root,
        &[
            "artifact",
            "create",
            "lab/att:1",
            "--artifact-type",
            "application/vnd.in-toto+json",
            "--subject",
            &reference,
            p(&att),
        ],
    );
    let att_digest = made["digest"].as_str().unwrap().to_owned();
    let target = reg.reference("copy/app:1");
    let out = env.push(&root, &[&reference, &target, "--referrers"], &subject);
    assert_eq!(out["referrers"], 3, "{out}");
    for d in [&sbom, &sig, &att_digest] {
        let put = format!("PUT /v2/copy/app/manifests/{d} ");
        assert!(
            reg.seen().iter().any(|l| l.starts_with(&put)),
            "{d} was put by digest: {:?}",
            reg.seen()
        );
    }
    assert!(
        seen_with(&reg, "/manifests/sha256-").is_empty(),
        "the registry acknowledged each subject with OCI-Subject: no tag-schema tag is read or \
         written: {:?}",
        seen_with(&reg, "/manifests/")
    );
    assert!(
        !reg.tags().iter().any(|t| t.starts_with("sha256-")),
        "{:?}",
        reg.tags()
    );
    let remote = env.ok(&root, &["remote", "referrers", &target]);
    assert_eq!(
        digests(&remote),
        set(&[&sbom, &sig, &att_digest]),
        "{remote}"
    );
}

/// Proves that pushing again referrers the registry already has (the common re-run of a CI
/// push) writes no `sha256-<hex>` tag on a registry with the referrers API either: the
/// registry lists them by itself. A test double: distribution 2.8 has no referrers API.
#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn referrers_api_a_repush_of_present_referrers_writes_no_tag_schema_tag() {
    let env = Env::new();
    let root = env.path("store");
    let (reg, subject, _, _, _) = double_with_two_referrers();
    let reference = reg.reference("lab/app:1");
    env.pull(&root, &[&reference, "--referrers"], &subject);
    let out = env.push(&root, &[&reference, "--referrers"], &subject);
    assert_eq!(out["referrers"], 2, "{out}");
    let tag_schema = seen_with(&reg, "/manifests/sha256-");
    assert!(
        tag_schema.is_empty() && !reg.tags().iter().any(|t| t.starts_with("sha256-")),
        "a registry with the referrers API needs no tag-schema index, present referrers or \
         not: {tag_schema:?}\n{:?}",
        reg.seen()
    );
}

// ================================================================ concurrent pushes

/// What `skopeo inspect --raw` reads for `reference` on plain HTTP, parsed.
fn skopeo_raw(reference: &str) -> Value {
    let out = sh(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    serde_json::from_slice(&out.stdout).expect("a JSON manifest")
}

/// Proves that two `image push --referrers` running at once, each pushing a different
/// signature of one subject to a registry without the referrers API, leave both in the tag
/// schema's `sha256-<hex>` index (read back with skopeo), in each of 20 trials (a fresh
/// repository each), each trial within 30 s and all within 5 minutes.
///
/// Each trial's repository is given the subject and the empty config blob first, one push
/// at a time: what races is the signatures and the index. Two pushes of the same blobs into
/// one repository at once trip distribution 2.8 itself (its filesystem driver writes a
/// repository's link files in place, and a manifest PUT that reads one half-written fails
/// with 400 DIGEST_INVALID; moby/moby#22854), which is no concern of this test.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn referrers_concurrent_pushes_keep_both_in_the_tag_index() {
    let env = Env::new();
    let (reg, image, reference) = registry_with(&env, "race/app:1", AMD64, &[16 << 10], 43);
    let stores = [env.path("a"), env.path("b")];
    let mut sigs = Vec::new();
    for (i, root) in stores.iter().enumerate() {
        env.pull(root, &[&reference], &image.root.digest);
        let f = file(
            &env,
            &format!("sig-{i}"),
            &ocistore::testsuite::sample(400, 10 + i as u64),
        );
        let made = env.ok(
            root,
            &[
                "artifact",
                "create",
                &format!("lab/sig-{i}:1"),
                "--artifact-type",
                SIGNATURE,
                "--subject",
                &reference,
                p(&f),
            ],
        );
        sigs.push(made["digest"].as_str().unwrap().to_owned());
    }
    let seed = file(&env, "seed", b"seed");
    env.ok(
        &stores[0],
        &[
            "artifact",
            "create",
            "lab/seed:1",
            "--artifact-type",
            "application/vnd.dev.seed",
            p(&seed),
        ],
    );
    let tag = format!(
        "sha256-{}",
        image.root.digest.strip_prefix("sha256:").unwrap()
    );
    let started = Instant::now();
    let mut lost = Vec::new();
    let mut writes = Vec::new();
    for trial in 0..20 {
        let t0 = Instant::now();
        let target = reg.reference(&format!("race{trial}/app:1"));
        env.ok(&stores[0], &["image", "push", &reference, &target]);
        env.ok(
            &stores[0],
            &[
                "image",
                "push",
                "lab/seed:1",
                &reg.reference(&format!("race{trial}/app:seed")),
            ],
        );
        let children: Vec<_> = stores
            .iter()
            .map(|root| {
                env.cmd(root, &["image", "push", &reference, &target, "--referrers"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start ocistore")
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "trial {trial}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["referrers"], 1, "trial {trial}: {v}");
        }
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "trial {trial} took {took:?}"
        );
        let index = skopeo_raw(&reg.reference(&format!("race{trial}/app:{tag}")));
        assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
        let listed: BTreeSet<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_owned())
            .collect();
        let want: BTreeSet<String> = sigs.iter().cloned().collect();
        if listed != want {
            lost.push(format!("trial {trial}: {index}"));
        }
        let put = format!("/v2/race{trial}/app/manifests/{tag}");
        writes.push(
            reg.ours()
                .iter()
                .filter(|r| r.method == "PUT" && r.uri == put)
                .count(),
        );
    }
    // More than two writes: a pusher found its entry dropped by the other and wrote again.
    println!("writes of the index in each trial: {writes:?}");
    let took = started.elapsed();
    println!("20 trials of two concurrent pushes took {took:?}");
    assert!(took < Duration::from_secs(300), "20 trials took {took:?}");
    assert!(
        lost.is_empty(),
        "{} of 20 trials lost an entry of the tag-schema index:\n{}",
        lost.len(),
        lost.join("\n")
    );
}

// ================================================================ hostile registries

/// `n` distinct referrer descriptors (of manifests no registry has).
fn fake_entries(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": sha256(format!("referrer {i}").as_bytes()),
                "size": 500,
                "artifactType": SIGNATURE,
            })
        })
        .collect()
}

/// Proves that a referrers listing of 100,000 entries costs bounded memory and time: as
/// one page (16 MB) it fails naming the page limit; over 100 pages of 1,000, `remote
/// referrers` lists them all and `pull --referrers` fails naming the bound on referrers,
/// before fetching any, leaving no name; each under 200 MiB of peak RSS and 60 s. A test
/// double: no real registry lists 100,000 referrers of a manifest.
#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn referrers_listing_of_100000_entries_is_bounded_in_memory_and_time() {
    let env = Env::new();
    let root = env.path("store");
    let reg = ReferrersRegistry::start();
    let (subject, _) = double_image(&reg, "many/app", "1");
    let reference = reg.reference("many/app:1");
    reg.set_listing(&subject, fake_entries(100_000));
    reg.set_page_size(usize::MAX);
    let bounded = |args: &[&str]| {
        let t0 = Instant::now();
        let (run, kib) = run_max_rss(&env, &root, args);
        let took = t0.elapsed();
        println!(
            "{args:?}: exit {:?} in {took:?}, peak RSS {kib} KiB: {}",
            run.code,
            run.stderr.trim()
        );
        assert!(kib < 200 * 1024, "{args:?}: peak RSS {kib} KiB");
        assert!(took < Duration::from_secs(60), "{args:?} took {took:?}");
        run
    };
    // One page of 100,000 entries.
    for args in [
        &["remote", "referrers", &reference][..],
        &["image", "pull", &reference, "--referrers"][..],
    ] {
        let run = bounded(args);
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(
            run.stderr.contains("4194304"),
            "the error names the page limit: {}",
            run.stderr
        );
    }
    // 100 pages of 1,000.
    reg.set_page_size(1000);
    let run = bounded(&["remote", "referrers", &reference]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json().as_array().unwrap().len(), 100_000);
    let before = reg.seen().len();
    let run = bounded(&["image", "pull", &reference, "--referrers"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("100000"),
        "the error names the bound: {}",
        run.stderr
    );
    let fetched: Vec<String> = reg.seen()[before..]
        .iter()
        .filter(|l| l.contains("/manifests/sha256:") || l.contains("/blobs/"))
        .cloned()
        .collect();
    assert!(
        fetched.len() < 10,
        "no listed referrer was fetched: {} requests, e.g. {:?}",
        fetched.len(),
        &fetched[..fetched.len().min(5)]
    );
    assert_eq!(env.ok(&root, &["image", "ls"]), json!([]), "no name");
    env.fsck_clean(&root);
}

/// Proves that a chain of 1,000 referrers (each a referrer of the one before, as the
/// referrers API lists them) makes `pull --referrers` fail quickly, naming the depth limit
/// (32), after following no more than that, and leaves no name. A test double: no real
/// registry holds such a chain.
#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn referrers_chain_of_1000_levels_fails_naming_the_depth() {
    let env = Env::new();
    let root = env.path("store");
    let reg = ReferrersRegistry::start();
    let (subject, bytes) = double_image(&reg, "chain/app", "1");
    let mut prev = (subject.clone(), bytes.len());
    for i in 0..1000 {
        let (d, b) = double_artifact(
            &reg,
            "chain/app",
            (&prev.0, prev.1),
            SIGNATURE,
            "sig.bin",
            format!("signature {i}").as_bytes(),
            json!({}),
        );
        prev = (d, b.len());
    }
    let reference = reg.reference("chain/app:1");
    let t0 = Instant::now();
    let r = env.fails(&root, &["image", "pull", &reference, "--referrers"], 1);
    let took = t0.elapsed();
    println!(
        "a 1000-level chain failed after {took:?}: {}",
        r.stderr.trim()
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        r.stderr.contains("32") && r.stderr.contains("deeper"),
        "the error names the depth limit: {}",
        r.stderr
    );
    let listings = seen_with(&reg, "/referrers/").len();
    assert!(
        listings <= 40,
        "{listings} listings asked: the walk stops at the limit"
    );
    assert_eq!(env.ok(&root, &["image", "ls"]), json!([]), "no name");
    env.fsck_clean(&root);
}

/// A hand-written HTTP request to a plain-HTTP registry on loopback: its status.
fn http_put(port: u16, path: &str, content_type: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Proves that listings that claim cycles end: through the referrers API (a double), the
/// subject's referrer B lists C, and C lists B and the subject again; through the tag
/// schema on a real registry, the subject's `sha256-<hex>` index lists the subject itself
/// and its referrer, whose own index lists both. Each pull ends, with each referrer once.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn referrers_cycles_end() {
    let env = Env::new();
    // The referrers API.
    let reg = ReferrersRegistry::start();
    let (subject, bytes) = double_image(&reg, "cycle/app", "1");
    let (b, b_bytes) = double_artifact(
        &reg,
        "cycle/app",
        (&subject, bytes.len()),
        SBOM,
        "b",
        b"b",
        json!({}),
    );
    let (c, c_bytes) = double_artifact(
        &reg,
        "cycle/app",
        (&b, b_bytes.len()),
        SIGNATURE,
        "c",
        b"c",
        json!({}),
    );
    let desc = |d: &str, m: &[u8]| referrer_descriptor(d, OCI_MANIFEST, m);
    let subject_desc = json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": bytes.len()});
    reg.set_listing(&subject, vec![desc(&b, &b_bytes), subject_desc.clone()]);
    reg.set_listing(&b, vec![desc(&c, &c_bytes), desc(&b, &b_bytes)]);
    reg.set_listing(&c, vec![desc(&b, &b_bytes), subject_desc]);
    let root = env.path("store");
    let t0 = Instant::now();
    let out = env.pull(
        &root,
        &[&reg.reference("cycle/app:1"), "--referrers"],
        &subject,
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(out["referrers"], 2, "B and C, once each: {out}");
    let recursive = env.ok(
        &root,
        &[
            "image",
            "referrers",
            &reg.reference("cycle/app:1"),
            "--recursive",
        ],
    );
    assert_eq!(digests(&recursive), set(&[&b, &c]), "{recursive}");
    env.fsck_clean(&root);

    // The tag schema on distribution.
    let real = Reg::plain();
    let (image, reference) = pushed(&env, &real, "loop/app:1", AMD64, &[8 << 10], 44);
    let other = env.path("other");
    env.pull(&other, &[&reference], &image.root.digest);
    let f = file(&env, "r.json", b"{}");
    let made = env.ok(
        &other,
        &[
            "artifact",
            "create",
            "lab/r:1",
            "--artifact-type",
            SBOM,
            "--subject",
            &reference,
            p(&f),
        ],
    );
    let r = made["digest"].as_str().unwrap().to_owned();
    env.push(&other, &["lab/r:1", &real.reference("loop/app:r")], &r);
    let r_size = env.ok(&other, &["content", "info", &r])["size"].clone();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": image.root.digest, "size": image.root.size},
            {"mediaType": OCI_MANIFEST, "digest": r, "size": r_size, "artifactType": SBOM},
        ],
    });
    let index = serde_json::to_vec(&index).unwrap();
    for of in [&image.root.digest, &r] {
        let tag = format!("sha256-{}", of.strip_prefix("sha256:").unwrap());
        let status = http_put(
            real.port,
            &format!("/v2/loop/app/manifests/{tag}"),
            OCI_INDEX,
            &index,
        );
        assert_eq!(status, 201, "PUT {tag}");
    }
    let third = env.path("third");
    let t0 = Instant::now();
    let out = env.pull(&third, &[&reference, "--referrers"], &image.root.digest);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(out["referrers"], 1, "the one referrer, once: {out}");
    let listed = env.ok(&third, &["image", "referrers", &reference, "--recursive"]);
    assert_eq!(digests(&listed), set(&[&r]), "{listed}");
    env.fsck_clean(&third);
}
