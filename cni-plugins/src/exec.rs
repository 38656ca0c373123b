//! Running one plugin binary: the narrow seam between the invoker's logic
//! and the host. [`ProcessExec`] spawns the real binary; tests substitute a
//! fake [`PluginExec`] so chaining and caching are checked without root.
//!
//! A plugin runs in a process group of its own, and a run that is cut short
//! (the invoker's timeout drops it) kills that whole group: helpers the
//! plugin started (an IPAM plugin, `iptables`) go with it.
//!
//! An implementation only runs the program and reports what it printed;
//! interpreting exit codes and output is the invoker's job, so every
//! implementation is held to the same protocol.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Errors starting or talking to a plugin process.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The binary could not be started.
    #[error("spawning {path}")]
    Spawn {
        /// The plugin binary.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Feeding stdin or collecting output failed.
    #[error("talking to {path}")]
    Io {
        /// The plugin binary.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// One plugin invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRequest {
    /// Absolute path of the plugin binary.
    pub path: PathBuf,
    /// `CNI_*` variables, set on top of the inherited environment.
    pub env: Vec<(String, String)>,
    /// The network configuration JSON.
    pub stdin: Vec<u8>,
}

/// What a plugin process did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginOutput {
    /// Exit code; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Everything written to stdout: a result or an error JSON.
    pub stdout: Vec<u8>,
    /// Everything written to stderr: the plugin's own log.
    pub stderr: Vec<u8>,
}

impl PluginOutput {
    /// Whether the plugin exited 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs a plugin binary to completion.
///
/// Cancel-safe by contract: dropping the future must stop the plugin, since
/// the invoker enforces its timeout by dropping it.
pub trait PluginExec: Send + Sync + std::fmt::Debug {
    /// Runs `request` and returns its exit code and output.
    fn exec(&self, request: PluginRequest) -> BoxFuture<'_, Result<PluginOutput, ExecError>>;
}

/// Spawns plugins as child processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessExec;

/// How often, and how far apart, to retry a spawn that hit `ETXTBSY`.
/// The binary is being written right now (a plugin upgrade, or another
/// thread of ours that forked while holding a write fd to it); it clears
/// up within moments, so a short bounded retry is the libcni behaviour too.
const TEXT_BUSY_RETRIES: u32 = 5;
const TEXT_BUSY_DELAY: Duration = Duration::from_millis(200);

/// Kills a plugin's process group when dropped, unless disarmed after the
/// plugin finished.
struct GroupKill(Option<nix::unistd::Pid>);

impl GroupKill {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // ESRCH: the group is gone already, which is what we want.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Starts `command` on one of the [`BULK`](crate::work::BULK) threads, at
/// the default CPU priority.
///
/// Forking copies the daemon's page tables and can take milliseconds on a
/// host busy starting many pods, which an async worker would not spend
/// answering other calls; std spawns through `posix_spawn` (a vfork, which
/// copies nothing) as long as the command has no `pre_exec` hook, so the
/// priority is not reset in the child: the spawning thread runs at nice 0,
/// and the child (with what it starts: containers inherit runc's) inherits
/// that, not a raised daemon thread's.
pub async fn spawn_off_worker(mut command: Command) -> io::Result<tokio::process::Child> {
    crate::work::BULK
        .run(move || command.spawn())
        .await
        .map_err(io::Error::other)?
}

/// Runs `f` with the calling thread at nice 0, then puts its nice value
/// back: a process spawned in `f` starts at the default priority.
pub fn at_default_priority<T>(f: impl FnOnce() -> T) -> T {
    at_nice(0, f)
}

/// Runs `f` with the calling thread at `nice`, then puts its nice value
/// back. A refusal (raising needs `CAP_SYS_NICE`) leaves the thread where
/// it was, or lower: where an unprivileged thread was anyway.
pub fn at_nice<T>(nice: i32, f: impl FnOnce() -> T) -> T {
    let before = thread_nice();
    if before != Some(nice) {
        let _ = set_thread_nice(nice);
    }
    let out = f();
    if let Some(before) = before.filter(|n| *n != nice) {
        let _ = set_thread_nice(before);
    }
    out
}

/// The calling thread's nice value (`None` if it cannot be read).
pub fn thread_nice() -> Option<i32> {
    // SAFETY: errno is thread-local; getpriority reads the calling thread's
    // nice value (`who` 0), and -1 is an error only with errno set.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        (nice != -1 || *libc::__errno_location() == 0).then_some(nice)
    }
}

/// Sets the calling thread's nice value (on Linux each thread has its
/// own). Raising it needs `CAP_SYS_NICE`.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority only changes the calling thread's priority.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

impl ProcessExec {
    async fn run(request: PluginRequest) -> Result<PluginOutput, ExecError> {
        let mut attempt = 0;
        let mut child = loop {
            let mut command = Command::new(&request.path);
            command
                .envs(request.env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            match spawn_off_worker(command).await {
                Ok(child) => break child,
                Err(err)
                    if err.raw_os_error() == Some(libc::ETXTBSY) && attempt < TEXT_BUSY_RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(TEXT_BUSY_DELAY).await;
                }
                Err(source) => {
                    return Err(ExecError::Spawn {
                        path: request.path,
                        source,
                    });
                }
            }
        };
        let mut group = GroupKill(
            child
                .id()
                .and_then(|pid| i32::try_from(pid).ok())
                .map(nix::unistd::Pid::from_raw),
        );
        let mut stdin = child.stdin.take();
        let feed = async {
            if let Some(stdin) = stdin.as_mut() {
                stdin.write_all(&request.stdin).await?;
                stdin.shutdown().await?;
            }
            drop(stdin);
            Ok::<_, io::Error>(())
        };
        // stdin is written while stdout is drained, so a plugin that answers
        // before reading all its input cannot deadlock us on a full pipe.
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        // Finished (stdout closed and the plugin reaped): its group id may
        // be reused from now on.
        group.disarm();
        let output = output.map_err(|source| ExecError::Io {
            path: request.path.clone(),
            source,
        })?;
        match fed {
            // A plugin may exit without reading its config (e.g. VERSION);
            // the exit status and output still say what happened.
            Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
                return Err(ExecError::Io {
                    path: request.path,
                    source: err,
                });
            }
            _ => {}
        }
        Ok(PluginOutput {
            exit_code: output.status.code(),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }
}

impl PluginExec for ProcessExec {
    fn exec(&self, request: PluginRequest) -> BoxFuture<'_, Result<PluginOutput, ExecError>> {
        Box::pin(Self::run(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn at_nice_runs_at_that_nice_value_and_puts_it_back() {
        let before = thread_nice();
        assert_eq!(at_nice(7, thread_nice), Some(7));
        // Putting it back raises it, which needs CAP_SYS_NICE (root).
        if nix::unistd::geteuid().is_root() {
            assert_eq!(thread_nice(), before);
        } else {
            eprintln!("skipped the put-back check: raising a thread's priority needs root");
        }
    }

    fn script(dir: &std::path::Path, body: &str) -> PathBuf {
        let path = dir.join("plugin");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn passes_env_and_stdin_and_collects_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            r#"echo "$CNI_COMMAND $CNI_IFNAME"; cat; echo oops >&2; exit 3"#,
        );
        let output = ProcessExec
            .exec(PluginRequest {
                path,
                env: vec![
                    ("CNI_COMMAND".into(), "ADD".into()),
                    ("CNI_IFNAME".into(), "eth0".into()),
                ],
                stdin: b"{\"name\":\"n\"}".to_vec(),
            })
            .await
            .unwrap();
        assert_eq!(output.exit_code, Some(3));
        assert!(!output.success());
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "ADD eth0\n{\"name\":\"n\"}"
        );
        assert_eq!(output.stderr, b"oops\n");
    }

    #[tokio::test]
    async fn plugin_that_ignores_stdin_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(dir.path(), "echo '{}'");
        let output = ProcessExec
            .exec(PluginRequest {
                path,
                env: Vec::new(),
                // Larger than a pipe buffer, so the write really fails.
                stdin: vec![b' '; 1 << 20],
            })
            .await
            .unwrap();
        assert!(output.success());
        assert_eq!(output.stdout, b"{}\n");
    }

    #[tokio::test]
    async fn dropping_a_run_kills_the_plugin_and_its_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A helper in the background, then the plugin itself hangs.
        let path = script(
            dir.path(),
            &format!(
                "sleep 300 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; sleep 300",
                p = pids.display()
            ),
        );
        let run = ProcessExec.exec(PluginRequest {
            path,
            env: Vec::new(),
            stdin: Vec::new(),
        });
        let outcome = tokio::time::timeout(Duration::from_secs(1), run).await;
        assert!(outcome.is_err(), "the plugin should still be running");
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.split_whitespace() {
            let pid = nix::unistd::Pid::from_raw(pid.parse().unwrap());
            // Killed; a zombie until its parent reaps it at most.
            let mut gone = false;
            for _ in 0..100 {
                let state =
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if state.is_empty() || state.split(' ').nth(2) == Some("Z") {
                    gone = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(gone, "process {pid} outlived the dropped run");
        }
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_error() {
        let err = ProcessExec
            .exec(PluginRequest {
                path: "/nonexistent/plugin".into(),
                env: Vec::new(),
                stdin: Vec::new(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Spawn { .. }), "{err:?}");
    }
}
