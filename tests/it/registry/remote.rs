//! `ocistore remote`: inspect, tags, referrers and rm against a registry.

use super::*;

// remote

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn remote_inspect_and_rm() {
    let env = Env::new();
    let reg = Reg::plain();
    let root = env.path("store");
    let (one, one_ref) = pushed(&env, &reg, "rem/app:one", AMD64, &[10 << 10], 7);
    let (two, two_ref) = pushed(&env, &reg, "rem/app:two", AMD64, &[10 << 10], 8);
    let sizes = [10 << 10, 5 << 10];
    let (multi, m) = pushed(&env, &reg, "rem/multi:1", AMD64_ARM64, &sizes, 9);
    let absent = |reference: &str| env.fails(&root, &["remote", "inspect", reference], 1);

    let v = env.inspect(&root, &[&one_ref], &one.root.digest);
    assert_eq!(v["media_type"], OCI_MANIFEST, "{v}");
    assert_eq!(v["size"], one.root.size, "{v}");
    assert_eq!(v["name"], one_ref, "{v}");
    let by_digest = format!("{}@{}", reg.reference("rem/app"), two.root.digest);
    env.inspect(&root, &[&by_digest], &two.root.digest);
    absent(&reg.reference("rem/app:nope"));
    absent(&reg.reference("no/repo:1"));
    env.fails(&root, &["remote", "inspect", "127.0.0.1:1/Bad//ref::"], 2);

    let v = env.inspect(&root, &[&m], &multi.root.digest);
    assert_eq!(v["media_type"], OCI_INDEX, "{v}");
    for (asked, platform) in [
        ("linux/arm64", "linux/arm64/v8"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/amd64", "linux/amd64"),
    ] {
        let digest = &multi.platform(platform).manifest.digest;
        let v = env.inspect(&root, &[&m, "--platform", asked], digest);
        assert_eq!(v["media_type"], OCI_MANIFEST, "{asked}: {v}");
    }
    env.fails(
        &root,
        &["remote", "inspect", &m, "--platform", "linux/ppc64le"],
        1,
    );

    // rm by tag removes that manifest (and its tags), nothing else.
    env.ok(&root, &["remote", "rm", &two_ref]);
    absent(&two_ref);
    absent(&by_digest);
    env.inspect(&root, &[&one_ref], &one.root.digest);
    // rm by digest; rm of what is gone is exit 1.
    let one_by_digest = format!("{}@{}", reg.reference("rem/app"), one.root.digest);
    env.ok(&root, &["remote", "rm", &one_by_digest]);
    absent(&one_ref);
    env.fails(&root, &["remote", "rm", &one_by_digest], 1);
    env.fails(&root, &["remote", "rm", &two_ref], 1);

    // A registry that does not allow deletes says so; the manifest is still there.
    let nodel = Reg::start(RegOpts {
        no_delete: true,
        ..RegOpts::default()
    });
    skopeo_push(&one, &nodel, "keep/app:1", None);
    let keep = nodel.reference("keep/app:1");
    env.fails_naming(&root, &["remote", "rm", &keep], &["delete", &nodel.host]);
    env.inspect(&root, &[&keep], &one.root.digest);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn remote_tags_against_distribution() {
    let env = Env::new();
    let reg = Reg::plain();
    let root = env.path("store");
    let image = env.image("t", AMD64, &[4 << 10], 10);
    let tags = ["a1", "b2", "c3", "d4", "e5"];
    for t in tags {
        skopeo_push(&image, &reg, &format!("tags/app:{t}"), None);
    }
    let repo = reg.reference("tags/app");
    let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<String>>();
    let all: BTreeSet<String> = tags.iter().map(|t| (*t).to_owned()).collect();

    // The whole list (distribution 2.8 sends it unsorted, in its storage's order).
    assert_eq!(set(env.tag_lines(&root, &repo, &[])), all, "every tag");
    let repository = Repository {
        host: reg.host.clone(),
        path: "tags/app".into(),
    };
    assert_eq!(
        set(anonymous().tags(&repository, None, None).unwrap()),
        all,
        "the library lists every tag"
    );
    env.fails(&root, &["remote", "tags", &reg.reference("tags/app:a1")], 2);
    env.fails(&root, &["remote", "tags", &reg.reference("no/such")], 1);

    // --limit and --last hold even against a registry that ignores n and last
    // (distribution 2.8 does: no pagination, no Link).
    let limited = env.tag_lines(&root, &repo, &["--limit", "2"]);
    assert!(
        limited.len() <= 2 && limited.iter().all(|t| all.contains(t)),
        "--limit 2 printed {limited:?}"
    );
    let after = env.tag_lines(&root, &repo, &["--last", "b2"]);
    assert_eq!(
        set(after.clone()),
        set(vec!["c3".into(), "d4".into(), "e5".into()]),
        "--last b2 printed {after:?}"
    );
    let both = env.tag_lines(&root, &repo, &["--limit", "2", "--last", "b2"]);
    assert!(
        both.len() <= 2 && both.iter().all(|t| t.as_str() > "b2"),
        "--limit 2 --last b2 printed {both:?}"
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn remote_tags_follow_link_pages() {
    const TAGS: [&str; 5] = ["a1", "b2", "c3", "d4", "e5"];
    let fake = PagingTags::start("tags/app", &TAGS);
    let env = Env::new();
    let root = env.path("store");
    let host = fake.server.host.clone();
    let repository = Repository {
        host: host.clone(),
        path: "tags/app".into(),
    };
    let registry = anonymous();

    // One page at a time, following Link.
    let mut page = registry
        .tags_page(&repository, Some(2), None, None)
        .unwrap();
    assert_eq!(page.tags, ["a1", "b2"], "{page:?}");
    let mut all = page.tags.clone();
    let mut pages = 1;
    while let Some(next) = page.next.take() {
        assert!(next.starts_with(&format!("http://{host}/v2/")), "{next}");
        page = registry
            .tags_page(&repository, None, None, Some(&next))
            .unwrap();
        all.extend(page.tags.clone());
        pages += 1;
        assert!(pages <= 5, "the pages never end: {page:?}");
    }
    assert_eq!(all, TAGS, "the pages add up to every tag");
    assert_eq!(pages, 3);
    assert!(
        fake.uris().iter().any(|u| u.contains("last=d4")),
        "{:?}",
        fake.uris()
    );

    // The whole list follows the pages; a limit is one page. The CLI alike.
    let repo = format!("{host}/tags/app");
    for (limit, last, expected) in [
        (None, None, &TAGS[..]),
        (Some(2), None, &TAGS[..2]),
        (Some(2), Some("b2"), &TAGS[2..4]),
        (None, Some("b2"), &TAGS[2..]),
    ] {
        let listed = registry.tags(&repository, limit, last).unwrap();
        assert_eq!(listed, expected, "limit {limit:?}, last {last:?}");
        let limit = limit.map(|n: usize| n.to_string());
        let mut args = Vec::new();
        if let Some(n) = &limit {
            args.extend(["--limit", n]);
        }
        if let Some(l) = last {
            args.extend(["--last", l]);
        }
        assert_eq!(env.tag_lines(&root, &repo, &args), expected, "{args:?}");
    }
}
