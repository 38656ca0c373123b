//! The OCI runtime binary (`runc` or a compatible one) for the calls the server
//! makes itself; `create` is run by the container's monitor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_plugins::exec::spawn_off_worker;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most output kept per stream of an exec, as the kubelet limits it (16 MiB).
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

/// What a command run in a container produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output, at most [`MAX_EXEC_OUTPUT`] bytes.
    pub stdout: Vec<u8>,
    /// Standard error, at most [`MAX_EXEC_OUTPUT`] bytes.
    pub stderr: Vec<u8>,
    /// Exit code; 128 + signal number when killed by a signal.
    pub exit_code: i32,
}

/// Errors from the OCI runtime binary.
#[derive(Debug, thiserror::Error)]
pub enum OciRuntimeError {
    /// The binary could not be run.
    #[error("running {binary} {op} {id}: {source}")]
    Exec {
        /// Binary path.
        binary: PathBuf,
        /// Subcommand.
        op: &'static str,
        /// Container id.
        id: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The binary exited non-zero.
    #[error("{binary} {op} {id} failed: {stderr}")]
    Failed {
        /// Binary path.
        binary: PathBuf,
        /// Subcommand.
        op: &'static str,
        /// Container id.
        id: String,
        /// What the runtime printed on stderr.
        stderr: String,
    },
}

impl OciRuntimeError {
    /// The runtime says the container does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, OciRuntimeError::Failed { stderr, .. }
            if stderr.contains("does not exist") || stderr.contains("not found"))
    }

    /// The runtime says the container is not running.
    pub fn is_not_running(&self) -> bool {
        matches!(self, OciRuntimeError::Failed { stderr, .. }
            if stderr.contains("not running") || stderr.contains("container not running")
                || stderr.contains("process already finished"))
    }
}

/// A runc-compatible binary with its own state root.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// Binary (`runc`).
    pub binary: PathBuf,
    /// `--root` directory.
    pub root: PathBuf,
}

impl OciRuntime {
    /// The runtime binary (started with [`spawn_off_worker`], at the
    /// default CPU priority, which the containers it starts inherit).
    fn command(&self) -> tokio::process::Command {
        tokio::process::Command::new(&self.binary)
    }

    async fn run(
        &self,
        op: &'static str,
        args: &[&str],
        id: &str,
        trailing: &[&str],
    ) -> Result<(), OciRuntimeError> {
        let mut command = self.command();
        command
            .arg("--root")
            .arg(&self.root)
            .arg(op)
            .args(args)
            .arg(id)
            .args(trailing)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let exec_err = |source| OciRuntimeError::Exec {
            binary: self.binary.clone(),
            op,
            id: id.to_owned(),
            source,
        };
        let child = spawn_off_worker(command).await.map_err(exec_err)?;
        let out = child.wait_with_output().await.map_err(exec_err)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(OciRuntimeError::Failed {
                binary: self.binary.clone(),
                op,
                id: id.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), OciRuntimeError> {
        self.run("start", &[], id, &[]).await
    }

    /// Sends `signal` (a name like `TERM` or a number) to the container init.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), OciRuntimeError> {
        self.run("kill", &[], id, &[signal]).await
    }

    /// Applies new cgroup limits (an OCI `LinuxResources` JSON file).
    pub async fn update(&self, id: &str, resources_file: &Path) -> Result<(), OciRuntimeError> {
        let file = resources_file.to_string_lossy();
        self.run("update", &["--resources", &file], id, &[]).await
    }

    /// Deletes the container's runtime state, killing it if still alive.
    pub async fn delete(&self, id: &str) -> Result<(), OciRuntimeError> {
        match self.run("delete", &["--force"], id, &[]).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Runs `cmd` in the running container (with the container's user, env
    /// and working directory) and collects its output. `None` when `timeout`
    /// passed first: the process was then killed inside the container.
    pub async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
        pid_file: &Path,
    ) -> Result<Option<ExecOutput>, OciRuntimeError> {
        let exec_err = |source| OciRuntimeError::Exec {
            binary: self.binary.clone(),
            op: "exec",
            id: id.to_owned(),
            source,
        };
        let mut command = self.command();
        command
            .arg("--root")
            .arg(&self.root)
            .arg("exec")
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .args(cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = spawn_off_worker(command).await.map_err(exec_err)?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let (stdout, stderr, status) =
                tokio::join!(read_capped(out), read_capped(err), child.wait());
            Ok::<_, std::io::Error>((stdout?, stderr?, status?))
        };
        let finished = match timeout {
            Some(t) => tokio::time::timeout(t, run).await.ok(),
            None => Some(run.await),
        };
        let Some(finished) = finished else {
            // Killing runc would leave the command running in the container:
            // kill the process it started, by the pid runc recorded.
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            let _ = std::fs::remove_file(pid_file);
            return Ok(None);
        };
        let _ = std::fs::remove_file(pid_file);
        let (stdout, stderr, status) = finished.map_err(exec_err)?;
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255);
        Ok(Some(ExecOutput {
            stdout,
            stderr,
            exit_code,
        }))
    }
}

/// Reads a stream to its end, keeping the first [`MAX_EXEC_OUTPUT`] bytes;
/// the rest is drained so the writer never blocks on a full pipe.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let Some(mut stream) = stream else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = MAX_EXEC_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}
