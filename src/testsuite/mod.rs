//! The conformance suite: every check of the content contract, written once against the
//! traits and run against each implementation through a [`Harness`].
//!
//! It covers what containerd's own content testsuite asserts (concurrent writers, status
//! tracking, commit of existing content, resume at every prefix by three means, small reads
//! through large windows, label semantics, the commit error-state sequence) plus re-open
//! persistence, every digest algorithm, label limits and every filter operator. Checks assert
//! error kinds, never message text. Use [`conformance_suite!`](crate::conformance_suite) to
//! turn it into one `#[test]` per check.

#![allow(clippy::missing_panics_doc)]

mod checks;
mod filters;
pub mod fuzzing;
pub mod model;

use crate::content::ContentStore;
pub use checks::*;
pub use filters::*;

/// Opens stores for the suite.
pub trait Harness {
    /// A fresh, empty store.
    fn fresh(&self) -> Box<dyn Opened>;
}

/// One store under test, which can be closed and opened again.
pub trait Opened {
    /// The store.
    fn store(&self) -> &dyn ContentStore;
    /// Closes every handle and opens the same store again (a no-op for in-memory stores).
    fn reopen(&mut self);
}

/// Expands to one `#[test]` per conformance check, each calling it with `$harness`.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@each $harness;
            writer_and_readback, concurrent_writers, status_tracking, commit_existing,
            ref_not_available, commit_error_state, resume_by_rewrite, resume_by_writing_rest,
            resume_by_copy, small_blob_large_window, label_semantics, label_limits,
            reopen_persistence, other_algorithms, delete_semantics, abort_semantics,
            invalid_arguments, helper_semantics, walk_filters, ingest_filters, bad_filters);
    };
    (@each $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::testsuite::$check(&$harness);
            }
        )*
    };
}
