//! Output forms shared by the commands: tables, JSON values, sizes and ages.

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::Mutex;
use std::time::SystemTime;

use ocistore::query::rfc3339;
use ocistore::{Info, Status};
use serde_json::{Value, json};

/// Everything the commands print goes through one buffer (64 KiB), written in large
/// pieces: a listing of a million lines costs a few hundred `write` calls, not a million.
/// [`flush`] empties it; `main` calls it before exiting and before printing an error.
static OUT: Mutex<Option<BufWriter<Stdout>>> = Mutex::new(None);

/// Runs `f` on the shared stdout buffer. A reader that went away (a closed pipe: `| head`)
/// ends the command quietly with exit 0, as `ls | head` does; any other write error ends it
/// with exit 1, naming it.
pub fn with_stdout<T>(f: impl FnOnce(&mut BufWriter<Stdout>) -> io::Result<T>) -> T {
    let mut guard = OUT.lock().unwrap_or_else(|p| p.into_inner());
    let out = guard.get_or_insert_with(|| BufWriter::with_capacity(1 << 16, io::stdout()));
    match f(out) {
        Ok(v) => v,
        Err(e) => stdout_failed(&e),
    }
}

/// Writes what is buffered for stdout.
pub fn flush() {
    let mut guard = OUT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(out) = guard.as_mut()
        && let Err(e) = out.flush()
    {
        // Nothing is left to write after this: drop the buffer so exit does not retry it.
        let _ = guard.take().map(BufWriter::into_parts);
        stdout_failed(&e);
    }
}

fn stdout_failed(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("ocistore: could not write to stdout: {e}");
    std::process::exit(1);
}

/// `println!` through the shared stdout buffer.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::with_stdout(|o| { use std::io::Write; writeln!(o) }) };
    ($($arg:tt)*) => {
        $crate::output::with_stdout(|o| { use std::io::Write; writeln!(o, $($arg)*) })
    };
}

/// Prints rows as a table with a header, columns padded to their widest cell (the last
/// column is not padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let escaped: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|c| shown(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &escaped {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    with_stdout(|out| {
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            s.clear();
            let mut cells = cells.enumerate().peekable();
            while let Some((i, c)) = cells.next() {
                s.push_str(c);
                if cells.peek().is_some() {
                    let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.write_all(s.trim_end().as_bytes())?;
            writeln!(out)
        };
        line(&mut header.iter().copied())?;
        for row in &escaped {
            line(&mut row.iter().map(|c| &**c))?;
        }
        Ok(())
    })
}

/// A JSON array written as its elements come, one compact element a line: a listing of a
/// million elements builds no tree and holds nothing. [`JsonLines::finish`] closes it.
pub struct JsonLines {
    first: bool,
}

impl Default for JsonLines {
    fn default() -> Self {
        JsonLines::new()
    }
}

impl JsonLines {
    pub fn new() -> JsonLines {
        JsonLines { first: true }
    }

    /// Writes one element.
    pub fn item(&mut self, item: &impl serde::Serialize) {
        let sep: &[u8] = if self.first { b"[\n" } else { b",\n" };
        self.first = false;
        with_stdout(|o| {
            o.write_all(sep)?;
            serde_json::to_writer(&mut *o, item).map_err(io::Error::from)
        });
    }

    /// Closes the array (`[]` when nothing came).
    pub fn finish(self) {
        with_stdout(|o| o.write_all(if self.first { b"[]\n" } else { b"\n]\n" }));
    }
}

/// Prints `items` as a [`JsonLines`] array.
pub fn print_json_lines<T: serde::Serialize>(items: impl IntoIterator<Item = T>) {
    let mut lines = JsonLines::new();
    for item in items {
        lines.item(&item);
    }
    lines.finish();
}

/// Prints a JSON value, pretty, followed by a newline.
pub fn print_json(v: &Value) {
    with_stdout(|out| {
        serde_json::to_writer_pretty(&mut *out, v).map_err(io::Error::from)?;
        writeln!(out)
    })
}

/// The JSON form of a blob's info.
pub fn info_json(i: &Info) -> Value {
    json!({
        "digest": i.digest.to_string(),
        "size": i.size,
        "created_at": rfc3339(i.created_at),
        "updated_at": rfc3339(i.updated_at),
        "labels": i.labels,
    })
}

/// The JSON form of an ingest's status.
pub fn status_json(s: &Status) -> Value {
    json!({
        "ref": s.reference,
        "offset": s.offset,
        "total": s.total,
        "expected": s.expected.as_ref().map(ToString::to_string),
        "started_at": rfc3339(s.started_at),
        "updated_at": rfc3339(s.updated_at),
    })
}

/// `s` as a terminal should show it: every control character (ESC, BEL, NUL, a newline,
/// DEL, C1) escaped as `\u{1b}`, so that a string read from a registry or a label can neither
/// drive the terminal nor forge a line. Borrowed when there is nothing to escape.
pub fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    // Printable ASCII (the common case: digests, sizes, names) is told by one pass over the
    // bytes; anything else is looked at char by char.
    let plain = s.bytes().fold(true, |ok, b| ok & (0x20..0x7f).contains(&b));
    if plain || !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes `s` padded with blanks to `width` (control characters escaped, see [`shown`]), then the three blanks between columns.
pub fn cell(out: &mut impl Write, s: &str, width: usize) -> io::Result<()> {
    const BLANKS: &[u8; 64] = &[b' '; 64];
    let s = shown(s);
    out.write_all(s.as_bytes())?;
    let mut pad = width.saturating_sub(s.len()) + 3;
    while pad > 0 {
        let n = pad.min(BLANKS.len());
        out.write_all(&BLANKS[..n])?;
        pad -= n;
    }
    Ok(())
}

/// A short table cell formatted on the stack: listings of a million rows format their sizes
/// and ages without a heap allocation each.
pub struct Cell {
    buf: [u8; 40],
    len: usize,
}

impl Cell {
    fn new() -> Cell {
        Cell {
            buf: [0; 40],
            len: 0,
        }
    }

    /// Appends `n` in decimal, by hand: cells are formatted once a row of a listing of a
    /// million, where `write!` is a tenth of the time.
    fn push_u64(&mut self, n: u64) {
        use std::fmt::Write as _;
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let _ = self.write_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: only whole `&str`s are ever copied in (`write_str`), so the first `len`
        // bytes are valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) }
    }
}

impl std::fmt::Write for Cell {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// "1.5 MiB", "512 B".
pub fn human_size(n: u64) -> String {
    size_cell(n).as_str().to_owned()
}

/// [`human_size`] as a [`Cell`].
pub fn size_cell(n: u64) -> Cell {
    use std::fmt::Write as _;
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut c = Cell::new();
    if n < 1024 {
        c.push_u64(n);
        let _ = c.write_str(" B");
        return c;
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let _ = write!(c, "{v:.1} {}", UNITS[unit]);
    c
}

/// "3 seconds ago", "2 hours ago": the age of `t` at `now`, as a [`Cell`].
pub fn age_cell(t: SystemTime, now: SystemTime) -> Cell {
    use std::fmt::Write as _;
    let secs = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    let mut c = Cell::new();
    c.push_u64(n);
    for part in [" ", unit, if n == 1 { "" } else { "s" }, " ago"] {
        let _ = c.write_str(part);
    }
    c
}

/// Labels as `k=v,k2=v2`, written straight into `out`, control characters escaped.
pub fn write_labels(out: &mut impl Write, labels: &ocistore::Labels) -> io::Result<()> {
    for (n, (k, v)) in labels.iter().enumerate() {
        if n > 0 {
            out.write_all(b",")?;
        }
        out.write_all(shown(k).as_bytes())?;
        out.write_all(b"=")?;
        out.write_all(shown(v).as_bytes())?;
    }
    Ok(())
}

/// Labels as `k=v,k2=v2`.
pub fn labels_cell(labels: &ocistore::Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A byte-count progress bar on stderr, when stderr is a terminal.
pub fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

/// Parses a size such as `64GiB`, `500MB`, `4096` (bytes).
/// A duration such as `90s`, `48h`, `7days`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, ocistore::Error> {
    humantime::parse_duration(s)
        .map_err(|e| ocistore::Error::InvalidArgument(format!("duration {s:?}: {e}")))
}

pub fn parse_size(s: &str) -> Result<u64, ocistore::Error> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "K" => 1000,
        "KiB" => 1 << 10,
        "MB" | "M" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" | "G" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" | "T" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => {
            return Err(ocistore::Error::InvalidArgument(format!(
                "size {s:?}: unknown unit"
            )));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            ocistore::Error::InvalidArgument(format!("size {s:?} is not a number of bytes"))
        })
}

/// Referrers as `image referrers` and `remote referrers` show them: a table of DIGEST,
/// ARTIFACT-TYPE, SIZE and CREATED (the `org.opencontainers.image.created` annotation), or
/// with `json` a list of `{"digest","media_type","artifact_type","size","annotations",
/// "subject"}`.
pub fn print_referrers(json: bool, found: &[ocistore::store::referrers::Referrer]) {
    if json {
        // One entry at a time: a listing of 100,000 is not built twice in memory.
        let mut lines = JsonLines::new();
        for r in found {
            lines.item(&serde_json::json!({
                "digest": r.digest.to_string(),
                "media_type": r.media_type,
                "artifact_type": r.artifact_type,
                "size": r.size,
                "annotations": r.annotations,
                "subject": r.subject.to_string(),
            }));
        }
        lines.finish();
        return;
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|r| {
            vec![
                r.digest.to_string(),
                shown(r.artifact_type.as_deref().unwrap_or("-")).into_owned(),
                human_size(r.size),
                shown(
                    r.annotations
                        .get("org.opencontainers.image.created")
                        .map_or("-", String::as_str),
                )
                .into_owned(),
            ]
        })
        .collect();
    table(&["DIGEST", "ARTIFACT-TYPE", "SIZE", "CREATED"], &rows);
}
