//! Moving images between a registry and the store: [`Store::pull`](crate::Store::pull) and
//! [`Store::push`](crate::Store::push), with their options, outcomes and progress reports.
//!
//! This is the one part that uses both sides: the protocol client in [`crate::registry`]
//! (which knows no store) and the store's batch and ingest API. Referrers travel here too
//! ([`pull::PullOptions::referrers`], [`push::PushOptions::referrers`]).

mod fetch;
mod plan;
pub mod pull;
pub mod push;
mod upload;
