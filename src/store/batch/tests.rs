use super::*;
use crate::content::Manager;

/// A pull killed while committing, after it linked a sealed download into the blob tree
/// and before its transaction, leaves the ingest with a second name, the blob's own. The
/// next pull adopting that ingest takes it (the bytes are checked again) instead of
/// failing "changed after it was sealed" (seen beside kills in
/// `pulls_and_pushes_beside_every_other_command`, 1 of about 1,700 runs).
#[test]
fn an_ingest_a_dead_commit_published_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let seal = |reference: &str, bytes: &[u8]| {
        let digest = Algorithm::Sha256.digest(bytes);
        let size = bytes.len() as u64;
        let mut w = store
            .store_writer(reference, Some(size), Some(&digest))
            .unwrap();
        std::io::Write::write_all(&mut w, bytes).unwrap();
        w.seal(size, &digest).unwrap()
    };
    let bytes = b"downloaded, sealed, linked by a commit that died";
    let sealed = seal("pull-x", bytes);
    let digest = sealed.digest;
    let target = store.blob_dir().path_for(&digest);
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::hard_link(&sealed.path, &target).unwrap();

    let mut batch = store.batch().unwrap();
    assert!(batch.adopt(&sealed, Labels::new()).unwrap());
    batch.commit().unwrap();
    assert_eq!(store.info(&digest).unwrap().size, bytes.len() as u64);
    let out = store.fsck(&Default::default()).unwrap();
    assert!(out.problems.is_empty(), "{out:?}");

    // A second name elsewhere (another batch's staging link) is taken once the bytes
    // are checked again; bytes changed since the seal are refused.
    let sealed = seal("pull-y", b"sealed, then linked somewhere else");
    fs::hard_link(&sealed.path, dir.path().join("elsewhere")).unwrap();
    let mut batch = store.batch().unwrap();
    assert!(batch.adopt(&sealed, Labels::new()).unwrap());
    drop(batch);
    let sealed = seal("pull-z", b"sealed, then overwritten in place");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&sealed.path)
            .unwrap();
        f.write_all_at(b"S", 0).unwrap();
    }
    let mut batch = store.batch().unwrap();
    let err = batch.adopt(&sealed, Labels::new()).unwrap_err();
    assert!(
        err.to_string().contains("changed after it was sealed"),
        "{err}"
    );
}

/// An ingest a live batch has adopted is complete and taken: a second writer (a pull
/// waiting for the same blob) is refused with `Unavailable` and sees its full length, so
/// it waits for the commit rather than fetching it again; once that batch is gone
/// without committing, the ingest is writable again.
#[test]
fn an_adopted_ingest_is_complete_and_taken_while_its_batch_lives() {
    use crate::content::IngestManager;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = b"a download another pull waits for";
    let digest = Algorithm::Sha256.digest(bytes);
    let size = bytes.len() as u64;
    let mut w = store
        .store_writer("pull-w", Some(size), Some(&digest))
        .unwrap();
    std::io::Write::write_all(&mut w, bytes).unwrap();
    let sealed = w.seal(size, &digest).unwrap();
    let mut batch = store.batch().unwrap();
    assert!(batch.adopt(&sealed, Labels::new()).unwrap());
    let Err(err) = store.store_writer("pull-w", Some(size), Some(&digest)) else {
        panic!("a second writer of an adopted ingest");
    };
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("adopted"), "{err}");
    assert_eq!(store.status("pull-w").unwrap().offset, size);
    drop(batch);
    let w = store
        .store_writer("pull-w", Some(size), Some(&digest))
        .unwrap();
    drop(w);
    // Adopted again and committed: the blob, and the ingest gone.
    let mut batch = store.batch().unwrap();
    assert!(batch.adopt(&sealed, Labels::new()).unwrap());
    batch.commit().unwrap();
    assert_eq!(store.info(&digest).unwrap().size, size);
    assert!(!sealed.path.exists());
}

/// Adopting holds no lock and no descriptor: 300 sealed downloads adopted by one batch
/// leave the process's open files about as they were (tests beside it open a few).
#[test]
fn adoption_holds_no_descriptor_until_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sealed = Vec::new();
    for i in 0..300 {
        let bytes = format!("download {i}").into_bytes();
        let digest = Algorithm::Sha256.digest(&bytes);
        let mut w = store
            .store_writer(
                &format!("pull-{i}"),
                Some(bytes.len() as u64),
                Some(&digest),
            )
            .unwrap();
        std::io::Write::write_all(&mut w, &bytes).unwrap();
        sealed.push(w.seal(bytes.len() as u64, &digest).unwrap());
    }
    let open_files = || fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_files();
    let mut batch = store.batch().unwrap();
    for s in &sealed {
        assert!(batch.adopt(s, Labels::new()).unwrap());
    }
    let during = open_files();
    assert!(
        during < before + 64,
        "{during} descriptors open after 300 adoptions, {before} before"
    );
    batch.commit().unwrap();
    for s in &sealed {
        assert!(store.info(&s.digest).is_ok());
        assert!(
            !s.path.exists(),
            "the ingest's name is gone after the commit"
        );
    }
    let out = store.fsck(&Default::default()).unwrap();
    assert!(out.problems.is_empty(), "{out:?}");
}
