//! The checks of writers, readers, resumed ingests and the commit protocol; the rest in
//! `metadata.rs`.

use std::io::{Cursor, Write};

use crate::content::{ContentStore, Labels, Provider};
use crate::digest::{Algorithm, Digest};
use crate::error::ErrorKind;
use crate::helpers::{self, Source};

use super::Harness;

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> Digest {
    Algorithm::Sha256.digest(b)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn put(cs: &dyn ContentStore, reference: &str, bytes: &[u8], l: Labels) -> Digest {
    let mut w = cs.writer(reference, None, None).expect("open writer");
    w.write_all(bytes).expect("write");
    w.commit(Some(bytes.len() as u64), Some(&sha(bytes)), l)
        .expect("commit")
}

fn kind<T>(r: crate::error::Result<T>) -> ErrorKind {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.kind(),
    }
}

/// Writes, commits and reads back blobs of several sizes.
pub fn writer_and_readback(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    for (i, len) in [0usize, 1, 4096, 1 << 20, (1 << 21) + 3]
        .into_iter()
        .enumerate()
    {
        let data = sample(len, i as u64);
        let d = put(cs, &format!("ref-{i}"), &data, Labels::new());
        assert_eq!(d, sha(&data));
        let info = cs.info(&d).unwrap();
        assert_eq!(info.size, len as u64);
        assert!(info.labels.is_empty());
        assert_eq!(helpers::read_blob(cs, &d).unwrap(), data);
        let r = cs.reader_at(&d).unwrap();
        assert_eq!(r.size(), len as u64);
    }
    assert!(
        cs.list_statuses(&[]).unwrap().is_empty(),
        "committed ingests are gone"
    );
}

/// Several writers at once, with and without expected size and digest, interleaved.
pub fn concurrent_writers(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let blobs: Vec<Vec<u8>> = (0..6)
        .map(|i| sample(100_000 + i * 999, 10 + i as u64))
        .collect();
    let mut writers: Vec<_> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let size = (i % 2 == 0).then_some(b.len() as u64);
            let dg = (i % 3 == 0).then(|| sha(b));
            cs.writer(&format!("concurrent-{i}"), size, dg.as_ref())
                .unwrap()
        })
        .collect();
    for chunk in 0..10 {
        for (w, b) in writers.iter_mut().zip(&blobs) {
            let step = b.len().div_ceil(10);
            let lo = (chunk * step).min(b.len());
            let hi = ((chunk + 1) * step).min(b.len());
            w.write_all(&b[lo..hi]).unwrap();
        }
    }
    for (w, b) in writers.into_iter().zip(&blobs) {
        assert_eq!(w.digest(), sha(b));
        w.commit(None, None, Labels::new()).unwrap();
    }
    // Threads too: each its own writer, all committing at once.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let data = sample(50_000, 100 + t);
                let d = helpers::write_blob(
                    cs,
                    &format!("thread-{t}"),
                    &mut &data[..],
                    Some(data.len() as u64),
                    Some(&sha(&data)),
                    Labels::new(),
                )
                .unwrap();
                assert_eq!(d, sha(&data));
            });
        }
    });
    for (i, b) in blobs.iter().enumerate() {
        assert_eq!(helpers::read_blob(cs, &sha(b)).unwrap(), *b, "blob {i}");
    }
    let mut n = 0;
    cs.walk(
        &mut |_| {
            n += 1;
            Ok(())
        },
        &[],
    )
    .unwrap();
    assert_eq!(n, 10);
}

/// Status while writing: offset, total, expected, started_at kept, updated_at moving.
pub fn status_tracking(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let data = sample(10_000, 3);
    let d = sha(&data);
    let mut w = cs.writer("status", Some(10_000), Some(&d)).unwrap();
    let st0 = w.status().unwrap();
    assert_eq!(
        (
            st0.reference.as_str(),
            st0.offset,
            st0.total,
            st0.expected.as_ref()
        ),
        ("status", 0, Some(10_000), Some(&d))
    );
    let mut last = st0.updated_at;
    for (i, chunk) in data.chunks(2500).enumerate() {
        w.write_all(chunk).unwrap();
        let st = w.status().unwrap();
        assert_eq!(st.offset, ((i + 1) * 2500) as u64);
        assert_eq!(st.started_at, st0.started_at);
        assert!(st.updated_at >= last);
        last = st.updated_at;
    }
    w.flush().unwrap();
    let seen = cs.status("status").unwrap();
    assert_eq!(
        (seen.offset, seen.total, seen.expected.as_ref()),
        (10_000, Some(10_000), Some(&d))
    );
    assert_eq!(seen.started_at, st0.started_at);
    let all = cs.list_statuses(&[]).unwrap();
    assert_eq!(all.len(), 1);
    w.commit(None, None, Labels::new()).unwrap();
    assert_eq!(kind(cs.status("status")), ErrorKind::NotFound);
}

/// Committing content that exists: AlreadyExists, and the ingest is gone.
pub fn commit_existing(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let data = sample(4096, 4);
    let d = put(cs, "first", &data, Labels::new());
    // A writer told the digest refuses at once.
    assert_eq!(
        kind(cs.writer("second", None, Some(&d))),
        ErrorKind::AlreadyExists
    );
    // A writer not told finds out at commit, and its ingest is removed.
    let mut w = cs.writer("third", None, None).unwrap();
    w.write_all(&data).unwrap();
    assert_eq!(
        kind(w.commit(Some(4096), Some(&d), Labels::new())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(kind(cs.status("third")), ErrorKind::NotFound);
    let w = cs.writer("third", None, None).unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
}

/// A reference held by a live writer is Unavailable until that writer lets go.
pub fn ref_not_available(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let mut w = cs.writer("busy", None, None).unwrap();
    w.write_all(b"abc").unwrap();
    assert_eq!(kind(cs.writer("busy", None, None)), ErrorKind::Unavailable);
    assert_eq!(kind(cs.abort("busy")), ErrorKind::Unavailable);
    w.close().unwrap();
    let w = cs.writer("busy", None, None).unwrap();
    assert_eq!(w.status().unwrap().offset, 3);
    drop(w);
    // Dropping releases too.
    let w = cs.writer("busy", None, None).unwrap();
    w.close().unwrap();
}

/// containerd's commit error-state sequence: wrong digest, wrong size, then success; the
/// ingest survives each failure and no reference lock leaks.
pub fn commit_error_state(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let data = sample(5000, 5);
    let d = sha(&data);
    let wrong = sha(b"something else");
    let mut w = cs.writer("errstate", None, None).unwrap();
    w.write_all(&data).unwrap();
    assert_eq!(
        kind(w.commit(Some(5000), Some(&wrong), Labels::new())),
        ErrorKind::FailedPrecondition
    );
    let w = cs.writer("errstate", None, None).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        5000,
        "kept after a digest mismatch"
    );
    assert_eq!(w.digest(), d);
    assert_eq!(
        kind(w.commit(Some(5001), Some(&d), Labels::new())),
        ErrorKind::FailedPrecondition
    );
    let w = cs.writer("errstate", None, None).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        5000,
        "kept after a size mismatch"
    );
    assert_eq!(
        kind(w.commit(Some(4999), None, Labels::new())),
        ErrorKind::FailedPrecondition
    );
    let w = cs.writer("errstate", None, None).unwrap();
    assert_eq!(w.commit(Some(5000), Some(&d), Labels::new()).unwrap(), d);
    // The same content again through the same reference: AlreadyExists, then a clean slate.
    let mut w = cs.writer("errstate", None, None).unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
    w.write_all(&data).unwrap();
    w.truncate(0).unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
    assert_eq!(w.digest(), sha(b""));
    w.write_all(&data).unwrap();
    assert_eq!(
        kind(w.commit(Some(5000), Some(&d), Labels::new())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(kind(cs.status("errstate")), ErrorKind::NotFound);
    // No lock leaked by any of the failures.
    cs.writer("errstate", None, None).unwrap().close().unwrap();
    // A writer opened with an expected size rejects a commit of another length.
    let mut w = cs.writer("sized", Some(10), None).unwrap();
    w.write_all(b"12345").unwrap();
    assert_eq!(
        kind(w.commit(None, None, Labels::new())),
        ErrorKind::FailedPrecondition
    );
}

const RESUME_SIZES: [usize; 3] = [1, 4096 + 17, (1 << 20) + 5];
const RESUME_PERCENT: [usize; 5] = [0, 25, 50, 99, 100];

/// Writes `prefix` bytes of `data` under `reference`, closes, reopens and checks the resume
/// point and its digest; returns the resumed writer.
fn resumed(
    cs: &dyn ContentStore,
    reference: &str,
    data: &[u8],
    prefix: usize,
) -> Box<dyn crate::content::Writer> {
    let mut w = cs
        .writer(reference, Some(data.len() as u64), Some(&sha(data)))
        .unwrap();
    w.write_all(&data[..prefix]).unwrap();
    w.close().unwrap();
    let w = cs.writer(reference, None, None).unwrap();
    let st = w.status().unwrap();
    assert_eq!(st.offset, prefix as u64, "{reference}");
    assert_eq!(st.total, Some(data.len() as u64));
    assert_eq!(
        w.digest(),
        sha(&data[..prefix]),
        "{reference}: digest of the prefix"
    );
    w
}

fn each_resume_case(
    cs: &dyn ContentStore,
    tag: &str,
    mut finish: impl FnMut(Box<dyn crate::content::Writer>, &[u8], usize),
) {
    for (si, size) in RESUME_SIZES.into_iter().enumerate() {
        let data = sample(size, 1000 + si as u64 + tag.len() as u64 * 7);
        for pct in RESUME_PERCENT {
            let prefix = size * pct / 100;
            let w = resumed(cs, &format!("{tag}-{size}-{pct}"), &data, prefix);
            finish(w, &data, prefix);
            assert_eq!(helpers::read_blob(cs, &sha(&data)).unwrap(), data);
            cs.delete(&sha(&data)).unwrap();
        }
    }
}

/// Resume, then truncate(0) and write everything again.
pub fn resume_by_rewrite(h: &dyn Harness) {
    let o = h.fresh();
    each_resume_case(o.store(), "rewrite", |mut w, data, _| {
        w.truncate(0).unwrap();
        w.write_all(data).unwrap();
        w.commit(None, None, Labels::new()).unwrap();
    });
}

/// Resume, then write only the rest.
pub fn resume_by_writing_rest(h: &dyn Harness) {
    let o = h.fresh();
    each_resume_case(o.store(), "rest", |mut w, data, prefix| {
        w.write_all(&data[prefix..]).unwrap();
        w.commit(Some(data.len() as u64), Some(&sha(data)), Labels::new())
            .unwrap();
    });
}

/// Resume through `copy` from a plain reader, a seekable reader and a random-access reader.
pub fn resume_by_copy(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let source = crate::memory::MemoryStore::new();
    for mode in 0..3 {
        each_resume_case(cs, &format!("copy{mode}"), |w, data, _| {
            let size = Some(data.len() as u64);
            let d = sha(data);
            match mode {
                0 => helpers::copy(
                    w,
                    Source::Stream(&mut &data[..]),
                    size,
                    Some(&d),
                    Labels::new(),
                ),
                1 => helpers::copy(
                    w,
                    Source::Seekable(&mut Cursor::new(data)),
                    size,
                    Some(&d),
                    Labels::new(),
                ),
                _ => {
                    let sd = helpers::write_blob(
                        &source,
                        "src",
                        &mut &data[..],
                        None,
                        None,
                        Labels::new(),
                    )
                    .unwrap();
                    let r = source.reader_at(&sd).unwrap();
                    helpers::copy(w, Source::At(&*r), size, Some(&d), Labels::new())
                }
            }
            .unwrap();
        });
    }
}

/// A small blob read through a larger window gives a short read, then 0.
pub fn small_blob_large_window(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let data = sample(100, 6);
    let d = put(cs, "small", &data, Labels::new());
    let r = cs.reader_at(&d).unwrap();
    let mut buf = vec![0xAAu8; 1 << 16];
    assert_eq!(r.read_at(&mut buf, 0).unwrap(), 100);
    assert_eq!(&buf[..100], &data[..]);
    assert!(
        buf[100..].iter().all(|b| *b == 0xAA),
        "nothing past the end is touched"
    );
    assert_eq!(r.read_at(&mut buf, 60).unwrap(), 40);
    assert_eq!(&buf[..40], &data[60..]);
    assert_eq!(r.read_at(&mut buf, 100).unwrap(), 0);
    assert_eq!(r.read_at(&mut buf, 1 << 40).unwrap(), 0);
    // A neighbour's bytes never leak in.
    let other = put(cs, "other", &sample(1 << 16, 7), Labels::new());
    assert_ne!(other, d);
    assert_eq!(r.read_at(&mut buf, 0).unwrap(), 100);
}

mod metadata;
pub use metadata::*;
