//! The conformance suite against the redb store and the in-memory model.

use ocistore::testsuite::{Harness, Opened};
use ocistore::{ContentStore, MemoryStore, Store};

struct RedbHarness;

struct RedbOpened {
    dir: tempfile::TempDir,
    store: Option<Store>,
}

impl Harness for RedbHarness {
    fn fresh(&self) -> Box<dyn Opened> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path().join("store")).expect("open store");
        Box::new(RedbOpened {
            dir,
            store: Some(store),
        })
    }
}

impl Opened for RedbOpened {
    fn store(&self) -> &dyn ContentStore {
        self.store.as_ref().expect("open")
    }
    fn reopen(&mut self) {
        self.store = None;
        self.store = Some(Store::open(self.dir.path().join("store")).expect("reopen store"));
    }
}

struct MemoryHarness;

struct MemoryOpened(MemoryStore);

impl Harness for MemoryHarness {
    fn fresh(&self) -> Box<dyn Opened> {
        Box::new(MemoryOpened(MemoryStore::new()))
    }
}

impl Opened for MemoryOpened {
    fn store(&self) -> &dyn ContentStore {
        &self.0
    }
    fn reopen(&mut self) {}
}

mod redb_store {
    ocistore::conformance_suite!(super::RedbHarness);
}

mod memory_store {
    ocistore::conformance_suite!(super::MemoryHarness);
}
