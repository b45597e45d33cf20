//! Prune: a property test against a model of what it may and must remove, the CLI, and
//! prune in one process beside imports in another.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ocistore::prune::{Options, PIN_LABEL};
use ocistore::{
    Algorithm, Digest, IngestManager, Ingester, Labels, Manager, Resource, Store, Used, helpers,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::cmd;
use cmd::ocistore;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn put(store: &Store, bytes: &[u8], labels: Labels) -> Digest {
    helpers::write_blob(
        store,
        &format!("t-{}", Algorithm::Sha256.digest(bytes)),
        &mut &bytes[..],
        None,
        None,
        labels,
    )
    .unwrap()
}

/// Deterministic bytes: `len` of them for `seed` (the testsuite's generator).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    ocistore::testsuite::sample(len, seed)
}

/// Writes an image `name` with the given layers; returns its blobs (manifest first).
fn image(store: &Store, name: &str, layers: &[Vec<u8>]) -> Vec<Digest> {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","name":"{name}"}}"#);
    let cd = put(store, config.as_bytes(), Labels::new());
    let mut blobs = vec![cd];
    let mut descs = Vec::new();
    for l in layers {
        let d = put(store, l, Labels::new());
        descs.push(json!({"mediaType": LAYER, "digest": d.to_string(), "size": l.len()}));
        blobs.push(d);
    }
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": cd.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put(store, &m, Labels::new());
    let desc = ocistore::names::descriptor(MANIFEST, &md, m.len() as u64).unwrap();
    store.put_image(name, desc, None).unwrap();
    blobs.insert(0, md);
    blobs
}

fn blob_bytes(store: &Store) -> u64 {
    store.usage().unwrap().blobs.apparent_bytes
}

fn present(store: &Store, d: &Digest) -> bool {
    store.info(d).is_ok()
}

#[derive(Debug, Clone)]
struct ImageSpec {
    layers: Vec<usize>,
    age_secs: u64,
    pinned: bool,
    leased: bool,
    tool: bool,
}

#[derive(Debug, Clone)]
struct World {
    images: Vec<ImageSpec>,
    /// Unnamed blobs: (size seed, age in seconds).
    unnamed: Vec<(usize, u64)>,
    rooted: bool,
    leased_blob: bool,
    live_ingest: bool,
    /// Budget as a percentage of blob usage.
    budget_pct: u64,
    keep: bool,
    filter: bool,
}

fn world() -> impl Strategy<Value = World> {
    let image = (
        prop::collection::vec(0usize..6, 1..4),
        0u64..10_000,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(|(layers, age_secs, pinned, leased, tool)| ImageSpec {
            layers,
            age_secs,
            pinned,
            leased,
            tool,
        });
    (
        prop::collection::vec(image, 1..6),
        prop::collection::vec((0usize..6, 0u64..10_000), 0..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u64..=100,
        any::<bool>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(images, unnamed, rooted, leased_blob, live_ingest, budget_pct, keep, filter)| World {
                images,
                unnamed,
                rooted,
                leased_blob,
                live_ingest,
                budget_pct,
                keep,
                filter,
            },
        )
}

const KEEP: Duration = Duration::from_secs(3000);

/// Builds the world, prunes it (dry run, then for real) and checks the model's rules.
fn check_world(w: &World) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    let now = SystemTime::now();
    let pool: Vec<Vec<u8>> = (0..6).map(|i| bytes(i, 1000 + 3000 * i as usize)).collect();
    let mut names = Vec::new();
    let mut image_blobs: BTreeMap<String, Vec<Digest>> = BTreeMap::new();
    let mut blob_age: BTreeMap<Digest, u64> = BTreeMap::new();
    for (i, spec) in w.images.iter().enumerate() {
        let kind = if spec.tool { "tool" } else { "app" };
        let name = format!("docker.io/library/{kind}{i}:1");
        let layers: Vec<Vec<u8>> = spec.layers.iter().map(|&l| pool[l].clone()).collect();
        let blobs = image(&store, &name, &layers);
        for d in &blobs {
            let a = blob_age.entry(*d).or_insert(spec.age_secs);
            *a = (*a).min(spec.age_secs);
        }
        if spec.pinned {
            let pin = Labels::from([(PIN_LABEL.to_owned(), "yes".to_owned())]);
            store.label_image(&name, &pin, &[]).unwrap();
        }
        if spec.leased {
            store
                .create_lease(&format!("hold-{i}"), None, Labels::new())
                .unwrap();
            store
                .add_lease_resource(&format!("hold-{i}"), &Resource::Name(name.clone()))
                .unwrap();
        }
        let at = now - Duration::from_secs(spec.age_secs);
        store
            .record_use_at(&[Used::Image(name.clone())], at)
            .unwrap();
        image_blobs.insert(name.clone(), blobs);
        names.push(name);
    }
    let mut unnamed = Vec::new();
    for (j, (seed, age)) in w.unnamed.iter().enumerate() {
        let d = put(
            &store,
            &bytes(100 + j as u64, 500 * (seed + 1)),
            Labels::new(),
        );
        if image_blobs.values().any(|b| b.contains(&d)) {
            continue;
        }
        blob_age.insert(d, *age);
        unnamed.push(d);
    }
    for (d, age) in &blob_age {
        let at = now - Duration::from_secs(*age);
        store.record_use_at(&[Used::Content(*d)], at).unwrap();
    }
    let mut fixed = Vec::new();
    if w.rooted {
        let root = Labels::from([("containerd.io/gc.root".to_owned(), "x".to_owned())]);
        fixed.push(put(&store, b"rooted blob", root));
    }
    if w.leased_blob {
        let d = put(&store, b"leased blob", Labels::new());
        store.create_lease("blob", None, Labels::new()).unwrap();
        store
            .add_lease_resource("blob", &Resource::Content(d))
            .unwrap();
        fixed.push(d);
    }
    let mut writer = None;
    if w.live_ingest {
        let mut wr = store.writer("live", None, None).unwrap();
        wr.write_all(b"in flight").unwrap();
        wr.flush().unwrap();
        writer = Some(wr);
    }
    let before = blob_bytes(&store);
    let budget = before * w.budget_pct / 100;
    let opts = Options {
        max_used: Some(budget),
        keep_duration: w.keep.then_some(KEEP),
        filters: if w.filter {
            vec!["name~=app".to_owned()]
        } else {
            Vec::new()
        },
        dry_run: true,
        ..Options::default()
    };
    let dry = store.prune(&opts).unwrap();
    prop_assert_eq!(blob_bytes(&store), before, "a dry run removes nothing");
    let real = store
        .prune(&Options {
            dry_run: false,
            ..opts.clone()
        })
        .unwrap();
    prop_assert_eq!(&dry.removed_images, &real.removed_images);
    prop_assert_eq!(&dry.removed, &real.removed);
    prop_assert_eq!(dry.bytes_freed, real.bytes_freed);
    let after = blob_bytes(&store);
    prop_assert_eq!(real.used_before, before);
    prop_assert_eq!(real.used_after, after);
    prop_assert_eq!(
        real.bytes_freed,
        before - after,
        "bytes freed equal the drop in du"
    );

    // What may never go.
    let recent = |age: u64| w.keep && Duration::from_secs(age) < KEEP;
    let protected: BTreeSet<&String> = names
        .iter()
        .zip(&w.images)
        .filter(|(n, s)| {
            s.pinned || s.leased || recent(s.age_secs) || (w.filter && !n.contains("app"))
        })
        .map(|(n, _)| n)
        .collect();
    let remaining: BTreeSet<String> = store
        .images(&[])
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    for n in &protected {
        prop_assert!(remaining.contains(*n), "protected {} was removed", n);
    }
    for n in &remaining {
        for d in &image_blobs[n] {
            prop_assert!(present(&store, d), "{} lost {}", n, d);
        }
    }
    for d in &fixed {
        prop_assert!(present(&store, d), "leased or rooted {} was removed", d);
    }
    for d in &unnamed {
        if recent(blob_age[d]) {
            prop_assert!(present(&store, d), "recently used {} was removed", d);
        }
    }
    if let Some(wr) = writer.as_ref() {
        let _ = wr;
        prop_assert_eq!(store.status("live").unwrap().offset, 9, "live ingest kept");
    }
    // Least recently used first: every image removed is older than every removable one kept.
    let age_of = |n: &String| w.images[names.iter().position(|x| x == n).unwrap()].age_secs;
    for r in &real.removed_images {
        for k in remaining.iter().filter(|k| !protected.contains(k)) {
            prop_assert!(age_of(r) >= age_of(k), "removed {} kept older {}", r, k);
        }
    }
    // Unnamed content goes before any image.
    if !real.removed_images.is_empty() {
        for d in &unnamed {
            if !recent(blob_age[d]) {
                prop_assert!(!present(&store, d), "image removed before unnamed {}", d);
            }
        }
    }
    // The budget is reached whenever it can be: everything kept that could go went.
    if real.budget_reached {
        prop_assert!(after <= budget, "{} > {}", after, budget);
    } else {
        prop_assert!(after > budget);
        prop_assert!(!real.held.is_empty(), "says what stood in the way");
        for n in &remaining {
            prop_assert!(protected.contains(n), "{} could have gone", n);
        }
    }
    if before <= budget {
        prop_assert!(real.removed_images.is_empty() && real.removed_blobs == 0);
    }
    drop(writer);
    let fsck = store.fsck(&Default::default()).unwrap();
    prop_assert_eq!(fsck.remaining(), 0, "fsck: {:?}", fsck.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prune_keeps_what_it_must_and_meets_the_budget_when_it_can(w in world()) {
        check_world(&w)?;
    }
}

// ------------------------------------------------------------------- the CLI

/// Three images exported as archives (two share a 200 KiB base layer), for imports.
fn archives(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let scratch = dir.join("scratch");
    let store = Store::open(&scratch).unwrap();
    let base = bytes(1, 200 << 10);
    let mut out = Vec::new();
    for (i, layers) in [
        vec![base.clone(), bytes(2, 300 << 10)],
        vec![base.clone(), bytes(3, 100 << 10)],
        vec![bytes(4, 400 << 10)],
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("docker.io/library/img{i}:1");
        image(&store, &name, &layers);
        let path = dir.join(format!("img{i}.tar"));
        store
            .export_path(&[&name], &Default::default(), &path)
            .unwrap();
        out.push((name, path));
    }
    out
}

#[test]
fn cli_prune_removes_the_least_recently_used_image_and_a_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let images = archives(dir.path());
    // Imported (used) one after another: img1 first, so it is the least recently used.
    for i in [1, 2, 0] {
        ocistore(&root, &["image", "import", images[i].1.to_str().unwrap()]).output();
    }
    let du = |root: &Path| -> u64 {
        let v: Value = ocistore(root, &["--json", "du"]).json();
        v["blobs"]["apparent_bytes"].as_u64().unwrap()
    };
    let before = du(&root);
    // Just under the sum: one image has to go. img1's own layer is 100 KiB; img2's 400 KiB.
    let budget = (before - 50_000).to_string();
    let dry: Value = ocistore(
        &root,
        &["--json", "prune", "--max-used", &budget, "--dry-run"],
    )
    .json();
    assert_eq!(du(&root), before, "a dry run removes nothing");
    assert_eq!(
        ocistore(&root, &["image", "ls", "-q"])
            .stdout()
            .lines()
            .count(),
        3
    );
    let real: Value = ocistore(&root, &["--json", "prune", "--max-used", &budget]).json();
    for key in [
        "removed_images",
        "removed_blobs",
        "bytes_freed",
        "used_before",
        "used_after",
    ] {
        assert_eq!(
            dry[key], real[key],
            "{key}: the dry run said what the run did"
        );
    }
    assert_eq!(real["removed_images"], json!(["docker.io/library/img1:1"]));
    let after = du(&root);
    assert_eq!(real["used_after"].as_u64().unwrap(), after);
    assert!(after <= before - 50_000);
    assert_eq!(real["bytes_freed"].as_u64().unwrap(), before - after);
    // The most recently used image is complete; the shared base stayed.
    ocistore(
        &root,
        &["image", "check", "img0:1", "--platform", "linux/amd64"],
    )
    .output();
    ocistore(
        &root,
        &["image", "check", "img2:1", "--platform", "linux/amd64"],
    )
    .output();
    let fsck: Value = ocistore(&root, &["--json", "fsck"]).json();
    assert_eq!(fsck["problems"], json!([]), "{fsck}");

    // A pinned image stays however low the budget; the rest goes, and prune says why.
    ocistore(&root, &["image", "label", "img2:1", "ocistore.pin=true"]).output();
    let out = ocistore(&root, &["--json", "prune", "--max-used", "0"]).output();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["budget_reached"], json!(false));
    assert_eq!(v["removed_images"], json!(["docker.io/library/img0:1"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("img2:1 (pinned)"), "{stderr}");
    assert_eq!(
        ocistore(&root, &["image", "ls", "-q"]).stdout().trim(),
        "docker.io/library/img2:1"
    );
    // No budget at all is refused, naming the options.
    let out = ocistore(&root, &["prune"]).code(2).output();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-used"));
}

/// Prune (`--max-used 0`, in a loop) in this process's children beside imports in others:
/// every import succeeds, every name left is complete, fsck is clean.
#[test]
fn prune_beside_imports_in_other_processes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let images = archives(dir.path());
    ocistore(&root, &["du"]).output();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let prunes = std::thread::scope(|s| {
        let pruner = s.spawn(|| {
            let mut runs = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                ocistore(
                    &root,
                    &["prune", "--max-used", "0", "--ingest-expiry", "0s"],
                )
                .output();
                runs += 1;
            }
            runs
        });
        for round in 0..12 {
            let (name, path) = &images[round % images.len()];
            ocistore(&root, &["image", "import", path.to_str().unwrap()]).output();
            // Either the image is complete, or a prune took all of it, name first.
            let out = ocistore(
                &root,
                &["image", "check", name, "--platform", "linux/amd64"],
            )
            .raw_output();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || stderr.contains("not found"),
                "round {round}: {}{stderr}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pruner.join().unwrap()
    });
    assert!(prunes > 0);
    let fsck: Value = ocistore(&root, &["--json", "fsck"]).json();
    assert_eq!(fsck["problems"], json!([]), "{fsck}");
    for name in ocistore(&root, &["image", "ls", "-q"]).stdout().lines() {
        ocistore(
            &root,
            &["image", "check", name, "--platform", "linux/amd64"],
        )
        .output();
    }
}

/// Last use: an import records its image and blobs exactly; a read within the granularity
/// writes nothing; a read of something never recorded is written when the command ends.
#[test]
fn last_use_is_recorded_by_imports_exactly_and_by_reads_coarsely() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let images = archives(dir.path());
    let t0 = SystemTime::now();
    ocistore(&root, &["image", "import", images[0].1.to_str().unwrap()]).output();
    let store = Store::open(&root).unwrap();
    let name = Used::image("img0:1").unwrap();
    let first = store
        .last_use(&name)
        .unwrap()
        .expect("import records a use");
    assert!(first.at >= t0 && first.count == 1, "{first:?}");
    let manifest = Digest::parse(store.image("img0:1").unwrap().target.digest().as_ref()).unwrap();
    assert!(store.last_use(&Used::Content(manifest)).unwrap().is_some());
    drop(store);
    // Checked again at once: within the granularity, nothing is written.
    let gen_before = std::fs::read(root.join("meta.gen")).unwrap();
    ocistore(
        &root,
        &["image", "check", "img0:1", "--platform", "linux/amd64"],
    )
    .output();
    assert_eq!(
        std::fs::read(root.join("meta.gen")).unwrap(),
        gen_before,
        "no write"
    );
    let store = Store::open(&root).unwrap();
    assert_eq!(store.last_use(&name).unwrap(), Some(first));
    // A blob put without a use, then read: its first use is written as the command ends.
    let d = put(&store, b"read me", Labels::new());
    assert_eq!(store.last_use(&Used::Content(d)).unwrap(), None);
    drop(store);
    assert_eq!(
        ocistore(&root, &["content", "cat", &d.to_string()]).stdout(),
        "read me"
    );
    let store = Store::open(&root).unwrap();
    let used = store
        .last_use(&Used::Content(d))
        .unwrap()
        .expect("written at exit");
    assert_eq!(used.count, 1);
    // Removing the image forgets its use.
    store.delete_image("img0:1").unwrap();
    assert_eq!(store.last_use(&name).unwrap(), None);
}

/// `fsck --rebuild` carries last uses over, so a prune after it still knows what is old.
#[test]
fn a_rebuild_keeps_last_uses() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    image(&store, "docker.io/library/old:1", &[bytes(7, 1000)]);
    let name = Used::image("old:1").unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    store
        .record_use_at(std::slice::from_ref(&name), at)
        .unwrap();
    store
        .record_use_at(std::slice::from_ref(&name), at)
        .unwrap();
    drop(store);
    let out = ocistore::verify::rebuild(&root).unwrap();
    assert_eq!(out.names_recovered, 1);
    let store = Store::open(&root).unwrap();
    let u = store.last_use(&name).unwrap().expect("carried over");
    assert_eq!((u.at, u.count), (at, 2));
}
