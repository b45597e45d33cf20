//! Model-based property test: random operation sequences run against the redb store and the
//! in-memory model side by side; results and error kinds must agree after every step, and
//! the whole state again after every reopen and at the end.
//!
//! `OCISTORE_MODEL_CASES` sets the number of sequences (default 10,000; CI runs the
//! default). Stores live on tmpfs (`/dev/shm`) when it exists, so that fsync is cheap.

use ocistore::testsuite::model::{CONTENTS, FILTERS, Op, REFS, apply, state};
use ocistore::{MemoryStore, Store};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REFS;
    let c = 0..CONTENTS;
    prop_oneof![
        4 => (r.clone(), c.clone(), any::<bool>(), proptest::option::of(0u8..2))
            .prop_map(|(reference, content, tell_digest, label)| Op::Put { reference, content, tell_digest, label }),
        3 => (r.clone(), c.clone(), 0u8..9).prop_map(|(reference, content, upto)| Op::Partial { reference, content, upto }),
        2 => (r.clone(), c.clone()).prop_map(|(reference, content)| Op::Resume { reference, content }),
        1 => (r.clone(), c.clone()).prop_map(|(reference, content)| Op::WrongSize { reference, content }),
        1 => r.clone().prop_map(|reference| Op::Abort { reference }),
        2 => c.clone().prop_map(|content| Op::Info { content }),
        1 => c.clone().prop_map(|content| Op::Read { content }),
        2 => c.clone().prop_map(|content| Op::Delete { content }),
        2 => (c.clone(), proptest::option::of(0u8..2)).prop_map(|(content, value)| Op::Label { content, value }),
        2 => (0..FILTERS.len()).prop_map(|filter| Op::Walk { filter }),
        1 => (0..FILTERS.len()).prop_map(|filter| Op::ListStatuses { filter }),
        1 => Just(Op::Reopen),
    ]
}

fn cases() -> u32 {
    std::env::var("OCISTORE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn scratch() -> tempfile::TempDir {
    match std::path::Path::new("/dev/shm") {
        p if p.is_dir() => tempfile::tempdir_in(p).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        _ => tempfile::tempdir().unwrap(),
    }
}

/// Runs `ops` against both stores; the first disagreement fails with the step.
pub fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = scratch();
    let root = dir.path().join("store");
    let mut store = Store::open(&root).unwrap();
    let model = MemoryStore::new();
    for (i, op) in ops.iter().enumerate() {
        if *op == Op::Reopen {
            drop(store);
            store = Store::open(&root).unwrap();
            prop_assert_eq!(
                state(&store),
                state(&model),
                "state after reopen at step {}",
                i
            );
            continue;
        }
        let got = apply(&store, op);
        let want = apply(&model, op);
        prop_assert_eq!(got, want, "step {}: {:?}", i, op);
    }
    drop(store);
    let store = Store::open(&root).unwrap();
    prop_assert_eq!(state(&store), state(&model), "final state after reopen");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn redb_store_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..24)) {
        check(&ops)?;
    }
}
