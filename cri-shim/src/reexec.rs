//! Starting the helper processes (container monitors, namespace pinning,
//! sandbox infra processes): the small `cri-shim-helper` executable when there is one, else
//! this executable re-executed with the same hidden first argument.
//!
//! Either way the command line is `<exe> <role argument> <spec JSON>`, so a
//! helper started by an earlier server is recognised after a restart (by the
//! id in its command line) whichever executable runs it.

use std::path::{Path, PathBuf};

pub use cri_shim_helper::HELPER_BIN_NAME;
pub use cri_shim_helper::role::{INFRA_ARG, MONITOR_ARG, PIN_ARG};

/// If this process was started in a helper role (the fallback re-execution),
/// runs it and exits; otherwise returns so `main` carries on. Call before
/// starting any threads or runtime.
pub fn run_child_role_if_requested() {
    cri_shim_helper::role::run_if_requested();
}

/// The executable helper processes are started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperExe {
    /// The dedicated `cri-shim-helper` executable.
    Helper(PathBuf),
    /// This executable, re-executed (`/proc/self/exe`).
    SelfExe,
}

/// Failures choosing or starting a helper process.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The configured helper executable is not there.
    #[error("helper executable {path}: {source}")]
    HelperMissing {
        /// The configured path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("spawning the {role}: {source}")]
    Spawn {
        /// Role name.
        role: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The child said nothing in time (it was killed).
    #[error("the {role} sent no report within {timeout:?}")]
    NoReport {
        /// Role name.
        role: &'static str,
        /// How long we waited.
        timeout: std::time::Duration,
    },
    /// Reading its report failed (it was killed).
    #[error("reading the {role} report: {source}")]
    Read {
        /// Role name.
        role: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HelperExe {
    /// The helper for this process: `configured` (which must be an
    /// executable file), else `cri-shim-helper` next to the current
    /// executable, else (with a warning) the current executable itself.
    pub fn resolve(configured: Option<&Path>) -> Result<Self, ChildError> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_owned));
        let chosen = Self::choose(configured, exe_dir.as_deref())?;
        match &chosen {
            HelperExe::Helper(path) => {
                tracing::info!(helper = %path.display(), "helper processes run from the helper executable");
            }
            HelperExe::SelfExe => tracing::warn!(
                looked_in = ?exe_dir,
                "no {HELPER_BIN_NAME} next to this executable: helper processes re-execute it \
                 (larger per-container memory); build the workspace or pass --helper-path"
            ),
        }
        Ok(chosen)
    }

    /// [`HelperExe::resolve`] with the directory of the current executable
    /// as a parameter.
    fn choose(configured: Option<&Path>, exe_dir: Option<&Path>) -> Result<Self, ChildError> {
        if let Some(path) = configured {
            return match executable_file(path) {
                Ok(()) => Ok(HelperExe::Helper(path.to_owned())),
                Err(source) => Err(ChildError::HelperMissing {
                    path: path.to_owned(),
                    source,
                }),
            };
        }
        Ok(exe_dir
            .map(|dir| dir.join(HELPER_BIN_NAME))
            .filter(|path| executable_file(path).is_ok())
            .map_or(HelperExe::SelfExe, HelperExe::Helper))
    }

    /// The helper (started with `spawn_off_worker`, at the default CPU
    /// priority: pod processes descend from it).
    fn command(&self) -> tokio::process::Command {
        match self {
            HelperExe::Helper(path) => tokio::process::Command::new(path),
            HelperExe::SelfExe => {
                // /proc/self/exe guarantees the same binary even if the file
                // on disk was replaced since; `ps` shows the real name.
                let mut cmd = tokio::process::Command::new("/proc/self/exe");
                if let Ok(exe) = std::env::current_exe() {
                    cmd.arg0(exe);
                }
                cmd
            }
        }
    }

    /// Starts a helper in a role (`role_arg` with `spec_json`) and waits up
    /// to `timeout` for the first line it prints: `(pid, line)`. The child
    /// is meant to outlive us and is not waited for; tokio reaps it should it
    /// exit while we run. A child that gives no report is killed.
    pub async fn spawn(
        &self,
        role: &'static str,
        role_arg: &str,
        spec_json: &str,
        timeout: std::time::Duration,
    ) -> Result<(i32, String), ChildError> {
        use tokio::io::AsyncBufReadExt;
        let mut command = self.command();
        command
            .arg(role_arg)
            .arg(spec_json)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cni_plugins::exec::spawn_off_worker(command)
            .await
            .map_err(|source| ChildError::Spawn { role, source })?;
        let pid = child.id().unwrap_or(0) as i32;
        let mut line = String::new();
        let read = async {
            match child.stdout.take() {
                Some(out) => tokio::io::BufReader::new(out).read_line(&mut line).await,
                None => Ok(0),
            }
        };
        let outcome = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(_)) => Ok((pid, line.trim().to_owned())),
            Ok(Err(source)) => Err(ChildError::Read { role, source }),
            Err(_) => Err(ChildError::NoReport { role, timeout }),
        };
        if outcome.is_err() {
            let _ = child.kill().await;
        }
        outcome
    }
}

/// `Ok` when `path` is a regular file with an execute bit.
fn executable_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an executable file",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_exe(path: &Path, mode: u32) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn helper_next_to_the_executable_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join(HELPER_BIN_NAME);
        write_exe(&helper, 0o755);
        assert_eq!(
            HelperExe::choose(None, Some(dir.path())).unwrap(),
            HelperExe::Helper(helper)
        );
    }

    #[test]
    fn missing_or_non_executable_helper_falls_back_to_self() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            HelperExe::choose(None, Some(dir.path())).unwrap(),
            HelperExe::SelfExe
        );
        write_exe(&dir.path().join(HELPER_BIN_NAME), 0o644);
        assert_eq!(
            HelperExe::choose(None, Some(dir.path())).unwrap(),
            HelperExe::SelfExe
        );
        std::fs::remove_file(dir.path().join(HELPER_BIN_NAME)).unwrap();
        std::fs::create_dir(dir.path().join(HELPER_BIN_NAME)).unwrap();
        assert_eq!(
            HelperExe::choose(None, Some(dir.path())).unwrap(),
            HelperExe::SelfExe
        );
        assert_eq!(HelperExe::choose(None, None).unwrap(), HelperExe::SelfExe);
    }

    #[test]
    fn configured_helper_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let custom = dir.path().join("my-helper");
        let err = HelperExe::choose(Some(&custom), Some(dir.path())).unwrap_err();
        assert!(
            matches!(&err, ChildError::HelperMissing { path, .. } if *path == custom),
            "{err}"
        );
        write_exe(&custom, 0o700);
        // The configured path wins over one next to the executable.
        write_exe(&dir.path().join(HELPER_BIN_NAME), 0o755);
        assert_eq!(
            HelperExe::choose(Some(&custom), Some(dir.path())).unwrap(),
            HelperExe::Helper(custom)
        );
    }

    #[tokio::test]
    async fn spawn_returns_the_first_line() {
        // echo prints its arguments: the role argument and the spec.
        let (pid, line) = HelperExe::Helper(PathBuf::from("/bin/echo"))
            .spawn("test", INFRA_ARG, "{}", std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert!(pid > 0);
        assert_eq!(line, format!("{INFRA_ARG} {{}}"));
    }
}
