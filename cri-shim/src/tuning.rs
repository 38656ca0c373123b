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
/// which inherit runc's, and cri-shim's blocking threads ([`Raised`]).
pub const DAEMON_NICE: i32 = -10;

/// Runs a closure with the calling thread at nice 0: a process it spawns
/// (and what that starts: a container inherits runc's) runs at the default
/// priority, not the daemon's.
pub use cni_plugins::exec::at_default_priority;
use cni_plugins::exec::set_thread_nice;

/// Sets the calling thread's nice value to [`DAEMON_NICE`] (on Linux each
/// thread has its own). Needs `CAP_SYS_NICE`; without it the thread keeps
/// its priority and the error says so.
pub fn raise_thread_priority() -> std::io::Result<()> {
    set_thread_nice(DAEMON_NICE)
}

/// Which threads of [`daemon_runtime`] run at [`DAEMON_NICE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// Every thread: the kubelet's blocking threads do its own pod start
    /// work (files, cgroups, volumes).
    AllThreads,
    /// The async workers only, which answer calls; the blocking threads,
    /// where cri-shim does its bulk work (bundles, mounts, records), stay
    /// at the default priority with the processes it starts.
    Workers,
}

/// The daemons' multi-threaded async runtime, its threads raised as
/// `raised` says where permitted (the caller raises its own thread, which
/// runs `block_on`, with [`raise_thread_priority`], and reports a refusal).
pub fn daemon_runtime(raised: Raised) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    match raised {
        Raised::AllThreads => builder.on_thread_start(|| {
            let _ = raise_thread_priority();
        }),
        // A new thread inherits its creator's priority. Every thread starts
        // at the default; tokio calls the park hooks on its workers only,
        // which raise themselves there once.
        Raised::Workers => builder
            .on_thread_start(lower_thread_priority)
            .on_thread_park(raise_worker_once)
            .on_thread_unpark(raise_worker_once),
    };
    builder.build()
}

fn lower_thread_priority() {
    let _ = set_thread_nice(0);
}

fn raise_worker_once() {
    thread_local! {
        static RAISED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    RAISED.with(|raised| {
        if !raised.replace(true) {
            let _ = raise_thread_priority();
        }
    });
}
