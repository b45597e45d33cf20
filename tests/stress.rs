//! Many processes on one store: N processes (16 by default, `OCISTORE_STRESS_PROCS`) do random
//! operations on one root at once for a bounded time (`OCISTORE_STRESS_SECS`, default 4 s):
//! puts of shared and distinct content, the same ingest reference from several processes,
//! tags, deletes, leases, gc, `fsck --repair`, `fsck --rebuild` and `du`. Afterwards the store
//! must be exactly what a serial model of the successful operations predicts.
//!
//! The workload is built so that the serial outcome does not depend on the interleaving:
//! each process owns its distinct content and its tags; shared content is only ever put;
//! every put carries `containerd.io/gc.root`, so gc may not remove it; content put under a
//! lease (without the root label) must be readable while the lease lasts, and is left out of
//! the exact comparison once its lease is gone (gc may or may not have taken it by then).
//!
//! `fsck --repair` runs beside the writers: it may remove crash debris, but must never see a
//! committed blob as missing, corrupt or of the wrong size (that would be a stale view), and
//! nothing the process itself knows to be present may be gone after it.
//!
//! `fsck --rebuild` must be alone. The processes meet at a barrier once all have the store
//! open and again when all are done, and process 0 never lets go of its store during the
//! work, so every rebuild attempted during the work must be refused (`StoreInUse`, naming
//! other processes, never "this process"): a success there would be a rebuild running beside
//! an open store. That also means no rebuild can ever cut a lease operation short or lose a
//! lease (every lease lives inside one operation of a process that holds the store open).
//! After the second barrier a few processes rebuild in earnest, racing each other and the
//! others' exits (each may succeed or be refused), then reopen; a rebuild carries over blobs,
//! labels and names but drops names whose content is gone, so the model drops the dangling
//! tags once any of them succeeded. Finally the parent, alone, rebuilds once more and checks
//! that blobs, labels and names came through.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocistore::gc::Options;
use ocistore::names::descriptor;
use ocistore::verify::{RebuildOptions, rebuild_with};
use ocistore::{Algorithm, Digest, ErrorKind, Labels, Manager, Name, Resource, Store, helpers};

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

fn norm(name: &str) -> String {
    Name::parse(name).unwrap().to_string()
}

/// The markers `<root>.<prefix>.<id>` that exist.
fn markers(root: &str, prefix: &str) -> Vec<String> {
    let dir = Path::new(root).parent().unwrap();
    let want = format!(
        "{}.{prefix}.",
        Path::new(root).file_name().unwrap().to_string_lossy()
    );
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&want))
        .collect()
}

/// Gives up at once when another process panicked (it left `<root>.panicked.<id>`): what
/// this one sees next is a consequence, not a cause.
fn give_up_if_another_panicked(root: &str, id: usize, at: &str) {
    if let Some(m) = markers(root, "panicked").first() {
        panic!("process {id}: another process panicked ({m}); giving up at {at}");
    }
}

/// Waits until every process has reached `phase` (`<root>.<phase>.<id>` exists for each id),
/// or gives up when one panicked instead of waiting for it forever.
fn barrier(root: &str, phase: &str, id: usize, procs: usize) {
    std::fs::write(format!("{root}.{phase}.{id}"), b"").unwrap();
    loop {
        give_up_if_another_panicked(root, id, phase);
        if markers(root, phase).len() == procs {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a rebuild outcome may report lost here: only names whose content is gone (deleting
/// content leaves its tags dangling). A lost blob would be a record without its file.
fn names_lost(o: &ocistore::verify::RebuildOutcome) -> usize {
    assert!(o.salvaged, "the old metadata was readable: {o:?}");
    assert_eq!(o.blobs_quarantined, 0, "no blob was corrupt: {o:?}");
    assert!(
        o.lost.iter().all(|l| l.starts_with("name ")),
        "a rebuild lost more than dangling names: {:?}",
        o.lost
    );
    o.lost.len()
}

#[test]
fn stress_child() {
    let (Ok(root), Ok(id), Ok(secs), Ok(procs)) = (
        std::env::var("OCISTORE_STRESS_ROOT"),
        std::env::var("OCISTORE_STRESS_ID"),
        std::env::var("OCISTORE_STRESS_SECS"),
        std::env::var("OCISTORE_STRESS_PROCS"),
    ) else {
        return;
    };
    let id: usize = id.parse().unwrap();
    let procs: usize = procs.parse().unwrap();
    {
        let marker = format!("{root}.panicked.{id}");
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = std::fs::write(&marker, b"");
            default(info);
        }));
    }
    let mut store = Store::open(&root).unwrap();
    let mut journal = std::fs::File::create(format!("{root}.{id}.journal")).unwrap();
    let mut x = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    // This process's own view: its distinct content present, the shared content it put, its
    // tags. Only this process changes the first and the last; shared content is never deleted.
    let mut mine: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut shared_put: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut my_tags: BTreeMap<String, Digest> = BTreeMap::new();
    let check_mine = |store: &Store,
                      mine: &BTreeMap<Digest, u64>,
                      shared_put: &BTreeMap<Digest, u64>,
                      after: &str| {
        for (d, size) in mine.iter().chain(shared_put) {
            let info = store
                .info(d)
                .unwrap_or_else(|e| panic!("process {id}: {d} gone after {after}: {e}"));
            assert_eq!(
                info.labels,
                rooted(),
                "process {id}: labels of {d} after {after}"
            );
            let bytes = helpers::read_blob(store, d)
                .unwrap_or_else(|e| panic!("process {id}: {d} unreadable after {after}: {e}"));
            assert_eq!(bytes.len() as u64, *size, "process {id}: {d} after {after}");
        }
    };
    // Everyone has the store open before anyone starts: no rebuild can slip in between.
    barrier(&root, "ready", id, procs);
    let deadline = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
    let mut step = 0u64;
    while Instant::now() < deadline {
        step += 1;
        match rnd(100) {
            0..27 => {
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
                mine.insert(d, data.len() as u64);
                writeln!(journal, "put {d}").unwrap();
            }
            27..36 => {
                let i = rnd(40);
                let d = Algorithm::Sha256.digest(&distinct(id, i));
                match store.delete(&d) {
                    Ok(()) => writeln!(journal, "del {d}").unwrap(),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        writeln!(journal, "del {d}").unwrap()
                    }
                    Err(e) => panic!("delete: {e}"),
                }
                mine.remove(&d);
            }
            36..54 => {
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
                shared_put.insert(d, data.len() as u64);
                writeln!(journal, "shared {d}").unwrap();
            }
            54..63 => {
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
                    my_tags.insert(norm(&tag), d);
                    writeln!(journal, "tag {tag} {d}").unwrap();
                }
            }
            63..72 => {
                let tag = format!("stress/w{id}:t{}", rnd(5));
                match store.delete_image(&tag) {
                    Ok(()) => writeln!(journal, "untag {tag}").unwrap(),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        writeln!(journal, "untag {tag}").unwrap()
                    }
                    Err(e) => panic!("untag: {e}"),
                }
                my_tags.remove(&norm(&tag));
            }
            72..81 => {
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
            81..88 => {
                store.gc(&Options::default()).unwrap();
            }
            88..93 => {
                // fsck --repair beside live writers.
                let out = store
                    .fsck(&ocistore::verify::Options { repair: true })
                    .unwrap_or_else(|e| panic!("process {id}: fsck --repair failed: {e}"));
                let stale: Vec<_> = out
                    .problems
                    .iter()
                    .filter(|p| matches!(p.kind, "missing" | "corrupt" | "size"))
                    .collect();
                assert!(
                    stale.is_empty(),
                    "process {id}: fsck --repair beside live writers saw {stale:?}"
                );
                check_mine(&store, &mine, &shared_put, "fsck --repair");
                let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
                for p in &out.problems {
                    *kinds.entry(p.kind).or_default() += 1;
                }
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
                writeln!(journal, "repair {} {}", out.in_flight, kinds.join(" ")).unwrap();
            }
            93..96 if id != 0 => {
                // fsck --rebuild: let go of the store (a rebuild refuses while this process
                // has it open), try, reopen. Process 0 holds the store throughout, so this is
                // always refused.
                drop(store);
                match rebuild_with(
                    Path::new(&root),
                    &RebuildOptions {
                        wait: Duration::from_millis(50),
                    },
                ) {
                    Ok(o) => {
                        // Process 0 has the store open unless it died.
                        give_up_if_another_panicked(&root, id, "a rebuild");
                        panic!(
                            "process {id}: a rebuild succeeded while process 0 had the store \
                             open: {o:?}"
                        )
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::StoreInUse, "process {id}: {e}");
                        assert!(
                            !e.to_string().contains("(this process)"),
                            "process {id}: the rebuild still counts this process: {e}"
                        );
                    }
                }
                store = Store::open(&root).unwrap();
                writeln!(journal, "rebuild refused").unwrap();
            }
            _ => {
                let u = store
                    .usage()
                    .unwrap_or_else(|e| panic!("process {id}: du failed: {e}"));
                let ours = mine.len() + shared_put.len();
                let bytes: u64 = mine.values().chain(shared_put.values()).sum();
                assert!(
                    u.blobs.count >= ours as u64 && u.blobs.apparent_bytes >= bytes,
                    "process {id}: du counts {:?}, but this process alone has {ours} blobs of \
                     {bytes} bytes",
                    u.blobs
                );
                assert!(u.metadata.count == 1 && u.total.count > u.blobs.count);
                writeln!(journal, "du").unwrap();
            }
        }
    }
    check_mine(&store, &mine, &shared_put, "the work");
    // Nobody lets go of the store while others still work.
    barrier(&root, "done", id, procs);
    // The final phase: a few processes rebuild, racing each other and the exits of the rest.
    if (1..=3).contains(&id) {
        drop(store);
        let line = match rebuild_with(
            Path::new(&root),
            &RebuildOptions {
                wait: Duration::from_secs(3),
            },
        ) {
            Ok(o) => {
                let lost = names_lost(&o);
                let store = Store::open(&root).unwrap();
                assert!(store.interrupted_rebuild().is_none());
                check_mine(&store, &mine, &shared_put, "a final rebuild");
                // Every rebuild drops the dangling names: none is left now.
                let names: BTreeMap<String, Digest> = store
                    .images(&[])
                    .unwrap()
                    .into_iter()
                    .map(|i| (i.name.clone(), i.digest().unwrap()))
                    .filter(|(n, _)| n.contains(&format!("/w{id}:")))
                    .collect();
                let want: BTreeMap<String, Digest> = my_tags
                    .iter()
                    .filter(|(_, d)| mine.contains_key(d))
                    .map(|(n, d)| (n.clone(), *d))
                    .collect();
                assert_eq!(names, want, "process {id}: tags after a final rebuild");
                format!("final-rebuild ok {lost}")
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::StoreInUse, "process {id}: {e}");
                assert!(
                    !e.to_string().contains("(this process)"),
                    "process {id}: the rebuild still counts this process: {e}"
                );
                "final-rebuild refused".to_owned()
            }
        };
        writeln!(journal, "{line}").unwrap();
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
                .env("OCISTORE_STRESS_PROCS", procs.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // A process that dies without panicking (a signal) leaves no marker of its own: leave it
    // for it, or the others would wait for it at a barrier forever.
    let mut children = children;
    let mut running: BTreeSet<usize> = (0..procs).collect();
    while !running.is_empty() {
        for id in running.clone() {
            if let Some(status) = children[id].try_wait().unwrap() {
                running.remove(&id);
                if !status.success() {
                    let marker = format!("{}.panicked.{id}", root.display());
                    std::fs::write(marker, b"").unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut failed = Vec::new();
    for (id, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        if !out.status.success() {
            failed.push(format!(
                "process {id} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    // The first failure is the cause; the others gave up at a barrier because of it.
    failed.sort_by_key(|f| f.contains("another process panicked"));
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The serial model: each process's journal applied in its own order (their keys do not
    // overlap except for shared content, which is only ever put).
    let mut present: BTreeSet<Digest> = BTreeSet::new();
    let mut doubt: BTreeSet<Digest> = BTreeSet::new();
    let mut tags: BTreeMap<String, Digest> = BTreeMap::new();
    let mut ops = 0;
    let (mut repairs, mut repair_kinds, mut in_flight) = (0, BTreeMap::new(), 0u64);
    let (mut refused, mut du) = (0, 0);
    let (mut final_ok, mut final_refused, mut final_lost) = (0, 0, 0);
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
                    tags.insert(norm(w[1]), Digest::parse(w[2]).unwrap());
                }
                "untag" => {
                    tags.remove(&norm(w[1]));
                }
                "leased" => {
                    doubt.insert(Digest::parse(w[1]).unwrap());
                }
                "repair" => {
                    repairs += 1;
                    in_flight += w[1].parse::<u64>().unwrap();
                    for kn in &w[2..] {
                        if let Some((k, n)) = kn.split_once('=') {
                            *repair_kinds.entry(k.to_owned()).or_insert(0) +=
                                n.parse::<usize>().unwrap();
                        }
                    }
                }
                "rebuild" => refused += 1,
                "du" => du += 1,
                // After every process's work: a rebuild drops the names that dangle then.
                "final-rebuild" if w[1] == "ok" => {
                    final_ok += 1;
                    final_lost += w[2].parse::<usize>().unwrap();
                }
                "final-rebuild" => final_refused += 1,
                other => panic!("unknown journal line {other}"),
            }
        }
    }
    // Deleting content does not remove the names pointing at it (as in containerd): such a
    // tag dangles, and fsck reports it as such, until a rebuild drops it.
    let dangling: BTreeSet<String> = tags
        .iter()
        .filter(|(_, d)| !present.contains(d))
        .map(|(n, _)| n.clone())
        .collect();
    if final_ok > 0 {
        assert_eq!(
            final_lost,
            dangling.len(),
            "the final rebuilds dropped {final_lost} names; {} dangled",
            dangling.len()
        );
        tags.retain(|n, _| !dangling.contains(n));
    }
    let store = Store::open(&root).unwrap();
    let blobs = |store: &Store| {
        let mut seen: BTreeMap<Digest, Labels> = BTreeMap::new();
        store
            .walk(
                &mut |i| {
                    seen.insert(i.digest, i.labels.clone());
                    Ok(())
                },
                &[],
            )
            .unwrap();
        seen
    };
    let names = |store: &Store| -> BTreeMap<String, Digest> {
        store
            .images(&[])
            .unwrap()
            .into_iter()
            .map(|i| (i.name.clone(), i.digest().unwrap()))
            .collect()
    };
    let check = |store: &Store,
                 tags: &BTreeMap<String, Digest>,
                 recovered: &BTreeSet<Digest>,
                 when: &str| {
        let seen = blobs(store);
        let seen_certain: BTreeSet<Digest> = seen
            .keys()
            .filter(|d| !doubt.contains(d) && !recovered.contains(d))
            .cloned()
            .collect();
        assert_eq!(
            seen_certain, present,
            "blobs differ from the serial model {when} ({ops} operations)"
        );
        for d in &present {
            assert_eq!(seen[d], rooted(), "labels of {d} {when}");
        }
        assert_eq!(
            &names(store),
            tags,
            "tags differ from the serial model {when}"
        );
        assert!(
            ocistore::IngestManager::list_statuses(store, &[])
                .unwrap()
                .is_empty(),
            "no ingest left behind {when}"
        );
    };
    check(&store, &tags, &BTreeSet::new(), "after the processes");
    // Every process has ended: none left a lease it held for itself (a batch's), alive or not.
    let owned: Vec<String> = (store.leases().unwrap().into_iter())
        .filter(|l| l.owner.is_some())
        .map(|l| l.id)
        .collect();
    assert!(
        owned.is_empty(),
        "process-held leases after the processes: {owned:?}"
    );
    let fsck = store.fsck(&ocistore::verify::Options::default()).unwrap();
    assert!(
        fsck.problems
            .iter()
            .all(|p| p.kind == "dangling-name" || p.kind == "debris"),
        "{:?}",
        fsck.problems
    );
    let debris: BTreeSet<Digest> = fsck
        .problems
        .iter()
        .filter(|p| p.kind == "debris")
        .map(|p| Digest::parse(&p.id).unwrap())
        .collect();
    // Alone now: a rebuild must go through and carry over every blob, label and name.
    let before = blobs(&store);
    drop(store);
    let o = rebuild_with(&root, &RebuildOptions::default()).unwrap();
    assert_eq!(
        names_lost(&o),
        if final_ok > 0 { 0 } else { dangling.len() },
        "{o:?}"
    );
    tags.retain(|n, _| !dangling.contains(n));
    let store = Store::open(&root).unwrap();
    assert!(store.interrupted_rebuild().is_none());
    let after = blobs(&store);
    for (d, labels) in &before {
        assert_eq!(after.get(d), Some(labels), "{d} after the rebuild");
    }
    // Files without a record come back as blobs without labels.
    let new: BTreeSet<Digest> = after
        .keys()
        .filter(|d| !before.contains_key(d))
        .cloned()
        .collect();
    assert!(new.is_subset(&debris), "{new:?} appeared from nowhere");
    check(&store, &tags, &new, "after a rebuild");
    let fsck = store.fsck(&ocistore::verify::Options::default()).unwrap();
    assert!(
        fsck.problems.is_empty(),
        "after a rebuild: {:?}",
        fsck.problems
    );
    println!(
        "{procs} processes, {ops} acknowledged operations, {} blobs and {} tags as the model \
         predicts; {repairs} fsck --repair beside the writers (found {repair_kinds:?}, \
         {in_flight} commits in flight), {refused} rebuilds refused while others had the store \
         open, final rebuilds: {final_ok} done ({final_lost} dangling names dropped), \
         {final_refused} refused; {du} du",
        present.len(),
        tags.len()
    );
}
