//! containerd as a plain process with its own root, state and socket (see PEERS.md), for the
//! interop and registry suites (each loads this file with `#[path]`). Killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private containerd and its socket.
pub struct Containerd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

/// Fails the test when `tool` is not installed (CI installs every tool in `.ci/run`).
pub fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "interop tool {tool:?} is not installed (.ci/run installs it: apt-get install \
         skopeo umoci containerd docker-registry apache2-utils openssl)"
    );
}

impl Containerd {
    /// Starts one and waits (up to 30 s) until `ctr version` answers.
    pub fn start() -> Containerd {
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
        let log = d.join("containerd.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start containerd");
        let ctd = Containerd {
            child,
            sock,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ctd.raw(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ctd
    }

    fn raw(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr --address <socket> <args>`, which must succeed.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let out = self.raw(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// [`Containerd::ctr`]'s standard output as text.
    pub fn ctr_text(&self, args: &[&str]) -> String {
        String::from_utf8(self.ctr(args).stdout).unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
