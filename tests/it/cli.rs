//! The `ocistore` command line on a fresh root: content and ingest commands, exit codes,
//! JSON fields, an interrupted pipe resumed, and memory held flat on a 1 GiB put.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd;
use cmd::ocistore;

fn ls_digests(root: &Path, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["content", "ls", "-q"];
    args.extend_from_slice(filters);
    ocistore(root, &args)
        .stdout()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn put_info_ls_label_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let file = tmp.path().join("a.txt");
    std::fs::write(&file, b"alpha").unwrap();

    let put = ocistore(
        &root,
        &[
            "--json",
            "content",
            "put",
            file.to_str().unwrap(),
            "--label",
            "team=build",
            "--label",
            "com.example/k=v",
        ],
    )
    .json();
    assert_eq!(put["created"], true);
    assert_eq!(put["size"], 5);
    let a = put["digest"].as_str().unwrap().to_owned();
    let again = ocistore(&root, &["--json", "content", "put", file.to_str().unwrap()]).json();
    assert_eq!(
        (again["digest"].as_str().unwrap(), &again["created"]),
        (a.as_str(), &Value::Bool(false))
    );

    let out = ocistore(
        &root,
        &["--json", "content", "put", "-", "--label", "team=test"],
    )
    .stdin(b"bravo!")
    .json();
    let b = out["digest"].as_str().unwrap().to_owned();

    let info = ocistore(&root, &["--json", "content", "info", &a]).json();
    for field in ["digest", "size", "created_at", "updated_at", "labels"] {
        assert!(info.get(field).is_some(), "info lacks {field}");
    }
    assert_eq!(info["labels"]["team"], "build");
    assert!(info["created_at"].as_str().unwrap().ends_with('Z'));

    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(ls_digests(&root, &[]), both);
    assert_eq!(
        ls_digests(&root, &["labels.team==build"]),
        std::slice::from_ref(&a)
    );
    assert_eq!(
        ls_digests(&root, &["labels.team!=build"]),
        std::slice::from_ref(&b)
    );
    assert_eq!(
        ls_digests(&root, &["labels.team~=^te"]),
        std::slice::from_ref(&b)
    );
    assert_eq!(
        ls_digests(&root, &[r#"labels."com.example/k""#]),
        std::slice::from_ref(&a)
    );
    assert_eq!(ls_digests(&root, &["size==6"]), std::slice::from_ref(&b));
    assert_eq!(ls_digests(&root, &["labels.team==build", "size==6"]), both);
    let table = ocistore(&root, &["content", "ls"]).stdout();
    assert!(table.starts_with("DIGEST"), "{table}");
    assert!(table.contains("team=build"));
    let listed = ocistore(&root, &["--json", "content", "ls"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // A bad filter is a usage error.
    let bad = ocistore(&root, &["content", "ls", "labels.team=="])
        .code(2)
        .output();
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("ocistore: "));
    ocistore(&root, &["content", "info", "sha256:XYZ"])
        .code(2)
        .output();
    let missing = format!("sha256:{}", "0".repeat(64));
    ocistore(&root, &["content", "info", &missing])
        .code(1)
        .output();
    ocistore(&root, &["content", "label", &a, "novalue"])
        .code(2)
        .output();
    ocistore(&root, &["content", "frobnicate"]).code(2).output();

    let labelled = ocistore(
        &root,
        &["--json", "content", "label", &a, "team=", "tier=1"],
    )
    .json();
    assert_eq!(
        labelled["labels"],
        serde_json::json!({"com.example/k": "v", "tier": "1"})
    );
    assert_eq!(
        ls_digests(&root, &["labels.tier==1"]),
        std::slice::from_ref(&a)
    );

    assert_eq!(
        ocistore(&root, &["content", "cat", &b]).stdout().as_bytes(),
        b"bravo!"
    );

    // rm: the missing one is reported and makes the exit 1; the others still go.
    let out = ocistore(&root, &["content", "rm", &missing, &a])
        .code(1)
        .output();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert_eq!(ls_digests(&root, &[]), std::slice::from_ref(&b));

    // --expected mismatch: failed precondition, exit 1, the ingest remains.
    ocistore(
        &root,
        &["content", "put", "-", "--ref", "r1", "--expected", &a],
    )
    .stdin(b"not alpha")
    .code(1)
    .output();
    let ingests = ocistore(&root, &["--json", "ingest", "ls"]).json();
    assert_eq!(ingests[0]["ref"], "r1");
    for field in [
        "ref",
        "offset",
        "total",
        "expected",
        "started_at",
        "updated_at",
    ] {
        assert!(ingests[0].get(field).is_some(), "ingest ls lacks {field}");
    }
    assert!(
        ocistore(&root, &["ingest", "ls"])
            .stdout()
            .starts_with("REF")
    );
    ocistore(&root, &["ingest", "abort", "r1"]).output();
    assert_eq!(
        ocistore(&root, &["--json", "ingest", "ls"]).json(),
        serde_json::json!([])
    );
    ocistore(&root, &["ingest", "abort", "r1"]).code(1).output();
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_put(root: &Path, reference: &str) -> Child {
    ocistore(root, &["content", "put", "--ref", reference, "-"]).spawn()
}

#[test]
fn killed_put_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = spawn_put(&root, "R");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data[..5 << 20]).unwrap();
    stdin.flush().unwrap();
    wait_for("the ingest to reach the disk", || {
        let out = ocistore(&root, &["--json", "ingest", "ls", "ref==R"]).raw_output();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v[0]["offset"].as_u64().unwrap_or(0) >= 4 << 20
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(stdin);
    let listed = ocistore(&root, &["--json", "ingest", "ls"]).json();
    assert_eq!(listed[0]["ref"], "R");
    let offset = listed[0]["offset"].as_u64().unwrap();
    assert!((4 << 20..=5 << 20).contains(&offset), "offset {offset}");
    // The whole input again: the bytes already there are skipped, the digest is right, and
    // no stale lock blocks it.
    let v = ocistore(&root, &["--json", "content", "put", "--ref", "R", "-"])
        .stdin(&data)
        .json();
    let want = ocistore::Algorithm::Sha256.digest(&data).to_string();
    assert_eq!(v["digest"], want.as_str());
    assert_eq!(v["size"], data.len());
    assert_eq!(
        ocistore(&root, &["--json", "ingest", "ls"]).json(),
        serde_json::json!([])
    );
    let cat = ocistore(&root, &["content", "cat", &want]).output();
    assert!(cat.stdout == data, "cat gives back the bytes");
}

#[test]
fn read_commands_write_nothing_and_see_other_processes_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let first = ocistore(&root, &["content", "put", "-"])
        .stdin(b"first blob")
        .output();
    let d1 = String::from_utf8(first.stdout).unwrap().trim().to_owned();
    // Listing and inspecting leave meta.redb byte for byte as it was: they open read-only.
    let meta = root.join("meta.redb");
    let before = std::fs::read(&meta).unwrap();
    for args in [
        &["content", "ls"][..],
        &["content", "info", &d1],
        &["image", "ls"],
        &["ingest", "ls"],
        &["lease", "ls"],
    ] {
        ocistore(&root, args).output();
    }
    assert!(
        std::fs::read(&meta).unwrap() == before,
        "a read command wrote meta.redb"
    );
    // Beside a process that holds the store open read-write (an ingest in progress), reads
    // see what a third process commits.
    let mut holder = spawn_put(&root, "held");
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(&[7u8; 2 << 20]).unwrap();
    wait_for("the holder to write", || {
        let v = ocistore(&root, &["--json", "ingest", "ls"]).json();
        v[0]["offset"].as_u64().unwrap_or(0) > 0
    });
    let second = ocistore(&root, &["content", "put", "-"])
        .stdin(b"second blob")
        .output();
    let d2 = String::from_utf8(second.stdout).unwrap().trim().to_owned();
    let listed = ls_digests(&root, &[]);
    assert!(listed.contains(&d1) && listed.contains(&d2), "{listed:?}");
    assert_eq!(
        ocistore(&root, &["--json", "content", "info", &d2]).json()["size"],
        11
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    drop(stdin);
    // After the holder was killed, reads still work.
    assert_eq!(
        ocistore(&root, &["--json", "ingest", "ls"]).json()[0]["ref"],
        "held"
    );
}

#[test]
fn locked_ref_is_unavailable_across_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let mut holder = spawn_put(&root, "shared");
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(&[1u8; 2 << 20]).unwrap();
    wait_for("the holder to write", || {
        let v = ocistore(&root, &["--json", "ingest", "ls"]).json();
        v[0]["offset"].as_u64().unwrap_or(0) > 0
    });
    let store = ocistore::Store::open(&root).unwrap();
    let err = ocistore::Ingester::writer(&store, "shared", None, None)
        .err()
        .expect("locked");
    assert_eq!(err.kind(), ocistore::ErrorKind::Unavailable);
    assert!(err.to_string().contains("pid"), "names the holder: {err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let w = ocistore::Ingester::writer(&store, "shared", None, None).expect("released by death");
    assert!(w.status().unwrap().offset >= 1 << 20);
}

#[test]
fn one_gib_put_holds_memory_flat() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (out, err) = (tmp.path().join("out"), tmp.path().join("err"));
    let mut measured = ocistore(&root, &["content", "put", "-"]).measure(&out, &err, true);
    let mut stdin = measured.stdin.take().unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut hasher = ocistore::Algorithm::Sha256.hasher();
    for i in 0..1024u32 {
        chunk[..4].copy_from_slice(&i.to_le_bytes());
        hasher.update(&chunk);
        stdin.write_all(&chunk).unwrap();
    }
    drop(stdin);
    cmd::rss::succeeds_within(&measured, &err, 64 * 1024, "for a 1 GiB put from stdin");
    let d = hasher.finalize();
    let info = ocistore(&root, &["--json", "content", "info", &d.to_string()]).json();
    assert_eq!(info["size"], 1u64 << 30);
}

#[test]
fn a_listing_into_a_closed_pipe_ends_quietly_with_exit_0() {
    // 3,000 blobs: `content ls` writes ~280 KiB, more than a pipe holds, so `head -1` closes
    // the pipe while ocistore still writes.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = ocistore::Store::open(&root).unwrap();
    let mut batch = store.batch().unwrap();
    for i in 0..3000u32 {
        let bytes = format!("blob {i}");
        batch
            .stage(&mut bytes.as_bytes(), None, None, ocistore::Labels::new())
            .unwrap();
    }
    batch.commit().unwrap();
    drop(store);
    for args in [
        "content ls",
        "content ls -q",
        "--json content ls",
        "--json gc --dry-run",
    ] {
        let script = format!(
            "set -o pipefail; '{}' --root '{}' {args} | head -1",
            cmd::BIN,
            root.display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "ocistore {args} | head -1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            1,
            "{args}"
        );
    }
}

#[test]
fn tables_escape_control_characters() {
    // A label value with ESC, BEL, a newline, a backspace and C1's CSI: the table shows them
    // escaped on one line; JSON keeps the value exactly.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let blob = tmp.path().join("blob");
    std::fs::write(&blob, b"escape me").unwrap();
    let hostile = "a\u{1b}[31mred\u{7}\nforged line\u{8}\u{9b}";
    let put = ocistore(
        &root,
        &[
            "--json",
            "content",
            "put",
            blob.to_str().unwrap(),
            "--label",
            &format!("k={hostile}"),
        ],
    )
    .json();
    let digest = put["digest"].as_str().unwrap().to_owned();
    let table = ocistore(&root, &["content", "ls"]).stdout();
    assert_eq!(table.lines().count(), 2, "{table:?}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
    assert!(
        table.contains(r"\u{1b}[31mred\u{7}\u{a}forged line\u{8}\u{9b}"),
        "{table:?}"
    );
    let listed = ocistore(&root, &["--json", "content", "ls"]).json();
    assert_eq!(listed[0]["labels"]["k"], hostile);
    assert_eq!(listed[0]["digest"], digest.as_str());
}

#[test]
fn image_referrers_lists_signatures_and_sboms_with_their_types() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let put = |bytes: &[u8]| -> String {
        ocistore(&root, &["content", "put", "-"])
            .stdin(bytes)
            .stdout()
            .trim()
            .to_owned()
    };
    let config = put(b"{}");
    let image = put(
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
        )
        .as_bytes(),
    );
    let image_size = ocistore(&root, &["--json", "content", "info", &image]).json()["size"]
        .as_u64()
        .unwrap();
    let referrer = |artifact: &str, created: &str| {
        put(format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{artifact}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{config}","size":2}},"layers":[],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{image}","size":{image_size}}},"annotations":{{"org.opencontainers.image.created":"{created}"}}}}"#
        )
        .as_bytes())
    };
    let sig = referrer(
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "2026-12-01T00:00:00Z",
    );
    let sbom = referrer("application/spdx+json", "2026-12-02T00:00:00Z");
    ocistore(&root, &["image", "tag", &image, "lab/app:1"]).output();

    let all = ocistore(&root, &["--json", "image", "referrers", "lab/app:1"]).json();
    let mut found: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["digest"].as_str().unwrap())
        .collect();
    found.sort();
    let mut want = vec![sig.as_str(), sbom.as_str()];
    want.sort();
    assert_eq!(found, want, "{all}");
    let sboms = ocistore(
        &root,
        &[
            "--json",
            "image",
            "referrers",
            &image,
            "--artifact-type",
            "application/spdx+json",
        ],
    )
    .json();
    assert_eq!(sboms.as_array().unwrap().len(), 1, "{sboms}");
    assert_eq!(sboms[0]["digest"], sbom.as_str());
    assert_eq!(sboms[0]["artifact_type"], "application/spdx+json");
    assert_eq!(
        sboms[0]["annotations"]["org.opencontainers.image.created"],
        "2026-12-02T00:00:00Z"
    );
    let table = ocistore(&root, &["image", "referrers", "lab/app:1"]).stdout();
    assert!(table.starts_with("DIGEST"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&sig) && l.contains("cosign") && l.contains("2026-12-01")),
        "{table}"
    );
    // gc keeps both with their named image.
    ocistore(&root, &["gc"]).output();
    for d in [&sig, &sbom] {
        assert_eq!(
            ocistore(&root, &["--json", "content", "info", d]).json()["digest"],
            d.as_str()
        );
    }
}

#[test]
fn artifacts_from_files_come_back_byte_identical_and_refer_to_their_image() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    ocistore(&root, &["image", "import", sample.to_str().unwrap()]).output();
    let files = tmp.path().join("in");
    std::fs::create_dir_all(&files).unwrap();
    let sbom = files.join("sbom.spdx.json");
    std::fs::write(&sbom, br#"{"spdxVersion":"SPDX-2.3","name":"hello"}"#).unwrap();
    let notes = files.join("notes.bin");
    let noise: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&notes, &noise).unwrap();

    let made = ocistore(
        &root,
        &[
            "--json",
            "artifact",
            "create",
            "lab/hello-sbom:1",
            "--artifact-type",
            "application/spdx+json",
            "--subject",
            "hello:1.0",
            "--annotation",
            "org.opencontainers.image.created=2026-12-06T00:00:00Z",
            &format!("{}:application/spdx+json", sbom.display()),
            notes.to_str().unwrap(),
        ],
    )
    .json();
    let digest = made["digest"].as_str().unwrap().to_owned();
    let referrers = ocistore(&root, &["--json", "image", "referrers", "hello:1.0"]).json();
    assert_eq!(referrers[0]["digest"], digest.as_str(), "{referrers}");
    assert_eq!(referrers[0]["artifact_type"], "application/spdx+json");
    let doc = ocistore(&root, &["--json", "image", "inspect", "lab/hello-sbom:1"]).json();
    assert_eq!(
        doc["document"]["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(doc["document"]["config"]["size"], 2);
    assert_eq!(
        doc["document"]["layers"][0]["mediaType"],
        "application/spdx+json"
    );
    assert_eq!(
        doc["document"]["layers"][1]["mediaType"],
        "application/octet-stream"
    );

    // image ls --json names the artifact type (null for a plain image).
    let ls = ocistore(&root, &["--json", "image", "ls"]).json();
    let line = |name: &str| {
        ls.as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"].as_str().is_some_and(|n| n.contains(name)))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {ls}"))
    };
    assert_eq!(
        line("hello-sbom")["artifact_type"],
        "application/spdx+json",
        "{ls}"
    );
    assert_eq!(line("hello:1.0")["artifact_type"], Value::Null, "{ls}");

    let out = tmp.path().join("out");
    let got = ocistore(
        &root,
        &[
            "--json",
            "artifact",
            "get",
            &digest,
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .json();
    assert_eq!(got.as_array().unwrap().len(), 2, "{got}");
    assert_eq!(
        std::fs::read(out.join("sbom.spdx.json")).unwrap(),
        std::fs::read(&sbom).unwrap()
    );
    assert_eq!(std::fs::read(out.join("notes.bin")).unwrap(), noise);

    // A manifest whose titles try to leave the directory: refused before anything is written.
    let layer = |title: &str, d: &str, size: u64| {
        format!(
            r#"{{"mediaType":"application/octet-stream","digest":"{d}","size":{size},"annotations":{{"org.opencontainers.image.title":"{title}"}}}}"#
        )
    };
    let small = ocistore(&root, &["content", "put", sbom.to_str().unwrap()])
        .stdout()
        .trim()
        .to_owned();
    let small_size = std::fs::metadata(&sbom).unwrap().len();
    let config = doc["document"]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    for evil in ["../escaped", "/tmp/absolute", "a/../../escaped"] {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"x/y","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{config}","size":2}},"layers":[{},{}]}}"#,
            layer("fine.txt", &small, small_size),
            layer(evil, &small, small_size)
        );
        let put = ocistore(&root, &["content", "put", "-"])
            .stdin(manifest.as_bytes())
            .output();
        let evil_digest = String::from_utf8(put.stdout).unwrap().trim().to_owned();
        let dest = tmp.path().join("evil-out");
        let r = ocistore(
            &root,
            &[
                "artifact",
                "get",
                &evil_digest,
                "-o",
                dest.to_str().unwrap(),
            ],
        )
        .raw_output();
        assert_eq!(
            r.status.code(),
            Some(1),
            "{evil}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("nothing written"),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            !dest.exists(),
            "{evil}: nothing written, not even the fine file"
        );
        assert!(!tmp.path().join("escaped").exists() && !Path::new("/tmp/absolute").exists());
    }
}

#[test]
fn completions_and_the_manual_page_come_from_the_command_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    for shell in ["bash", "zsh", "fish"] {
        let script = ocistore(&root, &["completions", shell]).stdout();
        for command in ["artifact", "serve", "referrers", "prune"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    // The bash script parses.
    let path = tmp.path().join("ocistore.bash");
    std::fs::write(&path, ocistore(&root, &["completions", "bash"]).stdout()).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let man = ocistore(&root, &["man"]).stdout();
    assert!(
        man.contains(".TH ocistore 1"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("serve") && man.contains("artifact"));
    // Neither writes a store.
    assert!(!root.exists());
}

/// A layout listing several manifests without a name (none of them a referrer) imports
/// whole: each is kept by a name made from its digest, `localhost/untagged@<digest>`.
#[test]
fn untagged_manifests_import_under_names_made_from_their_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    ocistore(&a, &["image", "import", sample.to_str().unwrap()]).output();
    let layout = tmp.path().join("layout");
    ocistore(
        &a,
        &[
            "image",
            "export",
            "hello:1.0",
            "-o",
            layout.to_str().unwrap(),
            "--format",
            "oci-dir",
        ],
    )
    .stdout();
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let root = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let children = ocistore(&a, &["--json", "content", "refs", &root]).json();
    let child = children["refs"][0].as_str().unwrap().to_owned();
    let child_entry = ocistore(&a, &["--json", "content", "info", &child]).json();
    let entries = index["manifests"].as_array_mut().unwrap();
    entries[0].as_object_mut().unwrap().remove("annotations");
    entries.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": child,
        "size": child_entry["size"],
    }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let imported = ocistore(&b, &["--json", "image", "import", layout.to_str().unwrap()]).json();
    let mut names: Vec<&str> = imported["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want = vec![
        format!("localhost/untagged@{root}"),
        format!("localhost/untagged@{child}"),
    ];
    want.sort();
    assert_eq!(names, want, "{imported}");
    ocistore(&b, &["gc"]).output();
    assert_eq!(
        ocistore(&b, &["--json", "content", "info", &child]).json()["digest"],
        child.as_str()
    );
    let check = ocistore(&b, &["--json", "image", "ls"]).json();
    assert_eq!(check.as_array().unwrap().len(), 2, "{check}");
}

/// `image export --referrers` writes an image's referrers into the layout untagged (with their
/// artifactType), and an import of that layout keeps them with their image through a gc.
#[test]
fn export_referrers_lists_them_untagged_and_import_keeps_them_with_their_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    ocistore(&a, &["image", "import", sample.to_str().unwrap()]).output();
    let file = tmp.path().join("sig.bin");
    std::fs::write(&file, b"a signature").unwrap();
    let sig = ocistore(
        &a,
        &[
            "--json",
            "artifact",
            "create",
            "lab/sig:1",
            "--artifact-type",
            "application/vnd.example.sig",
            "--subject",
            "hello:1.0",
            file.to_str().unwrap(),
        ],
    )
    .json()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let layout = tmp.path().join("layout");
    let exported = ocistore(
        &a,
        &[
            "--json",
            "image",
            "export",
            "hello:1.0",
            "--referrers",
            "-o",
            layout.to_str().unwrap(),
            "--format",
            "oci-dir",
        ],
    )
    .json();
    assert_eq!(exported["referrers"], 1, "{exported}");
    // `export --referrers` lists the signature untagged, with its artifactType, as oras-go
    // writes referrers.
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    let entry = entries
        .iter()
        .find(|m| m["digest"] == sig.as_str())
        .unwrap();
    assert_eq!(
        entry["artifactType"], "application/vnd.example.sig",
        "{index}"
    );
    assert!(entry.get("annotations").is_none(), "untagged: {index}");

    let imported = ocistore(&b, &["--json", "image", "import", layout.to_str().unwrap()]).json();
    assert_eq!(
        imported["images"].as_array().unwrap().len(),
        1,
        "{imported}"
    );
    ocistore(&b, &["gc"]).output();
    let referrers = ocistore(&b, &["--json", "image", "referrers", "hello:1.0"]).json();
    assert_eq!(referrers[0]["digest"], sig.as_str(), "{referrers}");
    assert_eq!(
        ocistore(&b, &["--json", "content", "info", &sig]).json()["digest"],
        sig.as_str()
    );
}
