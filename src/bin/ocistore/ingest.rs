//! `ocistore ingest ...`: in-progress ingests.

use clap::Subcommand;
use ocistore::IngestManager;
use ocistore::query::rfc3339;
use serde_json::Value;

use crate::output::{print_json, status_json, table};
use crate::{Ctx, Failure, report};

#[derive(Subcommand)]
pub enum IngestCmd {
    /// List ingests matching any of the filters (fields: ref, expected, offset, total)
    Ls {
        /// Filters such as 'ref~=^build/'; several are OR-ed
        filters: Vec<String>,
    },
    /// Abort ingests and delete their bytes
    Abort {
        /// References to abort
        #[arg(required = true)]
        refs: Vec<String>,
    },
}

pub fn run(ctx: &Ctx, cmd: IngestCmd) -> Result<(), Failure> {
    match cmd {
        IngestCmd::Ls { filters } => {
            let store = ctx.open_to_read()?;
            let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
            let statuses = store.list_statuses(&filters)?;
            if ctx.json {
                print_json(&Value::Array(statuses.iter().map(status_json).collect()));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = statuses
                .iter()
                .map(|s| {
                    vec![
                        s.reference.clone(),
                        s.offset.to_string(),
                        s.total.map_or_else(|| "-".into(), |t| t.to_string()),
                        s.expected
                            .as_ref()
                            .map_or_else(|| "-".into(), ToString::to_string),
                        rfc3339(s.started_at),
                        rfc3339(s.updated_at),
                    ]
                })
                .collect();
            table(
                &["REF", "OFFSET", "TOTAL", "EXPECTED", "STARTED", "UPDATED"],
                &rows,
            );
            Ok(())
        }
        IngestCmd::Abort { refs } => {
            let store = ctx.open()?;
            let mut failed = false;
            for r in &refs {
                match store.abort(r) {
                    Ok(()) => {
                        if !ctx.json {
                            crate::outln!("{r}");
                        }
                    }
                    Err(e) => {
                        failed = true;
                        report(&e);
                    }
                }
            }
            if failed {
                Err(Failure::Reported)
            } else {
                Ok(())
            }
        }
    }
}
