//! containerd as a plain process with its own root, state and socket (see PEERS.md), for the
//! interop, registry and containerd areas (`crate::private_containerd`). Killed on drop.

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
    /// Starts one with its built-in content store and waits (up to 30 s) until `ctr version`
    /// answers.
    #[allow(dead_code)]
    pub fn start() -> Containerd {
        Containerd::start_with(None)
    }

    /// Starts one whose content store is the proxy plugin at `content` (`ocistore serve
    /// --containerd`), with the built-in store disabled.
    #[allow(dead_code)]
    pub fn start_on(content: &std::path::Path) -> Containerd {
        Containerd::start_with(Some(content))
    }

    fn start_with(content: Option<&std::path::Path>) -> Containerd {
        need("containerd");
        need("ctr");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let (builtin, proxy) = match content {
            Some(c) => (
                "\n  \"io.containerd.content.v1.content\",",
                format!(
                    "[proxy_plugins]\n  [proxy_plugins.ocistore]\n    type = \"content\"\n    \
                     address = \"{}\"\n",
                    c.display()
                ),
            ),
            None => ("", String::new()),
        };
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{builtin}
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
{proxy}"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let child = spawn(d);
        let ctd = Containerd {
            child,
            sock,
            _dir: dir,
        };
        ctd.wait_ready();
        ctd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.raw(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(self._dir.path().join("containerd.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills it (SIGKILL) and starts it again on the same root, state and config.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self._dir.path());
        self.wait_ready();
    }

    /// Its socket.
    #[allow(dead_code)]
    pub fn sock(&self) -> &std::path::Path {
        &self.sock
    }

    /// Its log so far.
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address <socket> <args>`, whatever its outcome.
    #[allow(dead_code)]
    pub fn try_ctr(&self, args: &[&str]) -> Output {
        self.raw(args)
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

/// Starts containerd on the config in `dir`, logging (appending) to `dir/containerd.log`.
fn spawn(dir: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start containerd")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
