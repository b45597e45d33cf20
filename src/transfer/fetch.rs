//! Downloading a pull's blobs and documents into ingests `pull-<digest>`: a few at a time,
//! largest first, resumed from the bytes on disk, sealed when verified; one process per
//! blob (the ingest's lock), the others wait for its commit.

use std::io::Read;

use crate::content::{Labels, Writer};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::helpers::largest_first;
use crate::registry::{Registry, RemoteDescriptor, Repository};
use crate::store::{Sealed, Store};

use super::plan::DocBytes;
use super::pull::PullOptions;

/// What fetching one blob came to.
pub(super) enum Fetched {
    /// The store has it.
    Present,
    /// Sealed in its ingest, with the bytes this process transferred for it.
    Sealed(Box<Sealed>, u64),
}

/// A blob to fetch.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
}

impl Store {
    /// Fetches every job, `registry.concurrency()` at a time, largest first; the results in
    /// the jobs' order.
    pub(super) fn fetch_all(
        &self,
        registry: &Registry,
        repo: &Repository,
        jobs: &[Job],
        opts: &PullOptions,
    ) -> Result<Vec<Fetched>> {
        largest_first(
            jobs,
            registry.concurrency(),
            |j| j.size,
            |j| self.fetch_blob(registry, repo, j, opts),
        )
    }

    /// Fetches one blob into its ingest and seals it (durable, size and digest checked);
    /// `Present` when the store has it (or another process committed it meanwhile).
    pub(super) fn fetch_blob(
        &self,
        registry: &Registry,
        repo: &Repository,
        job: &Job,
        opts: &PullOptions,
    ) -> Result<Fetched> {
        let reference = format!("pull-{}", job.digest);
        let Some(mut w) = self.claim_ingest(&reference, &job.digest, job.size)? else {
            if let Some(p) = &opts.progress {
                p.finish(&job.digest);
            }
            return Ok(Fetched::Present);
        };
        let mut offset = w.status()?.offset;
        if offset > job.size {
            w.truncate(0)?;
            offset = 0;
        }
        if let Some(p) = &opts.progress {
            p.start(&job.digest, job.size, offset);
        }
        let mut fetched = 0u64;
        let mut attempt = 0u32;
        while offset < job.size {
            attempt += 1;
            let retry = |attempt: u32, e: Error| -> Result<()> {
                if attempt >= registry.retry_policy().attempts
                    || !matches!(e.kind(), ErrorKind::Unavailable)
                {
                    return Err(e);
                }
                std::thread::sleep(registry.backoff(attempt));
                Ok(())
            };
            // The request itself is retried inside the client; what is retried here is a
            // body cut short (resumed from the bytes written).
            let stream = registry.blob_get(repo, &job.digest, offset, Some(job.size))?;
            if stream.start != offset {
                w.truncate(0)?;
                offset = 0;
            }
            // Straight into the ingest's buffers; one byte more than the descriptor allows
            // is enough to know the registry sent too much.
            let mut body = stream.reader.take((job.size - offset).saturating_add(1));
            let (n, cut) = w.read_from(&mut body, &mut |chunk| {
                if let Some(p) = &opts.progress {
                    p.advance(&job.digest, chunk.len() as u64);
                }
            })?;
            offset += n;
            fetched += n;
            if offset > job.size {
                if let Err(e) = w.discard() {
                    tracing::warn!(reference, error = %e, "could not drop a failed download");
                }
                return Err(Error::FailedPrecondition(format!(
                    "{repo}: blob {}: the registry sent more than the descriptor's {} bytes",
                    job.digest, job.size
                )));
            }
            if offset < job.size {
                if let Some(e) = cut
                    .as_ref()
                    .filter(|e| crate::registry::rate::is_too_slow(e))
                {
                    return Err(Error::Unavailable(format!(
                        "{repo}: blob {}: cut at byte {offset} of {}: {e}",
                        job.digest, job.size
                    )));
                }
                // Cut short: resume from here.
                let why = cut.map_or_else(|| "the body ended early".to_owned(), |e| e.to_string());
                retry(
                    attempt,
                    Error::Unavailable(format!(
                        "{repo}: blob {}: connection cut at byte {offset} of {}: {why}",
                        job.digest, job.size
                    )),
                )?;
            }
        }
        let sealed = match w.seal(job.size, &job.digest) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::FailedPrecondition => {
                // Wrong bytes: seal has removed them.
                return Err(Error::FailedPrecondition(format!(
                    "{repo}: blob {}: the bytes the registry sent do not match: {e}",
                    job.digest
                )));
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = &opts.progress {
            p.finish(&job.digest);
        }
        Ok(Fetched::Sealed(Box::new(sealed), fetched))
    }

    /// Keeps a document fetched for a pull (a manifest an index names, a referrer) out of
    /// memory: `Present` when the store has it, else sealed in its ingest `pull-<digest>` for
    /// the batch to adopt (another process writing it meanwhile is waited for, as for a
    /// blob).
    pub(super) fn keep_document(&self, desc: &RemoteDescriptor, bytes: &[u8]) -> Result<DocBytes> {
        let job = Job {
            digest: desc.digest,
            size: desc.size,
        };
        let reference = format!("pull-{}", desc.digest);
        let Some(mut w) = self.claim_ingest(&reference, &job.digest, job.size)? else {
            return Ok(DocBytes::Present);
        };
        // Complete already (another pull's): sealed as it is, its bytes checked by the seal.
        let offset = w.status()?.offset;
        if offset != desc.size {
            if offset != 0 {
                w.truncate(0)?;
            }
            std::io::Write::write_all(&mut w, bytes)
                .map_err(|e| Error::from_io(e, "write", reference.as_str()))?;
        }
        Ok(DocBytes::Sealed(Box::new(w.seal(desc.size, &desc.digest)?)))
    }

    /// Fetches the document `desc` again and stages it in `batch` (see the pull's
    /// adoption of documents).
    pub(super) fn restage(
        &self,
        batch: &mut crate::store::batch::Batch,
        registry: &Registry,
        repo: &Repository,
        desc: &RemoteDescriptor,
        labels: &Labels,
    ) -> Result<()> {
        let m = registry
            .manifest_get(repo, desc.digest.as_str())?
            .ok_or_else(|| Error::NotFound(format!("{repo}: manifest {}", desc.digest)))?;
        batch.stage(
            &mut &m.bytes[..],
            Some(&desc.digest),
            Some(desc.size),
            labels.clone(),
        )?;
        Ok(())
    }
}
