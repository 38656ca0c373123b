//! Runtime configuration shared by the `cri-shim` binary and the embedding kubelet.

use std::path::PathBuf;
use std::time::Duration;

/// Default persistent root: images, container bundles, sandbox records.
pub const DEFAULT_ROOT: &str = "/var/lib/cri-shim";
/// Default listen address of the standalone binary.
pub const DEFAULT_LISTEN: &str = "unix:///run/cri-shim/cri-shim.sock";
/// Default CNI network configuration directory (as containerd and CRI-O).
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Default CNI plugin search path: the upstream location, then Debian's.
pub const DEFAULT_CNI_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];
/// How often CNI GC runs after the one at start.
pub const DEFAULT_CNI_GC_INTERVAL: Duration = Duration::from_secs(600);

/// Everything the server needs to know; host paths are parameters so tests
/// can run several independent runtimes on one machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// `unix:///path/to.sock`.
    pub listen: String,
    /// Persistent state root (`--root`).
    pub root: PathBuf,
    /// OCI runtime binary (`--runtime`), `runc` by default.
    pub oci_runtime: PathBuf,
    /// CNI network configuration directory (`--cni-conf-dir`).
    pub cni_conf_dir: PathBuf,
    /// CNI plugin binary directories, searched in order (`--cni-bin-dir`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Registries (`host[:port]`) pulled from in plain HTTP
    /// (`--insecure-registry`); loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// How long one CNI plugin may run (`--cni-plugin-timeout`).
    pub cni_plugin_timeout: Duration,
    /// Period of CNI GC after the one at start; zero runs it only at start
    /// (`--cni-gc-interval`).
    pub cni_gc_interval: Duration,
    /// The `cri-shim-helper` executable that runs monitors and infra
    /// processes (`--helper-path`); `None`: next to the current executable,
    /// else this executable re-executed.
    pub helper_path: Option<PathBuf>,
}

impl Config {
    /// How pulls reach registries.
    pub fn registry_config(&self) -> crate::image::RegistryConfig {
        crate::image::RegistryConfig {
            insecure_registries: self.insecure_registries.clone(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            root: PathBuf::from(DEFAULT_ROOT),
            oci_runtime: PathBuf::from("runc"),
            cni_conf_dir: PathBuf::from(DEFAULT_CNI_CONF_DIR),
            cni_bin_dirs: DEFAULT_CNI_BIN_DIRS.iter().map(PathBuf::from).collect(),
            insecure_registries: Vec::new(),
            cni_plugin_timeout: cni_plugins::DEFAULT_PLUGIN_TIMEOUT,
            cni_gc_interval: DEFAULT_CNI_GC_INTERVAL,
            helper_path: None,
        }
    }
}
