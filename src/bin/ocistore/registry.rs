//! `ocistore image pull|push` and `ocistore remote ...`: the store and registries.

use std::collections::HashMap;
use std::sync::Arc;

use clap::{Args, Subcommand};
use ocistore::names::parse_platform;
use ocistore::registry::{Registry, RegistryOptions, Repository};
use ocistore::transfer::pull::{Progress, PullOptions};
use ocistore::transfer::push::PushOptions;
use ocistore::{Digest, Error, Name};
use parking_lot::Mutex;
use serde_json::json;

use crate::output::print_json;
use crate::{Ctx, Failure};

/// Options every registry command takes.
#[derive(Args, Clone)]
pub struct RemoteArgs {
    /// Speak plain HTTP to the registry (loopback hosts always do)
    #[arg(long)]
    plain_http: bool,
    /// Bound the whole command's registry work (e.g. 10m, 90s); without it each request is
    /// still bounded (connect 10 s, response 15 s, 16 KiB per 20 s, retries within 45 s)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<std::time::Duration>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 90s, 10m, 1h)"))
}

impl RemoteArgs {
    fn registry(&self) -> Registry {
        Registry::new(RegistryOptions {
            plain_http: self.plain_http,
            deadline: self.timeout,
            ..RegistryOptions::default()
        })
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// Reference, e.g. alpine:3.19, 127.0.0.1:5000/lab/app@sha256:…
    reference: String,
    /// Fetch the layers of this platform (os/arch[/variant], repeatable); default: this
    /// machine's. Every manifest and config of an index is kept either way
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<String>,
    /// Fetch the layers of every platform
    #[arg(long, conflicts_with = "platforms")]
    all_platforms: bool,
    /// Make no request at all when the image is present and complete
    #[arg(long)]
    if_missing: bool,
    /// The largest blob to fetch; larger ones fail the pull before anything is fetched
    /// (e.g. 64GiB, 500MB)
    #[arg(long, default_value = "64GiB", value_name = "SIZE")]
    max_size: String,
    #[command(flatten)]
    referrers: ReferrersArgs,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Whether referrers travel with an image.
#[derive(Args, Clone)]
pub struct ReferrersArgs {
    /// Also the referrers of every manifest (signatures, SBOMs, attestations), and theirs
    #[arg(long)]
    referrers: bool,
    /// With --referrers: only referrers of this artifact type
    #[arg(long, value_name = "TYPE", requires = "referrers")]
    artifact_type: Option<String>,
}

#[derive(Args)]
pub struct PushArgs {
    /// The image to push
    name: String,
    /// Where to push it (default: NAME)
    target: Option<String>,
    /// Push only this platform of a multi-platform image (repeatable)
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<String>,
    #[command(flatten)]
    referrers: ReferrersArgs,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Digest, media type and size of a reference on its registry (exit 1 when absent)
    Inspect {
        /// Reference
        reference: String,
        /// With an index: the manifest of this platform
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// A repository's tags, one per line, in the registry's order
    Tags {
        /// Repository, e.g. 127.0.0.1:5000/lab/app
        repository: String,
        /// At most this many
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this tag
        #[arg(long)]
        last: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The referrers of a manifest on its registry (signatures, SBOMs, attestations): from
    /// the referrers API, else from the sha256-<hex> tag
    Referrers {
        /// Reference (a tag is resolved to its digest first)
        reference: String,
        /// Only referrers of this artifact type
        #[arg(long, value_name = "TYPE")]
        artifact_type: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Remove a manifest from its registry, by tag or digest (its tags go too)
    Rm {
        /// Reference
        reference: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

fn platforms(list: &[String]) -> Result<Vec<oci_spec::image::Platform>, Error> {
    list.iter().map(|p| parse_platform(p)).collect()
}

/// Bars on a terminal, one per blob and one for the total, like `docker pull`.
struct Bars {
    multi: indicatif::MultiProgress,
    total: indicatif::ProgressBar,
    bars: Mutex<HashMap<Digest, indicatif::ProgressBar>>,
}

impl Bars {
    fn new(what: &str) -> Option<Arc<Bars>> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = indicatif::MultiProgress::new();
        let total = multi.add(indicatif::ProgressBar::new_spinner());
        total.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        total.set_message(what.to_owned());
        total.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(Arc::new(Bars {
            multi,
            total,
            bars: Mutex::new(HashMap::new()),
        }))
    }

    /// Clears the bars (when there are any), passing `result` through.
    fn finish<T>(bars: &Option<Arc<Bars>>, result: T) -> T {
        if let Some(b) = bars {
            for bar in b.bars.lock().values() {
                bar.finish_and_clear();
            }
            b.total.finish_and_clear();
        }
        result
    }
}

impl Progress for Bars {
    fn start(&self, digest: &Digest, size: u64, offset: u64) {
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {msg} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(digest.hex()[..12].to_owned());
        bar.set_position(offset);
        self.bars.lock().insert(*digest, bar);
    }
    fn advance(&self, digest: &Digest, bytes: u64) {
        if let Some(bar) = self.bars.lock().get(digest) {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
    }
    fn finish(&self, digest: &Digest) {
        if let Some(bar) = self.bars.lock().remove(digest) {
            bar.finish_and_clear();
        }
    }
}

/// A failure of a call to a registry, once the user's arguments have been checked: whatever
/// the registry sent (a malformed digest, a bad size, a garbage challenge) exits 1, never 2.
fn fault(e: Error) -> Failure {
    Failure::Fault(e)
}

pub fn pull(store: &ocistore::Store, ctx: &Ctx, args: PullArgs) -> Result<(), Failure> {
    Name::parse(&args.reference)?;
    let bars = Bars::new("pulling");
    let opts = PullOptions {
        platforms: platforms(&args.platforms)?,
        all_platforms: args.all_platforms,
        if_missing: args.if_missing,
        progress: bars.clone().map(|b| b as Arc<dyn Progress>),
        max_size: Some(crate::output::parse_size(&args.max_size)?),
        referrers: args.referrers.referrers,
        artifact_type: args.referrers.artifact_type,
    };
    let out = Bars::finish(
        &bars,
        store.pull(&args.remote.registry(), &args.reference, &opts),
    )
    .map_err(fault)?;
    if ctx.json {
        print_json(&serde_json::to_value(&out).unwrap_or_default());
    } else {
        crate::outln!(
            "pulled {} ({}): {} blob(s) fetched ({}), {} present{}",
            out.name,
            out.digest,
            out.blobs_fetched,
            crate::output::human_size(out.bytes_fetched),
            out.blobs_present,
            referrers_note(out.referrers)
        );
    }
    Ok(())
}

pub fn push(store: &ocistore::Store, ctx: &Ctx, args: PushArgs) -> Result<(), Failure> {
    Name::parse(&args.name)?;
    if let Some(t) = &args.target {
        Name::parse(t)?;
    }
    let bars = Bars::new("pushing");
    let opts = PushOptions {
        platforms: platforms(&args.platforms)?,
        progress: bars.clone().map(|b| b as Arc<dyn Progress>),
        referrers: args.referrers.referrers,
        artifact_type: args.referrers.artifact_type,
    };
    let pushed = store.push(
        &args.remote.registry(),
        &args.name,
        args.target.as_deref(),
        &opts,
    );
    let out = Bars::finish(&bars, pushed).map_err(fault)?;
    if ctx.json {
        print_json(&serde_json::to_value(&out).unwrap_or_default());
    } else {
        crate::outln!(
            "pushed {} ({}): {} blob(s) uploaded ({}), {} mounted, {} already there{}",
            out.target,
            out.digest,
            out.blobs_pushed,
            crate::output::human_size(out.bytes_pushed),
            out.blobs_mounted,
            out.blobs_skipped,
            referrers_note(out.referrers)
        );
    }
    Ok(())
}

/// ", N referrer(s)" when there were any.
fn referrers_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} referrer(s)")
    }
}

/// The digest `name` stands for on its registry: its own, or its tag's (a HEAD).
fn remote_digest(registry: &Registry, name: &Name) -> Result<Digest, Failure> {
    if let Some(d) = name.digest {
        return Ok(d);
    }
    let repo = Repository::of(name);
    let tag = ocistore::registry::reference_of(name);
    Ok(registry
        .manifest_head(&repo, &tag)
        .map_err(fault)?
        .ok_or_else(|| Error::NotFound(format!("{repo}: manifest {tag}")))?
        .digest)
}

pub fn run(ctx: &Ctx, cmd: RemoteCmd) -> Result<(), Failure> {
    match cmd {
        RemoteCmd::Inspect {
            reference,
            platform,
            remote,
        } => {
            let platform = platform.as_deref().map(parse_platform).transpose()?;
            let name = Name::parse(&reference)?;
            let found = remote
                .registry()
                .image_in_registry(&reference, platform.as_ref())
                .map_err(fault)?;
            let Some(d) = found else {
                return Err(Error::NotFound(format!("{name} in its registry")).into());
            };
            if ctx.json {
                // A HEAD does not tell the artifact type: the document does (one GET).
                let registry = remote.registry();
                let artifact_type = registry
                    .manifest_get(&Repository::of(&name), d.digest.as_str())
                    .map_err(fault)?
                    .and_then(|m| ocistore::oci::referrers::artifact_type_of(&m.bytes));
                print_json(&json!({
                    "name": name.to_string(),
                    "digest": d.digest.to_string(),
                    "media_type": d.media_type,
                    "artifact_type": artifact_type,
                    "size": d.size,
                }));
            } else {
                crate::outln!(
                    "{}\t{}\t{}\t{}",
                    crate::output::shown(&name.to_string()),
                    d.digest,
                    crate::output::shown(&d.media_type),
                    d.size
                );
            }
        }
        RemoteCmd::Tags {
            repository,
            limit,
            last,
            remote,
        } => {
            let name = Name::parse(&repository)?;
            let tagged = repository
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains([':', '@']));
            if name.digest.is_some() || tagged {
                return Err(Error::InvalidArgument(format!(
                    "{repository:?} is a reference; give a repository (without a tag or digest)"
                ))
                .into());
            }
            let repo = Repository::of(&name);
            // Each page printed as it arrives: a listing of a million tags holds one page.
            let mut lines = crate::output::JsonLines::new();
            let json = ctx.json;
            remote
                .registry()
                .for_each_tag(
                    &repo,
                    limit,
                    last.as_deref(),
                    &mut |t| {
                        if json {
                            lines.item(&t);
                        } else {
                            crate::outln!("{}", crate::output::shown(t));
                        }
                        Ok(())
                    },
                    &mut |bad| {
                        crate::output::flush();
                        eprintln!(
                            "ocistore: warning: {repo}: skipped {}: not a valid tag",
                            crate::output::shown(bad)
                        );
                    },
                )
                .map_err(fault)?;
            if json {
                lines.finish();
            }
        }
        RemoteCmd::Referrers {
            reference,
            artifact_type,
            remote,
        } => {
            let name = Name::parse(&reference)?;
            let registry = remote.registry();
            let digest = remote_digest(&registry, &name)?;
            let found = registry
                .referrers(&Repository::of(&name), &digest, artifact_type.as_deref())
                .map_err(fault)?;
            crate::output::print_referrers(ctx.json, &found.referrers);
        }
        RemoteCmd::Rm { reference, remote } => {
            let name = Name::parse(&reference)?;
            let repo = Repository::of(&name);
            let registry = remote.registry();
            let digest = remote_digest(&registry, &name)?;
            registry.manifest_delete(&repo, &digest).map_err(fault)?;
            if !ctx.json {
                crate::outln!("removed {repo}@{digest}");
            } else {
                print_json(&json!({"removed": format!("{repo}@{digest}")}));
            }
        }
    }
    Ok(())
}
