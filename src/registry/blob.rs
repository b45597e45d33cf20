//! Blobs on a repository: HEAD, GET (streamed, from an offset, large bodies read around
//! ureq by `direct`), PUT (monolithic, or chunked when refused), cross-repository mount,
//! DELETE.

use std::io::Read;
use std::path::Path;

use ureq::http::Method;

use super::client::{Body, Endpoint, Target};
use super::{
    BlobStream, Registry, Repository, UPLOAD_CHUNK, direct, header, parse_content_range, rate,
    target, unexpected, url,
};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// What [`Registry::blob_get_direct`] did.
enum Direct {
    /// The body, read around ureq.
    Got(BlobStream),
    /// Nothing to read: the request goes through the client, this many attempts spent.
    Through(u32),
}

/// Whether a 206's `Content-Range` is the range asked for: from `offset` to the end of a
/// blob of `size` bytes.
fn range_matches(content_range: Option<&str>, offset: u64, size: Option<u64>) -> bool {
    content_range
        .and_then(parse_content_range)
        .is_some_and(|(s, end, total)| {
            s == offset && size.is_none_or(|n| end + 1 == n && total.is_none_or(|t| t == n))
        })
}

impl Registry {
    /// HEAD of a blob: its size, or `None` when the repository does not have it.
    pub fn blob_head(&self, repo: &Repository, digest: &Digest) -> Result<Option<u64>> {
        let t = target(repo, "pull", format!("blob {digest}"));
        let ep = self.server(repo)?;
        self.blob_head_at(&t, &ep, repo, digest)
    }

    fn blob_head_at(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let mut resp = self.client.send(
            t,
            ep,
            Method::HEAD,
            &url(ep, repo, &format!("blobs/{digest}")),
            &[],
            Body::None,
        )?;
        match resp.status().as_u16() {
            200 => Ok(Some(
                header(&resp, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            404 => Ok(None),
            _ => Err(unexpected(t, &mut resp)),
        }
    }

    /// GET of a blob from `offset` (a `Range` request when `offset > 0`), from a mirror
    /// when one has it, else from the server. The body starts at [`BlobStream::start`]:
    /// `offset` only for a 206 whose `Content-Range` starts there and ends at `size - 1`
    /// (when `size` is given); a 200 starts at 0. Not verified here: the caller hashes and
    /// counts (see [`Store::pull`](crate::Store::pull)).
    pub fn blob_get(
        &self,
        repo: &Repository,
        digest: &Digest,
        offset: u64,
        size: Option<u64>,
    ) -> Result<BlobStream> {
        let t = target(repo, "pull", format!("blob {digest}"));
        let got = self.read_via(repo, "pull", |ep| {
            match self.blob_get_at(&t, ep, repo, digest, offset, size) {
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound => Ok(None),
                other => other.map(Some),
            }
        })?;
        got.ok_or_else(|| Error::NotFound(t.describe()))
    }

    fn blob_get_at(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        repo: &Repository,
        digest: &Digest,
        offset: u64,
        size: Option<u64>,
    ) -> Result<BlobStream> {
        let at = url(ep, repo, &format!("blobs/{digest}"));
        let spent = match self.blob_get_direct(t, ep, &at, offset, size)? {
            Direct::Got(stream) => return Ok(stream),
            Direct::Through(spent) => spent,
        };
        let range = format!("bytes={offset}-");
        let headers: &[(&str, &str)] = if offset > 0 {
            &[("Range", range.as_str())]
        } else {
            &[]
        };
        let t = &Target { spent, ..t.clone() };
        let mut resp = self
            .client
            .send(t, ep, Method::GET, &at, headers, Body::None)?;
        let start = match resp.status().as_u16() {
            200 => 0,
            206 if offset > 0 => {
                let cr = header(&resp, "content-range");
                if !range_matches(cr.as_deref(), offset, size) {
                    // A range we did not ask for: start over from the beginning.
                    drop(resp);
                    return self.blob_get_at(t, ep, repo, digest, 0, size);
                }
                offset
            }
            416 if offset > 0 => return self.blob_get_at(t, ep, repo, digest, 0, size),
            404 => return Err(Error::NotFound(t.describe())),
            _ => return Err(unexpected(t, &mut resp)),
        };
        Ok(BlobStream {
            start,
            reader: Box::new(
                rate::RateGuard::new(resp.into_body().into_reader()).until(self.client.deadline()),
            ),
        })
    }

    /// The body of a large blob read around ureq ([`direct`]) when `ep` allows it; else the
    /// request is to go through the client, after the attempts spent here (0 or 1, waited
    /// after already); an error when that one attempt was all the endpoint had (a mirror's).
    fn blob_get_direct(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        url: &str,
        offset: u64,
        size: Option<u64>,
    ) -> Result<Direct> {
        use std::sync::atomic::Ordering::Relaxed;
        if !ep.direct.load(Relaxed)
            || size.is_none_or(|n| n.saturating_sub(offset) < direct::DIRECT_MIN)
        {
            return Ok(Direct::Through(0));
        }
        let range = format!("bytes={offset}-");
        let auth = self.client.authorization(t, ep);
        let mut headers = Vec::with_capacity(2);
        if offset > 0 {
            headers.push(("Range", range.as_str()));
        }
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        match direct::get(url, &headers, self.client.timeout()) {
            Ok(answer) => {
                let start = match answer.status {
                    200 => 0,
                    206 if offset > 0
                        && range_matches(answer.content_range.as_deref(), offset, size) =>
                    {
                        offset
                    }
                    // A range not asked for: the client's path starts over.
                    _ => return Ok(Direct::Through(0)),
                };
                Ok(Direct::Got(BlobStream {
                    start,
                    reader: Box::new(
                        rate::RateGuard::new(answer.body).until(self.client.deadline()),
                    ),
                }))
            }
            Err(direct::Declined::Retry) => Ok(Direct::Through(0)),
            Err(direct::Declined::Never) => {
                ep.direct.store(false, Relaxed);
                Ok(Direct::Through(0))
            }
            Err(direct::Declined::Failed { why, retry_after }) => {
                let policy = self.client.retry_policy();
                // A mirror has one attempt (then the next place is asked), as in the client.
                if ep.mirror || policy.attempts <= 1 {
                    return Err(Error::Unavailable(format!("{}: {why}", t.describe())));
                }
                let wait = retry_after
                    .as_deref()
                    .and_then(super::headers::parse_retry_after)
                    .unwrap_or_else(|| self.client.backoff(1));
                std::thread::sleep(wait.min(policy.max_wait));
                Ok(Direct::Through(1))
            }
        }
    }

    /// Uploads a blob streamed from the file at `path`: monolithic (POST, then one PUT with
    /// the whole body; never held in memory; a retry resends it), and when the registry
    /// refuses that (a body size limit, say), chunked as [`Registry::blob_put_reader`] does.
    pub fn blob_put_file(&self, repo: &Repository, digest: &Digest, path: &Path) -> Result<()> {
        let result = match self.blob_put_with(repo, digest, Body::File(path)) {
            Err(e) if e.kind() == crate::error::ErrorKind::FailedPrecondition => {
                tracing::debug!(error = %e, "monolithic upload refused; chunked");
                let mut file =
                    std::fs::File::open(path).map_err(|e| Error::io("open for upload", path, e))?;
                self.blob_put_reader(repo, digest, &mut file)
            }
            other => other,
        };
        match result {
            // A retried request may find its upload already finished (the answer to the first
            // was lost): the blob being there is what counts.
            Err(e)
                if e.kind() != crate::error::ErrorKind::Unauthorized
                    && matches!(self.blob_head(repo, digest), Ok(Some(_))) =>
            {
                tracing::debug!(error = %e, "upload failed, but the blob is there");
                Ok(())
            }
            other => other,
        }
    }

    /// Uploads a blob streamed from `reader` in chunks of [`UPLOAD_CHUNK`] bytes (POST, a
    /// PATCH per chunk with its `Content-Range`, then the closing PUT with the digest);
    /// memory stays at one chunk. The registry checks the digest.
    pub fn blob_put_reader(
        &self,
        repo: &Repository,
        digest: &Digest,
        reader: &mut dyn Read,
    ) -> Result<()> {
        let t = target(repo, "pull,push", format!("blob {digest}"));
        let ep = self.server(repo)?;
        let mut location = self.start_upload(&ep, repo, &t, None)?.ok_or_else(|| {
            Error::FailedPrecondition(format!("{}: the registry opened no upload", t.describe()))
        })?;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut offset = 0u64;
        loop {
            let mut n = 0;
            while n < buf.len() {
                match reader.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::from_io(e, "read", "upload source")),
                }
            }
            if n == 0 {
                break;
            }
            let range = format!("{offset}-{}", offset + n as u64 - 1);
            let mut resp = self.client.send(
                &t,
                &ep,
                Method::PATCH,
                &location,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Range", range.as_str()),
                ],
                Body::Bytes(&buf[..n]),
            )?;
            if !matches!(resp.status().as_u16(), 202 | 204) {
                return Err(unexpected(&t, &mut resp));
            }
            if let Some(next) = header(&resp, "location") {
                location = if next.starts_with('/') {
                    format!("{}{next}", ep.origin)
                } else {
                    next
                };
            }
            offset += n as u64;
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let mut resp = self.client.send(
            &t,
            &ep,
            Method::PUT,
            &put,
            &[("Content-Length", "0")],
            Body::Bytes(&[]),
        )?;
        match resp.status().as_u16() {
            201 | 204 => Ok(()),
            _ => Err(unexpected(&t, &mut resp)),
        }
    }

    /// Uploads a blob held in memory (small blobs: configs, manifests as blobs).
    pub fn blob_put_bytes(&self, repo: &Repository, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.blob_put_with(repo, digest, Body::Bytes(bytes))
    }

    fn blob_put_with(&self, repo: &Repository, digest: &Digest, body: Body<'_>) -> Result<()> {
        let t = target(repo, "pull,push", format!("blob {digest}"));
        let ep = self.server(repo)?;
        let location = self.start_upload(&ep, repo, &t, None)?.ok_or_else(|| {
            Error::FailedPrecondition(format!("{}: the registry opened no upload", t.describe()))
        })?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let mut resp = self.client.send(
            &t,
            &ep,
            Method::PUT,
            &put,
            &[("Content-Type", "application/octet-stream")],
            body,
        )?;
        match resp.status().as_u16() {
            201 | 204 => Ok(()),
            _ => Err(unexpected(&t, &mut resp)),
        }
    }

    /// POSTs an upload (or, with `mount`, a cross-repository mount). `None` when a mount
    /// was done (201); else the upload's absolute URL.
    fn start_upload(
        &self,
        ep: &Endpoint,
        repo: &Repository,
        t: &Target<'_>,
        mount: Option<(&Digest, &str)>,
    ) -> Result<Option<String>> {
        let mut post = url(ep, repo, "blobs/uploads/");
        if let Some((d, from)) = mount {
            post.push_str(&format!("?mount={d}&from={from}"));
        }
        let mut resp = self.client.send(
            t,
            ep,
            Method::POST,
            &post,
            &[("Content-Length", "0")],
            Body::Bytes(&[]),
        )?;
        let status = resp.status().as_u16();
        if status == 201 && mount.is_some() {
            return Ok(None);
        }
        if status != 202 {
            return Err(unexpected(t, &mut resp));
        }
        let location = header(&resp, "location").ok_or_else(|| {
            Error::FailedPrecondition(format!("{}: upload without a Location", t.describe()))
        })?;
        Ok(Some(if location.starts_with('/') {
            format!("{}{location}", ep.origin)
        } else {
            location
        }))
    }

    /// Mounts `digest` from repository `from` on the same registry into `repo`: `true` when
    /// the registry mounted it, `false` when it did not (it then opened an upload, which is
    /// cancelled).
    pub fn blob_mount(&self, repo: &Repository, digest: &Digest, from: &str) -> Result<bool> {
        let mut t = target(
            repo,
            "pull,push",
            format!("blob {digest} (mount from {from})"),
        );
        t.also_pull = Some(from);
        let ep = self.server(repo)?;
        let started = match self.start_upload(&ep, repo, &t, Some((digest, from))) {
            // A mount is only a shortcut: refused (no pull right on the source, say), the
            // blob is uploaded instead.
            Err(e) if e.kind() == crate::error::ErrorKind::Unauthorized => {
                tracing::debug!(error = %e, "mount refused; uploading instead");
                return Ok(false);
            }
            other => other?,
        };
        match started {
            None => Ok(true),
            Some(upload) => {
                let _ = self
                    .client
                    .send(&t, &ep, Method::DELETE, &upload, &[], Body::None);
                Ok(false)
            }
        }
    }

    /// DELETE of a blob.
    pub fn blob_delete(&self, repo: &Repository, digest: &Digest) -> Result<()> {
        let t = target(repo, "delete", format!("blob {digest}"));
        self.delete(&t, repo, &format!("blobs/{digest}"))
    }
}
