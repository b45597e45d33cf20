//! Maintenance commands run beside a live writer never lose an acknowledged import.
//!
//! The issue: `fsck --rebuild` moved `meta.redb` aside under a running import, which then
//! committed into metadata the store no longer used; `fsck --repair` deleted the files of
//! blobs an import had just recorded, judging them debris from a snapshot taken before the
//! import's commit, and left records without files. Now a rebuild must be alone (it refuses,
//! naming the holders, when the store stays open), repair decides every removal inside its
//! write transaction and leaves blob files that may be a commit in flight alone, and so does
//! `gc`.
//!
//! Here each maintenance command (`fsck`, `fsck --repair`, `fsck --rebuild`, `gc`,
//! `gc --dry-run`, and `image rm` followed by `gc`) runs as a second process while
//! `ocistore image import` writes a four-layer image into a fresh store, started after a
//! pseudo-random delay (seeded, so a failing trial reproduces). The import must succeed, and
//! then the image must be listed, complete for its platform, with every blob, and a read-only
//! `fsck` must find no problem (no record lacks its file). The same holds for fsck repairs run
//! in a loop through the library while a child process imports. An export racing `image rm`
//! and `gc` either produces an archive that imports cleanly elsewhere or fails with one line
//! and leaves no file behind. A rebuild of an idle store keeps names and labels; a rebuild
//! while this test process holds the store refuses, naming it, and leaves `meta.redb` alone.
//!
//! `OCISTORE_MAINT_TRIALS` (default 3) sets the trials per race, `OCISTORE_MAINT_MB`
//! (default 48) the image's size.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ocistore::oci::{
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER_TAR, MEDIA_TYPE_OCI_MANIFEST,
};
use ocistore::testsuite::sample;
use streams::{
    Stream, describe, fsck_output_clean, json_of, maintenance, name_not_found, never, one_line,
    owned, path, run_streams, succeeded, text,
};

use crate::cmd;
use crate::streams;
use cmd::ocistore;
use ocistore::{Algorithm, Store};
use serde_json::{Value, json};

/// What the archive's image is stored as: `--name lab/go` joined with the bare tag `1.0` that
/// its index annotates.
const IMAGE: &str = "docker.io/lab/go:1.0";
const PLATFORM: &str = "linux/amd64";
/// Each layer's share of the image, in percent.
const LAYER_SHARES: [u64; 4] = [50, 25, 15, 10];

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

fn trials() -> u64 {
    env_number("OCISTORE_MAINT_TRIALS", 3)
}

// ---------------------------------------------------------------- the image

/// The generated OCI archive, shared by every test of this run.
struct Archive {
    path: PathBuf,
    /// The config blob's digest (a blob to label).
    config: String,
    /// The largest layer's digest (a blob to corrupt).
    largest_layer: String,
    /// Blobs in the image: layers, config, manifest.
    blobs: usize,
}

/// The archive, generated once per run under cargo's scratch directory for tests (the same
/// bytes every time for the same size).
fn archive() -> &'static Archive {
    static ARCHIVE: OnceLock<Archive> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let mb = env_number("OCISTORE_MAINT_MB", 48).max(1);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("maintenance-{mb}MiB.oci.tar"));
        // Written aside and renamed: another run of this binary may be reading it.
        let partial = dir.join(format!(
            "maintenance-{mb}MiB.{}.partial",
            std::process::id()
        ));
        let archive = write_archive(&partial, mb << 20);
        fs::rename(&partial, &path).expect("put the archive in place");
        Archive { path, ..archive }
    })
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": Algorithm::Sha256.digest(bytes).to_string(),
        "size": bytes.len(),
    })
}

/// A tar holding one file of `len` pseudo-random bytes.
fn layer(n: usize, len: u64) -> Vec<u8> {
    let bytes = sample(len as usize, n as u64 + 1);
    let mut tar = tar::Builder::new(Vec::with_capacity(bytes.len() + 2048));
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, format!("data/layer-{n}.bin"), &bytes[..])
        .expect("build a layer");
    tar.into_inner().expect("finish a layer")
}

/// Writes an OCI layout archive of one linux/amd64 image of about `total` bytes at `path`:
/// four layers, a config naming their diff_ids, a manifest, and an index tagging it `1.0`.
fn write_archive(path: &Path, total: u64) -> Archive {
    let layers: Vec<Vec<u8>> = LAYER_SHARES
        .iter()
        .enumerate()
        .map(|(n, share)| layer(n, total * share / 100))
        .collect();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| Algorithm::Sha256.digest(l).to_string())
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": descriptor(MEDIA_TYPE_OCI_CONFIG, &config),
        "layers": layers
            .iter()
            .map(|l| descriptor(MEDIA_TYPE_OCI_LAYER_TAR, l))
            .collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut entry = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
    entry["platform"] = json!({"os": "linux", "architecture": "amd64"});
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "1.0"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [entry],
    }))
    .unwrap();

    let file = fs::File::create(path).expect("create the archive");
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |name: String, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        tar.append_data(&mut header, name, bytes)
            .expect("write the archive");
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    let blobs: Vec<&[u8]> = layers
        .iter()
        .map(Vec::as_slice)
        .chain([&config[..], &manifest[..]])
        .collect();
    for blob in &blobs {
        let hex = Algorithm::Sha256.digest(blob).hex().to_owned();
        add(format!("blobs/sha256/{hex}"), blob);
    }
    tar.into_inner()
        .expect("finish the archive")
        .into_inner()
        .expect("flush the archive");
    Archive {
        path: path.to_owned(),
        config: Algorithm::Sha256.digest(&config).to_string(),
        largest_layer: diff_ids[0].clone(),
        blobs: blobs.len(),
    }
}

// ---------------------------------------------------------------- the command line

/// Runs `args`: its stdout if it succeeds, else what it said (for the checks that collect
/// failures rather than stop at the first).
fn check_ok(root: &Path, args: &[&str]) -> Result<String, String> {
    let out = ocistore(root, args).raw_output();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("ocistore {args:?}: {}", describe(&out)))
    }
}

fn import_args(archive: &Path) -> Vec<&str> {
    let path = archive.to_str().expect("a UTF-8 path");
    vec!["image", "import", "--name", "lab/go", path]
}

/// A read-only fsck of `root` is clean: exit 0, no problems (no record lacks its file).
fn fsck_clean(root: &Path) -> Result<(), String> {
    fsck_output_clean(&ocistore(root, &["--json", "fsck"]).raw_output()).map(drop)
}

fn listed(root: &Path) -> Result<bool, String> {
    Ok(check_ok(root, &["image", "ls", "-q"])?
        .lines()
        .any(|l| l == IMAGE))
}

/// The image is listed, complete for its platform, every blob is there, and fsck is clean.
fn intact(root: &Path) -> Result<(), String> {
    if !listed(root)? {
        return Err(format!("{IMAGE} is not listed"));
    }
    check_ok(root, &["image", "check", IMAGE, "--platform", PLATFORM])?;
    let blobs = check_ok(root, &["content", "ls", "-q"])?.lines().count();
    if blobs != archive().blobs {
        return Err(format!(
            "{blobs} blobs listed, the image has {}",
            archive().blobs
        ));
    }
    fsck_clean(root)
}

/// A `--json gc [--dry-run]` run beside an import into a fresh store: it succeeded and took
/// (or would take) nothing, since everything there belongs to the import.
fn removed_nothing(out: &Output) -> Result<(), String> {
    let v = json_of(out)?;
    if out.status.success() && v["removed"].as_array().is_some_and(Vec::is_empty) {
        Ok(())
    } else {
        Err(format!("gc beside an import: {}", describe(out)))
    }
}

/// A `fsck --rebuild` that refused: exit 1, naming the process holding the store (`pid`),
/// when it could still be told.
fn refused_naming(out: &Output, pid: u32) -> Result<(), String> {
    let err = text(&out.stderr);
    let named = err.contains(&format!("pid {pid} ")) || err.contains("another process");
    if out.status.code() == Some(1) && err.contains("is open in") && named {
        Ok(())
    } else {
        Err(format!(
            "rebuild neither succeeded nor refused naming pid {pid}: {}",
            describe(out)
        ))
    }
}

fn broken_metadata(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root)
        .expect("read the store root")
        .map(|e| e.expect("read the store root").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("meta.redb.broken-"))
        })
        .collect()
}

// ---------------------------------------------------------------- races

/// What runs in the background while the maintenance commands run.
#[derive(Clone, Copy, PartialEq)]
enum Background {
    /// `image import` of the archive into a store that exists but is empty.
    Import,
    /// `image export` of the image, imported beforehand, to `<scratch>/out.tar`.
    Export,
}

/// One trial, for the judge.
struct Trial {
    root: PathBuf,
    scratch: PathBuf,
    /// How the background process ended, and its pid.
    background: Output,
    pid: u32,
    /// How each maintenance command ended, in order.
    steps: Vec<Output>,
}

impl Trial {
    fn acknowledged(&self) -> bool {
        self.background.status.success()
    }

    /// The background import succeeded (no maintenance command may make it fail).
    fn import_acknowledged(&self) -> Result<(), String> {
        if self.acknowledged() {
            Ok(())
        } else {
            Err(format!("the import failed: {}", describe(&self.background)))
        }
    }

    fn export_path(&self) -> PathBuf {
        self.scratch.join("out.tar")
    }
}

/// How long the background process takes here, measured once per run on a throwaway store.
/// The races spread their delays over it, so that some maintenance commands start near its
/// end, where an import links its files into `blobs/` and commits.
fn duration_of(background: Background) -> Duration {
    static TIMES: OnceLock<(Duration, Duration)> = OnceLock::new();
    let (import, export) = *TIMES.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let root = tmp.path().join("store");
        let start = Instant::now();
        ocistore(&root, &import_args(&archive().path)).output();
        let import = start.elapsed();
        let out = tmp.path().join("out.tar");
        let start = Instant::now();
        ocistore(
            &root,
            &["image", "export", IMAGE, "-o", out.to_str().unwrap()],
        )
        .output();
        (import, start.elapsed())
    });
    match background {
        Background::Import => import,
        Background::Export => export,
    }
}

/// How the maintenance commands of a race run.
#[derive(Clone, Copy, PartialEq)]
enum Repeat {
    /// Once, one after the other.
    Once,
    /// Over and over, back to back, until the background process has exited (at least once):
    /// whenever they start, some run covers the end of the import, where it links its files
    /// into `blobs/` and commits.
    UntilDone,
}

/// Runs `trials()` trials: each starts `background` on a fresh store, waits a pseudo-random
/// delay (from `seed`, up to 1.1 times the background's usual duration), runs `steps` in
/// order to completion as `repeat` says, waits for the background process, then asks `judge`.
/// Prints one summary line; fails naming every trial the judge rejected.
fn race(
    name: &str,
    seed: u64,
    background: Background,
    steps: &[&[&str]],
    repeat: Repeat,
    mut judge: impl FnMut(&Trial) -> Result<(), String>,
) {
    let archive = archive();
    let n = trials();
    let delays = sample(2 * n as usize, seed);
    let (mut acknowledged, mut raced, mut runs, mut refusals) = (0, 0, 0, 0);
    let mut violations = Vec::new();
    // The background's duration varies with the disk's mood: the delays follow the mean of
    // this race's trials so far.
    let (mut took, mut widest) = (Vec::<Duration>::new(), 0);
    for (i, delay) in delays.chunks(2).enumerate() {
        let usual = match took.len() {
            0 => duration_of(background),
            len => took.iter().sum::<Duration>() / len as u32,
        };
        let span = (usual.as_millis() as u64 * 11 / 10).max(20);
        widest = widest.max(span);
        let delay = u64::from(u16::from_le_bytes([delay[0], delay[1]])) * span / 0xffff;
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let root = tmp.path().join("store");
        let scratch = tmp.path().to_owned();
        let out_tar = path(&scratch.join("out.tar"));
        let args = match background {
            Background::Import => {
                ocistore(&root, &["image", "ls"]).output(); // creates the store
                import_args(&archive.path)
            }
            Background::Export => {
                ocistore(&root, &import_args(&archive.path)).output();
                vec!["image", "export", IMAGE, "-o", out_tar.as_str()]
            }
        };
        let start = Instant::now();
        let child = ocistore(&root, &args).spawn();
        let pid = child.id();
        let waiter = std::thread::spawn(move || {
            let out = child.wait_with_output().expect("wait for ocistore");
            (out, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(delay));
        let steps_start = Instant::now();
        let mut outputs = Vec::new();
        loop {
            outputs.extend(steps.iter().map(|s| ocistore(&root, s).raw_output()));
            if repeat == Repeat::Once || waiter.is_finished() {
                break;
            }
        }
        let (background, ended) = waiter.join().expect("the waiting thread");
        raced += usize::from(ended > steps_start);
        took.push(ended - start);
        runs += outputs.len();
        refusals += outputs
            .iter()
            .filter(|o| text(&o.stderr).contains("is open in"))
            .count();
        let trial = Trial {
            background,
            root,
            scratch,
            pid,
            steps: outputs,
        };
        acknowledged += usize::from(trial.acknowledged());
        if let Err(e) = judge(&trial) {
            violations.push(format!("trial {i} (after {delay} ms): {e}"));
        }
    }
    println!(
        "{name}: {n} trials ({raced} begun while the background ran, delays up to {widest} ms, \
         {runs} maintenance runs), {acknowledged} acknowledged, {} losses, {refusals} rebuild \
         refusals",
        violations.len()
    );
    assert!(violations.is_empty(), "{name}:\n{}", violations.join("\n"));
}

/// A race of one maintenance command, repeated until the import ends, against the import: the
/// import must succeed and stay intact, and `check` judges every run of the command.
fn beside_import(
    name: &str,
    seed: u64,
    command: &[&str],
    mut check: impl FnMut(&Output, &Trial) -> Result<(), String>,
) {
    race(
        name,
        seed,
        Background::Import,
        &[command],
        Repeat::UntilDone,
        |t| {
            t.import_acknowledged()?;
            intact(&t.root)?;
            t.steps.iter().try_for_each(|out| check(out, t))
        },
    );
}

#[test]
fn repair_beside_an_import() {
    beside_import(
        "fsck --repair",
        11,
        &["--json", "fsck", "--repair"],
        |out, _| fsck_output_clean(out).map(drop),
    );
}

#[test]
fn gc_beside_an_import() {
    beside_import("gc", 12, &["--json", "gc"], |out, _| removed_nothing(out));
}

#[test]
fn gc_dry_run_beside_an_import() {
    beside_import(
        "gc --dry-run",
        13,
        &["--json", "gc", "--dry-run"],
        |out, _| removed_nothing(out),
    );
}

#[test]
fn fsck_beside_an_import_finds_nothing_wrong() {
    let mut in_flight = 0;
    beside_import("fsck", 14, &["--json", "fsck"], |out, _| {
        // Its verdict on a live store: clean.
        let v = fsck_output_clean(out)?;
        in_flight += v["in_flight"].as_u64().unwrap_or(0);
        Ok(())
    });
    println!("fsck: {in_flight} blob(s) counted in flight");
}

#[test]
fn rebuild_beside_an_import_refuses_or_runs_alone() {
    beside_import(
        "fsck --rebuild",
        15,
        &["fsck", "--rebuild", "--wait", "0.2"],
        |out, t| {
            if !out.status.success() {
                return refused_naming(out, t.pid);
            }
            // It ran alone, before the import opened the store or after it finished.
            if broken_metadata(&t.root).is_empty() {
                return Err("a rebuild succeeded but kept no meta.redb.broken-*".into());
            }
            Ok(())
        },
    );
}

#[test]
fn rm_racing_an_import_of_the_same_name() {
    let steps: &[&[&str]] = &[&["image", "rm", IMAGE], &["gc"]];
    race(
        "image rm + gc",
        16,
        Background::Import,
        steps,
        Repeat::Once,
        |t| {
            t.import_acknowledged()?;
            let (rm, gc) = (&t.steps[0], &t.steps[1]);
            if !gc.status.success() {
                return Err(format!("gc: {}", describe(gc)));
            }
            // rm fails only when the import had not committed yet; then the name stays.
            let rm_found = rm.status.success();
            if !rm_found && !text(&rm.stderr).contains("not found") {
                return Err(format!("image rm: {}", describe(rm)));
            }
            match (rm_found, listed(&t.root)?) {
                (true, false) => fsck_clean(&t.root),
                (false, true) => intact(&t.root),
                (true, true) => Err("image rm succeeded, yet the name is still listed".into()),
                (false, false) => Err("the name is gone though image rm found nothing".into()),
            }
        },
    );
}

#[test]
fn export_racing_rm_and_gc_is_whole_or_absent() {
    let steps: &[&[&str]] = &[&["image", "rm", IMAGE], &["gc"]];
    race(
        "image export vs rm + gc",
        17,
        Background::Export,
        steps,
        Repeat::Once,
        |t| {
            for step in &t.steps {
                if !step.status.success() {
                    return Err(format!("rm or gc: {}", describe(step)));
                }
            }
            fsck_clean(&t.root)?;
            let out = t.export_path();
            if t.acknowledged() {
                // The archive is whole: it imports into a fresh store, complete.
                let fresh = t.scratch.join("fresh");
                check_ok(&fresh, &["image", "import", out.to_str().unwrap()])?;
                return intact(&fresh);
            }
            failed_cleanly(&t.background, &out)
        },
    );
}

/// A failed export: exit 1, one line `ocistore: ...` on stderr, nothing left at `out`.
fn failed_cleanly(export: &Output, out: &Path) -> Result<(), String> {
    let err = text(&export.stderr);
    if export.status.code() != Some(1)
        || err.trim_end().lines().count() != 1
        || !err.starts_with("ocistore: ")
    {
        return Err(format!(
            "export failed without a one-line error: {}",
            describe(export)
        ));
    }
    if out.exists() {
        let len = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        return Err(format!(
            "export failed ({}) but left {} ({len} bytes) behind",
            err.trim(),
            out.display()
        ));
    }
    Ok(())
}

#[test]
fn export_failing_midway_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    ocistore(&root, &import_args(&archive().path)).output();
    // One byte in the middle of the largest layer changes: the export notices only once it
    // has written most of the archive (or of the directory).
    let hex = archive()
        .largest_layer
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = root.join("blobs/sha256").join(&hex[..2]).join(&hex);
    let mut bytes = fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let mut perms = fs::metadata(&blob).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(&blob, perms).unwrap();
    fs::write(&blob, &bytes).unwrap();
    for format in ["oci-archive", "oci-dir"] {
        let out = tmp.path().join(format);
        let path = out.to_str().unwrap();
        let export = ocistore(
            &root,
            &["image", "export", IMAGE, "-o", path, "--format", format],
        )
        .raw_output();
        failed_cleanly(&export, &out).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(text(&export.stderr).contains(&hex), "{}", describe(&export));
    }
}

// ---------------------------------------------------------------- rebuild alone

/// A store holding the imported image, its config labelled `com.example/kept=yes`.
fn labelled_store(root: &Path) {
    ocistore(root, &import_args(&archive().path)).output();
    ocistore(
        root,
        &[
            "content",
            "label",
            &archive().config,
            "com.example/kept=yes",
        ],
    )
    .output();
}

#[test]
fn rebuild_of_an_idle_store_keeps_names_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    labelled_store(&root);
    let out: Value = ocistore(&root, &["--json", "fsck", "--rebuild"]).json();
    assert_eq!(out["salvaged"], true, "{out}");
    assert_eq!(out["blobs_recovered"], archive().blobs, "{out}");
    assert_eq!(out["names_recovered"], 1, "{out}");
    assert_eq!(out["lost"], json!([]), "{out}");
    intact(&root).unwrap();
    let info: Value = ocistore(&root, &["--json", "content", "info", &archive().config]).json();
    assert_eq!(info["labels"]["com.example/kept"], "yes", "{info}");
    let kept = broken_metadata(&root);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(out["old_metadata"], kept[0].to_str().unwrap(), "{out}");
}

#[test]
fn rebuild_refuses_while_a_process_holds_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    labelled_store(&root);
    let meta = root.join("meta.redb");
    let inode = fs::metadata(&meta).unwrap().ino();
    let store = Store::open(&root).unwrap();
    let refused = ocistore(&root, &["fsck", "--rebuild", "--wait", "0.3"]).raw_output();
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let me = format!("pid {} (", std::process::id());
    let err = text(&refused.stderr);
    assert!(
        err.contains("is open in") && err.contains(&me),
        "the refusal should name {me}: {err}"
    );
    assert_eq!(
        fs::metadata(&meta).unwrap().ino(),
        inode,
        "meta.redb was replaced"
    );
    assert!(broken_metadata(&root).is_empty());
    assert!(!root.join("meta.redb.new").exists());
    // The holder goes on as before.
    let names: Vec<String> = store
        .images(&[])
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, [IMAGE]);
    drop(store);
    ocistore(&root, &["fsck", "--rebuild", "--wait", "0.3"]).output();
    assert_ne!(
        fs::metadata(&meta).unwrap().ino(),
        inode,
        "meta.redb was not rebuilt"
    );
    intact(&root).unwrap();
}

// ---------------------------------------------------------------- the library

#[test]
fn library_repair_in_a_loop_beside_an_import() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = Store::open(&root).unwrap();
    let mut child = ocistore(&root, &import_args(&archive().path)).spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut repairs, mut in_flight) = (0, 0);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        let out = store
            .fsck(&ocistore::verify::Options { repair: true })
            .unwrap();
        // Everything in this store belongs to the live import: nothing to report or repair.
        assert!(out.problems.is_empty(), "repair beside an import: {out:?}");
        repairs += 1;
        in_flight += out.in_flight;
    }
    let import = child.wait_with_output().unwrap();
    assert!(import.status.success(), "import: {}", describe(&import));
    let last = store
        .fsck(&ocistore::verify::Options { repair: false })
        .unwrap();
    assert!(last.problems.is_empty(), "{last:?}");
    assert_eq!(last.blobs_checked, archive().blobs as u64);
    drop(store);
    intact(&root).unwrap();
    println!("library repair: {repairs} repairs beside the import, {in_flight} in flight");
}

// ------------------------------------------------------- fsck beside removals

/// A store at `root` holding `n` small blobs that nothing names (all of it is garbage).
fn unnamed_blobs(root: &Path, n: usize) {
    let store = Store::open(root).unwrap();
    let mut batch = store.batch().unwrap();
    for i in 0..n {
        let bytes = format!("unnamed blob {i}");
        batch
            .stage(&mut bytes.as_bytes(), None, None, Default::default())
            .unwrap();
    }
    batch.commit().unwrap();
}

/// Runs read-only `fsck` back to back, as separate processes, while `remover` (a child
/// removing content from `root`) runs, and once after it. Every run must be clean: a blob
/// whose record the remover has dropped and whose file it is about to remove is not debris.
/// Returns how many fsck runs began before the remover ended.
fn fsck_until_done(root: &Path, what: &str, remover: std::process::Child) -> usize {
    let waiter = std::thread::spawn(move || remover.wait_with_output().unwrap());
    let mut beside = 0;
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = !waiter.is_finished();
        let out = ocistore(root, &["--json", "fsck"]).raw_output();
        if let Err(e) = fsck_output_clean(&out) {
            failures.push(e);
        }
        if !running || Instant::now() > deadline {
            break;
        }
        beside += 1;
    }
    let removed = waiter.join().unwrap();
    assert!(removed.status.success(), "{what}: {}", describe(&removed));
    assert!(
        failures.is_empty(),
        "fsck beside {what} ({beside} runs beside it):\n{}",
        failures.join("\n")
    );
    beside
}

/// `gc` removing thousands of unnamed blobs (one transaction drops the records, then the
/// files go) while fsck runs in other processes: no fsck calls those files debris.
#[test]
fn fsck_beside_gc_finds_nothing_wrong() {
    let mut beside = 0;
    for _ in 0..trials() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        unnamed_blobs(&root, 4000);
        let gc = ocistore(&root, &["gc"]).spawn();
        beside += fsck_until_done(&root, "gc", gc);
        let left = check_ok(&root, &["content", "ls", "-q"]).unwrap();
        assert_eq!(left.lines().count(), 0, "gc left {left}");
    }
    println!("fsck beside gc: {beside} runs beside it, all clean");
}

/// `fsck --repair` quarantining corrupt blobs while read-only fsck runs back to back in other
/// processes. A quarantine moves the file inside repair's transaction and drops the record at
/// its commit; the fscks beside it reported those blobs "missing" (55 times in 25 such rounds
/// here) and now wait for the repair: they see each blob corrupt before it and gone after.
#[test]
fn fsck_beside_a_repair_never_reports_a_quarantined_blob_missing() {
    use std::io::{Seek, SeekFrom, Write};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rounds, mut beside) = (0, 0);
    let mut failures = Vec::new();
    while rounds < 24 && Instant::now() < deadline {
        rounds += 1;
        let store = Store::open(&root).unwrap();
        let mut batch = store.batch().unwrap();
        let mut digests = Vec::new();
        for i in 0..12u64 {
            let bytes = sample(200_000, rounds * 100 + i);
            let staged = batch
                .stage(&mut bytes.as_slice(), None, None, Default::default())
                .unwrap();
            digests.push(staged.digest);
        }
        batch.commit().unwrap();
        drop(store);
        for d in &digests {
            let path = root
                .join("blobs")
                .join("sha256")
                .join(&d.hex()[..2])
                .join(d.hex());
            let mut perms = fs::metadata(&path).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            fs::set_permissions(&path, perms).unwrap();
            let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.seek(SeekFrom::Start(1000)).unwrap();
            f.write_all(b"not these bytes").unwrap();
        }
        let repair = ocistore(&root, &["fsck", "--repair"]).spawn();
        let waiter = std::thread::spawn(move || repair.wait_with_output().unwrap());
        loop {
            let running = !waiter.is_finished();
            let out = ocistore(&root, &["--json", "fsck"]).raw_output();
            match json_of(&out) {
                Ok(v) => {
                    let problems = v["problems"].as_array().cloned().unwrap_or_default();
                    if problems.iter().any(|p| p["kind"] != "corrupt") {
                        failures.push(describe(&out));
                    }
                }
                Err(e) => failures.push(e),
            }
            if !running {
                break;
            }
            beside += 1;
        }
        let repaired = waiter.join().unwrap();
        assert!(repaired.status.success(), "{}", describe(&repaired));
        fsck_clean(&root).unwrap();
    }
    assert!(
        failures.is_empty(),
        "fsck beside a repair ({beside} runs beside it):\n{}",
        failures.join("\n")
    );
    println!("fsck beside a repair: {rounds} rounds, {beside} runs beside it");
}

/// Read-only fsck back to back beside processes that put blobs and collect garbage: every
/// open succeeds and every verdict is clean. redb leaves `meta.redb` marked for recovery for a
/// moment when a writer closes while another process opens it; a read-only open then failed
/// with "Database repair aborted" (16 of 2,400 such runs here) and now waits for the writer
/// that recovers the file.
#[test]
fn read_only_fsck_beside_writers_opens_every_time() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    ocistore(&root, &["image", "ls"]).output();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = |args: fn(usize, &Path) -> Vec<String>| {
        let (root, stop, scratch) = (root.clone(), Arc::clone(&stop), tmp.path().to_owned());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            for i in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let args = args(i, &scratch);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                if let Err(e) = check_ok(&root, &args) {
                    failures.push(e);
                }
            }
            failures
        })
    };
    let puts = writer(|i, scratch| {
        let file = scratch.join(format!("blob-{i}"));
        fs::write(&file, format!("blob {i} for the fsck race")).unwrap();
        vec!["content".into(), "put".into(), file.display().to_string()]
    });
    let gcs = writer(|_, _| vec!["gc".into()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = Vec::new();
    let mut runs = 0;
    while runs < 300 && Instant::now() < deadline {
        if let Err(e) = fsck_output_clean(&ocistore(&root, &["--json", "fsck"]).raw_output()) {
            failures.push(e);
        }
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writers: Vec<String> = [puts, gcs]
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        writers.is_empty(),
        "writers failed:\n{}",
        writers.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} read-only fsck runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("read-only fsck beside puts and gc: {runs} runs, all clean");
}

// ---------------------------------------------------------------- every command at once

/// Every command at once, as separate processes on one store, the way CI runners and build
/// tools share a cache: three imports (two of one archive), puts, two writers of one ingest
/// reference, content rm, ingest abort, labels, leases, tags, removals, gc, prune, read-only
/// fsck, `fsck --repair`, du, listings, checks and exports, each in a loop for 12 s. No run fails
/// except with the answer its race calls for (a name removed meanwhile is "not found"),
/// every read-only fsck and every repair finds nothing wrong, and every name left at the end
/// points at a complete image. Then 8 s more with a random process killed every 100 ms: what
/// is left after one `fsck --repair` is consistent, and every name left is complete.
#[test]
fn every_command_beside_every_other() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let scratch = tmp.path().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let a = tmp.path().join("a.oci.tar");
    let b = tmp.path().join("b.oci.tar");
    let config = write_archive(&a, 2 << 20).config;
    write_archive(&b, 3 << 20);
    let (a, b, put_dir, export) = (path(&a), path(&b), scratch.clone(), scratch.join("export"));
    let a2 = a.clone();
    // A blob two writers put under one ingest reference (the second waits for the first, or
    // resumes what a killed one left), that removals take away again.
    let resumable = scratch.join("resumable");
    let resumable_bytes = sample(3 << 20, 99);
    fs::write(&resumable, &resumable_bytes).unwrap();
    let resumable_digest = Algorithm::Sha256.digest(&resumable_bytes).to_string();
    let put_ref =
        |(file, digest): (String, String)| -> Box<dyn Fn(usize) -> Vec<String> + Send + Sync> {
            Box::new(move |_| {
                let args = [
                    "content",
                    "put",
                    "--ref",
                    "resumable",
                    "--expected",
                    &digest,
                    &file,
                ];
                owned(&args)
            })
        };
    let put_args = (path(&resumable), resumable_digest.clone());
    let (rm_digest, label_digest) = (resumable_digest.clone(), config);
    let mut streams = maintenance("4MiB");
    streams.extend([
        Stream {
            name: "put --ref",
            args: put_ref(put_args.clone()),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "put --ref, again",
            args: put_ref(put_args),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "content rm and ingest abort",
            args: Box::new(move |i| match i % 2 {
                0 => owned(&["content", "rm", &rm_digest]),
                _ => owned(&["ingest", "abort", "resumable"]),
            }),
            expected_failure: |e| {
                one_line(e, "ocistore: content sha256:", " not found")
                    || one_line(e, "ocistore: ingest \"resumable\" not found", "")
                    || one_line(
                        e,
                        "ocistore: ingest ref \"resumable\" is locked by a live writer",
                        "",
                    )
            },
            check: succeeded,
        },
        Stream {
            name: "label and lease",
            args: Box::new(move |i| {
                let lease = format!("lease-{}", i / 3 % 3);
                match i % 3 {
                    0 => owned(&["content", "label", &label_digest, &format!("run={i}")]),
                    1 => owned(&["lease", "create", &lease, "--resource", "name:lab/a:1.0"]),
                    _ => owned(&["lease", "rm", &lease]),
                }
            }),
            expected_failure: |e| {
                one_line(e, "ocistore: content sha256:", " not found")
                    || one_line(e, "ocistore: lease \"lease-", "\" already exists")
                    || one_line(e, "ocistore: lease \"lease-", "\" not found")
            },
            check: succeeded,
        },
        Stream {
            name: "import a",
            args: Box::new(move |_| owned(&["image", "import", "--name", "lab/a", &a])),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "import a, again",
            args: Box::new(move |_| owned(&["image", "import", "--name", "lab/a", &a2])),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "import b",
            args: Box::new(move |_| owned(&["image", "import", "--name", "lab/b", &b])),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "put",
            args: Box::new(move |i| {
                let file = put_dir.join(format!("put-{i}"));
                fs::write(&file, sample(10_000 + i % 5_000, i as u64)).unwrap();
                owned(&["content", "put", &path(&file)])
            }),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "tag",
            args: Box::new(|i| {
                let source = if i % 2 == 0 { "lab/a:1.0" } else { "lab/b:1.0" };
                owned(&["image", "tag", source, &format!("lab/copy:{}", i % 4)])
            }),
            expected_failure: name_not_found,
            check: succeeded,
        },
        Stream {
            name: "rm",
            args: Box::new(|i| {
                let name = match i % 6 {
                    4 => "lab/a:1.0".to_owned(),
                    5 => "lab/b:1.0".to_owned(),
                    k => format!("lab/copy:{k}"),
                };
                owned(&["image", "rm", &name])
            }),
            expected_failure: name_not_found,
            check: succeeded,
        },
        Stream {
            name: "listings",
            args: Box::new(|i| match i % 4 {
                0 => owned(&["du"]),
                1 => owned(&["content", "ls"]),
                2 => owned(&["image", "ls"]),
                _ => owned(&["ingest", "ls"]),
            }),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "check",
            args: Box::new(|i| {
                let name = if i % 2 == 0 {
                    "lab/a:1.0"
                } else {
                    "lab/copy:1"
                };
                owned(&["image", "check", name, "--platform", PLATFORM])
            }),
            expected_failure: name_not_found,
            check: succeeded,
        },
        Stream {
            name: "export",
            args: Box::new(move |_| {
                let _ = fs::remove_file(&export);
                owned(&["image", "export", "lab/b:1.0", "-o", &path(&export)])
            }),
            expected_failure: name_not_found,
            check: succeeded,
        },
    ]);
    let names_complete = |when: &str| {
        for name in ocistore(&root, &["image", "ls", "-q"]).stdout().lines() {
            if let Err(e) = check_ok(&root, &["image", "check", name, "--platform", PLATFORM]) {
                panic!("{when}: {name} is not complete: {e}");
            }
        }
    };

    ocistore(&root, &["image", "ls"]).output();
    let command = |args: &[&str]| ocistore(&root, args).command();
    let calm = run_streams(&command, &scratch, &streams, Duration::from_secs(12), None);
    calm.report("every command at once");
    fsck_clean(&root).unwrap();
    names_complete("after 12 s of every command");

    let killing = run_streams(
        &command,
        &scratch,
        &streams,
        Duration::from_secs(8),
        Some(Duration::from_millis(100)),
    );
    killing.report("with kills");
    assert!(killing.killed > 10, "only {} kills", killing.killed);
    ocistore(&root, &["fsck", "--repair"]).output();
    fsck_clean(&root).unwrap();
    names_complete("after the kills and a repair");
    // Every process is gone: one gc drops every lease a killed one held for itself.
    ocistore(&root, &["gc"]).output();
    let leases: serde_json::Value = ocistore(&root, &["--json", "lease", "ls"]).json();
    let owned: Vec<&serde_json::Value> = (leases.as_array().unwrap().iter())
        .filter(|l| l["owner"].is_object())
        .collect();
    assert!(
        owned.is_empty(),
        "leases of dead processes after gc: {owned:?}"
    );
    fsck_clean(&root).unwrap();
    names_complete("after the last gc");
}
