//! Child roles of the binary: the sandbox infra process and the container
//! monitor are this same executable re-executed with a hidden first argument.

/// First argument that selects the sandbox infra role.
pub const INFRA_ARG: &str = "__cri-shim-infra";
/// First argument that selects the container monitor role.
pub const MONITOR_ARG: &str = "__cri-shim-monitor";

/// If this process was started in a child role, runs it and exits; otherwise
/// returns so `main` carries on. Call before starting any threads or runtime.
pub fn run_child_role_if_requested() {
    let mut args = std::env::args_os().skip(1);
    match args.next().as_deref().and_then(|a| a.to_str()) {
        Some(INFRA_ARG) | Some(MONITOR_ARG) => {
            unimplemented!("child roles land with the runtime")
        }
        _ => {}
    }
}
