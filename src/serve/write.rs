//! The `Write` stream: one ingest per stream, driven by `STAT`, `WRITE` and `COMMIT`
//! messages with containerd's rules (its `contentserver`): the first message names the
//! reference; an `expected` digest that is already committed ends the stream with
//! `AlreadyExists`; a write at a non-zero offset must be at the current offset; a write at
//! offset 0 onto a partial ingest starts it over. The stream's end releases the reference and
//! keeps the ingest to be resumed.

use tokio::sync::mpsc;
use tonic::Status;

use super::proto::{WriteAction, WriteContentRequest, WriteContentResponse};
use super::{CONTAINERD_LEASE, blocking, grpc_status, ingest_ref, timestamp};
use crate::content::{Manager, Writer};
use crate::digest::Digest;
use crate::error::Result;
use crate::store::Store;

/// How often a locked reference is tried again (waits of 1, 2, 4, … ms: about a second).
const LOCK_RETRIES: u32 = 10;

type Reply = std::result::Result<WriteContentResponse, Status>;

/// Serves one `Write` stream; the replies come out of the returned channel.
pub(super) fn session(
    store: Store,
    mut inbound: tonic::Streaming<WriteContentRequest>,
) -> mpsc::Receiver<Reply> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let first = match inbound.message().await {
            Ok(Some(m)) => m,
            _ => return,
        };
        if first.r#ref.is_empty() {
            let _ = (tx.send(Err(Status::invalid_argument(
                "first message must have a reference",
            ))))
            .await;
            return;
        }
        let opened = Session::open(store, &first).await;
        let mut session = match opened {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut req = first;
        loop {
            let handled = tokio::task::spawn_blocking(move || {
                let reply = session.handle(req);
                (session, reply)
            })
            .await;
            let reply;
            (session, reply) = match handled {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("write failed: {e}"))))
                        .await;
                    return;
                }
            };
            let failed = reply.is_err();
            if tx.send(reply).await.is_err() || failed {
                break;
            }
            req = match inbound.message().await {
                Ok(Some(m)) => m,
                _ => break, // the client closed its side, or went away
            };
        }
        // The reference is released at once, so that the client may resume it right away.
        let _ = tokio::task::spawn_blocking(move || session.close()).await;
    });
    rx
}

struct Session {
    store: Store,
    /// The store's reference (containerd's, prefixed).
    reference: String,
    writer: Option<Box<dyn Writer>>,
    total: Option<u64>,
    expected: Option<Digest>,
}

fn non_negative(what: &str, n: i64) -> std::result::Result<Option<u64>, Status> {
    match u64::try_from(n) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(Status::invalid_argument(format!("negative {what} {n}"))),
    }
}

fn parse_expected(s: &str) -> std::result::Result<Option<Digest>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    Digest::parse(s).map(Some).map_err(grpc_status)
}

impl Session {
    async fn open(
        store: Store,
        first: &WriteContentRequest,
    ) -> std::result::Result<Session, Status> {
        let reference = ingest_ref(&first.r#ref)?;
        let total = non_negative("total", first.total)?;
        let expected = parse_expected(&first.expected)?;
        let (s, r) = (store.clone(), reference.clone());
        // As containerd's own store does, a reference still held is tried again for about a
        // second: a client that closes a stream and resumes it at once reaches us before
        // the closed stream's end has released the reference.
        let writer = blocking(move || {
            let mut attempt = 0;
            loop {
                match s.writer_in_lease(CONTAINERD_LEASE, &r, total, expected.as_ref()) {
                    Err(e)
                        if e.kind() == crate::ErrorKind::Unavailable && attempt < LOCK_RETRIES =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(1 << attempt));
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        })
        .await?;
        Ok(Session {
            store,
            reference,
            writer: Some(writer),
            total,
            expected,
        })
    }

    fn handle(&mut self, req: WriteContentRequest) -> Reply {
        let action = WriteAction::try_from(req.action).map_err(|_| {
            Status::invalid_argument(format!("unknown write action {}", req.action))
        })?;
        // Taken for this message, and put back unless it commits (or the stream ends on an
        // error: dropping a writer keeps its ingest, as closing it does).
        let Some(mut writer) = self.writer.take() else {
            return Err(Status::failed_precondition(format!(
                "ingest {:?} is already committed",
                self.reference
            )));
        };
        let status = writer.status().map_err(grpc_status)?;
        let mut reply = WriteContentResponse {
            action: action as i32,
            offset: i64::try_from(status.offset).unwrap_or(i64::MAX),
            ..Default::default()
        };
        if let Some(expected) = parse_expected(&req.expected)? {
            self.expected = Some(expected);
            if self.store.info(&expected).is_ok() {
                // Committed meanwhile: the ingest is not needed, and the blob is held.
                writer.abort().map_err(grpc_status)?;
                self.store
                    .release_ingest(CONTAINERD_LEASE, &self.reference)
                    .map_err(grpc_status)?;
                self.store
                    .hold(CONTAINERD_LEASE, &expected)
                    .map_err(grpc_status)?;
                return Err(Status::already_exists(format!(
                    "blob with expected digest {expected} exists"
                )));
            }
        }
        if let Some(total) = non_negative("total", req.total)? {
            self.total = Some(total);
        }
        if action == WriteAction::Stat {
            reply.digest = writer.digest().to_string();
            reply.started_at = Some(timestamp(status.started_at));
            reply.updated_at = Some(timestamp(status.updated_at));
            reply.total = self.total.and_then(|t| i64::try_from(t).ok()).unwrap_or(0);
            self.writer = Some(writer);
            return Ok(reply);
        }
        let offset = non_negative("offset", req.offset)?.unwrap_or(0);
        if offset > 0 && offset != status.offset {
            return Err(Status::out_of_range(format!(
                "write @{offset} must occur at current offset {}",
                status.offset
            )));
        }
        if offset == 0 && status.offset > 0 {
            writer.truncate(0).map_err(grpc_status)?;
            reply.offset = 0;
        }
        if !req.data.is_empty() {
            std::io::Write::write_all(&mut writer, &req.data).map_err(|e| {
                grpc_status(crate::Error::from_io(e, "write an ingest", &self.reference))
            })?;
            reply.offset += i64::try_from(req.data.len()).unwrap_or(i64::MAX);
        }
        if action == WriteAction::Commit {
            let labels = req.labels.into_iter().collect();
            let digest = writer
                .commit(self.total, self.expected.as_ref(), labels)
                .map_err(grpc_status)?;
            reply.digest = digest.to_string();
        } else {
            reply.digest = writer.digest().to_string();
            self.writer = Some(writer);
        }
        Ok(reply)
    }

    fn close(mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => w.close(),
            None => Ok(()),
        }
    }
}
