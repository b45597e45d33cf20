//! `ocistore artifact`: OCI 1.1 artifacts from files, and back.

use std::path::PathBuf;

use clap::Subcommand;
use ocistore::store::artifact::{ArtifactFile, ArtifactSpec};
use serde_json::json;

use crate::output::{print_json, table};
use crate::{Ctx, Failure};

#[derive(Subcommand)]
pub enum ArtifactCmd {
    /// Write an artifact (an OCI 1.1 manifest: the empty config, one layer per file) and name it
    Create {
        /// The name to give it
        name: String,
        /// Its artifact type, e.g. application/spdx+json
        #[arg(long, value_name = "TYPE")]
        artifact_type: String,
        /// The image it refers to (a name or digest in this store)
        #[arg(long, value_name = "REF")]
        subject: Option<String>,
        /// Manifest annotations
        #[arg(long = "annotation", value_name = "K=V")]
        annotations: Vec<String>,
        /// The files, each FILE or FILE:MEDIATYPE (default application/octet-stream)
        #[arg(required = true, value_name = "FILE[:MEDIATYPE]")]
        files: Vec<String>,
    },
    /// Write each titled file of an artifact into a directory
    Get {
        /// A name or digest
        reference: String,
        /// The directory to write into
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
    },
}

/// `FILE` or `FILE:MEDIATYPE`: the part after the last `:` is a media type when it holds a `/`.
fn file_arg(arg: &str) -> ArtifactFile {
    match arg.rsplit_once(':') {
        Some((path, media_type)) if media_type.contains('/') && !path.is_empty() => ArtifactFile {
            path: PathBuf::from(path),
            media_type: Some(media_type.to_owned()),
        },
        _ => ArtifactFile {
            path: PathBuf::from(arg),
            media_type: None,
        },
    }
}

pub fn run(ctx: &Ctx, cmd: ArtifactCmd) -> Result<(), Failure> {
    match cmd {
        ArtifactCmd::Create {
            name,
            artifact_type,
            subject,
            annotations,
            files,
        } => {
            let store = ctx.open()?;
            let spec = ArtifactSpec {
                artifact_type,
                subject,
                annotations: crate::content::parse_labels(&annotations, false)?,
                files: files.iter().map(|f| file_arg(f)).collect(),
            };
            let digest = store.create_artifact(&name, &spec)?;
            if ctx.json {
                print_json(
                    &json!({"name": store.image(&name)?.name, "digest": digest.to_string()}),
                );
            } else {
                crate::outln!("{digest}");
            }
        }
        ArtifactCmd::Get { reference, output } => {
            let store = ctx.open_to_read()?;
            let written = store.artifact_files(&reference, &output)?;
            if ctx.json {
                print_json(&serde_json::Value::Array(
                    written
                        .iter()
                        .map(|w| {
                            json!({
                                "title": w.title,
                                "digest": w.digest.to_string(),
                                "size": w.size,
                                "path": output.join(&w.title),
                            })
                        })
                        .collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = written
                    .iter()
                    .map(|w| {
                        vec![
                            crate::output::shown(&w.title).into_owned(),
                            w.digest.to_string(),
                            crate::output::human_size(w.size),
                        ]
                    })
                    .collect();
                table(&["TITLE", "DIGEST", "SIZE"], &rows);
            }
        }
    }
    Ok(())
}
