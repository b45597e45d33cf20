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
    /// Import an OCI layout directory, an archive of one (tar, tar.gz, tar.zst) or a `docker
    /// save` archive; - reads the archive from stdin
    Import {
        /// Directory, archive file, or - for stdin
        path: String,
        /// Name for an unnamed image, or the repository a bare tag is joined to
        #[arg(long)]
        name: Option<String>,
        /// Most uncompressed bytes to read before giving up (bounds decompression bombs),
        /// e.g. 64GiB, 500MB
        #[arg(long, default_value = "64GiB", value_name = "SIZE")]
        max_size: String,
    },
    /// Export images as an OCI layout (archive or directory) that skopeo, umoci and ctr read
    Export {
        /// Image names
        #[arg(required = true)]
        names: Vec<String>,
        /// Output archive or directory; - for stdout
        #[arg(short, long, value_name = "PATH")]
        output: String,
        /// oci-archive (a tar) or oci-dir (a layout directory)
        #[arg(long, default_value = "oci-archive")]
        format: String,
        /// Only these platforms of multi-platform images (repeatable); the index then gets a
        /// new digest when anything is left out
        #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
        platforms: Vec<String>,
        /// Also the images' referrers (signatures, SBOMs), listed without a name in
        /// index.json as oras writes them
        #[arg(long)]
        referrers: bool,
        /// With --referrers: only referrers of this artifact type
        #[arg(long, value_name = "TYPE", requires = "referrers")]
        artifact_type: Option<String>,
    },
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
    /// List the referrers of an image (signatures, SBOMs, attestations) stored here
    Referrers {
        /// A name or a digest
        reference: String,
        /// Only referrers of this artifact type
        #[arg(long, value_name = "TYPE")]
        artifact_type: Option<String>,
        /// Also the referrers of referrers (a signature on an SBOM)
        #[arg(long)]
        recursive: bool,
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
    /// Set or remove an image's labels (label ocistore.pin keeps it from prune)
    Label {
        /// The image name
        name: String,
        /// KEY=VALUE to set, KEY= to remove
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Pull an image from its registry (only what the store lacks)
    Pull(crate::registry::PullArgs),
    /// Push an image to a registry (mounting what the registry has elsewhere)
    Push(crate::registry::PushArgs),
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
        "artifact_type": i.target.artifact_type().as_ref().map(ToString::to_string),
        "size": i.target.size(),
        "created_at": rfc3339(i.created_at),
        "updated_at": rfc3339(i.updated_at),
        "labels": i.labels,
    })
}

/// An image as `image ls --json` writes it: [`image_json`]'s fields and its size for this
/// platform.
#[derive(serde::Serialize)]
struct ImageLine<'a> {
    name: &'a str,
    digest: &'a str,
    media_type: String,
    artifact_type: Option<String>,
    size: u64,
    created_at: String,
    updated_at: String,
    labels: &'a ocistore::Labels,
    image_size: u64,
}

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> Result<(), Failure> {
    let store = if matches!(
        cmd,
        ImageCmd::Ls { .. } | ImageCmd::Inspect { .. } | ImageCmd::Referrers { .. }
    ) {
        ctx.open_to_read()?
    } else {
        ctx.open()?
    };
    match cmd {
        ImageCmd::Pull(a) => crate::registry::pull(&store, ctx, a)?,
        ImageCmd::Push(a) => crate::registry::push(&store, ctx, a)?,
        ImageCmd::Import {
            path,
            name,
            max_size,
        } => {
            let max_bytes = crate::output::parse_size(&max_size)?;
            let progress = crate::output::progress_bar("importing");
            let opts = ocistore::oci::import::Options {
                name,
                max_bytes,
                progress: progress
                    .clone()
                    .map(|bar| Box::new(move |n: u64| bar.set_position(n)) as Box<dyn FnMut(u64)>),
            };
            let out = if path == "-" {
                let mut stdin = std::io::stdin().lock();
                store.import_reader(&mut stdin, opts)
            } else {
                store.import_path(std::path::Path::new(&path), opts)
            };
            if let Some(bar) = progress {
                bar.finish_and_clear();
            }
            let out = out?;
            if ctx.json {
                print_json(&json!({
                    "images": out.images.iter().map(|i| json!({"name": i.name, "digest": i.digest.to_string(), "media_type": i.media_type, "size": i.size})).collect::<Vec<_>>(),
                    "blobs_written": out.blobs_written,
                    "blobs_present": out.blobs_present,
                    "bytes_written": out.bytes_written,
                }));
            } else {
                for i in &out.images {
                    crate::outln!("{} {}", i.name, i.digest);
                }
                eprintln!(
                    "imported {} image(s): {} blob(s) written ({}), {} already present",
                    out.images.len(),
                    out.blobs_written,
                    crate::output::human_size(out.bytes_written),
                    out.blobs_present
                );
            }
        }
        ImageCmd::Export {
            names,
            output,
            format,
            platforms,
            referrers,
            artifact_type,
        } => {
            let format = match format.as_str() {
                "oci-archive" => ocistore::oci::export::Format::OciArchive,
                "oci-dir" => ocistore::oci::export::Format::OciDir,
                other => {
                    return Err(ocistore::Error::InvalidArgument(format!(
                        "format {other:?}: use oci-archive or oci-dir"
                    ))
                    .into());
                }
            };
            let platforms = platforms
                .iter()
                .map(|p| parse_platform(p))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let referrers = if referrers {
                store.referrers_of_images(&refs, artifact_type.as_deref())?
            } else {
                Vec::new()
            };
            let opts = ocistore::oci::export::Options {
                format,
                platforms,
                referrers,
            };
            let out = if output == "-" {
                if format == ocistore::oci::export::Format::OciDir {
                    return Err(ocistore::Error::InvalidArgument(
                        "-o - writes an archive; oci-dir needs a directory".into(),
                    )
                    .into());
                }
                let mut stdout = std::io::stdout().lock();
                let out = store.export_to(&refs, &opts, &mut stdout)?;
                std::io::Write::flush(&mut stdout).map_err(|e| ocistore::Error::Io {
                    action: "write",
                    path: "stdout".into(),
                    source: e,
                })?;
                out
            } else {
                store.export_path(&refs, &opts, std::path::Path::new(&output))?
            };
            if ctx.json {
                print_json(&json!({
                    "images": out.images.iter().map(|(n, d)| json!({"name": n, "digest": d.to_string()})).collect::<Vec<_>>(),
                    "blobs": out.blobs,
                    "bytes": out.bytes,
                    "referrers": out.referrers,
                }));
            } else if output != "-" {
                eprintln!(
                    "exported {} image(s): {} blob(s), {}",
                    out.images.len(),
                    out.blobs,
                    crate::output::human_size(out.bytes)
                );
            }
        }
        ImageCmd::Ls { filters, quiet } => {
            let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
            let images = store.images(&filters)?;
            let host = host_platform();
            // ctr's SIZE: manifest, config and layers for this machine's platform.
            let sizes = if quiet && !ctx.json {
                Vec::new()
            } else {
                store.image_sizes(&images, &host)
            };
            if ctx.json {
                crate::output::print_json_lines(images.iter().zip(&sizes).map(|(i, size)| {
                    ImageLine {
                        name: &i.name,
                        digest: i.target.digest().as_ref(),
                        media_type: i.target.media_type().to_string(),
                        artifact_type: i.target.artifact_type().as_ref().map(ToString::to_string),
                        size: i.target.size(),
                        created_at: rfc3339(i.created_at),
                        updated_at: rfc3339(i.updated_at),
                        labels: &i.labels,
                        image_size: *size,
                    }
                }));
            } else if quiet {
                for i in &images {
                    crate::outln!("{}", i.name);
                }
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .zip(&sizes)
                    .map(|(i, size)| {
                        vec![
                            i.name.clone(),
                            i.target.digest().to_string(),
                            i.target.media_type().to_string(),
                            crate::output::human_size(*size),
                        ]
                    })
                    .collect();
                table(&["NAME", "DIGEST", "MEDIA TYPE", "SIZE"], &rows);
            }
        }
        ImageCmd::Inspect { reference } => {
            let desc = store.resolve(&reference)?;
            let digest = Digest::parse(desc.digest().as_ref())?;
            let bytes =
                ocistore::helpers::read_blob_prefix(&store, &digest, ocistore::edges::MAX_PARSED)?;
            let document: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let v = json!({
                "reference": reference,
                "descriptor": serde_json::to_value(&desc).unwrap_or(Value::Null),
                "document": document,
            });
            print_json(&v);
        }
        ImageCmd::Referrers {
            reference,
            artifact_type,
            recursive,
        } => {
            let desc = store.resolve(&reference)?;
            let digest = Digest::parse(desc.digest().as_ref())?;
            let found = if recursive {
                store.referrers_recursive(&digest, artifact_type.as_deref())?
            } else {
                store.referrers(&digest, artifact_type.as_deref())?
            };
            crate::output::print_referrers(ctx.json, &found);
        }
        ImageCmd::Tag { source, targets } => {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            for img in store.tag_image(&source, &targets)? {
                if ctx.json {
                    print_json(&image_json(&img));
                } else {
                    crate::outln!("{}", img.name);
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
                                crate::outln!("{n}");
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
                    &json!({ "name": ocistore::Name::parse(&repository)?.repository(), "tags": tags }),
                );
            } else {
                for t in tags {
                    crate::outln!("{t}");
                }
            }
        }
        ImageCmd::Label { name, labels } => {
            let parsed = crate::content::parse_labels(&labels, true)?;
            let remove: Vec<&str> = (parsed.iter())
                .filter(|(_, v)| v.is_empty())
                .map(|(k, _)| k.as_str())
                .collect();
            let set: ocistore::Labels = (parsed.iter())
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let img = store.label_image(&name, &set, &remove)?;
            if ctx.json {
                print_json(&image_json(&img));
            } else {
                crate::outln!("{}", img.name);
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
                crate::outln!("complete for {}", platform_string(&platform));
            } else {
                crate::outln!("incomplete for {}:", platform_string(&platform));
                for (d, why) in &c.missing {
                    crate::outln!("  {d}: {why}");
                }
            }
            if !c.complete {
                return Err(Failure::Reported);
            }
        }
    }
    Ok(())
}
