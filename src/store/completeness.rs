//! Whether an image is whole for a platform (name → index → the platform's manifest → its
//! config and layers, each present with its stated size), and how big it is.

use std::io::Read;

use oci_spec::image::{Descriptor, Platform};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::names::{self, AsName, Image, descriptor_digest, platform_matches};
use crate::store::Store;
use crate::store::images::image_in;
use crate::store::schema::NAMES;
use crate::store::snapshot::Snapshot;

/// What [`Store::check_image`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completeness {
    /// Whether every piece is present with its stated size.
    pub complete: bool,
    /// The manifest chosen for the platform, when one was found.
    pub manifest: Option<Digest>,
    /// What is missing or wrong: (digest or name, why).
    pub missing: Vec<(String, String)>,
}

impl Store {
    /// Whether the image `name` is complete for `platform`: name → index → the platform's
    /// manifest → its config and every layer present with the size the descriptor states.
    pub fn check_image(&self, name: impl AsName, platform: &Platform) -> Result<Completeness> {
        let key = name.as_name()?.to_string();
        // The name and every record from one snapshot: an `image rm` and a gc beside the
        // check would otherwise have it report what they took as missing from an image whose
        // name is gone. Manifests are read from their files, which a gc removes after its
        // commit; a read that finds one gone is retried on a newer snapshot.
        let (image, c) = self.on_fresh_snapshots(|snap| {
            let table = snap
                .open_table(NAMES)
                .map_err(|e| Error::db("open the names table", e))?;
            let image = image_in(&table, &key)?;
            let c = self.check_target_in(snap, &image.target, platform)?;
            Ok((image, c))
        })?;
        // A check is a use (a build checking its base image before it runs).
        self.record_use(
            std::iter::once(crate::store::uses::Used::Image(image.name))
                .chain(c.manifest.map(crate::store::uses::Used::Content)),
        );
        Ok(c)
    }

    /// [`Store::check_image`] of an image's target descriptor (no name lookup).
    /// Content removed while it is checked is missing.
    pub fn check_target(&self, target: &Descriptor, platform: &Platform) -> Result<Completeness> {
        match self.on_fresh_snapshots(|snap| self.check_target_in(snap, target, platform)) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Completeness {
                complete: false,
                manifest: None,
                missing: vec![(target.digest().to_string(), e.to_string())],
            }),
            c => c,
        }
    }

    /// Runs `check` on a snapshot, and on a newer one (twice at most) when it found a file
    /// gone (`NotFound`) that a removal took after the snapshot was taken: records go in the
    /// removal's transaction, files after it, so the newer snapshot no longer has the record.
    fn on_fresh_snapshots<T>(&self, mut check: impl FnMut(&Snapshot) -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match check(&*self.read_txn()?) {
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < 3 => {}
                r => return r,
            }
        }
    }

    /// [`Store::check_target`] against the records of `snap`.
    fn check_target_in(
        &self,
        snap: &Snapshot,
        target: &Descriptor,
        platform: &Platform,
    ) -> Result<Completeness> {
        let mut missing = Vec::new();
        let mut manifest = None;
        // What is wanted of an index: its entry for `platform` and every entry without a
        // platform (an artifact, a referrers index, an attestation list), as containerd's
        // FilterPlatforms keeps them. An index whose entries all lack a platform is complete
        // when all of them are; one whose entries all name other platforms is not.
        let mut wanted: Vec<(Descriptor, usize)> = vec![(target.clone(), 0)];
        while let Some((desc, depth)) = wanted.pop() {
            let d = descriptor_digest(&desc)?;
            if depth > 8 {
                missing.push((d.to_string(), "indexes nested deeper than 8".into()));
                continue;
            }
            if !present_with_size(snap, &d, desc.size(), &mut missing)? {
                continue;
            }
            let bytes = crate::helpers::read_blob_prefix(self, &d, crate::edges::MAX_PARSED)?;
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(list) = doc.get("manifests").and_then(Value::as_array) {
                let entry = |m: &Value| serde_json::from_value::<Descriptor>(m.clone()).ok();
                let (platformed, platformless): (Vec<&Value>, Vec<&Value>) =
                    list.iter().partition(|m| m.get("platform").is_some());
                let chosen = platformed.iter().find(|m| {
                    m.get("platform")
                        .and_then(|p| serde_json::from_value::<Platform>(p.clone()).ok())
                        .is_some_and(|p| platform_matches(platform, &p))
                });
                // Last pushed is first checked: the platform's own manifest is the one
                // reported as `manifest`.
                wanted.extend(
                    platformless
                        .iter()
                        .rev()
                        .filter_map(|m| entry(m))
                        .map(|e| (e, depth + 1)),
                );
                match chosen.and_then(|m| entry(m)) {
                    Some(next) => wanted.push((next, depth + 1)),
                    None if !platformed.is_empty() || platformless.is_empty() => {
                        missing.push((
                            d.to_string(),
                            format!(
                                "index has no manifest for {}",
                                names::platform_string(platform)
                            ),
                        ));
                    }
                    None => {}
                }
                continue;
            }
            manifest.get_or_insert(d);
            let parts = doc.get("config").into_iter().chain(
                doc.get("layers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
            for part in parts {
                let Ok(pd) = serde_json::from_value::<Descriptor>(part.clone()) else {
                    missing.push((d.to_string(), "malformed descriptor in manifest".into()));
                    continue;
                };
                let digest = descriptor_digest(&pd)?;
                present_with_size(snap, &digest, pd.size(), &mut missing)?;
            }
        }
        Ok(Completeness {
            complete: missing.is_empty(),
            manifest,
            missing,
        })
    }

    /// The image's size for `platform`, as `ctr images ls` counts it: the index (if any),
    /// the platform's manifest, its config and its layers, by their descriptors' sizes.
    /// When no manifest for `platform` is in the store, the top descriptor's size.
    pub fn image_size(&self, image: &Image, platform: &Platform) -> Result<u64> {
        self.target_size(&image.target, platform)
    }

    /// [`Store::image_size`] of each of `images`, computed once per target: names that point
    /// at one image read its documents once (`image ls` over 10,000 names of 1,000 images
    /// reads 1,000 manifests). An image whose size cannot be told (a document missing or not
    /// JSON) is its target's size.
    pub fn image_sizes(&self, images: &[Image], platform: &Platform) -> Vec<u64> {
        let mut known: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        images
            .iter()
            .map(|i| {
                *known.entry(i.target.digest().as_ref()).or_insert_with(|| {
                    (self.target_size(&i.target, platform)).unwrap_or(i.target.size())
                })
            })
            .collect()
    }

    /// The size of `target` for `platform`: see [`Store::image_size`]. Reads the documents
    /// on the way down to the platform's manifest (a typed parse that skips all but sizes,
    /// digests and platforms), nothing else.
    fn target_size(&self, target: &Descriptor, platform: &Platform) -> Result<u64> {
        #[derive(serde::Deserialize)]
        struct Sized {
            size: u64,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            digest: String,
            platform: Option<Value>,
        }
        #[derive(serde::Deserialize)]
        struct Document {
            manifests: Option<Vec<Entry>>,
            config: Option<Sized>,
            #[serde(default)]
            layers: Vec<Sized>,
        }
        let mut d = descriptor_digest(target)?;
        for depth in 0..8 {
            // The file itself, without a record lookup (cold in a database of a million
            // blobs): a size shown is no promise, and a file gone is a size unknown.
            let path = self.blob_dir().path_for(&d);
            self.count_blob_open();
            let mut bytes = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(crate::edges::MAX_PARSED).read_to_end(&mut bytes))
                .map_err(|e| Error::io("read", &path, e))?;
            let Ok(doc) = serde_json::from_slice::<Document>(&bytes) else {
                return Ok(target.size());
            };
            if let Some(list) = doc.manifests {
                // An index of entries without platforms (an artifact index): its first.
                let any_platform = list.iter().any(|m| m.platform.is_some());
                let mut list = list.into_iter();
                let chosen = if any_platform {
                    list.find(|m| {
                        (m.platform.clone())
                            .and_then(|p| serde_json::from_value::<Platform>(p).ok())
                            .is_some_and(|p| platform_matches(platform, &p))
                    })
                } else {
                    list.next()
                };
                match chosen.map(|m| Digest::parse(&m.digest)) {
                    Some(Ok(next)) => {
                        d = next;
                        continue;
                    }
                    _ => return Ok(target.size()),
                }
            }
            let own = bytes.len() as u64;
            let parts =
                (doc.config.iter().chain(&doc.layers)).fold(0u64, |a, p| a.saturating_add(p.size));
            let index = if depth == 0 { 0 } else { target.size() };
            return Ok(own.saturating_add(parts).saturating_add(index));
        }
        Ok(target.size())
    }
}

/// Whether `d` is recorded in `snap` with `size`; else why not, added to `missing`.
fn present_with_size(
    snap: &Snapshot,
    d: &Digest,
    size: u64,
    missing: &mut Vec<(String, String)>,
) -> Result<bool> {
    match crate::store::lookup_blob(snap, d)? {
        None => {
            missing.push((d.to_string(), "missing".into()));
            Ok(false)
        }
        Some(rec) if rec.size != size => {
            missing.push((
                d.to_string(),
                format!("size {} but the descriptor says {size}", rec.size),
            ));
            Ok(false)
        }
        Some(_) => Ok(true),
    }
}
