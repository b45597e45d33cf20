//! Arbitrary bytes as an image archive: the importer never panics, and a failed import
//! leaves the store as it was.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ocistore::testsuite::fuzzing::import(data);
});
