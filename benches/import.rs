//! Import benchmarks:
//!
//! - import a generated OCI archive (default ~200 MiB, `OCISTORE_BENCH_ARCHIVE_MIB`) of several
//!   tar+gzip layers of partly compressible data, vs a baseline measured in the same run:
//!   read the archive + sha256 every byte + write and fsync as many bytes, three rounds in
//!   turned order, each run after a sync and a rest, best of each (target <= 1.3x);
//! - peak RSS of `ocistore image import` on a 1 GiB archive (`OCISTORE_BENCH_RSS_MIB`), target
//!   <= 64 MiB.
//!
//! `cargo bench --bench import -- --generate PATH MIB` only writes an archive (used by
//! `benches/peers.sh`). Prints figures and ratios; asserts nothing.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocistore::names::descriptor;
use ocistore::oci::export;
#[path = "common/baseline.rs"]
mod baseline;
use baseline::PlainFile;
use ocistore::{Algorithm, Labels, Store, helpers};
use serde_json::json;

/// Layer bytes: a quarter random, the rest text, so gzip has something to do.
fn layer_payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    let text = b"the quick brown fox jumps over the lazy dog; build cache line\n";
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(&text[..(x % text.len() as u64) as usize]);
        }
    }
    out.truncate(len);
    out
}

/// Writes an archive of about `mib` MiB (compressed) named `bench/image:1`.
pub fn generate(path: &Path, mib: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let layers = 6u64;
    // gzip (fast) shrinks this payload to about 0.21 of its size.
    let raw = ((mib << 20) as f64 / layers as f64 / 0.21) as usize;
    let mut descs = Vec::new();
    for l in 0..layers {
        let payload = layer_payload(l + 1, raw);
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(payload.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, format!("data/layer{l}.bin"), &payload[..])
            .unwrap();
        let tarred = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tarred).unwrap();
        let gz = gz.finish().unwrap();
        let d = helpers::write_blob(
            &store,
            &format!("l{l}"),
            &mut &gz[..],
            None,
            None,
            Labels::new(),
        )
        .unwrap();
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": gz.len()}));
    }
    let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cd = helpers::write_blob(&store, "cfg", &mut &cfg[..], None, None, Labels::new()).unwrap();
    let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cfg.len()},
        "layers": descs})).unwrap();
    let md = helpers::write_blob(&store, "m", &mut &m[..], None, None, Labels::new()).unwrap();
    store
        .put_image(
            "bench/image:1",
            descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                &md,
                m.len() as u64,
            )
            .unwrap(),
            None,
        )
        .unwrap();
    store
        .export_path(&["bench/image:1"], &export::Options::default(), path)
        .unwrap();
}

/// Runs [`generate`] in a child process: a spawned child's peak RSS counts the memory of the
/// process that spawned it, so the benchmarking process stays small.
fn generate_in_child(path: &Path, mib: u64) {
    let status = Command::new(std::env::current_exe().unwrap())
        .arg("--generate")
        .arg(path)
        .arg(mib.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Flushes every dirty page and lets the disk rest before a timed run. This machine's disk
/// takes writes at page-cache speed for a few hundred MB, then at a third of that until it
/// has been idle for about a second: without a rest, whichever run comes second pays for
/// the first one's writes.
fn settle() {
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_secs(2));
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Reads the archive, hashes every byte and writes it to `scratch` (through the page cache,
/// or with `direct` I/O), then fsyncs.
fn baseline(archive: &Path, scratch: &Path, direct: bool) -> Duration {
    let t = Instant::now();
    let mut r = BufReader::with_capacity(1 << 20, File::open(archive).unwrap());
    let mut out = PlainFile::create(scratch, direct).unwrap();
    let mut h = Algorithm::Sha256.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).unwrap();
    }
    out.finish().unwrap();
    let _ = h.finalize();
    t.elapsed()
}

fn import_speed(dir: &Path) {
    let mib: u64 = std::env::var("OCISTORE_BENCH_ARCHIVE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let archive = dir.join("image.tar");
    generate_in_child(&archive, mib);
    let size = std::fs::metadata(&archive).unwrap().len();
    let import = |name: &str| {
        let store = Store::open(dir.join(name)).unwrap();
        settle();
        let t = Instant::now();
        let out = store.import_path(&archive, Default::default()).unwrap();
        (t.elapsed(), out)
    };
    // The plain way that is faster on this machine, through the page cache or around it.
    let base_run = |name: &str| {
        settle();
        let buffered = baseline(&archive, &dir.join(format!("{name}.buffered")), false);
        settle();
        buffered.min(baseline(
            &archive,
            &dir.join(format!("{name}.direct")),
            true,
        ))
    };
    // Three rounds, the order turned each time, fastest of each kept.
    let (mut ours, mut base) = (Duration::MAX, Duration::MAX);
    let mut outcome = None;
    for round in 0..3 {
        if round % 2 == 1 {
            base = base.min(base_run(&format!("baseline{round}.out")));
        }
        let (d, out) = import(&format!("store-{round}"));
        ours = ours.min(d);
        outcome.get_or_insert(out);
        if round % 2 == 0 {
            base = base.min(base_run(&format!("baseline{round}.out")));
        }
    }
    let out = outcome.expect("three rounds ran");
    println!(
        "import a {:.0} MiB OCI archive ({} blobs)",
        size as f64 / (1u64 << 20) as f64,
        out.blobs_written
    );
    println!(
        "  baseline read+sha256+write+fsync: {:.3}s ({:.0} MB/s; the faster of page cache and direct I/O)",
        secs(base),
        size as f64 / secs(base) / 1e6
    );
    println!(
        "  ocistore image import:            {:.3}s ({:.0} MB/s)   ratio {:.2}x baseline (target <= 1.3x)",
        secs(ours),
        size as f64 / secs(ours) / 1e6,
        secs(ours) / secs(base)
    );
}

fn import_rss(dir: &Path) {
    let mib: u64 = std::env::var("OCISTORE_BENCH_RSS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let archive = dir.join("big.tar");
    generate_in_child(&archive, mib);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocistore"))
        .arg("--root")
        .arg(dir.join("rss-store"))
        .args(["image", "import"])
        .arg(&archive)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = child.try_wait();
    println!(
        "peak RSS of `ocistore image import` on a {:.0} MiB archive: {:.1} MiB (target <= 64 MiB), exit {}",
        std::fs::metadata(&archive).unwrap().len() as f64 / (1u64 << 20) as f64,
        usage.ru_maxrss as f64 / 1024.0,
        libc::WEXITSTATUS(status)
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let Some(i) = args.iter().position(|a| a == "--generate") {
        let path = Path::new(&args[i + 1]);
        let mib = args.get(i + 2).and_then(|m| m.parse().ok()).unwrap_or(200);
        generate(path, mib);
        return;
    }
    let filter = args.first().cloned();
    let dir =
        tempfile::tempdir_in(std::env::var("OCISTORE_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    let run = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if run("speed") {
        import_speed(dir.path());
    }
    if run("rss") {
        import_rss(dir.path());
    }
}
