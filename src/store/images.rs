//! The name index: normalised reference → descriptor, with tags, index merging and labels;
//! whether an image is whole is in `completeness.rs`.

use oci_spec::image::Descriptor;
use redb::{ReadableTable, WriteTransaction};
use serde_json::{Value, json};

use crate::content::{Labels, Manager, validate_labels};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::filter;
use crate::names::{self, AsName, Image, Name, descriptor_digest};
use crate::query::ImageFields;
use crate::store::records::{self, NameRecord, Nanos};
use crate::store::schema::NAMES;
use crate::store::{Store, edge_tables};

/// Media types of indexes (OCI and docker's manifest list).
pub const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

pub(crate) fn image_of(name: &str, rec: NameRecord) -> Result<Image> {
    let target: Descriptor = serde_json::from_str(&rec.target).map_err(|e| {
        Error::Corrupted(format!("name {name:?} holds a malformed descriptor: {e}"))
    })?;
    Ok(Image {
        name: name.to_owned(),
        target,
        created_at: rec.created.into(),
        updated_at: rec.updated.into(),
        labels: rec.labels,
    })
}

/// The image named `key` (normalised) in `table`; `NotFound` when there is none.
pub(crate) fn image_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Image> {
    match table.get(key).map_err(|e| Error::db("read a name", e))? {
        Some(v) => image_of(key, records::decode(v.value(), key)?),
        None => Err(Error::NotFound(format!("image {key}"))),
    }
}

/// Writes names inside `txn`, keeping `created` and labels of names that exist.
pub(crate) fn put_names(
    txn: &WriteTransaction,
    names: &[(String, Descriptor, Option<Labels>)],
) -> Result<()> {
    let mut table = txn
        .open_table(NAMES)
        .map_err(|e| Error::db("open the names table", e))?;
    let now = Nanos::now();
    for (name, target, labels) in names {
        let old: Option<NameRecord> = table
            .get(name.as_str())
            .map_err(|e| Error::db("read a name", e))?
            .map(|v| records::decode(v.value(), name))
            .transpose()?;
        let target = serde_json::to_string(target)
            .map_err(|e| Error::InvalidArgument(format!("descriptor for {name}: {e}")))?;
        let rec = NameRecord {
            target,
            created: old.as_ref().map_or(now, |o| o.created),
            updated: now,
            labels: labels
                .clone()
                .or_else(|| old.map(|o| o.labels))
                .unwrap_or_default(),
        };
        table
            .insert(name.as_str(), records::encode(&rec).as_slice())
            .map_err(|e| Error::db("write a name", e))?;
    }
    Ok(())
}

impl Store {
    /// Points `name` (normalised with docker's rules) at `target`, replacing what it pointed
    /// at. `labels`, when given, replace the name's labels. Durable on return.
    pub fn put_image(
        &self,
        name: impl AsName,
        target: Descriptor,
        labels: Option<Labels>,
    ) -> Result<Image> {
        let name = name.as_name()?;
        let key = name.to_string();
        if let Some(l) = &labels {
            validate_labels(l)?;
        }
        descriptor_digest(&target)?;
        let txn = self.write_txn("write a name")?;
        put_names(&txn, &[(key.clone(), target, labels)])?;
        txn.commit().map_err(|e| Error::db("commit a name", e))?;
        self.image(&*name)
    }

    /// Points each of `targets` at what `source` (a name or a digest, see
    /// [`Store::resolve`]) points at, in one transaction that reads the source there: a name
    /// as that transaction sees it (while it stands, gc keeps all it reaches), a digest only
    /// while its content is recorded. A source removed meanwhile is `NotFound` and no name is
    /// written, never a name pointing at nothing or at what a gc left. Durable on return.
    pub fn tag_image(&self, source: &str, targets: &[&str]) -> Result<Vec<Image>> {
        let keys = (targets.iter())
            .map(|t| Name::parse(t).map(|n| n.to_string()))
            .collect::<Result<Vec<_>>>()?;
        let by_name = match Digest::parse(source) {
            Ok(_) => None,
            Err(_) => Some(Name::parse(source)?).filter(|n| n.digest.is_none()),
        };
        match by_name {
            Some(name) => self.put_names_at(&keys, |txn| {
                let table = txn
                    .open_table(NAMES)
                    .map_err(|e| Error::db("open the names table", e))?;
                Ok(image_in(&table, &name.to_string())?.target)
            })?,
            None => {
                let target = self.resolve(source)?;
                self.put_names_at_present(&keys, target, &format!("tagging {source}"))?;
            }
        }
        keys.iter().map(|k| self.image(k)).collect()
    }

    /// Points `keys` (normalised names) at the descriptor `target` reads inside the write
    /// transaction that writes them.
    fn put_names_at(
        &self,
        keys: &[String],
        target: impl FnOnce(&WriteTransaction) -> Result<Descriptor>,
    ) -> Result<()> {
        let txn = self.write_txn("write a name")?;
        let target = target(&txn)?;
        let names: Vec<_> = (keys.iter())
            .map(|k| (k.clone(), target.clone(), None))
            .collect();
        put_names(&txn, &names)?;
        txn.commit().map_err(|e| Error::db("commit a name", e))
    }

    /// Points `keys` (normalised names) at `target`, provided the target's blob is recorded
    /// in the write transaction that writes them. gc marks from the names inside its own
    /// write transaction, so once this commits the content is held; when gc committed first,
    /// this is `NotFound` and no name is written.
    fn put_names_at_present(&self, keys: &[String], target: Descriptor, what: &str) -> Result<()> {
        let digest = descriptor_digest(&target)?;
        self.put_names_at(keys, |txn| {
            let present = txn
                .open_table(crate::store::schema::BLOBS)
                .map_err(|e| Error::db("open the blobs table", e))?
                .get(digest.as_str())
                .map_err(|e| Error::db("read a blob record", e))?
                .is_some();
            if present {
                Ok(target)
            } else {
                Err(Error::NotFound(format!(
                    "content {digest} (removed while {what} ran; no name was written)"
                )))
            }
        })
    }

    /// The image stored under `name`; `NotFound` when there is none.
    pub fn image(&self, name: impl AsName) -> Result<Image> {
        let key = name.as_name()?.to_string();
        let txn = self.read_txn()?;
        let table = txn
            .open_table(NAMES)
            .map_err(|e| Error::db("open the names table", e))?;
        image_in(&table, &key)
    }

    /// Every image matching any of `filters` (fields `name`, `target.digest`,
    /// `target.mediatype`, `labels.<key>`), sorted by name.
    pub fn images(&self, filters: &[&str]) -> Result<Vec<Image>> {
        let filter = filter::parse_all(filters)?;
        let txn = self.read_txn()?;
        let table = txn
            .open_table(NAMES)
            .map_err(|e| Error::db("open the names table", e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| Error::db("list names", e))? {
            let (k, v) = entry.map_err(|e| Error::db("list names", e))?;
            let image = image_of(k.value(), records::decode(v.value(), k.value())?)?;
            if filter.matches(&ImageFields(&image)) {
                out.push(image);
            }
        }
        Ok(out)
    }

    /// Finds the descriptor for a name or a digest. A digest (bare, or in `name@digest`) wins
    /// over a tag: it is looked up among the names' targets, else among the blobs, with the
    /// media type read from the blob itself.
    pub fn resolve(&self, reference: &str) -> Result<Descriptor> {
        let digest = match Digest::parse(reference) {
            Ok(d) => d,
            Err(_) => {
                let name = Name::parse(reference)?;
                match name.digest {
                    Some(d) => d,
                    None => return Ok(self.image(&name)?.target),
                }
            }
        };
        let digest_str = digest.to_string();
        if let Some(image) = self
            .images(&[&format!("target.digest=={digest_str}")])?
            .into_iter()
            .next()
        {
            return Ok(image.target);
        }
        let info = self.info(&digest)?;
        let media_type = sniff_media_type(&crate::helpers::read_blob_prefix(
            self,
            &digest,
            crate::edges::MAX_PARSED,
        )?);
        names::descriptor(&media_type, &digest, info.size)
    }

    /// The tags of `repository` (normalised), in order; `last` starts after that tag and
    /// `limit` caps the count (registry-style paging).
    pub fn tags(
        &self,
        repository: &str,
        limit: Option<usize>,
        last: Option<&str>,
    ) -> Result<Vec<String>> {
        let repo = Name::parse(repository)?.repository();
        let prefix = format!("{repo}:");
        let start = match last {
            Some(t) => format!("{prefix}{t}\u{0}"),
            None => prefix.clone(),
        };
        let txn = self.read_txn()?;
        let table = txn
            .open_table(NAMES)
            .map_err(|e| Error::db("open the names table", e))?;
        let mut out = Vec::new();
        for entry in table
            .range(start.as_str()..)
            .map_err(|e| Error::db("list tags", e))?
        {
            let (k, _) = entry.map_err(|e| Error::db("list tags", e))?;
            let Some(tag) = k.value().strip_prefix(&prefix) else {
                break;
            };
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            out.push(tag.to_owned());
        }
        Ok(out)
    }

    /// Removes the name (a tag or a digest reference); the content stays until gc.
    /// `NotFound` when there is no such name.
    pub fn delete_image(&self, name: impl AsName) -> Result<()> {
        let key = name.as_name()?.to_string();
        let txn = self.write_txn("delete a name")?;
        let existed = txn
            .open_table(NAMES)
            .map_err(|e| Error::db("open the names table", e))?
            .remove(key.as_str())
            .map_err(|e| Error::db("remove a name", e))?
            .is_some();
        if !existed {
            return Err(Error::NotFound(format!("image {key}")));
        }
        crate::store::uses::forget_in(&txn, "image", &key)?;
        txn.commit()
            .map_err(|e| Error::db("commit a name removal", e))
    }

    /// Deletes the manifest (or index) `digest` and every name that points at it, in one
    /// transaction; returns the names removed. `NotFound` when neither exists.
    pub fn delete_manifest(&self, digest: &Digest) -> Result<Vec<String>> {
        let key = digest.to_string();
        let doomed: Vec<String> = self
            .images(&[&format!("target.digest=={key}")])?
            .into_iter()
            .map(|i| i.name)
            .collect();
        let had_blob = self.blob_record(digest)?.is_some();
        if doomed.is_empty() && !had_blob {
            return Err(Error::NotFound(format!("manifest {digest}")));
        }
        let _removal = self.begin_removal("delete a manifest")?;
        let txn = self.write_txn("delete a manifest")?;
        {
            let mut names = txn
                .open_table(NAMES)
                .map_err(|e| Error::db("open the names table", e))?;
            for n in &doomed {
                names
                    .remove(n.as_str())
                    .map_err(|e| Error::db("remove a name", e))?;
            }
        }
        for n in &doomed {
            crate::store::uses::forget_in(&txn, "image", n)?;
        }
        self.remove_blob_in(&txn, &key)?;
        edge_tables::forget(&txn, &key)?;
        txn.commit()
            .map_err(|e| Error::db("commit a manifest removal", e))?;
        if let Err(e) = self.remove_unrecorded_files(std::slice::from_ref(digest)) {
            tracing::warn!(%digest, error = %e, "manifest record deleted but its file remains");
        }
        Ok(doomed)
    }

    /// Writes or merges the image index of `name` from `entries`: an existing index keeps its
    /// other platforms; an entry with the same os/architecture/variant/os.version replaces the
    /// old one; platform-less entries (attestations) are kept unless their content is gone.
    /// The new index is committed as a blob and the name points at it.
    pub fn write_index(&self, name: impl AsName, entries: &[Descriptor]) -> Result<Image> {
        let name = name.as_name()?;
        let mut manifests: Vec<Value> = match self.image(&*name) {
            Ok(img)
                if INDEX_MEDIA_TYPES.contains(&img.target.media_type().to_string().as_str()) =>
            {
                let bytes = crate::helpers::read_blob(self, &img.digest()?)?;
                let doc: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupted(format!("index of {name} is not JSON: {e}")))?;
                doc.get("manifests")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            }
            Ok(_) => Vec::new(),
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let platform_key = |v: &Value| -> Option<(String, String, String, String)> {
            let p = v.get("platform")?;
            let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            Some((s("os"), s("architecture"), s("variant"), s("os.version")))
        };
        // Platform-less entries stay only while what they point at is here.
        manifests.retain(|m| {
            platform_key(m).is_some()
                || m.get("digest")
                    .and_then(Value::as_str)
                    .and_then(|d| Digest::parse(d).ok())
                    .is_some_and(|d| self.blob_record(&d).ok().flatten().is_some())
        });
        for entry in entries {
            let v = serde_json::to_value(entry)
                .map_err(|e| Error::InvalidArgument(format!("descriptor: {e}")))?;
            descriptor_digest(entry)?;
            match platform_key(&v) {
                Some(k) => {
                    if let Some(slot) = manifests
                        .iter_mut()
                        .find(|m| platform_key(m).as_ref() == Some(&k))
                    {
                        *slot = v;
                    } else {
                        manifests.push(v);
                    }
                }
                None => {
                    if !manifests.contains(&v) {
                        manifests.push(v);
                    }
                }
            }
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPES[0],
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).expect("a JSON value serialises");
        let digest = crate::digest::Algorithm::Sha256.digest(&bytes);
        crate::helpers::write_blob(
            self,
            &format!("index-{digest}"),
            &mut &bytes[..],
            Some(bytes.len() as u64),
            Some(&digest),
            Labels::new(),
        )?;
        let desc = names::descriptor(INDEX_MEDIA_TYPES[0], &digest, bytes.len() as u64)?;
        // Committed above, but a gc may take it before the name holds it.
        self.put_names_at_present(&[name.to_string()], desc, "writing the index")?;
        self.image(&*name)
    }

    /// Sets (`set`) and removes (`remove`) labels of the image `name` in one transaction;
    /// the image as it is after. `NotFound` when there is no such name. An image labelled
    /// `ocistore.pin` is never pruned.
    pub fn label_image(&self, name: impl AsName, set: &Labels, remove: &[&str]) -> Result<Image> {
        let name = name.as_name()?;
        let key = name.to_string();
        validate_labels(set)?;
        let txn = self.write_txn("label an image")?;
        {
            let mut table = txn
                .open_table(NAMES)
                .map_err(|e| Error::db("open the names table", e))?;
            let mut rec: NameRecord = match table
                .get(key.as_str())
                .map_err(|e| Error::db("read a name", e))?
            {
                Some(v) => records::decode(v.value(), &key)?,
                None => return Err(Error::NotFound(format!("image {key}"))),
            };
            for k in remove {
                rec.labels.remove(*k);
            }
            rec.labels
                .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            validate_labels(&rec.labels)?;
            rec.updated = Nanos::now();
            table
                .insert(key.as_str(), records::encode(&rec).as_slice())
                .map_err(|e| Error::db("write a name", e))?;
        }
        txn.commit()
            .map_err(|e| Error::db("commit image labels", e))?;
        self.image(&*name)
    }
}

pub use crate::oci::sniff_media_type;
