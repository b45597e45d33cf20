//! A minimum transfer rate for bodies: a registry that trickles bytes just fast enough to
//! beat the per-read timeout (one byte every 10 s) is cut once fewer than [`MIN_BYTES`]
//! arrive in [`WINDOW`], and the cut is not retried.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// The window the minimum rate is measured over.
pub const WINDOW: Duration = Duration::from_secs(20);
/// Bytes that must arrive in each [`WINDOW`] (16 KiB: under 1 KiB/s passes no one honest).
pub const MIN_BYTES: u64 = 16 << 10;

/// Why a body was cut: slower than the minimum rate.
#[derive(Debug)]
pub struct TooSlow {
    got: u64,
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the transfer is slower than the minimum rate: {} bytes in {} s, fewer than {MIN_BYTES}",
            self.got,
            WINDOW.as_secs()
        )
    }
}

impl std::error::Error for TooSlow {}

/// Why a body was cut: the command's deadline ([`super::RegistryOptions::deadline`]) passed.
#[derive(Debug)]
pub struct PastDeadline {
    limit: Duration,
}

impl std::fmt::Display for PastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the command's deadline of {} passed (--timeout)",
            humantime::format_duration(self.limit)
        )
    }
}

impl std::error::Error for PastDeadline {}

/// Whether `e` is a [`RateGuard`]'s cut (too slow, or past the deadline): not retried.
pub fn is_too_slow(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<TooSlow>() || inner.is::<PastDeadline>())
}

/// A reader that fails (`TimedOut`, carrying [`TooSlow`]) once a window of [`WINDOW`] passes
/// with fewer than [`MIN_BYTES`] read; each time that many have arrived, a new window begins.
pub struct RateGuard<R> {
    inner: R,
    since: Instant,
    got: u64,
    /// The command's deadline and its length, when it has one.
    deadline: Option<(Instant, Duration)>,
}

impl<R> RateGuard<R> {
    /// Guards `inner`, the window starting now.
    pub fn new(inner: R) -> RateGuard<R> {
        RateGuard {
            inner,
            since: Instant::now(),
            got: 0,
            deadline: None,
        }
    }

    /// Also fails reads once `deadline` (the end of a command of `limit`) has passed.
    pub fn until(mut self, deadline: Option<(Instant, Duration)>) -> RateGuard<R> {
        self.deadline = deadline;
        self
    }
}

impl<R: Read> Read for RateGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((at, limit)) = self.deadline
            && Instant::now() >= at
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                PastDeadline { limit },
            ));
        }
        let n = self.inner.read(buf)?;
        self.got += n as u64;
        if self.got >= MIN_BYTES {
            self.since = Instant::now();
            self.got = 0;
        } else if n > 0 && self.since.elapsed() >= WINDOW {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                TooSlow { got: self.got },
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_body_passes_and_a_stalled_window_is_cut() {
        let mut fast = RateGuard::new(&[7u8; 100_000][..]);
        let mut out = Vec::new();
        fast.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 100_000);
        let mut slow = RateGuard::new(&[1u8; 10][..]);
        slow.since = Instant::now() - WINDOW;
        let e = slow.read(&mut [0u8; 4]).unwrap_err();
        assert!(is_too_slow(&e), "{e}");
        assert!(e.to_string().contains("minimum rate"));
        let past = Some((Instant::now(), Duration::from_secs(90)));
        let mut late = RateGuard::new(&[1u8; 10][..]).until(past);
        let e = late.read(&mut [0u8; 4]).unwrap_err();
        assert!(is_too_slow(&e), "{e}");
        assert!(e.to_string().contains("deadline of 1m 30s"), "{e}");
    }
}
