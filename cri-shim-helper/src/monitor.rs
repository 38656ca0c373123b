//! The per-container monitor (the role conmon plays for CRI-O).
//!
//! One monitor process per container, in its own session so it outlives the
//! server (a `kill -9` of the server leaves it running). It runs `runc create`
//! with its own pipes as the container's stdio, reports the container pid (or
//! the runtime's error) as one JSON line on its stdout, then copies the pipes
//! into the CRI log file and reaps the container as a child subreaper. When
//! the container exits it writes the exit record atomically and exits itself.
//! SIGUSR1 makes it reopen the log file (ReopenContainerLog after the kubelet
//! rotated it).
//!
//! After `runc create` it is a single thread: one `poll` waits on both output
//! pipes and on a signalfd carrying SIGCHLD and SIGUSR1, so stdout and stderr
//! are read in the order the data arrives and the log is written by one
//! writer, without locks.
//!
//! Invariant: the exit record is written only after the container's output is
//! in the log, so a reader that sees the exit sees all the output. (Once the
//! container init has exited, the pipes are drained until they end, or for at
//! most [`DRAIN_AFTER_EXIT`] when a process outside the container's pid
//! namespace still holds them.)

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::logs::{LineSplitter, Record, Stream, now_rfc3339_nano, write_record};

/// How long output is still copied after the container init exited while a
/// process outside its pid namespace keeps the pipes open.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Poll period when no signalfd could be made (SIGCHLD is then polled).
const FALLBACK_TICK: Duration = Duration::from_millis(100);

/// What the server tells a monitor to do (passed as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSpec {
    /// Container id (also the OCI runtime's container id).
    pub id: String,
    /// OCI bundle directory (holds `config.json`).
    pub bundle: PathBuf,
    /// OCI runtime binary.
    pub runtime: PathBuf,
    /// `--root` state directory of the OCI runtime.
    pub runtime_root: PathBuf,
    /// Absolute CRI log path; `None` discards output.
    pub log_path: Option<PathBuf>,
    /// Where the exit record is written.
    pub exit_file: PathBuf,
    /// The container's cgroup path (OCI `cgroupsPath`), to tell an OOM kill.
    #[serde(default)]
    pub cgroup_path: Option<String>,
}

/// The first line a monitor prints: the container's pid or why it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorReport {
    /// `runc create` succeeded; the container init waits for `runc start`.
    Created {
        /// Host pid of the container init process.
        pid: i32,
    },
    /// `runc create` failed; nothing of the container is left in the runtime.
    Failed {
        /// The runtime's own error message.
        message: String,
    },
}

/// Written by the monitor when the container has exited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code; 128 + signal number when killed by a signal.
    pub exit_code: i32,
    /// Unix time in nanoseconds when the exit was observed.
    pub finished_at: i64,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitRecord {
    /// Reads the record, `None` while the container has not exited.
    pub fn read(path: &Path) -> Option<Self> {
        let data = std::fs::read(path).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// Entry point of the monitor role; never returns.
pub fn main(spec_json: &str) -> ! {
    let code = match serde_json::from_str::<MonitorSpec>(spec_json) {
        Ok(spec) => run(&spec),
        Err(e) => {
            report(&MonitorReport::Failed {
                message: format!("bad monitor spec: {e}"),
            });
            1
        }
    };
    std::process::exit(code)
}

fn report(r: &MonitorReport) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, r);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn run(spec: &MonitorSpec) -> i32 {
    // Own session: a Ctrl-C or SIGHUP aimed at the server's terminal must not
    // reach the container's keeper.
    let _ = nix::unistd::setsid();
    // The container init is reparented to us after `runc create` exits; as a
    // subreaper we can wait for it and learn its exit status.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        report(&MonitorReport::Failed {
            message: format!("PR_SET_CHILD_SUBREAPER: {e}"),
        });
        return 1;
    }

    let (out_r, out_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let (err_r, err_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let runc_log = spec.bundle.join("runc-create.log");
    let pid_file = spec.bundle.join("init.pid");
    let mut cmd = Command::new(&spec.runtime);
    cmd.arg("--root")
        .arg(&spec.runtime_root)
        .arg("--log")
        .arg(&runc_log)
        .arg("--log-format")
        .arg("json")
        .arg("create")
        .arg("--bundle")
        .arg(&spec.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&spec.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let status = cmd.output();
    // Our copies of the write ends live in `cmd`; drop them so the pipes end
    // when the container's last writer exits.
    drop(cmd);
    match status {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return fail(runtime_error(&runc_log).unwrap_or_else(|| {
                format!(
                    "{} create exited with {}",
                    spec.runtime.display(),
                    out.status
                )
            }));
        }
        Err(e) => return fail(format!("running {}: {e}", spec.runtime.display())),
    }
    let pid = match std::fs::read_to_string(&pid_file).map(|s| s.trim().parse::<i32>()) {
        Ok(Ok(pid)) => pid,
        _ => {
            return fail(format!(
                "{} create wrote no pid file",
                spec.runtime.display()
            ));
        }
    };
    // SIGCHLD and SIGUSR1 are taken through a signalfd. Blocked only now,
    // after `runc create`, so the container never inherits the mask, and
    // before the report, so a ReopenContainerLog right after the create
    // cannot kill us (SIGUSR1's default action). A SIGCHLD that came before
    // is not lost: the first reap runs after the mask is in place.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    signals.add(Signal::SIGUSR1);
    let signal_fd = signals.thread_block().ok().and_then(|()| {
        SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok()
    });
    report(&MonitorReport::Created { pid });
    crate::role::detach_stdio();

    let exit = watch(
        spec,
        Pid::from_raw(pid),
        [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
        signal_fd,
    );
    write_exit(&spec.exit_file, &exit);
    0
}

/// Copies the container's output into the log until the container init has
/// exited and its output is drained; returns the exit record. Without a
/// signalfd (it could not be made) it polls for the exit every
/// [`FALLBACK_TICK`] and cannot reopen the log.
fn watch(
    spec: &MonitorSpec,
    init: Pid,
    streams: [(OwnedFd, Stream); 2],
    signal_fd: Option<SignalFd>,
) -> ExitRecord {
    let mut log = LogWriter {
        path: spec.log_path.clone(),
        file: spec.log_path.as_deref().and_then(open_log),
    };
    let mut open: Vec<(File, LineSplitter)> = streams
        .into_iter()
        .map(|(fd, stream)| (File::from(fd), LineSplitter::new(stream)))
        .collect();
    let mut buf = vec![0u8; 32 * 1024];
    let mut exit = reap_children(init, spec);
    let mut drain_deadline = None;
    loop {
        if exit.is_some() {
            if open.is_empty() {
                break;
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_AFTER_EXIT);
            if Instant::now() >= deadline {
                break;
            }
        }
        let timeout = match (drain_deadline, &signal_fd) {
            (Some(deadline), _) => deadline.saturating_duration_since(Instant::now()),
            (None, None) => FALLBACK_TICK,
            (None, Some(_)) => Duration::MAX,
        };
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE);
        let mut fds: Vec<PollFd> = signal_fd
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .chain(
                open.iter()
                    .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN)),
            )
            .collect();
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                // Cannot wait on the pipes: stop copying, wait for the exit.
                drop(fds);
                open.clear();
                exit = exit.or_else(|| Some(wait_for_exit(init, spec)));
                continue;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let (signal_ready, pipes_ready) = match &signal_fd {
            Some(_) => (ready[0], &ready[1..]),
            None => (true, &ready[..]),
        };
        let mut ended = Vec::new();
        for (i, (file, splitter)) in open.iter_mut().enumerate() {
            if !pipes_ready[i] {
                continue;
            }
            match file.read(&mut buf) {
                Ok(0) => ended.push(i),
                Ok(n) => log.write(&splitter.push(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => ended.push(i),
            }
        }
        for i in ended.into_iter().rev() {
            let (_, mut splitter) = open.remove(i);
            log.write(&splitter.finish().into_iter().collect::<Vec<_>>());
        }
        if signal_ready {
            if let Some(sfd) = &signal_fd {
                while let Ok(Some(info)) = sfd.read_signal() {
                    if info.ssi_signo == Signal::SIGUSR1 as u32 {
                        log.reopen();
                    }
                }
            }
            if exit.is_none() {
                exit = reap_children(init, spec);
            }
        }
    }
    // Past the deadline, whatever is still buffered of an unfinished line
    // is written as a last record.
    for (_, mut splitter) in open {
        log.write(&splitter.finish().into_iter().collect::<Vec<_>>());
    }
    log.flush();
    exit.unwrap_or_else(|| wait_for_exit(init, spec))
}

/// The CRI log file (or nowhere when the container has no log path).
struct LogWriter {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl LogWriter {
    fn write(&mut self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let ts = now_rfc3339_nano();
        if let Some(f) = self.file.as_mut() {
            for r in records {
                let _ = write_record(f, &ts, r);
            }
        }
    }

    /// Opens the path afresh: the kubelet renamed the old file away.
    fn reopen(&mut self) {
        self.flush();
        if let Some(path) = &self.path {
            self.file = open_log(path);
        }
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
        }
    }
}

/// Opens (creating) the CRI log file for appending.
fn open_log(path: &Path) -> Option<File> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    OpenOptions::new().create(true).append(true).open(path).ok()
}

fn fail(message: String) -> i32 {
    report(&MonitorReport::Failed { message });
    1
}

/// The last error message runc logged in JSON format.
fn runtime_error(log: &Path) -> Option<String> {
    let file = File::open(log).ok()?;
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .last()
}

/// Reaps every exited child without blocking; returns the exit record once
/// the container init is among them.
fn reap_children(init: Pid, spec: &MonitorSpec) -> Option<ExitRecord> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => {
                return Some(exit_record(spec, code, None));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                return Some(exit_record(spec, 128 + sig as i32, Some(sig as i32)));
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // No children left although init was never seen exiting: it was
            // reaped elsewhere. Report an unknown exit rather than hang.
            Err(nix::errno::Errno::ECHILD) => return Some(exit_record(spec, 255, None)),
            Err(_) => return None,
        }
    }
}

/// Blocks until the container init exits (reaping every other child).
fn wait_for_exit(init: Pid, spec: &MonitorSpec) -> ExitRecord {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => {
                return exit_record(spec, code, None);
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                return exit_record(spec, 128 + sig as i32, Some(sig as i32));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return exit_record(spec, 255, None),
        }
    }
}

/// The record of an exit observed now. The cgroup stays until `runc
/// delete`, so its OOM counter can still be read.
fn exit_record(spec: &MonitorSpec, exit_code: i32, signal: Option<i32>) -> ExitRecord {
    ExitRecord {
        exit_code,
        finished_at: now_ns(),
        signal,
        oom_killed: spec.cgroup_path.as_deref().is_some_and(|p| {
            crate::cgroup::cgroup_oom_killed(Path::new(crate::cgroup::CGROUP_ROOT), p)
        }),
    }
}

fn write_exit(path: &Path, exit: &ExitRecord) {
    let tmp = path.with_extension("tmp");
    if let Ok(data) = serde_json::to_vec(exit)
        && std::fs::write(&tmp, data).is_ok()
    {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Unix time in nanoseconds.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}
