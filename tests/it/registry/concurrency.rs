//! Pulls and pushes beside each other and beside every other command, and killed mid-way.

use super::*;

// concurrency

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn concurrent_pulls_fetch_each_blob_once() {
    let env = Env::new();
    let sizes = [16 << 20, 12 << 20, 8 << 20, 4 << 20];
    let (reg, image, reference) = registry_with(&env, "conc/app:1", AMD64, &sizes, 11);
    let root = env.path("store");
    // Create the store first, so that the four start on an existing one.
    env.ok(&root, &["du"]);

    let mark = reg.ours().len();
    let children: Vec<Child> = (0..4)
        .map(|_| {
            env.cmd(&root, &["image", "pull", &reference])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut fetched = 0;
    for o in &outs {
        assert!(
            o.status.success(),
            "a concurrent pull failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["digest"], image.root.digest, "{v}");
        fetched += v["bytes_fetched"].as_u64().unwrap();
    }
    let reqs = reg.ours_since(mark);
    let gets = blob_gets(&reqs);
    for (d, _) in image.plain_blobs() {
        let n = gets.get(&d).copied().unwrap_or(0);
        assert!(
            (1..=2).contains(&n),
            "{d} was fetched {n} times by 4 concurrent pulls:\n{}",
            list(&reqs)
        );
    }
    assert!(
        fetched <= image.size() + image.size() / 4,
        "the four pulls fetched {fetched} bytes of a {}-byte image",
        image.size()
    );
    pulled_whole(&env, &root, &reference, &image);
}

// crash

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn killed_pull_resumes_from_its_bytes() {
    let env = Env::new();
    let sizes = [64 << 20, 56 << 20, 48 << 20, 32 << 20];
    let (_reg, image, reference) = registry_with(&env, "crash/app:1", AMD64, &sizes, 12);
    let root = env.path("store");
    env.ok(&root, &["du"]);

    let mut child = env
        .cmd(&root, &["image", "pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once its ingests hold some bytes, well before the end.
    let midway = poll(Duration::from_secs(60), Duration::from_millis(2), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the pull ended ({status}) before it could be killed midway; ingest bytes \
                 seen: {}",
                ingest_bytes(&root)
            );
        }
        ingest_bytes(&root) >= 8 * MIB
    });
    assert!(midway, "the pull wrote nothing in 60 s");
    child.kill().unwrap();
    child.wait().unwrap();

    let ingests = env.ok(&root, &["ingest", "ls"]);
    let ingest_offsets: u64 = ingests
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["offset"].as_u64().unwrap())
        .sum();
    assert!(
        ingest_offsets > 0,
        "the killed pull left its bytes: {ingests}"
    );
    let committed: u64 = env.content(&root).values().sum();
    let on_disk = ingest_offsets + committed;
    assert!(
        on_disk < image.size(),
        "the kill came before the end ({on_disk} of {})",
        image.size()
    );

    let out = env.pull(&root, &[&reference], &image.root.digest);
    let fetched = out["bytes_fetched"].as_u64().unwrap();
    let blobs = image.blobs().len() as u64;
    assert!(
        fetched + on_disk <= image.size() + blobs * MIB,
        "the second pull fetched {fetched} bytes with {on_disk} on disk (ingests \
         {ingest_offsets}, committed {committed}) of a {}-byte image: it did not resume",
        image.size()
    );
    assert!(
        fetched < image.size(),
        "a resumed pull fetches less than the image ({fetched})"
    );
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn an_index_whose_entries_have_no_platform_is_pulled_whole() {
    // An artifact index: no entry names a platform. The default pull (this machine's
    // platform) takes every entry, and the image is complete; before, it failed with "a
    // manifest for linux/amd64 ... (it has no platforms) not found".
    let env = Env::new();
    let (_reg, image, reference) = registry_with(
        &env,
        "nopf/app:1",
        &["?linux/amd64", "?linux/arm64"],
        &[40 << 10, 20 << 10],
        53,
    );
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    let expected = image.blobs();
    let content = env.content(&root);
    for (d, size) in &expected {
        assert_eq!(content.get(d), Some(size), "{d} pulled");
    }
    for platform in ["linux/amd64", "linux/arm64"] {
        assert!(
            env.complete(&root, &reference, platform),
            "complete for {platform}"
        );
    }
    env.fsck_clean(&root);
}

/// Leases of processes that died, as `lease ls --json` shows them: those whose owner is dead.
fn dead_owner_leases(env: &Env, root: &std::path::Path) -> Vec<String> {
    let leases = env.ok(root, &["lease", "ls"]);
    (leases.as_array().unwrap().iter())
        .filter(|l| l["owner"].is_object() && l["owner"]["alive"] == false)
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn killed_commands_leave_no_holds_past_the_next_gc_or_prune() {
    // 50 trials: an import, pull, push, export or read-through cat killed (SIGKILL to the
    // ocistore process itself) at a random moment, then one gc or one prune with a budget
    // below the store's size, both with --ingest-expiry 0s. After it: no lease of a dead
    // process, no ingest left, nothing stored but what a name or the user's own lease holds,
    // the user's lease untouched, and fsck clean.
    let env = Env::new();
    let sizes = [6 << 20, 5 << 20, 4 << 20, 3 << 20];
    let (reg, image, reference) = registry_with(&env, "killed/app:1", AMD64, &sizes, 51);
    let template = env.path("template");
    env.pull(&template, &[&reference], &image.root.digest);
    let archive = env.path("image.oci.tar");
    env.ok(
        &template,
        &["image", "export", &reference, "-o", p(&archive)],
    );
    let big = (image.platforms[0].layers.iter())
        .max_by_key(|l| l.size)
        .unwrap()
        .clone();

    let mut rng = 0x27_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let kinds = ["import", "pull", "push", "export", "cat"];
    let mut dropped_leases = 0;
    let mut reclaimed = 0;
    for trial in 0..50u64 {
        let kind = kinds[trial as usize % kinds.len()];
        let root = env.path(&format!("t{trial}"));
        if matches!(kind, "push" | "export") {
            sh("cp", &["-a", p(&template), p(&root)]);
        }
        // A blob only the user's own lease holds: no gc or prune may take it.
        let own = env.path(&format!("own{trial}"));
        std::fs::write(&own, format!("kept by the user's lease, trial {trial}")).unwrap();
        let put = env.ok(&root, &["content", "put", p(&own)]);
        let own_digest = put["digest"].as_str().unwrap().to_owned();
        env.ok(
            &root,
            &[
                "lease",
                "create",
                "mine",
                "--resource",
                &format!("content:{own_digest}"),
            ],
        );

        let out = env.path(&format!("out{trial}"));
        let other = reg.reference(&format!("killed/copy{trial}:1"));
        let args: Vec<&str> = match kind {
            "import" => vec!["image", "import", "--name", &reference, p(&archive)],
            "pull" => vec!["image", "pull", &reference],
            "push" => vec!["image", "push", &reference, &other],
            "export" => vec!["image", "export", &reference, "-o", p(&out)],
            _ => vec![
                "content",
                "cat",
                "--plain-http",
                "--remote",
                &reference,
                &big.digest,
            ],
        };
        let mut child = env
            .cmd(&root, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2 + next(120)));
        child.kill().unwrap();
        child.wait().unwrap();

        let dead_before = dead_owner_leases(&env, &root);
        let collect: Vec<&str> = if trial % 2 == 0 {
            vec!["gc", "--ingest-expiry", "0s"]
        } else {
            vec!["prune", "--max-used", "1", "--ingest-expiry", "0s"]
        };
        let swept = env.ok(&root, &collect);
        let gone: BTreeSet<&str> = (swept["removed"].as_array().unwrap().iter())
            .filter(|r| r["kind"] == "lease")
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        for lease in &dead_before {
            assert!(
                gone.contains(lease.as_str()),
                "trial {trial} ({kind}): {lease} not dropped: {swept}"
            );
        }
        dropped_leases += gone.len();
        let left = dead_owner_leases(&env, &root);
        assert!(
            left.is_empty(),
            "trial {trial} ({kind}): dead owners' leases left: {left:?}"
        );
        let ingests = env.ok(&root, &["ingest", "ls"]);
        assert!(
            ingests.as_array().is_none_or(Vec::is_empty),
            "trial {trial} ({kind}): ingests left: {ingests}"
        );

        // What is stored: the image's blobs while a name holds it, and the user's blob.
        let leases = env.ok(&root, &["lease", "ls"]);
        let ids: Vec<&str> = (leases.as_array().unwrap().iter())
            .map(|l| l["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["mine"], "trial {trial} ({kind})");
        let named = env.ok(&root, &["image", "ls"]);
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        if named.as_array().is_some_and(|n| !n.is_empty()) {
            expected = image.blobs();
        }
        expected.insert(own_digest.clone(), std::fs::metadata(&own).unwrap().len());
        let content = env.content(&root);
        assert_eq!(
            content, expected,
            "trial {trial} ({kind}): {collect:?} left the wrong content"
        );
        reclaimed += usize::from(expected.len() == 1);
        if collect[0] == "prune" {
            // A blob file a dead commit linked but never recorded is not a blob: prune
            // leaves such debris to gc, which takes it at once (its staging went above).
            let fsck = env.run(&root, &["fsck"]).json();
            let problems = fsck["problems"].as_array().unwrap();
            assert!(
                problems.iter().all(|p| p["kind"] == "debris"),
                "trial {trial}: {fsck}"
            );
            env.ok(&root, &["gc"]);
        }
        env.fsck_clean(&root);
        let _ = std::fs::remove_dir_all(&root);
    }
    println!(
        "50 killed commands: {dropped_leases} dead leases dropped, {reclaimed} stores emptied to the user's lease"
    );
    assert!(
        dropped_leases > 0,
        "no kill left a lease behind: the kills came too late"
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn a_slow_live_pull_keeps_its_holds_through_gc_and_prune() {
    // The fault proxy is a test double for a slow registry: each blob GET waits 4 s.
    let env = Env::new();
    let (reg, image, _) =
        registry_with(&env, "slow/app:1", AMD64, &[3 << 20, 2 << 20, 1 << 20], 52);
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new(
            "GET",
            "/blobs/sha256:",
            Fault::Delay(Duration::from_secs(4)),
        )],
    );
    let reference = proxy.reference("slow/app:1");
    let root = env.path("store");
    env.ok(&root, &["du"]);
    let mut pull = env
        .cmd(&root, &["image", "pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let leased = poll(Duration::from_secs(20), Duration::from_millis(10), || {
        let leases = env.ok(&root, &["lease", "ls"]);
        leases
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["owner"]["alive"] == true)
    });
    assert!(leased, "the pull took no lease");
    let mut runs = 0;
    while runs < 40 {
        assert!(
            pull.try_wait().unwrap().is_none(),
            "the pull ended after {runs} runs beside it"
        );
        let out = if runs % 2 == 0 {
            env.ok(&root, &["gc", "--ingest-expiry", "0s"])
        } else {
            env.ok(
                &root,
                &["prune", "--max-used", "1", "--ingest-expiry", "0s"],
            )
        };
        let dropped: Vec<&Value> = (out["removed"].as_array().unwrap().iter())
            .filter(|r| r["kind"] == "lease" || r["kind"] == "ingest")
            .collect();
        assert!(
            dropped.is_empty(),
            "run {runs} took the live pull's holds: {dropped:?}"
        );
        runs += 1;
    }
    let status = pull.wait().unwrap();
    assert!(
        status.success(),
        "the pull failed beside 20 gc and 20 prune runs"
    );
    pulled_whole(&env, &root, &reference, &image);
    assert!(dead_owner_leases(&env, &root).is_empty());
    let leases = env.ok(&root, &["lease", "ls"]);
    assert!(leases.as_array().is_none_or(Vec::is_empty), "{leases}");
}
