//! The registry client against a real registry: `ocistore image pull|push` and `ocistore
//! remote …` with distribution's `docker-registry` on loopback, cross-checked with skopeo
//! (and containerd's `ctr`).
//!
//! Every test is `#[ignore]`d so that `cargo test` needs nothing but Rust; `.ci/run`
//! installs the tools and runs `cargo test --test registry -- --ignored --test-threads=1`.
//! A missing tool fails the test with a message naming it: nothing is skipped silently.
//!
//! Each test starts its own registries (private config, storage and log in a temporary
//! directory, a free loopback port) and kills them when it ends. Requests are counted from
//! the registry's access log (`"METHOD URI HTTP/1.1" STATUS SIZE "REFERER" "USER-AGENT"`),
//! keeping only those whose user agent is `ocistore/…`. Test images are OCI layouts built
//! here from deterministic pseudo-random bytes (gzip-framed, so that skopeo pushes them
//! unchanged) and put into a registry with `skopeo copy --all --preserve-digests`.
//!
//! Tiny fake servers stand in where distribution 2.8 cannot: one that pages tag lists with
//! `Link` (2.8 ignores `n` and `last`), a broken mirror that drops every connection (to count
//! how often it is tried), a fault-injecting proxy in front of a real registry (cut
//! connections, 429/503, a 200 to a `Range`, wrong or extra bytes, delays: [`FaultProxy`]),
//! and a token server for distribution's token auth ([`TokenServer`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocistore::registry::{Credentials, Registry, RegistryOptions, Repository};
use serde_json::{Value, json};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MIB: u64 = 1 << 20;

// ================================================================ tools

/// Fails the test when `tool` is not installed.
fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the registry tests need {tool:?}, which is not installed (.ci/run installs it: \
         apt-get install docker-registry skopeo apache2-utils openssl containerd)"
    );
}

/// Runs a tool; panics with its output unless it succeeds.
fn sh(program: &str, args: &[&str]) -> Output {
    need(program);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary paths")
}

fn sha256(bytes: &[u8]) -> String {
    ocistore::Algorithm::Sha256.digest(bytes).to_string()
}

/// A loopback port nothing listens on (bound, read, released).
fn free_port() -> u16 {
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

// ================================================================ the registry

/// How to configure a test registry.
#[derive(Default, Clone)]
struct RegOpts {
    /// htpasswd basic auth with this user and password.
    auth: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
    /// Leave `storage.delete.enabled` off.
    no_delete: bool,
    /// distribution's token auth: (realm URL, the certificate bundle that signs tokens),
    /// with service `test-registry` and issuer `test-issuer` (see [`TokenServer`]).
    token: Option<(String, PathBuf)>,
}

/// One request from the registry's access log.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    uri: String,
    status: u16,
    agent: String,
}

impl Req {
    /// A blob request (`/v2/<repo>/blobs/<digest>`), not an upload.
    fn blob(&self) -> Option<&str> {
        let (_, d) = self.uri.split_once("/blobs/")?;
        (!d.starts_with("uploads")).then_some(d)
    }

    fn is_write(&self) -> bool {
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
struct Reg {
    child: Child,
    port: u16,
    /// `127.0.0.1:PORT`.
    host: String,
    tls: bool,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Reg {
    fn start(opts: RegOpts) -> Reg {
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
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start docker-registry");
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited ({status}) before it listened:\n{}",
                    self.log_text()
                );
            }
            let listening = self.log_text().contains("listening on");
            let answers = listening
                && if self.tls {
                    TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                } else {
                    raw_get(self.port, "/v2/").is_ok_and(|s| s == 200 || s == 401)
                };
            if answers {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.log_text().contains(&format!(" {path} ")) {
                assert!(
                    Instant::now() < deadline,
                    "the sentinel request never reached the registry's access log"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.log_text().lines().filter_map(parse_access).collect()
    }

    /// The requests ocistore made (user agent `ocistore/…`), in log order.
    fn ours(&self) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.agent.starts_with("ocistore/"))
            .collect()
    }

    /// ocistore's requests after the first `mark` of them.
    fn ours_since(&self, mark: usize) -> Vec<Req> {
        self.ours().split_off(mark)
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn list(reqs: &[Req]) -> String {
    reqs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// ================================================================ the CLI

/// What a command did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A private environment for `ocistore`: its own `DOCKER_CONFIG` (no credentials unless
/// given), `OCISTORE_HOSTS_DIR` and `HOME` (so that neither the machine's config.json nor
/// `~/.config/ocistore/certs.d` is read), and store roots, under one temporary directory.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("docker")).unwrap();
        std::fs::create_dir_all(tmp.path().join("hosts")).unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        Env { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn docker_config(&self) -> PathBuf {
        self.path("docker")
    }

    /// Writes `config.json` with `user:pass` for `host`.
    fn login(&self, host: &str, user: &str, pass: &str) {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let cfg = json!({"auths": {host: {"auth": auth}}});
        std::fs::write(
            self.docker_config().join("config.json"),
            serde_json::to_vec_pretty(&cfg).unwrap(),
        )
        .unwrap();
    }

    fn logout(&self) {
        let _ = std::fs::remove_file(self.docker_config().join("config.json"));
    }

    /// Writes `$OCISTORE_HOSTS_DIR/<host>/hosts.toml`.
    fn hosts_toml(&self, host: &str, text: &str) {
        let dir = self.path("hosts").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts.toml"), text).unwrap();
    }

    fn clear_hosts(&self, host: &str) {
        let _ = std::fs::remove_dir_all(self.path("hosts").join(host));
    }

    /// `ocistore --root <root> --json <args>` in this environment, not yet started.
    fn cmd(&self, root: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ocistore"));
        c.arg("--root")
            .arg(root)
            .arg("--json")
            .args(args)
            .env("DOCKER_CONFIG", self.docker_config())
            .env("OCISTORE_HOSTS_DIR", self.path("hosts"))
            .env("HOME", self.path("home"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("OCISTORE_ROOT")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, root: &Path, args: &[&str]) -> Run {
        let out = self.cmd(root, args).output().expect("run ocistore");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts success; the JSON it printed (`Null` when none).
    fn ok(&self, root: &Path, args: &[&str]) -> Value {
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

    /// Runs and asserts it fails with `code`; the run.
    fn fails(&self, root: &Path, args: &[&str], code: i32) -> Run {
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

    /// The digests of every committed blob of the store.
    fn content(&self, root: &Path) -> BTreeMap<String, u64> {
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
    fn fsck_clean(&self, root: &Path) {
        let v = self.ok(root, &["fsck"]);
        assert_eq!(v["problems"], json!([]), "fsck: {v}");
        assert_eq!(v["remaining"], 0, "fsck: {v}");
    }

    /// `image check NAME --platform P`: whether complete (exit 0 and `complete`).
    fn complete(&self, root: &Path, name: &str, platform: &str) -> bool {
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
}

// ================================================================ test images

/// A blob of a test image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Blob {
    digest: String,
    size: u64,
}

/// One platform's manifest of a test image.
#[derive(Debug, Clone)]
struct PlatformImage {
    platform: String,
    manifest: Blob,
    config: Blob,
    layers: Vec<Blob>,
}

/// A test image in an OCI layout directory (tag `tag`).
#[derive(Debug, Clone)]
struct Image {
    dir: PathBuf,
    tag: String,
    root: Blob,
    media_type: String,
    platforms: Vec<PlatformImage>,
}

impl Image {
    /// Every blob: the index (if any), manifests, configs, layers (deduplicated).
    fn blobs(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        all.insert(self.root.digest.clone(), self.root.size);
        for pi in &self.platforms {
            all.insert(pi.manifest.digest.clone(), pi.manifest.size);
            all.insert(pi.config.digest.clone(), pi.config.size);
            for l in &pi.layers {
                all.insert(l.digest.clone(), l.size);
            }
        }
        all
    }

    /// Configs and layers (what a registry stores as blobs, not manifests).
    fn plain_blobs(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for pi in &self.platforms {
            all.insert(pi.config.digest.clone(), pi.config.size);
            for l in &pi.layers {
                all.insert(l.digest.clone(), l.size);
            }
        }
        all
    }

    fn size(&self) -> u64 {
        self.blobs().values().sum()
    }

    fn platform(&self, name: &str) -> &PlatformImage {
        self.platforms
            .iter()
            .find(|pi| pi.platform == name)
            .unwrap_or_else(|| panic!("no {name} in the test image"))
    }

    fn layout_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }
}

/// `len` deterministic pseudo-random bytes (splitmix64 of `seed`).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.div_ceil(8) * 8];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in out.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `bytes` into the layout's blob directory.
fn put_blob(dir: &Path, bytes: &[u8]) -> Blob {
    let digest = sha256(bytes);
    let path = dir
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    std::fs::write(path, bytes).unwrap();
    Blob {
        digest,
        size: bytes.len() as u64,
    }
}

/// A layer: a tar holding one file of `size` pseudo-random bytes, gzip-framed without
/// compression (fast, and a gzip layer that skopeo pushes unchanged). Returns the blob and
/// its diff ID.
fn layer(dir: &Path, seed: u64, size: usize) -> (Blob, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(1_704_067_200);
    h.set_size(size as u64);
    b.append_data(
        &mut h,
        format!("data/layer-{seed}.bin"),
        &noise(seed, size)[..],
    )
    .unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::none());
    gz.write_all(&tar).unwrap();
    (put_blob(dir, &gz.finish().unwrap()), diff_id)
}

/// Builds a test image in a new OCI layout at `dir`, tagged `tag`: for each platform
/// (`os/arch[/variant]`) a config and one layer per entry of `layer_sizes`. With more than
/// one platform (or `index`), an OCI index over them; the first layer is then shared by
/// every platform, as base layers are. Different `seed`s give disjoint layers.
fn build_image(
    dir: &Path,
    tag: &str,
    platforms: &[&str],
    layer_sizes: &[usize],
    seed: u64,
    index: bool,
) -> Image {
    build_image_with(dir, tag, platforms, layer_sizes, seed, index, &mut layer)
}

/// [`build_image`] with layers from `make_layer(dir, seed, size)` (blob, diff ID).
fn build_image_with(
    dir: &Path,
    tag: &str,
    platforms: &[&str],
    layer_sizes: &[usize],
    seed: u64,
    index: bool,
    make_layer: &mut dyn FnMut(&Path, u64, usize) -> (Blob, String),
) -> Image {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = index || platforms.len() > 1;
    let mut pis = Vec::new();
    for (pi, platform) in platforms.iter().enumerate() {
        let mut parts = platform.split('/');
        let (os, arch, variant) = (parts.next().unwrap(), parts.next().unwrap(), parts.next());
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (li, &size) in layer_sizes.iter().enumerate() {
            let shared = index && li == 0;
            let lseed = if shared {
                seed * 1000
            } else {
                seed * 1000 + (pi as u64 + 1) * 50 + li as u64
            };
            let (blob, diff_id) = make_layer(dir, lseed, size);
            layers.push(blob);
            diff_ids.push(diff_id);
        }
        let mut config = json!({
            "architecture": arch,
            "os": os,
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"seed": seed.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config = put_blob(dir, &serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| json!({
                "mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest = put_blob(dir, &serde_json::to_vec(&manifest).unwrap());
        pis.push(PlatformImage {
            platform: (*platform).to_owned(),
            manifest,
            config,
            layers,
        });
    }
    let (root, media_type) = if index {
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": pis.iter().map(|pi| {
                let mut parts = pi.platform.split('/');
                let mut platform = json!({
                    "os": parts.next().unwrap(),
                    "architecture": parts.next().unwrap(),
                });
                if let Some(v) = parts.next() {
                    platform["variant"] = json!(v);
                }
                json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": pi.manifest.digest,
                    "size": pi.manifest.size,
                    "platform": platform,
                })
            }).collect::<Vec<_>>(),
        });
        (put_blob(dir, &serde_json::to_vec(&doc).unwrap()), OCI_INDEX)
    } else {
        (pis[0].manifest.clone(), OCI_MANIFEST)
    };
    let layout_index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": root.digest,
            "size": root.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&layout_index).unwrap(),
    )
    .unwrap();
    Image {
        dir: dir.to_owned(),
        tag: tag.to_owned(),
        root,
        media_type: media_type.to_owned(),
        platforms: pis,
    }
}

/// `skopeo copy --all --preserve-digests` of the layout into `reg` as `repo_tag`.
fn skopeo_push(image: &Image, reg: &Reg, repo_tag: &str, creds: Option<(&str, &str)>) {
    let dest = format!("docker://{}", reg.reference(repo_tag));
    let src = image.layout_ref();
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let mut args = vec![
        "--insecure-policy",
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ];
    if let Some(c) = &creds {
        args.extend(["--dest-creds", c]);
    }
    args.extend([src.as_str(), dest.as_str()]);
    sh("skopeo", &args);
}

/// The sha256 of the manifest bytes skopeo reads for `reference` (`host/repo:tag`).
fn skopeo_digest(reference: &str, creds: Option<(&str, &str)>) -> String {
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

/// The digest `index.json` of an OCI layout names first.
fn layout_digest(dir: &Path) -> String {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap())
        .expect("index.json is JSON");
    v["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

/// Counts of ocistore's blob GETs per digest in `reqs`.
fn blob_gets(reqs: &[Req]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.method == "GET") {
        if let Some(d) = r.blob() {
            *out.entry(d.to_owned()).or_default() += 1;
        }
    }
    out
}

fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64/v8",
        other => panic!("the registry tests know no platform for {other}"),
    }
}

// ================================================================ containerd

/// containerd as a plain process with its own root, state and socket (see PEERS.md).
struct Containerd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        need("containerd");
        need("ctr");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(&sock)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Containerd {
            child,
            sock,
            _dir: dir,
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let mut all = vec!["--address", p(&self.sock)];
        all.extend_from_slice(args);
        sh("ctr", &all)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ================================================================ TLS material

/// A CA and a server certificate for `IP:127.0.0.1` signed by it, made with openssl:
/// (ca.pem, server.crt, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let crt = dir.join("server.crt");
    let ext = dir.join("server.ext");
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            p(&ca_key),
            "-out",
            p(&ca),
            "-days",
            "2",
            "-subj",
            "/CN=ocistore registry test CA",
        ],
    );
    sh(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            p(&key),
            "-out",
            p(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(
        "openssl",
        &[
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
        ],
    );
    (ca, crt, key)
}

// ================================================================ 1. pull

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pull_what_skopeo_pushed() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[300 << 10, 200 << 10, 100 << 10],
        1,
        false,
    );
    skopeo_push(&image, &reg, "first/app:1", None);
    let reference = reg.reference("first/app:1");
    let theirs = skopeo_digest(&reference, None);
    assert_eq!(
        theirs, image.root.digest,
        "skopeo pushed the manifest as is"
    );

    let root = env.path("store");
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["name"], reference, "{out}");
    assert_eq!(out["digest"], theirs, "same digest as skopeo: {out}");
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
    assert!(env.complete(&root, &reference, "linux/amd64"));
    let content = env.content(&root);
    for (d, size) in image.blobs() {
        assert_eq!(content.get(&d), Some(&size), "{d} is in the store");
    }
    // Every blob is labelled with where it came from (containerd's convention).
    let info = env.ok(
        &root,
        &["content", "info", &image.platforms[0].layers[0].digest],
    );
    assert_eq!(
        info["labels"][format!("containerd.io/distribution.source.{}", reg.host)],
        "first/app",
        "{info}"
    );
    env.fsck_clean(&root);

    // Absent tags and repositories are "not found" (exit 1); malformed references exit 2.
    let r = env.fails(
        &root,
        &["image", "pull", &reg.reference("first/app:nope")],
        1,
    );
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    env.fails(&root, &["image", "pull", &reg.reference("none/such:1")], 1);
    env.fails(&root, &["image", "pull", "127.0.0.1:1/UPPER/Case::x"], 2);
}

// ================================================================ 2. re-pull

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn repull_costs_one_manifest_head_and_if_missing_nothing() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "v1",
        &["linux/amd64"],
        &[400 << 10, 100 << 10],
        2,
        false,
    );
    skopeo_push(&image, &reg, "again/app:v1", None);
    let reference = reg.reference("again/app:v1");
    let root = env.path("store");
    env.ok(&root, &["image", "pull", &reference]);

    let mark = reg.ours().len();
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    let out = env.ok(&root, &["image", "pull", "--if-missing", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    let reqs = reg.ours_since(mark);
    assert!(
        reqs.is_empty(),
        "--if-missing on a complete image asks nothing:\n{}",
        list(&reqs)
    );

    // The tag moves: the re-pull fetches the new manifest and only what it adds.
    let image2 = build_image(
        &env.path("layout2"),
        "v1",
        &["linux/amd64"],
        &[50 << 10],
        3,
        false,
    );
    skopeo_push(&image2, &reg, "again/app:v1", None);
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image2.root.digest, "{out}");
    assert_eq!(
        out["blobs_fetched"], 3,
        "manifest, config, one layer: {out}"
    );
    assert_eq!(out["bytes_fetched"], image2.size(), "{out}");
    // --if-missing with a present, complete name does not notice the move (by design).
    let out = env.ok(&root, &["image", "pull", "--if-missing", &reference]);
    assert_eq!(out["digest"], image2.root.digest, "{out}");
    env.fsck_clean(&root);
}

// ================================================================ 3. multi-platform

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn multi_platform_pull_keeps_the_index_and_push_keeps_its_digest() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64", "linux/arm64/v8", "linux/s390x"],
        &[200 << 10, 150 << 10, 50 << 10],
        4,
        true,
    );
    skopeo_push(&image, &reg, "multi/app:1", None);
    let reference = reg.reference("multi/app:1");
    assert_eq!(skopeo_digest(&reference, None), image.root.digest);

    let root = env.path("store");
    let here = host_platform();
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "the index digest: {out}");
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

    // Pushing all of a partial pull fails naming the way out; one platform goes as a new
    // index of that entry.
    let r = env.fails(
        &root,
        &["image", "push", &reference, &reg.reference("part/app:1")],
        1,
    );
    assert!(r.stderr.contains("--platform"), "{}", r.stderr);
    let out = env.ok(
        &root,
        &[
            "image",
            "push",
            &reference,
            &reg.reference("part/app:1"),
            "--platform",
            here,
        ],
    );
    assert_ne!(out["digest"], image.root.digest, "a filtered index: {out}");
    let part = env.ok(&root, &["remote", "inspect", &reg.reference("part/app:1")]);
    assert_eq!(part["digest"], out["digest"], "{part}");

    // --all-platforms fetches the rest: exactly the layers not yet there.
    let missing: BTreeMap<String, u64> = image
        .plain_blobs()
        .into_iter()
        .filter(|(d, _)| !content.contains_key(d))
        .collect();
    assert!(!missing.is_empty());
    let out = env.ok(&root, &["image", "pull", "--all-platforms", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert_eq!(out["blobs_fetched"], missing.len(), "{out}");
    assert_eq!(out["bytes_fetched"], missing.values().sum::<u64>(), "{out}");
    for pi in &image.platforms {
        assert!(
            env.complete(&root, &reference, &pi.platform),
            "{}",
            pi.platform
        );
    }
    env.fsck_clean(&root);

    // Pushed whole to another repository: the same index digest, which skopeo copies out.
    let copy = reg.reference("copy/app:2");
    let out = env.ok(&root, &["image", "push", &reference, &copy]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    let remote = env.ok(&root, &["remote", "inspect", &copy]);
    assert_eq!(remote["digest"], image.root.digest, "{remote}");
    assert_eq!(remote["media_type"], OCI_INDEX, "{remote}");
    assert_eq!(remote["size"], image.root.size, "{remote}");
    let arm = env.ok(
        &root,
        &["remote", "inspect", &copy, "--platform", "linux/arm64"],
    );
    assert_eq!(
        arm["digest"],
        image.platform("linux/arm64/v8").manifest.digest,
        "{arm}"
    );
    let out_dir = env.path("skopeo-out");
    sh(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{copy}"),
            &format!("oci:{}:2", out_dir.display()),
        ],
    );
    assert_eq!(layout_digest(&out_dir), image.root.digest);
    for (d, _) in image.blobs() {
        assert!(
            out_dir
                .join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap())
                .exists(),
            "skopeo copied {d}"
        );
    }
}

// ================================================================ 4. push

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn push_uploads_then_skips_then_mounts() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "v1",
        &["linux/amd64"],
        &[600 << 10, 300 << 10, 100 << 10],
        5,
        false,
    );
    let root = env.path("store");
    let name = reg.reference("push/app");
    env.ok(&root, &["image", "import", p(&image.dir), "--name", &name]);
    let name = reg.reference("push/app:v1");
    let n_blobs = image.plain_blobs().len();

    let mark = reg.ours().len();
    let out = env.ok(&root, &["image", "push", &name]);
    assert_eq!(out["target"], name, "{out}");
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    let out = env.ok(&root, &["image", "push", &name]);
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
    let out = env.ok(&root, &["image", "push", &name, &other]);
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
    let out_dir = env.path("skopeo-out");
    sh(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{other}"),
            &format!("oci:{}:v1", out_dir.display()),
        ],
    );
    assert_eq!(layout_digest(&out_dir), image.root.digest);
    for (d, size) in image.blobs() {
        let f = out_dir
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap());
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("skopeo lacks {d}: {e}"));
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(sha256(&bytes), d);
    }

    let ctd = Containerd::start();
    ctd.ctr(&["content", "fetch", "--plain-http", &other]);
    let ls = String::from_utf8(ctd.ctr(&["content", "ls", "-q"]).stdout).unwrap();
    for d in image.blobs().keys() {
        assert!(
            ls.lines().any(|l| l.trim() == d),
            "containerd fetched {d}:\n{ls}"
        );
    }
    let images = String::from_utf8(ctd.ctr(&["images", "ls"]).stdout).unwrap();
    assert!(
        images
            .lines()
            .any(|l| l.starts_with(&other) && l.contains(&image.root.digest)),
        "ctr images ls names {other} at {}:\n{images}",
        image.root.digest
    );
}

// ================================================================ 5. basic auth

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn basic_auth_with_docker_config_credentials() {
    let env = Env::new();
    let (user, pass) = ("tester", "s3cret-pw");
    let reg = Reg::start(RegOpts {
        auth: Some((user.into(), pass.into())),
        ..RegOpts::default()
    });
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[100 << 10, 50 << 10],
        6,
        false,
    );
    skopeo_push(&image, &reg, "auth/app:1", Some((user, pass)));
    let reference = reg.reference("auth/app:1");
    let root = env.path("store");

    // No credentials: exit 1, naming the host and where credentials were looked for.
    let r = env.fails(&root, &["image", "pull", &reference], 1);
    assert!(r.stderr.contains(&reg.host), "{}", r.stderr);
    assert!(
        r.stderr.contains("no credentials in config.json"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("unauthorized"), "{}", r.stderr);
    env.fails(&root, &["remote", "inspect", &reference], 1);

    // A wrong password: exit 1, unauthorized.
    env.login(&reg.host, user, "wrong");
    let r = env.fails(&root, &["image", "pull", &reference], 1);
    assert!(r.stderr.contains("unauthorized"), "{}", r.stderr);
    assert!(r.stderr.contains(&reg.host), "{}", r.stderr);

    // The right one: pull, inspect, tags and push all work.
    env.login(&reg.host, user, pass);
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    let remote = env.ok(&root, &["remote", "inspect", &reference]);
    assert_eq!(remote["digest"], image.root.digest, "{remote}");
    let other = reg.reference("auth/copy:1");
    let out = env.ok(&root, &["image", "push", &reference, &other]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert_eq!(out["blobs_mounted"], image.plain_blobs().len(), "{out}");
    assert_eq!(skopeo_digest(&other, Some((user, pass))), image.root.digest);
    env.fsck_clean(&root);

    // $REGISTRY_AUTH_FILE (containers' auth.json) serves as well.
    env.logout();
    let auth_file = env.path("auth.json");
    {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        std::fs::write(
            &auth_file,
            json!({"auths": {reg.host.clone(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
    }
    let out = env
        .cmd(&env.path("store2"), &["image", "pull", &reference])
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pull with $REGISTRY_AUTH_FILE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ================================================================ 6. remote

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn remote_inspect_and_rm() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let root = env.path("store");
    let one = build_image(
        &env.path("one"),
        "1",
        &["linux/amd64"],
        &[10 << 10],
        7,
        false,
    );
    let two = build_image(
        &env.path("two"),
        "1",
        &["linux/amd64"],
        &[10 << 10],
        8,
        false,
    );
    let multi = build_image(
        &env.path("multi"),
        "1",
        &["linux/amd64", "linux/arm64/v8"],
        &[10 << 10, 5 << 10],
        9,
        true,
    );
    skopeo_push(&one, &reg, "rem/app:one", None);
    skopeo_push(&two, &reg, "rem/app:two", None);
    skopeo_push(&multi, &reg, "rem/multi:1", None);

    let v = env.ok(&root, &["remote", "inspect", &reg.reference("rem/app:one")]);
    assert_eq!(v["digest"], one.root.digest, "{v}");
    assert_eq!(v["media_type"], OCI_MANIFEST, "{v}");
    assert_eq!(v["size"], one.root.size, "{v}");
    assert_eq!(v["name"], reg.reference("rem/app:one"), "{v}");
    let by_digest = format!("{}@{}", reg.reference("rem/app"), two.root.digest);
    let v = env.ok(&root, &["remote", "inspect", &by_digest]);
    assert_eq!(v["digest"], two.root.digest, "{v}");
    env.fails(
        &root,
        &["remote", "inspect", &reg.reference("rem/app:nope")],
        1,
    );
    env.fails(
        &root,
        &["remote", "inspect", &reg.reference("no/repo:1")],
        1,
    );
    env.fails(&root, &["remote", "inspect", "127.0.0.1:1/Bad//ref::"], 2);

    let m = reg.reference("rem/multi:1");
    let v = env.ok(&root, &["remote", "inspect", &m]);
    assert_eq!(v["digest"], multi.root.digest, "{v}");
    assert_eq!(v["media_type"], OCI_INDEX, "{v}");
    for (asked, platform) in [
        ("linux/arm64", "linux/arm64/v8"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/amd64", "linux/amd64"),
    ] {
        let v = env.ok(&root, &["remote", "inspect", &m, "--platform", asked]);
        assert_eq!(
            v["digest"],
            multi.platform(platform).manifest.digest,
            "{asked}: {v}"
        );
        assert_eq!(v["media_type"], OCI_MANIFEST, "{v}");
    }
    env.fails(
        &root,
        &["remote", "inspect", &m, "--platform", "linux/ppc64le"],
        1,
    );

    // rm by tag removes that manifest (and its tags), nothing else.
    env.ok(&root, &["remote", "rm", &reg.reference("rem/app:two")]);
    env.fails(
        &root,
        &["remote", "inspect", &reg.reference("rem/app:two")],
        1,
    );
    env.fails(&root, &["remote", "inspect", &by_digest], 1);
    let v = env.ok(&root, &["remote", "inspect", &reg.reference("rem/app:one")]);
    assert_eq!(v["digest"], one.root.digest, "{v}");
    // rm by digest; rm of what is gone is exit 1.
    let one_by_digest = format!("{}@{}", reg.reference("rem/app"), one.root.digest);
    env.ok(&root, &["remote", "rm", &one_by_digest]);
    env.fails(
        &root,
        &["remote", "inspect", &reg.reference("rem/app:one")],
        1,
    );
    env.fails(&root, &["remote", "rm", &one_by_digest], 1);
    env.fails(&root, &["remote", "rm", &reg.reference("rem/app:two")], 1);

    // A registry that does not allow deletes says so.
    let nodel = Reg::start(RegOpts {
        no_delete: true,
        ..RegOpts::default()
    });
    skopeo_push(&one, &nodel, "keep/app:1", None);
    let r = env.fails(&root, &["remote", "rm", &nodel.reference("keep/app:1")], 1);
    assert!(r.stderr.contains("delete"), "{}", r.stderr);
    assert!(r.stderr.contains(&nodel.host), "{}", r.stderr);
    let v = env.ok(
        &root,
        &["remote", "inspect", &nodel.reference("keep/app:1")],
    );
    assert_eq!(v["digest"], one.root.digest, "still there: {v}");
}

/// Runs `ocistore remote tags REPO ARGS` (plain output) and returns its lines.
fn tag_lines(env: &Env, root: &Path, repo: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_ocistore"))
        .arg("--root")
        .arg(root)
        .args(["remote", "tags", repo])
        .args(args)
        .env("DOCKER_CONFIG", env.docker_config())
        .env("OCISTORE_HOSTS_DIR", env.path("hosts"))
        .env("HOME", env.path("home"))
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "remote tags {repo} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn anonymous() -> Registry {
    Registry::new(RegistryOptions {
        credentials: Credentials::none(),
        hosts_dirs: Vec::new(),
        ..RegistryOptions::default()
    })
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn remote_tags_against_distribution() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let root = env.path("store");
    let image = build_image(
        &env.path("layout"),
        "t",
        &["linux/amd64"],
        &[4 << 10],
        10,
        false,
    );
    let tags = ["a1", "b2", "c3", "d4", "e5"];
    for t in tags {
        skopeo_push(&image, &reg, &format!("tags/app:{t}"), None);
    }
    let repo = reg.reference("tags/app");
    let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<String>>();
    let all: BTreeSet<String> = tags.iter().map(|t| (*t).to_owned()).collect();

    // The whole list (distribution 2.8 sends it unsorted, in its storage's order).
    assert_eq!(set(tag_lines(&env, &root, &repo, &[])), all, "every tag");
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
    let limited = tag_lines(&env, &root, &repo, &["--limit", "2"]);
    assert!(
        limited.len() <= 2 && limited.iter().all(|t| all.contains(t)),
        "--limit 2 printed {limited:?}"
    );
    let after = tag_lines(&env, &root, &repo, &["--last", "b2"]);
    assert_eq!(
        set(after.clone()),
        set(vec!["c3".into(), "d4".into(), "e5".into()]),
        "--last b2 printed {after:?}"
    );
    let both = tag_lines(&env, &root, &repo, &["--limit", "2", "--last", "b2"]);
    assert!(
        both.len() <= 2 && both.iter().all(|t| t.as_str() > "b2"),
        "--limit 2 --last b2 printed {both:?}"
    );
}

/// A fake registry that serves only tag lists, as registries that paginate do: at most `n`
/// tags (2 when not asked) after `last`, in lexical order, with a `Link` to the next page.
/// Records each request's URI. Stops when dropped.
struct PagingTags {
    port: u16,
    uris: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PagingTags {
    fn start(repo: &'static str, tags: &'static [&'static str]) -> PagingTags {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let uris = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (u, st) = (uris.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = Self::answer(&mut conn, repo, tags, &u);
            }
        });
        PagingTags {
            port,
            uris,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(
        conn: &mut TcpStream,
        repo: &str,
        tags: &[&str],
        uris: &std::sync::Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte)? == 0 {
                return Ok(());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let uri = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        uris.lock().unwrap().push(uri.clone());
        let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
        let mut n = 2usize;
        let mut last = String::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("n", v)) => n = v.parse().unwrap_or(2),
                Some(("last", v)) => last = v.to_owned(),
                _ => {}
            }
        }
        let response = if path == format!("/v2/{repo}/tags/list") {
            let page: Vec<&str> = tags
                .iter()
                .copied()
                .filter(|t| *t > last.as_str())
                .take(n)
                .collect();
            let body = json!({"name": repo, "tags": page}).to_string();
            let more = page.last().is_some_and(|l| tags.iter().any(|t| t > l));
            let link = if more {
                format!(
                    "Link: </v2/{repo}/tags/list?last={}&n={n}>; rel=\"next\"\r\n",
                    page.last().unwrap()
                )
            } else {
                String::new()
            };
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 {link}Connection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        conn.write_all(response.as_bytes())
    }

    fn uris(&self) -> Vec<String> {
        self.uris.lock().unwrap().clone()
    }
}

impl Drop for PagingTags {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn remote_tags_follow_link_pages() {
    const TAGS: [&str; 5] = ["a1", "b2", "c3", "d4", "e5"];
    let fake = PagingTags::start("tags/app", &TAGS);
    let env = Env::new();
    let root = env.path("store");
    let host = format!("127.0.0.1:{}", fake.port);
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

    // The whole list follows the pages; a limit is one page.
    assert_eq!(registry.tags(&repository, None, None).unwrap(), TAGS);
    assert_eq!(
        registry.tags(&repository, Some(2), None).unwrap(),
        ["a1", "b2"]
    );
    assert_eq!(
        registry.tags(&repository, Some(2), Some("b2")).unwrap(),
        ["c3", "d4"]
    );
    assert_eq!(
        registry.tags(&repository, None, Some("b2")).unwrap(),
        ["c3", "d4", "e5"]
    );

    // The CLI alike.
    let repo = format!("{host}/tags/app");
    assert_eq!(tag_lines(&env, &root, &repo, &[]), TAGS);
    assert_eq!(
        tag_lines(&env, &root, &repo, &["--limit", "2"]),
        ["a1", "b2"]
    );
    assert_eq!(
        tag_lines(&env, &root, &repo, &["--last", "b2"]),
        ["c3", "d4", "e5"]
    );
    assert_eq!(
        tag_lines(&env, &root, &repo, &["--limit", "2", "--last", "b2"]),
        ["c3", "d4"]
    );
}

// ================================================================ 7. concurrency

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn concurrent_pulls_fetch_each_blob_once() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[16 << 20, 12 << 20, 8 << 20, 4 << 20],
        11,
        false,
    );
    skopeo_push(&image, &reg, "conc/app:1", None);
    let reference = reg.reference("conc/app:1");
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
    assert!(env.complete(&root, &reference, "linux/amd64"));
    env.fsck_clean(&root);
}

// ================================================================ 8. crash

/// Bytes in the store's in-progress ingests.
fn ingest_bytes(root: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(root.join("ingest")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn killed_pull_resumes_from_its_bytes() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[64 << 20, 56 << 20, 48 << 20, 32 << 20],
        12,
        false,
    );
    skopeo_push(&image, &reg, "crash/app:1", None);
    let reference = reg.reference("crash/app:1");
    let root = env.path("store");
    env.ok(&root, &["du"]);

    let mut child = env
        .cmd(&root, &["image", "pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once its ingests hold some bytes, well before the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the pull ended ({status}) before it could be killed midway; ingest bytes \
                 seen: {}",
                ingest_bytes(&root)
            );
        }
        if ingest_bytes(&root) >= 8 * MIB {
            break;
        }
        assert!(Instant::now() < deadline, "the pull wrote nothing in 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
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

    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    assert!(env.complete(&root, &reference, "linux/amd64"));
    let left = env.ok(&root, &["ingest", "ls"]);
    assert_eq!(left, json!([]), "no ingest is left behind");
    env.fsck_clean(&root);
    let content = env.content(&root);
    for (d, size) in image.blobs() {
        assert_eq!(content.get(&d), Some(&size), "{d}");
    }
}

// ================================================================ 9. TLS

fn tls_registry(env: &Env) -> (Reg, PathBuf, Image) {
    let (ca, crt, key) = certificates(env.tmp.path());
    let reg = Reg::start(RegOpts {
        tls: Some((crt, key)),
        ..RegOpts::default()
    });
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[64 << 10],
        13,
        false,
    );
    skopeo_push(&image, &reg, "tls/app:1", None);
    (reg, ca, image)
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn tls_registry_without_hosts_toml_fails_naming_the_certificate() {
    let env = Env::new();
    let (reg, _ca, _image) = tls_registry(&env);
    let reference = reg.reference("tls/app:1");
    let r = env.fails(&env.path("store"), &["image", "pull", &reference], 1);
    assert!(r.stderr.contains(&reg.host), "{}", r.stderr);
    let lower = r.stderr.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("unknown issuer"),
        "a TLS registry on loopback without hosts.toml: the error should be about its \
         certificate (unknown authority), got: {}",
        r.stderr
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn tls_registry_with_hosts_toml_ca_or_skip_verify() {
    let env = Env::new();
    let (reg, ca, image) = tls_registry(&env);
    let reference = reg.reference("tls/app:1");

    // https without the CA: refused, about the certificate.
    env.hosts_toml(&reg.host, &format!("server = \"https://{}\"\n", reg.host));
    let r = env.fails(&env.path("s0"), &["image", "pull", &reference], 1);
    let lower = r.stderr.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("unknown issuer"),
        "https to a server whose CA is unknown: {}",
        r.stderr
    );

    // With ca = the CA: works.
    env.hosts_toml(
        &reg.host,
        &format!(
            "server = \"https://{}\"\nca = \"{}\"\n",
            reg.host,
            ca.display()
        ),
    );
    let out = env.ok(&env.path("s1"), &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    env.fsck_clean(&env.path("s1"));
    let v = env.ok(&env.path("s1"), &["remote", "inspect", &reference]);
    assert_eq!(v["digest"], image.root.digest, "{v}");
    let out = env.ok(
        &env.path("s1"),
        &["image", "push", &reference, &reg.reference("tls/copy:1")],
    );
    assert_eq!(out["digest"], image.root.digest, "{out}");

    // With skip_verify: works without the CA.
    env.clear_hosts(&reg.host);
    env.hosts_toml(
        &reg.host,
        &format!("server = \"https://{}\"\nskip_verify = true\n", reg.host),
    );
    let out = env.ok(&env.path("s2"), &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
}

// ================================================================ 10. mirrors

fn mirror_toml(server: &Reg, mirror_host: &str) -> String {
    format!(
        "server = \"http://{server}\"\n\n[host.\"http://{mirror_host}\"]\n  \
         capabilities = [\"pull\", \"resolve\"]\n",
        server = server.host
    )
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn mirror_in_hosts_toml_serves_pulls_and_never_pushes() {
    let env = Env::new();
    let server = Reg::start(RegOpts::default());
    let mirror = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[200 << 10, 100 << 10],
        14,
        false,
    );
    skopeo_push(&image, &mirror, "mirrored/app:1", None);
    env.hosts_toml(&server.host, &mirror_toml(&server, &mirror.host));
    let reference = server.reference("mirrored/app:1");
    let root = env.path("store");

    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["name"], reference, "{out}");
    assert_eq!(out["digest"], image.root.digest, "{out}");
    let gets = blob_gets(&mirror.ours());
    for d in image.plain_blobs().keys() {
        assert_eq!(gets.get(d), Some(&1), "{d} came from the mirror");
    }
    // What the mirror lacks comes from the server.
    let only = build_image(
        &env.path("layout-only"),
        "1",
        &["linux/amd64"],
        &[30 << 10],
        16,
        false,
    );
    skopeo_push(&only, &server, "only/server:1", None);
    let out = env.ok(
        &root,
        &["image", "pull", &server.reference("only/server:1")],
    );
    assert_eq!(out["digest"], only.root.digest, "{out}");
    let gets = blob_gets(&server.ours());
    for d in only.plain_blobs().keys() {
        assert_eq!(gets.get(d), Some(&1), "{d} came from the server");
    }
    env.fsck_clean(&root);

    // A push goes to the server only.
    let mirror_mark = mirror.ours().len();
    let server_mark = server.ours().len();
    let out = env.ok(&root, &["image", "push", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    let server = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[100 << 10],
        15,
        false,
    );
    skopeo_push(&image, &server, "fallback/app:1", None);
    let down = format!("127.0.0.1:{}", free_port());
    env.hosts_toml(&server.host, &mirror_toml(&server, &down));
    let reference = server.reference("fallback/app:1");
    let root = env.path("store");
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    let gets = blob_gets(&server.ours());
    for d in image.plain_blobs().keys() {
        assert_eq!(gets.get(d), Some(&1), "{d} came from the server");
    }
    env.fsck_clean(&root);
}

/// A broken mirror: accepts connections and closes them at once, counting them.
struct Slammer {
    port: u16,
    accepts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Slammer {
    fn start() -> Slammer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, st) = (accepts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                a.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Slammer {
            port,
            accepts,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Slammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn broken_mirror_is_tried_once_per_request_then_skipped() {
    let env = Env::new();
    let server = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[100 << 10],
        17,
        false,
    );
    skopeo_push(&image, &server, "broken/app:1", None);
    let slammer = Slammer::start();
    env.hosts_toml(
        &server.host,
        &mirror_toml(&server, &format!("127.0.0.1:{}", slammer.port)),
    );
    let out = env.ok(
        &env.path("store"),
        &["image", "pull", &server.reference("broken/app:1")],
    );
    assert_eq!(out["digest"], image.root.digest, "{out}");
    let reads = server.ours().len();
    let tries = slammer.accepts.load(Ordering::SeqCst);
    assert!(
        tries <= reads,
        "a mirror that drops every connection was connected to {tries} times for the \
         {reads} requests the server answered: each request retries the broken mirror \
         (with backoff) before falling through to the server"
    );
}

// ================================================================ platforms and media types

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pull_of_a_platform_the_index_lacks_fails() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64", "linux/arm64/v8"],
        &[20 << 10, 10 << 10],
        18,
        true,
    );
    skopeo_push(&image, &reg, "plat/app:1", None);
    let reference = reg.reference("plat/app:1");
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
fn remote_inspect_platform_of_a_single_manifest_checks_its_config() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[10 << 10],
        19,
        false,
    );
    skopeo_push(&image, &reg, "single/app:1", None);
    let reference = reg.reference("single/app:1");
    let root = env.path("store");
    let v = env.ok(
        &root,
        &["remote", "inspect", &reference, "--platform", "linux/amd64"],
    );
    assert_eq!(v["digest"], image.root.digest, "{v}");
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
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64", "linux/arm64/v8"],
        &[60 << 10, 20 << 10],
        20,
        true,
    );
    // skopeo converts to Docker schema 2: a manifest list of Docker manifests.
    let dest = format!("docker://{}", reg.reference("docker/app:1"));
    sh(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            &image.layout_ref(),
            &dest,
        ],
    );
    let reference = reg.reference("docker/app:1");
    let theirs = skopeo_digest(&reference, None);
    assert_ne!(theirs, image.root.digest, "skopeo converted the index");
    let root = env.path("store");
    let out = env.ok(&root, &["image", "pull", &reference, "--all-platforms"]);
    assert_eq!(out["digest"], theirs, "{out}");
    assert_eq!(
        out["media_type"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "{out}"
    );
    for p in ["linux/amd64", "linux/arm64/v8", "linux/arm64"] {
        assert!(env.complete(&root, &reference, p), "{p}");
    }
    env.fsck_clean(&root);
    let copy = reg.reference("docker/copy:1");
    let out = env.ok(&root, &["image", "push", &reference, &copy]);
    assert_eq!(out["digest"], theirs, "{out}");
    assert_eq!(skopeo_digest(&copy, None), theirs);
    let v = env.ok(&root, &["remote", "inspect", &copy]);
    assert_eq!(
        v["media_type"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "{v}"
    );
    // By digest, too.
    let by_digest = format!("{}@{theirs}", reg.reference("docker/app"));
    let out = env.ok(&env.path("store2"), &["image", "pull", &by_digest]);
    assert_eq!(out["digest"], theirs, "{out}");
    assert_eq!(out["name"], by_digest, "{out}");
}

// ================================================================ 11. faults

/// What the fault proxy does to a request that matches a [`Rule`].
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    /// Sends the answer's head (its `Content-Length` unchanged) and the first half of its
    /// body, then closes the connection.
    CutHalf,
    /// Forwards the request without its `Range` header: the registry answers 200 with the
    /// whole blob.
    StripRange,
    /// Answers this status, with these extra header lines (each ending in CRLF), without
    /// asking the registry.
    Status(u16, &'static str),
    /// Flips one byte in the middle of the body.
    FlipByte,
    /// Appends this many bytes to the body, with a `Content-Length` to match.
    Append(usize),
    /// Waits this long before forwarding.
    Delay(Duration),
}

/// Which requests a fault applies to, and how often.
#[derive(Debug, Clone)]
struct Rule {
    method: &'static str,
    /// A substring of the request URI.
    uri: String,
    /// Only requests carrying a `Range` header.
    ranged: bool,
    fault: Fault,
    /// How many more times it applies; `None`: every time.
    times: Option<usize>,
}

impl Rule {
    fn new(method: &'static str, uri: &str, fault: Fault) -> Rule {
        Rule {
            method,
            uri: uri.to_owned(),
            ranged: false,
            fault,
            times: None,
        }
    }

    fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    fn ranged(mut self) -> Rule {
        self.ranged = true;
        self
    }

    fn matches(&self, method: &str, uri: &str, range: bool) -> bool {
        self.method == method
            && uri.contains(&self.uri)
            && (range || !self.ranged)
            && self.times != Some(0)
    }
}

/// A request the fault proxy handled.
#[derive(Debug, Clone)]
struct Seen {
    /// When it arrived.
    at: Instant,
    method: String,
    uri: String,
    /// Its `Range` header.
    range: Option<String>,
    /// The fault applied to it.
    fault: Option<Fault>,
    /// The status answered: the registry's, or the fault's own.
    status: u16,
}

impl Seen {
    /// N of a `Range: bytes=N-` header.
    fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

/// A test double: a loopback HTTP proxy in front of a real registry that injects faults, as
/// no real part can cut a connection mid-blob, answer 429 or flip a byte on demand. For each
/// request matching a [`Rule`] it applies the rule's [`Fault`]; every other request passes
/// unchanged. One request per connection: the request goes upstream with
/// `Connection: close`, the answer is read to its end, transformed, written back, and the
/// connection closed. Clients name `127.0.0.1:PORT` as the registry host (loopback: plain
/// HTTP). Records every request ([`Seen`]). Stops when dropped.
struct FaultProxy {
    port: u16,
    /// `127.0.0.1:PORT`.
    host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    fn start(upstream: u16, rules: Vec<Rule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules = Arc::new(Mutex::new(rules));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, sn, st) = (rules.clone(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (r, sn) = (r.clone(), sn.clone());
                std::thread::spawn(move || {
                    if let Err(e) = Self::serve(conn, upstream, &r, &sn) {
                        eprintln!("fault proxy: {e}");
                    }
                });
            }
        });
        FaultProxy {
            port,
            host: format!("127.0.0.1:{port}"),
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn serve(
        mut client: TcpStream,
        upstream: u16,
        rules: &Mutex<Vec<Rule>>,
        seen: &Mutex<Vec<Seen>>,
    ) -> std::io::Result<()> {
        use std::io::BufRead;
        client.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut reader = std::io::BufReader::new(client.try_clone()?);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let at = Instant::now();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert!(
            header("transfer-encoding").is_none(),
            "the fault proxy forwards only requests with a Content-Length body"
        );
        let mut body = vec![0u8; header("content-length").map_or(0, |v| v.parse().unwrap())];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let uri = parts.next().unwrap_or("").to_owned();
        let range = header("range");
        let fault = {
            let mut rules = rules.lock().unwrap();
            rules
                .iter_mut()
                .find(|r| r.matches(&method, &uri, range.is_some()))
                .map(|r| {
                    if let Some(n) = &mut r.times {
                        *n -= 1;
                    }
                    r.fault.clone()
                })
        };
        let record = |status: u16| {
            seen.lock().unwrap().push(Seen {
                at,
                method: method.clone(),
                uri: uri.clone(),
                range: range.clone(),
                fault: fault.clone(),
                status,
            });
        };
        if let Some(Fault::Status(code, extra)) = &fault {
            record(*code);
            write!(
                client,
                "HTTP/1.1 {code} Injected\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return client.shutdown(std::net::Shutdown::Both);
        }
        if let Some(Fault::Delay(d)) = &fault {
            std::thread::sleep(*d);
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        let mut head = format!("{}\r\n", request_line.trim_end());
        for (k, v) in &headers {
            let drop = k.eq_ignore_ascii_case("connection")
                || k.eq_ignore_ascii_case("keep-alive")
                || (fault == Some(Fault::StripRange) && k.eq_ignore_ascii_case("range"));
            if !drop {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        up.write_all(head.as_bytes())?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        let mut head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let mut body = answer[split..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body_fault = method == "GET"
            && matches!(status, 200 | 206)
            && !body.is_empty()
            && !head.to_ascii_lowercase().contains("transfer-encoding");
        record(status);
        match &fault {
            Some(Fault::CutHalf) if body_fault => {
                client.write_all(head.as_bytes())?;
                client.write_all(&body[..body.len() / 2])?;
                client.flush()?;
                return client.shutdown(std::net::Shutdown::Both);
            }
            Some(Fault::FlipByte) if body_fault => {
                let i = body.len() / 2;
                body[i] ^= 0x5a;
            }
            Some(Fault::Append(n)) if body_fault => {
                body.extend(std::iter::repeat_n(b'!', *n));
                head = head
                    .split("\r\n")
                    .map(|line| {
                        if line.to_ascii_lowercase().starts_with("content-length:") {
                            format!("Content-Length: {}", body.len())
                        } else {
                            line.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\r\n");
            }
            _ => {}
        }
        client.write_all(head.as_bytes())?;
        client.write_all(&body)?;
        client.flush()?;
        client.shutdown(std::net::Shutdown::Both)
    }

    /// Every request so far, in order of arrival.
    fn seen(&self) -> Vec<Seen> {
        let mut all = self.seen.lock().unwrap().clone();
        all.sort_by_key(|s| s.at);
        all
    }

    /// The GETs of blob `digest`, in order of arrival.
    fn blob_gets(&self, digest: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.uri.ends_with(&format!("/blobs/{digest}")))
            .collect()
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn seen_list(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            format!(
                "{} {} range={:?} fault={:?} -> {}",
                s.method, s.uri, s.range, s.fault, s.status
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A registry holding a one-platform test image (two layers: 8 MiB and 64 KiB) as
/// `fault/app:1`, and a fault proxy in front of it with `rules(largest layer's digest)`.
/// Returns the proxy's reference for the image, too.
fn faulty(
    env: &Env,
    seed: u64,
    rules: impl FnOnce(&str) -> Vec<Rule>,
) -> (Reg, FaultProxy, Image, Blob, String) {
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[8 << 20, 64 << 10],
        seed,
        false,
    );
    skopeo_push(&image, &reg, "fault/app:1", None);
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

/// After a successful pull through faults: the image is whole, verified, and nothing is
/// left in progress.
fn pulled_whole(env: &Env, root: &Path, reference: &str, image: &Image) {
    assert!(env.complete(root, reference, "linux/amd64"));
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
fn failed_pull_left(env: &Env, root: &Path, image: &Image) -> Vec<Value> {
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
fn nothing_unverified(env: &Env, root: &Path, image: &Image, bad: &str) -> u64 {
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
fn repull_adopts(env: &Env, root: &Path, reg: &Reg, image: &Image, sealed: u64) {
    let reference = reg.reference("fault/app:1");
    let out = env.ok(root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert_eq!(
        out["bytes_fetched"],
        image.size() - sealed,
        "what the failed pull verified ({sealed} bytes) is not fetched again: {out}"
    );
    pulled_whole(env, root, &reference, image);
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn fault_cut_mid_blob_resumes_with_range() {
    let env = Env::new();
    let (_reg, proxy, image, big, reference) = faulty(&env, 21, |big| {
        vec![Rule::new("GET", big, Fault::CutHalf).times(1)]
    });
    let root = env.path("store");
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
fn fault_cut_manifest_body_is_retried() {
    let env = Env::new();
    let (_reg, proxy, image, _big, reference) = faulty(&env, 28, |_| {
        vec![Rule::new("GET", "/manifests/", Fault::CutHalf).times(1)]
    });
    let root = env.path("store");
    let r = env.run(&root, &["image", "pull", &reference]);
    let manifests: Vec<Seen> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.uri.contains("/manifests/"))
        .collect();
    assert_eq!(
        r.code,
        Some(0),
        "a connection cut in the middle of a manifest's body is a connection error like any \
         other (client.rs retries them), but the pull failed: {}\nrequests:\n{}",
        r.stderr,
        seen_list(&manifests)
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
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    let (_reg, proxy, image, _big, reference) = faulty(&env, 23, |_| {
        vec![
            Rule::new(
                "HEAD",
                "/manifests/",
                Fault::Status(429, "Retry-After: 1\r\n"),
            )
            .times(1),
        ]
    });
    let root = env.path("store");
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    let manifests: Vec<Seen> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.uri.contains("/manifests/"))
        .collect();
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
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    let r = env.fails(&root, &["image", "pull", &reference], 1);
    let took = start.elapsed();
    for part in [proxy.host.as_str(), "fault/app", big.digest.as_str()] {
        assert!(
            r.stderr.contains(part),
            "the error names {part}: {}",
            r.stderr
        );
    }
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
    let r = env.fails(&root, &["image", "pull", &reference], 1);
    for part in [proxy.host.as_str(), "fault/app", big.digest.as_str()] {
        assert!(
            r.stderr.contains(part),
            "the error names {part}: {}",
            r.stderr
        );
    }
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
    let r = env.fails(&root, &["image", "pull", &reference], 1);
    for part in [proxy.host.as_str(), "fault/app", big.digest.as_str()] {
        assert!(
            r.stderr.contains(part),
            "the error names {part}: {}",
            r.stderr
        );
    }
    assert!(
        r.stderr.contains("more than the descriptor"),
        "the error says the registry sent more bytes than the descriptor: {}",
        r.stderr
    );
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
    let r = env.fails(&root, &["image", "pull", &format!("{host}/gone/app:1")], 1);
    let took = start.elapsed();
    println!(
        "connection refused: exit 1 after {took:?} (backoff budget {budget:?}): {}",
        r.stderr.trim()
    );
    assert!(r.stderr.contains(&host), "names the host: {}", r.stderr);
    assert!(
        took < budget + Duration::from_secs(3),
        "a refused connection failed after {took:?}, beyond the retry budget {budget:?}"
    );
    let ls = env.ok(&root, &["image", "ls"]);
    assert_eq!(ls, json!([]), "{ls}");
    assert_eq!(env.ok(&root, &["ingest", "ls"]), json!([]));
    env.fsck_clean(&root);
}

// ================================================================ 12. token auth

const TOKEN_SERVICE: &str = "test-registry";
const TOKEN_ISSUER: &str = "test-issuer";

/// A token request the token server answered.
#[derive(Debug, Clone)]
struct TokenReq {
    scopes: Vec<String>,
    /// The basic-auth user presented, if any.
    user: Option<String>,
    /// Whether a token was issued.
    granted: bool,
    agent: String,
}

/// How the token server answers.
struct TokenPolicy {
    /// Basic credentials it demands (`None`: anyone gets a token).
    require: Option<(String, String)>,
    /// Seconds from now to each token's `exp`. distribution accepts a token until 60 s
    /// (its leeway for clock skew) after its `exp`: -57 makes tokens that live about 3 s.
    exp_in: i64,
}

/// A test double for a token server (nothing real issues tokens on loopback): what
/// distribution's token auth sends clients to. `GET /token?scope=...&service=...` answers
/// `{"token": JWT}` granting every scope asked, the JWT signed RS256 by `openssl dgst`
/// (spawned per token) with a key whose self-signed certificate (`cert`, the registry's
/// `rootcertbundle`) travels in the header's `x5c`. Checks basic credentials when told to.
/// Stops when dropped.
struct TokenServer {
    port: u16,
    /// `http://127.0.0.1:PORT/token`.
    realm: String,
    cert: PathBuf,
    policy: Arc<Mutex<TokenPolicy>>,
    requests: Arc<Mutex<Vec<TokenReq>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenServer {
    fn start(require: Option<(&str, &str)>) -> TokenServer {
        need("openssl");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                p(&key),
                "-out",
                p(&cert),
                "-days",
                "2",
                "-subj",
                "/CN=token",
            ],
        );
        // The PEM body is the base64 of the DER.
        let x5c: String = std::fs::read_to_string(&cert)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = Arc::new(Mutex::new(TokenPolicy {
            require: require.map(|(u, p)| (u.to_owned(), p.to_owned())),
            exp_in: 300,
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (pol, reqs, st, k) = (policy.clone(), requests.clone(), stop.clone(), key.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                if let Err(e) = Self::answer(&mut conn, &x5c, &k, &pol, &reqs) {
                    eprintln!("token server: {e}");
                }
            }
        });
        TokenServer {
            port,
            realm: format!("http://127.0.0.1:{port}/token"),
            cert,
            policy,
            requests,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn answer(
        conn: &mut TcpStream,
        x5c: &str,
        key: &Path,
        policy: &Mutex<TokenPolicy>,
        requests: &Mutex<Vec<TokenReq>>,
    ) -> std::io::Result<()> {
        use base64::Engine;
        use std::io::BufRead;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = std::io::BufReader::new(conn.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut user_pass = None;
        let mut agent = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("authorization")
                && let Some(b) = v.strip_prefix("Basic ")
            {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&decoded).into_owned();
                user_pass = text
                    .split_once(':')
                    .map(|(u, p)| (u.to_owned(), p.to_owned()));
            } else if k.eq_ignore_ascii_case("user-agent") {
                agent = v.to_owned();
            }
        }
        let uri = request_line.split_whitespace().nth(1).unwrap_or("");
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let scopes: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "scope")
            .flat_map(|(_, v)| {
                percent_decode(v)
                    .split(' ')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect();
        let (require, exp_in) = {
            let p = policy.lock().unwrap();
            (p.require.clone(), p.exp_in)
        };
        let allowed = path == "/token" && require.is_none_or(|r| user_pass.as_ref() == Some(&r));
        requests.lock().unwrap().push(TokenReq {
            scopes: scopes.clone(),
            user: user_pass.as_ref().map(|(u, _)| u.clone()),
            granted: allowed,
            agent,
        });
        if !allowed {
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
            return write!(
                conn,
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        static JTI: AtomicU64 = AtomicU64::new(0);
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": user_pass.as_ref().map_or("", |(u, _)| u.as_str()),
            "aud": TOKEN_SERVICE,
            "exp": now + exp_in,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("t{}-{now}", JTI.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut openssl = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        openssl.stdin.take().unwrap().write_all(input.as_bytes())?;
        let signed = openssl.wait_with_output()?;
        assert!(
            signed.status.success(),
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&signed.stderr)
        );
        let jwt = format!("{input}.{}", b64url(&signed.stdout));
        let body =
            json!({"token": jwt, "expires_in": exp_in.max(1), "issued_at": null}).to_string();
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Every token request so far.
    fn requests(&self) -> Vec<TokenReq> {
        self.requests.lock().unwrap().clone()
    }

    /// ocistore's token requests (user agent `ocistore/…`).
    fn ours(&self) -> Vec<TokenReq> {
        self.requests()
            .into_iter()
            .filter(|r| r.agent.starts_with("ocistore/"))
            .collect()
    }

    fn set_exp_in(&self, secs: i64) {
        self.policy.lock().unwrap().exp_in = secs;
    }

    /// A registry whose auth is this token server.
    fn registry(&self) -> Reg {
        Reg::start(RegOpts {
            token: Some((self.realm.clone(), self.cert.clone())),
            ..RegOpts::default()
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn token_auth_push_then_pull_with_docker_config_credentials() {
    let env = Env::new();
    let (user, pass) = ("tokuser", "tok-pw");
    let tokens = TokenServer::start(Some((user, pass)));
    let reg = tokens.registry();
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[200 << 10, 50 << 10],
        31,
        false,
    );
    let src = env.path("src");
    env.ok(
        &src,
        &[
            "image",
            "import",
            p(&image.dir),
            "--name",
            &reg.reference("tok/app"),
        ],
    );
    let reference = reg.reference("tok/app:1");

    // No credentials: the token server refuses; exit 1 naming the host.
    let r = env.fails(&src, &["image", "push", &reference], 1);
    assert!(r.stderr.contains(&reg.host), "{}", r.stderr);
    assert!(
        r.stderr.contains("no credentials in config.json"),
        "{}",
        r.stderr
    );
    assert!(
        tokens.ours().iter().all(|t| !t.granted && t.user.is_none()),
        "{:?}",
        tokens.ours()
    );
    // A wrong password alike.
    env.login(&reg.host, user, "wrong");
    let r = env.fails(&src, &["image", "push", &reference], 1);
    assert!(r.stderr.contains(&reg.host), "{}", r.stderr);

    // With credentials: push, then pull into another store.
    env.login(&reg.host, user, pass);
    let out = env.ok(&src, &["image", "push", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert!(env.complete(&root, &reference, "linux/amd64"));
    env.fsck_clean(&root);
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
            .all(|r| r.method == "HEAD" || r.method == "POST"),
        "a 401 only on a command's first request (before it has a token):\n{}",
        list(&reqs)
    );

    // Without credentials the pull fails naming the host.
    env.logout();
    let r = env.fails(&env.path("store2"), &["image", "pull", &reference], 1);
    assert!(r.stderr.contains(&reg.host), "{}", r.stderr);
    assert!(
        r.stderr.contains("no credentials in config.json"),
        "{}",
        r.stderr
    );
    assert_eq!(
        env.ok(&env.path("store2"), &["image", "ls"]),
        json!([]),
        "no name"
    );
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn token_auth_push_to_a_second_repository() {
    let env = Env::new();
    let (user, pass) = ("tokuser", "tok-pw");
    let tokens = TokenServer::start(Some((user, pass)));
    let reg = tokens.registry();
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[100 << 10],
        32,
        false,
    );
    skopeo_push(&image, &reg, "tok/app:1", Some((user, pass)));
    env.login(&reg.host, user, pass);
    let root = env.path("store");
    let out = env.ok(&root, &["image", "pull", &reg.reference("tok/app:1")]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    // The blobs are labelled as coming from tok/app: the push to tok/copy tries a
    // cross-repository mount, which distribution authorises only with a token that also
    // grants pull on tok/app.
    let copy = reg.reference("tok/copy:1");
    let mark = reg.ours().len();
    let r = env.run(
        &root,
        &["image", "push", &reg.reference("tok/app:1"), &copy],
    );
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
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[300 << 10, 20 << 10],
        33,
        false,
    );
    skopeo_push(&image, &reg, "tok/app:1", None);
    let big = image.platforms[0].layers[0].clone();

    // Tokens that live about 3 s; the first GET of the big layer waits 5 s in the proxy
    // before it reaches the registry, with the token of the pull's start.
    tokens.set_exp_in(-57);
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new("GET", &big.digest, Fault::Delay(Duration::from_secs(5))).times(1)],
    );
    let reference = proxy.reference("tok/app:1");
    let root = env.path("store");
    let mark = reg.ours().len();
    let out = env.ok(&root, &["image", "pull", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
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
    let r = env.fails(
        &env.path("store2"),
        &["image", "pull", &reg.reference("tok/app:1")],
        1,
    );
    assert!(r.stderr.contains(&reg.host), "{}", r.stderr);
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

// ================================================================ 13. memory

/// A writer that hashes what goes through it (sha256).
struct Hashing<W: Write> {
    inner: W,
    hasher: ocistore::digest::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hashing<W: Write>(inner: W) -> Hashing<W> {
    Hashing {
        inner,
        hasher: ocistore::Algorithm::Sha256.hasher(),
    }
}

/// `size` pseudo-random bytes, one MiB of [`noise`] repeated with each MiB numbered, made
/// as they are read.
struct NoiseReader {
    block: Vec<u8>,
    left: u64,
    pos: usize,
    mib: u64,
}

impl Read for NoiseReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            self.pos = 0;
            self.mib += 1;
            self.block[..8].copy_from_slice(&self.mib.to_le_bytes());
        }
        let n = buf
            .len()
            .min(self.block.len() - self.pos)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// [`layer`] written streaming to disk, never whole in memory: a tar of one file of `size`
/// pseudo-random bytes, gzip-framed without compression.
fn streamed_layer(dir: &Path, seed: u64, size: usize) -> (Blob, String) {
    let tmp = dir.join("blobs/sha256/streaming.tmp");
    let file = std::fs::File::create(&tmp).unwrap();
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            hashing(std::io::BufWriter::with_capacity(1 << 20, file)),
            flate2::Compression::none(),
        );
    let mut b = tar::Builder::new(hashing(gz));
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(1_704_067_200);
    h.set_size(size as u64);
    let data = NoiseReader {
        block: noise(seed, 1 << 20),
        left: size as u64,
        pos: 0,
        mib: 0,
    };
    b.append_data(&mut h, format!("data/layer-{seed}.bin"), data)
        .unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = tar.hasher.finalize().to_string();
    let gz = tar.inner.finish().unwrap();
    let digest = gz.hasher.finalize().to_string();
    let file = gz.inner.into_inner().unwrap();
    file.sync_all().unwrap();
    let len = file.metadata().unwrap().len();
    drop(file);
    std::fs::rename(
        &tmp,
        dir.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    (Blob { digest, size: len }, diff_id)
}

/// Runs `ocistore ARGS` to its end: what it did and its own peak RSS in KiB.
///
/// Not spawned from this process: Linux starts a child's `ru_maxrss` at the high-water mark
/// of the address space it execs from, which for std's (v)fork-and-exec is this process's,
/// and earlier tests here built layers of up to 64 MiB in memory (a child spawned directly
/// reported this process's 360 MiB). So a fresh `sh` starts ocistore in the background and
/// exits; this process, a child subreaper meanwhile, adopts ocistore and reaps it with
/// `wait4` (as tests/cli.rs `wait_max_rss` measures).
fn run_max_rss(env: &Env, root: &Path, args: &[&str]) -> (Run, i64) {
    let (out, err) = (env.path("rss.stdout"), env.path("rss.stderr"));
    let inner = env.cmd(root, args);
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("\"$@\" >\"$RSS_OUT\" 2>\"$RSS_ERR\" </dev/null & echo $!")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("RSS_OUT", &out)
        .env("RSS_ERR", &err)
        .stdin(Stdio::null());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0,
        "prctl(PR_SET_CHILD_SUBREAPER)"
    );
    let started = sh.output().expect("run sh");
    let pid: libc::pid_t = String::from_utf8_lossy(&started.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("sh did not start ocistore in the background: {started:?}"));
    // sh has exited: ocistore is this process's child now.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
    assert_eq!(
        r,
        pid,
        "wait4 of ocistore: {}",
        std::io::Error::last_os_error()
    );
    let run = Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    (run, usage.ru_maxrss)
}

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn one_gib_layer_pull_and_push_hold_memory_flat() {
    const LIMIT_KIB: i64 = 64 * 1024;
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image_with(
        &env.path("layout"),
        "1",
        &["linux/amd64"],
        &[1 << 30],
        41,
        false,
        &mut streamed_layer,
    );
    skopeo_push(&image, &reg, "big/app:1", None);
    let reference = reg.reference("big/app:1");
    let root = env.path("store");
    env.ok(&root, &["du"]);

    let (run, pull_kib) = run_max_rss(&env, &root, &["image", "pull", &reference]);
    assert_eq!(run.code, Some(0), "pull: {}{}", run.stdout, run.stderr);
    let out = run.json();
    assert_eq!(out["digest"], image.root.digest, "{out}");
    assert_eq!(out["bytes_fetched"], image.size(), "{out}");

    let empty = Reg::start(RegOpts::default());
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
        "1 GiB layer: pull peak RSS {:.1} MiB, push peak RSS {:.1} MiB",
        pull_kib as f64 / 1024.0,
        push_kib as f64 / 1024.0
    );
    assert!(
        pull_kib < LIMIT_KIB,
        "peak RSS {pull_kib} KiB pulling a 1 GiB layer"
    );
    assert!(
        push_kib < LIMIT_KIB,
        "peak RSS {push_kib} KiB pushing a 1 GiB layer"
    );
    assert_eq!(skopeo_digest(&target, None), image.root.digest);
}

// ================================================================ 14. conformance of pulled content

#[test]
#[ignore = "needs docker-registry and skopeo; run by .ci/run's interop suite"]
fn pulled_image_checks_exports_and_reimports_unchanged() {
    let env = Env::new();
    let reg = Reg::start(RegOpts::default());
    let image = build_image(
        &env.path("layout"),
        "1",
        &["linux/amd64", "linux/arm64/v8"],
        &[120 << 10, 40 << 10],
        42,
        true,
    );
    skopeo_push(&image, &reg, "conf/app:1", None);
    let reference = reg.reference("conf/app:1");
    let root = env.path("store");
    let out = env.ok(&root, &["image", "pull", "--all-platforms", &reference]);
    assert_eq!(out["digest"], image.root.digest, "{out}");
    env.fsck_clean(&root);
    for pi in &image.platforms {
        assert!(
            env.complete(&root, &reference, &pi.platform),
            "{}",
            pi.platform
        );
    }
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
    env.fsck_clean(&fresh);
    for pi in &image.platforms {
        assert!(
            env.complete(&fresh, &reference, &pi.platform),
            "{}",
            pi.platform
        );
    }

    // skopeo reads the export.
    let dir = env.path("skopeo-out");
    sh(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            &format!("oci-archive:{}", export.display()),
            &format!("oci:{}:1", dir.display()),
        ],
    );
    assert_eq!(layout_digest(&dir), image.root.digest);
    for (d, size) in image.blobs() {
        let f = dir
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap());
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("skopeo lacks {d}: {e}"));
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(sha256(&bytes), d);
    }
}
