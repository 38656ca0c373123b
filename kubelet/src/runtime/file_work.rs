//! The kubelet's own threads for the file and cgroup work of pod starts
//! (log directories, pod cgroups, the containers' host files): a
//! [`WorkThreads`] set, which takes no lock to hand work off (tokio's
//! blocking pool does, and a hundred pods starting at once make the async
//! workers spin on it).

pub use cri_shim::tuning::TaskLost;
use cri_shim::tuning::WorkThreads;

/// Four threads at the daemon's raised priority. The work is short and
/// mostly kernel time (mkdir in cgroupfs serialises on the cgroup lock
/// anyway); a few threads keep both cores busy while one waits on the disk.
static POD_FILES: WorkThreads = WorkThreads::new("pod-files", 4, cri_shim::tuning::DAEMON_NICE);

/// Runs `f` on one of the threads and waits for its result.
///
/// In unit tests it runs on tokio's blocking pool instead: tests with a
/// paused clock let tokio move time on whenever it sees no work, and it
/// sees its own blocking threads, not these (a pod start waiting for its
/// files would let minutes pass).
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, TaskLost> {
    #[cfg(test)]
    return tokio::task::spawn_blocking(f).await.map_err(|_| TaskLost);
    #[cfg(not(test))]
    POD_FILES.run(f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_runs_on_the_pod_file_threads() {
        let name = POD_FILES
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with("pod-files-")));
    }
}
