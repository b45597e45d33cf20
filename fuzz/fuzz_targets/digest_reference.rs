//! Digest and image reference parsing never panic and round-trip what they accept.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ocistore::testsuite::fuzzing::digest_reference(data);
});
