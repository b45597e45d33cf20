//! `ocistore prune`: bring the store inside a size budget, least recently used first.

use clap::Args;
use ocistore::prune;
use serde_json::json;

use crate::output::{human_size, parse_duration, parse_size, print_json, table};
use crate::{Ctx, Failure};

#[derive(Args)]
pub struct PruneArgs {
    /// Remove until blobs use at most this much, e.g. 10GiB
    #[arg(long, value_name = "SIZE")]
    max_used: Option<String>,
    /// Remove until the file system has at least this much available
    #[arg(long, value_name = "SIZE")]
    min_free: Option<String>,
    /// Keep images and unnamed blobs used within this long, e.g. 48h
    #[arg(long, value_name = "DURATION")]
    keep_duration: Option<String>,
    /// Only images matching a filter may go (fields: name, target.digest,
    /// target.mediatype, labels.<key>); repeatable, OR-ed
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// List what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Ingests idle this long (held by no writer, no lease) are removed
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    ingest_expiry: String,
}

pub fn prune(ctx: &Ctx, args: PruneArgs) -> Result<(), Failure> {
    let opts = prune::Options {
        max_used: args.max_used.as_deref().map(parse_size).transpose()?,
        min_free: args.min_free.as_deref().map(parse_size).transpose()?,
        keep_duration: args
            .keep_duration
            .as_deref()
            .map(parse_duration)
            .transpose()?,
        filters: args.filters,
        dry_run: args.dry_run,
        ingest_expiry: parse_duration(&args.ingest_expiry)?,
    };
    let store = ctx.open()?;
    let out = store.prune(&opts)?;
    if ctx.json {
        print_json(&json!({
            "dry_run": opts.dry_run,
            "removed_images": out.removed_images,
            "removed_blobs": out.removed_blobs,
            "bytes_freed": out.bytes_freed,
            "used_before": out.used_before,
            "used_after": out.used_after,
            "budget_reached": out.budget_reached,
            "held": out.held,
            "removed": out.removed,
        }));
    } else {
        let verb = if opts.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let rows: Vec<Vec<String>> = out
            .removed_images
            .iter()
            .map(|n| vec!["image".to_owned(), n.clone()])
            .collect();
        if !rows.is_empty() {
            table(&["KIND", "NAME"], &rows);
        }
        crate::outln!(
            "{verb} {} image(s), {} blob(s), {} ingest(s); {} freed; blobs {} -> {}",
            out.removed_images.len(),
            out.removed_blobs,
            out.removed.iter().filter(|r| r.kind == "ingest").count(),
            human_size(out.bytes_freed),
            human_size(out.used_before),
            human_size(out.used_after),
        );
    }
    if !out.budget_reached {
        eprintln!("ocistore: warning: the budget was not reached; kept:");
        for h in &out.held {
            eprintln!("  {} ({}): {}", h.what, h.why, human_size(h.bytes));
        }
    }
    Ok(())
}
