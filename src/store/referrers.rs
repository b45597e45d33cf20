//! Referrers (OCI 1.1): the manifests whose `subject` names a given manifest — its
//! signatures, SBOMs and attestations. Found from the reverse references table (the subject
//! is one of a manifest's recorded children), then confirmed by reading each candidate
//! parent, so the cost follows the number of parents, not the size of the store.

use std::collections::{BTreeSet, VecDeque};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::Store;

pub(crate) use crate::oci::referrers::as_referrer;
pub use crate::oci::referrers::{MAX_REFERRERS, Referrer, artifact_type_of, with_artifact_type};

impl Store {
    /// The referrers of `subject` stored here (manifests whose `subject` is it), by digest;
    /// with `artifact_type`, only those of that type.
    pub fn referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let mut out = Vec::new();
        for parent in self.parents(subject)? {
            let bytes =
                match crate::helpers::read_blob_prefix(self, &parent, crate::edges::MAX_PARSED) {
                    Ok(b) => b,
                    Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
            let Some((named, media_type, artifact, annotations)) = as_referrer(&bytes) else {
                continue;
            };
            if named != *subject || artifact_type.is_some_and(|t| artifact.as_deref() != Some(t)) {
                continue;
            }
            let size = match self.blob_record(&parent)? {
                Some(rec) => rec.size,
                None => continue,
            };
            out.push(Referrer {
                digest: parent,
                media_type,
                artifact_type: artifact,
                size,
                annotations,
                subject: *subject,
            });
        }
        Ok(out)
    }

    /// [`Store::referrers`] of `subject`, then of each referrer found (a signature on an
    /// SBOM), breadth first; each referrer once, whatever cycles the documents claim, and at
    /// most [`MAX_REFERRERS`] (more is `FailedPrecondition`). The artifact type filters
    /// what is listed, not what is followed.
    pub fn referrers_recursive(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let mut seen: BTreeSet<Digest> = BTreeSet::from([*subject]);
        let mut queue = VecDeque::from([*subject]);
        let mut out = Vec::new();
        while let Some(d) = queue.pop_front() {
            for r in self.referrers(&d, None)? {
                if !seen.insert(r.digest) {
                    continue;
                }
                if seen.len() > MAX_REFERRERS {
                    return Err(Error::FailedPrecondition(format!(
                        "{subject} has more than {MAX_REFERRERS} referrers, directly or through \
                         other referrers"
                    )));
                }
                queue.push_back(r.digest);
                if artifact_type.is_none_or(|t| r.artifact_type.as_deref() == Some(t)) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

/// The `subject` of the stored blob `key`, when it is a small JSON manifest that has one
/// (read from its file; nothing larger than [`crate::edges::MAX_PARSED`] is read).
pub(crate) fn subject_of(store: &Store, key: &str) -> Result<Option<Digest>> {
    let Ok(digest) = Digest::parse(key) else {
        return Ok(None);
    };
    let path = store.blob_dir().path_for(&digest);
    let bytes = match std::fs::metadata(&path) {
        Ok(m) if m.len() <= crate::edges::MAX_PARSED => match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read a manifest", &path, e)),
        },
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("stat a blob", &path, e)),
    };
    Ok(as_referrer(&bytes).map(|(subject, ..)| subject))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Manager;
    use crate::helpers::write_blob;

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn put(store: &Store, bytes: &[u8]) -> Digest {
        write_blob(store, "t", &mut &bytes[..], None, None, Default::default()).unwrap()
    }

    /// A manifest with one config blob, and a subject when given.
    fn manifest(
        store: &Store,
        config: &[u8],
        artifact: Option<&str>,
        subject: Option<&Digest>,
    ) -> Digest {
        let c = put(store, config);
        let mut doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": c.to_string(), "size": config.len()},
            "layers": [],
            "annotations": {"org.opencontainers.image.created": "2026-12-06T00:00:00Z"},
        });
        if let Some(t) = artifact {
            doc["artifactType"] = t.into();
        }
        if let Some(s) = subject {
            let size = store.info(s).map_or(0, |i| i.size);
            doc["subject"] =
                serde_json::json!({"mediaType": MANIFEST, "digest": s.to_string(), "size": size});
        }
        put(store, &serde_json::to_vec(&doc).unwrap())
    }

    /// An image with a signature and an SBOM, and a signature on the SBOM.
    fn signed_image(store: &Store) -> [Digest; 4] {
        let image = manifest(store, b"{\"image\":1}", None, None);
        let sig = manifest(store, b"{\"sig\":1}", Some(SIG), Some(&image));
        let sbom = manifest(store, b"{\"sbom\":1}", Some(SBOM), Some(&image));
        let sbom_sig = manifest(store, b"{\"sig\":2}", Some(SIG), Some(&sbom));
        [image, sig, sbom, sbom_sig]
    }

    const SIG: &str = "application/vnd.dev.sigstore";
    const SBOM: &str = "application/spdx+json";

    fn descriptor(store: &Store, d: &Digest) -> oci_spec::image::Descriptor {
        crate::names::descriptor(MANIFEST, d, store.info(d).unwrap().size).unwrap()
    }

    #[test]
    fn referrers_are_listed_filtered_and_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let [image, sig, sbom, sbom_sig] = signed_image(&store);
        let mut direct: Vec<Digest> = store
            .referrers(&image, None)
            .unwrap()
            .iter()
            .map(|r| r.digest)
            .collect();
        direct.sort();
        let mut want = vec![sig, sbom];
        want.sort();
        assert_eq!(direct, want);
        let signed = store
            .referrers(&image, Some("application/vnd.dev.sigstore"))
            .unwrap();
        assert_eq!(signed.len(), 1);
        assert_eq!(signed[0].digest, sig);
        assert_eq!(
            signed[0].artifact_type.as_deref(),
            Some("application/vnd.dev.sigstore")
        );
        assert_eq!(
            signed[0].annotations["org.opencontainers.image.created"],
            "2026-12-06T00:00:00Z"
        );
        let all = store
            .referrers_recursive(&image, Some("application/vnd.dev.sigstore"))
            .unwrap();
        let mut all: Vec<Digest> = all.iter().map(|r| r.digest).collect();
        all.sort();
        let mut want = vec![sig, sbom_sig];
        want.sort();
        assert_eq!(all, want, "a signature on the SBOM comes with --recursive");
        assert!(store.referrers(&sig, None).unwrap().is_empty());
    }

    #[test]
    fn gc_keeps_the_referrers_of_kept_images_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let [image, sig, sbom, sbom_sig] = signed_image(&store);
        let other = manifest(&store, b"{\"other\":1}", None, None);
        let orphan = manifest(
            &store,
            b"{\"sig\":3}",
            Some("application/vnd.dev.sigstore"),
            Some(&other),
        );
        store
            .put_image("lab/app:1", descriptor(&store, &image), None)
            .unwrap();
        store.gc(&Default::default()).unwrap();
        for kept in [image, sig, sbom, sbom_sig] {
            assert!(store.info(&kept).is_ok(), "{kept} is kept with its image");
            for child in store.children(&kept).unwrap() {
                assert!(store.info(&child).is_ok(), "{child} of {kept} is kept");
            }
        }
        for gone in [other, orphan] {
            assert_eq!(
                store.info(&gone).unwrap_err().kind(),
                crate::ErrorKind::NotFound
            );
        }
        // Without its name the image goes, and its referrers with it.
        store.delete_image("lab/app:1").unwrap();
        store.gc(&Default::default()).unwrap();
        for gone in [image, sig, sbom, sbom_sig] {
            assert_eq!(
                store.info(&gone).unwrap_err().kind(),
                crate::ErrorKind::NotFound
            );
        }
    }

    #[test]
    fn prune_takes_an_image_and_its_referrers_as_one_unit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let all = || crate::prune::Options {
            max_used: Some(1),
            ..Default::default()
        };
        let pin: crate::Labels = [("ocistore.pin".to_owned(), "true".to_owned())].into();
        let image = manifest(&store, b"{\"image\":1}", None, None);
        let sig = manifest(
            &store,
            b"{\"sig\":1}",
            Some("application/vnd.dev.sigstore"),
            Some(&image),
        );
        store
            .put_image("lab/app:1", descriptor(&store, &image), Some(pin.clone()))
            .unwrap();
        let other = manifest(&store, b"{\"other\":1}", None, None);
        let other_sig = manifest(
            &store,
            b"{\"sig\":3}",
            Some("application/vnd.dev.sigstore"),
            Some(&other),
        );
        store.prune(&all()).unwrap();
        assert!(
            store.info(&image).is_ok() && store.info(&sig).is_ok(),
            "a pinned image keeps its referrers"
        );
        for gone in [other, other_sig] {
            assert!(store.info(&gone).is_err(), "unnamed {gone} goes");
        }
        // Unpinned and over budget: the image and its signature go together.
        store
            .put_image(
                "lab/app:1",
                descriptor(&store, &image),
                Some(Default::default()),
            )
            .unwrap();
        store.prune(&all()).unwrap();
        for gone in [image, sig] {
            assert!(store.info(&gone).is_err(), "{gone} goes with its image");
        }
        // A pinned referrer alone does not keep its image.
        let image = manifest(&store, b"{\"image\":2}", None, None);
        let sig = manifest(
            &store,
            b"{\"sig\":2}",
            Some("application/vnd.dev.sigstore"),
            Some(&image),
        );
        store
            .put_image("lab/sig:1", descriptor(&store, &sig), Some(pin))
            .unwrap();
        store.prune(&all()).unwrap();
        assert!(store.info(&sig).is_ok(), "the pinned referrer stays");
        assert!(store.info(&image).is_err(), "its image, unnamed, goes");
    }
}
