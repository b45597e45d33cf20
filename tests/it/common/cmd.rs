//! The one way the tests run the `ocistore` binary (ripgrep's `TestCommand` habit): a small
//! builder over [`Command`] for `ocistore --root <root> <args>`, with the environment, the
//! bytes on stdin and the exit code expected; it runs the command to its end, in the
//! background, or as a grandchild whose peak resident memory is measured ([`rss`]). Each test
//! area uses what it needs of it (`crate::cmd`).

#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

#[path = "rss.rs"]
pub mod rss;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ocistore");

/// `ocistore --root <root> <args>`, not yet run: its stdin empty, exit 0 expected.
pub fn ocistore(root: &Path, args: &[&str]) -> Ocistore {
    Ocistore {
        root: root.to_owned(),
        args: args.iter().map(OsString::from).collect(),
        env: Vec::new(),
        stdin: None,
        code: 0,
    }
}

/// A command line of the `ocistore` binary; see [`ocistore`].
pub struct Ocistore {
    root: PathBuf,
    args: Vec<OsString>,
    /// Set (`Some`) or removed (`None`), in order.
    env: Vec<(OsString, Option<OsString>)>,
    stdin: Option<Vec<u8>>,
    code: i32,
}

impl Ocistore {
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        let value = Some(value.as_ref().to_owned());
        self.env.push((key.as_ref().to_owned(), value));
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// What the command reads on stdin (else nothing).
    pub fn stdin(&mut self, bytes: &[u8]) -> &mut Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    /// The exit code [`Ocistore::output`] and what builds on it assert (else 0).
    pub fn code(&mut self, code: i32) -> &mut Self {
        self.code = code;
        self
    }

    /// The command, not yet started: its stdin empty, its stdout and stderr as [`Command`]
    /// leaves them.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--root")
            .arg(&self.root)
            .args(&self.args)
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// Runs it to its end, whatever its exit code; stdout and stderr captured.
    pub fn raw_output(&mut self) -> Output {
        let mut cmd = self.command();
        if self.stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        // Fed from a thread, so that a command writing much while it reads cannot deadlock;
        // one that exits without reading all of it is no failure of the feeding.
        let feeder = self.stdin.clone().map(|bytes| {
            let mut pipe = child.stdin.take().expect("a piped stdin");
            std::thread::spawn(move || match pipe.write_all(&bytes) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    panic!("write the stdin of ocistore: {e}")
                }
                _ => {}
            })
        });
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"));
        if let Some(feeder) = feeder {
            feeder.join().unwrap();
        }
        out
    }

    /// Runs it to its end; fails the test, showing the command, its stdout and its stderr,
    /// unless it exits with the expected code.
    pub fn output(&mut self) -> Output {
        let out = self.raw_output();
        assert_eq!(
            out.status.code(),
            Some(self.code),
            "{:?}: exit {:?}, expected {}\nstdout: {}\nstderr: {}",
            self.command(),
            out.status,
            self.code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// [`Ocistore::output`]'s stdout, as text.
    pub fn stdout(&mut self) -> String {
        String::from_utf8(self.output().stdout).expect("ocistore writes UTF-8")
    }

    /// [`Ocistore::output`]'s stdout, as the JSON it must be (the arguments say `--json`).
    pub fn json(&mut self) -> Value {
        let out = self.stdout();
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{:?} printed no JSON ({e}): {out}", self.command()))
    }

    /// Starts it in the background, its stdin, stdout and stderr pipes: for the tests that
    /// write to it while it runs, or kill it.
    pub fn spawn(&mut self) -> Child {
        let mut cmd = self.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
    }

    /// Starts it as a grandchild whose peak resident memory [`rss::wait`] tells (see
    /// [`rss::start`]), its stdout and stderr going to the files `out` and `err`, its stdin a
    /// pipe (`piped`, in [`rss::Measured::stdin`]) or empty.
    pub fn measure(&self, out: &Path, err: &Path, piped: bool) -> rss::Measured {
        rss::start(&self.command(), out, err, piped)
    }
}
