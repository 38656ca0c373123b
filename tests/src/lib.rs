//! End-to-end test fixtures.
pub mod bench;
pub mod cni_shim;
pub mod cri_tap;
pub mod harness;
pub mod helper_procs;
pub mod image;
pub mod registry;
pub mod token_server;
pub mod upstream;
