//! Manifest and index parsing (references, media type sniffing) never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ocistore::testsuite::fuzzing::manifest(data);
});
