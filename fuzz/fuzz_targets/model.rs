//! Operation sequences decoded from bytes: the redb store and the model agree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ocistore::testsuite::fuzzing::model(data);
});
