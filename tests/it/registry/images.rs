//! Test images: OCI layouts built here from deterministic pseudo-random bytes, their layers
//! gzip-framed without compression (fast, and gzip layers that skopeo pushes unchanged) and
//! written streaming, never whole in memory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::sha256;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The platform of most test images.
pub const AMD64: &[&str] = &["linux/amd64"];
/// Two platforms: an index over them.
pub const AMD64_ARM64: &[&str] = &["linux/amd64", "linux/arm64/v8"];

/// A blob of a test image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// One platform's manifest of a test image.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: String,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// A test image in an OCI layout directory (tag `tag`).
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub tag: String,
    pub root: Blob,
    pub media_type: String,
    pub platforms: Vec<PlatformImage>,
}

impl Image {
    /// Every blob: the index (if any), manifests, configs, layers (deduplicated).
    pub fn blobs(&self) -> BTreeMap<String, u64> {
        let mut all = self.plain_blobs();
        all.insert(self.root.digest.clone(), self.root.size);
        for pi in &self.platforms {
            all.insert(pi.manifest.digest.clone(), pi.manifest.size);
        }
        all
    }

    /// Configs and layers (what a registry stores as blobs, not manifests).
    pub fn plain_blobs(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for pi in &self.platforms {
            for b in std::iter::once(&pi.config).chain(&pi.layers) {
                all.insert(b.digest.clone(), b.size);
            }
        }
        all
    }

    pub fn size(&self) -> u64 {
        self.blobs().values().sum()
    }

    pub fn platform(&self, name: &str) -> &PlatformImage {
        self.platforms
            .iter()
            .find(|pi| pi.platform == name)
            .unwrap_or_else(|| panic!("no {name} in the test image"))
    }

    pub fn layout_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }
}

/// `len` deterministic pseudo-random bytes (splitmix64 of `seed`).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.div_ceil(8) * 8];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in out.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The path of a blob in the layout at `dir`.
fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// Writes `bytes` into the layout's blob directory.
fn put_blob(dir: &Path, bytes: &[u8]) -> Blob {
    let digest = sha256(bytes);
    std::fs::write(blob_path(dir, &digest), bytes).unwrap();
    Blob {
        digest,
        size: bytes.len() as u64,
    }
}

/// A writer that hashes what goes through it (sha256).
struct Hashing<W: Write> {
    inner: W,
    hasher: ocistore::digest::Hasher,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: ocistore::Algorithm::Sha256.hasher(),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `size` pseudo-random bytes, one MiB of [`noise`] repeated with each MiB numbered, made
/// as they are read.
struct NoiseReader {
    block: Vec<u8>,
    left: u64,
    pos: usize,
    mib: u64,
}

impl Read for NoiseReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            self.pos = 0;
            self.mib += 1;
            self.block[..8].copy_from_slice(&self.mib.to_le_bytes());
        }
        let n = buf
            .len()
            .min(self.block.len() - self.pos)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A layer written streaming into the layout's blob directory: a tar holding one file of
/// `size` pseudo-random bytes ([`NoiseReader`] of `seed`), gzip-framed without compression.
/// Returns the blob and its diff ID.
fn layer(dir: &Path, seed: u64, size: usize) -> (Blob, String) {
    let tmp = dir.join("blobs/sha256/streaming.tmp");
    let file = std::fs::File::create(&tmp).unwrap();
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Hashing::new(std::io::BufWriter::with_capacity(1 << 20, file)),
            flate2::Compression::none(),
        );
    let mut b = tar::Builder::new(Hashing::new(gz));
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(1_704_067_200);
    h.set_size(size as u64);
    let data = NoiseReader {
        block: noise(seed, 1 << 20),
        left: size as u64,
        pos: 0,
        mib: 0,
    };
    b.append_data(&mut h, format!("data/layer-{seed}.bin"), data)
        .unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = tar.hasher.finalize().to_string();
    let gz = tar.inner.finish().unwrap();
    let digest = gz.hasher.finalize().to_string();
    let file = gz.inner.into_inner().unwrap();
    file.sync_all().unwrap();
    let len = file.metadata().unwrap().len();
    drop(file);
    std::fs::rename(&tmp, blob_path(dir, &digest)).unwrap();
    (Blob { digest, size: len }, diff_id)
}

/// `{"os", "architecture"[, "variant"]}` of `os/arch[/variant]`.
fn platform_json(platform: &str) -> Value {
    let mut parts = platform.split('/');
    let mut v = json!({
        "os": parts.next().unwrap(),
        "architecture": parts.next().unwrap(),
    });
    if let Some(variant) = parts.next() {
        v["variant"] = json!(variant);
    }
    v
}

/// Builds a test image in a new OCI layout at `dir`, tagged `tag`: for each platform
/// (`os/arch[/variant]`; `?os/arch` for an index entry without a `platform`, as artifact
/// indexes have) a config and one layer per entry of `layer_sizes`. With more than
/// one platform, an OCI index over them; the first layer is then shared by every platform,
/// as base layers are. Different `seed`s give disjoint layers.
pub fn build_image(
    dir: &Path,
    tag: &str,
    platforms: &[&str],
    layer_sizes: &[usize],
    seed: u64,
) -> Image {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = platforms.len() > 1;
    let mut pis = Vec::new();
    for (pi, platform) in platforms.iter().enumerate() {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (li, &size) in layer_sizes.iter().enumerate() {
            let shared = index && li == 0;
            let lseed = if shared {
                seed * 1000
            } else {
                seed * 1000 + (pi as u64 + 1) * 50 + li as u64
            };
            let (blob, diff_id) = layer(dir, lseed, size);
            layers.push(blob);
            diff_ids.push(diff_id);
        }
        let mut config = platform_json(platform.trim_start_matches('?'));
        config["created"] = json!("2024-01-01T00:00:00Z");
        config["config"] = json!({
            "Env": ["PATH=/usr/bin:/bin"],
            "Labels": {"seed": seed.to_string()},
        });
        config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
        let config = put_blob(dir, &serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| json!({
                "mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest = put_blob(dir, &serde_json::to_vec(&manifest).unwrap());
        pis.push(PlatformImage {
            platform: (*platform).to_owned(),
            manifest,
            config,
            layers,
        });
    }
    let (root, media_type) = if index {
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": pis.iter().map(|pi| {
                let mut entry = json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": pi.manifest.digest,
                    "size": pi.manifest.size,
                });
                if !pi.platform.starts_with('?') {
                    entry["platform"] = platform_json(&pi.platform);
                }
                entry
            }).collect::<Vec<_>>(),
        });
        (put_blob(dir, &serde_json::to_vec(&doc).unwrap()), OCI_INDEX)
    } else {
        (pis[0].manifest.clone(), OCI_MANIFEST)
    };
    let layout_index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": root.digest,
            "size": root.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&layout_index).unwrap(),
    )
    .unwrap();
    Image {
        dir: dir.to_owned(),
        tag: tag.to_owned(),
        root,
        media_type: media_type.to_owned(),
        platforms: pis,
    }
}

/// The digest `index.json` of an OCI layout names first.
pub fn layout_digest(dir: &Path) -> String {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap())
        .expect("index.json is JSON");
    v["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

/// Asserts that the OCI layout at `dir` (written by another tool) names `image`'s root first
/// and holds every blob of it, each with its size and digest.
pub fn layout_holds(dir: &Path, image: &Image) {
    assert_eq!(layout_digest(dir), image.root.digest);
    for (d, size) in image.blobs() {
        let bytes = std::fs::read(blob_path(dir, &d))
            .unwrap_or_else(|e| panic!("{} lacks {d}: {e}", dir.display()));
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(sha256(&bytes), d);
    }
}
