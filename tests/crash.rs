//! Crash trials: a child process runs a random workload on a store and is killed with
//! SIGKILL at a random moment; the parent reopens the store and checks it.
//!
//! The workload: puts of many sizes (all labelled `containerd.io/gc.root`, so gc keeps them),
//! resumable ingests left half-written, label updates, deletes, batch imports that name a
//! manifest, untagging, and gc. The child journals each operation before it starts
//! (`begin ...`) and after it returns (`end`), so the parent knows what was acknowledged and
//! which one operation may have been cut in half.
//!
//! After each kill the parent checks that
//! - the store opens (and reports how long that took),
//! - every blob acknowledged as committed (and not deleted since) is present with its labels,
//! - no visible blob has wrong bytes and no record lacks its file (`fsck` finds no problem
//!   other than crash debris, which is not visible),
//! - every acknowledged name points at complete content.
//!
//! `OCISTORE_CRASH_TRIALS` sets the number of trials (default 200, what CI runs);
//! `OCISTORE_CRASH_TRIALS=2000 cargo test --release --test crash` runs thousands.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocistore::gc::Options;
use ocistore::names::{descriptor, parse_platform};
use ocistore::{Algorithm, Digest, Labels, Manager, Store, helpers};

const GC_ROOT: &str = "containerd.io/gc.root";

/// xorshift: the workload is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn blob(seed: u64, size: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(size);
    v
}

/// The child: runs the workload until killed, journaling to `<root>.journal`.
#[test]
fn crash_child() {
    let (Ok(root), Ok(seed)) = (
        std::env::var("OCISTORE_CRASH_ROOT"),
        std::env::var("OCISTORE_CRASH_SEED"),
    ) else {
        return;
    };
    let mut rng = Rng(seed.parse::<u64>().unwrap() | 1);
    let store = Store::open(&root).unwrap();
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{root}.journal"))
        .unwrap();
    let mut log = |line: String| {
        journal.write_all(format!("{line}\n").as_bytes()).unwrap();
    };
    let mut live: Vec<Digest> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for step in 0u64.. {
        let pick = rng.below(100);
        let sizes = [0usize, 1, 100, 4096, 65_536, 300_000, 2 << 20];
        if pick < 35 {
            let size = sizes[rng.below(sizes.len() as u64) as usize];
            let data = blob(rng.next(), size);
            let d = Algorithm::Sha256.digest(&data);
            let v = rng.below(1000).to_string();
            log(format!("begin put {d} {v}"));
            let labels = Labels::from([(GC_ROOT.to_owned(), v.clone())]);
            match helpers::write_blob(
                &store,
                &format!("put-{step}"),
                &mut &data[..],
                None,
                Some(&d),
                labels,
            ) {
                Ok(_) => {
                    // Already present: the labels were not changed.
                    log("end".into());
                    live.push(d);
                }
                Err(e) => panic!("put failed: {e}"),
            }
        } else if pick < 45 {
            let data = blob(rng.next(), 500_000);
            let mut w =
                ocistore::Ingester::writer(&store, &format!("half-{}", rng.below(4)), None, None)
                    .unwrap();
            w.write_all(&data[..rng.below(500_000) as usize]).unwrap();
            w.close().unwrap();
        } else if pick < 55 && !live.is_empty() {
            let d = live[rng.below(live.len() as u64) as usize];
            let v = rng.below(1000).to_string();
            log(format!("begin label {d} {v}"));
            if let Ok(mut info) = store.info(&d) {
                info.labels.insert(GC_ROOT.to_owned(), v);
                store.update(&info, &[]).unwrap();
            }
            log("end".into());
        } else if pick < 65 && !live.is_empty() {
            let d = live.swap_remove(rng.below(live.len() as u64) as usize);
            log(format!("begin del {d}"));
            let _ = store.delete(&d);
            log("end".into());
        } else if pick < 80 {
            // A batch import: config + layers + manifest + a name.
            let mut b = store.batch().unwrap();
            let mut layers = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let data = blob(rng.next(), 1 + rng.below(200_000) as usize);
                let s = b.stage(&mut &data[..], None, None, Labels::new()).unwrap();
                layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": s.digest.to_string(), "size": s.size}));
            }
            let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
            let c = b.stage(&mut &cfg[..], None, None, Labels::new()).unwrap();
            let m = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.digest.to_string(), "size": c.size}, "layers": layers})).unwrap();
            let s = b.stage(&mut &m[..], None, None, Labels::new()).unwrap();
            let name = format!("crash/app:{}", rng.below(6));
            b.put_name(
                &name,
                descriptor(
                    "application/vnd.oci.image.manifest.v1+json",
                    &s.digest,
                    s.size,
                )
                .unwrap(),
                None,
            )
            .unwrap();
            log(format!("begin name {name} {}", s.digest));
            b.commit().unwrap();
            log("end".into());
            names.push(name);
        } else if pick < 85 && !names.is_empty() {
            let name = names.swap_remove(rng.below(names.len() as u64) as usize);
            log(format!("begin unname {name}"));
            let _ = store.delete_image(&name);
            log("end".into());
        } else if pick < 90 {
            log("begin gc".into());
            store.gc(&Options::default()).unwrap();
            log("end".into());
        }
    }
}

/// What the journal says must hold; `doubt` is the one operation that may be half done.
#[derive(Default)]
struct Expect {
    blobs: BTreeMap<Digest, String>,
    names: BTreeMap<String, Digest>,
    doubt: Option<Vec<String>>,
}

fn read_journal(path: &Path) -> Expect {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut e = Expect::default();
    let mut pending: Option<Vec<String>> = None;
    for line in text.lines() {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match words.first().map(String::as_str) {
            Some("begin") => pending = Some(words[1..].to_vec()),
            Some("end") => {
                let op = pending.take().expect("end after begin");
                match op[0].as_str() {
                    "put" => {
                        e.blobs
                            .entry(Digest::parse(&op[1]).unwrap())
                            .or_insert_with(|| op[2].clone());
                    }
                    "label" => {
                        let d = Digest::parse(&op[1]).unwrap();
                        if e.blobs.contains_key(&d) {
                            e.blobs.insert(d, op[2].clone());
                        }
                    }
                    "del" => {
                        e.blobs.remove(&Digest::parse(&op[1]).unwrap());
                    }
                    "name" => {
                        e.names
                            .insert(op[1].clone(), Digest::parse(&op[2]).unwrap());
                    }
                    "unname" => {
                        e.names.remove(&op[1]);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    e.doubt = pending;
    e
}

fn check(root: &Path, e: &Expect, trial: u64) -> Duration {
    let t = Instant::now();
    let store =
        Store::open(root).unwrap_or_else(|err| panic!("trial {trial}: store does not open: {err}"));
    let opened = t.elapsed();
    let doubt_digest = e
        .doubt
        .as_ref()
        .and_then(|d| d.get(1))
        .and_then(|s| Digest::parse(s).ok());
    for (d, v) in &e.blobs {
        if Some(d) == doubt_digest.as_ref() {
            continue;
        }
        let info = store
            .info(d)
            .unwrap_or_else(|err| panic!("trial {trial}: acknowledged blob {d} lost: {err}"));
        assert_eq!(
            info.labels.get(GC_ROOT),
            Some(v),
            "trial {trial}: labels of {d}"
        );
    }
    let out = store.fsck(&ocistore::verify::Options::default()).unwrap();
    let real: Vec<_> = out.problems.iter().filter(|p| p.kind != "debris").collect();
    assert!(real.is_empty(), "trial {trial}: fsck found {real:?}");
    let amd64 = parse_platform("linux/amd64").unwrap();
    for name in e.names.keys() {
        if e.doubt.as_ref().is_some_and(|d| d.get(1) == Some(name)) {
            continue;
        }
        // A later unacknowledged rename may have replaced it; what it points at is complete.
        let c = store
            .check_image(name, &amd64)
            .unwrap_or_else(|err| panic!("trial {trial}: name {name} lost: {err}"));
        assert!(c.complete, "trial {trial}: {name} incomplete: {c:?}");
    }
    opened
}

#[test]
fn crash_trials() {
    let trials: u64 = std::env::var("OCISTORE_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let exe = std::env::current_exe().unwrap();
    let mut worst_open = Duration::ZERO;
    let mut seen_digests = BTreeSet::new();
    for trial in 0..trials {
        let root = base.path().join(format!("t{trial}"));
        let mut rng = Rng(0x5eed ^ (trial + 1).wrapping_mul(0x9E37_79B9));
        // Some trials continue from the previous trial's store (crash on top of a crash).
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("OCISTORE_CRASH_ROOT", &root)
            .env("OCISTORE_CRASH_SEED", rng.next().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            panic!(
                "trial {trial}: the child ended by itself: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !root.join("meta.redb").exists() {
            continue; // killed before the store existed
        }
        let journal = read_journal(Path::new(&format!("{}.journal", root.display())));
        seen_digests.extend(journal.blobs.keys().cloned());
        worst_open = worst_open.max(check(&root, &journal, trial));
        let _ = std::fs::remove_dir_all(&root);
    }
    println!(
        "{trials} crash trials, {} acknowledged blobs checked, slowest reopen {worst_open:?}",
        seen_digests.len()
    );
}
