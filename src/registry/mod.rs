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
mod blob;
mod client;
mod direct;
mod endpoints;
mod headers;
pub mod hosts;
mod inspect;
mod manifest;
mod proxy;
pub mod rate;
pub mod referrers;
mod tags;
mod token;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use ureq::http::Method;

pub use auth::{Credential, Credentials};
use client::{Body, Client, Endpoint, Target};
pub use client::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RetryPolicy};
pub use headers::{parse_content_range, parse_link_next};
pub use proxy::Proxies;
pub use tags::{MAX_TAG_PAGE, MAX_TAG_PAGES, TagPage, is_valid_tag};

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
        Repository {
            host: name.registry.clone(),
            path: name.path.clone(),
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
