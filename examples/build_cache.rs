//! A build cache: make sure an image is in the store (import it when it is missing or
//! incomplete), then hand a builder an OCI layout directory of it.
//!
//! ```sh
//! cargo run --example build_cache -- [STORE_DIR] [OUT_DIR]
//! ```
//!
//! A real cache would `Store::pull` from its registry where this imports the repo's sample
//! archive; everything else is the same.

use std::path::PathBuf;

use ocistore::oci::export;
use ocistore::{Store, names::parse_platform};

fn main() -> ocistore::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let root = args
        .next()
        .unwrap_or_else(|| PathBuf::from("target/example-cache"));
    let out = args
        .next()
        .unwrap_or_else(|| PathBuf::from("target/example-layout"));
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    let name = "docker.io/library/hello:1.0";
    let platform = parse_platform("linux/amd64")?;

    let store = Store::open(&root)?;
    let complete = store
        .image(name)
        .and_then(|image| store.check_target(&image.target, &platform))
        .is_ok_and(|c| c.complete);
    if complete {
        println!("{name}: in the cache");
    } else {
        let imported = store.import_path(&sample, Default::default())?;
        println!(
            "{name}: imported ({} blobs written, {} present)",
            imported.blobs_written, imported.blobs_present
        );
    }

    // The builder gets a layout directory of just its platform.
    let _ = std::fs::remove_dir_all(&out);
    let opts = export::Options {
        format: export::Format::OciDir,
        platforms: vec![platform],
        ..Default::default()
    };
    let written = store.export_path(&[name], &opts, &out)?;
    println!(
        "exported {} blobs ({} bytes) to {}",
        written.blobs,
        written.bytes,
        out.display()
    );
    Ok(())
}
