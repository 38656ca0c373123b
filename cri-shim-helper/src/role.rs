//! Selecting a role from the command line, and what both roles share.

/// First argument that selects the sandbox infra role.
pub const INFRA_ARG: &str = "__cri-shim-infra";
/// First argument that selects the container monitor role.
pub const MONITOR_ARG: &str = "__cri-shim-monitor";
/// First argument that selects the namespace pinning role.
pub const PIN_ARG: &str = "__cri-shim-pin";

/// If this process was started in a helper role (`<role argument> <spec>`),
/// runs it and exits; otherwise returns. Call first thing in `main`, before
/// any thread or async runtime is started (the infra role forks).
pub fn run_if_requested() {
    let args: Vec<String> = std::env::args().skip(1).take(2).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [INFRA_ARG, spec] => crate::infra::main(spec),
        [MONITOR_ARG, spec] => crate::monitor::main(spec),
        [PIN_ARG, spec] => crate::pin::main(spec),
        [INFRA_ARG] | [MONITOR_ARG] | [PIN_ARG] => {
            eprintln!("{}: missing spec argument", args[0]);
            std::process::exit(2)
        }
        _ => {}
    }
}

/// Points stdout and stderr at /dev/null: a helper reports on stdout once,
/// then lets go of the server's pipe so the server sees EOF and no later
/// write can block on it.
pub fn detach_stdio() {
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}
