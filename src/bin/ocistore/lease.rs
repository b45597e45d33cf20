//! `ocistore lease ...` and `ocistore gc`.

use std::time::SystemTime;

use clap::{Args, Subcommand};
use ocistore::gc;
use ocistore::query::rfc3339;
use ocistore::{Lease, Resource};
use serde_json::{Value, json};

use crate::content::parse_labels;
use crate::output::{human_size, labels_cell, print_json, table};
use crate::{Ctx, Failure};

#[derive(Subcommand)]
pub enum LeaseCmd {
    /// Create a lease, optionally holding resources from the start
    Create {
        /// The lease id
        id: String,
        /// Expire after this long (e.g. 30m, 24h); never when absent
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// A label (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A resource to hold: content:<digest>, ingest:<ref> or name:<reference> (repeatable)
        #[arg(long = "resource", value_name = "KIND:VALUE")]
        resources: Vec<String>,
    },
    /// List leases with what they hold
    Ls,
    /// Delete leases (what they held becomes collectable)
    Rm {
        /// Lease ids
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Add resources to a lease
    Add {
        /// The lease id
        id: String,
        /// content:<digest>, ingest:<ref> or name:<reference>
        #[arg(required = true)]
        resources: Vec<String>,
    },
    /// Remove resources from a lease
    Release {
        /// The lease id
        id: String,
        /// content:<digest>, ingest:<ref> or name:<reference>
        #[arg(required = true)]
        resources: Vec<String>,
    },
}

#[derive(Args)]
pub struct GcArgs {
    /// List what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Ingests idle for longer than this (held by no writer, no lease) are removed
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    ingest_expiry: String,
}

fn lease_json(l: &Lease, resources: &[Resource]) -> Value {
    json!({
        "id": l.id,
        "created_at": rfc3339(l.created_at),
        "expires_at": l.expires_at.map(rfc3339),
        "labels": l.labels,
        "owner": l.owner.as_ref().map(|o| json!({"id": o.id, "pid": o.pid, "alive": o.alive})),
        "resources": resources.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// "pid 123, alive" for a lease a process holds for itself, "-" for a user's lease.
fn owner_cell(l: &Lease) -> String {
    match &l.owner {
        None => "-".into(),
        Some(o) => {
            let state = if o.alive { "alive" } else { "dead" };
            match o.pid {
                Some(pid) => format!("pid {pid}, {state}"),
                None => state.into(),
            }
        }
    }
}

pub fn run(ctx: &Ctx, cmd: LeaseCmd) -> Result<(), Failure> {
    let store = if matches!(cmd, LeaseCmd::Ls) {
        ctx.open_to_read()?
    } else {
        ctx.open()?
    };
    match cmd {
        LeaseCmd::Create {
            id,
            expires_in,
            labels,
            resources,
        } => {
            let expires = expires_in
                .as_deref()
                .map(crate::output::parse_duration)
                .transpose()?
                .map(|d| SystemTime::now() + d);
            let labels = parse_labels(&labels, false)?;
            let resources: Vec<Resource> = resources
                .iter()
                .map(|r| Resource::parse(r))
                .collect::<Result<_, _>>()?;
            let lease = store.create_lease(&id, expires, labels)?;
            for r in &resources {
                store.add_lease_resource(&id, r)?;
            }
            if ctx.json {
                print_json(&lease_json(&lease, &resources));
            } else {
                crate::outln!("{id}");
            }
        }
        LeaseCmd::Ls => {
            let mut rows = Vec::new();
            let mut out = Vec::new();
            for l in store.leases()? {
                let res = store.lease_resources(&l.id)?;
                rows.push(vec![
                    l.id.clone(),
                    rfc3339(l.created_at),
                    l.expires_at.map_or_else(|| "never".into(), rfc3339),
                    res.len().to_string(),
                    owner_cell(&l),
                    labels_cell(&l.labels),
                ]);
                out.push(lease_json(&l, &res));
            }
            if ctx.json {
                print_json(&Value::Array(out));
            } else {
                table(
                    &["ID", "CREATED", "EXPIRES", "RESOURCES", "OWNER", "LABELS"],
                    &rows,
                );
            }
        }
        LeaseCmd::Rm { ids } => {
            let mut failed = false;
            for id in &ids {
                match store.delete_lease(id) {
                    Ok(()) => crate::outln!("{id}"),
                    Err(e) => {
                        failed = true;
                        crate::report(&e);
                    }
                }
            }
            if failed {
                return Err(Failure::Reported);
            }
        }
        LeaseCmd::Add { id, resources } => {
            for r in &resources {
                store.add_lease_resource(&id, &Resource::parse(r)?)?;
            }
        }
        LeaseCmd::Release { id, resources } => {
            for r in &resources {
                store.remove_lease_resource(&id, &Resource::parse(r)?)?;
            }
        }
    }
    Ok(())
}

pub fn gc(ctx: &Ctx, args: GcArgs) -> Result<(), Failure> {
    let store = ctx.open()?;
    let opts = gc::Options {
        dry_run: args.dry_run,
        ingest_expiry: crate::output::parse_duration(&args.ingest_expiry)?,
    };
    let outcome = store.gc(&opts)?;
    if ctx.json {
        print_json(&json!({
            "dry_run": args.dry_run,
            "removed": outcome.removed,
            "bytes_freed": outcome.bytes_freed,
        }));
        return Ok(());
    }
    // Fixed widths (a kind, a sha256 digest; a longer id widens its own row), so that a
    // collection of half a million blobs is written as it is read, not laid out first.
    let (w0, w1) = ("content".len(), "sha256:".len() + 64);
    crate::output::with_stdout(|o| {
        use std::io::Write;
        crate::output::cell(o, "KIND", w0)?;
        crate::output::cell(o, "ID", w1)?;
        o.write_all(b"SIZE\n")?;
        for r in &outcome.removed {
            crate::output::cell(o, r.kind, w0)?;
            crate::output::cell(o, &r.id, w1)?;
            o.write_all(crate::output::size_cell(r.bytes).as_str().as_bytes())?;
            o.write_all(b"\n")?;
        }
        Ok(())
    });
    crate::outln!(
        "{} {} item(s), {}",
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        outcome.removed.len(),
        human_size(outcome.bytes_freed)
    );
    Ok(())
}
