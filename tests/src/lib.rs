//! End-to-end test fixtures.
pub mod harness;
pub mod image;
pub mod registry;
