//! Peak resident memory of a child process, for the tests that hold memory flat.

use std::process::Child;

/// Waits for `child` and returns its exit status and peak resident memory in KiB, from
/// wait4's rusage.
pub fn wait_max_rss(child: &mut Child) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our own child, not yet waited for; both pointers are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}
