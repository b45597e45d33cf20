//! The read-through cache over a registry.

use super::*;

// read-through cache

/// The image's largest layer.
fn largest_layer(image: &images::Image) -> images::Blob {
    image.platforms[0]
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .unwrap()
        .clone()
}

/// `content cat DIGEST --remote REPO` of a blob the store lacks streams its bytes (they hash
/// to the digest), keeps it with its source label, and a second cat reads it locally, with
/// no request. Two processes reading the same missing blob at once fetch it once.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn read_through_streams_keeps_and_fetches_once() {
    let env = Env::new();
    let (reg, image, _) = registry_with(&env, "cache/app:1", AMD64, &[6 << 20, 64 << 10], 41);
    let big = largest_layer(&image);
    let repo = reg.reference("cache/app");
    let root = env.path("store");
    let cat = |root: &std::path::Path| {
        let out = env
            .ocistore(root)
            .args(["content", "cat", &big.digest, "--remote", &repo])
            .output()
            .expect("run ocistore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let first = cat(&root);
    assert_eq!(first.len() as u64, big.size);
    assert_eq!(sha256(&first), big.digest);
    let info = env.ok(&root, &["content", "info", &big.digest]);
    assert_eq!(
        info["labels"][format!("containerd.io/distribution.source.{}", reg.host)],
        "cache/app",
        "{info}"
    );
    let before = reg.ours().len();
    assert_eq!(cat(&root), first, "the second read is the same bytes");
    assert_eq!(reg.ours().len(), before, "and makes no request");

    // Two readers at once of a blob neither has: one fetch.
    let shared = env.path("shared");
    let spawn = || {
        env.ocistore(&shared)
            .args(["content", "cat", &big.digest, "--remote", &repo])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Each drained on its own thread: the one that streams must not block on a full pipe
    // while the test waits on the other.
    let waits: Vec<_> = [spawn(), spawn()]
        .into_iter()
        .map(|c| std::thread::spawn(move || c.wait_with_output().unwrap()))
        .collect();
    for w in waits {
        let out = w.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, first);
    }
    let gets = blob_gets(&reg.ours());
    assert_eq!(
        gets.get(&big.digest),
        Some(&2),
        "one GET per store: {}",
        list(&reg.ours())
    );
}

/// A reader that stops early commits nothing and leaves its bytes to resume; bytes that do
/// not hash to the digest are refused and leave nothing.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn read_through_early_stop_resumes_and_wrong_bytes_leave_nothing() {
    let env = Env::new();
    let (_reg, proxy, image, big, _) = faulty(&env, 43, |big| {
        vec![Rule::new("GET", big, Fault::FlipByte).times(1)]
    });
    let repo = proxy.reference("fault/app");
    let root = env.path("store");
    // Wrong bytes (the proxy flips one, once): refused, nothing kept.
    let r = env.run(&root, &["content", "cat", &big.digest, "--remote", &repo]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains(&big.digest), "{}", r.stderr);
    nothing_unverified(&env, &root, &image, &big.digest);

    // A reader that takes 1 MiB and goes away.
    let mut child = env
        .ocistore(&root)
        .args(["content", "cat", &big.digest, "--remote", &repo])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(!status.success(), "a reader cut off fails");
    let ls = env.ok(&root, &["content", "ls", "-q"]);
    assert!(
        !ls.to_string().contains(&big.digest),
        "nothing committed from a stopped reader: {ls}"
    );
    assert!(ingest_bytes(&root) >= 1 << 20, "its bytes stay to resume");
    // The next reader resumes (a Range request) and gets every byte right.
    let out = env
        .ocistore(&root)
        .args(["content", "cat", &big.digest, "--remote", &repo])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), big.digest);
    assert_eq!(&out.stdout[..1 << 20], &head[..]);
    let resumed = proxy
        .blob_gets(&big.digest)
        .iter()
        .filter_map(Seen::range_start)
        .filter(|&n| n > 0)
        .count();
    assert_eq!(resumed, 1, "{}", seen_list(&proxy.seen()));
    assert_eq!(ingest_bytes(&root), 0, "the ingest went with the commit");
}

/// A pull is one more writer that maintenance must respect: `gc`, `fsck --repair` and a
/// read-only `fsck` run back to back in other processes while `image pull` writes; the pull
/// succeeds with its image whole, nothing it adopted is taken, and every concurrent `fsck`
/// finds the store clean (the pull's blobs in flight are counted, not reported).
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pull_beside_gc_and_fsck_repair_loses_nothing() {
    let env = Env::new();
    let sizes = [12 << 20, 8 << 20, 4 << 20, 64 << 10];
    let (_reg, image, reference) = registry_with(&env, "maint/app:1", AMD64, &sizes, 51);
    for trial in 0..3 {
        let root = env.path(&format!("store{trial}"));
        env.ok(&root, &["du"]);
        let mut pull = env
            .cmd(&root, &["image", "pull", &reference])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut rounds = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while pull.try_wait().unwrap().is_none() && Instant::now() < deadline {
            for args in [&["gc"][..], &["fsck", "--repair"], &["fsck"]] {
                let r = env.run(&root, args);
                assert_eq!(
                    r.code,
                    Some(0),
                    "{args:?} beside a pull: {}{}",
                    r.stdout,
                    r.stderr
                );
            }
            rounds += 1;
        }
        let out = pull.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "trial {trial}: the pull failed beside maintenance: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pulled_whole(&env, &root, &reference, &image);
        // gc after the pull keeps what the name roots.
        env.ok(&root, &["gc"]);
        pulled_whole(&env, &root, &reference, &image);
        println!("trial {trial}: {rounds} maintenance rounds beside the pull");
    }
}

/// A pull of blobs the store has but no name holds, beside `gc` in other processes: the
/// transaction that starts the pull's batch leases what it finds present, and gc must keep
/// it while the pull downloads the rest. The fault proxy (a test double: a real registry
/// cannot be made slow) holds the one missing layer's GET for 2 s, while gc runs in a loop.
/// (A gc before the pull's first transaction may take the unnamed blobs, and then the pull
/// downloads them: correct, but not what this test is about, so gc starts after it.)
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pull_of_unnamed_present_blobs_beside_gc_loses_nothing() {
    let env = Env::new();
    let sizes = [1 << 20, 256 << 10, 64 << 10];
    let (reg, image, reference) = registry_with(&env, "unnamed/app:1", AMD64, &sizes, 52);
    let missing = image.platforms[0].layers[0].digest.clone();
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new(
            "GET",
            &missing,
            Fault::Delay(Duration::from_secs(2)),
        )],
    );
    let via_proxy = proxy.reference("unnamed/app:1");
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    env.ok(&root, &["image", "rm", &reference]);
    env.ok(&root, &["content", "rm", &missing]);
    let pull = env
        .cmd(&root, &["image", "pull", &via_proxy])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pull = pull;
    // gc from the moment the pull asks for the missing layer, which is after its leases.
    assert!(
        poll(Duration::from_secs(30), Duration::from_millis(5), || {
            !proxy
                .seen_where(|s| s.method == "GET" && s.uri.ends_with(&missing))
                .is_empty()
        }),
        "the pull never asked for the missing layer"
    );
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pull.try_wait().unwrap().is_none() && Instant::now() < deadline {
        env.ok(&root, &["gc"]);
        rounds += 1;
    }
    let out = pull.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the pull failed beside gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rounds >= 1, "gc ran {rounds} times beside the pull");
    // Only the removed layer is downloaded: gc kept the leased rest. (The manifest is not
    // a download: the pull has its bytes, and stages them again if gc took them.)
    let blob_gets = proxy.seen_where(|s| s.method == "GET" && s.uri.contains("/blobs/"));
    assert!(
        blob_gets.len() == 1 && blob_gets[0].uri.ends_with(&missing),
        "one blob GET, the removed layer's:\n{}",
        seen_list(&blob_gets)
    );
    pulled_whole(&env, &root, &via_proxy, &image);
    env.ok(&root, &["gc"]);
    pulled_whole(&env, &root, &via_proxy, &image);
}

/// A push leases what it pushes: an `image rm` and a gc in another process while it runs
/// take nothing from under it. Here a proxy holds the push's HEAD of the first layer for 2 s,
/// and meanwhile the image's name is removed and gc runs; the push still sends the whole
/// image. (Without the lease it failed with "could not open for upload …: No such file or
/// directory" or "content … not found": 8 of about 330 pushes beside rm and gc loops.)
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn push_beside_rm_and_gc_sends_the_whole_image() {
    let env = Env::new();
    let sizes = [256 << 10, 64 << 10];
    let (reg, image, reference) = registry_with(&env, "pushrm/app:1", AMD64, &sizes, 81);
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    // Through the proxy the registry is another host: nothing to mount from, every blob is
    // read from its file and uploaded.
    let layer = image.platforms[0].layers[0].digest.clone();
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new(
            "HEAD",
            &layer,
            Fault::Delay(Duration::from_secs(2)),
        )],
    );
    let target = proxy.reference("pushrm/copy:1");
    let push = env
        .cmd(&root, &["image", "push", &reference, &target])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        poll(Duration::from_secs(30), Duration::from_millis(5), || {
            !proxy
                .seen_where(|s| s.method == "HEAD" && s.uri.ends_with(&layer))
                .is_empty()
        }),
        "the push never asked for the layer"
    );
    env.ok(&root, &["image", "rm", &reference]);
    let gc = env.ok(&root, &["gc"]);
    assert_eq!(
        gc["removed"],
        json!([]),
        "gc took what the push holds: {gc}"
    );
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the push failed beside rm and gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = env.path("check");
    env.pull(&check, &[&target], &image.root.digest);
    pulled_whole(&env, &check, &target, &image);
    // The lease went with the push: now gc takes the unnamed image.
    let gc = env.ok(&root, &["gc"]);
    assert!(!gc["removed"].as_array().unwrap().is_empty(), "{gc}");
}

/// Two processes pulling one image at once (by tag and by digest) into one store, while a
/// third removes the tag's name whenever it lands and runs gc in a loop: every pull succeeds
/// and the image is whole. A blob that one pull committed, and gc then took once that name
/// went, used to be missing for the other pull, which failed with "vanished before it was
/// committed", "changed after it was sealed" or "removed while the pull ran" (24 of about
/// 150 pulls in a 40 s loop by hand); now each pull's lease holds every blob it wants.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn concurrent_pulls_of_one_image_beside_rm_and_gc_all_succeed() {
    let env = Env::new();
    let sizes = [96 << 10, 32 << 10, 8 << 10];
    let (_reg, image, by_tag) = registry_with(&env, "twice/app:1", AMD64_ARM64, &sizes, 71);
    let by_digest = format!(
        "{}@{}",
        by_tag.rsplit_once(':').unwrap().0,
        image.root.digest
    );
    let mut gc_runs = 0;
    for round in 0..8 {
        let root = env.path(&format!("store-{round}"));
        env.ok(&root, &["image", "ls"]);
        let spawn = |reference: &str| {
            env.cmd(&root, &["image", "pull", "--all-platforms", reference])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut pulls = [spawn(&by_tag), spawn(&by_digest)];
        let deadline = Instant::now() + Duration::from_secs(60);
        while pulls.iter_mut().any(|p| p.try_wait().unwrap().is_none()) {
            assert!(Instant::now() < deadline, "round {round}: the pulls hang");
            // The tag's name may not be there yet, or be gone already.
            let _ = env.run(&root, &["image", "rm", &by_tag]);
            env.ok(&root, &["gc"]);
            gc_runs += 1;
        }
        for (pull, what) in pulls.into_iter().zip(["by tag", "by digest"]) {
            let out = pull.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: the pull {what} failed beside rm and gc: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        pulled_whole(&env, &root, &by_digest, &image);
    }
    println!("two pulls beside rm and gc: 8 rounds, {gc_runs} gc runs, every pull succeeded");
}

/// Pulls and pushes beside every other command (`every_command_beside_every_other` in
/// tests/it/maintenance.rs runs the local ones): pulls by tag and by digest, pushes to three
/// tags of another repository, tags, removals, gc, prune, fsck, `fsck --repair`, listings
/// and checks, each a loop of separate processes on one store for 12 s, then 6 s more with a
/// random one killed every 100 ms. A run may fail only with "image … not found" for a name
/// another process removed; every fsck and repair finds nothing wrong (beside kills, only
/// what a killed remover leaves). At the end, after one repair, fsck is clean, every name in
/// the store is complete, and every tag the pushes left in the registry pulls whole.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pulls_and_pushes_beside_every_other_command() {
    let env = Env::new();
    // The first layer is over 1 MiB, so that its GETs are read around ureq
    // (src/registry/direct.rs), killed mid-body and resumed with a Range like the rest.
    let sizes = [(1 << 20) + (96 << 10), 32 << 10, 8 << 10];
    let (_reg, image, by_tag) = registry_with(&env, "every/app:1", AMD64_ARM64, &sizes, 73);
    let host = by_tag.split('/').next().unwrap().to_owned();
    let by_digest = format!(
        "{}@{}",
        by_tag.rsplit_once(':').unwrap().0,
        image.root.digest
    );
    let root = env.path("store");
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // A signature on the image, in the registry (its tag-schema index): the pulls by digest
    // and the pushes carry it with --referrers.
    let seed = env.path("seed");
    env.ok(&seed, &["image", "pull", &by_tag]);
    let sig = env.path("sig.txt");
    std::fs::write(&sig, b"a signature").unwrap();
    let made = env.ok(
        &seed,
        &[
            "artifact",
            "create",
            "every/sig:1",
            "--artifact-type",
            "application/vnd.dev.sigstore",
            "--subject",
            &by_tag,
            p(&sig),
        ],
    );
    let sig_digest = made["digest"].as_str().unwrap().to_owned();
    env.ok(
        &seed,
        &[
            "image",
            "push",
            "every/sig:1",
            &format!("{host}/every/app:sig"),
        ],
    );
    env.ok(&root, &["image", "ls"]);
    let copies: Vec<String> = (0..3).map(|k| format!("{host}/every/copy:{k}")).collect();
    let arg = |s: &str| s.to_owned();
    let (t, d, c) = (arg(&by_tag), arg(&by_digest), copies.clone());
    let (t2, t3, t4) = (arg(&by_tag), arg(&by_tag), arg(&by_tag));
    let mut streams = maintenance("64KiB");
    streams.extend([
        Stream {
            name: "pull by tag",
            args: Box::new(move |_| owned(&["image", "pull", "--all-platforms", &t])),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "pull by digest",
            args: Box::new(move |_| {
                owned(&["image", "pull", "--all-platforms", "--referrers", &d])
            }),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "push",
            args: Box::new(move |i| owned(&["image", "push", "--referrers", &t2, &c[i % 3]])),
            expected_failure: name_not_found,
            check: succeeded,
        },
        Stream {
            name: "tag",
            args: Box::new(move |_| owned(&["image", "tag", &t3, "local/copy:1"])),
            expected_failure: name_not_found,
            check: succeeded,
        },
        Stream {
            name: "rm",
            args: Box::new(move |i| {
                let name = if i % 2 == 0 {
                    t4.as_str()
                } else {
                    "local/copy:1"
                };
                owned(&["image", "rm", name])
            }),
            expected_failure: name_not_found,
            check: succeeded,
        },
        Stream {
            name: "listings and checks",
            args: Box::new(|i| match i % 4 {
                0 => owned(&["du"]),
                1 => owned(&["image", "ls"]),
                2 => owned(&["ingest", "ls"]),
                _ => owned(&[
                    "image",
                    "check",
                    "local/copy:1",
                    "--platform",
                    "linux/amd64",
                ]),
            }),
            expected_failure: name_not_found,
            check: succeeded,
        },
    ]);
    let command = |args: &[&str]| {
        let mut c = env.ocistore(&root);
        c.args(args);
        c
    };
    let calm = run_streams(&command, &scratch, &streams, Duration::from_secs(12), None);
    calm.report("pulls and pushes beside every command");
    let killing = run_streams(
        &command,
        &scratch,
        &streams,
        Duration::from_secs(6),
        Some(Duration::from_millis(100)),
    );
    killing.report("with kills");
    assert!(killing.killed > 10, "only {} kills", killing.killed);

    env.ok(&root, &["fsck", "--repair"]);
    env.fsck_clean(&root);
    let names = env.ok(&root, &["image", "ls"]);
    for name in names.as_array().unwrap() {
        let name = name["name"].as_str().unwrap();
        for pi in &image.platforms {
            assert!(
                env.complete(&root, name, &pi.platform),
                "{name}: {}",
                pi.platform
            );
        }
    }
    let mut pushed_tags = 0;
    for copy in &copies {
        let fresh = env.path(&format!("fresh-{}", copy.rsplit(':').next().unwrap()));
        let r = env.run(&fresh, &["image", "pull", "--all-platforms", copy]);
        if r.code == Some(0) {
            pulled_whole(&env, &fresh, copy, &image);
            pushed_tags += 1;
        } else {
            assert!(r.stderr.contains("not found"), "{copy}: {}", r.stderr);
        }
    }
    assert!(pushed_tags > 0, "no push completed");
    // Once the others are done, the signature comes and goes with the image.
    env.ok(&root, &["image", "pull", "--referrers", &by_digest]);
    let listed = env.ok(&root, &["image", "referrers", &by_digest]);
    assert_eq!(listed[0]["digest"], sig_digest.as_str(), "{listed}");
    env.ok(
        &root,
        &["image", "push", "--referrers", &by_digest, &copies[0]],
    );
    let remote = env.ok(&root, &["remote", "referrers", &copies[0]]);
    assert!(
        remote
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["digest"] == sig_digest.as_str()),
        "{remote}"
    );
    println!(
        "pulls and pushes beside every command: {} + {} runs, {} killed; {pushed_tags} pushed tags pull whole",
        calm.runs, killing.runs, killing.killed
    );
}

/// An image source (`ReadThrough::image`) over a registry repository, for one platform of a
/// two-platform image: the manifest, config and layers it reads are the bytes skopeo reads;
/// it fetches that platform's blobs only, each once, keeps what it read with no name, and a
/// second image source by the same tag makes one manifest GET and no blob GET.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn image_source_reads_one_platform_through_the_cache() {
    let env = Env::new();
    let sizes = [300 << 10, 100 << 10];
    let (reg, image, reference) = registry_with(&env, "source/app:1", AMD64_ARM64, &sizes, 61);
    let copy = env.path("skopeo");
    skopeo_reads(&format!("docker://{reference}"), &copy, &image);
    let theirs = |d: &str| {
        std::fs::read(
            copy.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let read = |r: ocistore::Result<Box<dyn std::io::Read + Send + '_>>| {
        let mut out = Vec::new();
        r.unwrap().read_to_end(&mut out).unwrap();
        out
    };
    let store = ocistore::Store::open(env.path("store")).unwrap();
    let source = ocistore::cache::RegistrySource {
        registry: anonymous(),
        repository: Repository::of(&ocistore::Name::parse(&reference).unwrap()),
    };
    let rt = ocistore::cache::ReadThrough::new(store.clone(), source);
    let arm = ocistore::names::parse_platform("linux/arm64/v8").unwrap();
    let want = image.platform("linux/arm64/v8");

    let mark = reg.ours().len();
    let img = rt.image(&reference, &arm).unwrap();
    assert_eq!(img.root().digest().to_string(), image.root.digest);
    assert_eq!(img.descriptor().digest().to_string(), want.manifest.digest);
    let m = ocistore::Digest::parse(&want.manifest.digest).unwrap();
    assert_eq!(read(img.open(&m)), theirs(&want.manifest.digest));
    assert_eq!(img.config(), theirs(&want.config.digest));
    assert_eq!(img.layers().len(), want.layers.len());
    for (i, layer) in want.layers.iter().enumerate() {
        assert_eq!(img.layers()[i].digest().to_string(), layer.digest);
        assert_eq!(read(img.layer(i)), theirs(&layer.digest), "layer {i}");
    }
    let reqs = reg.ours_since(mark);
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for b in std::iter::once(&want.config).chain(&want.layers) {
        expected.insert(b.digest.clone(), 1);
    }
    assert_eq!(
        blob_gets(&reqs),
        expected,
        "that platform's blobs, once each:\n{}",
        list(&reqs)
    );
    let other = &image.platform("linux/amd64").manifest.digest;
    assert!(
        !reqs.iter().any(|r| r.uri.contains(other.as_str())),
        "the other platform's manifest is not asked for:\n{}",
        list(&reqs)
    );
    for d in [&image.root.digest, &want.manifest.digest] {
        let info = ocistore::Manager::info(&store, &ocistore::Digest::parse(d).unwrap());
        assert!(info.is_ok(), "{d} kept as a blob");
    }
    assert!(store.images(&[]).unwrap().is_empty(), "no name written");

    // Again by tag: one manifest GET (the cache keeps no name for the tag), no blob GET.
    let mark = reg.ours().len();
    let again = rt.image(&reference, &arm).unwrap();
    assert_eq!(again.descriptor(), img.descriptor());
    for i in 0..again.layers().len() {
        read(again.layer(i));
    }
    let reqs = reg.ours_since(mark);
    assert_eq!(reqs.len(), 1, "{}", list(&reqs));
    assert_eq!(reqs[0].method, "GET", "{}", reqs[0]);
    assert_eq!(reqs[0].uri, "/v2/source/app/manifests/1", "{}", reqs[0]);
}
