//! The sandbox infra process: holds a pod-level pid namespace.
//!
//! Only a pod with one pid namespace for all its containers (CRI pid mode
//! POD, `shareProcessNamespace`) needs it: its network, IPC and UTS
//! namespaces are pinned by bind mounts (see [`crate::pin`]), but a pid
//! namespace needs a live PID 1. It runs from the helper executable (no pause
//! image is ever pulled), leaves the server's session, forks the namespace's
//! PID 1, prints `ready <pid>` on stdout and then sleeps until
//! SIGTERM/SIGINT/SIGHUP; stopping it stops that child, and the kernel then
//! kills every process left in the pod's pid namespace.
//!
//! It can still unshare network, IPC and UTS namespaces too (and then reports
//! `ready` without a pid namespace): servers before the pin helper held every
//! pod's namespaces this way, and their sandboxes keep running across an
//! upgrade.

use std::io::Write;

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

/// What the server asks of an infra process (one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfraSpec {
    /// Sandbox id, for `ps` and for recognising the process after a restart.
    pub id: String,
    /// Hostname set in the new UTS namespace.
    pub hostname: String,
    /// New network namespace (false: host network).
    pub new_net: bool,
    /// New IPC namespace (false: host IPC).
    pub new_ipc: bool,
    /// New UTS namespace (false only with host network).
    pub new_uts: bool,
    /// A pid namespace for the pod (CRI pid mode POD): held by a child that
    /// is its PID 1 and reaps the orphans of the pod's containers.
    #[serde(default)]
    pub new_pid: bool,
}

/// Entry point of the infra role; never returns.
pub fn main(spec_json: &str) -> ! {
    match run(spec_json) {
        Ok(()) => std::process::exit(0),
        Err(message) => {
            let _ = writeln!(std::io::stdout(), "error: {message}");
            std::process::exit(1)
        }
    }
}

fn run(spec_json: &str) -> Result<(), String> {
    let spec: InfraSpec =
        serde_json::from_str(spec_json).map_err(|e| format!("bad infra spec: {e}"))?;
    let _ = nix::unistd::setsid();
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    // Blocked before anything else so a stop request is never lost.
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;

    let mut flags = CloneFlags::empty();
    if spec.new_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if spec.new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if spec.new_uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
    if spec.new_uts {
        nix::unistd::sethostname(&spec.hostname)
            .map_err(|e| format!("sethostname {:?}: {e}", spec.hostname))?;
    }
    if spec.new_net {
        crate::pin::loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
    }
    let pid_holder = if spec.new_pid {
        Some(fork_pid_namespace_init(&signals)?)
    } else {
        None
    };
    {
        let report = match pid_holder {
            Some(pid) => format!("ready {pid}\n"),
            None => "ready\n".to_owned(),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(report.as_bytes())
            .map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    crate::role::detach_stdio();
    loop {
        match signals.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => break,
            _ => continue,
        }
    }
    if let Some(pid) = pid_holder {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    Ok(())
}

/// Creates the pod's pid namespace and forks its PID 1; returns that
/// child's pid as the host sees it.
fn fork_pid_namespace_init(signals: &SigSet) -> Result<i32, String> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))?;
    // SAFETY: this process is single-threaded (a freshly exec'd helper that
    // has started no threads), so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => pid_namespace_init(signals),
    }
}

/// PID 1 of the pod's pid namespace: reaps orphans until told to stop.
fn pid_namespace_init(signals: &SigSet) -> ! {
    // The parent reports to the server; this process keeps no pipe open.
    crate::role::detach_stdio();
    let mut waited = *signals;
    waited.add(Signal::SIGCHLD);
    let _ = waited.thread_block();
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(status) = nix::sys::wait::waitpid(
                    None::<nix::unistd::Pid>,
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                ) {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => std::process::exit(0),
            _ => continue,
        }
    }
}
