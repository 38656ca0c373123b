//! The OCI runtime binary (`runc` or a compatible one) for the calls the server
//! makes itself; `create` is run by the container's monitor.

use std::path::PathBuf;

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
    async fn run(
        &self,
        op: &'static str,
        args: &[&str],
        id: &str,
        trailing: &[&str],
    ) -> Result<(), OciRuntimeError> {
        let out = tokio::process::Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .arg(op)
            .args(args)
            .arg(id)
            .args(trailing)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| OciRuntimeError::Exec {
                binary: self.binary.clone(),
                op,
                id: id.to_owned(),
                source,
            })?;
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

    /// Deletes the container's runtime state, killing it if still alive.
    pub async fn delete(&self, id: &str) -> Result<(), OciRuntimeError> {
        match self.run("delete", &["--force"], id, &[]).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }
}
