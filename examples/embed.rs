//! Embedding the store in a packer: write a config, a layer and a manifest through one
//! batch, and name the image, all visible at once when the batch commits (or not at all).
//!
//! ```sh
//! cargo run --example embed -- [STORE_DIR]
//! ```

use std::path::PathBuf;

use ocistore::{Store, names};

const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/example-embed"), PathBuf::from);
    let store = Store::open(&root)?;

    // A one-file layer, made here with the tar crate.
    let mut layer = tar::Builder::new(Vec::new());
    let body = b"built by an ocistore example\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    layer.append_data(&mut header, "etc/motd", &body[..])?;
    let layer = layer.into_inner()?;

    let mut batch = store.batch()?;
    let layer = batch.stage(&mut &layer[..], None, None, Default::default())?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest.to_string()]},
    })
    .to_string();
    let config = batch.stage(&mut config.as_bytes(), None, None, Default::default())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config.digest.to_string(), "size": config.size},
        "layers": [{"mediaType": LAYER, "digest": layer.digest.to_string(), "size": layer.size}],
    })
    .to_string();
    let manifest = batch.stage(&mut manifest.as_bytes(), None, None, Default::default())?;
    let name = batch.put_name(
        "example.com/packer/motd:1",
        names::descriptor(MANIFEST, &manifest.digest, manifest.size)?,
        None,
    )?;
    let done = batch.commit()?;
    println!(
        "{name} -> {} ({} blobs written, {} already there)",
        manifest.digest, done.blobs_written, done.blobs_present
    );
    let platform = names::parse_platform("linux/amd64")?;
    let check = store.check_image(&name, &platform)?;
    println!("complete for linux/amd64: {}", check.complete);
    Ok(())
}
