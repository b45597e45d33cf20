//! Manifests on a repository: HEAD, GET (verified against the digest asked for or the one
//! the registry claims, typed by the one rule of `oci::document_media_type`), PUT, DELETE;
//! mirrors are asked first for reads.

use std::io::Read;

use ureq::http::Method;

use super::client::{Body, Endpoint, Target};
use super::{
    MANIFEST_ACCEPT, MAX_MANIFEST, Manifest, PutManifest, Registry, RemoteDescriptor, Repository,
    capability_for, header, media_type_of, rate, target, unexpected, url,
};
use crate::digest::Digest;
use crate::error::{Error, Result};

impl Registry {
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
}
