//! `ocistore image ...`: names, and the images behind them.

use clap::Subcommand;
use ocistore::names::{host_platform, parse_platform, platform_string};
use ocistore::query::rfc3339;
use ocistore::{Digest, Image};
use serde_json::{Value, json};

use crate::output::{print_json, table};
use crate::{Ctx, Failure, report};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// List images matching any of the filters (fields: name, target.digest, target.mediatype, labels.<key>)
    Ls {
        /// Filters such as 'name~=alpine'; several are OR-ed
        filters: Vec<String>,
        /// Print names only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show an image's descriptor and its manifest or index
    Inspect {
        /// A name (alpine, ghcr.io/o/r:t) or a digest
        reference: String,
    },
    /// Point new names at what SOURCE points at
    Tag {
        /// Existing name or digest
        source: String,
        /// New names
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove names; a bare digest removes that manifest and every name pointing at it
    Rm {
        /// Names or digests
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// List a repository's tags in order
    Tags {
        /// Repository, e.g. alpine or ghcr.io/o/r
        repository: String,
        /// At most this many
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this tag
        #[arg(long)]
        last: Option<String>,
    },
    /// Check an image is complete for a platform (exit 1 when not)
    Check {
        /// The image name
        name: String,
        /// os/arch[/variant]; default: this machine's
        #[arg(long)]
        platform: Option<String>,
    },
}

pub fn image_json(i: &Image) -> Value {
    json!({
        "name": i.name,
        "digest": i.target.digest().to_string(),
        "media_type": i.target.media_type().to_string(),
        "size": i.target.size(),
        "created_at": rfc3339(i.created_at),
        "updated_at": rfc3339(i.updated_at),
        "labels": i.labels,
    })
}

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> Result<(), Failure> {
    let store = ctx.open()?;
    match cmd {
        ImageCmd::Ls { filters, quiet } => {
            let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
            let images = store.images(&filters)?;
            if ctx.json {
                print_json(&Value::Array(images.iter().map(image_json).collect()));
            } else if quiet {
                for i in &images {
                    println!("{}", i.name);
                }
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.target.digest().to_string(),
                            i.target.media_type().to_string(),
                            i.target.size().to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "DIGEST", "MEDIA TYPE", "SIZE"], &rows);
            }
        }
        ImageCmd::Inspect { reference } => {
            let desc = store.resolve(&reference)?;
            let digest = Digest::parse(&desc.digest().to_string())?;
            let bytes =
                ocistore::helpers::read_blob_prefix(&store, &digest, ocistore::refs::MAX_PARSED)?;
            let document: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let v = json!({
                "reference": reference,
                "descriptor": serde_json::to_value(&desc).unwrap_or(Value::Null),
                "document": document,
            });
            print_json(&v);
        }
        ImageCmd::Tag { source, targets } => {
            let desc = store.resolve(&source)?;
            for t in &targets {
                let img = store.put_image(t, desc.clone(), None)?;
                if ctx.json {
                    print_json(&image_json(&img));
                } else {
                    println!("{}", img.name);
                }
            }
        }
        ImageCmd::Rm { references } => {
            let mut failed = false;
            let mut removed = Vec::new();
            for r in &references {
                let result = match Digest::parse(r) {
                    Ok(d) => store.delete_manifest(&d).map(|names| {
                        let mut v = names;
                        v.push(d.to_string());
                        v
                    }),
                    Err(_) => ocistore::Name::parse(r)
                        .and_then(|n| store.delete_image(r).map(|()| vec![n.to_string()])),
                };
                match result {
                    Ok(names) => {
                        for n in names {
                            if !ctx.json {
                                println!("{n}");
                            }
                            removed.push(n);
                        }
                    }
                    Err(e) => {
                        failed = true;
                        report(&e);
                    }
                }
            }
            if ctx.json {
                print_json(&json!({ "removed": removed }));
            }
            if failed {
                return Err(Failure::Reported);
            }
        }
        ImageCmd::Tags {
            repository,
            limit,
            last,
        } => {
            let tags = store.tags(&repository, limit, last.as_deref())?;
            if ctx.json {
                print_json(
                    &json!({ "name": ocistore::Name::parse(&repository)?.repository, "tags": tags }),
                );
            } else {
                for t in tags {
                    println!("{t}");
                }
            }
        }
        ImageCmd::Check { name, platform } => {
            let platform = match platform {
                Some(p) => parse_platform(&p)?,
                None => host_platform(),
            };
            let c = store.check_image(&name, &platform)?;
            if ctx.json {
                print_json(&json!({
                    "name": ocistore::Name::parse(&name)?.to_string(),
                    "platform": platform_string(&platform),
                    "complete": c.complete,
                    "manifest": c.manifest.map(|d| d.to_string()),
                    "missing": c.missing.iter().map(|(d, why)| json!({"digest": d, "reason": why})).collect::<Vec<_>>(),
                }));
            } else if c.complete {
                println!("complete for {}", platform_string(&platform));
            } else {
                println!("incomplete for {}:", platform_string(&platform));
                for (d, why) in &c.missing {
                    println!("  {d}: {why}");
                }
            }
            if !c.complete {
                return Err(Failure::Reported);
            }
        }
    }
    Ok(())
}
