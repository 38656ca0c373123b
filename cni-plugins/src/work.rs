//! A few threads of our own for the short blocking work of pod starts:
//! spawning a process, writing a record, making a sandbox's or a
//! container's files and mounts.
//!
//! tokio's `spawn_blocking` takes the blocking pool's one lock, which its
//! threads also take between tasks and while the pool makes a new thread.
//! When a hundred pods start at once the async workers spin on that lock
//! and wait (a thousand of eight thousand context switches of cri-shim's
//! workers in one burst, measured), and the calls they should be answering
//! wait with them. Here a worker pushes the job onto a channel whose
//! sending side takes no lock, and a burst queues for a few threads rather
//! than growing a hundred that fight over two cores.
//!
//! A job that never returns (a mount of a dead NFS server's path) must not
//! stop the others: a watchdog thread adds a thread whenever work has
//! waited for [`STALL`] with no job finishing, up to a cap.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::exec::set_thread_nice;

/// The job did not return: it panicked, or its thread went away.
#[derive(Debug, thiserror::Error)]
#[error("the task ended abnormally (it panicked or its worker thread went away)")]
pub struct TaskLost;

/// How long work may wait with no job finishing before another thread is
/// added: far longer than the jobs take on a busy host, short enough that a
/// hung one holds up the rest only briefly.
pub const STALL: Duration = Duration::from_millis(250);

/// The watchdog grows a set to at most this many times its own size.
const GROWTH_CAP: usize = 8;

type Job = Box<dyn FnOnce() + Send>;
type Queue = Arc<Mutex<mpsc::Receiver<Job>>>;

/// A set of threads, made when first used, that run jobs in order at one
/// nice value. Meant for a `static`.
pub struct WorkThreads {
    name: &'static str,
    threads: usize,
    nice: i32,
    /// Threads started so far.
    started: AtomicUsize,
    /// Jobs sent and not yet finished (waiting or running).
    pending: AtomicUsize,
    /// When a job last finished, in ms ([`since_epoch`]).
    last_done: AtomicU64,
    queue: OnceLock<mpsc::Sender<Job>>,
    /// Parked while no work is pending.
    watchdog: OnceLock<std::thread::Thread>,
}

/// The set for bulk work at the default CPU priority: processes spawned
/// there (runc, CNI plugins, cri-shim's helpers) start at nice 0, and so
/// do the containers, which inherit runc's.
pub static BULK: WorkThreads = WorkThreads::new("bulk-work", 8, 0);

impl WorkThreads {
    /// `threads` threads named `name-N`, each at `nice` (a thread that may
    /// not raise its priority keeps the one it was made with).
    pub const fn new(name: &'static str, threads: usize, nice: i32) -> Self {
        Self {
            name,
            threads,
            nice,
            started: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
            queue: OnceLock::new(),
            watchdog: OnceLock::new(),
        }
    }

    /// Runs `f` on one of the threads, with the caller's tokio runtime
    /// entered (so it may spawn a `tokio::process::Command`), and waits
    /// for its result.
    pub async fn run<T: Send + 'static>(
        &'static self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TaskLost> {
        let queue = self.queue.get_or_init(|| self.start());
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            self.last_done.store(since_epoch(), Ordering::Release);
            self.pending.fetch_sub(1, Ordering::AcqRel);
            if let Ok(out) = out {
                let _ = tx.send(out);
            }
        });
        if self.pending.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(watchdog) = self.watchdog.get()
        {
            watchdog.unpark();
        }
        if queue.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(TaskLost);
        }
        rx.await.map_err(|_| TaskLost)
    }

    /// Makes the threads and the watchdog; the channel's receiving end is
    /// shared by the threads.
    fn start(&'static self) -> mpsc::Sender<Job> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx: Queue = Arc::new(Mutex::new(rx));
        self.last_done.store(since_epoch(), Ordering::Release);
        for _ in 0..self.threads {
            self.add_thread(&rx);
        }
        let watched = rx.clone();
        let watchdog = std::thread::Builder::new()
            .name(format!("{}-watch", self.name))
            .spawn(move || self.watch(&watched));
        match watchdog {
            Ok(handle) => {
                let _ = self.watchdog.set(handle.thread().clone());
            }
            Err(error) => {
                tracing::error!(%error, threads = self.name, "starting a work thread watchdog");
            }
        }
        tx
    }

    /// Adds a thread when work waits and none finished for [`STALL`].
    fn watch(&'static self, rx: &Queue) {
        loop {
            if self.pending.load(Ordering::Acquire) == 0 {
                // Woken by the next job (or spuriously: checked again).
                std::thread::park();
                continue;
            }
            std::thread::sleep(STALL);
            let started = self.started.load(Ordering::Acquire);
            let waiting = self.pending.load(Ordering::Acquire) > started;
            let idle_for = since_epoch().saturating_sub(self.last_done.load(Ordering::Acquire));
            if waiting
                && idle_for >= STALL.as_millis() as u64
                && started < self.threads * GROWTH_CAP
            {
                tracing::warn!(
                    threads = self.name,
                    started,
                    "no work finished in {STALL:?} with work waiting: adding a thread"
                );
                self.add_thread(rx);
            }
        }
    }

    fn add_thread(&'static self, rx: &Queue) {
        let rx = rx.clone();
        let index = self.started.load(Ordering::Acquire);
        let started = std::thread::Builder::new()
            .name(format!("{}-{index}", self.name))
            .spawn(move || {
                let _ = set_thread_nice(self.nice);
                loop {
                    // Only the thread waiting for the next job holds the
                    // lock; jobs catch their panics, so it is never
                    // poisoned.
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
        match started {
            Ok(_) => {
                self.started.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => {
                tracing::error!(%error, threads = self.name, "starting a work thread");
            }
        }
    }
}

/// Milliseconds since the first call: a clock the threads share as one
/// atomic.
fn since_epoch() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::thread_nice;

    #[tokio::test]
    async fn runs_work_and_survives_a_panic() {
        static FOUR: WorkThreads = WorkThreads::new("test-four", 4, 0);
        assert_eq!(FOUR.run(|| 6 * 7).await.unwrap(), 42);
        assert!(FOUR.run(|| -> u32 { panic!("boom") }).await.is_err());
        // Every thread still takes work after one panicked.
        let results = futures::future::join_all((0..12).map(|i| FOUR.run(move || i))).await;
        let got: Vec<usize> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, (0..12).collect::<Vec<_>>());
        assert_eq!(FOUR.pending.load(Ordering::Acquire), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_set_grows_a_thread() {
        static TWO: WorkThreads = WorkThreads::new("test-two", 2, 0);
        let name = || std::thread::current().name().unwrap_or_default().to_owned();
        // Both threads are held until a third job has run.
        let (started, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let hold = || {
            let (started, held) = (started.clone(), held.clone());
            move || {
                let _ = started.send(());
                let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(10));
                name()
            }
        };
        let first = tokio::spawn(TWO.run(hold()));
        let second = tokio::spawn(TWO.run(hold()));
        for _ in 0..2 {
            running.recv().await.unwrap();
        }
        assert_eq!(TWO.run(name).await.unwrap(), "test-two-2");
        release.send(()).unwrap();
        release.send(()).unwrap();
        let mut held: Vec<String> = vec![];
        for job in [first, second] {
            held.push(job.await.unwrap().unwrap());
        }
        held.sort();
        assert_eq!(held, ["test-two-0", "test-two-1"]);
        assert_eq!(TWO.started.load(Ordering::Acquire), 3);
    }

    #[tokio::test]
    async fn jobs_can_spawn_processes_on_the_callers_runtime() {
        static ONE: WorkThreads = WorkThreads::new("test-one", 1, 0);
        let child = ONE
            .run(|| tokio::process::Command::new("true").spawn())
            .await
            .unwrap()
            .unwrap();
        let status = child.wait_with_output().await.unwrap().status;
        assert!(status.success());
    }

    #[test]
    fn threads_run_at_their_nice_value() {
        static LOW: WorkThreads = WorkThreads::new("test-low", 1, 5);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(LOW.run(thread_nice)).unwrap(), Some(5));
    }
}
