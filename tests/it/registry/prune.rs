//! Prune after pulls.

use super::*;

// prune after pulls

/// Three images pulled into `root` one after another: `a:1` (an index; its amd64 platform
/// pulled) and `b:1` (a's arm64 manifest alone) share a 300 KiB base layer; `c:1` shares
/// nothing. Returns (a, the references a, b, c, and b's manifest digest).
fn three_pulled(
    env: &Env,
    reg: &Reg,
    root: &std::path::Path,
) -> (images::Image, [String; 3], String) {
    let (a, a_ref) = harness::pushed(
        env,
        reg,
        "cache/a:1",
        AMD64_ARM64,
        &[300 << 10, 200 << 10],
        21,
    );
    let b_ref = reg.reference("cache/b:1");
    skopeo_copy(&[
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--override-arch",
        "arm64",
        "--override-variant",
        "v8",
        &format!("docker://{a_ref}"),
        &format!("docker://{b_ref}"),
    ]);
    let (c, c_ref) = harness::pushed(env, reg, "cache/c:1", AMD64, &[400 << 10], 22);
    let arm = a.platform("linux/arm64/v8").manifest.digest.clone();
    env.pull(root, &[&a_ref, "--platform", "linux/amd64"], &a.root.digest);
    env.pull(root, &[&b_ref], &arm);
    env.pull(root, &[&c_ref], &c.root.digest);
    (a, [a_ref, b_ref, c_ref], arm)
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn prune_after_pulls_removes_the_least_recently_used_image_first() {
    let env = Env::new();
    let reg = Reg::plain();
    let root = env.path("store");
    let (a, [a_ref, b_ref, c_ref], _) = three_pulled(&env, &reg, &root);
    let blobs = |env: &Env| {
        env.ok(&root, &["du"])["blobs"]["apparent_bytes"]
            .as_u64()
            .unwrap()
    };
    let before = blobs(&env);
    // Below the sum: something has to go. a:1 is the least recently used; its own blobs
    // (index, amd64 manifest, config, 200 KiB layer) are enough, the shared base is b's too.
    let budget = (before - 100_000).to_string();
    let dry = env.ok(&root, &["prune", "--max-used", &budget, "--dry-run"]);
    assert_eq!(blobs(&env), before, "a dry run changes nothing");
    assert_eq!(env.ok(&root, &["image", "ls"]).as_array().unwrap().len(), 3);
    let real = env.ok(&root, &["prune", "--max-used", &budget]);
    for key in [
        "removed_images",
        "removed_blobs",
        "bytes_freed",
        "used_before",
        "used_after",
    ] {
        assert_eq!(dry[key], real[key], "{key}: the dry run listed the run");
    }
    assert_eq!(real["removed_images"], json!([a_ref]), "{real}");
    assert_eq!(real["budget_reached"], json!(true), "{real}");
    let after = blobs(&env);
    assert!(after <= before - 100_000, "{after} within the budget");
    assert_eq!(
        real["bytes_freed"].as_u64().unwrap(),
        before - after,
        "{real}"
    );
    // The most recently used are complete; the base layer they share stayed.
    env.ok(
        &root,
        &["image", "check", &b_ref, "--platform", "linux/arm64/v8"],
    );
    env.ok(
        &root,
        &["image", "check", &c_ref, "--platform", "linux/amd64"],
    );
    let base = &a.platform("linux/amd64").layers[0].digest;
    env.ok(&root, &["content", "info", base]);
    let own = &a.platform("linux/amd64").layers[1].digest;
    env.fails(&root, &["content", "info", own], 1);
    let fsck = env.ok(&root, &["fsck"]);
    assert_eq!(fsck["problems"], json!([]), "{fsck}");
}

/// Prune in a loop (`--max-used 0`, ingests of any age) beside pulls in other processes:
/// every pull succeeds and leaves its image complete (or wholly pruned after it), fsck is
/// clean.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn prune_beside_pulls_in_other_processes_loses_nothing() {
    let env = Env::new();
    let reg = Reg::plain();
    let root = env.path("store");
    let (a, refs, arm) = three_pulled(&env, &reg, &root);
    let digests = [a.root.digest.clone(), arm, String::new()];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let prunes = std::thread::scope(|s| {
        let pruner = s.spawn(|| {
            let mut runs = 0;
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                env.ok(
                    &root,
                    &["prune", "--max-used", "0", "--ingest-expiry", "0s"],
                );
                runs += 1;
            }
            runs
        });
        for round in 0..15 {
            let i = round % 3;
            let mut args = vec![refs[i].as_str()];
            if i == 0 {
                args.extend(["--platform", "linux/amd64"]);
            }
            let out = env.ok(&root, &[&["image", "pull"], &args[..]].concat());
            if !digests[i].is_empty() {
                assert_eq!(out["digest"], digests[i].as_str(), "round {round}");
            }
            let platform = if i == 1 {
                "linux/arm64/v8"
            } else {
                "linux/amd64"
            };
            let r = env.run(&root, &["image", "check", &refs[i], "--platform", platform]);
            assert!(
                r.code == Some(0) || r.stderr.contains("not found"),
                "round {round}: {}{}",
                r.stdout,
                r.stderr
            );
        }
        stop.store(true, Ordering::Relaxed);
        pruner.join().unwrap()
    });
    assert!(prunes > 0);
    let fsck = env.ok(&root, &["fsck"]);
    assert_eq!(fsck["problems"], json!([]), "{fsck}");
}
