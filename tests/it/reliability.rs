//! fsck, repair, read-only roots and disk usage, through the CLI as a user meets them.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::cmd;
use cmd::ocistore;

fn put(root: &Path, bytes: &[u8]) -> String {
    ocistore(root, &["content", "put", "-", "--label", "k=v"])
        .stdin(bytes)
        .stdout()
        .trim()
        .to_owned()
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
    let v = ocistore(&root, &["--json", "fsck"]).json();
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
    let v = ocistore(&root, &["--json", "fsck"]).code(1).json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["kind"], "corrupt");
    assert_eq!(problems[0]["id"], victim.as_str());
    assert_eq!(problems[0]["path"], path.to_str().unwrap());

    let v = ocistore(&root, &["--json", "fsck", "--repair"]).json();
    assert!(
        v["problems"][0]["repaired"]
            .as_str()
            .unwrap()
            .contains("quarantine")
    );
    // The corrupt blob is no longer visible.
    ocistore(&root, &["--json", "content", "info", victim])
        .code(1)
        .output();
    // Putting the content again restores it; fsck is clean.
    assert_eq!(put(&root, &original), *victim);
    let v = ocistore(&root, &["--json", "fsck"]).json();
    assert_eq!(v["problems"], serde_json::json!([]));
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
    let v = ocistore(&root, &["--json", "fsck"]).code(1).json();
    let kinds: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["missing", "debris"]);
    ocistore(&root, &["--json", "fsck", "--repair"]).output();
    let v = ocistore(&root, &["--json", "fsck"]).json();
    assert_eq!(v["problems"], serde_json::json!([]));
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
    let ls = ocistore(&root, &["content", "ls", "-q"]).stdout();
    assert_eq!(ls.lines().count(), 5);
    let info = ocistore(&root, &["--json", "content", "info", &digests[1]]).json();
    assert_eq!(info["labels"]["k"].as_str(), Some("v"));
    ocistore(&root, &["content", "cat", &digests[1]]).output();
    ocistore(&root, &["image", "ls"]).output();
    ocistore(&root, &["fsck"]).output();
    ocistore(&root, &["du"]).output();
    let put = ocistore(&root, &["content", "put", "-"])
        .stdin(b"new")
        .code(1)
        .output();
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
    let v = ocistore(&root, &["--json", "du"]).json();
    unsafe { libc::sync() };
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
    let imported = ocistore(
        &root,
        &["--json", "image", "import", sample.to_str().unwrap()],
    )
    .json();
    let index = imported["images"][0]["digest"].as_str().unwrap().to_owned();
    let before = ocistore(&root, &["--json", "content", "ls"]).json();
    let before: Vec<String> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_owned())
        .collect();
    std::fs::remove_file(root.join("meta.redb")).unwrap();
    let out = ocistore(&root, &["--json", "fsck", "--rebuild"]).json();
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
    let after = ocistore(&root, &["--json", "content", "ls"]).json();
    let after: Vec<String> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(after, before, "every blob's record is back");
    for d in &digests {
        ocistore(&root, &["--json", "content", "info", d]).output();
    }
    // References are rebuilt from the manifests' bytes.
    let refs = ocistore(&root, &["--json", "content", "refs", &index]).json();
    assert_eq!(
        refs["refs"].as_array().unwrap().len(),
        2,
        "the sample index names two manifests"
    );
    let v = ocistore(&root, &["--json", "fsck"]).json();
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn rebuild_with_readable_metadata_keeps_labels_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    ocistore(
        &root,
        &["--json", "image", "import", sample.to_str().unwrap()],
    )
    .output();
    let out = ocistore(&root, &["--json", "fsck", "--rebuild"]).json();
    assert_eq!(out["salvaged"], true);
    assert_eq!(out["names_recovered"], 1);
    let info = ocistore(&root, &["--json", "content", "info", &digests[0]]).json();
    assert_eq!(info["labels"]["k"], "v");
    ocistore(
        &root,
        &[
            "--json",
            "image",
            "check",
            "hello:1.0",
            "--platform",
            "linux/amd64",
        ],
    )
    .output();
}

/// Starts `content put` of 3 MiB from a pipe and kills it (SIGKILL) once its ingest is
/// recorded: the store was open for writing, which leaves `meta.redb` needing recovery.
fn kill_a_writer_midway(root: &Path) {
    use std::io::Write;
    let mut put = ocistore(root, &["content", "put"]).spawn();
    let mut stdin = put.stdin.take().unwrap();
    // More than one buffer, so that the ingest is recorded: the writer is open and has
    // committed.
    stdin.write_all(&vec![7u8; 3 << 20]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = ocistore(root, &["--json", "ingest", "ls"]).raw_output();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
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
    let out = ocistore(&root, &["fsck"]).raw_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs recovery") && err.contains("fsck --repair"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    ocistore(&root, &["--json", "fsck", "--repair"]).output();
    let v = ocistore(&root, &["--json", "fsck"]).json();
    assert_eq!(v["problems"], serde_json::json!([]));
}

/// A listing opens read-only when it can; after a writer was killed it cannot, and opens
/// read-write instead (which recovers the file): it lists everything, and a read-only fsck is
/// then clean.
#[test]
fn a_listing_after_a_killed_writer_recovers_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    kill_a_writer_midway(&root);
    let out = ocistore(&root, &["content", "ls", "-q"]).stdout();
    let listed: Vec<String> = out.lines().map(str::to_owned).collect();
    let mut want = digests.clone();
    want.sort();
    assert_eq!(listed, want);
    let v = ocistore(&root, &["--json", "fsck"]).json();
    assert_eq!(v["problems"], serde_json::json!([]));
}

/// `du` counts a file with several names once, as `du -s` does: a blob whose ingest still
/// names it (a commit in flight, a pull's sealed download) is not counted twice. Its total
/// agrees with GNU du's, apparent and allocated.
#[test]
fn du_counts_a_blob_with_a_second_name_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, digests) = store_with_content(tmp.path());
    let before = ocistore(&root, &["--json", "du"]).json();
    let hex = digests[4].strip_prefix("sha256:").unwrap();
    std::fs::hard_link(
        root.join("blobs/sha256").join(&hex[..2]).join(hex),
        root.join("ingest").join("in-flight.data"),
    )
    .unwrap();
    let after = ocistore(&root, &["--json", "du"]).json();
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
    ocistore(&root, &["image", "ls"]).output();
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
    ocistore(&half, &["fsck"]).code(1).output();
    let out = ocistore(&half, &["fsck"]).raw_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not yet created") && err.contains("any command that writes"),
        "{err}"
    );
    // A listing finishes the store's creation.
    ocistore(&half, &["--json", "content", "ls"]).output();
    ocistore(&half, &["fsck"]).output();
}
