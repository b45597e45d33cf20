//! Registries: the OCI distribution API on a repository. This module is the protocol client
//! and knows no store; pull and push between a registry and the store are in
//! [`crate::transfer`].
//!
//! A [`Registry`] is a sync value (cheap to clone, `Send + Sync`) holding the HTTP client,
//! credentials and policies. Its methods are the registry API itself, after regclient's
//! scheme API: blob get (streamed, from an offset), head, put (streamed), mount, delete;
//! manifest get, head, put, delete; tag list (one page, or all following `Link`).
//! [`Store::pull`](crate::Store::pull) and [`Store::push`](crate::Store::push) build on it;
//! the referrers API and the tag schema are in [`referrers`].
//!
//! Hosts: loopback hosts (localhost, 127.0.0.0/8, ::1) are spoken to over plain HTTP, as
//! containerd does, others over HTTPS with the webpki roots; [`RegistryOptions::plain_http`]
//! forces plain HTTP. `docker.io` names go to Docker Hub's API host.

pub mod auth;
mod client;
mod direct;
pub mod hosts;
mod inspect;
mod proxy;
pub mod rate;
pub mod referrers;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::http::Method;

pub use auth::{Credential, Credentials};
use client::{Body, Client, Endpoint, Target};
pub use client::{
    CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RetryPolicy, parse_content_range, parse_link_next,
};
pub use proxy::Proxies;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::names::Name;

/// The manifest media types a pull accepts, in order of preference.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json";

/// The chunk size of a chunked upload ([`Registry::blob_put_reader`]).
pub const UPLOAD_CHUNK: usize = 8 << 20;

/// Manifests and indexes larger than this are refused (distribution's own limit is 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// How to build a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Where credentials come from (default: the environment's config files).
    pub credentials: Credentials,
    /// Plain HTTP for every host (`--plain-http`).
    pub plain_http: bool,
    /// Blob transfers at a time per pull or push (default 6).
    pub concurrency: usize,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
    /// Per-read timeout (default 30 s); connecting waits at most [`CONNECT_TIMEOUT`] (10 s)
    /// and a response's head [`RESPONSE_TIMEOUT`] (15 s), or this when shorter.
    pub timeout: Duration,
    /// The whole command's bound (`--timeout`; default none): past it, no request starts
    /// and no body is read further, and the error says so. Without it each request is still
    /// bounded (connect, response head, minimum rate, the retry deadline).
    pub deadline: Option<Duration>,
    /// Where `<host>/hosts.toml` files are looked for (default: [`hosts::search_dirs`]).
    pub hosts_dirs: Vec<std::path::PathBuf>,
    /// Which proxy each host is reached through (default: [`Proxies::from_env`], read as
    /// Go reads `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`).
    pub proxies: Proxies,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            credentials: Credentials::from_env(),
            plain_http: false,
            concurrency: 6,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
            deadline: None,
            hosts_dirs: hosts::search_dirs(),
            proxies: Proxies::from_env(),
        }
    }
}

/// A client of OCI registries. See the module docs.
#[derive(Clone)]
pub struct Registry {
    client: Arc<Client>,
    concurrency: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// A repository on a registry: `127.0.0.1:5000` + `lab/app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The registry host as names spell it (`docker.io`, `127.0.0.1:5000`).
    pub host: String,
    /// The repository path within it (`library/alpine`).
    pub path: String,
}

impl Repository {
    /// The repository of a normalised reference (`docker.io/library/alpine:3` →
    /// `docker.io` + `library/alpine`).
    pub fn of(name: &Name) -> Repository {
        let (host, path) = name
            .repository
            .split_once('/')
            .expect("a normalised name has a registry part");
        Repository {
            host: host.to_owned(),
            path: path.to_owned(),
        }
    }
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

/// What a registry says of a manifest or blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDescriptor {
    /// Its digest.
    pub digest: Digest,
    /// Its media type (for blobs: what the registry sends, often `application/octet-stream`).
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A manifest or index as fetched: its exact bytes (verified against the digest when it was
/// asked for by digest, or against `Docker-Content-Digest` when the registry sends it).
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Digest, media type, size.
    pub descriptor: RemoteDescriptor,
    /// The bytes, exactly as served.
    pub bytes: Vec<u8>,
}

/// What a registry said to a manifest PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutManifest {
    /// The manifest's digest.
    pub digest: Digest,
    /// The subject the registry recorded for its referrers API (the `OCI-Subject` header):
    /// when it is there, the registry lists the manifest as a referrer itself, and the
    /// tag schema need not be kept.
    pub subject: Option<Digest>,
}

/// A blob body being received.
pub struct BlobStream {
    /// Where the body starts: the offset asked for when the registry honoured the `Range`
    /// (206 with a matching `Content-Range`), else 0 (a 200 restarts the blob).
    pub start: u64,
    /// The body.
    pub reader: Box<dyn Read + Send>,
}

/// One page of a tag listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagPage {
    /// The tags, in the registry's order.
    pub tags: Vec<String>,
    /// What the page listed that is not a tag by the distribution spec's grammar
    /// (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`): skipped, kept here to be reported.
    pub invalid: Vec<String>,
    /// The URL of the next page (from `Link`), when there is one.
    pub next: Option<String>,
}

/// The largest tag-list page read (its body), in bytes.
pub const MAX_TAG_PAGE: u64 = 8 << 20;
/// The most tag-list pages followed through `Link`.
pub const MAX_TAG_PAGES: usize = 100_000;

/// Whether `tag` matches the distribution spec's tag grammar.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn target<'a>(repo: &'a Repository, actions: &'a str, what: String) -> Target<'a> {
    Target {
        host: &repo.host,
        repository: &repo.path,
        actions,
        what,
        also_pull: None,
        spent: 0,
    }
}

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

fn url(ep: &Endpoint, repo: &Repository, rest: &str) -> String {
    format!("{}/{}/{rest}", ep.api, repo.path)
}

/// `resolve` for a tag, `pull` for a digest (containerd's capabilities).
fn capability_for(reference: &str) -> &'static str {
    if Digest::parse(reference).is_ok() {
        "pull"
    } else {
        "resolve"
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An error for an answer the operation does not expect.
fn unexpected(t: &Target<'_>, resp: &mut ureq::http::Response<ureq::Body>) -> Error {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    // Distribution's error body: {"errors":[{"code":"…","message":"…"}]}.
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?.clone();
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| body.trim().chars().take(200).collect());
    let msg = format!("{}: HTTP {status} {detail}", t.describe());
    match status {
        401 | 403 => Error::Unauthorized(msg),
        404 => Error::NotFound(msg),
        400 | 405 | 409 | 412 | 413 | 416 => Error::FailedPrecondition(msg),
        _ => Error::Unavailable(msg),
    }
}

impl Registry {
    /// A registry client with `opts`.
    pub fn new(opts: RegistryOptions) -> Registry {
        let concurrency = opts.concurrency.max(1);
        Registry {
            client: Arc::new(Client::new(opts)),
            concurrency,
        }
    }

    /// A registry client with the environment's defaults.
    pub fn from_env() -> Registry {
        Registry::new(RegistryOptions::default())
    }

    /// Blob transfers at a time.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The server of `repo`'s registry: pushes, mounts, deletes and tag listings go there.
    fn server(&self, repo: &Repository) -> Result<Arc<Endpoint>> {
        let list = self.client.endpoints(&repo.host)?;
        Ok(Arc::clone(
            list.last().expect("the server is always listed"),
        ))
    }

    /// Asks the mirrors that may serve `capability`, in order, then the server: the first
    /// answer that is not a miss wins. A mirror's error or miss falls through to the next.
    fn read_via<T>(
        &self,
        repo: &Repository,
        capability: &str,
        mut f: impl FnMut(&Endpoint) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let list = self.client.endpoints(&repo.host)?;
        for ep in list.iter() {
            if ep.mirror
                && (!ep.capabilities.iter().any(|c| c == capability)
                    || ep.failed.load(std::sync::atomic::Ordering::Relaxed))
            {
                continue;
            }
            match f(ep) {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) if !ep.mirror => return Ok(None),
                Err(e) if !ep.mirror => return Err(e),
                Ok(None) => tracing::debug!(mirror = %ep.origin, "mirror misses; next"),
                Err(e) => {
                    // Not asked again by this client: one failure per mirror, not per request.
                    ep.failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(mirror = %ep.origin, error = %e, "mirror fails; next");
                }
            }
        }
        Ok(None)
    }

    /// HEAD of a manifest by tag or digest; `None` when the registry does not have it.
    /// Mirrors (from `hosts.toml`) are asked first.
    pub fn manifest_head(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<RemoteDescriptor>> {
        self.manifest_head_via(repo, reference, true)
    }

    /// [`Registry::manifest_head`] of the server alone (what a push must ask: a mirror
    /// having a manifest says nothing of the server).
    pub fn manifest_head_on_server(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<RemoteDescriptor>> {
        self.manifest_head_via(repo, reference, false)
    }

    fn manifest_head_via(
        &self,
        repo: &Repository,
        reference: &str,
        mirrors: bool,
    ) -> Result<Option<RemoteDescriptor>> {
        let t = target(repo, "pull", format!("manifest {reference}"));
        let capability = if mirrors {
            capability_for(reference)
        } else {
            "server only"
        };
        // Some(None): found, but without a digest header (a GET tells, and verifies).
        let found = self.read_via(repo, capability, |ep| {
            let Some(resp) = self.manifest_request(&t, ep, repo, Method::HEAD, reference)? else {
                return Ok(None);
            };
            let Some(d) = header(&resp, "docker-content-digest") else {
                return Ok(Some(None));
            };
            let digest = Digest::parse(&d).map_err(|_| {
                Error::FailedPrecondition(format!(
                    "{}: malformed Docker-Content-Digest {d:?}",
                    t.describe()
                ))
            })?;
            // Asked for by digest, it must be that digest: a registry (or mirror) naming
            // another one is not believed.
            if let Ok(asked) = Digest::parse(reference)
                && asked != digest
            {
                return Err(Error::FailedPrecondition(format!(
                    "{}: the registry answered for {digest}",
                    t.describe()
                )));
            }
            Ok(Some(Some(RemoteDescriptor {
                digest,
                media_type: media_type_of(header(&resp, "content-type")),
                size: header(&resp, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            })))
        })?;
        match found {
            None => Ok(None),
            Some(Some(d)) => Ok(Some(d)),
            Some(None) => Ok(self.manifest_get(repo, reference)?.map(|m| m.descriptor)),
        }
    }

    /// GET of a manifest by tag or digest; `None` when the registry does not have it. The
    /// bytes are checked against the digest asked for, or against `Docker-Content-Digest`.
    pub fn manifest_get(&self, repo: &Repository, reference: &str) -> Result<Option<Manifest>> {
        self.manifest_get_via(repo, reference, capability_for(reference))
    }

    /// [`Registry::manifest_get`] of the server alone (what a push reads before it writes).
    pub fn manifest_get_on_server(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<Manifest>> {
        self.manifest_get_via(repo, reference, "server only")
    }

    fn manifest_get_via(
        &self,
        repo: &Repository,
        reference: &str,
        capability: &str,
    ) -> Result<Option<Manifest>> {
        let t = target(repo, "pull", format!("manifest {reference}"));
        self.read_via(repo, capability, |ep| {
            // A body cut short is asked for again, as a failed request is.
            let mut attempt = 0;
            let (media_type, claimed, bytes) = loop {
                attempt += 1;
                let Some(mut resp) = self.manifest_request(&t, ep, repo, Method::GET, reference)?
                else {
                    return Ok(None);
                };
                let media_type = header(&resp, "content-type");
                let claimed = header(&resp, "docker-content-digest");
                // Sized from Content-Length when it is sane: a 4 MiB manifest is not read
                // into a buffer doubled to 8.
                let hint = header(&resp, "content-length")
                    .and_then(|l| l.trim().parse::<u64>().ok())
                    .filter(|&l| l <= MAX_MANIFEST)
                    .unwrap_or(0);
                let mut bytes = Vec::with_capacity(hint as usize + 1);
                let read = Read::read_to_end(
                    &mut Read::take(
                        rate::RateGuard::new(resp.body_mut().as_reader())
                            .until(self.client.deadline()),
                        MAX_MANIFEST + 1,
                    ),
                    &mut bytes,
                );
                match read {
                    Ok(_) if bytes.len() as u64 > MAX_MANIFEST => {
                        return Err(Error::FailedPrecondition(format!(
                            "{}: larger than {MAX_MANIFEST} bytes",
                            t.describe()
                        )));
                    }
                    Ok(_) => break (media_type, claimed, bytes),
                    Err(e) if rate::is_too_slow(&e) => {
                        return Err(Error::Unavailable(format!("{}: {e}", t.describe())));
                    }
                    Err(e) if attempt < self.retry_policy().attempts && !ep.mirror => {
                        tracing::debug!(error = %e, attempt, "manifest body cut; again");
                        std::thread::sleep(self.backoff(attempt));
                    }
                    Err(e) => {
                        return Err(Error::Unavailable(format!(
                            "{}: the body was cut after {attempt} attempts: {e}",
                            t.describe()
                        )));
                    }
                }
            };
            let expected = match Digest::parse(reference) {
                Ok(d) => Some(d),
                Err(_) => claimed.as_deref().and_then(|c| Digest::parse(c).ok()),
            };
            let digest = match expected {
                Some(d) => {
                    let actual = d.algorithm().digest(&bytes);
                    if actual != d {
                        return Err(Error::FailedPrecondition(format!(
                            "{}: the registry sent bytes that hash to {actual}, expected {d}",
                            t.describe()
                        )));
                    }
                    d
                }
                None => crate::digest::Algorithm::Sha256.digest(&bytes),
            };
            // One rule for what the document is (`oci::document_media_type`): a manifest
            // or index, or refused before anything is named.
            let header = media_type_of(media_type);
            let media_type = crate::oci::document_media_type(&bytes, Some(&header))
                .filter(|m| crate::oci::is_index(m) || crate::oci::is_manifest(m))
                .ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "{}: neither the document nor its Content-Type ({:?}) says it is a \
                         manifest or an index",
                        t.describe(),
                        header
                    ))
                })?;
            Ok(Some(Manifest {
                descriptor: RemoteDescriptor {
                    digest,
                    media_type,
                    size: bytes.len() as u64,
                },
                bytes,
            }))
        })
    }

    /// A HEAD or GET of `manifests/<reference>` on `ep` accepting every manifest type: the
    /// 200 response, `None` for a 404, an error naming the status otherwise.
    fn manifest_request(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        repo: &Repository,
        method: Method,
        reference: &str,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>> {
        let mut resp = self.client.send(
            t,
            ep,
            method,
            &url(ep, repo, &format!("manifests/{reference}")),
            &[("Accept", MANIFEST_ACCEPT)],
            Body::None,
        )?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp)),
            404 => Ok(None),
            _ => Err(unexpected(t, &mut resp)),
        }
    }

    /// PUT of a manifest under `reference` (a tag, or its digest): its digest, and the
    /// subject the registry says it recorded for the referrers API (`OCI-Subject`).
    pub fn manifest_put(
        &self,
        repo: &Repository,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<PutManifest> {
        let t = target(repo, "pull,push", format!("manifest {reference}"));
        let ep = self.server(repo)?;
        let mut resp = self.client.send(
            &t,
            &ep,
            Method::PUT,
            &url(&ep, repo, &format!("manifests/{reference}")),
            &[("Content-Type", media_type)],
            Body::Bytes(bytes),
        )?;
        if !matches!(resp.status().as_u16(), 200..=202) {
            return Err(unexpected(&t, &mut resp));
        }
        Ok(PutManifest {
            digest: crate::digest::Algorithm::Sha256.digest(bytes),
            subject: header(&resp, "oci-subject").and_then(|s| Digest::parse(s.trim()).ok()),
        })
    }

    /// DELETE of a manifest by digest (the registry drops every tag that names it). A
    /// registry that does not allow deletes gives `FailedPrecondition` saying so.
    pub fn manifest_delete(&self, repo: &Repository, digest: &Digest) -> Result<()> {
        let t = target(repo, "delete", format!("manifest {digest}"));
        self.delete(&t, repo, &format!("manifests/{digest}"))
    }

    fn delete(&self, t: &Target<'_>, repo: &Repository, rest: &str) -> Result<()> {
        let ep = self.server(repo)?;
        let mut resp = self.client.send(
            t,
            &ep,
            Method::DELETE,
            &url(&ep, repo, rest),
            &[],
            Body::None,
        )?;
        match resp.status().as_u16() {
            200 | 202 | 204 => Ok(()),
            404 => Err(Error::NotFound(t.describe())),
            405 => Err(Error::FailedPrecondition(format!(
                "{}: the registry does not allow deletes (HTTP 405; distribution needs \
                 storage.delete.enabled)",
                t.describe()
            ))),
            _ => Err(unexpected(t, &mut resp)),
        }
    }

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
                    .and_then(client::parse_retry_after)
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

    /// One page of the repository's tags (`limit` → `n`, `last` → `last`), with the next
    /// page's URL from `Link`. Pass a [`TagPage::next`] as `next_url` to follow it.
    pub fn tags_page(
        &self,
        repo: &Repository,
        limit: Option<usize>,
        last: Option<&str>,
        next_url: Option<&str>,
    ) -> Result<TagPage> {
        let t = target(repo, "pull", "tag list".into());
        let ep = self.server(repo)?;
        let list_url = match next_url {
            Some(u) => u.to_owned(),
            None => {
                let mut q = Vec::new();
                if let Some(n) = limit {
                    q.push(format!("n={n}"));
                }
                if let Some(l) = last {
                    q.push(format!("last={l}"));
                }
                let mut u = url(&ep, repo, "tags/list");
                if !q.is_empty() {
                    u.push('?');
                    u.push_str(&q.join("&"));
                }
                u
            }
        };
        let mut resp = self
            .client
            .send(&t, &ep, Method::GET, &list_url, &[], Body::None)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(Error::NotFound(format!("repository {repo}"))),
            _ => return Err(unexpected(&t, &mut resp)),
        }
        let next = header(&resp, "link").and_then(|l| parse_link_next(&l, &ep.origin));
        if header(&resp, "content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > MAX_TAG_PAGE)
        {
            return Err(Error::FailedPrecondition(format!(
                "{}: a tag list page over {MAX_TAG_PAGE} bytes",
                t.describe()
            )));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_TAG_PAGE)
            .read_to_string()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => Error::FailedPrecondition(format!(
                    "{}: a tag list page over {MAX_TAG_PAGE} bytes",
                    t.describe()
                )),
                e => client::network_error(&t, &e, 1),
            })?;
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<serde_json::Value>>,
        }
        let page: Page = serde_json::from_str(&text)
            .map_err(|e| Error::FailedPrecondition(format!("{}: not JSON: {e}", t.describe())))?;
        drop(text);
        let (mut tags, mut invalid) = (Vec::new(), Vec::new());
        for v in page.tags.unwrap_or_default() {
            match v {
                serde_json::Value::String(t) if is_valid_tag(&t) => tags.push(t),
                serde_json::Value::String(t) => invalid.push(t),
                other => invalid.push(other.to_string()),
            }
        }
        Ok(TagPage {
            tags,
            invalid,
            next,
        })
    }

    /// Calls `f` with each tag of the repository as its page arrives, in the registry's
    /// order (after `last`, at most `limit` when given), following `Link` up to
    /// [`MAX_TAG_PAGES`] pages of at most [`MAX_TAG_PAGE`] bytes each; past either cap the
    /// listing fails, naming it. Nothing but the current page is held. What is not a valid
    /// tag is handed to `skipped` instead.
    pub fn for_each_tag(
        &self,
        repo: &Repository,
        limit: Option<usize>,
        last: Option<&str>,
        f: &mut dyn FnMut(&str) -> Result<()>,
        skipped: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let mut left = limit.unwrap_or(usize::MAX);
        let mut next: Option<String> = None;
        let mut pages = 0usize;
        loop {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                return Err(Error::FailedPrecondition(format!(
                    "{repo}: the tag list goes on past {MAX_TAG_PAGES} pages"
                )));
            }
            let page = match &next {
                None => self.tags_page(repo, limit, last, None)?,
                Some(url) => self.tags_page(repo, None, None, Some(url))?,
            };
            for bad in &page.invalid {
                skipped(bad);
            }
            for tag in &page.tags {
                // The spec's `last`: lexically after it (the registry's order is kept).
                if last.is_some_and(|l| tag.as_str() <= l) {
                    continue;
                }
                if left == 0 {
                    return Ok(());
                }
                left -= 1;
                f(tag)?;
            }
            match page.next {
                Some(url) if left > 0 => next = Some(url),
                _ => return Ok(()),
            }
        }
    }

    /// Tags of the repository, collected: [`Registry::for_each_tag`] into a list (invalid
    /// ones skipped with a warning logged).
    pub fn tags(
        &self,
        repo: &Repository,
        limit: Option<usize>,
        last: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        self.for_each_tag(
            repo,
            limit,
            last,
            &mut |t| {
                tags.push(t.to_owned());
                Ok(())
            },
            &mut |bad| tracing::warn!(%repo, tag = %bad, "skipped: not a valid tag"),
        )?;
        Ok(tags)
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        self.client.retry_policy()
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.client.backoff(attempt)
    }
}

/// A `Content-Type` without its parameters.
fn media_type_of(header: Option<String>) -> String {
    header
        .as_deref()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The registry-side reference of `name`: its digest when it has one, else its tag.
pub fn reference_of(name: &Name) -> String {
    match (&name.digest, &name.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".to_owned(),
    }
}
