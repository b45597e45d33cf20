//! The referrers of a manifest on a registry (distribution-spec 1.1): asked of the
//! referrers API (`GET /v2/<name>/referrers/<digest>`, paged with `Link`, filtered by
//! `artifactType` on the server when it says so with `OCI-Filters-Applied`), or, on a
//! registry without that API (a 404), read from the tag schema's `<alg>-<hex>` index, which
//! clients keep up to date themselves: [`Registry::add_to_fallback_tag`] does that after a
//! push of a manifest with a `subject` that the registry did not acknowledge with
//! `OCI-Subject`.

use std::io::Read;
use std::time::Duration;

use ureq::http::Method;

use super::client::Body;
use super::headers::percent_encode;
use super::{
    MAX_MANIFEST, Registry, Repository, header, parse_link_next, rate, target, unexpected, url,
};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::MEDIA_TYPE_OCI_INDEX;
use crate::oci::referrers::{
    MAX_REFERRERS, Referrer, add_to_referrers_index, fallback_tag, index_lists,
    parse_referrers_index,
};

/// The most referrers API pages followed through `Link`.
pub const MAX_REFERRER_PAGES: usize = 1_000;

/// How many times [`Registry::add_to_fallback_tag`] writes the tag before it gives up.
pub const TAG_ATTEMPTS: u32 = 10;

/// How long [`Registry::add_to_fallback_tag`] waits before it looks at the tag a second
/// time: another pusher's read-modify-write that started before ours landed has finished by
/// then, and if it dropped our entry, we put it back.
pub const TAG_SETTLE: Duration = Duration::from_millis(250);

/// Where a listing of referrers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferrersSource {
    /// The registry's referrers API.
    Api,
    /// The `<alg>-<hex>` tag of the tag schema (a registry without the API).
    TagSchema,
}

/// The referrers of a manifest on a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReferrers {
    /// The referrers, in the registry's order (of the asked artifact type only).
    pub referrers: Vec<Referrer>,
    /// Where the listing came from.
    pub source: ReferrersSource,
}

impl Registry {
    /// The referrers of `subject` in `repo` (of `artifact_type` only, when given): from the
    /// referrers API, else from the tag schema. At most [`MAX_REFERRERS`] entries over at
    /// most [`MAX_REFERRER_PAGES`] pages of at most [`MAX_MANIFEST`] bytes; past a bound the
    /// listing fails, naming it.
    pub fn referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<RemoteReferrers> {
        let (mut referrers, source, filtered) =
            match self.referrers_api(repo, subject, artifact_type)? {
                Some((list, filtered)) => (list, ReferrersSource::Api, filtered),
                None => (
                    self.fallback_referrers(repo, subject)?,
                    ReferrersSource::TagSchema,
                    false,
                ),
            };
        if let (Some(t), false) = (artifact_type, filtered) {
            referrers.retain(|r| r.artifact_type.as_deref() == Some(t));
        }
        Ok(RemoteReferrers { referrers, source })
    }

    /// The referrers API's listing, every page, and whether the server applied the
    /// artifact type filter; `None` when the registry has no referrers API (a 404).
    fn referrers_api(
        &self,
        repo: &Repository,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<(Vec<Referrer>, bool)>> {
        let t = target(repo, "pull", format!("referrers of {subject}"));
        let ep = self.server(repo)?;
        let mut next = url(&ep, repo, &format!("referrers/{subject}"));
        if let Some(at) = artifact_type {
            next.push_str("?artifactType=");
            next.push_str(&percent_encode(at));
        }
        let mut out: Vec<Referrer> = Vec::new();
        let mut filtered = true;
        for page in 1.. {
            if page > MAX_REFERRER_PAGES {
                return Err(Error::FailedPrecondition(format!(
                    "{}: the listing goes on past {MAX_REFERRER_PAGES} pages",
                    t.describe()
                )));
            }
            let mut resp = self.client.send(
                &t,
                &ep,
                Method::GET,
                &next,
                &[("Accept", MEDIA_TYPE_OCI_INDEX)],
                Body::None,
            )?;
            match resp.status().as_u16() {
                200 => {}
                404 if page == 1 => return Ok(None),
                _ => return Err(unexpected(&t, &mut resp)),
            }
            // The filter counts only when every page says it was applied.
            filtered &= artifact_type.is_none()
                || header(&resp, "oci-filters-applied").is_some_and(|h| {
                    h.split(',')
                        .any(|f| f.trim().eq_ignore_ascii_case("artifactType"))
                });
            let link = header(&resp, "link").and_then(|l| parse_link_next(&l, &ep.origin));
            let mut bytes = Vec::new();
            let read = Read::read_to_end(
                &mut Read::take(
                    rate::RateGuard::new(resp.body_mut().as_reader()).until(self.client.deadline()),
                    MAX_MANIFEST + 1,
                ),
                &mut bytes,
            );
            match read {
                Ok(_) if bytes.len() as u64 > MAX_MANIFEST => {
                    return Err(Error::FailedPrecondition(format!(
                        "{}: a page larger than {MAX_MANIFEST} bytes",
                        t.describe()
                    )));
                }
                Ok(_) => {}
                Err(e) => return Err(Error::Unavailable(format!("{}: {e}", t.describe()))),
            }
            let left = MAX_REFERRERS - out.len();
            out.extend(parse_referrers_index(&bytes, subject, left, &t.describe())?);
            match link {
                Some(u) => next = u,
                None => break,
            }
        }
        Ok(Some((out, filtered)))
    }

    /// The referrers the tag schema's index lists (none when the tag does not exist).
    fn fallback_referrers(&self, repo: &Repository, subject: &Digest) -> Result<Vec<Referrer>> {
        let tag = fallback_tag(subject);
        match self.manifest_get(repo, &tag)? {
            None => Ok(Vec::new()),
            Some(m) => parse_referrers_index(
                &m.bytes,
                subject,
                MAX_REFERRERS,
                &format!("{repo}: referrers tag {tag}"),
            ),
        }
    }

    /// Adds `referrers` (all of one `subject`) to the subject's tag-schema index in `repo`
    /// (creating the tag when it does not exist), keeping every other entry. Distribution
    /// has no conditional PUT, so two pushers can each read the index before the other
    /// writes; each therefore reads the index back after writing, and again after
    /// [`TAG_SETTLE`], and writes again while an entry of its own is missing (up to
    /// [`TAG_ATTEMPTS`] writes). What is left: a pusher whose read-modify-write spans more
    /// than the settle time can still drop an entry that was confirmed twice.
    pub fn add_to_fallback_tag(
        &self,
        repo: &Repository,
        subject: &Digest,
        referrers: &[Referrer],
    ) -> Result<()> {
        let tag = fallback_tag(subject);
        let mut writes = 0u32;
        let mut confirmed = false;
        loop {
            let current = self.manifest_get_on_server(repo, &tag)?;
            let missing: Vec<&Referrer> = referrers
                .iter()
                .filter(|r| {
                    current
                        .as_ref()
                        .is_none_or(|m| !index_lists(&m.bytes, &r.digest))
                })
                .collect();
            if missing.is_empty() {
                if confirmed || writes == 0 {
                    return Ok(());
                }
                confirmed = true;
                std::thread::sleep(TAG_SETTLE + jitter());
                continue;
            }
            confirmed = false;
            if writes == TAG_ATTEMPTS {
                return Err(Error::Unavailable(format!(
                    "{repo}: referrers tag {tag}: {} was dropped by other writers {TAG_ATTEMPTS} \
                     times",
                    missing[0].digest
                )));
            }
            let mut bytes = current.map(|m| m.bytes);
            for r in missing {
                if let Some(more) = add_to_referrers_index(bytes.as_deref(), r)? {
                    bytes = Some(more);
                }
            }
            let Some(bytes) = bytes else { continue };
            self.manifest_put(repo, &tag, MEDIA_TYPE_OCI_INDEX, &bytes)?;
            writes += 1;
            std::thread::sleep(jitter());
        }
    }
}

/// 0–63 ms, from the clock: two pushers that collide once do not collide in step again.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(u64::from(nanos % 64))
}
