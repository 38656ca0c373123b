//! End-to-end test fixtures.
pub mod image;
