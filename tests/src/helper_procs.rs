//! cri-shim's helper processes as `/proc` shows them: which run for an id,
//! and from which executable.

use std::path::PathBuf;

use anyhow::ensure;

use crate::harness;

/// Role argument of a container monitor.
pub const MONITOR: &str = "__cri-shim-monitor";
/// Role argument of a sandbox infra process.
pub const INFRA: &str = "__cri-shim-infra";

/// `(pid, /proc/<pid>/exe)` of the helper processes in `role` ([`MONITOR`],
/// [`INFRA`]) whose spec argument names `id`.
pub fn helper_processes(role: &str, id: &str) -> Vec<(u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_helper = args.get(1).is_some_and(|a| a == role)
                && args.get(2).is_some_and(|spec| spec.contains(id));
            is_helper.then(|| Some((pid, std::fs::read_link(e.path().join("exe")).ok()?)))?
        })
        .collect()
}

/// Fails unless `count` `role` processes name `id` and they run from the
/// `cri-shim-helper` executable built next to the other binaries (not from
/// cri-shim or the kubelet re-executed); returns their pids.
pub fn ensure_runs_from_helper(role: &str, id: &str, count: usize) -> anyhow::Result<Vec<u32>> {
    let helper = harness::binary("cri-shim-helper")?.canonicalize()?;
    let found = helper_processes(role, id);
    ensure!(found.len() == count, "{role} processes of {id}: {found:?}");
    for (pid, exe) in &found {
        ensure!(
            *exe == helper,
            "{role} {pid} of {id} runs {} instead of {}",
            exe.display(),
            helper.display()
        );
    }
    Ok(found.into_iter().map(|(pid, _)| pid).collect())
}

/// A cri-shim server run from a hard link (or copy) of the built binary in
/// a directory of its own, with no `cri-shim-helper` beside it: it falls
/// back to re-executing itself for its helpers.
#[derive(Debug)]
pub struct LoneCriShim {
    child: std::process::Child,
    /// The executable the server (and so each helper) runs.
    pub exe: PathBuf,
    /// `unix://<dir>/cri.sock`.
    pub endpoint: String,
    /// The server's stderr.
    pub log: PathBuf,
}

impl LoneCriShim {
    /// Imports busybox into `<dir>/root` and starts the server on `net`.
    pub fn start(dir: &std::path::Path, net: &harness::CniNetwork) -> anyhow::Result<Self> {
        use anyhow::Context;
        let bin_dir = dir.join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        let exe = bin_dir.join("cri-shim");
        let built = harness::binary("cri-shim")?;
        if std::fs::hard_link(&built, &exe).is_err() {
            std::fs::copy(&built, &exe).context("copying cri-shim")?;
        }
        let root = dir.join("root");
        let images = harness::TestImages::get()?;
        let status = std::process::Command::new(&exe)
            .arg("--root")
            .arg(&root)
            .arg("import")
            .arg(images.busybox())
            .stdout(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "cri-shim import failed");
        let socket = dir.join("cri.sock");
        let log = dir.join("cri-shim.log");
        let child = std::process::Command::new(&exe)
            .arg("--root")
            .arg(&root)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--cni-conf-dir")
            .arg(&net.conf_dir)
            .arg("--cni-bin-dir")
            .arg("/usr/lib/cni")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut shim = LoneCriShim {
            child,
            exe,
            endpoint: format!("unix://{}", socket.display()),
            log,
        };
        let start = std::time::Instant::now();
        while !socket.exists() {
            if let Some(status) = shim.child.try_wait()? {
                anyhow::bail!(
                    "cri-shim exited with {status}: {}",
                    harness::tail(&shim.log, 20)
                );
            }
            ensure!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "cri-shim socket did not appear"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(shim)
    }

    /// A CRI client for it.
    pub async fn client(&self) -> anyhow::Result<harness::CriClient> {
        harness::cri_client(&self.endpoint).await
    }

    /// Removes every sandbox (and so container) through the CRI.
    pub async fn remove_everything(&self) -> anyhow::Result<()> {
        harness::remove_everything_at(&self.endpoint).await
    }
}

impl Drop for LoneCriShim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
