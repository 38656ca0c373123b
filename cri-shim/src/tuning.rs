//! Process-wide settings of the long-running daemons (cri-shim, and the
//! kubelet that embeds it).

/// Caps glibc's malloc arenas at two. glibc gives threads that allocate at
/// the same time arenas of their own, up to eight per core; the blocking
/// threads that come and go while many pods start each leave theirs holding
/// freed memory, which shows as idle RSS. Call before other threads start.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called at start,
    // before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The nice value of the daemons' own threads. Their work (answering CRI
/// calls, the kubelet's pod workers) goes ahead of the bulk work of many
/// pods starting at once: runc, CNI plugins and helper processes run at the
/// default priority (see [`at_default_priority`]), and so do the containers,
/// which inherit runc's, and cri-shim's own bulk work ([`daemon_runtime`]).
pub const DAEMON_NICE: i32 = -10;

/// Runs a closure with the calling thread at nice 0: a process it spawns
/// (and what that starts: a container inherits runc's) runs at the default
/// priority, not the daemon's.
pub use cni_plugins::exec::at_default_priority;
use cni_plugins::exec::set_thread_nice;
/// Threads of one's own for short blocking work (see [`cni_plugins::work`]).
pub use cni_plugins::work::{TaskLost, WorkThreads};

/// Sets the calling thread's nice value to [`DAEMON_NICE`] (on Linux each
/// thread has its own). Needs `CAP_SYS_NICE`; without it the thread keeps
/// its priority and the error says so.
pub fn raise_thread_priority() -> std::io::Result<()> {
    set_thread_nice(DAEMON_NICE)
}

/// The daemons' multi-threaded async runtime, every thread raised to
/// [`DAEMON_NICE`] where permitted (the caller raises its own thread, which
/// runs `block_on`, with [`raise_thread_priority`], and reports a refusal).
///
/// The blocking threads are raised too. Between tasks each takes the
/// blocking pool's lock, which an async worker handing work off takes as
/// well, and a thread holding it at the default priority waits behind runc
/// and the other bulk work of a host starting many pods, with the workers
/// waiting on it (tens of ms each time, measured). Work that must run at
/// the default priority there goes through [`at_default_priority`]; the
/// bulk work of pod starts runs on threads of its own
/// ([`cni_plugins::work::BULK`]), which take no such lock.
pub fn daemon_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| {
            let _ = raise_thread_priority();
        })
        .build()
}
