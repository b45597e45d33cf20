//! The registry tests' harness: tools, a real `docker-registry` per test ([`Reg`]), the
//! `ocistore` CLI in a private environment ([`Env`]), skopeo, containerd and TLS material,
//! the fixtures the tests start from and the checks several of them make.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ocistore::registry::{Credentials, Registry, RegistryOptions};
use serde_json::{Value, json};

use crate::cmd::{Ocistore, ocistore, rss};
use crate::doubles::{FaultProxy, Rule, TOKEN_ISSUER, TOKEN_SERVICE};
use crate::test_images::{AMD64, Blob, Image, build_image, layout_holds};

pub const MIB: u64 = 1 << 20;

// ================================================================ tools

pub use crate::private_containerd::need;

/// Runs `cmd` to its end; panics with its output unless it succeeds.
pub fn succeed(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a tool; panics with its output unless it succeeds.
pub fn sh(program: &str, args: &[&str]) -> Output {
    need(program);
    succeed(Command::new(program).args(args).stdin(Stdio::null()))
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary paths")
}

pub fn sha256(bytes: &[u8]) -> String {
    ocistore::Algorithm::Sha256.digest(bytes).to_string()
}

/// A loopback port nothing listens on (bound, read, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().unwrap().port()
}

/// A hand-written `GET path` to a plain-HTTP server on loopback: the status code.
fn raw_get(port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: registry-test\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))
}

/// Asks `done` every `step` until it is true: whether it was within `timeout`.
pub fn poll(timeout: Duration, step: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// A child process, killed and reaped on drop.
struct Process(Child);

impl Process {
    /// Starts `cmd`, stdin from /dev/null, stdout and stderr into a new file `log`.
    fn spawn(cmd: &mut Command, log: &Path) -> Process {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        Process(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl req`: a new key (`-newkey NEWKEY…`) into `key` and, with `x509`, a self-signed
/// certificate valid for two days into `out`, else a certificate request.
pub fn openssl_req(newkey: &[&str], key: &Path, out: &Path, subject: &str, x509: bool) {
    let mut args = vec!["req"];
    if x509 {
        args.extend(["-x509", "-days", "2"]);
    }
    args.push("-newkey");
    args.extend(newkey);
    args.extend([
        "-nodes",
        "-keyout",
        p(key),
        "-out",
        p(out),
        "-subj",
        subject,
    ]);
    sh("openssl", &args);
}

// ================================================================ the registry

/// How to configure a test registry.
#[derive(Default, Clone)]
pub struct RegOpts {
    /// htpasswd basic auth with this user and password.
    pub auth: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Leave `storage.delete.enabled` off.
    pub no_delete: bool,
    /// distribution's token auth: (realm URL, the certificate bundle that signs tokens),
    /// with service `test-registry` and issuer `test-issuer` (see `TokenServer`).
    pub token: Option<(String, PathBuf)>,
}

/// One request from the registry's access log.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub uri: String,
    pub status: u16,
    agent: String,
}

impl Req {
    /// A blob request (`/v2/<repo>/blobs/<digest>`), not an upload.
    pub fn blob(&self) -> Option<&str> {
        let (_, d) = self.uri.split_once("/blobs/")?;
        (!d.starts_with("uploads")).then_some(d)
    }

    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

impl std::fmt::Display for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.method, self.uri, self.status)
    }
}

/// Parses one access-log line: `IP - USER [TIME] "METHOD URI PROTO" STATUS SIZE "REF" "UA"`.
fn parse_access(line: &str) -> Option<Req> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_owned();
    let uri = parts.next()?.to_owned();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    let agent = rest
        .trim_end()
        .strip_suffix('"')?
        .rsplit_once('"')?
        .1
        .to_owned();
    Some(Req {
        method,
        uri,
        status,
        agent,
    })
}

static SENTINEL: AtomicU64 = AtomicU64::new(0);

/// `docker-registry serve` on a free loopback port, killed on drop.
pub struct Reg {
    child: Process,
    pub port: u16,
    /// `127.0.0.1:PORT`.
    pub host: String,
    tls: bool,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Reg {
    /// A registry with the default options: plain HTTP, no auth, deletes enabled.
    pub fn plain() -> Reg {
        Reg::start(RegOpts::default())
    }

    pub fn start(opts: RegOpts) -> Reg {
        need("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: {delete}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: ocistore-registry-test\n",
            data = d.join("data").display(),
            delete = !opts.no_delete,
        );
        if let Some((cert, key)) = &opts.tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, pass)) = &opts.auth {
            let out = sh("htpasswd", &["-Bbn", user, pass]);
            std::fs::write(d.join("htpasswd"), out.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ocistore-test\n    path: {}\n",
                d.join("htpasswd").display()
            ));
        }
        if let Some((realm, bundle)) = &opts.token {
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                bundle.display()
            ));
        }
        std::fs::write(d.join("config.yml"), &cfg).unwrap();
        let log = d.join("registry.log");
        let child = Process::spawn(
            Command::new("docker-registry")
                .arg("serve")
                .arg(d.join("config.yml")),
            &log,
        );
        let mut reg = Reg {
            child,
            port,
            host: format!("127.0.0.1:{port}"),
            tls: opts.tls.is_some(),
            log,
            _dir: dir,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let Reg {
            child,
            port,
            tls,
            log,
            ..
        } = self;
        let read_log = || std::fs::read_to_string(&*log).unwrap_or_default();
        let answers = poll(Duration::from_secs(30), Duration::from_millis(20), || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "docker-registry exited ({status}) before it listened:\n{}",
                    read_log()
                );
            }
            read_log().contains("listening on")
                && if *tls {
                    TcpStream::connect(("127.0.0.1", *port)).is_ok()
                } else {
                    raw_get(*port, "/v2/").is_ok_and(|s| s == 200 || s == 401)
                }
        });
        assert!(
            answers,
            "docker-registry did not answer /v2/ within 30 s:\n{}",
            read_log()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every request logged so far. On plain HTTP, a sentinel request is made first and
    /// waited for, so that every request answered before the call is in the log.
    fn requests(&self) -> Vec<Req> {
        if !self.tls {
            let n = SENTINEL.fetch_add(1, Ordering::Relaxed);
            let path = format!("/v2/sentinel-{n}/tags/list");
            let _ = raw_get(self.port, &path);
            let logged = format!(" {path} ");
            assert!(
                poll(Duration::from_secs(10), Duration::from_millis(10), || {
                    self.log_text().contains(&logged)
                }),
                "the sentinel request never reached the registry's access log"
            );
        }
        self.log_text().lines().filter_map(parse_access).collect()
    }

    /// The requests ocistore made (user agent `ocistore/…`), in log order.
    pub fn ours(&self) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.agent.starts_with("ocistore/"))
            .collect()
    }

    /// ocistore's requests after the first `mark` of them.
    pub fn ours_since(&self, mark: usize) -> Vec<Req> {
        self.ours().split_off(mark)
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }
}

pub fn list(reqs: &[Req]) -> String {
    reqs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Counts of ocistore's blob GETs per digest in `reqs`.
pub fn blob_gets(reqs: &[Req]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.method == "GET") {
        if let Some(d) = r.blob() {
            *out.entry(d.to_owned()).or_default() += 1;
        }
    }
    out
}

/// Asserts that ocistore fetched every config and layer of `image` from `reg` exactly once.
pub fn fetched_once_from(reg: &Reg, image: &Image, what: &str) {
    let gets = blob_gets(&reg.ours());
    for d in image.plain_blobs().keys() {
        assert_eq!(gets.get(d), Some(&1), "{d} came from {what}");
    }
}

pub fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64/v8",
        other => panic!("the registry tests know no platform for {other}"),
    }
}

pub fn anonymous() -> Registry {
    Registry::new(RegistryOptions {
        credentials: Credentials::none(),
        hosts_dirs: Vec::new(),
        ..RegistryOptions::default()
    })
}

// ================================================================ the CLI

/// The proxy variables, which [`Env::run_env`] clears unless a test sets them.
pub const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// `{"auths": {host: {"auth": base64("user:pass")}}}`: docker's config.json, containers'
/// auth.json.
pub fn auth_json(host: &str, user: &str, pass: &str) -> Value {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    json!({"auths": {host: {"auth": auth}}})
}

/// A private environment for `ocistore`: its own `DOCKER_CONFIG` (no credentials unless
/// given), `OCISTORE_HOSTS_DIR` and `HOME` (so that neither the machine's config.json nor
/// `~/.config/ocistore/certs.d` is read), and store roots, under one temporary directory.
pub struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["docker", "hosts", "home"] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        Env { tmp }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn docker_config(&self) -> PathBuf {
        self.path("docker")
    }

    /// Writes `config.json` with `user:pass` for `host`.
    pub fn login(&self, host: &str, user: &str, pass: &str) {
        std::fs::write(
            self.docker_config().join("config.json"),
            serde_json::to_vec_pretty(&auth_json(host, user, pass)).unwrap(),
        )
        .unwrap();
    }

    pub fn logout(&self) {
        let _ = std::fs::remove_file(self.docker_config().join("config.json"));
    }

    /// Writes `$OCISTORE_HOSTS_DIR/<host>/hosts.toml`.
    pub fn hosts_toml(&self, host: &str, text: &str) {
        let dir = self.path("hosts").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts.toml"), text).unwrap();
    }

    pub fn clear_hosts(&self, host: &str) {
        let _ = std::fs::remove_dir_all(self.path("hosts").join(host));
    }

    /// `ocistore --root <root> <args>` (tests/it/common/cmd.rs) with this environment's
    /// variables.
    fn within(&self, root: &Path, args: &[&str]) -> Ocistore {
        let mut c = ocistore(root, args);
        c.env("DOCKER_CONFIG", self.docker_config())
            .env("OCISTORE_HOSTS_DIR", self.path("hosts"))
            .env("HOME", self.path("home"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("OCISTORE_ROOT");
        c
    }

    /// `ocistore --root <root>` in this environment, without further arguments yet.
    pub fn ocistore(&self, root: &Path) -> Command {
        self.within(root, &[]).command()
    }

    /// `ocistore --root <root> --json <args>` in this environment, not yet run.
    pub fn cli(&self, root: &Path, args: &[&str]) -> Ocistore {
        self.within(root, &[&["--json"], args].concat())
    }

    /// [`Env::cli`], not yet started.
    pub fn cmd(&self, root: &Path, args: &[&str]) -> Command {
        self.cli(root, args).command()
    }

    pub fn run(&self, root: &Path, args: &[&str]) -> Run {
        self.run_env(root, args, &[])
    }

    /// [`Env::run`] with these variables, and none of the proxy variables but those given.
    pub fn run_env(&self, root: &Path, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut c = self.cli(root, args);
        for k in PROXY_VARS {
            c.env_remove(k);
        }
        for (k, v) in vars {
            c.env(k, v);
        }
        let out = c.raw_output();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts success; the JSON it printed (`Null` when none).
    pub fn ok(&self, root: &Path, args: &[&str]) -> Value {
        let r = self.run(root, args);
        assert_eq!(
            r.code,
            Some(0),
            "ocistore {args:?} failed: {}{}",
            r.stdout,
            r.stderr
        );
        if r.stdout.trim().is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    /// Runs `ocistore <command> <args>`, asserts success and that the JSON it printed names
    /// `digest`; the JSON.
    fn ok_at(&self, root: &Path, command: &[&str], args: &[&str], digest: &str) -> Value {
        let out = self.ok(root, &[command, args].concat());
        assert_eq!(out["digest"], digest, "{out}");
        out
    }

    /// `image pull <args>`: asserts it succeeds with `digest`; its JSON.
    pub fn pull(&self, root: &Path, args: &[&str], digest: &str) -> Value {
        self.ok_at(root, &["image", "pull"], args, digest)
    }

    /// `image push <args>`: asserts it succeeds with `digest`; its JSON.
    pub fn push(&self, root: &Path, args: &[&str], digest: &str) -> Value {
        self.ok_at(root, &["image", "push"], args, digest)
    }

    /// `remote inspect <args>`: asserts it succeeds with `digest`; its JSON.
    pub fn inspect(&self, root: &Path, args: &[&str], digest: &str) -> Value {
        self.ok_at(root, &["remote", "inspect"], args, digest)
    }

    /// Runs and asserts it fails with `code`; the run.
    pub fn fails(&self, root: &Path, args: &[&str], code: i32) -> Run {
        let r = self.run(root, args);
        assert_eq!(
            r.code,
            Some(code),
            "ocistore {args:?} should exit {code}: {}{}",
            r.stdout,
            r.stderr
        );
        r
    }

    /// Runs and asserts it fails with exit 1, its error naming each of `parts`; the run.
    pub fn fails_naming(&self, root: &Path, args: &[&str], parts: &[&str]) -> Run {
        let r = self.fails(root, args, 1);
        for part in parts {
            assert!(
                r.stderr.contains(part),
                "the error names {part}: {}",
                r.stderr
            );
        }
        r
    }

    /// Runs `ocistore remote tags REPO ARGS` (plain output) and returns its lines.
    pub fn tag_lines(&self, root: &Path, repo: &str, args: &[&str]) -> Vec<String> {
        let out = succeed(
            self.ocistore(root)
                .args(["remote", "tags", repo])
                .args(args),
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The digests of every committed blob of the store.
    pub fn content(&self, root: &Path) -> BTreeMap<String, u64> {
        let v = self.ok(root, &["content", "ls"]);
        v.as_array()
            .unwrap_or_else(|| panic!("content ls --json: {v}"))
            .iter()
            .map(|i| {
                (
                    i["digest"].as_str().unwrap().to_owned(),
                    i["size"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Asserts `fsck` finds nothing wrong.
    pub fn fsck_clean(&self, root: &Path) {
        let v = self.ok(root, &["fsck"]);
        assert_eq!(v["problems"], json!([]), "fsck: {v}");
        assert_eq!(v["remaining"], 0, "fsck: {v}");
    }

    /// `image check NAME --platform P`: whether complete (exit 0 and `complete`).
    pub fn complete(&self, root: &Path, name: &str, platform: &str) -> bool {
        let r = self.run(root, &["image", "check", name, "--platform", platform]);
        let v = r.json();
        let complete = v["complete"].as_bool().unwrap();
        assert_eq!(
            r.code == Some(0),
            complete,
            "image check exits 0 exactly when complete: {r:?}"
        );
        complete
    }

    /// A test image (see [`build_image`]) in this environment's `layout-<seed>`, tagged `tag`.
    pub fn image(&self, tag: &str, platforms: &[&str], layer_sizes: &[usize], seed: u64) -> Image {
        let dir = self.path(&format!("layout-{seed}"));
        build_image(&dir, tag, platforms, layer_sizes, seed)
    }
}

/// Runs `ocistore ARGS` to its end: what it did and its own peak RSS in KiB (measured as
/// tests/it/common/rss.rs says, not from a child of this process).
pub fn run_max_rss(env: &Env, root: &Path, args: &[&str]) -> (Run, i64) {
    let (out, err) = (env.path("rss.stdout"), env.path("rss.stderr"));
    let (code, kib) = rss::wait(env.cli(root, args).measure(&out, &err, false).pid);
    let run = Run {
        code,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    (run, kib)
}

// ================================================================ skopeo

/// `skopeo --insecure-policy copy --quiet <args>`.
pub fn skopeo_copy(args: &[&str]) {
    sh(
        "skopeo",
        &[&["--insecure-policy", "copy", "--quiet"], args].concat(),
    );
}

/// `skopeo copy --all --preserve-digests` of the layout into `reg` as `repo_tag`.
pub fn skopeo_push(image: &Image, reg: &Reg, repo_tag: &str, creds: Option<(&str, &str)>) {
    let dest = format!("docker://{}", reg.reference(repo_tag));
    let src = image.layout_ref();
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let mut args = vec!["--all", "--preserve-digests", "--dest-tls-verify=false"];
    if let Some(c) = &creds {
        args.extend(["--dest-creds", c]);
    }
    args.extend([src.as_str(), dest.as_str()]);
    skopeo_copy(&args);
}

/// The sha256 of the manifest bytes skopeo reads for `reference` (`host/repo:tag`).
pub fn skopeo_digest(reference: &str, creds: Option<(&str, &str)>) -> String {
    let src = format!("docker://{reference}");
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let mut args = vec![
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
    ];
    if let Some(c) = &creds {
        args.extend(["--creds", c]);
    }
    args.push(&src);
    sha256(&sh("skopeo", &args).stdout)
}

/// Asserts that skopeo reads `image`, unchanged, from `src` (a skopeo source such as
/// `docker://…` on plain HTTP, or `oci-archive:…`): it copies all of it, digests preserved,
/// into the OCI layout `dir`, which then holds every blob of the image.
pub fn skopeo_reads(src: &str, dir: &Path, image: &Image) {
    let dest = format!("oci:{}:copy", dir.display());
    skopeo_copy(&[
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        src,
        &dest,
    ]);
    layout_holds(dir, image);
}

// ================================================================ containerd

// ================================================================ fixtures

/// A test image built in `env` (tagged as `repo_tag` is) and pushed to `reg` as `repo_tag`
/// by skopeo: the image and its reference there.
pub fn pushed(
    env: &Env,
    reg: &Reg,
    repo_tag: &str,
    platforms: &[&str],
    layer_sizes: &[usize],
    seed: u64,
) -> (Image, String) {
    let (_, tag) = repo_tag.rsplit_once(':').expect("REPO:TAG");
    let image = env.image(tag, platforms, layer_sizes, seed);
    skopeo_push(&image, reg, repo_tag, None);
    (image, reg.reference(repo_tag))
}

/// A registry of its own ([`Reg::plain`]) holding a test image [`pushed`] as `repo_tag`.
pub fn registry_with(
    env: &Env,
    repo_tag: &str,
    platforms: &[&str],
    layer_sizes: &[usize],
    seed: u64,
) -> (Reg, Image, String) {
    let reg = Reg::plain();
    let (image, reference) = pushed(env, &reg, repo_tag, platforms, layer_sizes, seed);
    (reg, image, reference)
}

/// A CA and a server certificate for `IP:127.0.0.1` signed by it, made with openssl:
/// (ca.pem, server.crt, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    const P256: &[&str] = &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let [ca_key, ca, key, csr, crt, ext] = [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.csr",
        "server.crt",
        "server.ext",
    ]
    .map(|name| dir.join(name));
    openssl_req(P256, &ca_key, &ca, "/CN=ocistore registry test CA", true);
    openssl_req(P256, &key, &csr, "/CN=127.0.0.1", false);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let signed_by_ca = [
        "x509",
        "-req",
        "-in",
        p(&csr),
        "-CA",
        p(&ca),
        "-CAkey",
        p(&ca_key),
        "-CAcreateserial",
        "-out",
        p(&crt),
        "-days",
        "2",
        "-extfile",
        p(&ext),
    ];
    sh("openssl", &signed_by_ca);
    (ca, crt, key)
}

/// A registry serving HTTPS with a certificate of a test CA, holding a one-platform test
/// image as `tls/app:1`: the registry, the CA's certificate, the image and its reference.
pub fn tls_registry(env: &Env) -> (Reg, PathBuf, Image, String) {
    let (ca, crt, key) = certificates(env.tmp.path());
    let reg = Reg::start(RegOpts {
        tls: Some((crt, key)),
        ..RegOpts::default()
    });
    let (image, reference) = pushed(env, &reg, "tls/app:1", AMD64, &[64 << 10], 13);
    (reg, ca, image, reference)
}

/// hosts.toml for `server` with a pull-and-resolve mirror at `mirror_host`.
pub fn mirror_toml(server: &Reg, mirror_host: &str) -> String {
    format!(
        "server = \"http://{server}\"\n\n[host.\"http://{mirror_host}\"]\n  \
         capabilities = [\"pull\", \"resolve\"]\n",
        server = server.host
    )
}

/// A registry holding a one-platform test image (two layers: 8 MiB and 64 KiB) as
/// `fault/app:1`, and a fault proxy in front of it with `rules(largest layer's digest)`.
/// Returns the proxy's reference for the image, too.
pub fn faulty(
    env: &Env,
    seed: u64,
    rules: impl FnOnce(&str) -> Vec<Rule>,
) -> (Reg, FaultProxy, Image, Blob, String) {
    let (reg, image, _) = registry_with(env, "fault/app:1", AMD64, &[8 << 20, 64 << 10], seed);
    let big = image.platforms[0]
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .unwrap()
        .clone();
    let proxy = FaultProxy::start(reg.port, rules(&big.digest));
    let reference = proxy.reference("fault/app:1");
    (reg, proxy, image, big, reference)
}

// ================================================================ what a pull leaves

/// Bytes in the store's in-progress ingests.
pub fn ingest_bytes(root: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(root.join("ingest")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// After a successful pull of all of `image`: every platform of it complete, every blob in
/// the store with its size, nothing left in progress, fsck clean.
pub fn pulled_whole(env: &Env, root: &Path, reference: &str, image: &Image) {
    for pi in &image.platforms {
        assert!(
            env.complete(root, reference, &pi.platform),
            "{}",
            pi.platform
        );
    }
    let content = env.content(root);
    for (d, size) in image.blobs() {
        assert_eq!(content.get(&d), Some(&size), "{d} is in the store");
    }
    let ingests = env.ok(root, &["ingest", "ls"]);
    assert_eq!(ingests, json!([]), "no ingest is left behind");
    assert_eq!(ingest_bytes(root), 0, "no ingest bytes on disk");
    env.fsck_clean(root);
}

/// After a failed pull: no name; only verified blobs of `image` in the store; ingests only
/// of the image's blobs (`pull-<digest>`), none beyond its size; fsck clean. Returns the
/// ingests.
pub fn failed_pull_left(env: &Env, root: &Path, image: &Image) -> Vec<Value> {
    let ls = env.ok(root, &["image", "ls"]);
    assert_eq!(ls, json!([]), "no name after a failed pull");
    let blobs = image.blobs();
    for (d, size) in &env.content(root) {
        assert_eq!(
            blobs.get(d),
            Some(size),
            "content ls lists {d}, which is no blob of the image"
        );
    }
    let ingests = env.ok(root, &["ingest", "ls"]);
    let ingests = ingests.as_array().unwrap().clone();
    for i in &ingests {
        let expected = i["expected"].as_str().unwrap_or("");
        assert_eq!(i["ref"], format!("pull-{expected}"), "{i}");
        let size = blobs.get(expected).copied();
        assert!(
            size.is_some_and(|n| i["total"] == n && i["offset"].as_u64().unwrap() <= n),
            "an ingest left by the failed pull is no download of a blob of the image: {i}"
        );
    }
    env.fsck_clean(root);
    ingests
}

/// [`failed_pull_left`], and: `bad` (whose bytes were wrong) neither in the store nor in an
/// ingest. The other blobs' downloads may stay as ingests, but only complete ones (sealed:
/// size and digest checked) that a later pull adopts; returns their bytes.
pub fn nothing_unverified(env: &Env, root: &Path, image: &Image, bad: &str) -> u64 {
    let ingests = failed_pull_left(env, root, image);
    let content = env.content(root);
    assert!(
        !content.contains_key(bad),
        "{bad}, whose bytes were wrong, is in content ls: {content:?}"
    );
    let mut sealed = 0;
    for i in &ingests {
        assert_ne!(
            i["expected"], bad,
            "the ingest of the blob whose bytes were wrong remains: {i}"
        );
        assert_eq!(
            i["offset"], i["total"],
            "only complete downloads stay after wrong bytes: {i}"
        );
        sealed += i["total"].as_u64().unwrap();
    }
    assert_eq!(
        ingest_bytes(root),
        sealed,
        "only complete downloads stay on disk: {ingests:?}"
    );
    sealed
}

/// After [`nothing_unverified`]: a pull straight from the registry (no faults) succeeds,
/// adopting the complete downloads the failed one left (`sealed` bytes) without fetching
/// them again.
pub fn repull_adopts(env: &Env, root: &Path, reg: &Reg, image: &Image, sealed: u64) {
    let reference = reg.reference("fault/app:1");
    let out = env.pull(root, &[&reference], &image.root.digest);
    assert_eq!(
        out["bytes_fetched"],
        image.size() - sealed,
        "what the failed pull verified ({sealed} bytes) is not fetched again: {out}"
    );
    pulled_whole(env, root, &reference, image);
}
