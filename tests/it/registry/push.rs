//! Pushes: uploads, skips and mounts.

use super::*;

// push

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn push_uploads_then_skips_then_mounts() {
    let env = Env::new();
    let reg = Reg::plain();
    let image = env.image("v1", AMD64, &[600 << 10, 300 << 10, 100 << 10], 5);
    let root = env.path("store");
    let repo = reg.reference("push/app");
    env.ok(&root, &["image", "import", p(&image.dir), "--name", &repo]);
    let name = reg.reference("push/app:v1");
    let n_blobs = image.plain_blobs().len();

    let mark = reg.ours().len();
    let out = env.push(&root, &[&name], &image.root.digest);
    assert_eq!(out["target"], name, "{out}");
    assert_eq!(
        out["blobs_pushed"],
        image.blobs().len(),
        "every blob and the manifest: {out}"
    );
    assert_eq!(out["bytes_pushed"], image.size(), "{out}");
    assert_eq!(out["blobs_mounted"], 0, "{out}");
    assert_eq!(out["blobs_skipped"], 0, "{out}");
    let reqs = reg.ours_since(mark);
    let puts: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.uri.contains("/blobs/uploads/"))
        .collect();
    assert_eq!(puts.len(), n_blobs, "one upload per blob:\n{}", list(&reqs));
    assert!(
        reqs.iter()
            .any(|r| r.method == "PUT" && r.uri == "/v2/push/app/manifests/v1"),
        "the manifest is put by tag:\n{}",
        list(&reqs)
    );
    assert!(
        reqs.iter().all(|r| r.status < 400 || r.method == "HEAD"),
        "no failed request:\n{}",
        list(&reqs)
    );
    assert_eq!(skopeo_digest(&name, None), image.root.digest);

    // Again: only HEADs, everything skipped.
    let mark = reg.ours().len();
    let out = env.push(&root, &[&name], &image.root.digest);
    assert_eq!(out["blobs_skipped"], image.blobs().len(), "{out}");
    assert_eq!(out["blobs_pushed"], 0, "{out}");
    assert_eq!(out["bytes_pushed"], 0, "{out}");
    let reqs = reg.ours_since(mark);
    assert!(
        !reqs.is_empty() && reqs.iter().all(|r| r.method == "HEAD"),
        "a repeated push makes only HEAD requests:\n{}",
        list(&reqs)
    );

    // To a second repository of the same registry: every blob mounted.
    let other = reg.reference("other/app:v1");
    let mark = reg.ours().len();
    let out = env.push(&root, &[&name, &other], &image.root.digest);
    assert_eq!(out["blobs_mounted"], n_blobs, "{out}");
    assert_eq!(out["blobs_pushed"], 1, "only the manifest: {out}");
    assert_eq!(out["bytes_pushed"], image.root.size, "{out}");
    let reqs = reg.ours_since(mark);
    let mounts = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.uri.contains("mount=") && r.status == 201)
        .count();
    assert_eq!(mounts, n_blobs, "mounted:\n{}", list(&reqs));
    assert!(
        !reqs
            .iter()
            .any(|r| r.method == "PUT" && r.uri.contains("/blobs/")),
        "no blob upload:\n{}",
        list(&reqs)
    );
    assert!(
        reqs.iter()
            .filter(|r| r.uri.contains("mount="))
            .all(|r| r.uri.contains("from=push/app") || r.uri.contains("from=push%2Fapp")),
        "{}",
        list(&reqs)
    );

    // skopeo and containerd read what we pushed, with the same digests.
    assert_eq!(skopeo_digest(&other, None), image.root.digest);
    skopeo_reads(
        &format!("docker://{other}"),
        &env.path("skopeo-out"),
        &image,
    );

    let ctd = Containerd::start();
    ctd.ctr(&["content", "fetch", "--plain-http", &other]);
    let ls = ctd.ctr_text(&["content", "ls", "-q"]);
    for d in image.blobs().keys() {
        assert!(
            ls.lines().any(|l| l.trim() == d),
            "containerd fetched {d}:\n{ls}"
        );
    }
    let images = ctd.ctr_text(&["images", "ls"]);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with(&other) && l.contains(&image.root.digest)),
        "ctr images ls names {other} at {}:\n{images}",
        image.root.digest
    );
}
