//! Pinning a pod's namespaces without a process (the model of CRI-O's
//! `pinns`).
//!
//! A short-lived helper unshares the namespaces the pod gets of its own
//! (network, IPC, UTS), sets them up (hostname, `lo` up), bind-mounts each
//! `/proc/self/ns/<kind>` onto the file the server chose, prints `pinned` on
//! stdout and exits. The bind mounts keep the namespaces alive until the
//! server unmounts them at StopPodSandbox; containers join them by those
//! paths. So a pod needs a long-lived infra process only for a pod-level pid
//! namespace, whose PID 1 must be a process (see [`crate::infra`]).
//!
//! On failure it prints `error: <reason>` and exits 1; mounts it already made
//! stay for the server to remove with the others (it knows every path).

use std::io::Write;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

/// What the server asks of a pin helper (one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinSpec {
    /// Sandbox id, for `ps` while it runs.
    pub id: String,
    /// Hostname set in the new UTS namespace.
    pub hostname: String,
    /// Pin a new network namespace here (`None`: the host's network).
    pub net: Option<PathBuf>,
    /// Pin a new IPC namespace here (`None`: the host's IPC).
    pub ipc: Option<PathBuf>,
    /// Pin a new UTS namespace here (`None`: the host's; only with host network).
    pub uts: Option<PathBuf>,
}

/// The line a pin helper prints when every namespace is pinned.
pub const PINNED: &str = "pinned";

/// Entry point of the pin role; never returns.
pub fn main(spec_json: &str) -> ! {
    let (line, code) = match run(spec_json) {
        Ok(()) => (PINNED.to_owned(), 0),
        Err(message) => (format!("error: {message}"), 1),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    std::process::exit(code)
}

fn run(spec_json: &str) -> Result<(), String> {
    let spec: PinSpec =
        serde_json::from_str(spec_json).map_err(|e| format!("bad pin spec: {e}"))?;
    let kinds = [
        ("net", CloneFlags::CLONE_NEWNET, &spec.net),
        ("ipc", CloneFlags::CLONE_NEWIPC, &spec.ipc),
        ("uts", CloneFlags::CLONE_NEWUTS, &spec.uts),
    ];
    let flags = kinds
        .iter()
        .filter(|(_, _, path)| path.is_some())
        .fold(CloneFlags::empty(), |all, (_, flag, _)| all | *flag);
    unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
    if spec.uts.is_some() {
        nix::unistd::sethostname(&spec.hostname)
            .map_err(|e| format!("sethostname {:?}: {e}", spec.hostname))?;
    }
    if spec.net.is_some() {
        loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
    }
    for (kind, _, path) in kinds {
        if let Some(path) = path {
            pin(kind, path)?;
        }
    }
    Ok(())
}

/// Bind-mounts this process's `kind` namespace onto `path` (created empty).
fn pin(kind: &str, path: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let source = format!("/proc/self/ns/{kind}");
    nix::mount::mount(
        Some(source.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind-mounting {source} at {}: {e}", path.display()))
}

/// Sets IFF_UP on `lo` in the current network namespace.
pub(crate) fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo"; the fd is an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel reads the name and flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
