//! Model-based checking: one operation type, applied to a store under test and to the
//! in-memory model side by side; results and error kinds must agree at every step. The
//! property tests generate operations with proptest; the fuzz target decodes them from bytes
//! ([`decode`]).

use std::io::Write;

use crate::content::{ContentStore, Info, Labels, Status};
use crate::digest::{Algorithm, Digest};
use crate::error::{ErrorKind, Result};
use crate::helpers;

/// The contents operations pick from (by index), so that sequences collide on purpose.
pub const CONTENTS: usize = 6;
/// The ingest references operations pick from.
pub const REFS: usize = 3;
/// The filters `Walk` and `ListStatuses` pick from (one is malformed on purpose).
pub const FILTERS: [&str; 7] = [
    "",
    "labels.k==a",
    "labels.k!=a",
    "labels.k~=^[ab]$",
    "size==0",
    "ref~=1",
    "labels.k==",
];

/// Bytes of content `i`.
pub fn content(i: usize) -> Vec<u8> {
    let i = i % CONTENTS;
    format!("content {i} ").repeat(i * 37).into_bytes()
}

fn digest_of(i: usize) -> Digest {
    Algorithm::Sha256.digest(&content(i))
}

/// One operation on a content store. `reference` and `content` fields index [`REFS`] and
/// [`CONTENTS`]; `label` and `value` pick label value `a` (0) or `b` (1).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write a whole blob through an ingest and commit it, with or without the digest.
    Put {
        reference: usize,
        content: usize,
        tell_digest: bool,
        label: Option<u8>,
    },
    /// Write the first `upto` parts in 8 of a content, then close (a resumable ingest).
    Partial {
        reference: usize,
        content: usize,
        upto: u8,
    },
    /// Resume an ingest with `copy` of the whole content and commit it.
    Resume { reference: usize, content: usize },
    /// Commit an ingest claiming the wrong size.
    WrongSize { reference: usize, content: usize },
    /// Abort an ingest.
    Abort { reference: usize },
    /// Read a blob's info.
    Info { content: usize },
    /// Read a blob back whole.
    Read { content: usize },
    /// Delete a blob.
    Delete { content: usize },
    /// Set (Some) or remove (None) label `k`.
    Label { content: usize, value: Option<u8> },
    /// Walk with one of [`FILTERS`].
    Walk { filter: usize },
    /// List ingests with one of [`FILTERS`].
    ListStatuses { filter: usize },
    /// Close and reopen the store.
    Reopen,
}

/// Decodes operations from arbitrary bytes (for the fuzz target): never fails, never panics.
pub fn decode(mut bytes: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    while let [tag, a, b, rest @ ..] = bytes {
        bytes = rest;
        let (r, c) = (usize::from(*a) % REFS, usize::from(*b) % CONTENTS);
        ops.push(match tag % 12 {
            0 => Op::Put {
                reference: r,
                content: c,
                tell_digest: a & 0x80 != 0,
                label: (b & 0x40 != 0).then_some(b & 1),
            },
            1 => Op::Partial {
                reference: r,
                content: c,
                upto: a % 9,
            },
            2 => Op::Resume {
                reference: r,
                content: c,
            },
            3 => Op::WrongSize {
                reference: r,
                content: c,
            },
            4 => Op::Abort { reference: r },
            5 => Op::Info { content: c },
            6 => Op::Read { content: c },
            7 => Op::Delete { content: c },
            8 => Op::Label {
                content: c,
                value: (a & 1 == 0).then_some(b & 1),
            },
            9 => Op::Walk {
                filter: usize::from(*a) % FILTERS.len(),
            },
            10 => Op::ListStatuses {
                filter: usize::from(*a) % FILTERS.len(),
            },
            _ => Op::Reopen,
        });
    }
    ops
}

/// What an operation observed, with times left out (the two stores keep their own clocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Success with nothing to compare.
    Done,
    /// A digest.
    Digest(Digest),
    /// Blob records: (digest, size, labels).
    Infos(Vec<(Digest, u64, Labels)>),
    /// Ingest records: (reference, offset, total, expected).
    Statuses(Vec<(String, u64, Option<u64>, Option<Digest>)>),
    /// Bytes read.
    Bytes(Vec<u8>),
    /// An error, by kind.
    Failed(ErrorKind),
}

fn infos(v: Vec<Info>) -> Seen {
    Seen::Infos(
        v.into_iter()
            .map(|i| (i.digest, i.size, i.labels))
            .collect(),
    )
}

fn statuses(v: Vec<Status>) -> Seen {
    Seen::Statuses(
        v.into_iter()
            .map(|s| (s.reference, s.offset, s.total, s.expected))
            .collect(),
    )
}

fn seen<T>(r: Result<T>, f: impl FnOnce(T) -> Seen) -> Seen {
    match r {
        Ok(v) => f(v),
        Err(e) => Seen::Failed(e.kind()),
    }
}

fn label(v: Option<u8>) -> Labels {
    v.map(|v| Labels::from([("k".to_owned(), if v == 0 { "a" } else { "b" }.to_owned())]))
        .unwrap_or_default()
}

/// Applies `op` to `cs` (a `Reopen` is the caller's business: it returns `Done`).
pub fn apply(cs: &dyn ContentStore, op: &Op) -> Seen {
    let r = |i: &usize| format!("ref-{i}");
    match op {
        Op::Put {
            reference,
            content: c,
            tell_digest,
            label: l,
        } => {
            let data = content(*c);
            let d = digest_of(*c);
            let exp = tell_digest.then_some(&d);
            seen(
                cs.writer(&r(reference), None, exp).and_then(|mut w| {
                    w.write_all(&data)
                        .map_err(|e| crate::error::Error::from_io(e, "write", "ingest"))?;
                    w.commit(Some(data.len() as u64), exp, label(*l))
                }),
                Seen::Digest,
            )
        }
        Op::Partial {
            reference,
            content: c,
            upto,
        } => {
            let data = content(*c);
            let n = data.len() * usize::from(*upto) / 8;
            seen(
                cs.writer(&r(reference), Some(data.len() as u64), Some(&digest_of(*c)))
                    .and_then(|mut w| {
                        let off = usize::try_from(w.status()?.offset).unwrap_or(usize::MAX);
                        if off < n {
                            w.write_all(&data[off..n])
                                .map_err(|e| crate::error::Error::from_io(e, "write", "ingest"))?;
                        }
                        w.close()
                    }),
                |()| Seen::Done,
            )
        }
        Op::Resume {
            reference,
            content: c,
        } => {
            let data = content(*c);
            let d = digest_of(*c);
            seen(
                cs.writer(&r(reference), None, None).and_then(|w| {
                    helpers::copy(
                        w,
                        helpers::Source::Stream(&mut &data[..]),
                        Some(data.len() as u64),
                        Some(&d),
                        Labels::new(),
                    )
                }),
                |c| Seen::Digest(c.digest),
            )
        }
        Op::WrongSize {
            reference,
            content: c,
        } => {
            let data = content(*c);
            seen(
                cs.writer(&r(reference), None, None).and_then(|mut w| {
                    w.truncate(0)?;
                    w.write_all(&data)
                        .map_err(|e| crate::error::Error::from_io(e, "write", "ingest"))?;
                    w.commit(Some(data.len() as u64 + 1), None, Labels::new())
                }),
                Seen::Digest,
            )
        }
        Op::Abort { reference } => seen(cs.abort(&r(reference)), |()| Seen::Done),
        Op::Info { content: c } => seen(cs.info(&digest_of(*c)), |i| infos(vec![i])),
        Op::Read { content: c } => seen(helpers::read_blob(cs, &digest_of(*c)), Seen::Bytes),
        Op::Delete { content: c } => seen(cs.delete(&digest_of(*c)), |()| Seen::Done),
        Op::Label { content: c, value } => {
            let d = digest_of(*c);
            seen(
                cs.info(&d).and_then(|mut i| {
                    i.labels = label(*value);
                    cs.update(&i, &["labels.k"])
                }),
                |i| infos(vec![i]),
            )
        }
        Op::Walk { filter } => {
            let mut out = Vec::new();
            let r = cs.walk(
                &mut |i| {
                    out.push(i.clone());
                    Ok(())
                },
                &[FILTERS[*filter]],
            );
            seen(r, |()| infos(out))
        }
        Op::ListStatuses { filter } => seen(cs.list_statuses(&[FILTERS[*filter]]), statuses),
        Op::Reopen => Seen::Done,
    }
}

/// The whole visible state, for comparing after a sequence and after a reopen.
pub fn state(cs: &dyn ContentStore) -> (Seen, Seen) {
    (
        apply(cs, &Op::Walk { filter: 0 }),
        apply(cs, &Op::ListStatuses { filter: 0 }),
    )
}
