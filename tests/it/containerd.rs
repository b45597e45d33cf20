//! containerd on ocistore: `ocistore serve --containerd` under containerd's own content
//! testsuite (Go, built from Debian's containerd 1.6.20 sources), and a real containerd whose
//! content store it is, beside other ocistore processes on the same root.
//!
//! Every test is `#[ignore]`d so that `cargo test` needs nothing but Rust; `.ci/run` installs
//! Go, containerd's sources, containerd, skopeo and docker-registry and runs them. A missing
//! tool fails the test, naming it.

use crate::cmd;
#[allow(dead_code)]
use crate::doubles;
#[allow(dead_code)]
use crate::harness;
use crate::private_containerd as containerd;
#[allow(dead_code)]
use crate::test_images as images;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use cmd::rss;
use containerd::{Containerd, need};
use doubles::{Fault, FaultProxy, Rule};
use harness::{Env, MIB, Reg, p, poll, pushed, sha256};
use images::AMD64;

/// `ocistore serve --containerd` as a grandchild (so that its own peak RSS can be read),
/// killed on drop.
struct Serve {
    pid: libc::pid_t,
    sock: PathBuf,
    out: PathBuf,
    err: PathBuf,
    reaped: bool,
}

impl Serve {
    /// Starts it on `root` and waits (up to 30 s) for its `--json` ready line.
    fn start(env: &Env, root: &Path, sock: &Path, tag: &str) -> Serve {
        let (out, err) = (
            env.path(&format!("{tag}.out")),
            env.path(&format!("{tag}.err")),
        );
        let command = env.cli(root, &["serve", "--containerd", p(sock)]);
        let pid = command.measure(&out, &err, false).pid;
        let serve = Serve {
            pid,
            sock: sock.to_path_buf(),
            out,
            err,
            reaped: false,
        };
        let ready = poll(Duration::from_secs(30), Duration::from_millis(20), || {
            std::fs::read_to_string(&serve.out).is_ok_and(|s| s.ends_with('\n'))
        });
        assert!(
            ready,
            "ocistore serve did not get ready: {}",
            serve.stderr()
        );
        let line: Value = serde_json::from_str(&std::fs::read_to_string(&serve.out).unwrap())
            .expect("the ready line is JSON");
        assert_eq!(line["socket"], p(sock), "{line}");
        assert_eq!(line["pid"], pid, "{line}");
        serve
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own (adopted) child's pid.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// SIGKILL, reaped.
    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        rss::wait(self.pid);
        self.reaped = true;
    }

    /// SIGTERM: it must exit 0, having removed its socket; its peak RSS in KiB.
    fn stop(&mut self) -> i64 {
        self.signal(libc::SIGTERM);
        let (code, kib) = rss::wait(self.pid);
        self.reaped = true;
        assert_eq!(code, Some(0), "serve exits 0 on SIGTERM: {}", self.stderr());
        assert!(!self.sock.exists(), "the socket is removed on exit");
        kib
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            rss::wait(self.pid);
        }
    }
}

/// A store root, the server on it, and a containerd whose content store the server is.
struct Rig {
    env: Env,
    root: PathBuf,
    serve: Serve,
    ctd: Containerd,
}

impl Rig {
    fn new() -> Rig {
        let env = Env::new();
        let root = env.path("store");
        let serve = Serve::start(&env, &root, &env.path("content.sock"), "serve");
        let ctd = Containerd::start_on(&serve.sock);
        let plugins = ctd.ctr_text(&["plugins", "ls"]);
        assert!(
            plugins
                .lines()
                .any(|l| l.starts_with("io.containerd.content.v1")
                    && l.contains("ocistore")
                    && l.trim_end().ends_with("ok")),
            "containerd loads the ocistore content plugin:\n{plugins}"
        );
        Rig {
            env,
            root,
            serve,
            ctd,
        }
    }

    /// The digests of the root's committed blobs, listed by another `ocistore` process.
    fn content(&self) -> BTreeSet<String> {
        self.env.content(&self.root).into_keys().collect()
    }

    fn fsck_clean(&self) {
        self.env.fsck_clean(&self.root);
    }

    /// `ctr images rm --sync NAME`: containerd's gc runs before it returns.
    fn ctr_rm_sync(&self, name: &str) {
        self.ctd.ctr(&["images", "rm", "--sync", name]);
    }

    /// The blob's bytes as `ctr content get` reads them through containerd.
    fn ctr_get(&self, digest: &str) -> Vec<u8> {
        self.ctd.ctr(&["content", "get", digest]).stdout
    }
}

fn assert_holds(content: &BTreeSet<String>, digests: impl IntoIterator<Item = String>, what: &str) {
    for d in digests {
        assert!(content.contains(&d), "{what}: {d} is in the ocistore root");
    }
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar")
}

/// The `blobs/<alg>/<hex>` entries of an OCI archive, as digests.
fn archive_blobs(archive: &Path) -> BTreeSet<String> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    tar.entries()
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path().unwrap().into_owned();
            let mut parts = path
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let first = parts.next()?;
            let first = if first == "." { parts.next()? } else { first };
            if first != "blobs" {
                return None;
            }
            let (alg, hex) = (parts.next()?, parts.next()?);
            Some(format!("{alg}:{hex}"))
        })
        .collect()
}

// ================================================================ containerd's testsuite

#[test]
#[ignore = "needs Go and containerd's Go sources; run by .ci/run's interop suite"]
fn containerds_own_content_testsuite_passes_over_the_socket() {
    need("go");
    let sources =
        Path::new("/usr/share/gocode/src/github.com/containerd/containerd/content/testsuite");
    assert!(
        sources.is_dir(),
        "containerd's Go sources are not installed (apt-get install golang-github-containerd-containerd-dev)"
    );
    let gopath = tempfile::tempdir().unwrap();
    let pkg = gopath.path().join("src/ocistoresuite");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd/suite_test.go"),
        pkg.join("suite_test.go"),
    )
    .unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-build");
    let out = Command::new("go")
        .args(["test", "-count=1", "-v", "."])
        .current_dir(&pkg)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:/usr/share/gocode", gopath.path().display()),
        )
        .env("GOCACHE", &cache)
        .env("GOFLAGS", "-mod=")
        .env("OCISTORE_BIN", cmd::BIN)
        .stdin(Stdio::null())
        .output()
        .expect("run go test");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "containerd's content testsuite:\n{said}"
    );
    for name in [
        "Writer",
        "UpdateStatus",
        "CommitExists",
        "Resume",
        "ResumeTruncate",
        "ResumeDiscard",
        "ResumeCopy",
        "ResumeCopySeeker",
        "ResumeCopyReaderAt",
        "SmallBlob",
        "Labels",
        "CommitErrorState",
    ] {
        assert!(
            said.contains(&format!("--- PASS: TestContentSuite/{name} ")),
            "{name} ran and passed:\n{said}"
        );
    }
    for name in [
        "TestSecondWriterIsUnavailable",
        "TestClientGoneMidWriteLeavesResumableIngest",
    ] {
        assert!(
            said.contains(&format!("--- PASS: {name} ")),
            "{name} ran and passed:\n{said}"
        );
    }
}

// ================================================================ a real containerd

#[test]
#[ignore = "needs containerd, skopeo and docker-registry; run by .ci/run's interop suite"]
fn containerd_keeps_its_content_in_ocistore() {
    let rig = Rig::new();
    let reg = Reg::plain();
    let (image, reference) = pushed(&rig.env, &reg, "ctd/app:1", AMD64, &[300_000, 200_000], 1);

    // Fetch from a registry: every blob lands in the ocistore root.
    rig.ctd
        .ctr(&["content", "fetch", "--plain-http", &reference]);
    assert_holds(&rig.content(), image.blobs().into_keys(), "fetched");
    rig.fsck_clean();

    // Import an OCI archive, export it again: the same manifests and blobs as ocistore's own
    // export of that image.
    let export_root = rig.env.path("exporter");
    rig.env.ok(&export_root, &["image", "import", p(&sample())]);
    let ours = rig.env.path("ours.tar");
    rig.env.ok(
        &export_root,
        &["image", "export", "hello:1.0", "-o", p(&ours)],
    );
    rig.ctd.ctr(&[
        "images",
        "import",
        "--all-platforms",
        "--no-unpack",
        p(&sample()),
    ]);
    let theirs = rig.env.path("theirs.tar");
    rig.ctd.ctr(&[
        "images",
        "export",
        "--all-platforms",
        p(&theirs),
        "docker.io/library/hello:1.0",
    ]);
    let sample_blobs = archive_blobs(&ours);
    assert!(!sample_blobs.is_empty());
    assert_eq!(
        archive_blobs(&theirs),
        sample_blobs,
        "ctr's export holds our export's blobs"
    );
    assert_holds(&rig.content(), sample_blobs.iter().cloned(), "imported");
    rig.fsck_clean();

    // ls, get, label, rm.
    let ls = rig.ctd.ctr_text(&["content", "ls", "-q"]);
    for d in image.blobs().keys().chain(&sample_blobs) {
        assert!(
            ls.lines().any(|l| l.trim() == d),
            "ctr content ls lists {d}:\n{ls}"
        );
    }
    let layer = &image.platforms[0].layers[0];
    let bytes = rig.ctr_get(&layer.digest);
    assert_eq!(bytes.len() as u64, layer.size);
    assert_eq!(sha256(&bytes), layer.digest);
    rig.ctd
        .ctr(&["content", "label", &layer.digest, "ocistore.test=yes"]);
    let ls = rig.ctd.ctr_text(&["content", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&layer.digest) && l.contains("ocistore.test=yes")),
        "the label shows:\n{ls}"
    );
    rig.fsck_clean();

    // `ctr images rm --sync` runs containerd's gc: what only containerd held leaves the root.
    rig.ctr_rm_sync(&reference);
    rig.ctd.ctr(&["content", "rm", &layer.digest]);
    rig.ctr_rm_sync("docker.io/library/hello:1.0");
    let left = rig.content();
    for d in image.blobs().keys().chain(&sample_blobs) {
        assert!(
            !left.contains(d),
            "{d}, held by containerd alone, is gone: {left:?}"
        );
    }
    rig.fsck_clean();
    // Its holds went with it.
    let leases = rig.env.ok(&rig.root, &["lease", "ls"]);
    let held = rig
        .env
        .ok(&rig.root, &["lease", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "ocistore.containerd")
        .map(|l| l["resources"].as_array().map_or(0, Vec::len));
    assert!(
        held.unwrap_or(0) == 0,
        "containerd's lease holds nothing: {leases}"
    );
}

#[test]
#[ignore = "needs containerd, skopeo and docker-registry; run by .ci/run's interop suite"]
fn containerd_and_ocistore_share_a_root_without_deleting_what_the_other_needs() {
    let rig = Rig::new();
    let reg = Reg::plain();
    let (image, reference) = pushed(&rig.env, &reg, "share/app:1", AMD64, &[400_000, 100_000], 2);

    // ocistore names the image; containerd then fetches it (and adopts every blob: no layer
    // crosses the wire again).
    rig.env.pull(&rig.root, &[&reference], &image.root.digest);
    let mark = reg.ours().len();
    rig.ctd
        .ctr(&["content", "fetch", "--plain-http", &reference]);
    let _ = mark;
    // containerd removes its image and the layers, and runs its gc: ocistore's image stays.
    for l in &image.platforms[0].layers {
        rig.ctd.ctr(&["content", "rm", &l.digest]);
    }
    rig.ctr_rm_sync(&reference);
    assert_holds(
        &rig.content(),
        image.blobs().into_keys(),
        "named by ocistore",
    );
    assert!(rig.env.complete(&rig.root, &reference, "linux/amd64"));
    rig.fsck_clean();

    // An ocistore pull in progress in another process keeps its ingest through containerd's gc.
    let (slow, slow_ref) = pushed(&rig.env, &reg, "share/slow:1", AMD64, &[2_000_000], 3);
    let layer = slow.platforms[0].layers[0].digest.clone();
    let proxy = FaultProxy::start(
        reg.port,
        vec![Rule::new(
            "GET",
            &format!("/blobs/{layer}"),
            Fault::Delay(Duration::from_secs(4)),
        )],
    );
    let through = proxy.reference("share/slow:1");
    let _ = slow_ref;
    let mut pull = rig
        .env
        .cmd(&rig.root, &["image", "pull", &through])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Something for containerd's gc to do meanwhile.
    rig.ctd.ctr(&[
        "images",
        "import",
        "--all-platforms",
        "--no-unpack",
        p(&sample()),
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    rig.ctr_rm_sync("docker.io/library/hello:1.0");
    assert!(
        pull.wait().unwrap().success(),
        "the pull beside containerd's gc completes"
    );
    assert_holds(
        &rig.content(),
        slow.blobs().into_keys(),
        "pulled beside containerd's gc",
    );
    rig.fsck_clean();

    // ocistore's gc and prune leave containerd's content readable.
    let (kept, kept_ref) = pushed(&rig.env, &reg, "share/ctd:1", AMD64, &[300_000], 4);
    rig.ctd
        .ctr(&["content", "fetch", "--plain-http", &kept_ref]);
    rig.env.ok(&rig.root, &["gc", "--ingest-expiry", "0s"]);
    rig.env.ok(
        &rig.root,
        &["prune", "--max-used", "1", "--ingest-expiry", "0s"],
    );
    for (d, size) in kept.blobs() {
        assert_eq!(
            rig.ctr_get(&d).len() as u64,
            size,
            "{d} readable after ocistore gc and prune"
        );
    }
    rig.fsck_clean();
}

// ================================================================ faults

#[test]
#[ignore = "needs containerd, skopeo and docker-registry; run by .ci/run's interop suite"]
fn a_killed_server_loses_nothing_and_the_fetch_resumes() {
    let mut rig = Rig::new();
    let reg = Reg::plain();
    let (image, _) = pushed(&rig.env, &reg, "fault/app:1", AMD64, &[24 << 20], 5);
    let layer = image.platforms[0].layers[0].clone();
    // The layer's first GET stalls halfway: the server is killed while containerd writes it.
    let proxy = FaultProxy::start(
        reg.port,
        vec![
            Rule::new(
                "GET",
                &format!("/blobs/{}", layer.digest),
                Fault::StallHalf(Duration::from_secs(20)),
            )
            .times(1),
        ],
    );
    let reference = proxy.reference("fault/app:1");
    let fetch = |rig: &Rig| {
        rig.ctr_cmd(&["content", "fetch", "--plain-http", &reference])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = fetch(&rig);
    let started = poll(Duration::from_secs(30), Duration::from_millis(5), || {
        rig.env
            .ok(&rig.root, &["ingest", "ls"])
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["offset"].as_u64().unwrap_or(0) > 0))
    });
    assert!(
        started,
        "containerd's ingest of the layer shows up in the root"
    );
    rig.serve.kill9();
    let _ = first.kill();
    let _ = first.wait();
    let partial: u64 = rig
        .env
        .ok(&rig.root, &["ingest", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["offset"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(partial > 0, "bytes written before the kill are kept");
    rig.fsck_clean();

    rig.serve = Serve::start(&rig.env, &rig.root, &rig.env.path("content.sock"), "serve2");
    rig.ctd.restart();
    let mut again = fetch(&rig);
    assert!(
        again.wait().unwrap().success(),
        "the fetch run again completes: {}",
        rig.ctd.log()
    );
    let bytes = rig.ctr_get(&layer.digest);
    assert_eq!(sha256(&bytes), layer.digest);
    let resumed = proxy
        .blob_gets(&layer.digest)
        .iter()
        .any(|s| s.range_start().is_some_and(|r| r > 0));
    println!("kept {partial} bytes; resumed with a Range request: {resumed}");
    assert!(
        resumed,
        "the fetch resumed from the kept bytes: {:?}",
        proxy.blob_gets(&layer.digest)
    );
    assert_holds(
        &rig.content(),
        image.blobs().into_keys(),
        "fetched after the restarts",
    );
    rig.fsck_clean();
}

#[test]
#[ignore = "needs containerd; run by .ci/run's interop suite"]
fn writers_on_one_reference_and_clients_that_vanish() {
    let rig = Rig::new();
    let data: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256(&data);
    // The first writer holds the reference while its stdin stays open.
    let ingest = |reference: &str| {
        rig.ctr_cmd(&["content", "ingest", "--expected-size"])
            .arg(data.len().to_string())
            .args(["--expected-digest", &digest, reference])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = ingest("shared-ref");
    {
        use std::io::Write;
        let stdin = first.stdin.as_mut().unwrap();
        stdin.write_all(&data[..MIB as usize]).unwrap();
        stdin.flush().unwrap();
    }
    let seen = poll(Duration::from_secs(20), Duration::from_millis(10), || {
        rig.env
            .ok(&rig.root, &["ingest", "ls"])
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["offset"].as_u64().unwrap_or(0) > 0))
    });
    assert!(seen, "the first writer's bytes reach the root");
    // A second writer of the same reference is refused (`Unavailable`, asserted at the API
    // level by the Go suite's `TestSecondWriterIsUnavailable`): ctr keeps retrying, as it
    // does against containerd's own store, and writes nothing meanwhile.
    let mut second = ingest("shared-ref");
    drop(second.stdin.take());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        second.try_wait().unwrap().is_none(),
        "the second writer waits for the reference"
    );
    let _ = second.kill();
    let _ = second.wait();
    assert!(
        !rig.content().contains(&digest),
        "nothing committed by the second writer"
    );

    // The first client vanishes mid-write: a resumable ingest, not a broken blob.
    let _ = first.kill();
    let _ = first.wait();
    let resumable = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        rig.env
            .ok(&rig.root, &["ingest", "ls"])
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["offset"].as_u64().unwrap_or(0) > 0))
    });
    assert!(resumable, "the ingest stays to be resumed");
    assert!(
        !rig.content().contains(&digest),
        "no blob from half the bytes"
    );
    rig.fsck_clean();
    // Run again from a file, ctr resumes it: it seeks past the bytes already written.
    let file = rig.env.path("data");
    std::fs::write(&file, &data).unwrap();
    rig.ingest_file("shared-ref", &digest, &file);
    assert_eq!(rig.ctr_get(&digest), data);
    rig.fsck_clean();
}

#[test]
#[ignore = "needs containerd; run by .ci/run's interop suite"]
fn sigterm_mid_write_keeps_the_ingest_to_resume() {
    let mut rig = Rig::new();
    let data: Vec<u8> = (0..4 * MIB as usize)
        .map(|i| (i * 13 % 249) as u8)
        .collect();
    let digest = sha256(&data);
    let mut writer = rig
        .ctr_cmd(&[
            "content",
            "ingest",
            "--expected-digest",
            &digest,
            "stopping",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = writer.stdin.as_mut().unwrap();
        stdin.write_all(&data[..MIB as usize]).unwrap();
        stdin.flush().unwrap();
    }
    let offset = || {
        rig.env
            .ok(&rig.root, &["ingest", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["ref"].as_str().is_some_and(|r| r.ends_with("/stopping")))
            .map(|s| s["offset"].as_u64().unwrap_or(0))
            .max()
    };
    assert!(
        poll(Duration::from_secs(20), Duration::from_millis(10), || {
            offset().is_some_and(|o| o > 0)
        }),
        "the write reaches the root"
    );
    // SIGTERM while the stream is open: the server exits 0 and the bytes stay an ingest.
    rig.serve.stop();
    let _ = writer.kill();
    let _ = writer.wait();
    let kept = offset().expect("the ingest is kept");
    assert!(kept > 0, "its bytes are kept");
    assert!(!rig.content().contains(&digest));
    rig.fsck_clean();
    // Server and containerd back: the same ingest run again from a file resumes and commits.
    rig.serve = Serve::start(&rig.env, &rig.root, &rig.env.path("content.sock"), "serve2");
    rig.ctd.restart();
    let file = rig.env.path("data");
    std::fs::write(&file, &data).unwrap();
    rig.ingest_file("stopping", &digest, &file);
    assert_eq!(rig.ctr_get(&digest), data);
    rig.fsck_clean();
}

#[test]
#[ignore = "needs containerd; run by .ci/run's interop suite"]
fn the_server_stays_small_while_containerd_writes_a_gigabyte() {
    let mut rig = Rig::new();
    let file = rig.env.path("big");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let block: Vec<u8> = (0..MIB as usize).map(|i| (i * 31 % 253) as u8).collect();
        for i in 0..1024u32 {
            let mut b = block.clone();
            b[..4].copy_from_slice(&i.to_le_bytes());
            f.write_all(&b).unwrap();
        }
    }
    let started = Instant::now();
    let out = rig
        .ctr_cmd(&["content", "ingest", "big-layer"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "containerd wrote 1 GiB through ocistore in {:?}",
        started.elapsed()
    );
    let kib = rig.serve.stop();
    println!("peak RSS of ocistore serve while containerd wrote 1 GiB: {kib} KiB");
    assert!(kib > 1024, "a measurement: {kib} KiB");
    assert!(
        kib < 64 * 1024,
        "ocistore serve stays under 64 MiB: {kib} KiB"
    );
}

#[test]
#[ignore = "needs containerd; run by .ci/run's interop suite"]
fn the_socket_is_claimed_and_released_with_care() {
    let env = Env::new();
    let root = env.path("store");
    let sock = env.path("content.sock");
    let mut serve = Serve::start(&env, &root, &sock, "one");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "the socket's mode");
    // A live server's socket is refused.
    let r = env.run(&root, &["serve", "--containerd", p(&sock)]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("already listening"), "{}", r.stderr);
    // A stale one (its server killed) is replaced.
    serve.kill9();
    assert!(sock.exists(), "a killed server leaves its socket");
    let mut serve = Serve::start(&env, &root, &sock, "two");
    serve.stop();
    // Something else at the path is never replaced.
    std::fs::write(&sock, b"not a socket").unwrap();
    let r = env.run(&root, &["serve", "--containerd", p(&sock)]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
}

impl Rig {
    /// `ctr --address <this containerd> ARGS`, not yet run.
    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.ctd.sock()).args(args);
        c
    }

    /// `ctr content ingest --expected-digest DIGEST REFERENCE < FILE`, which must succeed
    /// (a resumed ingest seeks past the bytes it has).
    fn ingest_file(&self, reference: &str, digest: &str, file: &Path) {
        let out = self
            .ctr_cmd(&["content", "ingest", "--expected-digest", digest, reference])
            .stdin(std::fs::File::open(file).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
