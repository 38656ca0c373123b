//! The per-container monitor (the role conmon plays for CRI-O).
//!
//! One monitor process per container, re-executed from this binary in its own
//! session so it outlives the server. It runs `runc create` with its own pipes
//! as the container's stdio, reports the container pid (or the runtime's
//! error) as one JSON line on its stdout, then copies the pipes into the CRI
//! log file and reaps the container as a child subreaper. When the container
//! exits it writes the exit record atomically and exits itself. Invariant: the
//! exit record is written only after the container's output is in the log, so
//! a reader that sees the exit sees all the output.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::logs::{LineSplitter, Stream, now_rfc3339_nano, write_record};

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
    report(&MonitorReport::Created { pid });
    crate::reexec::detach_stdio();

    let log = Arc::new(Mutex::new(spec.log_path.as_deref().and_then(open_log)));
    // SIGUSR1 = reopen the log (the kubelet rotated it). Blocked only now,
    // after `runc create`, so the container never inherits the mask; the
    // threads spawned below inherit it, so only the signal thread takes it.
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    if usr1.thread_block().is_ok()
        && let Some(path) = spec.log_path.clone()
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            while let Ok(Signal::SIGUSR1) = usr1.wait() {
                let reopened = open_log(&path);
                if let Ok(mut guard) = log.lock() {
                    *guard = reopened;
                }
            }
        });
    }
    let copier = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            copy_output([(out_r, Stream::Stdout), (err_r, Stream::Stderr)], &log)
        })
    };

    let mut exit = reap_until_exit(Pid::from_raw(pid));
    // The cgroup stays until `runc delete`, so its OOM counter is still there.
    exit.oom_killed = spec
        .cgroup_path
        .as_deref()
        .is_some_and(|p| crate::stats::cgroup_oom_killed(Path::new(crate::stats::CGROUP_ROOT), p));
    // The container's processes are gone with its init (own pid namespace);
    // give the copier a moment to drain what is still buffered in the pipes.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !copier.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if copier.is_finished() {
        let _ = copier.join();
    }
    if let Ok(mut guard) = log.lock()
        && let Some(f) = guard.as_mut()
    {
        let _ = f.flush();
    }
    write_exit(&spec.exit_file, &exit);
    0
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

/// Copies both output pipes into the log from one thread until both end.
/// When both have data, stdout is read first, so lines written in order to
/// the two streams mostly stay in order in the log (two threads would race).
fn copy_output(streams: [(OwnedFd, Stream); 2], log: &Mutex<Option<File>>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let emit = |records: Vec<crate::logs::Record>| {
        if records.is_empty() {
            return;
        }
        let ts = now_rfc3339_nano();
        if let Ok(mut guard) = log.lock()
            && let Some(f) = guard.as_mut()
        {
            for r in &records {
                let _ = write_record(f, &ts, r);
            }
        }
    };
    let mut open: Vec<(File, LineSplitter)> = streams
        .into_iter()
        .map(|(fd, stream)| (File::from(fd), LineSplitter::new(stream)))
        .collect();
    let mut buf = vec![0u8; 32 * 1024];
    while !open.is_empty() {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = open
                .iter()
                .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            fds.iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut ended = Vec::new();
        for (i, (file, splitter)) in open.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match file.read(&mut buf) {
                Ok(0) => ended.push(i),
                Ok(n) => emit(splitter.push(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => ended.push(i),
            }
        }
        for i in ended.into_iter().rev() {
            let (_, mut splitter) = open.remove(i);
            emit(splitter.finish().into_iter().collect());
        }
    }
}

/// Reaps every child until the container init exits; returns its exit record.
fn reap_until_exit(init: Pid) -> ExitRecord {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => {
                return ExitRecord {
                    exit_code: code,
                    finished_at: now_ns(),
                    signal: None,
                    oom_killed: false,
                };
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                return ExitRecord {
                    exit_code: 128 + sig as i32,
                    finished_at: now_ns(),
                    signal: Some(sig as i32),
                    oom_killed: false,
                };
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                // No children left although init was never seen exiting: it was
                // reaped elsewhere. Report an unknown exit rather than hang.
                return ExitRecord {
                    exit_code: 255,
                    finished_at: now_ns(),
                    signal: None,
                    oom_killed: false,
                };
            }
        }
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
