//! The checks of labels, persistence, other algorithms, delete, abort, invalid arguments
//! and the helpers over the content traits.

use std::io::{Read, Write};
use std::time::Duration;

use crate::content::{Labels, MAX_LABEL_SIZE};
use crate::digest::Algorithm;
use crate::error::ErrorKind;
use crate::helpers;

use super::Harness;
use super::{kind, labels, put, sample, sha};

/// containerd's label update semantics.
pub fn label_semantics(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let d = put(cs, "labels", b"labelled", labels(&[("a", "1"), ("b", "2")]));
    let mut info = cs.info(&d).unwrap();
    assert_eq!(info.labels, labels(&[("a", "1"), ("b", "2")]));
    let created = info.created_at;
    std::thread::sleep(Duration::from_millis(5));
    // No paths: replace all.
    info.labels = labels(&[("c", "3")]);
    let got = cs.update(&info, &[]).unwrap();
    assert_eq!(got.labels, labels(&[("c", "3")]));
    assert!(got.updated_at > created);
    assert_eq!(got.created_at, created);
    // labels.<key>: set one, leave the rest.
    info.labels = labels(&[("d", "4"), ("c", "ignored")]);
    let got = cs.update(&info, &["labels.d"]).unwrap();
    assert_eq!(got.labels, labels(&[("c", "3"), ("d", "4")]));
    // Absent or empty in info: removed.
    info.labels = labels(&[("d", "")]);
    let got = cs.update(&info, &["labels.c", "labels.d"]).unwrap();
    assert!(got.labels.is_empty());
    // "labels": replace all.
    info.labels = labels(&[("x", "y")]);
    assert_eq!(
        cs.update(&info, &["labels"]).unwrap().labels,
        labels(&[("x", "y")])
    );
    assert_eq!(cs.info(&d).unwrap().labels, labels(&[("x", "y")]));
    // Other paths are invalid and change nothing.
    assert_eq!(
        kind(cs.update(&info, &["size"])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(cs.update(&info, &["digest"])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(cs.info(&d).unwrap().labels, labels(&[("x", "y")]));
    // Unknown digest.
    info.digest = sha(b"nope");
    assert_eq!(kind(cs.update(&info, &[])), ErrorKind::NotFound);
}

/// Key plus value may be 4096 bytes, not more: on commit and on update.
pub fn label_limits(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let fits = labels(&[("k", &"v".repeat(MAX_LABEL_SIZE - 1))]);
    let over = labels(&[("k", &"v".repeat(MAX_LABEL_SIZE))]);
    let d = put(cs, "fits", b"fits", fits.clone());
    assert_eq!(cs.info(&d).unwrap().labels, fits);
    let mut w = cs.writer("over", None, None).unwrap();
    w.write_all(b"over").unwrap();
    assert_eq!(
        kind(w.commit(None, None, over.clone())),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        cs.status("over").unwrap().offset,
        4,
        "a refused commit keeps the ingest"
    );
    let mut info = cs.info(&d).unwrap();
    info.labels = over;
    assert_eq!(kind(cs.update(&info, &[])), ErrorKind::InvalidArgument);
    assert_eq!(
        kind(cs.update(&info, &["labels.k"])),
        ErrorKind::InvalidArgument
    );
    info.labels = labels(&[("", "empty key")]);
    assert_eq!(kind(cs.update(&info, &[])), ErrorKind::InvalidArgument);
    assert_eq!(cs.info(&d).unwrap().labels, fits);
}

/// Blobs, labels, times and ingests survive closing and reopening the store.
pub fn reopen_persistence(h: &dyn Harness) {
    let mut o = h.fresh();
    let data = sample(70_000, 8);
    let d = put(o.store(), "persist", &data, labels(&[("keep", "me")]));
    let before = o.store().info(&d).unwrap();
    let mut w = o.store().writer("half", Some(100), None).unwrap();
    w.write_all(&[7u8; 40]).unwrap();
    w.close().unwrap();
    let st_before = o.store().status("half").unwrap();
    o.reopen();
    let cs = o.store();
    assert_eq!(cs.info(&d).unwrap(), before);
    assert_eq!(helpers::read_blob(cs, &d).unwrap(), data);
    let st = cs.status("half").unwrap();
    assert_eq!(
        (st.offset, st.total, st.started_at),
        (40, Some(100), st_before.started_at)
    );
    let mut w = cs.writer("half", None, None).unwrap();
    assert_eq!(w.digest(), sha(&[7u8; 40]));
    w.write_all(&[7u8; 60]).unwrap();
    w.commit(None, None, Labels::new()).unwrap();
    assert_eq!(cs.info(&sha(&[7u8; 100])).unwrap().size, 100);
}

/// sha512 and blake3 blobs commit, read back and are listed under their own digests.
pub fn other_algorithms(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let data = sample(300_000, 9);
    for alg in [Algorithm::Sha512, Algorithm::Blake3] {
        let d = alg.digest(&data);
        let mut w = cs.writer(&format!("alg-{alg}"), None, Some(&d)).unwrap();
        assert_eq!(w.digest().algorithm(), alg);
        w.write_all(&data).unwrap();
        assert_eq!(w.commit(None, None, Labels::new()).unwrap(), d);
        assert_eq!(cs.info(&d).unwrap().size, data.len() as u64);
        assert_eq!(helpers::read_blob(cs, &d).unwrap(), data);
    }
    // A sha256 writer asked at commit for another algorithm's digest re-hashes.
    let mut w = cs.writer("late-alg", None, None).unwrap();
    w.write_all(b"late").unwrap();
    let d = Algorithm::Blake3.digest(b"late");
    assert_eq!(w.commit(None, Some(&d), Labels::new()).unwrap(), d);
    let mut seen = Vec::new();
    cs.walk(
        &mut |i| {
            seen.push(i.digest.algorithm());
            Ok(())
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        seen,
        vec![Algorithm::Blake3, Algorithm::Blake3, Algorithm::Sha512]
    );
}

/// Delete: NotFound when absent, gone afterwards, open readers keep reading.
pub fn delete_semantics(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let data = sample(200_000, 10);
    let d = put(cs, "del", &data, labels(&[("gone", "soon")]));
    let r = cs.reader_at(&d).unwrap();
    cs.delete(&d).unwrap();
    assert_eq!(kind(cs.info(&d)), ErrorKind::NotFound);
    assert_eq!(kind(cs.reader_at(&d).map(|_| ())), ErrorKind::NotFound);
    assert_eq!(kind(cs.delete(&d)), ErrorKind::NotFound);
    let mut back = vec![0u8; data.len()];
    assert_eq!(r.read_at(&mut back, 0).unwrap(), data.len());
    assert_eq!(
        back, data,
        "a reader opened before the delete keeps reading"
    );
    let mut n = 0;
    cs.walk(
        &mut |_| {
            n += 1;
            Ok(())
        },
        &["labels.gone==soon"],
    )
    .unwrap();
    assert_eq!(n, 0, "the label index forgets deleted blobs");
    // The same content can come back.
    assert_eq!(put(cs, "del", &data, Labels::new()), d);
}

/// Abort: NotFound when absent; the ingest and its bytes go.
pub fn abort_semantics(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    assert_eq!(kind(cs.abort("none")), ErrorKind::NotFound);
    let mut w = cs.writer("ab", None, None).unwrap();
    w.write_all(b"0123456789").unwrap();
    w.close().unwrap();
    cs.abort("ab").unwrap();
    assert_eq!(kind(cs.status("ab")), ErrorKind::NotFound);
    assert_eq!(kind(cs.abort("ab")), ErrorKind::NotFound);
    let w = cs.writer("ab", None, None).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        0,
        "an aborted ingest starts afresh"
    );
}

/// Malformed requests are InvalidArgument and change nothing.
pub fn invalid_arguments(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    assert_eq!(kind(cs.writer("", None, None)), ErrorKind::InvalidArgument);
    assert_eq!(
        kind(cs.writer(
            &"r".repeat(crate::content::MAX_REFERENCE_LEN + 1),
            None,
            None
        )),
        ErrorKind::InvalidArgument
    );
    let mut w = cs.writer("trunc", None, None).unwrap();
    w.write_all(b"abc").unwrap();
    assert_eq!(kind(w.truncate(4)), ErrorKind::InvalidArgument);
    w.truncate(1).unwrap();
    assert_eq!(w.digest(), sha(b"a"));
    assert_eq!(w.status().unwrap().offset, 1);
    w.write_all(b"xyz").unwrap();
    assert_eq!(w.commit(None, None, Labels::new()).unwrap(), sha(b"axyz"));
    assert_eq!(
        kind(crate::digest::Digest::parse("sha256:nothex")),
        ErrorKind::InvalidArgument
    );
}

/// write_blob, read_blob, copy and open_writer over the traits.
pub fn helper_semantics(h: &dyn Harness) {
    struct Untouchable;
    impl Read for Untouchable {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("write_blob read a reader whose digest is already committed")
        }
    }
    let o = h.fresh();
    let cs = o.store();
    let data = sample(9000, 11);
    let d =
        helpers::write_blob(cs, "wb", &mut &data[..], None, None, labels(&[("l", "v")])).unwrap();
    assert_eq!(d, sha(&data));
    assert_eq!(cs.info(&d).unwrap().labels, labels(&[("l", "v")]));
    assert_eq!(
        helpers::write_blob(cs, "wb2", &mut Untouchable, None, Some(&d), Labels::new()).unwrap(),
        d
    );
    // Without an expected digest, existing content is still success.
    assert_eq!(
        helpers::write_blob(cs, "wb3", &mut &data[..], None, None, Labels::new()).unwrap(),
        d
    );
    assert!(cs.list_statuses(&[]).unwrap().is_empty());
    // A wrong expected digest is refused and the ingest stays for a retry.
    let wrong = sha(b"wrong");
    assert_eq!(
        kind(helpers::write_blob(
            cs,
            "wb4",
            &mut &b"abc"[..],
            None,
            Some(&wrong),
            Labels::new()
        )),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(cs.status("wb4").unwrap().offset, 3);
    cs.abort("wb4").unwrap();
    // open_writer waits for a holder that lets go.
    let held = cs.writer("wait", None, None).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(held);
        });
        let w = helpers::open_writer(cs, "wait", None, None).unwrap();
        w.close().unwrap();
    });
    // Verified reads.
    assert_eq!(helpers::read_blob_verified(cs, &d).unwrap(), data);
    let mut sink = Vec::new();
    assert_eq!(
        helpers::copy_blob_to(cs, &d, &mut sink).unwrap(),
        data.len() as u64
    );
    assert_eq!(sink, data);
}
