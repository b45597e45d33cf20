//! Referrers listings and tag-schema indexes from a registry (parsed, added to) never panic,
//! never exceed their bound and never lose an entry.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ocistore::testsuite::fuzzing::referrers(data);
});
