//! A build cache at size: the commands a person runs to look at or clean a big store, each
//! timed as a process (the release `ocistore`, output to /dev/null; the median of 5 runs
//! after a warm-up, 15 for `image ls`, 3 for gc, prune and du) beside a baseline measured in
//! the same run.
//!
//! The store (built through the batch API on tmpfs, `/dev/shm`, when there is one):
//! `OCISTORE_SCALE_BLOBS` blobs (default 1,000,000) in all; 1,000 images, each a manifest
//! naming a config and 10 layers of its own; 10,000 names over those images (10 per image);
//! of the other blobs, half labelled `containerd.io/gc.root` (a cache's own records) and
//! half referenced by nothing (what gc would take).
//!
//! Printed, each with its baseline and target:
//! - `content ls`, `-q`, `--json` vs a raw redb iteration of the same table that decodes
//!   each record and formats the same line, written to /dev/null in this process;
//! - `image ls`, `--json` (10,000 names) vs a raw redb iteration of the names table;
//! - `gc --dry-run`, `prune --dry-run --max-used HALF`;
//! - `du` vs `du -s` of the root (and `find blobs -type f | wc -l`);
//! - opening the store (`content info` of one blob) and, on a small store, every read
//!   command (target: each <= 5 ms).
//!
//! Run: `cargo bench --bench scale`. Prints figures and ratios; asserts nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocistore::{Digest, Labels, Store};

const IMAGES: usize = 1_000;
const NAMES_PER_IMAGE: usize = 10;
const LAYERS: usize = 10;

fn n_blobs() -> usize {
    std::env::var("OCISTORE_SCALE_BLOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The store's blob record, as the baseline decodes it.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Record {
    size: u64,
    created: u64,
    updated: u64,
    labels: std::collections::BTreeMap<String, String>,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ocistore")
}

/// The median wall time of `runs` runs of `cmd` (stdout to /dev/null), after one warm-up.
fn time_cmd(runs: usize, mut cmd: impl FnMut() -> Command) -> Duration {
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let mut c = cmd();
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let t = Instant::now();
        let out = c.output().unwrap();
        let d = t.elapsed();
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i > 0 {
            times.push(d);
        }
    }
    times.sort();
    times[times.len() / 2]
}

fn ocistore(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--root").arg(root).args(args);
    c
}

/// A JSON document staged into the batch; its descriptor.
fn stage_json(
    b: &mut ocistore::store::batch::Batch,
    media_type: &str,
    v: &serde_json::Value,
) -> serde_json::Value {
    let bytes = serde_json::to_vec(v).unwrap();
    let s = b.stage(&mut &bytes[..], None, None, Labels::new()).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": s.digest.to_string(), "size": s.size})
}

fn build(root: &Path, n: usize) -> (Vec<Digest>, u64) {
    let store = Store::open(root).unwrap();
    let t = Instant::now();
    let image_blobs = IMAGES * (LAYERS + 2);
    let loose = n.saturating_sub(image_blobs);
    let mut digests = Vec::with_capacity(n);
    let chunk = 20_000;
    for start in (0..loose).step_by(chunk) {
        let mut b = store.batch().unwrap();
        for i in start..(start + chunk).min(loose) {
            let bytes = format!("loose blob {i}");
            let mut labels = Labels::new();
            if i % 2 == 0 {
                labels.insert("containerd.io/gc.root".into(), "cache".into());
            }
            let s = b.stage(&mut bytes.as_bytes(), None, None, labels).unwrap();
            digests.push(s.digest);
        }
        b.commit().unwrap();
    }
    for first in (0..IMAGES).step_by(100) {
        let mut b = store.batch().unwrap();
        for img in first..(first + 100).min(IMAGES) {
            let config = stage_json(
                &mut b,
                "application/vnd.oci.image.config.v1+json",
                &serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "image": img}),
            );
            let layers: Vec<serde_json::Value> = (0..LAYERS)
                .map(|l| {
                    let bytes = format!("layer {l} of image {img}").repeat(8);
                    let s = b.stage(&mut bytes.as_bytes(), None, None, Labels::new()).unwrap();
                    serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": s.digest.to_string(), "size": s.size})
                })
                .collect();
            let manifest = stage_json(
                &mut b,
                "application/vnd.oci.image.manifest.v1+json",
                &serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": layers}),
            );
            let target: oci_spec::image::Descriptor = serde_json::from_value(manifest).unwrap();
            for k in 0..NAMES_PER_IMAGE {
                b.put_name(format!("cache.example/app{img}:t{k}"), target.clone(), None)
                    .unwrap();
            }
        }
        b.commit().unwrap();
    }
    let usage = store.usage().unwrap();
    println!(
        "setup: {n} blobs, {IMAGES} images, {} names in {:.1}s ({} MiB of blobs)",
        IMAGES * NAMES_PER_IMAGE,
        t.elapsed().as_secs_f64(),
        usage.blobs.apparent_bytes >> 20
    );
    (digests, usage.blobs.apparent_bytes)
}

fn open_table_db(root: &Path) -> redb::ReadOnlyDatabase {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    b.open_read_only(root.join("meta.redb")).unwrap()
}

/// "1.5 MiB", as the CLI writes sizes, padded to 10, written straight into `out`.
fn write_size(out: &mut impl Write, n: u64) {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        let _ = write!(out, "{:10}", format!("{n} B"));
        return;
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let _ = write!(out, "{:10}", format!("{v:.1} {}", UNITS[unit]));
}

/// "3 minutes ago", as the CLI writes ages, written straight into `out`.
fn write_age(out: &mut impl Write, created_nanos: u64, now: u64) {
    let secs = now.saturating_sub(created_nanos) / 1_000_000_000;
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    let _ = write!(out, "{n} {unit}{} ago", if n == 1 { "" } else { "s" });
}

/// Raw redb iteration of the blobs table, decoding each record and writing the line `content
/// ls` writes (digest, human size, age, labels) straight into a buffer on /dev/null: the
/// floor for a listing that decodes what it prints.
fn raw_content_lines(root: &Path) -> Duration {
    let t = Instant::now();
    let db = open_table_db(root);
    let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("blobs");
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(def).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create("/dev/null").unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut n = 0;
    for entry in redb::ReadableTable::iter(&table).unwrap() {
        let (k, v) = entry.unwrap();
        let (rec, _): (Record, usize) =
            bincode::serde::decode_from_slice(&v.value()[1..], bincode::config::standard())
                .unwrap();
        write!(out, "{:71}   ", k.value()).unwrap();
        write_size(&mut out, rec.size);
        out.write_all(b"   ").unwrap();
        write_age(&mut out, rec.created, now);
        for (i, (k, v)) in rec.labels.iter().enumerate() {
            let sep = if i == 0 { "   " } else { "," };
            write!(out, "{sep}{k}={v}").unwrap();
        }
        out.write_all(b"\n").unwrap();
        n += 1;
    }
    out.flush().unwrap();
    assert!(n > 0);
    t.elapsed()
}

/// Raw redb iteration of the names table, writing each key and value length to /dev/null.
fn raw_names(root: &Path) -> Duration {
    let t = Instant::now();
    let db = open_table_db(root);
    let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("names");
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(def).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create("/dev/null").unwrap());
    for entry in redb::ReadableTable::iter(&table).unwrap() {
        let (k, v) = entry.unwrap();
        writeln!(out, "{} {}", k.value(), v.value().len()).unwrap();
    }
    out.flush().unwrap();
    t.elapsed()
}

fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..runs).map(|_| f()).collect();
    v.sort();
    v[runs / 2]
}

fn row(what: &str, d: Duration, base: Option<(&str, Duration)>, target: &str) {
    match base {
        Some((b, bd)) => println!(
            "{what:<42} {:>9.1} ms   {b}: {:>8.1} ms   {:>5.2}x   target {target}",
            ms(d),
            ms(bd),
            d.as_secs_f64() / bd.as_secs_f64()
        ),
        None => println!("{what:<42} {:>9.1} ms   target {target}", ms(d)),
    }
}

fn main() {
    let n = n_blobs();
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "."
    };
    let dir = tempfile::tempdir_in(base).unwrap();
    // OCISTORE_SCALE_ROOT keeps the store there (built once, reused by later runs).
    let root: PathBuf = match std::env::var_os("OCISTORE_SCALE_ROOT") {
        Some(r) => PathBuf::from(r),
        None => dir.path().join("store"),
    };
    let (digests, blob_bytes) = if root.join("meta.redb").exists() {
        let store = Store::open(&root).unwrap();
        let mut digests = Vec::new();
        ocistore::Manager::walk(
            &store,
            &mut |i| {
                digests.push(i.digest);
                Ok(())
            },
            &[],
        )
        .unwrap();
        let bytes = store.usage().unwrap().blobs.apparent_bytes;
        println!("reusing {} ({} blobs)", root.display(), digests.len());
        (digests, bytes)
    } else {
        build(&root, n)
    };
    let runs = 5;

    let raw = median(runs, || raw_content_lines(&root));
    for (what, args) in [
        ("content ls", vec!["content", "ls"]),
        ("content ls -q", vec!["content", "ls", "-q"]),
        ("content ls --json", vec!["--json", "content", "ls"]),
    ] {
        let d = time_cmd(runs, || ocistore(&root, &args));
        row(
            &format!("{what} ({n} blobs)"),
            d,
            Some(("raw redb + format", raw)),
            "<= 1.2x, <= 1 s (--json <= 1.5 s)",
        );
    }
    let raw = median(runs, || raw_names(&root));
    for (what, args) in [
        ("image ls", vec!["image", "ls"]),
        ("image ls --json", vec!["--json", "image", "ls"]),
    ] {
        // Tens of milliseconds: more runs, as the machine's noise is of that order.
        let d = time_cmd(15, || ocistore(&root, &args));
        row(
            &format!("{what} ({} names)", IMAGES * NAMES_PER_IMAGE),
            d,
            Some(("raw redb names", raw)),
            "<= 50 ms",
        );
    }
    let d = time_cmd(3, || ocistore(&root, &["gc", "--dry-run"]));
    row("gc --dry-run", d, None, "<= 1.5 s");
    let half = (blob_bytes / 2).to_string();
    let d = time_cmd(3, || {
        ocistore(&root, &["prune", "--dry-run", "--max-used", &half])
    });
    row("prune --dry-run --max-used HALF", d, None, "<= 2 s");
    let du_s = time_cmd(3, || {
        let mut c = Command::new("du");
        c.arg("-s").arg(&root);
        c
    });
    let find = time_cmd(3, || {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("find {}/blobs -type f | wc -l", root.display()));
        c
    });
    let d = time_cmd(3, || ocistore(&root, &["du"]));
    row("du", d, Some(("du -s", du_s)), "<= 1.5x du -s");
    row("  (find blobs -type f | wc -l)", find, None, "-");
    let one = digests[digests.len() / 2].to_string();
    let d = time_cmd(runs, || ocistore(&root, &["content", "info", &one]));
    row("open + content info (1M store)", d, None, "-");

    // Every read command on a small store.
    let small = dir.path().join("small");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    let out = ocistore(&small, &["image", "import", sample.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    for args in [
        vec!["content", "ls"],
        vec!["--json", "content", "ls"],
        vec!["image", "ls"],
        vec!["image", "check", "hello:1.0", "--platform", "linux/amd64"],
        vec!["du"],
        vec!["lease", "ls"],
        vec!["ingest", "ls"],
        vec!["gc", "--dry-run"],
    ] {
        let d = time_cmd(20, || ocistore(&small, &args));
        row(
            &format!("small store: {}", args.join(" ")),
            d,
            None,
            "<= 5 ms",
        );
    }
}
