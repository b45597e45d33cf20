//! Many processes on one store: N processes (16 by default, `OCISTORE_STRESS_PROCS`) do random
//! operations on one root at once for a bounded time (`OCISTORE_STRESS_SECS`, default 4 s):
//! puts of shared and distinct content, the same ingest reference from several processes,
//! tags, deletes, leases and gc. Afterwards the store must be exactly what a serial model of
//! the successful operations predicts.
//!
//! The workload is built so that the serial outcome does not depend on the interleaving:
//! each process owns its distinct content and its tags; shared content is only ever put;
//! every put carries `containerd.io/gc.root`, so gc may not remove it; content put under a
//! lease (without the root label) must be readable while the lease lasts, and is left out of
//! the exact comparison once its lease is gone (gc may or may not have taken it by then).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocistore::gc::Options;
use ocistore::names::descriptor;
use ocistore::{Algorithm, Digest, ErrorKind, Labels, Manager, Resource, Store, helpers};

fn rooted() -> Labels {
    Labels::from([("containerd.io/gc.root".to_owned(), "stress".to_owned())])
}

fn distinct(worker: usize, i: u64) -> Vec<u8> {
    format!("worker {worker} item {i} ")
        .repeat(1 + (i % 13) as usize)
        .into_bytes()
}

fn shared(k: u64) -> Vec<u8> {
    format!("shared content {k}").repeat(50).into_bytes()
}

#[test]
fn stress_child() {
    let (Ok(root), Ok(id), Ok(secs)) = (
        std::env::var("OCISTORE_STRESS_ROOT"),
        std::env::var("OCISTORE_STRESS_ID"),
        std::env::var("OCISTORE_STRESS_SECS"),
    ) else {
        return;
    };
    let id: usize = id.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
    let store = Store::open(&root).unwrap();
    let mut journal = std::fs::File::create(format!("{root}.{id}.journal")).unwrap();
    let mut x = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut step = 0u64;
    while Instant::now() < deadline {
        step += 1;
        match rnd(10) {
            0..=2 => {
                let i = rnd(40);
                let data = distinct(id, i);
                let d = helpers::write_blob(
                    &store,
                    &format!("p{id}-{step}"),
                    &mut &data[..],
                    None,
                    None,
                    rooted(),
                )
                .unwrap();
                // write_blob on existing content keeps its labels; re-label so the root holds.
                let mut info = store.info(&d).unwrap();
                info.labels = rooted();
                store.update(&info, &[]).unwrap();
                writeln!(journal, "put {d}").unwrap();
            }
            3 => {
                let i = rnd(40);
                let d = Algorithm::Sha256.digest(&distinct(id, i));
                match store.delete(&d) {
                    Ok(()) => writeln!(journal, "del {d}").unwrap(),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        writeln!(journal, "del {d}").unwrap()
                    }
                    Err(e) => panic!("delete: {e}"),
                }
            }
            4 | 5 => {
                // The same reference from several processes: open_writer waits out the holder.
                let k = rnd(8);
                let data = shared(k);
                let d = Algorithm::Sha256.digest(&data);
                let w = match helpers::open_writer(&store, &format!("shared-ref-{k}"), None, None) {
                    Ok(w) => w,
                    Err(e) => panic!("shared ref {k} stayed locked: {e}"),
                };
                helpers::copy(
                    w,
                    helpers::Source::Stream(&mut &data[..]),
                    Some(data.len() as u64),
                    Some(&d),
                    rooted(),
                )
                .unwrap();
                writeln!(journal, "shared {d}").unwrap();
            }
            6 => {
                let d = Algorithm::Sha256.digest(&distinct(id, rnd(40)));
                let tag = format!("stress/w{id}:t{}", rnd(5));
                if store.info(&d).is_ok() {
                    // The content is ours and only we delete it: it is still there.
                    store
                        .put_image(
                            &tag,
                            descriptor("application/octet-stream", &d, 0).unwrap(),
                            None,
                        )
                        .unwrap();
                    writeln!(journal, "tag {tag} {d}").unwrap();
                }
            }
            7 => {
                let tag = format!("stress/w{id}:t{}", rnd(5));
                match store.delete_image(&tag) {
                    Ok(()) => writeln!(journal, "untag {tag}").unwrap(),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        writeln!(journal, "untag {tag}").unwrap()
                    }
                    Err(e) => panic!("untag: {e}"),
                }
            }
            8 => {
                let lease = format!("lease-{id}-{step}");
                store.create_lease(&lease, None, Labels::new()).unwrap();
                let data = format!("leased {id} {step}").into_bytes();
                let d = Algorithm::Sha256.digest(&data);
                store
                    .add_lease_resource(&lease, &Resource::Content(d))
                    .unwrap();
                helpers::write_blob(
                    &store,
                    &format!("l{id}-{step}"),
                    &mut &data[..],
                    None,
                    Some(&d),
                    Labels::new(),
                )
                .unwrap();
                std::thread::sleep(Duration::from_millis(rnd(20)));
                assert_eq!(
                    helpers::read_blob(&store, &d).unwrap(),
                    data,
                    "leased content vanished"
                );
                store.delete_lease(&lease).unwrap();
                writeln!(journal, "leased {d}").unwrap();
            }
            _ => {
                store.gc(&Options::default()).unwrap();
            }
        }
    }
    journal.sync_all().unwrap();
}

#[test]
fn many_processes_agree_with_a_serial_model() {
    let procs: usize = std::env::var("OCISTORE_STRESS_PROCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let secs = std::env::var("OCISTORE_STRESS_SECS").unwrap_or_else(|_| "4".into());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(Store::open(&root).unwrap());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..procs)
        .map(|id| {
            Command::new(&exe)
                .args(["--exact", "stress_child", "--nocapture", "--test-threads=1"])
                .env("OCISTORE_STRESS_ROOT", &root)
                .env("OCISTORE_STRESS_ID", id.to_string())
                .env("OCISTORE_STRESS_SECS", &secs)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (id, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process {id} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The serial model: each process's journal applied in its own order (their keys do not
    // overlap except for shared content, which is only ever put).
    let mut present: BTreeSet<Digest> = BTreeSet::new();
    let mut doubt: BTreeSet<Digest> = BTreeSet::new();
    let mut tags: BTreeMap<String, Digest> = BTreeMap::new();
    let mut ops = 0;
    for id in 0..procs {
        let text = std::fs::read_to_string(format!("{}.{id}.journal", root.display())).unwrap();
        for line in text.lines() {
            ops += 1;
            let w: Vec<&str> = line.split(' ').collect();
            match w[0] {
                "put" | "shared" => {
                    present.insert(Digest::parse(w[1]).unwrap());
                }
                "del" => {
                    present.remove(&Digest::parse(w[1]).unwrap());
                }
                "tag" => {
                    tags.insert(
                        ocistore::Name::parse(w[1]).unwrap().to_string(),
                        Digest::parse(w[2]).unwrap(),
                    );
                }
                "untag" => {
                    tags.remove(&ocistore::Name::parse(w[1]).unwrap().to_string());
                }
                "leased" => {
                    doubt.insert(Digest::parse(w[1]).unwrap());
                }
                other => panic!("unknown journal line {other}"),
            }
        }
    }
    // Deleting content does not remove the names pointing at it (as in containerd): such a
    // tag dangles, and fsck reports it as such.
    let store = Store::open(&root).unwrap();
    let mut seen: BTreeSet<Digest> = BTreeSet::new();
    store
        .walk(
            &mut |i| {
                seen.insert(i.digest);
                Ok(())
            },
            &[],
        )
        .unwrap();
    let seen_certain: BTreeSet<Digest> = seen.difference(&doubt).cloned().collect();
    assert_eq!(
        seen_certain, present,
        "blobs differ from the serial model ({ops} operations)"
    );
    let names: BTreeMap<String, Digest> = store
        .images(&[])
        .unwrap()
        .into_iter()
        .map(|i| (i.name.clone(), i.digest().unwrap()))
        .collect();
    assert_eq!(names, tags, "tags differ from the serial model");
    assert!(
        ocistore::IngestManager::list_statuses(&store, &[])
            .unwrap()
            .is_empty(),
        "no ingest left behind"
    );
    println!(
        "{procs} processes, {ops} acknowledged operations, {} blobs and {} tags as the model predicts",
        present.len(),
        tags.len()
    );
    let fsck = store.fsck(&ocistore::verify::Options::default()).unwrap();
    assert!(
        fsck.problems
            .iter()
            .all(|p| p.kind == "dangling-name" || p.kind == "debris"),
        "{:?}",
        fsck.problems
    );
}
