//! The filter parser never panics, and what parses can be matched.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ocistore::testsuite::fuzzing::filter(data);
});
