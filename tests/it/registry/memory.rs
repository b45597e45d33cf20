//! Memory, the conformance of pulled content, and sizes checked before fetching.

use super::*;

// memory

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn one_gib_layer_pull_and_push_hold_memory_flat() {
    const LIMIT_KIB: i64 = 64 * 1024;
    let env = Env::new();
    let size = big_layer_size(&env);
    let (_reg, image, reference) = registry_with(&env, "big/app:1", AMD64, &[size], 41);
    let root = env.path("store");
    env.ok(&root, &["du"]);

    let (run, pull_kib) = run_max_rss(&env, &root, &["image", "pull", &reference]);
    assert_eq!(run.code, Some(0), "pull: {}{}", run.stdout, run.stderr);
    let out = run.json();
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert_eq!(out["bytes_fetched"], image.size(), "{out}");

    let empty = Reg::plain();
    let target = empty.reference("big/app:1");
    let (run, push_kib) = run_max_rss(&env, &root, &["image", "push", &reference, &target]);
    assert_eq!(run.code, Some(0), "push: {}{}", run.stdout, run.stderr);
    let out = run.json();
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert_eq!(
        out["bytes_pushed"],
        image.size(),
        "it uploaded everything: {out}"
    );
    println!(
        "{} MiB layer: pull peak RSS {:.1} MiB, push peak RSS {:.1} MiB",
        size >> 20,
        pull_kib as f64 / 1024.0,
        push_kib as f64 / 1024.0
    );
    assert!(
        pull_kib < LIMIT_KIB,
        "peak RSS {pull_kib} KiB pulling a {size}-byte layer"
    );
    assert!(
        push_kib < LIMIT_KIB,
        "peak RSS {push_kib} KiB pushing a {size}-byte layer"
    );
    assert_eq!(skopeo_digest(&target, None), image.root.digest);
}

/// The big layer's size: 1 GiB where the disk has room for its five copies (the test
/// image, the source registry, the store, the pull's free-space margin, the target
/// registry), less on a smaller disk, but never less than four times the RSS limit, so the
/// test still tells a streaming path from one that holds the layer.
fn big_layer_size(env: &Env) -> usize {
    const FLOOR: u64 = 256 << 20;
    let out = Command::new("df")
        .args(["--output=avail", "-B1", p(&env.path("."))])
        .output()
        .expect("df");
    let free: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df --output=avail prints a number");
    let size = ((free.saturating_sub(256 << 20) / 5) & !((1 << 20) - 1)).min(1 << 30);
    assert!(
        size >= FLOOR,
        "the test's disk has {free} bytes free; it needs at least {} for a {FLOOR}-byte layer",
        5 * FLOOR + (256 << 20)
    );
    size as usize
}

// conformance of pulled content

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pulled_image_checks_exports_and_reimports_unchanged() {
    let env = Env::new();
    let (_reg, image, reference) =
        registry_with(&env, "conf/app:1", AMD64_ARM64, &[120 << 10, 40 << 10], 42);
    let root = env.path("store");
    env.pull(&root, &["--all-platforms", &reference], &image.root.digest);
    pulled_whole(&env, &root, &reference, &image);
    let content = env.content(&root);
    assert_eq!(content, image.blobs(), "exactly the image's blobs");

    // Export, then import into a fresh store: the same name, digests and blobs.
    let export = env.path("export.tar");
    env.ok(&root, &["image", "export", &reference, "-o", p(&export)]);
    let fresh = env.path("fresh");
    env.ok(&fresh, &["image", "import", p(&export)]);
    let ls = env.ok(&fresh, &["image", "ls"]);
    let names: Vec<(&str, &str)> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["digest"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [(reference.as_str(), image.root.digest.as_str())],
        "{ls}"
    );
    assert_eq!(env.content(&fresh), content, "the same blobs");
    pulled_whole(&env, &fresh, &reference, &image);

    // skopeo reads the export.
    let archive = format!("oci-archive:{}", export.display());
    skopeo_reads(&archive, &env.path("skopeo-out"), &image);
}

/// A registry (here the fault proxy) that refuses a monolithic upload (413, as a body-size
/// limit in front of it would): the push falls back to a chunked upload (PATCHes with
/// `Content-Range`, then the closing PUT), and the result reads back with the same digests.
#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn refused_monolithic_upload_falls_back_to_chunks() {
    let env = Env::new();
    let (reg, proxy, image, big, _) = faulty(&env, 31, |big| {
        vec![Rule::new("PUT", &format!("digest={big}"), Fault::Status(413, "")).times(1)]
    });
    let root = env.path("store");
    let source = reg.reference("fault/app:1");
    env.pull(&root, &[&source], &image.root.digest);
    let target = proxy.reference("chunked/app:1");
    let out = env.push(&root, &[&source, &target], &image.root.digest);
    assert_eq!(out["blobs_mounted"], 0, "{out}");
    let seen = proxy.seen();
    let refused = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.uri.contains(&big.digest) && s.status == 413)
        .count();
    let patches = seen.iter().filter(|s| s.method == "PATCH").count();
    assert_eq!(refused, 1, "{}", seen_list(&seen));
    assert!(
        patches >= 1,
        "the 8 MiB layer went up in chunks: {}",
        seen_list(&seen)
    );
    let again = env.path("again");
    env.pull(&again, &[&target], &image.root.digest);
    pulled_whole(&env, &again, &target, &image);
}

// sizes before fetching

#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn a_pull_refuses_blobs_over_its_limits_before_fetching_anything() {
    let env = Env::new();
    let root = env.path("store");
    let config = json!({"architecture": "amd64", "os": "linux"}).to_string();
    let config_digest = sha256(config.as_bytes());
    let manifest = |layer_size: u64| {
        json!({
            "schemaVersion": 2,
            "mediaType": images::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": format!("sha256:{}", "ab".repeat(32)), "size": layer_size}],
        })
        .to_string()
    };
    let layer = format!("sha256:{}", "ab".repeat(32));
    // A layer of 2^63 bytes: over the default maximum (64 GiB).
    let huge = Documents::start("huge/app", "1", images::OCI_MANIFEST, manifest(1 << 63));
    let r = env.fails(
        &root,
        &["image", "pull", &format!("{}/huge/app:1", huge.server.host)],
        1,
    );
    assert!(
        r.stderr.contains(&layer)
            && r.stderr.contains("9223372036854775808")
            && r.stderr.contains("68719476736"),
        "the error names the blob, its size and the limit: {}",
        r.stderr
    );
    // 200 MB with --max-size 100MB.
    let big = Documents::start("big/app", "1", images::OCI_MANIFEST, manifest(200_000_000));
    let r = env.fails(
        &root,
        &[
            "image",
            "pull",
            &format!("{}/big/app:1", big.server.host),
            "--max-size",
            "100MB",
        ],
        1,
    );
    assert!(
        r.stderr.contains("200000000") && r.stderr.contains("100000000"),
        "{}",
        r.stderr
    );
    // Within the maximum but not the free space: 1 PiB with --max-size 2048TiB.
    let vast = Documents::start("vast/app", "1", images::OCI_MANIFEST, manifest(1 << 50));
    let r = env.fails(
        &root,
        &[
            "image",
            "pull",
            &format!("{}/vast/app:1", vast.server.host),
            "--max-size",
            "2048TiB",
        ],
        1,
    );
    assert!(
        r.stderr.contains("free"),
        "the error names the free space: {}",
        r.stderr
    );
    for server in [&huge, &big, &vast] {
        let blob_gets: Vec<String> = server
            .seen()
            .into_iter()
            .filter(|l| l.contains("/blobs/"))
            .collect();
        assert!(blob_gets.is_empty(), "nothing fetched: {blob_gets:?}");
    }
    assert_eq!(env.ok(&root, &["image", "ls"]), json!([]), "nothing named");
    assert!(env.content(&root).is_empty(), "nothing stored");
    env.fsck_clean(&root);
}

#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn remote_tags_streams_pages_skips_what_is_not_a_tag_and_caps_a_page() {
    let env = Env::new();
    let root = env.path("store");
    let odd = json!({"name": "odd/app", "tags": ["v1", "evil\u{1b}[2J", "nul\u{0}x", "../../etc/passwd", "two\nlines", "v2"]})
        .to_string();
    let huge_tags: Vec<String> = (0..3_000_000).map(|i| format!("t{i:08}")).collect();
    let huge = json!({"name": "huge/app", "tags": huge_tags}).to_string();
    assert!(huge.len() > 30 << 20);
    let server = Routes::start(vec![
        ("/v2/odd/app/tags/list".into(), odd),
        ("/v2/huge/app/tags/list".into(), huge),
    ]);
    let host = &server.server.host;
    let r = env.run(&root, &["remote", "tags", &format!("{host}/odd/app")]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.json(), json!(["v1", "v2"]), "only valid tags are listed");
    let lines = env.tag_lines(&root, &format!("{host}/odd/app"), &[]);
    assert_eq!(lines, ["v1", "v2"]);
    assert_eq!(
        r.stderr.matches("not a valid tag").count(),
        4,
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains('\u{1b}') && !r.stderr.contains('\u{0}'),
        "{:?}",
        r.stderr
    );
    let (r, kib) = run_max_rss(
        &env,
        &root,
        &["remote", "tags", &format!("{host}/huge/app")],
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("8388608 bytes"),
        "the error names the cap: {}",
        r.stderr
    );
    assert!(kib < 64 * 1024, "peak RSS {kib} KiB");
}

#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn a_registry_that_never_answers_fails_a_pull_within_a_minute() {
    let env = Env::new();
    let root = env.path("store");
    // Accepts every connection and never answers: the connections are kept open.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    let server = doubles::Server::start(move |conn| h.lock().unwrap().push(conn));
    let started = Instant::now();
    let r = env.run(
        &root,
        &["image", "pull", &format!("{}/silent/app:1", server.host)],
    );
    let took = started.elapsed();
    println!(
        "a pull from a silent registry failed after {took:?}: {}",
        r.stderr.trim()
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        took < Duration::from_secs(60),
        "failed within a minute: {took:?}"
    );
    assert!(
        r.stderr.contains(&server.host)
            && r.stderr.contains("no answer in time")
            && r.stderr.contains("deadline"),
        "the error names the host and the limit: {}",
        r.stderr
    );
    assert!(
        held.lock().unwrap().len() >= 2,
        "it was tried more than once"
    );
    assert_eq!(env.ok(&root, &["image", "ls"]), json!([]));
}

/// A server that answers a manifest's head at once, then sends one byte of its 5,000-byte
/// body every `every`, 40 bytes in all: a registry that trickles, which no real one does on
/// demand.
fn trickling(every: Duration) -> doubles::Server {
    use std::io::Write;
    doubles::Server::start(move |mut conn| {
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut conn, &mut buf);
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                    Content-Length: 5000\r\nConnection: close\r\n\r\n";
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..40 {
            if conn.write_all(b" ").and_then(|()| conn.flush()).is_err() {
                return;
            }
            std::thread::sleep(every);
        }
    })
}

/// `--timeout` bounds the whole command: a registry that trickles a manifest (slowly
/// enough to stay above the per-read timeout, and for less than the minimum rate's window)
/// fails a pull given `--timeout 3s` within a few seconds, naming the deadline; nothing is
/// named. The double is a server that trickles bytes, which no real registry does on demand.
#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn timeout_bounds_the_whole_command() {
    let env = Env::new();
    let root = env.path("store");
    let server = trickling(Duration::from_millis(500));
    let started = Instant::now();
    let r = env.run(
        &root,
        &[
            "image",
            "pull",
            "--timeout",
            "3s",
            &format!("{}/slow/app:1", server.host),
        ],
    );
    let took = started.elapsed();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        took < Duration::from_secs(10),
        "bounded by --timeout: {took:?}"
    );
    assert!(
        r.stderr.contains(&server.host) && r.stderr.contains("deadline of 3s"),
        "the error names the host and the deadline: {}",
        r.stderr
    );
    assert_eq!(env.ok(&root, &["image", "ls"]), json!([]));
    // A usage mistake in the flag is the user's: exit 2.
    let r = env.run(&root, &["image", "pull", "--timeout", "soon", "x/y:1"]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn a_registry_that_trickles_fails_a_pull_within_a_minute() {
    let env = Env::new();
    let root = env.path("store");
    // One byte every 2 s: each read beats the per-read timeout, the transfer never ends.
    let server = trickling(Duration::from_secs(2));
    let started = Instant::now();
    let r = env.run(
        &root,
        &["image", "pull", &format!("{}/slow/app:1", server.host)],
    );
    let took = started.elapsed();
    println!(
        "a pull from a trickling registry failed after {took:?}: {}",
        r.stderr.trim()
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        took < Duration::from_secs(60),
        "failed within a minute: {took:?}"
    );
    assert!(
        r.stderr.contains(&server.host) && r.stderr.contains("minimum rate"),
        "the error names the host and the limit: {}",
        r.stderr
    );
    assert_eq!(env.ok(&root, &["image", "ls"]), json!([]));
}

#[test]
#[ignore = "needs nothing but a test double; run with the registry suite"]
fn what_a_registry_sends_wrong_exits_1_and_the_users_own_mistakes_exit_2() {
    let env = Env::new();
    let root = env.path("store");
    let config = format!("sha256:{}", "cd".repeat(32));
    let manifest = |layer: serde_json::Value| {
        json!({
            "schemaVersion": 2,
            "mediaType": images::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [layer],
        })
        .to_string()
    };
    let bad_digest = Documents::start(
        "bad/digest",
        "1",
        images::OCI_MANIFEST,
        manifest(
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:not-hex", "size": 3}),
        ),
    );
    let negative = Documents::start(
        "bad/size",
        "1",
        images::OCI_MANIFEST,
        manifest(
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", "ab".repeat(32)), "size": -5}),
        ),
    );
    for (server, repo) in [(&bad_digest, "bad/digest"), (&negative, "bad/size")] {
        let r = env.run(
            &root,
            &["image", "pull", &format!("{}/{repo}:1", server.server.host)],
        );
        assert_eq!(r.code, Some(1), "a registry's fault exits 1: {r:?}");
        assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
        assert!(
            r.stderr.contains(&server.server.host),
            "names the host: {}",
            r.stderr
        );
    }
    // The user's own malformed reference is still a usage error.
    let r = env.run(&root, &["image", "pull", "UPPER/Case:bad tag"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert_eq!(env.ok(&root, &["image", "ls"]), json!([]));
}

#[test]
#[ignore = "needs docker-registry; run by .ci/run's interop suite"]
fn a_pull_of_many_layers_fits_in_few_file_descriptors() {
    let env = Env::new();
    let root = env.path("store");
    let reg = Reg::plain();
    let sizes = vec![512usize; 5000];
    // Into the registry with ocistore itself: skopeo takes minutes over 5,000 layers.
    let image = env.image("1", AMD64, &sizes, 77);
    let reference = reg.reference("many/layers:1");
    let src = env.path("src");
    env.ok(
        &src,
        &["image", "import", p(&image.dir), "--name", "many/layers:1"],
    );
    env.ok(&src, &["image", "push", "many/layers:1", &reference]);
    // 5,000 layers under a limit of 256 open files.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$@\"")
        .arg("sh")
        .arg(cmd::BIN)
        .arg("--root")
        .arg(&root)
        .args(["--json", "image", "pull", &reference])
        .env("DOCKER_CONFIG", env.docker_config())
        .env("OCISTORE_HOSTS_DIR", env.path("hosts"))
        .env("HOME", env.path("home"))
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "the pull fits in 256 descriptors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pulled_whole(&env, &root, &reference, &image);
}

#[test]
#[ignore = "needs docker-registry; run by .ci/run's interop suite"]
fn an_artifact_pushed_and_pulled_keeps_its_bytes_and_its_artifact_type() {
    let env = Env::new();
    let (root, other) = (env.path("store"), env.path("other"));
    let reg = Reg::plain();
    let file = env.path("sbom.spdx.json");
    std::fs::write(&file, br#"{"spdxVersion":"SPDX-2.3"}"#).unwrap();
    let made = env.ok(
        &root,
        &[
            "artifact",
            "create",
            "lab/sbom:1",
            "--artifact-type",
            "application/spdx+json",
            &format!("{}:application/spdx+json", p(&file)),
        ],
    );
    let digest = made["digest"].as_str().unwrap().to_owned();
    let target = reg.reference("lab/sbom:1");
    env.push(&root, &["lab/sbom:1", &target], &digest);
    let remote = env.ok(&root, &["remote", "inspect", &target]);
    assert_eq!(remote["artifact_type"], "application/spdx+json", "{remote}");
    assert_eq!(remote["digest"], digest.as_str(), "{remote}");
    env.pull(&other, &[&target], &digest);
    let ls = env.ok(&other, &["image", "ls"]);
    assert_eq!(ls[0]["artifact_type"], "application/spdx+json", "{ls}");
    let out = env.path("out");
    env.ok(&other, &["artifact", "get", &target, "-o", p(&out)]);
    assert_eq!(
        std::fs::read(out.join("sbom.spdx.json")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    env.fsck_clean(&other);
}
