//! The sample image the README's main job imports (`tests/fixtures/sample.oci.tar`) is built
//! by the project's own code, and reproducibly: the committed bytes are what the code makes.

use std::path::Path;

fn committed() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar")
}

#[test]
#[ignore = "run by hand to regenerate tests/fixtures/sample.oci.tar"]
fn regenerate_sample() {
    let mut out = Vec::new();
    ocistore::oci::sample::sample_archive(&mut out).unwrap();
    std::fs::write(committed(), out).unwrap();
}

#[test]
fn committed_sample_is_what_the_code_builds() {
    let mut fresh = Vec::new();
    ocistore::oci::sample::sample_archive(&mut fresh).unwrap();
    let on_disk = std::fs::read(committed()).unwrap();
    assert!(
        on_disk == fresh,
        "tests/fixtures/sample.oci.tar is stale: run the ignored regenerate_sample test"
    );
    assert!(on_disk.len() < 1 << 20, "the sample stays well under 1 MiB");
}

#[test]
fn main_job_imports_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ocistore::Store::open(tmp.path()).unwrap();
    let out = store.import_path(&committed(), Default::default()).unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.images[0].name, "docker.io/library/hello:1.0");
    for p in ["linux/amd64", "linux/arm64/v8"] {
        let c = store
            .check_image("hello:1.0", &ocistore::names::parse_platform(p).unwrap())
            .unwrap();
        assert!(c.complete, "{p}: {c:?}");
    }
    // Import → export → import keeps every digest, and two exports are byte-identical.
    let mut a = Vec::new();
    let mut b = Vec::new();
    store
        .export_to(&["hello:1.0"], &Default::default(), &mut a)
        .unwrap();
    store
        .export_to(&["hello:1.0"], &Default::default(), &mut b)
        .unwrap();
    assert!(a == b, "exports are reproducible");
    let tmp2 = tempfile::tempdir().unwrap();
    let store2 = ocistore::Store::open(tmp2.path()).unwrap();
    let again = store2
        .import_reader(&mut &a[..], Default::default())
        .unwrap();
    assert_eq!(again.images, out.images);
    let mut blobs1 = Vec::new();
    let mut blobs2 = Vec::new();
    ocistore::Manager::walk(
        &store,
        &mut |i| {
            blobs1.push(i.digest);
            Ok(())
        },
        &[],
    )
    .unwrap();
    ocistore::Manager::walk(
        &store2,
        &mut |i| {
            blobs2.push(i.digest);
            Ok(())
        },
        &[],
    )
    .unwrap();
    assert_eq!(blobs1, blobs2, "every digest kept");
}
