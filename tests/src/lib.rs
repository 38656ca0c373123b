//! End-to-end test fixtures.
pub mod bench;
pub mod cni_shim;
pub mod harness;
pub mod image;
pub mod registry;
pub mod upstream;
