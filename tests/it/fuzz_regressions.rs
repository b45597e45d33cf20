//! Replays every input under `fuzz/regressions/<target>/` (crashes the fuzzers found, once
//! minimised and fixed, plus seeds) through the same bodies the fuzz targets run.

use std::path::Path;

use ocistore::testsuite::fuzzing;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            body(&std::fs::read(&f).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no inputs under {}", dir.display());
}

#[test]
fn filter_inputs() {
    replay("filter", fuzzing::filter);
}

#[test]
fn digest_reference_inputs() {
    replay("digest_reference", fuzzing::digest_reference);
}

#[test]
fn manifest_inputs() {
    replay("manifest", fuzzing::manifest);
}

#[test]
fn model_inputs() {
    replay("model", fuzzing::model);
}

#[test]
fn import_inputs() {
    replay("import", fuzzing::import);
}

#[test]
fn registry_inputs() {
    replay("registry", fuzzing::registry_wire);
}
