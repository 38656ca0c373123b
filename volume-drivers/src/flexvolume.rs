//! FlexVolume: out-of-tree drivers as executables under the plugin dir
//! (`<dir>/<vendor>~<driver>/<driver>`, default
//! [`DEFAULT_PLUGIN_DIR`]), called with upstream's conventions:
//!
//! | call | arguments |
//! |---|---|
//! | `init` | — (answers the capabilities, e.g. `{"attach": false}`) |
//! | `attach` | `<json options> <node name>` (answers `device`) |
//! | `waitforattach` | `<device> <json options>` (answers `device`) |
//! | `isattached` | `<json options> <node name>` (answers `attached`) |
//! | `mountdevice` | `<device mount dir> <device> <json options>` |
//! | `mount` | `<mount dir> <json options>` |
//! | `unmount` | `<mount dir>` |
//! | `unmountdevice` | `<device mount dir>` |
//! | `detach` | `<volume name> <node name>` |
//!
//! Every call prints one JSON object `{"status": "Success" | "Failure" |
//! "Not supported", "message": ..., ...}`. `Failure` becomes
//! [`FlexVolumeError::Failure`] carrying the driver's message; a command
//! answered `Not supported` is remembered per driver and falls back to
//! upstream's default where there is one (a bind mount of the device mount
//! dir for `mount`, a plain unmount for `unmount`/`unmountdevice`).
//!
//! Drivers are looked up on every use, so a driver installed after the
//! kubelet started is found, and a replaced executable is `init`ed again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::Deserialize;

use crate::mount::{MountError, Mounter};
use crate::paths::{escape_plugin_name, validate_name};

/// Where upstream kubelets look for FlexVolume drivers.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/";
/// How long one driver call may take before it is killed.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub const OPTION_FS_TYPE: &str = "kubernetes.io/fsType";
pub const OPTION_READ_WRITE: &str = "kubernetes.io/readwrite";
pub const OPTION_KEY_SECRET: &str = "kubernetes.io/secret";
pub const OPTION_FS_GROUP: &str = "kubernetes.io/mounterArgs.FsGroup";
pub const OPTION_PV_OR_VOLUME_NAME: &str = "kubernetes.io/pvOrVolumeName";
pub const OPTION_POD_NAME: &str = "kubernetes.io/pod.name";
pub const OPTION_POD_NAMESPACE: &str = "kubernetes.io/pod.namespace";
pub const OPTION_POD_UID: &str = "kubernetes.io/pod.uid";
pub const OPTION_SERVICE_ACCOUNT_NAME: &str = "kubernetes.io/serviceAccount.name";

const STATUS_SUCCESS: &str = "Success";
const STATUS_NOT_SUPPORTED: &str = "Not supported";

/// What a driver can do, from its `init` answer; unset fields keep
/// upstream's defaults (attach, SELinux relabel and fsGroup on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DriverCapabilities {
    pub attach: bool,
    #[serde(rename = "selinuxRelabel")]
    pub selinux_relabel: bool,
    #[serde(rename = "supportsMetrics")]
    pub supports_metrics: bool,
    #[serde(rename = "fsGroup")]
    pub fs_group: bool,
    #[serde(rename = "requiresFSResize")]
    pub requires_fs_resize: bool,
}

impl Default for DriverCapabilities {
    fn default() -> Self {
        Self {
            attach: true,
            selinux_relabel: true,
            supports_metrics: false,
            fs_group: true,
            requires_fs_resize: true,
        }
    }
}

/// One driver answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DriverStatus {
    pub status: String,
    pub message: String,
    pub device: String,
    #[serde(rename = "volumeName")]
    pub volume_name: String,
    pub attached: bool,
    pub capabilities: Option<DriverCapabilities>,
}

/// A failed FlexVolume operation.
#[derive(Debug, thiserror::Error)]
pub enum FlexVolumeError {
    #[error("driver name {0:?} is not <vendor>/<driver>")]
    BadDriverName(String),
    #[error("no FlexVolume driver {driver:?}: {path} is not an executable")]
    DriverNotFound { driver: String, path: PathBuf },
    #[error("FlexVolume driver {driver:?}: running {path} {command}")]
    Exec {
        driver: String,
        path: PathBuf,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("FlexVolume driver {driver:?}: {command} timed out after {timeout:?}")]
    Timeout {
        driver: String,
        command: String,
        timeout: Duration,
    },
    #[error("FlexVolume driver {driver:?}: {command}: cannot parse the output {output:?}")]
    BadOutput {
        driver: String,
        command: String,
        output: String,
        #[source]
        source: serde_json::Error,
    },
    /// The driver answered something other than Success. The message is
    /// upstream's wording.
    #[error("{command} command failed, status: {status}, reason: {message}")]
    Failure {
        driver: String,
        command: String,
        status: String,
        message: String,
    },
    #[error("FlexVolume driver {driver:?}: {command}: Not supported")]
    NotSupported { driver: String, command: String },
    #[error(
        "FlexVolume driver {driver:?}: mountdevice is not supported and mounting device {device} without it is not implemented"
    )]
    NoDefaultMountDevice { driver: String, device: String },
    #[error("FlexVolume driver {driver:?}: {what} {path}")]
    Io {
        driver: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("FlexVolume driver {driver:?}")]
    Mount {
        driver: String,
        #[source]
        source: MountError,
    },
}

impl FlexVolumeError {
    fn is_not_supported(&self) -> bool {
        matches!(self, Self::NotSupported { .. })
    }
}

/// One installed driver, initialised.
#[derive(Debug)]
pub struct FlexDriver {
    name: String,
    exec_path: PathBuf,
    capabilities: DriverCapabilities,
    timeout: Duration,
    unsupported: Mutex<HashSet<String>>,
}

impl FlexDriver {
    /// Runs `init` on the executable and records the capabilities.
    pub fn init(
        name: &str,
        exec_path: PathBuf,
        timeout: Duration,
    ) -> Result<Self, FlexVolumeError> {
        let mut driver = Self {
            name: name.to_owned(),
            exec_path,
            capabilities: DriverCapabilities::default(),
            timeout,
            unsupported: Mutex::new(HashSet::new()),
        };
        let status = driver.call("init", &[])?;
        driver.capabilities = status.capabilities.unwrap_or_default();
        tracing::info!(driver = name, capabilities = ?driver.capabilities, "FlexVolume driver initialised");
        Ok(driver)
    }

    /// `<vendor>/<driver>`
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn exec_path(&self) -> &Path {
        &self.exec_path
    }

    pub fn capabilities(&self) -> DriverCapabilities {
        self.capabilities
    }

    /// Runs one driver command and interprets its answer.
    pub fn call(&self, command: &str, args: &[&str]) -> Result<DriverStatus, FlexVolumeError> {
        let not_supported = || FlexVolumeError::NotSupported {
            driver: self.name.clone(),
            command: command.to_owned(),
        };
        if self.unsupported.lock().unwrap().contains(command) {
            return Err(not_supported());
        }
        let exec_err = |source| FlexVolumeError::Exec {
            driver: self.name.clone(),
            path: self.exec_path.clone(),
            command: command.to_owned(),
            source,
        };
        let spawn = || {
            let mut driver = Command::new(&self.exec_path);
            driver
                .arg(command)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // The driver (and any daemon it leaves, e.g. for a FUSE mount)
            // runs at the default CPU priority, not the kubelet's raised one.
            cni_plugins::exec::at_default_priority(|| driver.spawn())
        };
        // A driver installed a moment ago can still be open for writing in
        // a process that forked meanwhile (ETXTBSY until it execs): retry
        // briefly rather than fail the mount.
        let mut child = spawn();
        for _ in 0..20 {
            match &child {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(Duration::from_millis(10));
                    child = spawn();
                }
                _ => break,
            }
        }
        let child = child.map_err(exec_err)?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(self.timeout) {
            Ok(out) => out.map_err(exec_err)?,
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = rx.recv();
                return Err(FlexVolumeError::Timeout {
                    driver: self.name.clone(),
                    command: command.to_owned(),
                    timeout: self.timeout,
                });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parsed: Result<DriverStatus, _> = serde_json::from_str(stdout.trim());
        let status = match parsed {
            Ok(s) => s,
            Err(source) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(FlexVolumeError::BadOutput {
                    driver: self.name.clone(),
                    command: command.to_owned(),
                    output: format!("{stdout}{stderr}"),
                    source,
                });
            }
        };
        tracing::debug!(driver = %self.name, command, status = %status.status, "FlexVolume driver call");
        if status.status == STATUS_NOT_SUPPORTED {
            self.unsupported.lock().unwrap().insert(command.to_owned());
            return Err(not_supported());
        }
        if status.status != STATUS_SUCCESS {
            return Err(FlexVolumeError::Failure {
                driver: self.name.clone(),
                command: command.to_owned(),
                status: status.status,
                message: status.message,
            });
        }
        if !output.status.success() {
            tracing::warn!(driver = %self.name, command, exit = ?output.status, "driver bug: non-zero exit with a Success answer");
        }
        Ok(status)
    }

    /// `isattached`: `None` when the driver does not support it.
    pub fn is_attached(
        &self,
        options: &str,
        node_name: &str,
    ) -> Result<Option<bool>, FlexVolumeError> {
        match self.call("isattached", &[options, node_name]) {
            Ok(s) => Ok(Some(s.attached)),
            Err(e) if e.is_not_supported() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn io_err(
        &self,
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> FlexVolumeError {
        let driver = self.name.clone();
        let path = path.to_owned();
        move |source| FlexVolumeError::Io {
            driver,
            what,
            path,
            source,
        }
    }

    fn mount_err(&self) -> impl FnOnce(MountError) -> FlexVolumeError {
        let driver = self.name.clone();
        move |source| FlexVolumeError::Mount { driver, source }
    }

    /// The attach half for an attachable driver: `attach`, `waitforattach`
    /// and `mountdevice` into `device_mount_path`, unless that is mounted
    /// already (another pod uses the same volume). Returns whether it mounted
    /// the device. When a step after `attach` fails, the volume is detached
    /// again.
    pub fn attach_and_mount_device(
        &self,
        volume_name: &str,
        base_options: &str,
        node_name: &str,
        device_mount_path: &Path,
        mounter: &dyn Mounter,
    ) -> Result<bool, FlexVolumeError> {
        if mounter
            .is_mount_point(device_mount_path)
            .map_err(self.mount_err())?
        {
            return Ok(false);
        }
        let device = match self.call("attach", &[base_options, node_name]) {
            Ok(s) => s.device,
            Err(e) if e.is_not_supported() => String::new(),
            Err(e) => return Err(e),
        };
        let result = self.wait_and_mount_device(device, base_options, device_mount_path);
        if result.is_err() {
            let _ = remove_if_present(device_mount_path);
            if let Err(e) = self.detach(volume_name, node_name) {
                tracing::error!(driver = %self.name, volume = volume_name, error = %e, "detach after a failed mountdevice failed");
            }
        }
        result
    }

    fn wait_and_mount_device(
        &self,
        device: String,
        base_options: &str,
        device_mount_path: &Path,
    ) -> Result<bool, FlexVolumeError> {
        let device = match self.call("waitforattach", &[&device, base_options]) {
            Ok(s) if !s.device.is_empty() => s.device,
            Ok(_) => device,
            Err(e) if e.is_not_supported() => device,
            Err(e) => return Err(e),
        };
        fs::create_dir_all(device_mount_path)
            .map_err(self.io_err("creating", device_mount_path))?;
        let dmp = device_mount_path.to_string_lossy();
        match self.call("mountdevice", &[&dmp, &device, base_options]) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_supported() && device.is_empty() => Ok(false),
            Err(e) if e.is_not_supported() => Err(FlexVolumeError::NoDefaultMountDevice {
                driver: self.name.clone(),
                device,
            }),
            Err(e) => Err(e),
        }
    }

    /// `mount <dir> <options>`; when the driver does not support `mount` and
    /// is attachable, bind-mounts the device mount dir instead (upstream's
    /// default).
    pub fn mount(
        &self,
        dir: &Path,
        mount_options: &str,
        device_mount_path: Option<&Path>,
        mounter: &dyn Mounter,
    ) -> Result<(), FlexVolumeError> {
        fs::create_dir_all(dir).map_err(self.io_err("creating", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o750))
            .map_err(self.io_err("setting the mode of", dir))?;
        let d = dir.to_string_lossy();
        match self.call("mount", &[&d, mount_options]) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_supported() => match device_mount_path {
                Some(src) => mounter
                    .bind_mount(src, dir, false)
                    .map_err(self.mount_err()),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// `unmount <dir>` (or a plain unmount when not supported), then removes
    /// the dir unless the driver did.
    pub fn unmount(&self, dir: &Path, mounter: &dyn Mounter) -> Result<(), FlexVolumeError> {
        if !dir.exists() {
            return Ok(());
        }
        let d = dir.to_string_lossy();
        match self.call("unmount", &[&d]) {
            Ok(_) => {}
            Err(e) if e.is_not_supported() => {
                if mounter.is_mount_point(dir).map_err(self.mount_err())? {
                    mounter.unmount(dir).map_err(self.mount_err())?;
                }
            }
            Err(e) => return Err(e),
        }
        remove_if_present(dir).map_err(self.io_err("removing", dir))
    }

    /// `unmountdevice <dir>` (or a plain unmount), then removes the dir.
    pub fn unmount_device(
        &self,
        device_mount_path: &Path,
        mounter: &dyn Mounter,
    ) -> Result<(), FlexVolumeError> {
        if !device_mount_path.exists() {
            return Ok(());
        }
        if mounter
            .is_mount_point(device_mount_path)
            .map_err(self.mount_err())?
        {
            let p = device_mount_path.to_string_lossy();
            match self.call("unmountdevice", &[&p]) {
                Ok(_) => {}
                Err(e) if e.is_not_supported() => mounter
                    .unmount(device_mount_path)
                    .map_err(self.mount_err())?,
                Err(e) => return Err(e),
            }
        }
        remove_if_present(device_mount_path).map_err(self.io_err("removing", device_mount_path))
    }

    /// `detach <volume name> <node name>`; `Not supported` is fine.
    pub fn detach(&self, volume_name: &str, node_name: &str) -> Result<(), FlexVolumeError> {
        match self.call("detach", &[volume_name, node_name]) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_supported() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn remove_if_present(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The drivers of one plugin dir, found on demand and cached by the
/// executable's modification time.
#[derive(Debug)]
pub struct FlexVolumePlugins {
    plugin_dir: PathBuf,
    timeout: Duration,
    cache: Mutex<HashMap<String, (SystemTime, Arc<FlexDriver>)>>,
}

impl FlexVolumePlugins {
    pub fn new(plugin_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugin_dir: plugin_dir.into(),
            timeout: DEFAULT_CALL_TIMEOUT,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    /// `<plugin dir>/<vendor>~<driver>/<driver>` for `vendor/driver`.
    pub fn exec_path(&self, driver: &str) -> Result<PathBuf, FlexVolumeError> {
        let (vendor, name) = driver
            .split_once('/')
            .filter(|(v, n)| validate_name(v).is_ok() && validate_name(n).is_ok())
            .ok_or_else(|| FlexVolumeError::BadDriverName(driver.to_owned()))?;
        let _ = vendor;
        Ok(self.plugin_dir.join(escape_plugin_name(driver)).join(name))
    }

    /// The driver named `vendor/driver`, `init`ed the first time it is seen
    /// (and again when its executable changed).
    pub fn driver(&self, driver: &str) -> Result<Arc<FlexDriver>, FlexVolumeError> {
        let path = self.exec_path(driver)?;
        let not_found = || FlexVolumeError::DriverNotFound {
            driver: driver.to_owned(),
            path: path.clone(),
        };
        let meta = match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => m,
            _ => {
                self.cache.lock().unwrap().remove(driver);
                return Err(not_found());
            }
        };
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if let Some((t, d)) = self.cache.lock().unwrap().get(driver)
            && *t == mtime
        {
            return Ok(d.clone());
        }
        let d = Arc::new(FlexDriver::init(driver, path, self.timeout)?);
        self.cache
            .lock()
            .unwrap()
            .insert(driver.to_owned(), (mtime, d.clone()));
        Ok(d)
    }

    /// Names (`vendor/driver`) of every driver installed now.
    pub fn probe(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.plugin_dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.contains('~') && !n.starts_with('.'))
            .map(|n| n.replacen('~', "/", 1))
            .filter(|n| {
                self.exec_path(n)
                    .ok()
                    .and_then(|p| fs::metadata(p).ok())
                    .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .collect();
        names.sort();
        names
    }
}

/// What a FlexVolume driver is told about the volume and the pod.
#[derive(Debug, Clone, Default)]
pub struct FlexOptionsInput<'a> {
    pub volume_name: &'a str,
    pub fs_type: Option<&'a str>,
    pub read_only: bool,
    pub user_options: Option<&'a BTreeMap<String, String>>,
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
    pub pod_uid: &'a str,
    pub service_account_name: &'a str,
    /// The data of `secretRef`, when the volume has one.
    pub secret: Option<&'a BTreeMap<String, Vec<u8>>>,
    pub fs_group: Option<i64>,
}

/// The options of `attach`, `waitforattach`, `mountdevice` and
/// `isattached`: fsType, readwrite, the volume name and the user's options
/// (which override the `kubernetes.io/*` keys, as upstream).
pub fn base_options(input: &FlexOptionsInput<'_>) -> BTreeMap<String, String> {
    let mut o = BTreeMap::new();
    o.insert(OPTION_FS_TYPE.into(), input.fs_type.unwrap_or("").into());
    o.insert(
        OPTION_READ_WRITE.into(),
        if input.read_only { "ro" } else { "rw" }.into(),
    );
    o.insert(OPTION_PV_OR_VOLUME_NAME.into(), input.volume_name.into());
    for (k, v) in input.user_options.into_iter().flatten() {
        o.insert(k.clone(), v.clone());
    }
    o
}

/// The options of `mount`: [`base_options`] plus the pod's name,
/// namespace, UID and service account, the secret's keys
/// (`kubernetes.io/secret/<key>`, base64) and the fsGroup.
pub fn mount_options(input: &FlexOptionsInput<'_>) -> BTreeMap<String, String> {
    let mut o = BTreeMap::new();
    o.insert(OPTION_POD_NAME.into(), input.pod_name.into());
    o.insert(OPTION_POD_NAMESPACE.into(), input.pod_namespace.into());
    o.insert(OPTION_POD_UID.into(), input.pod_uid.into());
    o.insert(
        OPTION_SERVICE_ACCOUNT_NAME.into(),
        input.service_account_name.into(),
    );
    for (k, v) in input.secret.into_iter().flatten() {
        o.insert(
            format!("{OPTION_KEY_SECRET}/{k}"),
            base64::engine::general_purpose::STANDARD.encode(v),
        );
    }
    if let Some(g) = input.fs_group {
        o.insert(OPTION_FS_GROUP.into(), g.to_string());
    }
    // Spec-derived keys and user options last, as upstream's AppendSpec.
    o.extend(base_options(input));
    o
}

/// Serialises options as the one JSON argument drivers get.
pub fn options_json(options: &BTreeMap<String, String>) -> String {
    serde_json::to_string(options).expect("a string map always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn install(dir: &Path, driver: &str, script: &str) -> PathBuf {
        let plugins = FlexVolumePlugins::new(dir);
        let path = plugins.exec_path(driver).unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Write to a temp name and rename, so a concurrently running probe
        // never executes a half-written file (ETXTBSY).
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, script).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &path).unwrap();
        path
    }

    #[test]
    fn options_carry_the_kubernetes_keys() {
        let user = BTreeMap::from([("size".to_owned(), "16m".to_owned())]);
        let secret = BTreeMap::from([("password".to_owned(), b"hunter2".to_vec())]);
        let input = FlexOptionsInput {
            volume_name: "data",
            fs_type: Some("ext4"),
            read_only: true,
            user_options: Some(&user),
            pod_name: "web",
            pod_namespace: "prod",
            pod_uid: "uid-1",
            service_account_name: "default",
            secret: Some(&secret),
            fs_group: Some(2000),
        };
        let json = options_json(&mount_options(&input));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["kubernetes.io/fsType"], "ext4");
        assert_eq!(v["kubernetes.io/readwrite"], "ro");
        assert_eq!(v["kubernetes.io/pvOrVolumeName"], "data");
        assert_eq!(v["kubernetes.io/pod.name"], "web");
        assert_eq!(v["kubernetes.io/pod.namespace"], "prod");
        assert_eq!(v["kubernetes.io/pod.uid"], "uid-1");
        assert_eq!(v["kubernetes.io/serviceAccount.name"], "default");
        assert_eq!(v["kubernetes.io/secret/password"], "aHVudGVyMg==");
        assert_eq!(v["kubernetes.io/mounterArgs.FsGroup"], "2000");
        assert_eq!(v["size"], "16m");

        let base = base_options(&input);
        assert!(
            !base.contains_key(OPTION_POD_NAME),
            "pod keys are for mount only"
        );
        assert_eq!(base[OPTION_READ_WRITE], "ro");
    }

    #[test]
    fn discovery_init_capabilities_and_late_install() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = FlexVolumePlugins::new(dir.path());
        assert!(matches!(
            plugins.driver("acme/late"),
            Err(FlexVolumeError::DriverNotFound { .. })
        ));
        assert!(matches!(
            plugins.driver("no-slash"),
            Err(FlexVolumeError::BadDriverName(_))
        ));
        install(
            dir.path(),
            "acme/late",
            "#!/bin/sh\necho '{\"status\":\"Success\",\"capabilities\":{\"attach\":false,\"selinuxRelabel\":false}}'\n",
        );
        let d = plugins.driver("acme/late").unwrap();
        assert!(!d.capabilities().attach);
        assert!(!d.capabilities().selinux_relabel);
        assert!(
            d.capabilities().fs_group,
            "unset capabilities keep upstream defaults"
        );
        assert_eq!(plugins.probe(), vec!["acme/late".to_owned()]);

        // init without capabilities: upstream assumes attach.
        install(
            dir.path(),
            "acme/plain",
            "#!/bin/sh\necho '{\"status\":\"Success\"}'\n",
        );
        assert!(plugins.driver("acme/plain").unwrap().capabilities().attach);
    }

    #[test]
    fn failure_and_not_supported_answers() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> {log}\ncase \"$1\" in\n\
             init) echo '{{\"status\":\"Success\",\"capabilities\":{{\"attach\":false}}}}';;\n\
             mount) echo '{{\"status\":\"Failure\",\"message\":\"backend unreachable\"}}'; exit 1;;\n\
             garbage) echo 'not json';;\n\
             *) echo '{{\"status\":\"Not supported\"}}'; exit 1;;\n\
             esac\n",
            log = log.display()
        );
        install(dir.path(), "acme/flaky", &script);
        let plugins = FlexVolumePlugins::new(dir.path());
        let d = plugins.driver("acme/flaky").unwrap();

        let e = d.call("mount", &["/x", "{}"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount command failed, status: Failure, reason: backend unreachable"
        );
        assert!(matches!(
            d.call("garbage", &[]),
            Err(FlexVolumeError::BadOutput { .. })
        ));

        assert!(matches!(
            d.call("detach", &["v", "n"]),
            Err(FlexVolumeError::NotSupported { .. })
        ));
        // Remembered: the second call does not run the driver.
        assert!(d.call("detach", &["v", "n"]).is_err());
        let calls = fs::read_to_string(&log).unwrap();
        assert_eq!(calls.matches("detach").count(), 1, "{calls}");
        assert_eq!(d.is_attached("{}", "node").unwrap(), None);
        assert!(d.detach("v", "n").is_ok(), "Not supported detach is fine");
    }

    #[test]
    fn a_hung_driver_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        install(
            dir.path(),
            "acme/slow",
            "#!/bin/sh\n[ \"$1\" = init ] && { echo '{\"status\":\"Success\"}'; exit 0; }\nexec sleep 30\n",
        );
        let plugins = FlexVolumePlugins::new(dir.path()).with_timeout(Duration::from_millis(300));
        let d = plugins.driver("acme/slow").unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            d.call("mount", &[]),
            Err(FlexVolumeError::Timeout { .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
