//! Reaching a registry: basic auth from docker config, token auth, TLS, proxies.

use super::*;

// basic auth

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn basic_auth_with_docker_config_credentials() {
    let env = Env::new();
    let (user, pass) = ("tester", "s3cret-pw");
    let reg = Reg::start(RegOpts {
        auth: Some((user.into(), pass.into())),
        ..RegOpts::default()
    });
    let image = env.image("1", AMD64, &[100 << 10, 50 << 10], 6);
    skopeo_push(&image, &reg, "auth/app:1", Some((user, pass)));
    let reference = reg.reference("auth/app:1");
    let root = env.path("store");
    let pull = ["image", "pull", &reference];

    // No credentials: exit 1, naming the host and where credentials were looked for.
    let looked_for = "no credentials in config.json";
    env.fails_naming(&root, &pull, &[&reg.host, looked_for, "unauthorized"]);
    env.fails(&root, &["remote", "inspect", &reference], 1);

    // A wrong password: exit 1, unauthorized.
    env.login(&reg.host, user, "wrong");
    env.fails_naming(&root, &pull, &["unauthorized", &reg.host]);

    // The right one: pull, inspect, tags and push all work.
    env.login(&reg.host, user, pass);
    env.pull(&root, &[&reference], &image.root.digest);
    env.inspect(&root, &[&reference], &image.root.digest);
    let other = reg.reference("auth/copy:1");
    let out = env.push(&root, &[&reference, &other], &image.root.digest);
    assert_eq!(out["blobs_mounted"], image.plain_blobs().len(), "{out}");
    assert_eq!(skopeo_digest(&other, Some((user, pass))), image.root.digest);
    env.fsck_clean(&root);

    // $REGISTRY_AUTH_FILE (containers' auth.json) serves as well.
    env.logout();
    let auth_file = env.path("auth.json");
    let auth = auth_json(&reg.host, user, pass);
    std::fs::write(&auth_file, auth.to_string()).unwrap();
    succeed(
        env.cmd(&env.path("store2"), &pull)
            .env("REGISTRY_AUTH_FILE", &auth_file),
    );

    // A credential helper named by `credHelpers` (docker's protocol: `get`, the host on
    // stdin, `{"Username","Secret"}` out), found on PATH.
    std::fs::remove_file(&auth_file).unwrap();
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-ocitest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread host\n\
             [ \"$host\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}'\n",
            reg.host
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        env.docker_config().join("config.json"),
        json!({"credHelpers": {reg.host.clone(): "ocitest"}}).to_string(),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    succeed(env.cmd(&env.path("store3"), &pull).env("PATH", &path));
    // The same helper as `credsStore` (the default for every host).
    std::fs::write(
        env.docker_config().join("config.json"),
        json!({"credsStore": "ocitest"}).to_string(),
    )
    .unwrap();
    succeed(env.cmd(&env.path("store4"), &pull).env("PATH", &path));
    // Pulled content shows its platform's size in `image ls`, as ctr counts it.
    let ls = env.ok(&env.path("store4"), &["image", "ls"]);
    let platform = &image.platforms[0];
    let expected = platform.manifest.size
        + platform.config.size
        + platform.layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(ls[0]["image_size"], expected, "{ls}");
}

// TLS

/// Whether an error is about a certificate (an unknown authority).
fn about_the_certificate(stderr: &str) -> bool {
    let lower = stderr.to_lowercase();
    lower.contains("certificate") || lower.contains("unknown issuer")
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn tls_registry_without_hosts_toml_fails_naming_the_certificate() {
    let env = Env::new();
    let (reg, _ca, _image, reference) = tls_registry(&env);
    let pull = ["image", "pull", &reference];
    let r = env.fails_naming(&env.path("store"), &pull, &[&reg.host]);
    assert!(
        about_the_certificate(&r.stderr),
        "a TLS registry on loopback without hosts.toml: the error should be about its \
         certificate (unknown authority), got: {}",
        r.stderr
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn tls_registry_with_hosts_toml_ca_or_skip_verify() {
    let env = Env::new();
    let (reg, ca, image, reference) = tls_registry(&env);
    let https = format!("server = \"https://{}\"\n", reg.host);

    // https without the CA: refused, about the certificate.
    env.hosts_toml(&reg.host, &https);
    let r = env.fails(&env.path("s0"), &["image", "pull", &reference], 1);
    assert!(
        about_the_certificate(&r.stderr),
        "https to a server whose CA is unknown: {}",
        r.stderr
    );

    // With ca = the CA: works.
    env.hosts_toml(&reg.host, &format!("{https}ca = \"{}\"\n", ca.display()));
    let s1 = env.path("s1");
    env.pull(&s1, &[&reference], &image.root.digest);
    env.fsck_clean(&s1);
    env.inspect(&s1, &[&reference], &image.root.digest);
    let copy = reg.reference("tls/copy:1");
    env.push(&s1, &[&reference, &copy], &image.root.digest);

    // With skip_verify: works without the CA.
    env.clear_hosts(&reg.host);
    env.hosts_toml(&reg.host, &format!("{https}skip_verify = true\n"));
    env.pull(&env.path("s2"), &[&reference], &image.root.digest);
}

// proxies

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn proxies_from_the_environment_are_used_as_go_uses_them() {
    let env = Env::new();
    // A layer over 1 MiB: over plain HTTP without a proxy it would be read around ureq
    // (src/registry/direct.rs); through a proxy it must not be.
    let (reg, image, _) = registry_with(&env, "px/app:1", AMD64, &[2 << 20, 40 << 10], 34);
    let proxy = ConnectProxy::start(reg.port);
    // Named by a host that does not resolve (RFC 2606's .invalid): only the proxy reaches it.
    let far = format!("registry.invalid:{}", reg.port);
    let reference = format!("{far}/px/app:1");
    let via = proxy.url();

    let root = env.path("store");
    let pull = ["image", "pull", "--plain-http", &reference];
    let r = env.run_env(&root, &pull, &[("HTTP_PROXY", &via)]);
    assert_eq!(r.code, Some(0), "a pull through HTTP_PROXY: {}", r.stderr);
    assert_eq!(r.json()["digest"], image.root.digest, "{}", r.stdout);
    let targets = proxy.targets();
    assert!(
        !targets.is_empty() && targets.iter().all(|t| *t == far),
        "every connection went through the proxy to {far}: {targets:?}"
    );
    assert!(
        proxy.relayed() >= image.size(),
        "the proxy relayed the image ({} bytes), large layer included: {}",
        image.size(),
        proxy.relayed()
    );
    pulled_whole(&env, &root, &reference, &image);

    // A push goes the same way: its uploads arrive in the registry.
    let copy = format!("{far}/px/copy:1");
    let push = ["image", "push", "--plain-http", &reference, &copy];
    let r = env.run_env(&root, &push, &[("HTTP_PROXY", &via)]);
    assert_eq!(r.code, Some(0), "a push through HTTP_PROXY: {}", r.stderr);
    assert_eq!(
        skopeo_digest(&reg.reference("px/copy:1"), None),
        image.root.digest
    );

    // Loopback is never proxied, whatever the environment says (a CI job with a company
    // proxy reaches the registry it started): a dead proxy in every variable changes nothing.
    let dead = "http://127.0.0.1:1";
    let before = proxy.targets().len();
    let root2 = env.path("store2");
    let near = reg.reference("px/app:1");
    let r = env.run_env(
        &root2,
        &["image", "pull", &near],
        &[
            ("HTTP_PROXY", dead),
            ("HTTPS_PROXY", dead),
            ("ALL_PROXY", dead),
        ],
    );
    assert_eq!(
        r.code,
        Some(0),
        "a loopback pull with proxies set: {}",
        r.stderr
    );
    pulled_whole(&env, &root2, &near, &image);
    assert_eq!(proxy.targets().len(), before);
}

// token auth

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn token_auth_push_then_pull_with_docker_config_credentials() {
    let env = Env::new();
    let (user, pass) = ("tokuser", "tok-pw");
    let tokens = TokenServer::start(Some((user, pass)));
    let reg = tokens.registry();
    // The first layer is large enough to be read around ureq (src/registry/direct.rs): the
    // token must go with that GET too (no 401 on a blob, below).
    let image = env.image("1", AMD64, &[2 << 20, 50 << 10], 31);
    let src = env.path("src");
    let repo = reg.reference("tok/app");
    env.ok(&src, &["image", "import", p(&image.dir), "--name", &repo]);
    let reference = reg.reference("tok/app:1");
    let looked_for = "no credentials in config.json";

    // No credentials: the token server refuses; exit 1 naming the host.
    let push = ["image", "push", &reference];
    env.fails_naming(&src, &push, &[&reg.host, looked_for]);
    assert!(
        tokens.ours().iter().all(|t| !t.granted && t.user.is_none()),
        "{:?}",
        tokens.ours()
    );
    // A wrong password alike.
    env.login(&reg.host, user, "wrong");
    env.fails_naming(&src, &push, &[&reg.host]);

    // With credentials: push, then pull into another store.
    env.login(&reg.host, user, pass);
    env.push(&src, &[&reference], &image.root.digest);
    assert_eq!(
        skopeo_digest(&reference, Some((user, pass))),
        image.root.digest
    );
    let ours = tokens.ours();
    assert!(
        ours.iter().any(|t| t.granted
            && t.user.as_deref() == Some(user)
            && t.scopes == ["repository:tok/app:pull,push"]),
        "the push asked a pull,push token for tok/app with the credentials: {ours:?}"
    );
    let root = env.path("store");
    let mark = tokens.ours().len();
    env.pull(&root, &[&reference], &image.root.digest);
    pulled_whole(&env, &root, &reference, &image);
    let pulls = tokens.ours().split_off(mark);
    assert!(
        !pulls.is_empty()
            && pulls.iter().all(|t| t.granted
                && t.user.as_deref() == Some(user)
                && t.scopes == ["repository:tok/app:pull"]),
        "the pull asked pull tokens for tok/app: {pulls:?}"
    );
    let reqs = reg.ours();
    assert!(
        reqs.iter()
            .filter(|r| r.status == 401)
            .all(|r| r.method == "HEAD"
                || r.method == "POST"
                || (r.method == "GET" && r.uri.contains("/manifests/"))),
        "a 401 only on a command's first request (before it has a token):\n{}",
        list(&reqs)
    );

    // Without credentials the pull fails naming the host.
    env.logout();
    let store2 = env.path("store2");
    env.fails_naming(
        &store2,
        &["image", "pull", &reference],
        &[&reg.host, looked_for],
    );
    assert_eq!(env.ok(&store2, &["image", "ls"]), json!([]), "no name");
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn token_auth_push_to_a_second_repository() {
    let env = Env::new();
    let (user, pass) = ("tokuser", "tok-pw");
    let tokens = TokenServer::start(Some((user, pass)));
    let reg = tokens.registry();
    let image = env.image("1", AMD64, &[100 << 10], 32);
    skopeo_push(&image, &reg, "tok/app:1", Some((user, pass)));
    env.login(&reg.host, user, pass);
    let root = env.path("store");
    let reference = reg.reference("tok/app:1");
    env.pull(&root, &[&reference], &image.root.digest);
    // The blobs are labelled as coming from tok/app: the push to tok/copy tries a
    // cross-repository mount, which distribution authorises only with a token that also
    // grants pull on tok/app.
    let copy = reg.reference("tok/copy:1");
    let mark = reg.ours().len();
    let r = env.run(&root, &["image", "push", &reference, &copy]);
    let reqs = reg.ours_since(mark);
    assert_eq!(
        r.code,
        Some(0),
        "a push to a second repository of a token-auth registry failed: {}\ntoken \
         requests: {:?}\nrequests:\n{}",
        r.stderr,
        tokens.ours(),
        list(&reqs)
    );
    let out = r.json();
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert_eq!(skopeo_digest(&copy, Some((user, pass))), image.root.digest);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn token_expiring_mid_pull_reauthenticates_once() {
    let env = Env::new();
    let tokens = TokenServer::start(None);
    let reg = tokens.registry();
    let (image, direct) = pushed(&env, &reg, "tok/app:1", AMD64, &[300 << 10, 20 << 10], 33);
    let big = image.platforms[0].layers[0].clone();

    // Tokens that live about 3 s; the first GET of the big layer waits 5 s in the proxy
    // before it reaches the registry, with the token of the pull's start.
    tokens.set_exp_in(-57);
    let delay = Fault::Delay(Duration::from_secs(5));
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new("GET", &big.digest, delay).times(1)],
    );
    let reference = proxy.reference("tok/app:1");
    let root = env.path("store");
    let mark = reg.ours().len();
    env.pull(&root, &[&reference], &image.root.digest);
    env.fsck_clean(&root);
    let reqs = reg.ours_since(mark);
    let expired: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.status == 401 && r.blob() == Some(big.digest.as_str()))
        .collect();
    assert_eq!(
        expired.len(),
        1,
        "the delayed GET reached the registry with an expired token:\n{}",
        list(&reqs)
    );
    let unauthorized = reqs.iter().filter(|r| r.status == 401).count();
    let fetched = tokens.ours().len();
    assert_eq!(
        fetched,
        unauthorized,
        "one token request per 401 (the first request's and the expired one's):\n{}",
        list(&reqs)
    );
    let gets = blob_gets(&reqs);
    assert_eq!(gets.get(&big.digest), Some(&2), "{}", list(&reqs));

    // Tokens the registry never accepts: one token request, then the command fails,
    // naming the host (re-authentication happens once, not in a loop).
    tokens.set_exp_in(-3600);
    let before = tokens.ours().len();
    let mark = reg.ours().len();
    env.fails_naming(
        &env.path("store2"),
        &["image", "pull", &direct],
        &[&reg.host],
    );
    let reqs = reg.ours_since(mark);
    assert_eq!(
        tokens.ours().len() - before,
        1,
        "one token request: {:?}",
        tokens.ours()
    );
    assert_eq!(
        reqs.len(),
        2,
        "the request, and once with the token:\n{}",
        list(&reqs)
    );
    assert!(reqs.iter().all(|r| r.status == 401), "{}", list(&reqs));
}
