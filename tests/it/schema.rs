//! Schema versions: the committed fixture of every shipped version opens, and a store written
//! by a newer version is refused with both versions named.

use std::io::Write;
use std::path::{Path, PathBuf};

use ocistore::{Algorithm, ErrorKind, IngestManager, Ingester, Labels, Manager, Store, helpers};

use crate::cmd;

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}/store"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mut p = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            p.set_readonly(false);
            std::fs::set_permissions(&target, p).unwrap();
        }
    }
}

/// What the v1 fixture holds: three blobs (one per algorithm) with labels, one ingest.
fn fixture_blobs() -> Vec<(Algorithm, &'static [u8], Labels)> {
    let l = |k: &str, v: &str| Labels::from([(k.to_owned(), v.to_owned())]);
    vec![
        (
            Algorithm::Sha256,
            b"fixture sha256".as_slice(),
            l("kind", "plain"),
        ),
        (
            Algorithm::Sha512,
            b"fixture sha512".as_slice(),
            l("containerd.io/gc.root", "2024"),
        ),
        (
            Algorithm::Blake3,
            b"fixture blake3".as_slice(),
            Labels::new(),
        ),
    ]
}

/// Writes [`fixture_blobs`] into `store`.
fn put_fixture_blobs(store: &Store) {
    for (alg, bytes, labels) in fixture_blobs() {
        let d = alg.digest(bytes);
        helpers::write_blob(
            store,
            &format!("fx-{alg}"),
            &mut &bytes[..],
            None,
            Some(&d),
            labels,
        )
        .unwrap();
    }
}

#[test]
#[ignore = "run by hand to regenerate tests/fixtures/v1 (only while v1 is the current schema)"]
fn regenerate_v1_fixture() {
    let root = fixture(1);
    let _ = std::fs::remove_dir_all(&root);
    let store = Store::open(&root).unwrap();
    put_fixture_blobs(&store);
    let mut w = store.writer("fixture-ingest", Some(10), None).unwrap();
    w.write_all(b"12345").unwrap();
    w.close().unwrap();
}

/// What the v2 and later fixtures hold: the v1 blobs, the sample image under its names, and
/// an ingest in progress (5 of 10 bytes).
fn put_fixture_content(store: &Store) {
    put_fixture_blobs(store);
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    store
        .import_path(&sample, ocistore::oci::import::Options::default())
        .unwrap();
    let mut w = store.writer("fixture-ingest", Some(10), None).unwrap();
    w.write_all(b"12345").unwrap();
    w.close().unwrap();
}

/// The v2 fixture: the v1 content, the sample image under its names, and an ingest in
/// progress in v2's layout (`ingest/<id>/data` beside `ingest/<id>/lock`).
#[test]
#[ignore = "run by hand to regenerate tests/fixtures/v2 (only while v2 is the current schema)"]
fn regenerate_v2_fixture() {
    let root = fixture(2);
    let _ = std::fs::remove_dir_all(&root);
    let store = Store::open(&root).unwrap();
    put_fixture_content(&store);
}

/// The v3 fixture: the v2 content (fixture blobs, the sample image under its names, an
/// ingest in progress), in v3's flat ingest layout, before last-use records existed.
#[test]
#[ignore = "run by hand to regenerate tests/fixtures/v3 (only while v3 is the current schema)"]
fn regenerate_v3_fixture() {
    let root = fixture(3);
    let _ = std::fs::remove_dir_all(&root);
    let store = Store::open(&root).unwrap();
    assert_eq!(store.schema_version().unwrap(), 3);
    put_fixture_content(&store);
}

#[test]
fn v1_fixture_opens_and_reads() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture(1), tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    assert!(store.schema_version().unwrap() >= 1);
    for (alg, bytes, labels) in fixture_blobs() {
        let d = alg.digest(bytes);
        let info = store.info(&d).unwrap();
        assert_eq!((info.size, &info.labels), (bytes.len() as u64, &labels));
        assert_eq!(helpers::read_blob_verified(&store, &d).unwrap(), bytes);
    }
    let st = store.status("fixture-ingest").unwrap();
    assert_eq!((st.offset, st.total), (5, Some(10)));
    let mut w = store.writer("fixture-ingest", None, None).unwrap();
    w.write_all(b"67890").unwrap();
    w.commit(None, None, Labels::new()).unwrap();
}

/// v2 → v3 moves the in-progress ingest to `ingest/<id>.data`; everything else reads as before.
#[test]
fn v2_fixture_opens_migrates_its_ingest_and_reads() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture(2), tmp.path());
    let old_dir = tmp.path().join("ingest/9b83af6a5c796e474da9fa41fc56a385");
    assert!(old_dir.join("data").exists());
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), store_version());
    assert!(!old_dir.exists(), "the old ingest directory is gone");
    assert_eq!(
        std::fs::read(
            tmp.path()
                .join("ingest/9b83af6a5c796e474da9fa41fc56a385.data")
        )
        .unwrap(),
        b"12345"
    );
    for (alg, bytes, labels) in fixture_blobs() {
        let d = alg.digest(bytes);
        assert_eq!(store.info(&d).unwrap().labels, labels);
        assert_eq!(helpers::read_blob_verified(&store, &d).unwrap(), bytes);
    }
    let image = store.image("docker.io/library/hello:1.0").unwrap();
    let target = store
        .info(&ocistore::Digest::parse(image.target.digest().as_ref()).unwrap())
        .unwrap();
    assert_eq!(target.size, image.target.size());
    let st = store.status("fixture-ingest").unwrap();
    assert_eq!((st.offset, st.total), (5, Some(10)));
    let mut w = store.writer("fixture-ingest", None, None).unwrap();
    w.write_all(b"67890").unwrap();
    let d = w.commit(None, None, Labels::new()).unwrap();
    assert_eq!(d, Algorithm::Sha256.digest(b"1234567890"));
    assert!(store.list_statuses(&[]).unwrap().is_empty());
    // Nothing of the old layout is left for gc to find.
    let out = store.gc(&ocistore::gc::Options::default()).unwrap();
    assert!(out.removed.iter().all(|r| r.kind != "debris"), "{out:?}");
}

/// v3 → v4 adds the `uses` table; everything reads as before, and uses are recorded.
#[test]
fn v3_fixture_opens_gains_last_use_and_reads() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture(3), tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), store_version());
    for (alg, bytes, labels) in fixture_blobs() {
        let d = alg.digest(bytes);
        assert_eq!(store.info(&d).unwrap().labels, labels);
        assert_eq!(helpers::read_blob_verified(&store, &d).unwrap(), bytes);
    }
    let name = ocistore::Used::image("hello:1.0").unwrap();
    assert_eq!(store.last_use(&name).unwrap(), None, "nothing backfilled");
    let at = std::time::SystemTime::now();
    store
        .record_use_at(std::slice::from_ref(&name), at)
        .unwrap();
    assert_eq!(store.last_use(&name).unwrap().unwrap().count, 1);
    let st = store.status("fixture-ingest").unwrap();
    assert_eq!((st.offset, st.total), (5, Some(10)));
    // A prune with a budget already met removes nothing.
    let out = store
        .prune(&ocistore::prune::Options {
            max_used: Some(u64::MAX),
            ..Default::default()
        })
        .unwrap();
    assert!(
        out.removed_images.is_empty() && out.removed_blobs == 0,
        "{out:?}"
    );
    assert!(store.image("hello:1.0").is_ok());
}

/// A v2 ingest still written by an older ocistore (its lock held) stops the migration, which
/// moves nothing; once the writer is gone, the store opens.
#[test]
fn migration_waits_for_an_old_writer() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture(2), tmp.path());
    let lock = tmp
        .path()
        .join("ingest/9b83af6a5c796e474da9fa41fc56a385/lock");
    let held = std::fs::File::open(&lock).unwrap();
    held.try_lock().unwrap();
    let err = Store::open(tmp.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StoreInUse, "{err}");
    assert!(err.to_string().contains("older ocistore"), "{err}");
    assert!(lock.with_file_name("data").exists(), "nothing moved");
    drop(held);
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.status("fixture-ingest").unwrap().offset, 5);
}

/// An older ocistore with the store open (here: another process holding a lock on
/// `meta.redb`, as redb's processes do, but not this version's layout lock) would keep
/// writing ingests at the old paths: the migration refuses, naming it, and moves nothing.
#[test]
fn migration_refuses_while_an_older_process_has_the_store_open() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture(2), tmp.path());
    let mut old = std::process::Command::new("flock")
        // --no-fork: the lock holder is the process we kill, not a child left behind.
        .args(["--shared", "--no-fork"])
        .arg(tmp.path().join("meta.redb"))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    // Until the child holds its lock (an exclusive try fails then). Opening before that
    // would migrate the store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let meta = std::fs::File::open(tmp.path().join("meta.redb")).unwrap();
    while meta.try_lock().is_ok() {
        meta.unlock().unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the child never locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(meta);
    let err = Store::open(tmp.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StoreInUse, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&old.id().to_string()) && msg.contains("older"),
        "{msg}"
    );
    assert!(
        tmp.path()
            .join("ingest/9b83af6a5c796e474da9fa41fc56a385/data")
            .exists(),
        "nothing moved"
    );
    old.kill().unwrap();
    old.wait().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), store_version());
    assert_eq!(store.status("fixture-ingest").unwrap().offset, 5);
}

#[test]
fn newer_schema_is_refused() {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(Store::open(&root).unwrap());
    {
        let mut b = redb::Builder::new();
        b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
        let db = b.open(root.join("meta.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", &999u32.to_le_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&root).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IncompatibleSchema);
    let msg = err.to_string();
    assert!(
        msg.contains("999") && msg.contains(&format!("version {}", store_version())),
        "{msg}"
    );
    let out = cmd::ocistore(&root, &["content", "ls"]).code(1).output();
    assert!(String::from_utf8_lossy(&out.stderr).contains("999"));
}

fn store_version() -> u32 {
    let tmp = tempfile::tempdir().unwrap();
    Store::open(tmp.path()).unwrap().schema_version().unwrap()
}

#[test]
fn a_store_held_exclusively_names_the_holder_after_a_bounded_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(Store::open(&root).unwrap());
    // Another program holding the database in redb's exclusive mode (here: this process).
    let exclusive = redb::Database::open(root.join("meta.redb")).unwrap();
    let started = std::time::Instant::now();
    let err = ocistore::OpenOptions::new()
        .wait(std::time::Duration::from_millis(300))
        .open(&root)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StoreInUse);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "it waited"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "and no longer"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&std::process::id().to_string()),
        "names the holder: {msg}"
    );
    drop(exclusive);
    Store::open(&root).unwrap();
}
