//! A push's blobs: each one the repository lacks is mounted from a repository of the same
//! registry known to hold it, else uploaded from its file; one the store lacks is brought from
//! where the image came from. Sent blobs are labelled with the target repository.

use crate::content::Manager;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::registry::{Registry, Repository};
use crate::store::Store;

use super::pull::source_label;
use super::push::{PushOptions, Sent};

impl Store {
    /// The repositories that the content `digests` came from or went to (their source
    /// labels), `repo` itself left out: those of `repo`'s registry first.
    pub(super) fn sources_of(
        &self,
        repo: &Repository,
        digests: impl Iterator<Item = Digest>,
    ) -> Vec<Repository> {
        const PREFIX: &str = "containerd.io/distribution.source.";
        let mut found: Vec<Repository> = Vec::new();
        for d in digests {
            let Ok(info) = self.info(&d) else { continue };
            for (key, value) in &info.labels {
                let Some(host) = key.strip_prefix(PREFIX) else {
                    continue;
                };
                for path in value.split(',').filter(|p| !p.is_empty()) {
                    let r = Repository {
                        host: host.to_owned(),
                        path: path.to_owned(),
                    };
                    if r != *repo && !found.contains(&r) {
                        found.push(r);
                    }
                }
            }
        }
        found.sort_by_key(|r| r.host != repo.host);
        found
    }

    /// Makes a blob the store lacks (`size` bytes) present in `repo`: there already (HEAD),
    /// mounted from one of `sources` on its registry, or else streamed from one of `sources`
    /// to it (through memory, a chunk at a time; the store keeps nothing); else `NotFound`,
    /// naming the ways out.
    pub(super) fn bring_absent(
        registry: &Registry,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        sources: &[Repository],
        name: &str,
    ) -> Result<Sent> {
        if registry.blob_head(repo, digest)?.is_some() {
            return Ok(Sent::Skipped);
        }
        for from in sources.iter().filter(|r| r.host == repo.host) {
            if registry.blob_mount(repo, digest, &from.path)? {
                return Ok(Sent::Mounted);
            }
        }
        // A registry may refuse a mount (or not support it): its own repositories can still
        // send the bytes.
        for from in sources {
            let stream = match registry.blob_get(from, digest, 0, Some(size)) {
                Ok(s) => s,
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            registry.blob_put_reader(
                repo,
                digest,
                &mut std::io::Read::take(stream.reader, size),
            )?;
            return Ok(Sent::Pushed(size));
        }
        let looked = if sources.is_empty() {
            "and no repository is known to hold it".to_owned()
        } else {
            let list: Vec<String> = sources
                .iter()
                .map(|r| format!("{}/{}", r.host, r.path))
                .collect();
            format!("nor in {}", list.join(", "))
        };
        Err(Error::NotFound(format!(
            "content {digest} of image {name} is not in the store, {looked}: pull the image \
             with --all-platforms first, or push the platforms you have with --platform"
        )))
    }

    pub(super) fn send_blob(
        &self,
        registry: &Registry,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        opts: &PushOptions,
    ) -> Result<Sent> {
        let progress = |sent: Sent| {
            if let Some(p) = &opts.progress {
                p.finish(digest);
            }
            Ok(sent)
        };
        if registry.blob_head(repo, digest)?.is_some() {
            return progress(Sent::Skipped);
        }
        let info = self.info(digest)?;
        if let Some(sources) = info.labels.get(&source_label(&repo.host)) {
            for from in sources
                .split(',')
                .filter(|r| !r.is_empty() && *r != repo.path)
            {
                if registry.blob_mount(repo, digest, from)? {
                    return progress(Sent::Mounted);
                }
            }
        }
        if let Some(p) = &opts.progress {
            p.start(digest, size, 0);
        }
        let path = self.blob_dir().path_for(digest);
        registry.blob_put_file(repo, digest, &path)?;
        if let Some(p) = &opts.progress {
            p.advance(digest, size);
        }
        progress(Sent::Pushed(size))
    }

    /// Adds `repo` to the source label of each blob (best effort: a label that cannot be
    /// written only costs a later mount).
    pub(super) fn label_source(&self, repo: &Repository, digests: &[Digest]) {
        let key = source_label(&repo.host);
        for d in digests {
            let Ok(mut info) = self.info(d) else { continue };
            let current = info.labels.get(&key).cloned().unwrap_or_default();
            if current.split(',').any(|r| r == repo.path) {
                continue;
            }
            let value = if current.is_empty() {
                repo.path.clone()
            } else {
                format!("{current},{}", repo.path)
            };
            info.labels.insert(key.clone(), value);
            let field = format!("labels.{key}");
            if let Err(e) = self.update(&info, &[field.as_str()]) {
                tracing::warn!(digest = %d, error = %e, "could not record a blob's source");
            }
        }
    }
}
