//! `ocistore content ...`: committed blobs.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::Subcommand;
use ocistore::helpers::{self, Source};
use ocistore::uncompressed::UncompressOptions;
use ocistore::{Digest, Error, ErrorKind, Info, Labels, Manager};
use serde_json::json;

use crate::output::{self, age_cell, human_size, info_json, print_json, size_cell};
use crate::{Ctx, Failure, report};

#[derive(Subcommand)]
pub enum ContentCmd {
    /// Store a blob from a file or stdin and print its digest
    Put {
        /// File to read, or - for stdin
        #[arg(default_value = "-")]
        path: String,
        /// Ingest reference: naming an existing ingest resumes it (the bytes it has are skipped)
        #[arg(long = "ref", value_name = "REF")]
        reference: Option<String>,
        /// Digest the content must have
        #[arg(long, value_name = "DIGEST")]
        expected: Option<String>,
        /// Size in bytes the content must have
        #[arg(long, value_name = "N")]
        size: Option<u64>,
        /// A label to set on the blob (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Show one blob's record
    Info {
        /// The blob's digest
        digest: String,
    },
    /// List blobs matching any of the filters (containerd's filter syntax)
    Ls {
        /// Filters such as 'labels."com.example/k"==v' or 'size==4096'; several are OR-ed
        filters: Vec<String>,
        /// Print digests only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a blob's bytes to stdout
    Cat {
        /// The blob's digest
        digest: String,
        /// When the store lacks it, read it through from this repository (e.g.
        /// 127.0.0.1:5000/lab/app) and keep it: the next read is local
        #[arg(long, value_name = "REPO")]
        remote: Option<String>,
        /// Speak plain HTTP to the registry (loopback hosts always do)
        #[arg(long, requires = "remote")]
        plain_http: bool,
    },
    /// Set labels (KEY=VALUE) or remove them (KEY=) and print the updated record
    Label {
        /// The blob's digest
        digest: String,
        /// KEY=VALUE to set, KEY= to remove
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// List the blobs a manifest or index names (or, with --reverse, those naming DIGEST)
    Refs {
        /// The blob's digest
        digest: String,
        /// Parents instead of children
        #[arg(long)]
        reverse: bool,
    },
    /// Print the uncompressed digest (diffID) of a gzip or zstd blob: its
    /// containerd.io/uncompressed label, or computed by decompressing it once and recorded
    Uncompressed {
        /// The compressed blob's digest
        digest: String,
        /// Also store the uncompressed bytes as a blob (labelled ocistore.io/compressed; gc
        /// removes it unless something roots it)
        #[arg(long)]
        keep: bool,
        /// Decompress even when a label is recorded, and correct a wrong one
        #[arg(long)]
        verify: bool,
    },
    /// Remove blobs
    Rm {
        /// Digests to remove
        #[arg(required = true)]
        digests: Vec<String>,
    },
}

pub fn run(ctx: &Ctx, cmd: ContentCmd) -> Result<(), Failure> {
    match cmd {
        ContentCmd::Put {
            path,
            reference,
            expected,
            size,
            labels,
        } => put(ctx, &path, reference, expected, size, &labels),
        ContentCmd::Info { digest } => {
            let d = Digest::parse(&digest)?;
            let info = ctx.open_to_read()?.info(&d)?;
            show_info(ctx, &info);
            Ok(())
        }
        ContentCmd::Ls { filters, quiet } => ls(ctx, &filters, quiet),
        ContentCmd::Cat {
            digest,
            remote,
            plain_http,
        } => {
            let d = Digest::parse(&digest)?;
            let store = ctx.open()?;
            let mut out = io::stdout().lock();
            match remote {
                None => {
                    helpers::copy_blob_to(&store, &d, &mut out)?;
                    store.record_use([ocistore::Used::Content(d)]);
                }
                Some(repo) => {
                    let name = ocistore::Name::parse(&repo)?;
                    let source = ocistore::cache::RegistrySource {
                        registry: ocistore::Registry::new(ocistore::RegistryOptions {
                            plain_http,
                            ..Default::default()
                        }),
                        repository: ocistore::registry::Repository::of(&name),
                    };
                    let through = ocistore::cache::ReadThrough::new(store.clone(), source);
                    let mut reader = through.open(&d, None)?;
                    io::copy(&mut reader, &mut out)
                        .map_err(|e| Error::from_io(e, "read through", &repo))?;
                }
            }
            out.flush().map_err(|e| Error::Io {
                action: "write",
                path: "stdout".into(),
                source: e,
            })?;
            Ok(())
        }
        ContentCmd::Label { digest, labels } => label(ctx, &digest, &labels),
        ContentCmd::Uncompressed {
            digest,
            keep,
            verify,
        } => uncompressed(ctx, &digest, UncompressOptions { keep, verify }),
        ContentCmd::Rm { digests } => rm(ctx, &digests),
        ContentCmd::Refs { digest, reverse } => {
            let d = Digest::parse(&digest)?;
            let store = ctx.open()?;
            let list = if reverse {
                store.parents(&d)?
            } else {
                store.children(&d)?
            };
            if ctx.json {
                let v: Vec<String> = list.iter().map(ToString::to_string).collect();
                print_json(&json!({ "digest": d.to_string(), "reverse": reverse, "refs": v }));
            } else {
                for r in list {
                    crate::outln!("{r}");
                }
            }
            Ok(())
        }
    }
}

/// Parses `KEY=VALUE` arguments; `allow_empty` admits `KEY=` (a removal).
pub fn parse_labels(args: &[String], allow_empty: bool) -> Result<Labels, Error> {
    let mut labels = Labels::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(Error::InvalidArgument(format!(
                "label {a:?} is not KEY=VALUE"
            )));
        };
        if v.is_empty() && !allow_empty {
            return Err(Error::InvalidArgument(format!("label {a:?} has no value")));
        }
        ocistore::content::validate_label(k, v)?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(labels)
}

fn put(
    ctx: &Ctx,
    path: &str,
    reference: Option<String>,
    expected: Option<String>,
    size: Option<u64>,
    labels: &[String],
) -> Result<(), Failure> {
    let expected = expected.as_deref().map(Digest::parse).transpose()?;
    let labels = parse_labels(labels, false)?;
    let reference = reference.unwrap_or_else(|| {
        format!(
            "put-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )
    });
    let store = ctx.open()?;
    let done = |digest: &Digest, size: u64, created: bool| {
        if ctx.json {
            print_json(&json!({"digest": digest.to_string(), "size": size, "created": created}));
        } else {
            crate::outln!("{digest}");
        }
    };
    if let Some(d) = &expected {
        match store.info(d) {
            Ok(info) => {
                done(d, info.size, false);
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let writer = match helpers::open_writer(&store, &reference, size, expected.as_ref()) {
        Ok(w) => w,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let d = expected.expect("AlreadyExists at open needs an expected digest");
            let info = store.info(&d)?;
            done(&d, info.size, false);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let committed = if path == "-" {
        let mut stdin = io::stdin().lock();
        helpers::copy(
            writer,
            Source::Stream(&mut stdin),
            size,
            expected.as_ref(),
            labels,
        )?
    } else {
        let p = PathBuf::from(path);
        let mut f = File::open(&p).map_err(|e| Error::Io {
            action: "open",
            path: p.clone(),
            source: e,
        })?;
        helpers::copy(
            writer,
            Source::Seekable(&mut f),
            size,
            expected.as_ref(),
            labels,
        )?
    };
    done(&committed.digest, committed.size, committed.created);
    Ok(())
}

fn show_info(ctx: &Ctx, info: &Info) {
    if ctx.json {
        print_json(&info_json(info));
        return;
    }
    crate::outln!("digest:     {}", info.digest);
    crate::outln!("size:       {} ({})", info.size, human_size(info.size));
    crate::outln!("created_at: {}", ocistore::query::rfc3339(info.created_at));
    crate::outln!("updated_at: {}", ocistore::query::rfc3339(info.updated_at));
    if info.labels.is_empty() {
        crate::outln!("labels:     -");
    } else {
        crate::outln!("labels:");
        for (k, v) in &info.labels {
            crate::outln!("  {k}={v}");
        }
    }
}

fn ls(ctx: &Ctx, filters: &[String], quiet: bool) -> Result<(), Failure> {
    let store = ctx.open_to_read()?;
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    if quiet && !ctx.json {
        // Streams: one line per blob as the walk finds it.
        store.walk(
            &mut |i| {
                crate::outln!("{}", i.digest);
                Ok(())
            },
            &filters,
        )?;
        return Ok(());
    }
    if ctx.json {
        // Streams: the array's elements, one a line, as the walk finds them.
        let mut lines = output::JsonLines::new();
        store.walk(
            &mut |i| {
                lines.item(&InfoLine::of(i));
                Ok(())
            },
            &filters,
        )?;
        lines.finish();
        return Ok(());
    }
    // Streams too: the columns have fixed widths, wide enough for every size ("1023.9 KiB")
    // and age ("59 minutes ago") and for a sha256 or blake3 digest (a sha512 one widens its
    // own row), so nothing is held and the first line comes at once.
    let now = std::time::SystemTime::now();
    const W: [usize; 3] = [
        "sha256:".len() + 64,
        "1023.9 KiB".len(),
        "59 minutes ago".len(),
    ];
    let [w0, w1, w2] = W;
    crate::output::with_stdout(|o| {
        writeln!(
            o,
            "{:w0$}   {:w1$}   {:w2$}   LABELS",
            "DIGEST", "SIZE", "AGE"
        )
    });
    store.walk(
        &mut |i| {
            let (size, age) = (size_cell(i.size), age_cell(i.created_at, now));
            let (d, size, age) = (i.digest.as_str(), size.as_str(), age.as_str());
            crate::output::with_stdout(|o| {
                output::cell(o, d, w0)?;
                output::cell(o, size, w1)?;
                if i.labels.is_empty() {
                    o.write_all(age.as_bytes())?;
                } else {
                    output::cell(o, age, w2)?;
                    output::write_labels(o, &i.labels)?;
                }
                o.write_all(b"\n")
            });
            Ok(())
        },
        &filters,
    )?;
    Ok(())
}

/// A blob's info as `content ls --json` writes it (the fields of `info_json`).
#[derive(serde::Serialize)]
struct InfoLine<'a> {
    digest: String,
    size: u64,
    created_at: String,
    updated_at: String,
    labels: &'a ocistore::Labels,
}

impl<'a> InfoLine<'a> {
    fn of(i: &'a ocistore::Info) -> Self {
        InfoLine {
            digest: i.digest.to_string(),
            size: i.size,
            created_at: ocistore::query::rfc3339(i.created_at),
            updated_at: ocistore::query::rfc3339(i.updated_at),
            labels: &i.labels,
        }
    }
}

fn label(ctx: &Ctx, digest: &str, args: &[String]) -> Result<(), Failure> {
    let d = Digest::parse(digest)?;
    let labels = parse_labels(args, true)?;
    let store = ctx.open()?;
    let mut info = store.info(&d)?;
    let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    info.labels = labels;
    let updated = store.update(&info, &paths)?;
    show_info(ctx, &updated);
    Ok(())
}

fn uncompressed(ctx: &Ctx, digest: &str, opts: UncompressOptions) -> Result<(), Failure> {
    let d = Digest::parse(digest)?;
    let out = ctx.open()?.uncompressed(&d, &opts)?;
    if ctx.json {
        print_json(&json!({
            "digest": out.digest.to_string(),
            "diff_id": out.diff_id.to_string(),
            "size": out.size,
            "recorded": out.recorded,
            "corrected": out.corrected,
            "kept": out.kept.as_ref().map(ToString::to_string),
        }));
        return Ok(());
    }
    crate::outln!("{}", out.diff_id);
    if let Some(was) = &out.replaced {
        eprintln!(
            "ocistore: corrected the {} label of {}: it said {was}",
            ocistore::uncompressed::UNCOMPRESSED_LABEL,
            out.digest
        );
    }
    Ok(())
}

fn rm(ctx: &Ctx, digests: &[String]) -> Result<(), Failure> {
    let store = ctx.open()?;
    let mut failed = false;
    let mut removed = Vec::new();
    let mut invalid = false;
    for arg in digests {
        let result = Digest::parse(arg).and_then(|d| store.delete(&d).map(|()| d));
        match result {
            Ok(d) => {
                if !ctx.json {
                    crate::outln!("{d}");
                }
                removed.push(d.to_string());
            }
            Err(e) => {
                invalid |= e.kind() == ErrorKind::InvalidArgument;
                failed = true;
                report(&e);
            }
        }
    }
    if ctx.json {
        output::print_json(&json!({ "removed": removed }));
    }
    match (failed, invalid) {
        (false, _) => Ok(()),
        (true, true) => Err(Failure::Error(Error::InvalidArgument(
            "some digests were malformed (reported above)".into(),
        ))),
        (true, false) => Err(Failure::Reported),
    }
}
