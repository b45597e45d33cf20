//! The cost of recording last use (see `src/store/uses.rs`), each figure beside its
//! baseline measured in the same run:
//!
//! - reads: `reader_at` + read of a 4 KiB blob, with `record_use` of that blob on every read
//!   vs without (target: >= 0.9x the baseline rate: noting a use is an in-memory map update);
//! - a command's end: open the store, read one blob, note its use, drop the store; when the
//!   use is due (never recorded, or older than the granularity) the drop writes it in one
//!   transaction, when it is not due the drop only reads. Each vs the same without a use.
//! - a prune's bookkeeping on 100 images (dry run) is in `cargo bench --bench query`'s
//!   territory and not measured here.
//!
//! Run: `cargo bench --bench uses`. Prints figures and ratios; asserts nothing.

use std::time::{Duration, Instant};

use ocistore::{Algorithm, Digest, Labels, Provider, Store, Used, helpers};

const READS: usize = 200_000;
const OPENS: usize = 200;

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn reads(store: &Store, digests: &[Digest], record: bool) -> Duration {
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    for i in 0..READS {
        let d = &digests[i % digests.len()];
        let r = store.reader_at(d).unwrap();
        let n = r.read_at(&mut buf, 0).unwrap();
        assert_eq!(n, 4096);
        if record {
            store.record_use([Used::Content(*d)]);
        }
    }
    t.elapsed()
}

/// `OPENS` rounds of open, read one blob, (note its use), drop; the median round.
fn command_ends(root: &std::path::Path, digests: &[Digest], record: bool) -> Duration {
    let mut rounds = Vec::with_capacity(OPENS);
    let mut buf = vec![0u8; 4096];
    for i in 0..OPENS {
        let d = &digests[i % digests.len()];
        let t = Instant::now();
        let store = Store::open(root).unwrap();
        store.reader_at(d).unwrap().read_at(&mut buf, 0).unwrap();
        if record {
            store.record_use([Used::Content(*d)]);
        }
        drop(store);
        rounds.push(t.elapsed());
    }
    rounds.sort();
    rounds[OPENS / 2]
}

fn main() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let mut digests = Vec::new();
    for i in 0..1000u32 {
        let mut bytes = vec![0u8; 4096];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        let d = Algorithm::Sha256.digest(&bytes);
        helpers::write_blob(&store, "b", &mut &bytes[..], None, Some(&d), Labels::new()).unwrap();
        digests.push(d);
    }
    // Warm the page cache and the snapshot.
    reads(&store, &digests, false);
    let mut base = Duration::MAX;
    let mut with = Duration::MAX;
    for _ in 0..3 {
        base = base.min(reads(&store, &digests, false));
        with = with.min(reads(&store, &digests, true));
    }
    println!(
        "reads: {:.0}/s with record_use vs {:.0}/s without = {:.2}x (target >= 0.9x)",
        per_sec(READS, with),
        per_sec(READS, base),
        base.as_secs_f64() / with.as_secs_f64()
    );
    store.flush_uses().unwrap();
    drop(store);

    // Not due: every blob's use was just written, well within the granularity.
    let plain = command_ends(&root, &digests, false);
    let not_due = command_ends(&root, &digests, true);
    // Due: blobs never recorded (fresh ones), so each drop writes one transaction.
    let store = Store::open(&root).unwrap();
    let mut fresh = Vec::new();
    for i in 0..OPENS as u32 {
        let mut bytes = vec![1u8; 4096];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        let d = Algorithm::Sha256.digest(&bytes);
        helpers::write_blob(&store, "f", &mut &bytes[..], None, Some(&d), Labels::new()).unwrap();
        fresh.push(d);
    }
    drop(store);
    let due = command_ends(&root, &fresh, true);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "command end (open, read, drop; median of {OPENS}): without a use {:.3} ms; use not due {:.3} ms ({:.2}x); use due, written {:.3} ms ({:.2}x)",
        ms(plain),
        ms(not_due),
        not_due.as_secs_f64() / plain.as_secs_f64(),
        ms(due),
        due.as_secs_f64() / plain.as_secs_f64(),
    );
}
