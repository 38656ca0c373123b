//! The helper processes of cri-shim: the per-container monitor (the role
//! conmon plays for CRI-O), the short-lived pin helper that creates a pod's
//! namespaces and pins them by bind mounts (the role of CRI-O's `pinns`), and
//! the infra process that holds a pod-level pid namespace.
//!
//! They run from the small `cri-shim-helper` executable, which links no async
//! runtime, gRPC or HTTP stack: one monitor runs per container for as long as
//! the container lives, so its resident size is paid once per pod. The server
//! (the `cri-shim` binary, or the kubelet with its embedded runtime) finds it
//! next to its own executable; when it is missing, the server re-executes
//! itself instead, and [`role::run_if_requested`] in its `main` runs the same
//! code from this library. Either way the command line is
//! `<exe> <role argument> <spec as JSON>` ([`role::MONITOR_ARG`],
//! [`role::PIN_ARG`], [`role::INFRA_ARG`]), and the first line the child prints on stdout is its
//! report to the server.

pub mod cgroup;
pub mod infra;
pub mod logs;
pub mod monitor;
pub mod pin;
pub mod role;

/// File name of the helper executable, looked up next to the server's.
pub const HELPER_BIN_NAME: &str = "cri-shim-helper";
