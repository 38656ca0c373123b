//! Waiting for a process that is not our child to exit, through a pidfd.

use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Resolves when process `pid` has exited (at once if it does not exist).
pub async fn wait_exit(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: `fd` is an open pidfd owned by the AsyncFd for its whole life,
    // so the raw fd stays valid and unchanged until it is dropped.
    let Ok(afd) = (unsafe { AsyncFd::register(fd) }) else {
        return;
    };
    // A pidfd becomes readable when the process exits.
    let _ = afd.readable().await;
}

/// Whether `pid` is alive and its command line contains `marker`.
pub fn alive_with(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}
