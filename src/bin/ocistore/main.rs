//! `ocistore`: the command line of the ocistore content store.
//!
//! Errors print one line, `ocistore: <message>`, on stderr. Exit codes: 0 success, 2 usage
//! errors and invalid arguments (bad digest, filter, label, reference), 1 anything else.

mod artifact;
mod check;
mod content;
mod image;
mod ingest;
mod lease;
mod output;
mod prune;
mod registry;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ocistore::{Error, ErrorKind, Store};

/// An embedded, transactional content store for OCI content.
#[derive(Parser)]
#[command(name = "ocistore", version, about, max_term_width = 100)]
struct Cli {
    /// Store directory [default: $OCISTORE_ROOT, else $XDG_DATA_HOME/ocistore, else
    /// ~/.local/share/ocistore]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Committed blobs: put, inspect, list, read, label, remove
    #[command(subcommand)]
    Content(content::ContentCmd),
    /// In-progress ingests: list, abort
    #[command(subcommand)]
    Ingest(ingest::IngestCmd),
    /// Images: names pointing at manifests and indexes
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Artifacts (OCI 1.1) from files, and back: SBOMs, signatures, wasm modules
    #[command(subcommand)]
    Artifact(artifact::ArtifactCmd),
    /// Leases: holds that protect content from gc
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Remove what no name, gc.root label, lease or live ingest needs
    Gc(lease::GcArgs),
    /// Re-hash every blob and reconcile records, files, names and references
    Fsck(check::FsckArgs),
    /// Disk usage: blobs, ingests, metadata, total
    Du,
    /// Remove least recently used images and content until the store is inside a budget
    Prune(prune::PruneArgs),
    /// Ask a registry: inspect a reference, list tags, remove a manifest
    #[command(subcommand)]
    Remote(registry::RemoteCmd),
    /// Serve the store to containerd: its content API over gRPC on a unix socket
    Serve(serve::ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `ocistore man > ocistore.1`
    Man,
}

/// What a command needs from the command line at large.
pub struct Ctx {
    root: PathBuf,
    /// Print JSON.
    pub json: bool,
}

impl Ctx {
    /// Opens the store (read-write when possible).
    pub fn open(&self) -> ocistore::Result<Store> {
        let store = Store::open(&self.root)?;
        Self::warn_of_rebuild(&store);
        Ok(store)
    }

    /// Opens the store for a command that only reads: read-only, so that nothing is written
    /// when it opens or closes (a read-write open of redb writes and fsyncs its header at
    /// both ends, a third of a listing's time); read-write where a read-only open cannot
    /// serve (no store yet, one that needs migrating or recovering after a crash), as
    /// before. The read-only attempt does not wait: whatever it would wait for (a rebuild,
    /// a writer recovering the file), the read-write open waits for or does itself.
    pub fn open_to_read(&self) -> ocistore::Result<Store> {
        match ocistore::OpenOptions::new()
            .read_only(true)
            .wait(std::time::Duration::ZERO)
            .open(&self.root)
        {
            Ok(store) => {
                Self::warn_of_rebuild(&store);
                Ok(store)
            }
            Err(_) => self.open(),
        }
    }

    fn warn_of_rebuild(store: &Store) {
        if let Some(new) = store.interrupted_rebuild() {
            eprintln!(
                "ocistore: warning: a rebuild was killed before it replaced meta.redb; the \
                 store runs on its old metadata ('{}' is the unfinished new one: run \
                 `ocistore fsck --rebuild` to finish, or delete it)",
                new.display()
            );
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }
}

fn default_root() -> PathBuf {
    if let Some(r) = std::env::var_os("OCISTORE_ROOT").filter(|v| !v.is_empty()) {
        return PathBuf::from(r);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("ocistore");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/ocistore")
}

/// A failure of a command: the library error, or a partial failure already reported.
pub enum Failure {
    /// An error to print.
    Error(Error),
    /// Some items failed and were reported one by one; exit 1.
    Reported,
    /// An error whose cause is not the user's arguments, whatever its kind (what a registry
    /// sent): printed, exit 1.
    Fault(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Error(e)
    }
}

/// Prints an error in the CLI's one-line form.
pub fn report(e: &Error) {
    // What the command printed before it failed comes first.
    output::flush();
    // One line, whatever the message holds.
    let msg = e.to_string();
    let line: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("ocistore: {}", line.join("; "));
}

/// Writes `bytes` to stdout; a reader gone away (`| head`) is not an error.
fn print_raw(bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Error(Error::Io {
            action: "write to stdout",
            path: PathBuf::from("-"),
            source: e,
        })),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The library's warnings (a long wait before a retry, a lease it could not drop) on
    // stderr; the server logs at info level.
    let level = if matches!(cli.command, Command::Serve(_)) {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false)
        .init();
    let ctx = Ctx {
        root: cli.root.unwrap_or_else(default_root),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Content(c) => content::run(&ctx, c),
        Command::Ingest(c) => ingest::run(&ctx, c),
        Command::Image(c) => image::run(&ctx, c),
        Command::Artifact(c) => artifact::run(&ctx, c),
        Command::Lease(c) => lease::run(&ctx, c),
        Command::Gc(a) => lease::gc(&ctx, a),
        Command::Fsck(a) => check::fsck(&ctx, a),
        Command::Du => check::du(&ctx),
        Command::Prune(a) => prune::prune(&ctx, a),
        Command::Remote(c) => registry::run(&ctx, c),
        Command::Serve(a) => serve::serve(&ctx, a),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ocistore", &mut text);
            print_raw(&text)
        }
        Command::Man => {
            let mut text = Vec::new();
            match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut text)
            {
                Ok(()) => print_raw(&text),
                Err(source) => Err(Failure::Error(Error::Io {
                    action: "render the manual page",
                    path: PathBuf::from("-"),
                    source,
                })),
            }
        }
    };
    output::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::from(1),
        Err(Failure::Fault(e)) => {
            report(&e);
            ExitCode::from(1)
        }
        Err(Failure::Error(e)) => {
            report(&e);
            match e.kind() {
                ErrorKind::InvalidArgument => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
