//! A fixed set of threads for the file and cgroup work of pod starts (log
//! directories, pod cgroups, the containers' host files).
//!
//! Handing work to tokio's blocking pool takes the pool's one lock, which a
//! blocking thread also takes between tasks and while the pool makes a new
//! thread. When a hundred pods start at once the async workers spin on it
//! and wait. Here a worker only pushes onto a channel whose sending side
//! takes no lock; the threads are made once, when first needed.

use std::sync::{Arc, Mutex, OnceLock, mpsc};

/// How many threads do the work. It is short and mostly kernel time (mkdir
/// in cgroupfs serialises on the cgroup lock anyway); a few threads keep
/// both cores busy while one waits on the disk.
const THREADS: usize = 4;

/// The work did not return: it panicked, or no thread could be started.
#[derive(Debug, thiserror::Error)]
#[error("the task ended abnormally (it panicked or no worker thread could start)")]
pub struct TaskLost;

type Job = Box<dyn FnOnce() + Send>;

fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for index in 0..THREADS {
            let rx = rx.clone();
            let started = std::thread::Builder::new()
                .name(format!("pod-files-{index}"))
                .spawn(move || {
                    let _ = cri_shim::tuning::raise_thread_priority();
                    loop {
                        // The lock is held only by the thread waiting for the
                        // next job; a panicking job cannot poison it.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = started {
                tracing::error!(%error, "starting a pod file thread");
            }
        }
        tx
    })
}

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
    on_threads(f).await
}

/// Runs `f` on one of the threads and waits for its result.
async fn on_threads<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TaskLost> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let _ = tx.send(out);
        }
    });
    queue().send(job).map_err(|_| TaskLost)?;
    rx.await.map_err(|_| TaskLost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_survives_a_panic() {
        assert_eq!(on_threads(|| 6 * 7).await.unwrap(), 42);
        assert!(on_threads(|| -> u32 { panic!("boom") }).await.is_err());
        // Every thread still takes work after one panicked.
        let results =
            futures::future::join_all((0..THREADS * 3).map(|i| on_threads(move || i))).await;
        let got: Vec<usize> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, (0..THREADS * 3).collect::<Vec<_>>());
    }
}
