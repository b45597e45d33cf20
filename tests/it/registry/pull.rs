//! Pulls: what skopeo pushed, re-pulls that cost one HEAD, multi-platform indexes, platforms and media types.

use super::*;

// pull

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pull_what_skopeo_pushed() {
    let env = Env::new();
    let sizes = [300 << 10, 200 << 10, 100 << 10];
    let (reg, image, reference) = registry_with(&env, "first/app:1", AMD64, &sizes, 1);
    let theirs = skopeo_digest(&reference, None);
    assert_eq!(
        theirs, image.root.digest,
        "skopeo pushed the manifest as is"
    );

    // The same digest as skopeo's.
    let root = env.path("store");
    let out = env.pull(&root, &[&reference], &theirs);
    assert_eq!(out["name"], reference, "{out}");
    assert_eq!(out["media_type"], image.media_type, "{out}");
    assert_eq!(
        out["blobs_fetched"],
        image.blobs().len(),
        "every blob, manifest included: {out}"
    );
    assert_eq!(out["blobs_present"], 0, "{out}");
    assert_eq!(out["bytes_fetched"], image.size(), "{out}");

    let ls = env.ok(&root, &["image", "ls"]);
    let listed = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == reference.as_str())
        .unwrap_or_else(|| panic!("image ls lacks {reference}: {ls}"));
    assert_eq!(listed["digest"], theirs);
    assert_eq!(listed["media_type"], OCI_MANIFEST);
    pulled_whole(&env, &root, &reference, &image);
    // Every blob is labelled with where it came from (containerd's convention).
    let layer = &image.platforms[0].layers[0].digest;
    let info = env.ok(&root, &["content", "info", layer]);
    assert_eq!(
        info["labels"][format!("containerd.io/distribution.source.{}", reg.host)],
        "first/app",
        "{info}"
    );
    // The config's diff_ids are recorded on the pulled gzip layers, and decompressing agrees.
    let verified = env.ok(&root, &["content", "uncompressed", layer, "--verify"]);
    assert_eq!(
        info["labels"]["containerd.io/uncompressed"], verified["diff_id"],
        "{info} {verified}"
    );
    assert_eq!(
        verified["recorded"], false,
        "the pull recorded it: {verified}"
    );

    // Absent tags and repositories are "not found" (exit 1); malformed references exit 2.
    let nope = reg.reference("first/app:nope");
    env.fails_naming(&root, &["image", "pull", &nope], &["not found"]);
    env.fails(&root, &["image", "pull", &reg.reference("none/such:1")], 1);
    env.fails(&root, &["image", "pull", "127.0.0.1:1/UPPER/Case::x"], 2);
}

// re-pull

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn repull_costs_one_manifest_head_and_if_missing_nothing() {
    let env = Env::new();
    let (reg, image, reference) =
        registry_with(&env, "again/app:v1", AMD64, &[400 << 10, 100 << 10], 2);
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    // A first pull has nothing to compare with: one GET resolves the tag, no HEAD.
    let first = reg.ours();
    let manifests: Vec<_> = first
        .iter()
        .filter(|r| r.uri.contains("/manifests/"))
        .collect();
    assert!(
        manifests.len() == 1 && manifests[0].method == "GET",
        "a first pull asks for its manifest once, with a GET:\n{}",
        list(&first)
    );

    let mark = reg.ours().len();
    let out = env.pull(&root, &[&reference], &image.root.digest);
    assert_eq!(out["blobs_fetched"], 0, "{out}");
    assert_eq!(out["bytes_fetched"], 0, "{out}");
    let reqs = reg.ours_since(mark);
    assert_eq!(
        reqs.len(),
        1,
        "a re-pull makes exactly one request:\n{}",
        list(&reqs)
    );
    assert_eq!(reqs[0].method, "HEAD", "{}", reqs[0]);
    assert_eq!(reqs[0].uri, "/v2/again/app/manifests/v1", "{}", reqs[0]);

    let mark = reg.ours().len();
    env.pull(&root, &["--if-missing", &reference], &image.root.digest);
    let reqs = reg.ours_since(mark);
    assert!(
        reqs.is_empty(),
        "--if-missing on a complete image asks nothing:\n{}",
        list(&reqs)
    );

    // The tag moves: the re-pull fetches the new manifest and only what it adds.
    let (image2, _) = pushed(&env, &reg, "again/app:v1", AMD64, &[50 << 10], 3);
    let out = env.pull(&root, &[&reference], &image2.root.digest);
    assert_eq!(
        out["blobs_fetched"], 3,
        "manifest, config, one layer: {out}"
    );
    assert_eq!(out["bytes_fetched"], image2.size(), "{out}");
    // --if-missing with a present, complete name does not notice the move (by design).
    env.pull(&root, &["--if-missing", &reference], &image2.root.digest);
    env.fsck_clean(&root);
}

/// The store's commit counter (`meta.gen`: the number of write transactions committed).
fn commits(root: &std::path::Path) -> u64 {
    let g = std::fs::read(root.join("meta.gen")).expect("meta.gen");
    u64::from_le_bytes(g[..8].try_into().expect("8 bytes"))
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn a_pull_of_present_blobs_leases_them_in_one_transaction() {
    // Pulling a name whose blobs the store already has (a new tag of a known image, or a
    // name removed and pulled again) leases all of them with one commit, not one each.
    let env = Env::new();
    let layers = [20 << 10; 10];
    let (_reg, image, reference) = registry_with(&env, "present/app:v1", AMD64, &layers, 4);
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    env.ok(&root, &["image", "rm", &reference]);
    let before = commits(&root);
    let out = env.pull(&root, &[&reference], &image.root.digest);
    assert_eq!(out["blobs_fetched"], 0, "{out}");
    let spent = commits(&root) - before;
    // The batch's lease, the pull's leases, the batch's commit, the lease's removal; the
    // 11 present blobs (10 layers and the config) cost one transaction between them.
    assert!(
        spent <= 5,
        "a pull of 11 present blobs took {spent} transactions"
    );
    assert_eq!(
        env.ok(&root, &["image", "ls"]).as_array().map(Vec::len),
        Some(1)
    );
}

// multi-platform

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn a_partial_push_whose_missing_layers_are_nowhere_fails_before_uploading() {
    let env = Env::new();
    let platforms = ["linux/amd64", "linux/arm64/v8", "linux/s390x"];
    let sizes = [100 << 10, 50 << 10];
    let (reg, image, reference) = registry_with(&env, "solo/app:1", &platforms, &sizes, 41);
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    let content = env.content(&root);
    // The registry loses the layers the store did not pull.
    let gone: Vec<String> = image
        .plain_blobs()
        .into_keys()
        .filter(|d| !content.contains_key(d))
        .collect();
    assert!(!gone.is_empty());
    for d in &gone {
        let url = format!("http://{}/v2/solo/app/blobs/{d}", reg.host);
        sh("curl", &["-fsS", "-X", "DELETE", &url]);
    }
    let elsewhere = Reg::plain();
    let away = elsewhere.reference("solo/app:1");
    let r = env.fails_naming(
        &root,
        &["image", "push", &reference, &away],
        &[
            "not in the store",
            "solo/app",
            "--all-platforms",
            "--platform",
        ],
    );
    assert!(
        gone.iter().any(|d| r.stderr.contains(d.as_str())),
        "{}",
        r.stderr
    );
    // Checked before anything was uploaded: the other registry has none of the image.
    for d in image.plain_blobs().keys() {
        let url = format!("http://{}/v2/solo/app/blobs/{d}", elsewhere.host);
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I", &url])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "404",
            "{d} was uploaded"
        );
    }
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn multi_platform_pull_keeps_the_index_and_push_keeps_its_digest() {
    let env = Env::new();
    let platforms = ["linux/amd64", "linux/arm64/v8", "linux/s390x"];
    let sizes = [200 << 10, 150 << 10, 50 << 10];
    let (reg, image, reference) = registry_with(&env, "multi/app:1", &platforms, &sizes, 4);
    assert_eq!(skopeo_digest(&reference, None), image.root.digest);

    // The index digest.
    let root = env.path("store");
    let here = host_platform();
    let out = env.pull(&root, &[&reference], &image.root.digest);
    assert_eq!(out["media_type"], OCI_INDEX, "{out}");
    let content = env.content(&root);
    assert!(
        content.contains_key(&image.root.digest),
        "the index is kept"
    );
    for pi in &image.platforms {
        assert!(
            content.contains_key(&pi.manifest.digest),
            "the {} manifest is kept",
            pi.platform
        );
        assert!(
            content.contains_key(&pi.config.digest),
            "the {} config is kept",
            pi.platform
        );
    }
    let mine: BTreeSet<&String> = image
        .platform(here)
        .layers
        .iter()
        .map(|l| &l.digest)
        .collect();
    for pi in &image.platforms {
        for l in &pi.layers {
            assert_eq!(
                content.contains_key(&l.digest),
                mine.contains(&l.digest),
                "layer {} of {}: only {here}'s layers are fetched",
                l.digest,
                pi.platform
            );
        }
    }
    assert!(env.complete(&root, &reference, here));
    let others: Vec<&PlatformImage> = image
        .platforms
        .iter()
        .filter(|pi| pi.platform != here)
        .collect();
    for pi in &others {
        assert!(
            !env.complete(&root, &reference, &pi.platform),
            "{} is incomplete",
            pi.platform
        );
    }

    // To another registry, the layers the store lacks are streamed from multi/app (the
    // store keeps none of them): the same index digest, every platform whole there.
    let absent: BTreeMap<String, u64> = image
        .plain_blobs()
        .into_iter()
        .filter(|(d, _)| !content.contains_key(d))
        .collect();
    let elsewhere = Reg::plain();
    let away = elsewhere.reference("part/app:1");
    let out = env.push(&root, &[&reference, &away], &image.root.digest);
    assert!(
        out["bytes_pushed"].as_u64().unwrap() >= absent.values().sum::<u64>(),
        "the {} layers the store lacks were copied: {out}",
        absent.len()
    );
    assert_eq!(
        env.content(&root).len(),
        content.len(),
        "nothing was stored"
    );
    skopeo_reads(&format!("docker://{away}"), &env.path("away-out"), &image);

    // To the registry it came from, the layers the store lacks are mounted from multi/app:
    // the same index digest, every platform whole there, no layer fetched.
    let promoted = reg.reference("promoted/app:1");
    let out = env.push(&root, &[&reference, &promoted], &image.root.digest);
    assert!(
        out["blobs_mounted"].as_u64().unwrap() >= absent.len() as u64,
        "the {} layers the store lacks were mounted: {out}",
        absent.len()
    );
    assert_eq!(
        env.content(&root).len(),
        content.len(),
        "nothing was fetched"
    );
    skopeo_reads(
        &format!("docker://{promoted}"),
        &env.path("promoted-out"),
        &image,
    );
    // One platform goes as a new index of that entry.
    let part = reg.reference("part/app:1");
    let out = env.ok(
        &root,
        &["image", "push", &reference, &part, "--platform", here],
    );
    assert_ne!(out["digest"], image.root.digest, "a filtered index: {out}");
    env.inspect(&root, &[&part], out["digest"].as_str().unwrap());

    // --all-platforms fetches the rest: exactly the layers not yet there.
    let missing: BTreeMap<String, u64> = image
        .plain_blobs()
        .into_iter()
        .filter(|(d, _)| !content.contains_key(d))
        .collect();
    assert!(!missing.is_empty());
    let out = env.pull(&root, &["--all-platforms", &reference], &image.root.digest);
    assert_eq!(out["blobs_fetched"], missing.len(), "{out}");
    assert_eq!(out["bytes_fetched"], missing.values().sum::<u64>(), "{out}");
    pulled_whole(&env, &root, &reference, &image);

    // Pushed whole to another repository: the same index digest, which skopeo copies out.
    let copy = reg.reference("copy/app:2");
    env.push(&root, &[&reference, &copy], &image.root.digest);
    let remote = env.inspect(&root, &[&copy], &image.root.digest);
    assert_eq!(remote["media_type"], OCI_INDEX, "{remote}");
    assert_eq!(remote["size"], image.root.size, "{remote}");
    let arm = &image.platform("linux/arm64/v8").manifest.digest;
    env.inspect(&root, &[&copy, "--platform", "linux/arm64"], arm);
    skopeo_reads(&format!("docker://{copy}"), &env.path("skopeo-out"), &image);
}

// platforms and media types

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pull_of_a_platform_the_index_lacks_fails() {
    let env = Env::new();
    let (_reg, _image, reference) =
        registry_with(&env, "plat/app:1", AMD64_ARM64, &[20 << 10, 10 << 10], 18);
    let root = env.path("store");
    let r = env.run(
        &root,
        &["image", "pull", &reference, "--platform", "linux/ppc64le"],
    );
    let ls = env.ok(&root, &["image", "ls"]);
    assert_eq!(
        r.code,
        Some(1),
        "pulling linux/ppc64le of an index with only linux/amd64 and linux/arm64/v8 should \
         fail (as containerd's 'no match for platform in manifest'); it printed {} {} and \
         the store now lists {ls}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("linux/ppc64le"), "{}", r.stderr);
    assert_eq!(ls, json!([]), "no name for an image without the platform");
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn an_index_s_manifests_are_fetched_side_by_side() {
    // A multi-platform index names a manifest per platform (a dozen or more on Docker Hub);
    // the pull asks for them together, not a round trip after another. The fault proxy is a
    // test double for a slow registry (each manifest GET by digest waits 2 s): a real one
    // cannot be made slow.
    let env = Env::new();
    let (reg, image, _) = registry_with(&env, "side/app:1", AMD64_ARM64, &[20 << 10, 10 << 10], 43);
    let delay = Fault::Delay(Duration::from_secs(2));
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new("GET", "/manifests/sha256:", delay)],
    );
    let root = env.path("store");
    env.pull(&root, &[&proxy.reference("side/app:1")], &image.root.digest);
    let gets = proxy.seen_where(|s| s.method == "GET" && s.uri.contains("/manifests/sha256:"));
    assert_eq!(gets.len(), 2, "{}", seen_list(&gets));
    let apart = gets[1].at.duration_since(gets[0].at);
    assert!(
        apart < Duration::from_secs(1),
        "the second manifest was asked {apart:?} after the first, whose answer took 2 s:\n{}",
        seen_list(&gets)
    );
    env.fsck_clean(&root);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn an_index_s_manifests_are_pushed_side_by_side() {
    // The push side of the above: an index's manifests go up together (each before the
    // index that names them), not a HEAD and a PUT after another's. The fault proxy is a
    // test double for a slow registry (each manifest PUT by digest waits 2 s).
    let env = Env::new();
    let (reg, image, reference) =
        registry_with(&env, "sidep/app:1", AMD64_ARM64, &[20 << 10, 10 << 10], 44);
    let root = env.path("store");
    env.pull(&root, &["--all-platforms", &reference], &image.root.digest);
    let delay = Fault::Delay(Duration::from_secs(2));
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new("PUT", "/manifests/sha256:", delay)],
    );
    let target = proxy.reference("sidep/copy:1");
    let out = env.push(&root, &[&reference, &target], &image.root.digest);
    let puts = proxy.seen_where(|s| s.method == "PUT" && s.uri.contains("/manifests/"));
    assert_eq!(
        puts.len(),
        3,
        "two manifests, then the index by tag: {}",
        seen_list(&puts)
    );
    let apart = puts[1].at.duration_since(puts[0].at);
    assert!(
        apart < Duration::from_secs(1),
        "the second manifest went {apart:?} after the first, whose answer took 2 s:\n{}",
        seen_list(&puts)
    );
    assert!(
        puts[2].uri.ends_with("/manifests/1") && puts[2].at >= puts[1].at + Duration::from_secs(2),
        "the index goes last, once both manifests are in: {}",
        seen_list(&puts)
    );
    // What went up is the image: a pull of the copy finds everything present.
    let again = env.pull(&root, &[&target], &image.root.digest);
    assert_eq!(again["blobs_fetched"], 0, "{again} after push {out}");
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn remote_inspect_platform_of_a_single_manifest_checks_its_config() {
    let env = Env::new();
    let (_reg, image, reference) = registry_with(&env, "single/app:1", AMD64, &[10 << 10], 19);
    let root = env.path("store");
    let amd64 = [&reference, "--platform", "linux/amd64"];
    env.inspect(&root, &amd64, &image.root.digest);
    let r = env.run(
        &root,
        &["remote", "inspect", &reference, "--platform", "linux/arm64"],
    );
    assert_eq!(
        r.code,
        Some(1),
        "a linux/amd64 manifest (no index) is not linux/arm64: remote inspect \
         --platform linux/arm64 should be exit 1, printed {} {}",
        r.stdout,
        r.stderr
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn docker_manifest_list_pulls_and_pushes_unchanged() {
    const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    let env = Env::new();
    let reg = Reg::plain();
    let image = env.image("1", AMD64_ARM64, &[60 << 10, 20 << 10], 20);
    // skopeo converts to Docker schema 2: a manifest list of Docker manifests.
    let reference = reg.reference("docker/app:1");
    let dest = format!("docker://{reference}");
    let layout = image.layout_ref();
    skopeo_copy(&[
        "--all",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &layout,
        &dest,
    ]);
    let theirs = skopeo_digest(&reference, None);
    assert_ne!(theirs, image.root.digest, "skopeo converted the index");
    let root = env.path("store");
    let out = env.pull(&root, &[&reference, "--all-platforms"], &theirs);
    assert_eq!(out["media_type"], DOCKER_LIST, "{out}");
    for p in ["linux/amd64", "linux/arm64/v8", "linux/arm64"] {
        assert!(env.complete(&root, &reference, p), "{p}");
    }
    env.fsck_clean(&root);
    let copy = reg.reference("docker/copy:1");
    env.push(&root, &[&reference, &copy], &theirs);
    assert_eq!(skopeo_digest(&copy, None), theirs);
    let v = env.inspect(&root, &[&copy], &theirs);
    assert_eq!(v["media_type"], DOCKER_LIST, "{v}");
    // By digest, too.
    let by_digest = format!("{}@{theirs}", reg.reference("docker/app"));
    let out = env.pull(&env.path("store2"), &[&by_digest], &theirs);
    assert_eq!(out["name"], by_digest, "{out}");
}
