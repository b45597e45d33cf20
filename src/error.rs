//! The library's one error type and the containerd-style classes callers match on.

use std::io;
use std::path::PathBuf;

/// A `Result` whose error is the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The class of an [`Error`], after containerd's `errdefs`. Tests and the CLI match on this,
/// never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The blob, ingest, name or lease does not exist.
    NotFound,
    /// The content (or name, or lease) is already there.
    AlreadyExists,
    /// The resource is held by someone else right now (an ingest reference locked by a live
    /// writer); trying again later may succeed.
    Unavailable,
    /// The request is well formed but the state does not allow it (size or digest mismatch).
    FailedPrecondition,
    /// The request itself is malformed: a bad digest, filter, label, reference or argument.
    InvalidArgument,
    /// What is on disk disagrees with the metadata, or bytes do not match their digest.
    Corrupted,
    /// The store was written by a newer schema version than this code understands.
    IncompatibleSchema,
    /// The store is held exclusively by another process and could not be opened in time.
    StoreInUse,
    /// The store was opened read-only and a mutation was asked for.
    ReadOnly,
    /// A registry refused the credentials, or asked for credentials there are none of.
    Unauthorized,
    /// An operating-system I/O error.
    Io,
    /// The metadata database failed.
    Database,
}

/// Everything that can go wrong in ocistore. Each variant carries what was being done and
/// on what (digest, reference, path), so that its message stands on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Something asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Something to be created exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A resource is held elsewhere; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The state of the store does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A filter expression did not parse.
    #[error("invalid argument: {0}")]
    Filter(#[from] crate::filter::ParseError),
    /// Disk and metadata disagree.
    #[error("corrupted: {0}")]
    Corrupted(String),
    /// The store's schema is newer than this code.
    #[error(
        "store schema version {found} is newer than this ocistore supports (schema version {supported}); upgrade ocistore"
    )]
    IncompatibleSchema {
        /// The version recorded in the store.
        found: u32,
        /// The newest version this code knows.
        supported: u32,
    },
    /// A registry refused the credentials, or none were found for it.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Another process holds the store exclusively.
    #[error("store in use: {0}")]
    StoreInUse(String),
    /// A mutation on a store opened read-only.
    #[error("store at '{root}' is read-only: cannot {action}")]
    ReadOnly {
        /// The store's root directory.
        root: PathBuf,
        /// What was refused.
        action: String,
    },
    /// An I/O error on a path.
    #[error("could not {action} '{path}': {source}")]
    Io {
        /// What was being done ("rename", "open", "fsync directory").
        action: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: could not {action}: {source}")]
    Database {
        /// What was being done.
        action: &'static str,
        /// redb's error, boxed so that no redb type is part of the public API.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// [`Error::db`] as a closure, for `map_err(db("walk blobs"))`.
pub(crate) fn db<E: std::error::Error + Send + Sync + 'static>(
    action: &'static str,
) -> impl FnOnce(E) -> Error {
    move |e| Error::db(action, e)
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::InvalidArgument(_) | Error::Filter(_) => ErrorKind::InvalidArgument,
            Error::Corrupted(_) => ErrorKind::Corrupted,
            Error::IncompatibleSchema { .. } => ErrorKind::IncompatibleSchema,
            Error::StoreInUse(_) => ErrorKind::StoreInUse,
            Error::Unauthorized(_) => ErrorKind::Unauthorized,
            Error::ReadOnly { .. } => ErrorKind::ReadOnly,
            Error::Io { .. } => ErrorKind::Io,
            Error::Database { .. } => ErrorKind::Database,
        }
    }

    /// Builds an [`Error::Io`] for `action` on `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Database`] from any redb error.
    pub(crate) fn db(
        action: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Database {
            action,
            source: Box::new(source),
        }
    }

    /// Converts into an `io::Error` (for `io::Write`/`io::Read` impls), keeping this error
    /// as the inner one so that [`Error::from_io`] can recover it.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match self.kind() {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::InvalidArgument => io::ErrorKind::InvalidInput,
            ErrorKind::Corrupted => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// Recovers an [`Error`] carried inside an `io::Error`, or wraps the `io::Error`
    /// as I/O on `path`.
    pub fn from_io(err: io::Error, action: &'static str, path: impl Into<PathBuf>) -> Self {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = err.into_inner().expect("checked above");
            return *inner.downcast::<Error>().expect("checked above");
        }
        Error::io(action, path, err)
    }
}
