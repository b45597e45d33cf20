//! A small, deterministic OCI image for tests, demos and interop checks.
//!
//! [`sample_index`] writes a two-platform image (linux/amd64 and linux/arm64/v8) into any
//! content store: an OCI index, and per platform an OCI manifest, an OCI config and two
//! tar+gzip layers — `/etc/os-release` (the same layer for both platforms) and
//! `/hello.txt` (which names the platform). Timestamps are fixed, gzip headers carry no
//! time or name, and every JSON document has sorted keys, so every digest is the same on
//! every run (given the same `flate2` version). [`sample_archive`] exports it as an
//! oci-archive named [`SAMPLE_NAME`]; [`sample_single`] does the same for one platform.

use std::io::Write;

use flate2::{Compression, GzBuilder};
use oci_spec::image::Descriptor;
use serde_json::{Value, json};

use super::export::{self, ExportImage};
use super::{
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST, canonical_json,
};
use crate::content::{ContentStore, Labels};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::helpers;
use crate::memory::MemoryStore;
use crate::names::descriptor;

/// The name [`sample_archive`] gives the multi-platform image.
pub const SAMPLE_NAME: &str = "docker.io/library/hello:1.0";
/// The name [`sample_single`] gives the single-platform image.
pub const SAMPLE_SINGLE_NAME: &str = "docker.io/library/hello:single";
/// The time stamped on every file and in every config: 2024-01-01T00:00:00Z.
const SAMPLE_TIME: u64 = 1_704_067_200;
const SAMPLE_TIME_RFC3339: &str = "2024-01-01T00:00:00Z";

/// The platforms of [`sample_index`]: (architecture, variant).
const PLATFORMS: [(&str, Option<&str>); 2] = [("amd64", None), ("arm64", Some("v8"))];

/// Writes the multi-platform sample into `store` and returns its index's descriptor.
pub fn sample_index(store: &dyn ContentStore) -> Result<Descriptor> {
    let mut manifests = Vec::new();
    for (arch, variant) in PLATFORMS {
        let (digest, size) = write_manifest(store, arch, variant)?;
        let mut platform = json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        manifests.push(json!({
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": size,
            "platform": platform,
        }));
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": manifests});
    let (digest, size) = put(store, &canonical_json(index))?;
    descriptor(MEDIA_TYPE_OCI_INDEX, &digest, size)
}

/// Writes the linux/amd64 sample (a manifest, no index) into `store` and returns the
/// manifest's descriptor.
pub fn sample_manifest(store: &dyn ContentStore) -> Result<Descriptor> {
    let (digest, size) = write_manifest(store, "amd64", None)?;
    descriptor(MEDIA_TYPE_OCI_MANIFEST, &digest, size)
}

/// Writes the multi-platform sample as an oci-archive named [`SAMPLE_NAME`] (tag `1.0`).
/// The bytes are the same on every call.
pub fn sample_archive(out: &mut dyn Write) -> Result<()> {
    let store = MemoryStore::new();
    let d = sample_index(&store)?;
    export_one(&store, SAMPLE_NAME, "1.0", d, out)
}

/// Writes the linux/amd64 sample as an oci-archive named [`SAMPLE_SINGLE_NAME`]
/// (tag `single`).
pub fn sample_single(out: &mut dyn Write) -> Result<()> {
    let store = MemoryStore::new();
    let d = sample_manifest(&store)?;
    export_one(&store, SAMPLE_SINGLE_NAME, "single", d, out)
}

fn export_one(
    store: &MemoryStore,
    name: &str,
    tag: &str,
    descriptor: Descriptor,
    out: &mut dyn Write,
) -> Result<()> {
    let image = ExportImage {
        name: name.to_owned(),
        tag: Some(tag.to_owned()),
        descriptor,
    };
    export::export_archive(store, &[image], &export::Options::default(), out).map(drop)
}

/// Writes one platform's layers, config and manifest; returns the manifest's digest and size.
fn write_manifest(
    store: &dyn ContentStore,
    arch: &str,
    variant: Option<&str>,
) -> Result<(Digest, u64)> {
    let platform = match variant {
        Some(v) => format!("linux/{arch}/{v}"),
        None => format!("linux/{arch}"),
    };
    let os_release = b"NAME=\"ocistore sample\"\nID=ocistore-sample\nVERSION_ID=1.0\n".to_vec();
    let hello = format!("hello from {platform}\n").into_bytes();
    let layer_files: [&[(&str, &[u8])]; 2] =
        [&[("etc/os-release", &os_release)], &[("hello.txt", &hello)]];
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layer_files {
        let tar = tar_of(files)?;
        diff_ids.push(json!(Algorithm::Sha256.digest(&tar).to_string()));
        let (digest, size) = put(store, &gzip(&tar)?)?;
        layers.push(json!({"mediaType": MEDIA_TYPE_OCI_LAYER_GZIP, "digest": digest.to_string(), "size": size}));
    }
    let mut config = json!({
        "architecture": arch,
        "os": "linux",
        "created": SAMPLE_TIME_RFC3339,
        "config": {"Cmd": ["/bin/cat", "/hello.txt"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": SAMPLE_TIME_RFC3339, "created_by": "ocistore sample: /etc/os-release"},
            {"created": SAMPLE_TIME_RFC3339, "created_by": "ocistore sample: /hello.txt"},
        ],
    });
    if let Some(v) = variant {
        config["variant"] = json!(v);
    }
    let (config_digest, config_size) = put(store, &canonical_json(config))?;
    let manifest: Value = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    });
    put(store, &canonical_json(manifest))
}

/// Commits `bytes` to `store`; returns their digest and size.
fn put(store: &dyn ContentStore, bytes: &[u8]) -> Result<(Digest, u64)> {
    let digest = Algorithm::Sha256.digest(bytes);
    let size = bytes.len() as u64;
    helpers::write_blob(
        store,
        &format!("sample-{digest}"),
        &mut &bytes[..],
        Some(size),
        Some(&digest),
        Labels::new(),
    )?;
    Ok((digest, size))
}

/// A tar of `files` (and their parent directories) with fixed metadata.
fn tar_of(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| Error::io("build", "sample layer", e);
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(SAMPLE_TIME);
        h.set_size(size);
        h
    };
    for (path, data) in files {
        if let Some((dir, _)) = path.rsplit_once('/') {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, format!("{dir}/"), std::io::empty())
                .map_err(err)?;
        }
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, *data).map_err(err)?;
    }
    b.into_inner().map_err(err)
}

/// gzip with no name, time 0, OS "unknown" and the best compression: byte-stable.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| Error::io("compress", "sample layer", e);
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    gz.write_all(data).map_err(err)?;
    gz.finish().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_small_and_stable() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sample_archive(&mut a).unwrap();
        sample_archive(&mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.len() < 100 << 10, "{} bytes", a.len());
        let mut s = Vec::new();
        sample_single(&mut s).unwrap();
        assert!(s.len() < a.len());
    }
}
