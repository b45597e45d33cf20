//! Import and export on the store: the OCI interchange code (`crate::oci`) over a [`Batch`],
//! so that an import lands in one transaction or not at all.

use std::io::{Read, Write};
use std::path::Path;

use crate::digest::Digest;
use crate::error::Result;
use crate::names::Name;
use crate::oci::{export, import};
use crate::store::Store;
use crate::store::batch::Batch;
use crate::store::uses::Used;

impl import::Sink for Batch {
    fn is_committed(&mut self, digest: &Digest) -> Result<bool> {
        Batch::is_committed(self, digest)
    }

    fn stage(
        &mut self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<import::Staged> {
        let s = Batch::stage(self, reader, expected, size, Default::default())?;
        Ok(import::Staged {
            digest: s.digest,
            size: s.size,
            written: s.written,
        })
    }

    fn read(&mut self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        Batch::read(self, digest, limit)
    }

    fn committed_size(&mut self, digest: &Digest) -> Result<Option<u64>> {
        self.committed_record_size(digest)
    }
}

/// One image an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedName {
    /// The normalised name.
    pub name: String,
    /// What it points at.
    pub digest: Digest,
    /// The target's media type.
    pub media_type: String,
    /// The target's size.
    pub size: u64,
}

/// What [`Store::import_path`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The names written, in input order.
    pub images: Vec<ImportedName>,
    /// Blobs newly written.
    pub blobs_written: u64,
    /// Blobs that were already in the store.
    pub blobs_present: u64,
    /// Bytes newly written.
    pub bytes_written: u64,
}

/// The name an import gives a manifest its input lists without a name (and that is not a
/// referrer): `localhost/untagged@<digest>`.
pub fn untagged_name(digest: &Digest) -> String {
    format!("localhost/untagged@{digest}")
}

impl Store {
    /// Imports an OCI layout directory, an archive of one (plain, gzip or zstd tar) or a
    /// `docker save` archive. Every blob is verified before it becomes visible; blobs already
    /// present are not written again; all names and blobs land in one transaction, and a
    /// failed import leaves the store as it was. An image without a name (and no
    /// `opts.name`) is a referrer, kept by its subject, or else named [`untagged_name`].
    pub fn import_path(&self, path: &Path, opts: import::Options) -> Result<ImportOutcome> {
        let mut batch = self.batch()?;
        let out = import::import_path(path, &mut batch, opts)?;
        self.finish_import(batch, out)
    }

    /// [`Store::import_path`] from a stream (an archive on stdin).
    pub fn import_reader(
        &self,
        reader: &mut dyn Read,
        opts: import::Options,
    ) -> Result<ImportOutcome> {
        let mut batch = self.batch()?;
        let out = import::import_reader(reader, &mut batch, opts)?;
        self.finish_import(batch, out)
    }

    fn finish_import(&self, mut batch: Batch, out: import::Outcome) -> Result<ImportOutcome> {
        let mut images = Vec::new();
        for img in &out.images {
            let mut name = img.name.clone();
            if name.is_empty() {
                // A referrer (a signature, an SBOM: listed untagged, as oras-go and
                // regclient write them) needs no name: gc keeps it with its subject.
                let digest = crate::names::descriptor_digest(&img.descriptor)?;
                let doc = batch.read(&digest, crate::edges::MAX_PARSED)?;
                if crate::store::referrers::as_referrer(&doc).is_some() {
                    continue;
                }
                // Anything else is kept by a name made from its digest.
                name = untagged_name(&digest);
            }
            let name = batch.put_name(&name, img.descriptor.clone(), None)?;
            images.push(ImportedName {
                name,
                digest: crate::names::descriptor_digest(&img.descriptor)?,
                media_type: img.descriptor.media_type().to_string(),
                size: img.descriptor.size(),
            });
        }
        let committed = batch.commit()?;
        Ok(ImportOutcome {
            images,
            blobs_written: committed.blobs_written,
            blobs_present: out.blobs_present.max(committed.blobs_present),
            bytes_written: committed.bytes_written,
        })
    }

    /// The images to export for `references` (names or digests; a digest must be named by
    /// some image so that the layout can carry a name).
    pub fn export_images(&self, references: &[&str]) -> Result<Vec<export::ExportImage>> {
        references
            .iter()
            .map(|r| {
                let image = self.image(r)?;
                let name = Name::parse(&image.name)?;
                Ok(export::ExportImage {
                    name: image.name.clone(),
                    tag: name.tag.clone(),
                    descriptor: image.target,
                })
            })
            .collect()
    }

    /// The referrers of the images `references` name, recursively (a signature on an SBOM),
    /// of their root and of every manifest of an index, for [`export::Options::referrers`];
    /// of `artifact_type` only when given.
    pub fn referrers_of_images(
        &self,
        references: &[&str],
        artifact_type: Option<&str>,
    ) -> Result<Vec<crate::oci::referrers::Referrer>> {
        let mut out: Vec<crate::oci::referrers::Referrer> = Vec::new();
        for image in self.export_images(references)? {
            let root = crate::names::descriptor_digest(&image.descriptor)?;
            let mut manifests = vec![root];
            if crate::oci::is_index(image.descriptor.media_type().as_ref()) {
                manifests.extend(self.children(&root)?);
            }
            for m in manifests {
                for r in self.referrers_recursive(&m, artifact_type)? {
                    if !out.iter().any(|have| have.digest == r.digest) {
                        out.push(r);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Exports the named images as an OCI layout archive to `out`. See
    /// [`export::export_archive`] for the layout and what `--platform` does.
    pub fn export_to(
        &self,
        references: &[&str],
        opts: &export::Options,
        out: &mut dyn Write,
    ) -> Result<export::Outcome> {
        let (images, _lease) = self.export_leased(references)?;
        export::export_archive(self, &images, opts, out)
    }

    /// Exports the named images to `path`, as an archive or a directory per `opts.format`.
    pub fn export_path(
        &self,
        references: &[&str],
        opts: &export::Options,
        path: &Path,
    ) -> Result<export::Outcome> {
        let (images, _lease) = self.export_leased(references)?;
        export::export_path(self, &images, opts, path)
    }

    /// The images to export, leased. A name moved to another target between its lookup and
    /// the lease (a pull or import of it meanwhile) is looked up again, twice at most; one
    /// removed is `NotFound`.
    fn export_leased(
        &self,
        references: &[&str],
    ) -> Result<(
        Vec<export::ExportImage>,
        Option<crate::store::lease::ReadLease>,
    )> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let images = self.export_images(references)?;
            match self.lease_exported(&images) {
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound && attempt < 3 => {}
                lease => return Ok((images, lease?)),
            }
        }
    }

    /// Keeps the exported images' content from a concurrent `image rm` + `gc` until the
    /// export is done (gc marks from a leased root through everything it references).
    fn lease_exported(
        &self,
        images: &[export::ExportImage],
    ) -> Result<Option<crate::store::lease::ReadLease>> {
        let roots = images
            .iter()
            .map(|i| crate::names::descriptor_digest(&i.descriptor))
            .collect::<Result<Vec<_>>>()?;
        // An export is a use of what it exports.
        self.record_use(
            (images.iter().map(|i| Used::Image(i.name.clone())))
                .chain(roots.iter().map(|d| Used::Content(*d))),
        );
        let leased: Vec<(&str, Digest)> = (images.iter().map(|i| i.name.as_str()))
            .zip(roots.iter().copied())
            .collect();
        self.lease_images("export", &leased)
    }
}
