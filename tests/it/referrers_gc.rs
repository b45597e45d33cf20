//! gc and prune against OCI 1.1 referrers, over random graphs: a property test that holds
//! both to a small independent model of their rules, through the public API only.
//!
//! Each case builds a store with 1 to 5 images (a manifest, a config, up to 3 layers from a
//! shared pool, so that images sometimes share layers), a forest of up to 8 referrers (a
//! manifest whose `subject` is an image or another referrer: a signature on an SBOM on an
//! image; an empty `{}` config, shared, or its own; payload layers or pool layers), a few
//! names (mostly on images, now and then on a referrer; some pinned with `ocistore.pin`),
//! pool layers nobody uses, and perhaps a lease (live or expired) on a blob or a name.
//!
//! gc's rules (the model: a fixpoint over the generated graph): the roots are the names'
//! targets and what live leases hold; a manifest keeps its children (config, layers, and, for
//! a referrer, its subject, as design.md says: "a referrer also keeps its subject"); a
//! referrer of kept content is kept, with its own children, recursively; nothing else stays.
//! Checked: every generated blob's presence (`Store::info`), the content gc reports removed,
//! and that gc leaves every name.
//!
//! prune's rules (src/prune.rs, design.md "Referrers"): an image and its referrers are one
//! unit: the subject edge is turned around (the image reaches its referrers, a referrer does
//! not reach its image), so a referrer named or leased alone keeps no image, an image that
//! goes takes its unnamed referrers with it, and a pinned or leased image keeps its referrers.
//! Three budgets, each with an outcome the module docs fix whatever the order of last use:
//! - `max_used: Some(1)`: everything goes but what held roots reach (targets of names in a
//!   group with a pinned or leased name; live leased content), and every name not held;
//! - exactly the bytes that held roots and all names reach: only unnamed content goes (step 2
//!   before step 3), every name stays;
//! - `u64::MAX`: nothing goes.
//!
//! Budgets between those (which image goes first, least recently used) are left to
//! tests/it/prune.rs: they depend on last-use times this test does not control.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use ocistore::prune::{Options, PIN_LABEL};
use ocistore::{Algorithm, Digest, ErrorKind, Labels, Manager, Name, Resource, Store, helpers};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const OWN_CONFIG: &str = "application/vnd.example.config.v1+json";
const PAYLOAD: &str = "application/octet-stream";

/// Artifact types of referrers; `None`: none declared (its config's media type stands in).
const ARTIFACT_TYPES: [Option<&str>; 4] = [
    Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
    Some("application/spdx+json"),
    Some("application/vnd.in-toto+json"),
    None,
];

/// A generated store, before it is written.
#[derive(Debug, Clone)]
struct World {
    /// Lengths of the pool's layers (beyond their unique prefix).
    pool: Vec<usize>,
    /// Per image, the pool layers it lists.
    images: Vec<Vec<Index>>,
    referrers: Vec<ReferrerSpec>,
    names: Vec<NameSpec>,
    lease: Option<LeaseSpec>,
}

#[derive(Debug, Clone)]
struct ReferrerSpec {
    /// Among the images, then the referrers before this one.
    subject: Index,
    artifact: usize,
    empty_config: bool,
    /// `None`: a payload of its own; else a pool layer.
    layers: Vec<Option<Index>>,
}

#[derive(Debug, Clone)]
struct NameSpec {
    on_referrer: bool,
    target: Index,
    pinned: bool,
}

#[derive(Debug, Clone)]
struct LeaseSpec {
    /// A name when there is one, else a blob.
    on_name: bool,
    target: Index,
    expired: bool,
}

fn world() -> impl Strategy<Value = World> {
    let referrer = (
        any::<Index>(),
        0..ARTIFACT_TYPES.len(),
        any::<bool>(),
        prop::collection::vec(prop::option::of(any::<Index>()), 0..=2),
    )
        .prop_map(|(subject, artifact, empty_config, layers)| ReferrerSpec {
            subject,
            artifact,
            empty_config,
            layers,
        });
    let name = (
        prop::bool::weighted(0.2),
        any::<Index>(),
        prop::bool::weighted(0.35),
    )
        .prop_map(|(on_referrer, target, pinned)| NameSpec {
            on_referrer,
            target,
            pinned,
        });
    let lease = (
        prop::bool::weighted(0.3),
        any::<Index>(),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(on_name, target, expired)| LeaseSpec {
            on_name,
            target,
            expired,
        });
    (
        prop::collection::vec(1usize..48, 0..=5),
        prop::collection::vec(prop::collection::vec(any::<Index>(), 0..=3), 1..=5),
        prop::collection::vec(referrer, 0..=8),
        prop::collection::vec(name, 0..=4),
        prop::option::weighted(0.4, lease),
    )
        .prop_map(|(pool, images, referrers, names, lease)| World {
            pool,
            images,
            referrers,
            names,
            lease,
        })
}

/// One blob as the model sees it.
#[derive(Debug)]
struct Node {
    /// What it is in the generated graph ("image 1 manifest", "pool layer 0", ...).
    roles: Vec<String>,
    size: u64,
    /// Config and layers (not the subject).
    children: Vec<Digest>,
    /// A referrer's subject.
    subject: Option<Digest>,
}

/// What the lease holds.
#[derive(Debug)]
enum Held {
    Content(Digest),
    Name(String),
}

/// The store as written: every blob, name and lease.
#[derive(Debug, Default)]
struct Built {
    nodes: BTreeMap<Digest, Node>,
    images: Vec<Digest>,
    referrers: Vec<Digest>,
    /// Normalised name, target, pinned.
    names: Vec<(String, Digest, bool)>,
    /// What the lease holds, and whether the lease is live.
    lease: Option<(Held, bool)>,
}

impl Built {
    /// Writes `bytes` (once: a shared blob gains a role), returning its digest.
    fn put(
        &mut self,
        store: &Store,
        bytes: &[u8],
        role: String,
        children: Vec<Digest>,
        subject: Option<Digest>,
    ) -> Digest {
        let d = Algorithm::Sha256.digest(bytes);
        if let Some(node) = self.nodes.get_mut(&d) {
            node.roles.push(role);
            return d;
        }
        let written = helpers::write_blob(
            store,
            &format!("t-{d}"),
            &mut &bytes[..],
            None,
            None,
            Labels::new(),
        )
        .unwrap();
        assert_eq!(written, d);
        self.nodes.insert(
            d,
            Node {
                roles: vec![role],
                size: bytes.len() as u64,
                children,
                subject,
            },
        );
        d
    }

    fn descriptor(&self, media_type: &str, d: &Digest) -> Value {
        json!({"mediaType": media_type, "digest": d.to_string(), "size": self.nodes[d].size})
    }

    fn label(&self, d: &Digest) -> String {
        format!(
            "{} ({})",
            self.nodes[d].roles.join(", "),
            &d.to_string()[7..19]
        )
    }

    /// The graph, names and lease, for a failure's message.
    fn describe(&self) -> String {
        let mut s = String::from("graph:\n");
        for (d, n) in &self.nodes {
            s += &format!("  {}", self.label(d));
            if !n.children.is_empty() {
                let c: Vec<String> = n.children.iter().map(|c| self.label(c)).collect();
                s += &format!(" -> [{}]", c.join("; "));
            }
            if let Some(subject) = &n.subject {
                s += &format!(" subject {}", self.label(subject));
            }
            s += "\n";
        }
        for (name, target, pinned) in &self.names {
            let pin = if *pinned { " (pinned)" } else { "" };
            s += &format!("  name {name}{pin} -> {}\n", self.label(target));
        }
        match &self.lease {
            Some((Held::Content(d), live)) => {
                s += &format!("  lease (live: {live}) on {}\n", self.label(d))
            }
            Some((Held::Name(n), live)) => s += &format!("  lease (live: {live}) on name {n}\n"),
            None => {}
        }
        s
    }

    fn total(&self) -> u64 {
        self.nodes.values().map(|n| n.size).sum()
    }

    fn size_of(&self, set: &BTreeSet<Digest>) -> u64 {
        set.iter().map(|d| self.nodes[d].size).sum()
    }

    /// Live leased content, and the names a live lease holds.
    fn leased(&self) -> (Option<Digest>, Option<&str>) {
        match &self.lease {
            Some((Held::Content(d), true)) => (Some(*d), None),
            Some((Held::Name(n), true)) => (None, Some(n.as_str())),
            _ => (None, None),
        }
    }
}

/// Writes `world` into `store`.
fn build(store: &Store, world: &World) -> Built {
    let mut b = Built::default();
    let pool: Vec<Digest> = (world.pool.iter().enumerate())
        .map(|(k, len)| {
            let mut bytes = format!("pool layer {k}:").into_bytes();
            bytes.resize(bytes.len() + len, b'a' + k as u8);
            b.put(store, &bytes, format!("pool layer {k}"), vec![], None)
        })
        .collect();
    let pick = |i: &Index| (!pool.is_empty()).then(|| pool[i.index(pool.len())]);
    for (i, layers) in world.images.iter().enumerate() {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","image":{i}}}"#);
        let c = b.put(
            store,
            config.as_bytes(),
            format!("image {i} config"),
            vec![],
            None,
        );
        let layers: Vec<Digest> = layers.iter().filter_map(pick).collect();
        let layers: Vec<Digest> = (layers.iter().enumerate())
            .filter(|(k, d)| !layers[..*k].contains(d))
            .map(|(_, d)| *d)
            .collect();
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": b.descriptor(CONFIG, &c),
            "layers": layers.iter().map(|l| b.descriptor(LAYER, l)).collect::<Vec<_>>(),
        });
        let mut children = vec![c];
        children.extend(&layers);
        let m = b.put(
            store,
            &serde_json::to_vec(&doc).unwrap(),
            format!("image {i} manifest"),
            children,
            None,
        );
        b.images.push(m);
    }
    for (j, r) in world.referrers.iter().enumerate() {
        let s = r.subject.index(b.images.len() + j);
        let subject = if s < b.images.len() {
            b.images[s]
        } else {
            b.referrers[s - b.images.len()]
        };
        let (config, config_type) = if r.empty_config {
            let c = b.put(store, b"{}", format!("referrer {j} config"), vec![], None);
            (c, EMPTY)
        } else {
            let bytes = format!(r#"{{"referrer":{j}}}"#);
            let c = b.put(
                store,
                bytes.as_bytes(),
                format!("referrer {j} config"),
                vec![],
                None,
            );
            (c, OWN_CONFIG)
        };
        let mut layers: Vec<(Digest, &str)> = Vec::new();
        for (k, l) in r.layers.iter().enumerate() {
            let layer = match l.as_ref().and_then(pick) {
                Some(d) => (d, LAYER),
                None => {
                    let bytes = format!("payload {k} of referrer {j}");
                    let d = b.put(
                        store,
                        bytes.as_bytes(),
                        format!("referrer {j} payload {k}"),
                        vec![],
                        None,
                    );
                    (d, PAYLOAD)
                }
            };
            if !layers.iter().any(|(d, _)| *d == layer.0) {
                layers.push(layer);
            }
        }
        let mut doc = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": b.descriptor(config_type, &config),
            "layers": layers.iter().map(|(d, t)| b.descriptor(t, d)).collect::<Vec<_>>(),
            "subject": b.descriptor(MANIFEST, &subject),
            "annotations": {"org.example.referrer": j.to_string()},
        });
        if let Some(t) = ARTIFACT_TYPES[r.artifact] {
            doc["artifactType"] = t.into();
        }
        let mut children = vec![config];
        children.extend(layers.iter().map(|(d, _)| *d));
        let m = b.put(
            store,
            &serde_json::to_vec(&doc).unwrap(),
            format!("referrer {j} manifest"),
            children,
            Some(subject),
        );
        b.referrers.push(m);
    }
    for (k, n) in world.names.iter().enumerate() {
        let target = if n.on_referrer && !b.referrers.is_empty() {
            b.referrers[n.target.index(b.referrers.len())]
        } else {
            b.images[n.target.index(b.images.len())]
        };
        let name = Name::parse(&format!("lab/n{k}:1")).unwrap().to_string();
        let labels: Labels = if n.pinned {
            [(PIN_LABEL.to_owned(), "true".to_owned())].into()
        } else {
            Labels::new()
        };
        let desc = ocistore::names::descriptor(MANIFEST, &target, b.nodes[&target].size).unwrap();
        store.put_image(&name, desc, Some(labels)).unwrap();
        b.names.push((name, target, n.pinned));
    }
    if let Some(l) = &world.lease {
        let expires = l
            .expired
            .then(|| SystemTime::now() - Duration::from_secs(3600));
        store.create_lease("held", expires, Labels::new()).unwrap();
        let held = if l.on_name && !b.names.is_empty() {
            Held::Name(b.names[l.target.index(b.names.len())].0.clone())
        } else {
            let all: Vec<Digest> = b.nodes.keys().copied().collect();
            Held::Content(all[l.target.index(all.len())])
        };
        let resource = match &held {
            Held::Content(d) => Resource::Content(*d),
            Held::Name(n) => Resource::Name(n.clone()),
        };
        store.add_lease_resource("held", &resource).unwrap();
        b.lease = Some((held, !l.expired));
    }
    b
}

/// Everything reachable from `starts` along `edges`.
fn reach(
    edges: &BTreeMap<Digest, Vec<Digest>>,
    starts: impl IntoIterator<Item = Digest>,
    mut kept: BTreeSet<Digest>,
) -> BTreeSet<Digest> {
    let mut stack: Vec<Digest> = starts.into_iter().collect();
    while let Some(d) = stack.pop() {
        if kept.insert(d) {
            stack.extend(edges.get(&d).into_iter().flatten().copied());
        }
    }
    kept
}

/// What gc keeps: from the names' targets and live leased content, along children and
/// subjects, and to every referrer of kept content, until nothing changes.
fn gc_model(b: &Built) -> BTreeSet<Digest> {
    let edges: BTreeMap<Digest, Vec<Digest>> = (b.nodes.iter())
        .map(|(d, n)| (*d, n.children.iter().chain(&n.subject).copied().collect()))
        .collect();
    let (leased, _) = b.leased(); // a leased name is named anyway
    let mut kept = reach(
        &edges,
        b.names.iter().map(|(_, t, _)| *t).chain(leased),
        BTreeSet::new(),
    );
    loop {
        let referrers: Vec<Digest> = (b.nodes.iter())
            .filter(|(d, n)| !kept.contains(*d) && n.subject.is_some_and(|s| kept.contains(&s)))
            .map(|(d, _)| *d)
            .collect();
        if referrers.is_empty() {
            return kept;
        }
        kept = reach(&edges, referrers, kept);
    }
}

/// prune's graph: children, and each subject reaching its referrers (never the reverse).
fn prune_edges(b: &Built) -> BTreeMap<Digest, Vec<Digest>> {
    let mut edges: BTreeMap<Digest, Vec<Digest>> = (b.nodes.iter())
        .map(|(d, n)| (*d, n.children.clone()))
        .collect();
    for (d, n) in &b.nodes {
        if let Some(s) = n.subject {
            edges.entry(s).or_default().push(*d);
        }
    }
    edges
}

/// The budgets whose outcome the module docs fix.
#[derive(Debug, Clone, Copy)]
enum Budget {
    /// `max_used: Some(1)`: everything that may go goes.
    Everything,
    /// Exactly what names and held roots reach: unnamed content goes, no image.
    UnnamedOnly,
    /// `u64::MAX`: nothing.
    Nothing,
}

/// What prune keeps under `budget`: blobs, names, and the `max_used` to ask for.
fn prune_model(b: &Built, budget: Budget) -> (BTreeSet<Digest>, BTreeSet<String>, u64) {
    let edges = prune_edges(b);
    let (leased, leased_name) = b.leased();
    // Names grouped by target; a group is held when any of its names is pinned or leased.
    let held_targets: BTreeSet<Digest> = (b.names.iter())
        .filter(|(n, _, pinned)| *pinned || leased_name == Some(n.as_str()))
        .map(|(_, t, _)| *t)
        .collect();
    let all_names: BTreeSet<String> = b.names.iter().map(|(n, ..)| n.clone()).collect();
    let held_roots = held_targets.iter().copied().chain(leased);
    match budget {
        Budget::Everything => {
            let names = (b.names.iter())
                .filter(|(_, t, _)| held_targets.contains(t))
                .map(|(n, ..)| n.clone())
                .collect();
            (reach(&edges, held_roots, BTreeSet::new()), names, 1)
        }
        Budget::UnnamedOnly => {
            let kept = reach(
                &edges,
                held_roots.chain(b.names.iter().map(|(_, t, _)| *t)),
                BTreeSet::new(),
            );
            let size = b.size_of(&kept);
            (kept, all_names, size)
        }
        Budget::Nothing => (b.nodes.keys().copied().collect(), all_names, u64::MAX),
    }
}

/// The generated blobs whose presence differs from `want`.
fn mismatches(store: &Store, b: &Built, want: &BTreeSet<Digest>) -> Vec<String> {
    let mut out = Vec::new();
    for d in b.nodes.keys() {
        let present = match store.info(d) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => panic!("info {d}: {e}"),
        };
        if present != want.contains(d) {
            let (was, should) = if present {
                ("kept", "removed")
            } else {
                ("removed", "kept")
            };
            out.push(format!("{} was {was}, should be {should}", b.label(d)));
        }
    }
    out
}

fn names(store: &Store) -> BTreeSet<String> {
    (store.images(&[]).unwrap().into_iter())
        .map(|i| i.name)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// gc keeps what names and live leases reach, with the referrers of kept content and
    /// theirs, and removes everything else.
    #[test]
    fn gc_keeps_referrers_of_kept_content_and_nothing_unreachable(world in world()) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = build(&store, &world);
        let want = gc_model(&b);
        let names_before = names(&store);
        let out = store.gc(&Default::default()).unwrap();
        let wrong = mismatches(&store, &b, &want);
        prop_assert!(wrong.is_empty(), "gc:\n  {}\n{}", wrong.join("\n  "), b.describe());
        let removed: BTreeSet<String> = (out.removed.iter())
            .filter(|r| r.kind == "content")
            .map(|r| r.id.clone())
            .collect();
        let should: BTreeSet<String> = (b.nodes.keys())
            .filter(|d| !want.contains(*d))
            .map(Digest::to_string)
            .collect();
        prop_assert_eq!(removed, should, "gc's report\n{}", b.describe());
        prop_assert_eq!(names(&store), names_before, "gc removes no name");
    }

    /// prune takes an image and its referrers as one unit, under budgets whose outcome does
    /// not depend on the order of last use.
    #[test]
    fn prune_takes_an_image_and_its_referrers_as_one_unit(
        world in world(),
        budget in prop_oneof![
            2 => Just(Budget::Everything),
            1 => Just(Budget::UnnamedOnly),
            1 => Just(Budget::Nothing),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = build(&store, &world);
        let (want, want_names, max_used) = prune_model(&b, budget);
        let all_names = names(&store);
        let out = store
            .prune(&Options { max_used: Some(max_used), ..Default::default() })
            .unwrap();
        let wrong = mismatches(&store, &b, &want);
        prop_assert!(
            wrong.is_empty(),
            "prune ({budget:?}, max_used {max_used}):\n  {}\n{}",
            wrong.join("\n  "),
            b.describe()
        );
        prop_assert_eq!(names(&store), want_names.clone(), "names after prune ({:?})\n{}", budget, b.describe());
        let removed_images: BTreeSet<String> = out.removed_images.iter().cloned().collect();
        let gone: BTreeSet<String> = all_names.difference(&want_names).cloned().collect();
        prop_assert_eq!(removed_images, gone, "prune's report ({:?})\n{}", budget, b.describe());
        prop_assert_eq!(out.used_before, b.total());
        prop_assert_eq!(out.used_after, b.size_of(&want));
        prop_assert_eq!(out.budget_reached, b.size_of(&want) <= max_used);
    }
}
