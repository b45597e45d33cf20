//! fsck, repair, read-only roots and disk usage, through the CLI as a user meets them.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use serde_json::Value;

fn run(root: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocistore"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(b) = stdin {
        child.stdin.take().unwrap().write_all(b).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn json(root: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(root, &all, None);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

fn put(root: &Path, bytes: &[u8]) -> String {
    let out = run(
        root,
        &["content", "put", "-", "--label", "k=v"],
        Some(bytes),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Every path under `dir` with its (mtime, inode, length).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            out.insert(e.path(), (m.modified().unwrap(), m.ino(), m.len()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn store_with_content(tmp: &Path) -> (PathBuf, Vec<String>) {
    let root = tmp.join("store");
    let digests = (0..5)
        .map(|i| {
            put(
                &root,
                format!("blob number {i}").repeat(100 * (i + 1)).as_bytes(),
            )
        })
        .collect();
    (root, digests)
}

#[test]
fn fsck_on_a_clean_store_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = store_with_content(tmp.path());
    let before = snapshot(&root);
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["blobs_checked"], 5);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(snapshot(&root), before, "no file, mtime or inode changed");
}

#[test]
fn flipped_byte_is_found_quarantined_and_refetched() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    let victim = &digests[2];
    let hex = victim.strip_prefix("sha256:").unwrap();
    let path = root.join("blobs/sha256").join(&hex[..2]).join(hex);
    let mut bytes = std::fs::read(&path).unwrap();
    let original = bytes.clone();
    bytes[10] ^= 0x40;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    // A verifying read notices; fsck reports the digest and path and exits 1.
    let store = ocistore::OpenOptions::new()
        .read_only(true)
        .open(&root)
        .unwrap();
    let err =
        ocistore::helpers::read_blob_verified(&store, &ocistore::Digest::parse(victim).unwrap())
            .unwrap_err();
    assert_eq!(err.kind(), ocistore::ErrorKind::Corrupted);
    drop(store);
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!(code, 1);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["kind"], "corrupt");
    assert_eq!(problems[0]["id"], victim.as_str());
    assert_eq!(problems[0]["path"], path.to_str().unwrap());

    let (code, v) = json(&root, &["fsck", "--repair"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        v["problems"][0]["repaired"]
            .as_str()
            .unwrap()
            .contains("quarantine")
    );
    let (code, _) = json(&root, &["content", "info", victim]);
    assert_eq!(code, 1, "the corrupt blob is no longer visible");
    // Putting the content again restores it; fsck is clean.
    assert_eq!(put(&root, &original), *victim);
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!((code, v["problems"].clone()), (0, serde_json::json!([])));
}

#[test]
fn debris_and_missing_files_are_reported_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    let hex = digests[0].strip_prefix("sha256:").unwrap();
    std::fs::remove_file(root.join("blobs/sha256").join(&hex[..2]).join(hex)).unwrap();
    let stray = ocistore::Algorithm::Sha256.digest(b"stray");
    let sp = root.join("blobs/sha256").join(&stray.hex()[..2]);
    std::fs::create_dir_all(&sp).unwrap();
    std::fs::write(sp.join(stray.hex()), b"stray").unwrap();
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!(code, 1);
    let kinds: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["missing", "debris"]);
    let (code, _) = json(&root, &["fsck", "--repair"]);
    assert_eq!(code, 0);
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!((code, v["problems"].clone()), (0, serde_json::json!([])));
}

fn chmod_recursive(dir: &Path, writable: bool) {
    for (path, _) in snapshot(dir) {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let mode = m.permissions().mode();
        let mode = if writable {
            mode | 0o200
        } else {
            mode & !0o222
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    let mode = if writable {
        mode | 0o200
    } else {
        mode & !0o222
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn read_only_root_reads_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    chmod_recursive(&root, false);
    let before = snapshot(&root);
    let ls = run(&root, &["content", "ls", "-q"], None);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 5);
    let (code, info) = json(&root, &["content", "info", &digests[1]]);
    assert_eq!((code, info["labels"]["k"].as_str()), (0, Some("v")));
    let cat = run(&root, &["content", "cat", &digests[1]], None);
    assert!(cat.status.success());
    assert_eq!(run(&root, &["image", "ls"], None).status.code(), Some(0));
    assert_eq!(run(&root, &["fsck"], None).status.code(), Some(0));
    assert_eq!(run(&root, &["du"], None).status.code(), Some(0));
    let put = run(&root, &["content", "put", "-"], Some(b"new"));
    assert_eq!(put.status.code(), Some(1));
    let err = String::from_utf8_lossy(&put.stderr);
    assert!(err.contains("read-only"), "a clear error: {err}");
    assert_eq!(snapshot(&root), before, "nothing created or modified");
    chmod_recursive(&root, true);
}

#[test]
fn du_agrees_with_the_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = store_with_content(tmp.path());
    let mut w = ocistore::Ingester::writer(
        &ocistore::Store::open(&root).unwrap(),
        "partial",
        None,
        None,
    )
    .unwrap();
    std::io::Write::write_all(&mut w, &[7u8; 100_000]).unwrap();
    w.close().unwrap();
    // A few MiB, so that 1 % is more than a filesystem block or two of delayed allocation.
    put(&root, &vec![42u8; 3 << 20]);
    // Let delayed allocation settle, so that both measures see the same blocks.
    unsafe { libc::sync() };
    let (code, v) = json(&root, &["du"]);
    unsafe { libc::sync() };
    assert_eq!(code, 0);
    assert_eq!(v["blobs"]["count"], 6);
    assert!(v["ingests"]["apparent_bytes"].as_u64().unwrap() >= 100_000);
    assert!(v["metadata"]["apparent_bytes"].as_u64().unwrap() > 0);
    assert!(v["metadata_free_bytes"].is_u64());
    let du = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(&root)
        .output()
        .unwrap();
    let fs_total: f64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ours = v["total"]["allocated_bytes"].as_f64().unwrap();
    assert!(
        (ours - fs_total).abs() <= fs_total * 0.01,
        "ours {ours} vs du {fs_total}"
    );
}

#[test]
fn rebuild_after_losing_the_metadata_restores_every_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    let (code, imported) = json(&root, &["image", "import", sample.to_str().unwrap()]);
    assert_eq!(code, 0);
    let index = imported["images"][0]["digest"].as_str().unwrap().to_owned();
    let (_, before) = json(&root, &["content", "ls"]);
    let before: Vec<String> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_owned())
        .collect();
    std::fs::remove_file(root.join("meta.redb")).unwrap();
    let (code, out) = json(&root, &["fsck", "--rebuild"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out["blobs_recovered"].as_u64().unwrap() as usize,
        before.len()
    );
    assert!(
        out["lost"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("label")),
        "{out}"
    );
    let (_, after) = json(&root, &["content", "ls"]);
    let after: Vec<String> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(after, before, "every blob's record is back");
    for d in &digests {
        assert_eq!(json(&root, &["content", "info", d]).0, 0);
    }
    // References are rebuilt from the manifests' bytes.
    let (_, refs) = json(&root, &["content", "refs", &index]);
    assert_eq!(
        refs["refs"].as_array().unwrap().len(),
        2,
        "the sample index names two manifests"
    );
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!((code, v["problems"].clone()), (0, serde_json::json!([])));
}

#[test]
fn rebuild_with_readable_metadata_keeps_labels_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    assert_eq!(
        json(&root, &["image", "import", sample.to_str().unwrap()]).0,
        0
    );
    let (code, out) = json(&root, &["fsck", "--rebuild"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["salvaged"], true);
    assert_eq!(out["names_recovered"], 1);
    let (_, info) = json(&root, &["content", "info", &digests[0]]);
    assert_eq!(info["labels"]["k"], "v");
    assert_eq!(
        json(
            &root,
            &["image", "check", "hello:1.0", "--platform", "linux/amd64"]
        )
        .0,
        0
    );
}

/// Starts `content put` of 3 MiB from a pipe and kills it (SIGKILL) once its ingest is
/// recorded: the store was open for writing, which leaves `meta.redb` needing recovery.
fn kill_a_writer_midway(root: &Path) {
    use std::io::Write;
    let mut put = Command::new(env!("CARGO_BIN_EXE_ocistore"))
        .arg("--root")
        .arg(root)
        .args(["content", "put"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = put.stdin.take().unwrap();
    // More than one buffer, so that the ingest is recorded: the writer is open and has
    // committed.
    stdin.write_all(&vec![7u8; 3 << 20]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, v) = json(root, &["ingest", "ls"]);
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the put never recorded its ingest"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    put.kill().unwrap();
    put.wait().unwrap();
    drop(stdin);
}

/// A writer killed while it has the store open leaves `meta.redb` needing recovery, which only
/// an open that may write performs. A read-only fsck then says so within a moment (no writer
/// is live to recover it), naming the command that does; `fsck --repair` recovers it, and the
/// next read-only fsck is clean. (It used to fail with redb's bare "Database repair aborted".)
#[test]
fn read_only_fsck_after_a_killed_writer_says_how_to_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = store_with_content(tmp.path());
    kill_a_writer_midway(&root);

    let started = std::time::Instant::now();
    let out = run(&root, &["fsck"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs recovery") && err.contains("fsck --repair"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let (code, v) = json(&root, &["fsck", "--repair"]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!((code, v["problems"].clone()), (0, serde_json::json!([])));
}

/// A listing opens read-only when it can; after a writer was killed it cannot, and opens
/// read-write instead (which recovers the file): it lists everything, and a read-only fsck is
/// then clean.
#[test]
fn a_listing_after_a_killed_writer_recovers_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    kill_a_writer_midway(&root);
    let out = run(&root, &["content", "ls", "-q"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut want = digests.clone();
    want.sort();
    assert_eq!(listed, want);
    let (code, v) = json(&root, &["fsck"]);
    assert_eq!((code, v["problems"].clone()), (0, serde_json::json!([])));
}

/// `du` counts a file with several names once, as `du -s` does: a blob whose ingest still
/// names it (a commit in flight, a pull's sealed download) is not counted twice. Its total
/// agrees with GNU du's, apparent and allocated.
#[test]
fn du_counts_a_blob_with_a_second_name_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    let (_, before) = json(&root, &["du"]);
    let hex = digests[4].strip_prefix("sha256:").unwrap();
    std::fs::hard_link(
        root.join("blobs/sha256").join(&hex[..2]).join(hex),
        root.join("ingest").join("in-flight.data"),
    )
    .unwrap();
    let (code, after) = json(&root, &["du"]);
    assert_eq!(code, 0, "{after}");
    for part in ["blobs", "ingests", "total"] {
        assert_eq!(after[part], before[part], "{part}: {before} then {after}");
    }
    let gnu = |flag: &str| -> u64 {
        let out = Command::new("du")
            .args(["-s", flag])
            .arg(&root)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(after["total"]["apparent_bytes"], gnu("-b"), "{after}");
    assert_eq!(after["total"]["allocated_bytes"], gnu("-B1"), "{after}");
}

/// A read-only open (fsck) of a store another process is creating: `meta.redb` exists, its
/// schema is not yet committed. It said "schema version 0 and needs migrating", a read-only
/// fsck beside the first commands of a new store failing now and then; it now waits while a
/// writer holds the store (as the layout lock tells), and with none says what finishes it.
#[test]
fn a_read_only_open_waits_for_a_store_being_created() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    // Where a creating process is between creating meta.redb and committing its schema.
    let creator = std::fs::File::create(root.join("layout-v3.lock")).unwrap();
    creator.lock_shared().unwrap();
    let mut builder = redb::Builder::new();
    builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    drop(builder.create(root.join("meta.redb")).unwrap());

    let reader_root = root.clone();
    let reader = std::thread::spawn(move || {
        let started = Instant::now();
        let opened = ocistore::OpenOptions::new()
            .read_only(true)
            .wait(Duration::from_secs(10))
            .open(&reader_root)
            .map(|s| s.fsck(&Default::default()).unwrap().problems.len());
        (opened, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!reader.is_finished(), "the read-only open gave up at once");
    // The creator commits its schema (as another process: redb shares state between the
    // handles of one process).
    assert!(run(&root, &["image", "ls"], None).status.success());
    drop(creator);
    let (opened, took) = reader.join().unwrap();
    assert_eq!(opened.unwrap(), 0);
    assert!(took >= Duration::from_millis(300));

    // No writer: a store left half created is refused at once, saying what finishes it.
    let half = tmp.path().join("half");
    std::fs::create_dir_all(&half).unwrap();
    let mut builder = redb::Builder::new();
    builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    drop(builder.create(half.join("meta.redb")).unwrap());
    let (code, out) = (
        run(&half, &["fsck"], None).status.code(),
        run(&half, &["fsck"], None),
    );
    assert_eq!(code, Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not yet created") && err.contains("any command that writes"),
        "{err}"
    );
    let (code, _) = json(&half, &["content", "ls"]);
    assert_eq!(code, 0, "a listing finishes the store's creation");
    assert_eq!(run(&half, &["fsck"], None).status.code(), Some(0));
}
