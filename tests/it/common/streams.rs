//! Every command at once: loops of separate ocistore processes on one store, one thread per
//! kind of command, optionally with a random one killed every so often. Shared by the
//! maintenance and registry suites (each loads this file with `#[path]`).

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The JSON a `--json` command printed.
pub fn json_of(out: &Output) -> Result<Value, String> {
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", describe(out)))
}

/// A `--json fsck` run that exited 0 and reported no problem at all.
pub fn fsck_output_clean(out: &Output) -> Result<Value, String> {
    let v = json_of(out)?;
    let problems = v["problems"].as_array().map_or(usize::MAX, Vec::len);
    if out.status.success() && problems == 0 {
        Ok(v)
    } else {
        Err(format!("fsck not clean: {}", describe(out)))
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// "exit 1: <stderr>", for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr).trim()
    )
}

/// One kind of command run over and over, each run a new process, by one thread.
pub struct Stream {
    pub name: &'static str,
    /// The arguments of run `i`.
    pub args: Box<dyn Fn(usize) -> Vec<String> + Send + Sync>,
    /// Whether a failure is the right answer to a race (say, tagging a name another process
    /// just removed), told by its stderr.
    pub expected_failure: fn(&str) -> bool,
    /// Output that must hold when the run succeeded.
    pub check: fn(&Output) -> Result<(), String>,
}

/// gc, prune to `max_used`, read-only fsck and `fsck --repair`: none may fail, and neither
/// fsck may find anything wrong.
pub fn maintenance(max_used: &'static str) -> Vec<Stream> {
    vec![
        Stream {
            name: "gc",
            args: Box::new(|_| owned(&["gc"])),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "prune",
            args: Box::new(move |_| owned(&["prune", "--max-used", max_used])),
            expected_failure: never,
            check: succeeded,
        },
        Stream {
            name: "fsck",
            args: Box::new(|_| owned(&["--json", "fsck"])),
            expected_failure: never,
            check: found_nothing,
        },
        Stream {
            name: "fsck --repair",
            args: Box::new(|_| owned(&["--json", "fsck", "--repair"])),
            expected_failure: never,
            check: found_nothing,
        },
    ]
}

pub fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

pub fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_owned()
}

/// No failure is expected.
pub fn never(_: &str) -> bool {
    false
}

/// One line of stderr, beginning with `start` and ending with `end`.
pub fn one_line(stderr: &str, start: &str, end: &str) -> bool {
    let e = stderr.trim();
    e.lines().count() == 1 && e.starts_with(start) && e.ends_with(end)
}

/// "image NAME not found" and nothing else.
pub fn name_not_found(stderr: &str) -> bool {
    one_line(stderr, "ocistore: image ", " not found")
}

pub fn succeeded(_: &Output) -> Result<(), String> {
    Ok(())
}

pub fn found_nothing(out: &Output) -> Result<(), String> {
    fsck_output_clean(out).map(drop)
}

/// What the streams of one phase did.
#[derive(Default)]
pub struct Tally {
    pub runs: usize,
    pub expected_failures: usize,
    pub killed: usize,
    pub failures: Vec<String>,
    /// Per stream: runs, and runs that succeeded.
    pub by_stream: std::collections::BTreeMap<&'static str, (usize, usize)>,
}

impl Tally {
    /// Prints the counts; fails the test with every unexpected failure.
    pub fn report(&self, phase: &str) {
        println!(
            "{phase}: {} runs, {} killed, {} failed as their race called for",
            self.runs, self.killed, self.expected_failures
        );
        let each: Vec<String> = (self.by_stream.iter())
            .map(|(name, (runs, ok))| format!("{name} {ok}/{runs}"))
            .collect();
        println!("  succeeded: {}", each.join(", "));
        assert!(
            self.failures.is_empty(),
            "{phase}: {} of {} runs failed:\n{}",
            self.failures.len(),
            self.runs,
            self.failures.join("\n")
        );
    }
}

/// Runs every stream on its own thread for `length`, a process at a time; with `kill_every`,
/// a random stream's running process is killed (SIGKILL) that often. A run that fails is
/// reported unless its stderr says one of its stream's expected failures, or it was killed,
/// or (when processes are killed) it is an fsck that found what a killed process leaves:
/// debris (a remover killed between its transaction and its files), or metadata waiting for
/// a writer to recover it.
pub fn run_streams(
    command: &(dyn Fn(&[&str]) -> Command + Sync),
    scratch: &Path,
    streams: &[Stream],
    length: Duration,
    kill_every: Option<Duration>,
) -> Tally {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let deadline = Instant::now() + length;
    let kill: Vec<AtomicBool> = streams.iter().map(|_| AtomicBool::new(false)).collect();
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for (n, stream) in streams.iter().enumerate() {
            let (kill, tally) = (&kill[n], &tally);
            s.spawn(move || {
                let out_path = scratch.join(format!("stream-{n}.out"));
                let err_path = scratch.join(format!("stream-{n}.err"));
                let mut i = 0;
                while Instant::now() < deadline && i < 100_000 {
                    let args = (stream.args)(i);
                    i += 1;
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let mut child = command(&args)
                        .stdout(fs::File::create(&out_path).unwrap())
                        .stderr(fs::File::create(&err_path).unwrap())
                        .spawn()
                        .unwrap();
                    kill.store(false, Ordering::Relaxed);
                    let status = loop {
                        if let Some(status) = child.try_wait().unwrap() {
                            break status;
                        }
                        if kill.swap(false, Ordering::Relaxed) {
                            let _ = child.kill();
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    };
                    let out = Output {
                        status,
                        stdout: fs::read(&out_path).unwrap(),
                        stderr: fs::read(&err_path).unwrap(),
                    };
                    let mut t = tally.lock().unwrap();
                    t.runs += 1;
                    let counts = t.by_stream.entry(stream.name).or_default();
                    counts.0 += 1;
                    counts.1 += usize::from(status.success());
                    if status.code().is_none() {
                        t.killed += 1;
                        continue;
                    }
                    let err = text(&out.stderr);
                    let verdict = if status.success() {
                        (stream.check)(&out)
                    } else if (stream.expected_failure)(&err) {
                        t.expected_failures += 1;
                        Ok(())
                    } else {
                        Err(describe(&out))
                    };
                    let after_a_kill = kill_every.is_some()
                        && stream.name.starts_with("fsck")
                        && (err.contains("needs recovery")
                            || json_of(&out).is_ok_and(|v| {
                                v["problems"]
                                    .as_array()
                                    .is_some_and(|p| p.iter().all(|p| p["kind"] == "debris"))
                            }));
                    if let Err(e) = verdict
                        && !after_a_kill
                    {
                        t.failures.push(format!("{} {args:?}: {e}", stream.name));
                    }
                }
            });
        }
        if let Some(every) = kill_every {
            let kill = &kill;
            s.spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
                while Instant::now() < deadline {
                    std::thread::sleep(every);
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let n = usize::try_from(seed % kill.len() as u64).unwrap();
                    kill[n].store(true, Ordering::Relaxed);
                }
            });
        }
    });
    tally.into_inner().unwrap()
}
