//! A standalone cri-shim whose CNI setup the test chooses: its own conf dir
//! and plugin bin dir (our plugins next to the test binaries, or the
//! reference ones in `/usr/lib/cni`), with the busybox and busybox-httpd
//! test images imported. Killed on drop; [`CniShim::remove_everything`]
//! tears the pods down through the CRI first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::harness::{CriClient, TestImages, binary, cri_client, remove_everything_at, tail};

/// A cri-shim process with a chosen CNI conf dir and bin dir.
#[derive(Debug)]
pub struct CniShim {
    child: Child,
    /// `--root`.
    pub root: PathBuf,
    /// `unix://<dir>/cri.sock`.
    pub endpoint: String,
    /// `--cni-conf-dir`.
    pub conf_dir: PathBuf,
    /// `--cni-bin-dir`.
    pub bin_dir: PathBuf,
    /// The server's log.
    pub log: PathBuf,
}

impl CniShim {
    /// Imports the test images into `<dir>/root` and starts the server on
    /// `<dir>/cri.sock` with `conf_dir` and `bin_dir`.
    pub fn start(dir: &Path, conf_dir: &Path, bin_dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("root");
        let images = TestImages::get()?;
        let bin = binary("cri-shim")?;
        for image in [images.busybox(), images.busybox_httpd()] {
            let status = Command::new(&bin)
                .arg("--root")
                .arg(&root)
                .arg("import")
                .arg(&image)
                .stdout(Stdio::null())
                .status()?;
            ensure!(
                status.success(),
                "cri-shim import {} failed",
                image.display()
            );
        }
        let socket = dir.join("cri.sock");
        let mut shim = Self {
            child: Command::new("true").spawn()?,
            root,
            endpoint: format!("unix://{}", socket.display()),
            conf_dir: conf_dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            log: dir.join("cri-shim.log"),
        };
        shim.restart()?;
        Ok(shim)
    }

    /// (Re)starts the server and waits for its socket.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let socket = PathBuf::from(self.endpoint.trim_start_matches("unix://"));
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Command::new(binary("cri-shim")?)
            .env("NO_COLOR", "1")
            .arg("--root")
            .arg(&self.root)
            .arg("--listen")
            .arg(&self.endpoint)
            .arg("--cni-conf-dir")
            .arg(&self.conf_dir)
            .arg("--cni-bin-dir")
            .arg(&self.bin_dir)
            .args(["--log-level", "info,cni_plugins=debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting cri-shim")?;
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = self.child.try_wait()? {
                bail!("cri-shim exited with {status}: {}", tail(&self.log, 20));
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "cri-shim socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A CRI client for it.
    pub async fn client(&self) -> anyhow::Result<CriClient> {
        cri_client(&self.endpoint).await
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Removes every container and sandbox through the CRI.
    pub async fn remove_everything(&self) -> anyhow::Result<()> {
        remove_everything_at(&self.endpoint).await
    }
}

impl Drop for CniShim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
