//! `ocistore fsck` and `ocistore du`.

use clap::Args;
use ocistore::{OpenOptions, usage::Part, verify};
use serde_json::json;

use crate::output::{human_size, print_json, table};
use crate::{Ctx, Failure};

#[derive(Args)]
pub struct FsckArgs {
    /// Quarantine corrupt blobs, drop records without files, remove debris and dangling
    /// references (without it, fsck changes nothing on disk)
    #[arg(long, conflicts_with = "rebuild")]
    repair: bool,
    /// Recreate meta.redb from the blob files when it is lost or unreadable (labels and
    /// names are kept when the old file can still be read, else reported lost)
    #[arg(long)]
    rebuild: bool,
    /// With --rebuild: how long to wait for other processes to close the store before
    /// refusing (seconds)
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10.0,
        requires = "rebuild"
    )]
    wait: f64,
}

pub fn fsck(ctx: &Ctx, args: FsckArgs) -> Result<(), Failure> {
    if args.rebuild {
        if !(args.wait.is_finite() && args.wait >= 0.0) {
            return Err(ocistore::Error::InvalidArgument(format!(
                "--wait {}: expected a number of seconds, 0 or more",
                args.wait
            ))
            .into());
        }
        let out = verify::rebuild_with(
            ctx.root(),
            &verify::RebuildOptions {
                wait: std::time::Duration::from_secs_f64(args.wait),
            },
        )?;
        if ctx.json {
            print_json(&serde_json::to_value(&out).unwrap_or_default());
        } else {
            if out.resumed_interrupted {
                crate::outln!("discarded the metadata of an interrupted rebuild and started over");
            }
            if let Some(old) = &out.old_metadata {
                crate::outln!("old metadata kept as {}", old.display());
            }
            crate::outln!(
                "recovered {} blob(s), {} name(s); quarantined {} blob(s)",
                out.blobs_recovered,
                out.names_recovered,
                out.blobs_quarantined
            );
            for l in &out.lost {
                crate::outln!("lost: {l}");
            }
        }
        return Ok(());
    }
    // A plain check opens the store read-only, so that it cannot change a byte or an mtime.
    let store = OpenOptions::new()
        .read_only(!args.repair)
        .open(ctx.root())?;
    let out = store.fsck(&verify::Options {
        repair: args.repair,
    })?;
    let remaining = out.remaining();
    if ctx.json {
        print_json(&json!({
            "blobs_checked": out.blobs_checked,
            "bytes_checked": out.bytes_checked,
            "names_checked": out.names_checked,
            "in_flight": out.in_flight,
            "problems": out.problems,
            "remaining": remaining,
        }));
    } else {
        if !out.problems.is_empty() {
            let rows: Vec<Vec<String>> = out
                .problems
                .iter()
                .map(|p| {
                    vec![
                        p.kind.to_owned(),
                        p.id.clone(),
                        p.path
                            .as_ref()
                            .map_or_else(|| "-".into(), |p| p.display().to_string()),
                        p.detail.clone(),
                        p.repaired.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&["PROBLEM", "ID", "PATH", "DETAIL", "REPAIRED"], &rows);
        }
        let in_flight = if out.in_flight > 0 {
            format!(
                " ({} commit(s) of other processes in flight, not problems)",
                out.in_flight
            )
        } else {
            String::new()
        };
        crate::outln!(
            "checked {} blobs ({}), {} names: {} problem(s), {} remaining{in_flight}",
            out.blobs_checked,
            human_size(out.bytes_checked),
            out.names_checked,
            out.problems.len(),
            remaining
        );
    }
    if remaining > 0 {
        return Err(Failure::Reported);
    }
    Ok(())
}

pub fn du(ctx: &Ctx) -> Result<(), Failure> {
    let store = ctx.open()?;
    let u = store.usage()?;
    if ctx.json {
        print_json(&serde_json::to_value(&u).unwrap_or_default());
        return Ok(());
    }
    let row = |name: &str, p: &Part| {
        vec![
            name.to_owned(),
            p.count.to_string(),
            human_size(p.apparent_bytes),
            human_size(p.allocated_bytes),
        ]
    };
    let mut rows = vec![
        row("blobs", &u.blobs),
        row("ingests", &u.ingests),
        row("metadata", &u.metadata),
    ];
    if let Some(free) = u.metadata_free_bytes {
        rows.push(vec![
            "  free inside metadata".into(),
            "-".into(),
            human_size(free),
            "-".into(),
        ]);
    }
    rows.push(row("total", &u.total));
    table(&["PART", "FILES", "APPARENT", "ALLOCATED"], &rows);
    Ok(())
}
