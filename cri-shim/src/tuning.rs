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
