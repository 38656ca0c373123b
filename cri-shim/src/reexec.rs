//! Child roles of the binary: the sandbox infra process and the container
//! monitor are this same executable re-executed with a hidden first argument.

/// First argument that selects the sandbox infra role.
pub const INFRA_ARG: &str = "__cri-shim-infra";
/// First argument that selects the container monitor role.
pub const MONITOR_ARG: &str = "__cri-shim-monitor";

/// If this process was started in a child role, runs it and exits; otherwise
/// returns so `main` carries on. Call before starting any threads or runtime.
pub fn run_child_role_if_requested() {
    let args: Vec<String> = std::env::args().skip(1).take(2).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [INFRA_ARG, spec] => crate::infra::main(spec),
        [MONITOR_ARG, spec] => crate::monitor::main(spec),
        [INFRA_ARG] | [MONITOR_ARG] => {
            eprintln!("{}: missing spec argument", args[0]);
            std::process::exit(2)
        }
        _ => {}
    }
}

/// A command that re-executes this very binary (even if the file on disk was
/// replaced since) in a child role; `ps` shows it under its real name.
pub fn child_command(role: &str, spec_json: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    if let Ok(exe) = std::env::current_exe() {
        cmd.arg0(exe);
    }
    cmd.arg(role).arg(spec_json);
    cmd
}
