//! Interop with the real peers: umoci, skopeo and containerd (`ctr`), from Debian packages.
//!
//! These tests are `#[ignore]`d so that `cargo test` needs nothing but Rust; `.ci/run`
//! installs the tools and runs them with `cargo test --test it interop:: -- --ignored`. A missing
//! tool fails the test: it never skips silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::cmd;
use crate::private_containerd as containerd;
use cmd::ocistore;
use containerd::{Containerd, need};

const WHY: &str = "interop: needs skopeo, umoci and containerd (run by .ci/run)";

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar")
}

fn sh(program: &str, args: &[&str]) -> Output {
    need(program);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256_of(bytes: &[u8]) -> String {
    ocistore::Algorithm::Sha256.digest(bytes).to_string()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The digest of the first image an import reports.
fn imported_digest(v: &Value) -> String {
    v["images"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
#[ignore = "interop: needs skopeo, umoci and containerd (run by .ci/run)"]
fn umoci_layout_round_trip() {
    let _ = WHY;
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let root = tmp.path().join("store");
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, "hello from umoci\n").unwrap();
    sh("umoci", &["init", "--layout", p(&layout)]);
    sh("umoci", &["new", "--image", &format!("{}:v1", p(&layout))]);
    sh(
        "umoci",
        &[
            "insert",
            "--image",
            &format!("{}:v1", p(&layout)),
            p(&file),
            "/hello.txt",
        ],
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let umoci_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();

    let out = ocistore(
        &root,
        &[
            "--json",
            "image",
            "import",
            p(&layout),
            "--name",
            "example.com/umoci/hello",
        ],
    )
    .json();
    assert_eq!(
        imported_digest(&out),
        umoci_digest,
        "same manifest digest as umoci"
    );
    assert_eq!(out["images"][0]["name"], "example.com/umoci/hello:v1");

    // Our export, read back by umoci: listed and unpacked.
    let export = tmp.path().join("export");
    ocistore(
        &root,
        &[
            "--json",
            "image",
            "export",
            "example.com/umoci/hello:v1",
            "-o",
            p(&export),
            "--format",
            "oci-dir",
        ],
    )
    .output();
    let ls = sh("umoci", &["ls", "--layout", p(&export)]);
    assert!(
        String::from_utf8_lossy(&ls.stdout)
            .lines()
            .any(|l| l.trim() == "v1"),
        "umoci ls lists the tag"
    );
    let bundle = tmp.path().join("bundle");
    sh(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:v1", p(&export)),
            p(&bundle),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(),
        "hello from umoci\n"
    );
}

#[test]
#[ignore = "interop: needs skopeo, umoci and containerd (run by .ci/run)"]
fn skopeo_multiplatform_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    // skopeo reads the sample (our export) and writes its own layout and archive from it.
    let dir = tmp.path().join("skopeo-dir");
    let archive = tmp.path().join("skopeo.tar");
    sh(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--all",
            &format!("oci-archive:{}", p(&sample())),
            &format!("oci:{}:1.0", p(&dir)),
        ],
    );
    sh(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--all",
            &format!("oci:{}:1.0", p(&dir)),
            &format!("oci-archive:{}:1.0", p(&archive)),
        ],
    );
    let raw = sh(
        "skopeo",
        &["inspect", "--raw", &format!("oci-archive:{}", p(&archive))],
    )
    .stdout;
    let skopeo_digest = sha256_of(&raw);
    let raw_json: Value = serde_json::from_slice(&raw).unwrap();
    assert!(
        raw_json["manifests"]
            .as_array()
            .is_some_and(|m| m.len() >= 2),
        "multi-platform index"
    );

    let out = ocistore(
        &root,
        &[
            "--json",
            "image",
            "import",
            p(&archive),
            "--name",
            "docker.io/library/hello",
        ],
    )
    .json();
    assert_eq!(
        imported_digest(&out),
        skopeo_digest,
        "same index digest as skopeo reports"
    );
    let out = ocistore(
        &root,
        &[
            "--json",
            "image",
            "import",
            p(&dir),
            "--name",
            "docker.io/library/hello",
        ],
    )
    .json();
    assert_eq!(
        imported_digest(&out),
        skopeo_digest,
        "the layout directory too"
    );
    for platform in ["linux/amd64", "linux/arm64"] {
        let c = ocistore(
            &root,
            &[
                "--json",
                "image",
                "check",
                "hello:1.0",
                "--platform",
                platform,
            ],
        )
        .json();
        assert_eq!(c["complete"], true, "{platform}: {c}");
    }

    // Our export, read back by skopeo: the index bytes are identical and copy works.
    let export = tmp.path().join("ours.tar");
    ocistore(
        &root,
        &["--json", "image", "export", "hello:1.0", "-o", p(&export)],
    )
    .output();
    let raw = sh(
        "skopeo",
        &["inspect", "--raw", &format!("oci-archive:{}", p(&export))],
    )
    .stdout;
    assert_eq!(sha256_of(&raw), skopeo_digest);
    let back = tmp.path().join("back");
    sh(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--all",
            &format!("oci-archive:{}", p(&export)),
            &format!("oci:{}:copy", p(&back)),
        ],
    );
    let cfg = sh(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--override-arch",
            "arm64",
            &format!("oci:{}:copy", p(&back)),
        ],
    )
    .stdout;
    let cfg: Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg["architecture"], "arm64");
}

#[test]
#[ignore = "interop: needs skopeo, umoci and containerd (run by .ci/run)"]
fn containerd_imports_ours_and_we_import_its_export() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let out = ocistore(&root, &["--json", "image", "import", p(&sample())]).json();
    let digest = imported_digest(&out);
    let export = tmp.path().join("ours.tar");
    ocistore(
        &root,
        &["--json", "image", "export", "hello:1.0", "-o", p(&export)],
    )
    .output();

    let ctd = Containerd::start();
    ctd.ctr(&[
        "images",
        "import",
        "--all-platforms",
        "--no-unpack",
        p(&export),
    ]);
    let ls = ctd.ctr_text(&["images", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.starts_with("docker.io/library/hello:1.0"))
        .unwrap_or_else(|| panic!("ctr images ls lacks our image:\n{ls}"));
    assert!(
        line.contains(&digest),
        "containerd holds the same digest: {line}"
    );

    let theirs = tmp.path().join("ctr-export.tar");
    ctd.ctr(&[
        "images",
        "export",
        "--all-platforms",
        p(&theirs),
        "docker.io/library/hello:1.0",
    ]);
    let root2 = tmp.path().join("store2");
    let out = ocistore(&root2, &["--json", "image", "import", p(&theirs)]).json();
    assert_eq!(
        imported_digest(&out),
        digest,
        "ctr's export imports with the same digest"
    );
    assert_eq!(out["images"][0]["name"], "docker.io/library/hello:1.0");
    let c = ocistore(
        &root2,
        &[
            "--json",
            "image",
            "check",
            "hello:1.0",
            "--platform",
            "linux/amd64",
        ],
    )
    .json();
    assert_eq!(c["complete"], true, "{c}");
}
