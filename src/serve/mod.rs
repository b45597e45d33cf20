//! `ocistore serve --containerd`: containerd's content service
//! (`containerd.services.content.v1.Content`, containerd 1.6's API) over gRPC on a unix socket,
//! so that containerd keeps its content in an ocistore root (a `[proxy_plugins]` entry of type
//! `content`).
//!
//! Async stays here: a tokio runtime serves the socket and every call into the store runs on
//! a blocking thread. [`run`] itself is synchronous and returns after SIGTERM or SIGINT.
//!
//! What containerd sees, and how it shares the root with everything else:
//! - Ingest references are kept under `containerd/` in the store; containerd sees (and may
//!   abort) only those, so its gc never touches an ingest of another process.
//! - Every blob containerd writes, or asks `Info`/`Update` of (its way to adopt a blob it
//!   finds already present), joins the lease [`CONTAINERD_LEASE`]: ocistore's gc and prune
//!   keep it. `List` shows the blobs of that lease.
//! - containerd's `Delete` takes the blob out of the lease and removes it only when nothing
//!   else keeps it ([`Store::release_content`]); otherwise it answers success and the blob
//!   stays.

mod write;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::content::{Info, IngestManager, Labels, Manager, Provider};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::filter;
use crate::query::{InfoFields, StatusFields};
use crate::store::Store;
pub use crate::store::hold::CONTAINERD_LEASE;
use crate::store::hold::Released;

/// The code generated from `proto/containerd/services/content/v1/content.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("containerd.services.content.v1");
}

use proto::content_server::{Content, ContentServer};

/// The prefix of the store's ingest references that are containerd's.
pub const INGEST_PREFIX: &str = "containerd/";

/// Blobs per `List` message, and bytes per `Read` message.
const LIST_BATCH: usize = 100;
const READ_CHUNK: usize = 1 << 20;

/// How long in-flight calls get to finish after SIGTERM or SIGINT.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What [`run`] serves and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The unix socket to listen on: created with mode 0660, removed on exit. A live socket
    /// there (another server) is refused; a stale one is replaced.
    pub socket: PathBuf,
}

/// Serves containerd's content API over `store` until SIGTERM or SIGINT. `ready` is called
/// once the socket accepts connections.
pub fn run(store: Store, opts: &Options, ready: impl FnOnce(&Path)) -> Result<()> {
    let socket = opts.socket.clone();
    claim_socket(&socket)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ocistore-serve")
        .build()
        .map_err(|e| Error::io("start the server's runtime", &socket, e))?;
    let served = runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| Error::io("listen on the socket", &socket, e))?;
        let _remove = RemoveOnDrop(socket.clone());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| Error::io("set the socket's mode", &socket, e))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::io("watch for SIGTERM", &socket, e))?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| Error::io("watch for SIGINT", &socket, e))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let service = ContentServer::new(Service { store })
            .max_decoding_message_size(32 << 20)
            .max_encoding_message_size(32 << 20);
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            );
        tokio::pin!(server);
        tracing::info!(socket = %socket.display(), "serving containerd's content API");
        ready(&socket);
        tokio::select! {
            r = &mut server => r.map_err(|e| Error::Io {
                action: "serve the socket",
                path: socket.clone(),
                source: std::io::Error::other(e),
            }),
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                tracing::info!("stopping: in-flight writes stay resumable ingests");
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(STOP_GRACE, &mut server).await;
                Ok(())
            }
        }
    });
    runtime.shutdown_timeout(STOP_GRACE);
    served
}

/// Makes `socket` free to bind: a live server there is refused, a stale socket removed,
/// anything else at that path refused.
fn claim_socket(socket: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("look at the socket path", socket, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::InvalidArgument(format!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Err(Error::AlreadyExists(format!(
            "a server is already listening on {}",
            socket.display()
        ))),
        Err(_) => {
            std::fs::remove_file(socket).map_err(|e| Error::io("remove a stale socket", socket, e))
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Service {
    store: Store,
}

/// containerd's gRPC code for an error (its `errdefs.ToGRPC`).
pub(crate) fn grpc_status(e: Error) -> Status {
    use tonic::Code;
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Unavailable | ErrorKind::StoreInUse => Code::Unavailable,
        ErrorKind::FailedPrecondition | ErrorKind::ReadOnly => Code::FailedPrecondition,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        _ => Code::Unknown,
    };
    Status::new(code, e.to_string())
}

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("a store call failed: {e}")))?
        .map_err(grpc_status)
}

fn parse_digest(s: &str) -> std::result::Result<Digest, Status> {
    Digest::parse(s).map_err(grpc_status)
}

pub(crate) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn system_time(t: Option<&prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    })
    .unwrap_or(UNIX_EPOCH)
}

fn info_message(i: &Info) -> proto::Info {
    proto::Info {
        digest: i.digest.to_string(),
        size: i64::try_from(i.size).unwrap_or(i64::MAX),
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        labels: i.labels.clone().into_iter().collect(),
    }
}

fn status_message(s: &crate::content::Status) -> proto::Status {
    proto::Status {
        started_at: Some(timestamp(s.started_at)),
        updated_at: Some(timestamp(s.updated_at)),
        r#ref: s.reference.clone(),
        offset: i64::try_from(s.offset).unwrap_or(i64::MAX),
        total: s.total.and_then(|t| i64::try_from(t).ok()).unwrap_or(0),
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// The store's reference for containerd's `reference`.
pub(crate) fn ingest_ref(reference: &str) -> std::result::Result<String, Status> {
    if reference.is_empty() {
        return Err(Status::invalid_argument(
            "ingest reference must not be empty",
        ));
    }
    Ok(format!("{INGEST_PREFIX}{reference}"))
}

/// containerd's view of one of the store's ingests, when it is containerd's.
fn containerd_status(mut s: crate::content::Status) -> Option<crate::content::Status> {
    s.reference = s.reference.strip_prefix(INGEST_PREFIX)?.to_owned();
    Some(s)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Content for Service {
    async fn info(
        &self,
        req: Request<proto::InfoRequest>,
    ) -> std::result::Result<Response<proto::InfoResponse>, Status> {
        let digest = parse_digest(&req.get_ref().digest)?;
        let store = self.store.clone();
        let info = blocking(move || {
            let info = store.info(&digest)?;
            store.hold(CONTAINERD_LEASE, &digest)?;
            Ok(info)
        })
        .await?;
        Ok(Response::new(proto::InfoResponse {
            info: Some(info_message(&info)),
        }))
    }

    async fn update(
        &self,
        req: Request<proto::UpdateRequest>,
    ) -> std::result::Result<Response<proto::UpdateResponse>, Status> {
        let req = req.into_inner();
        let given = req
            .info
            .ok_or_else(|| Status::invalid_argument("update without an info"))?;
        let info = Info {
            digest: parse_digest(&given.digest)?,
            size: u64::try_from(given.size).unwrap_or(0),
            created_at: system_time(given.created_at.as_ref()),
            updated_at: system_time(given.updated_at.as_ref()),
            labels: given.labels.into_iter().collect::<Labels>(),
        };
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let store = self.store.clone();
        let updated = blocking(move || {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let updated = store.update(&info, &paths)?;
            store.hold(CONTAINERD_LEASE, &info.digest)?;
            Ok(updated)
        })
        .await?;
        Ok(Response::new(proto::UpdateResponse {
            info: Some(info_message(&updated)),
        }))
    }

    type ListStream = BoxStream<proto::ListContentResponse>;

    async fn list(
        &self,
        req: Request<proto::ListContentRequest>,
    ) -> std::result::Result<Response<Self::ListStream>, Status> {
        let filter =
            filter::parse_all(&req.get_ref().filters).map_err(|e| grpc_status(Error::from(e)))?;
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let sent = (|| -> Result<()> {
                let held = store.lease_content(CONTAINERD_LEASE)?;
                for chunk in held.chunks(LIST_BATCH) {
                    let info: Vec<proto::Info> = (store.infos(chunk)?.into_iter().flatten())
                        .filter(|i| filter.matches(&InfoFields(i)))
                        .map(|i| info_message(&i))
                        .collect();
                    if !info.is_empty()
                        && tx
                            .blocking_send(Ok(proto::ListContentResponse { info }))
                            .is_err()
                    {
                        return Ok(()); // the client went away
                    }
                }
                Ok(())
            })();
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(grpc_status(e)));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteContentRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let digest = parse_digest(&req.get_ref().digest)?;
        let store = self.store.clone();
        let released = blocking(move || store.release_content(CONTAINERD_LEASE, &digest)).await?;
        tracing::debug!(%digest, ?released, "delete");
        let _: Released = released;
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<proto::ReadContentResponse>;

    async fn read(
        &self,
        req: Request<proto::ReadContentRequest>,
    ) -> std::result::Result<Response<Self::ReadStream>, Status> {
        let req = req.into_inner();
        let digest = parse_digest(&req.digest)?;
        let (offset, size) = match (u64::try_from(req.offset), u64::try_from(req.size)) {
            (Ok(o), Ok(s)) => (o, s),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "read of {digest}: negative offset {} or size {}",
                    req.offset, req.size
                )));
            }
        };
        let store = self.store.clone();
        // One blocking task opens the blob and streams it: an error opening it (NotFound,
        // OutOfRange) ends the stream with that status before any data.
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let reader = match store.reader_at(&digest) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(grpc_status(e)));
                    return;
                }
            };
            let blob = reader.size();
            if offset > blob {
                let _ = tx.blocking_send(Err(Status::out_of_range(format!(
                    "read past object length {blob} bytes"
                ))));
                return;
            }
            let end = if size == 0 {
                blob
            } else {
                offset.saturating_add(size).min(blob)
            };
            let mut at = offset;
            while at < end {
                let want = usize::try_from(end - at).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
                let mut buf = vec![0u8; want];
                let n = match reader.read_at(&mut buf, at) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(grpc_status(e)));
                        return;
                    }
                };
                buf.truncate(n);
                let msg = proto::ReadContentResponse {
                    offset: i64::try_from(at).unwrap_or(i64::MAX),
                    data: buf.into(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return;
                }
                at += n as u64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<proto::StatusRequest>,
    ) -> std::result::Result<Response<proto::StatusResponse>, Status> {
        let reference = ingest_ref(&req.get_ref().r#ref)?;
        let store = self.store.clone();
        let status = blocking(move || store.status(&reference)).await?;
        Ok(Response::new(proto::StatusResponse {
            status: containerd_status(status).as_ref().map(status_message),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<proto::ListStatusesRequest>,
    ) -> std::result::Result<Response<proto::ListStatusesResponse>, Status> {
        let filter =
            filter::parse_all(&req.get_ref().filters).map_err(|e| grpc_status(Error::from(e)))?;
        let store = self.store.clone();
        let all = blocking(move || store.list_statuses(&[])).await?;
        let statuses = (all.into_iter().filter_map(containerd_status))
            .filter(|s| filter.matches(&StatusFields(s)))
            .map(|s| status_message(&s))
            .collect();
        Ok(Response::new(proto::ListStatusesResponse { statuses }))
    }

    type WriteStream = BoxStream<proto::WriteContentResponse>;

    async fn write(
        &self,
        req: Request<tonic::Streaming<proto::WriteContentRequest>>,
    ) -> std::result::Result<Response<Self::WriteStream>, Status> {
        let rx = write::session(self.store.clone(), req.into_inner());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(
        &self,
        req: Request<proto::AbortRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let reference = ingest_ref(&req.get_ref().r#ref)?;
        let store = self.store.clone();
        blocking(move || {
            store.abort(&reference)?;
            store.release_ingest(CONTAINERD_LEASE, &reference)
        })
        .await?;
        Ok(Response::new(()))
    }
}
