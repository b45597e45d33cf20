//! Mirrors and faults: cut connections, 429/503, wrong bytes, mirrors tried in order.

use super::*;

// mirrors

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn mirror_in_hosts_toml_serves_pulls_and_never_pushes() {
    let env = Env::new();
    let server = Reg::plain();
    let mirror = Reg::plain();
    let sizes = [200 << 10, 100 << 10];
    let (image, _) = pushed(&env, &mirror, "mirrored/app:1", AMD64, &sizes, 14);
    env.hosts_toml(&server.host, &mirror_toml(&server, &mirror.host));
    let reference = server.reference("mirrored/app:1");
    let root = env.path("store");

    let out = env.pull(&root, &[&reference], &image.root.digest);
    assert_eq!(out["name"], reference, "{out}");
    fetched_once_from(&mirror, &image, "the mirror");
    // What the mirror lacks comes from the server.
    let (only, only_ref) = pushed(&env, &server, "only/server:1", AMD64, &[30 << 10], 16);
    env.pull(&root, &[&only_ref], &only.root.digest);
    fetched_once_from(&server, &only, "the server");
    env.fsck_clean(&root);

    // A push goes to the server only.
    let mirror_mark = mirror.ours().len();
    let server_mark = server.ours().len();
    env.push(&root, &[&reference], &image.root.digest);
    let to_mirror = mirror.ours_since(mirror_mark);
    assert!(
        !to_mirror.iter().any(Req::is_write),
        "a push wrote to the mirror:\n{}",
        list(&to_mirror)
    );
    let to_server = server.ours_since(server_mark);
    assert!(
        to_server
            .iter()
            .any(|r| r.method == "PUT" && r.uri == "/v2/mirrored/app/manifests/1"),
        "the push went to the server:\n{}",
        list(&to_server)
    );
    assert_eq!(skopeo_digest(&reference, None), image.root.digest);
    assert!(
        to_mirror.is_empty(),
        "a push asks the mirror nothing at all:\n{}",
        list(&to_mirror)
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn down_mirror_falls_back_to_the_server() {
    let env = Env::new();
    let (server, image, reference) = registry_with(&env, "fallback/app:1", AMD64, &[100 << 10], 15);
    let down = format!("127.0.0.1:{}", free_port());
    env.hosts_toml(&server.host, &mirror_toml(&server, &down));
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    fetched_once_from(&server, &image, "the server");
    env.fsck_clean(&root);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn broken_mirror_is_tried_once_per_request_then_skipped() {
    let env = Env::new();
    let (server, image, reference) = registry_with(&env, "broken/app:1", AMD64, &[100 << 10], 17);
    let slammer = Slammer::start();
    env.hosts_toml(&server.host, &mirror_toml(&server, &slammer.server.host));
    env.pull(&env.path("store"), &[&reference], &image.root.digest);
    let reads = server.ours().len();
    let tries = slammer.accepts.load(Ordering::SeqCst);
    assert!(
        tries <= reads,
        "a mirror that drops every connection was connected to {tries} times for the \
         {reads} requests the server answered: each request retries the broken mirror \
         (with backoff) before falling through to the server"
    );
}

// faults

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_cut_mid_blob_resumes_with_range() {
    let env = Env::new();
    let (_reg, proxy, image, big, reference) = faulty(&env, 21, |big| {
        vec![Rule::new("GET", big, Fault::CutHalf).times(1)]
    });
    let root = env.path("store");
    let out = env.pull(&root, &[&reference], &image.root.digest);
    let gets = proxy.blob_gets(&big.digest);
    assert!(
        gets.len() >= 2 && gets[0].fault == Some(Fault::CutHalf) && gets[0].range.is_none(),
        "the first GET of the layer was cut, then asked again:\n{}",
        seen_list(&proxy.seen())
    );
    let n = gets[1].range_start().unwrap_or_else(|| {
        panic!(
            "the second GET of the cut layer carries Range: bytes=N-:\n{}",
            seen_list(&proxy.seen())
        )
    });
    assert!(
        n > 0 && n <= big.size / 2,
        "resumed from byte {n} of {} (the cut came after {})",
        big.size,
        big.size / 2
    );
    assert_eq!(gets[1].status, 206, "{}", seen_list(&gets));
    let fetched = out["bytes_fetched"].as_u64().unwrap();
    println!(
        "cut mid-blob: resumed at byte {n} of {}; bytes_fetched {fetched} of a {}-byte image",
        big.size,
        image.size()
    );
    assert!(
        fetched >= image.size() && fetched < image.size() + image.size() / 4,
        "a resumed pull fetches about the image ({}), not 1.5× it: {fetched}",
        image.size()
    );
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_a_blob_redirected_every_time_is_followed() {
    // Large blobs are read around ureq over plain HTTP (src/registry/direct.rs), which does
    // not follow redirects: a registry that answers every GET of a layer with a 307 to its
    // storage (here: the registry itself, behind the proxy) is followed by the client.
    let env = Env::new();
    let (reg, first, image, big, _) = faulty(&env, 29, |_| Vec::new());
    drop(first);
    let location = format!(
        "Location: http://{}/v2/fault/app/blobs/{}\r\nContent-Length: 0\r\n",
        reg.host, big.digest
    );
    let location: &'static str = Box::leak(location.into_boxed_str());
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new("GET", &big.digest, Fault::Status(307, location))],
    );
    let reference = proxy.reference("fault/app:1");
    let root = env.path("store");
    let out = env.pull(&root, &[&reference], &image.root.digest);
    let gets = proxy.blob_gets(&big.digest);
    assert!(
        !gets.is_empty() && gets.iter().all(|g| g.status == 307),
        "every GET of the layer through the proxy was redirected:\n{}",
        seen_list(&proxy.seen())
    );
    assert!(
        gets.len() <= 2,
        "one GET read around ureq, declined, then the client's, which follows: not a GET per \
         attempt:\n{}",
        seen_list(&proxy.seen())
    );
    assert_eq!(out["bytes_fetched"], image.size(), "{out}");
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_cut_manifest_body_is_retried() {
    let env = Env::new();
    let (_reg, proxy, image, _big, reference) = faulty(&env, 28, |_| {
        vec![Rule::new("GET", "/manifests/", Fault::CutHalf).times(1)]
    });
    let root = env.path("store");
    let r = env.run(&root, &["image", "pull", &reference]);
    assert_eq!(
        r.code,
        Some(0),
        "a connection cut in the middle of a manifest's body is a connection error like any \
         other (client.rs retries them), but the pull failed: {}\nrequests:\n{}",
        r.stderr,
        seen_list(&proxy.manifests())
    );
    assert_eq!(r.json()["digest"], image.root.digest, "{}", r.stdout);
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_200_to_a_range_request_restarts_the_blob() {
    let env = Env::new();
    let (_reg, proxy, image, big, reference) = faulty(&env, 22, |big| {
        vec![
            Rule::new("GET", big, Fault::CutHalf).times(1),
            Rule::new("GET", big, Fault::StripRange).ranged(),
        ]
    });
    let root = env.path("store");
    let out = env.pull(&root, &[&reference], &image.root.digest);
    let gets = proxy.blob_gets(&big.digest);
    assert!(
        gets.len() == 2
            && gets[1].range_start().is_some_and(|n| n > 0)
            && gets[1].fault == Some(Fault::StripRange)
            && gets[1].status == 200,
        "the resumed GET asked a range and was answered 200 with the whole blob:\n{}",
        seen_list(&proxy.seen())
    );
    let fetched = out["bytes_fetched"].as_u64().unwrap();
    let cut = big.size / 2;
    println!(
        "200 to a Range: bytes_fetched {fetched} of a {}-byte image (cut after {cut})",
        image.size()
    );
    assert!(
        fetched > image.size() && fetched <= image.size() + cut,
        "the blob restarted from zero: fetched {fetched}, image {}, cut after {cut}",
        image.size()
    );
    let info = env.ok(&root, &["content", "info", &big.digest]);
    assert_eq!(info["size"], big.size, "{info}");
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_429_retry_after_is_honoured() {
    let env = Env::new();
    let too_many = Fault::Status(429, "Retry-After: 1\r\n");
    let (_reg, proxy, image, _big, reference) = faulty(&env, 23, |_| {
        vec![Rule::new("GET", "/manifests/", too_many).times(1)]
    });
    let root = env.path("store");
    env.pull(&root, &[&reference], &image.root.digest);
    let manifests: Vec<Seen> = proxy.manifests();
    assert!(
        manifests.len() >= 2 && manifests[0].status == 429 && manifests[1].status == 200,
        "{}",
        seen_list(&manifests)
    );
    let gap = manifests[1].at - manifests[0].at;
    println!("429 with Retry-After: 1: asked again after {gap:?}");
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured: the manifest was asked again {gap:?} after the 429"
    );
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_503_twice_on_a_blob_is_retried() {
    let env = Env::new();
    let (_reg, proxy, image, big, reference) = faulty(&env, 24, |big| {
        vec![Rule::new("GET", big, Fault::Status(503, "")).times(2)]
    });
    let root = env.path("store");
    let out = env.pull(&root, &[&reference], &image.root.digest);
    let statuses: Vec<u16> = proxy
        .blob_gets(&big.digest)
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200], "{}", seen_list(&proxy.seen()));
    assert_eq!(out["bytes_fetched"], image.size(), "{out}");
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_persistent_503_on_a_blob_gives_up_after_the_retry_budget() {
    let env = Env::new();
    let (_reg, proxy, image, big, reference) = faulty(&env, 27, |big| {
        vec![Rule::new("GET", big, Fault::Status(503, ""))]
    });
    let root = env.path("store");
    let start = Instant::now();
    let named = [proxy.server.host.as_str(), "fault/app", &big.digest];
    let r = env.fails_naming(&root, &["image", "pull", &reference], &named);
    let took = start.elapsed();
    // What the store keeps of a network failure: resumable ingests, nothing visible.
    let left = failed_pull_left(&env, &root, &image);
    assert!(!env.content(&root).contains_key(&big.digest), "{left:?}");
    let gets = proxy.blob_gets(&big.digest);
    let attempts = ocistore::registry::RetryPolicy::default().attempts as usize;
    println!(
        "persistent 503: {} GETs of the blob in {took:?}: {}",
        gets.len(),
        r.stderr.trim()
    );
    assert!(
        gets.len() <= attempts,
        "RetryPolicy::attempts is \"attempts in all, the first included\" ({attempts}), \
         but a blob answered 503 every time was asked {} times over {took:?}: the pull's \
         own retry loop (pull.rs fetch_blob) wraps client.send's, multiplying them",
        gets.len()
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_flipped_byte_fails_the_pull_and_leaves_nothing() {
    let env = Env::new();
    let (reg, proxy, image, big, reference) =
        faulty(&env, 25, |big| vec![Rule::new("GET", big, Fault::FlipByte)]);
    let root = env.path("store");
    let named = [proxy.server.host.as_str(), "fault/app", &big.digest];
    let r = env.fails_naming(&root, &["image", "pull", &reference], &named);
    println!("flipped byte: {}", r.stderr.trim());
    assert!(
        !proxy.blob_gets(&big.digest).is_empty(),
        "{}",
        seen_list(&proxy.seen())
    );
    let sealed = nothing_unverified(&env, &root, &image, &big.digest);
    repull_adopts(&env, &root, &reg, &image, sealed);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_more_bytes_than_the_descriptor_fail_the_pull() {
    let env = Env::new();
    let (reg, proxy, image, big, reference) = faulty(&env, 26, |big| {
        vec![Rule::new("GET", big, Fault::Append(4096))]
    });
    let root = env.path("store");
    // The error also says the registry sent more bytes than the descriptor.
    let named = [
        proxy.server.host.as_str(),
        "fault/app",
        &big.digest,
        "more than the descriptor",
    ];
    let r = env.fails_naming(&root, &["image", "pull", &reference], &named);
    println!("extra bytes: {}", r.stderr.trim());
    let sealed = nothing_unverified(&env, &root, &image, &big.digest);
    repull_adopts(&env, &root, &reg, &image, sealed);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_connection_refused_fails_within_the_retry_budget() {
    let env = Env::new();
    let host = format!("127.0.0.1:{}", free_port());
    let root = env.path("store");
    let policy = ocistore::registry::RetryPolicy::default();
    // The longest the backoffs can add up to: base × 2^(k-1) × 1.5 for each retry.
    let budget: Duration = (1..policy.attempts)
        .map(|k| {
            policy
                .base
                .saturating_mul(1 << (k - 1))
                .mul_f64(1.5)
                .min(policy.max_wait)
        })
        .sum();
    let start = Instant::now();
    let gone = format!("{host}/gone/app:1");
    let r = env.fails_naming(&root, &["image", "pull", &gone], &[&host]);
    let took = start.elapsed();
    println!(
        "connection refused: exit 1 after {took:?} (backoff budget {budget:?}): {}",
        r.stderr.trim()
    );
    assert!(
        took < budget + Duration::from_secs(3),
        "a refused connection failed after {took:?}, beyond the retry budget {budget:?}"
    );
    let ls = env.ok(&root, &["image", "ls"]);
    assert_eq!(ls, json!([]), "{ls}");
    assert_eq!(env.ok(&root, &["ingest", "ls"]), json!([]));
    env.fsck_clean(&root);
}
