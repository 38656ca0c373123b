//! Child roles of the binary: the sandbox infra process and the container
//! monitor are this same executable re-executed with a hidden first argument.

/// First argument that selects the sandbox infra role.
pub const INFRA_ARG: &str = "__cri-shim-infra";
/// First argument that selects the container monitor role.
pub const MONITOR_ARG: &str = "__cri-shim-monitor";

/// If this process was started in a child role, runs it and exits; otherwise
/// returns so `main` carries on. Call before starting any threads or runtime.
pub fn run_child_role_if_requested() {
    let args: Vec<String> = std::env::args().skip(1).take(2).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [INFRA_ARG, spec] => crate::infra::main(spec),
        [MONITOR_ARG, spec] => crate::monitor::main(spec),
        [INFRA_ARG] | [MONITOR_ARG] => {
            eprintln!("{}: missing spec argument", args[0]);
            std::process::exit(2)
        }
        _ => {}
    }
}

/// Points stdout and stderr at /dev/null: a child role reports on stdout
/// once, then lets go of the server's pipe so the server sees EOF and no
/// later write can block on it.
pub fn detach_stdio() {
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Failures starting a child role.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
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

/// Starts this binary in a child role (`role_arg` with `spec_json`) and waits
/// up to `timeout` for the first line it prints: `(pid, line)`. The child is
/// meant to outlive us and is not waited for; tokio reaps it should it exit
/// while we run. A child that gives no report is killed.
pub async fn spawn_child(
    role: &'static str,
    role_arg: &str,
    spec_json: &str,
    timeout: std::time::Duration,
) -> Result<(i32, String), ChildError> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    // `ps` shows the real binary name, while /proc/self/exe guarantees the
    // same binary even if the file on disk was replaced since.
    if let Ok(exe) = std::env::current_exe() {
        cmd.arg0(exe);
    }
    let mut child = cmd
        .arg(role_arg)
        .arg(spec_json)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
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
