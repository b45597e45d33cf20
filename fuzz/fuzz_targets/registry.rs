//! What registries and config files hand us (WWW-Authenticate, Link, Content-Range,
//! hosts.toml, config.json, manifests from the wire) never panics a parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ocistore::testsuite::fuzzing::registry_wire(data);
});
