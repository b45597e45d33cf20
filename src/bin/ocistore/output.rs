//! Output forms shared by the commands: tables, JSON values, sizes and ages.

use std::io::Write;
use std::time::SystemTime;

use ocistore::query::rfc3339;
use ocistore::{Info, Status};
use serde_json::{Value, json};

/// Prints rows as a table with a header, columns padded to their widest cell (the last
/// column is not padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints a JSON value, pretty, followed by a newline.
pub fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
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

/// "1.5 MiB", "512 B".
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// "3 seconds ago", "2 hours ago".
pub fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
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
