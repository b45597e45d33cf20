//! Several processes on one root at once. The children are this test binary run again with
//! `OCISTORE_CHILD_ROOT` set, so no extra program is needed.

use std::path::Path;
use std::process::Command;

use ocistore::{Algorithm, Labels, Manager, Store, helpers};

const PER_PROCESS: usize = 500;

fn blob(worker: usize, i: usize) -> Vec<u8> {
    format!("worker {worker} blob {i} ")
        .repeat(1 + i % 7)
        .into_bytes()
}

fn shared(i: usize) -> Vec<u8> {
    format!("shared blob {i}").into_bytes()
}

/// The child's work: its own 500 blobs, plus a few shared with the other child.
#[test]
fn child_worker() {
    let (Ok(root), Ok(id)) = (
        std::env::var("OCISTORE_CHILD_ROOT"),
        std::env::var("OCISTORE_CHILD_ID"),
    ) else {
        return; // Not a child: nothing to do.
    };
    let id: usize = id.parse().unwrap();
    let store = Store::open(&root).unwrap();
    for i in 0..PER_PROCESS {
        let data = blob(id, i);
        let d = helpers::write_blob(
            &store,
            &format!("w{id}-{i}"),
            &mut &data[..],
            None,
            None,
            Labels::new(),
        )
        .unwrap();
        assert_eq!(d, Algorithm::Sha256.digest(&data));
        if i % 25 == 0 {
            let s = shared(i);
            // Same reference in both processes: one waits for the other (open_writer retries).
            helpers::write_blob(
                &store,
                &format!("shared-{i}"),
                &mut &s[..],
                None,
                None,
                Labels::new(),
            )
            .unwrap();
        }
    }
}

fn spawn_child(root: &Path, id: usize) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
        .env("OCISTORE_CHILD_ROOT", root)
        .env("OCISTORE_CHILD_ID", id.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_processes_put_500_blobs_each() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(Store::open(&root).unwrap());
    let children: Vec<_> = (0..2).map(|id| spawn_child(&root, id)).collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a child failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = Store::open(&root).unwrap();
    let mut count = 0;
    store
        .walk(
            &mut |_| {
                count += 1;
                Ok(())
            },
            &[],
        )
        .unwrap();
    let mut expected = 0;
    for id in 0..2 {
        for i in 0..PER_PROCESS {
            let d = Algorithm::Sha256.digest(&blob(id, i));
            assert_eq!(
                helpers::read_blob_verified(&store, &d).unwrap(),
                blob(id, i)
            );
            expected += 1;
        }
    }
    for i in (0..PER_PROCESS).step_by(25) {
        let d = Algorithm::Sha256.digest(&shared(i));
        assert!(store.info(&d).is_ok());
        expected += 1;
    }
    assert_eq!(count, expected);
    assert!(
        ocistore::IngestManager::list_statuses(&store, &[])
            .unwrap()
            .is_empty()
    );
}
