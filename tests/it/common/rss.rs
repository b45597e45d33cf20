//! Peak resident memory of a command, for the tests that hold memory flat.
//!
//! Not from a child of the test process: Linux starts a process's `ru_maxrss` at the
//! high-water mark of the address space it execs from, which for std's (v)fork-and-exec is
//! the test process's, and that is whatever the tests that ran before in it, or beside it on
//! other threads, left (tests that built layers of up to 64 MiB in memory made a directly
//! spawned `ocistore` report 360 MiB; a CI run reported 183 MiB for a decompression that peaks
//! under 20). So a fresh `sh` starts the command in the background and exits; the test
//! process, a child subreaper, adopts the command and reaps it with `wait4`: what that
//! reports is the command's own peak.

use std::io::Read;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Once;

/// A command started by [`start`], not yet reaped.
pub struct Measured {
    pub pid: libc::pid_t,
    /// Its standard input, when [`start`] was asked for a pipe.
    #[allow(dead_code)] // only tests/it/cli.rs pipes one
    pub stdin: Option<ChildStdin>,
}

/// Starts `cmd` (its program, arguments and environment) as described in the module docs,
/// its standard output and error going to the files `out` and `err`, its standard input a
/// pipe (`piped`) or empty.
pub fn start(cmd: &Command, out: &Path, err: &Path, piped: bool) -> Measured {
    // Once, for the whole process: tests run side by side, and turning it off after one of
    // them would hand another's command to init. What else it adopts is reaped by init's
    // rules only at this process's exit, which is soon.
    static SUBREAPER: Once = Once::new();
    SUBREAPER.call_once(|| {
        // SAFETY: prctl with these arguments only sets a flag on this process.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
    });
    // An asynchronous list's standard input is /dev/null unless redirected: fd 3 carries
    // sh's own to it.
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("exec 3<&0; \"$@\" <&3 >\"$RSS_OUT\" 2>\"$RSS_ERR\" 3<&- & echo $!")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("RSS_OUT", out)
        .env("RSS_ERR", err)
        .stdin(if piped { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped());
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let mut child = sh.spawn().expect("run sh");
    // Taken before the wait, which would close it.
    let stdin = child.stdin.take();
    let mut said = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(child.wait().unwrap().success(), "sh failed: {said}");
    let pid = said
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("sh did not start the command in the background: {said:?}"));
    Measured { pid, stdin }
}

/// Waits for a command [`start`] started that must succeed (else the test fails with what
/// it wrote to `err`) and stay under `limit_kib` of resident memory while doing `what`;
/// prints its peak and returns it, in KiB.
#[allow(dead_code)] // not every test crate that includes this holds memory flat
pub fn succeeds_within(measured: &Measured, err: &Path, limit_kib: i64, what: &str) -> i64 {
    let (status, kib) = wait(measured.pid);
    let said = std::fs::read_to_string(err).unwrap_or_default();
    assert_eq!(status, Some(0), "{what}: {said}");
    println!("peak RSS {what}: {kib} KiB");
    assert!(kib > 1024, "{what}: a measurement, not a zero: {kib} KiB");
    assert!(kib < limit_kib, "peak RSS {kib} KiB {what}");
    kib
}

/// Waits for a command [`start`] started: its exit code (`None` when a signal ended it) and
/// its peak resident memory in KiB.
pub fn wait(pid: libc::pid_t) -> (Option<i32>, i64) {
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child (adopted), not yet waited for; both pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(
        r,
        pid,
        "wait4 of {pid}: {}",
        std::io::Error::last_os_error()
    );
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, usage.ru_maxrss)
}
