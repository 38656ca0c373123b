//! The kubelet-facing volume manager: sets up every volume of a pod, builds
//! the CRI mounts of a container from its `volumeMounts`, and tears down
//! whatever a pod UID has on disk (also for pods that are gone).
//!
//! Invariants:
//! - a failed [`VolumeManager::setup_pod_volumes`] leaves nothing mounted
//!   that it mounted itself (it rolls back in reverse order);
//! - teardown works from the directory layout alone, so it needs no pod spec
//!   and also cleans up after a kubelet restart;
//! - no directory is removed recursively while anything below it is still a
//!   mount point (a leftover bind of a host path must not be emptied).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use crate::atomic_writer::{AtomicWriter, AtomicWriterError, Payload, WriteOutcome};
use crate::downward_api::{self, DownwardApiError};
use crate::emptydir::{
    self, EMPTY_DIR_MODE, EmptyDirError, StorageMedium, memory_volume_size, size_limit_bytes,
};
use crate::flexvolume::{self, FlexOptionsInput, FlexVolumeError, FlexVolumePlugins};
use crate::hostpath::{HostPathError, HostPathType, check_host_path};
use crate::mount::{MountError, Mounter};
use crate::objects::{self, ObjectError, ObjectStore};
use crate::paths::{PathError, PodDirs, escape_plugin_name, unescape_plugin_name, validate_name};
use crate::resources::NodeAllocatable;
use crate::subpath::{self, MountPropagation, SubPathError};

pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io/empty-dir";
pub const HOST_PATH_PLUGIN: &str = "kubernetes.io/host-path";
pub const SECRET_PLUGIN: &str = "kubernetes.io/secret";
pub const CONFIG_MAP_PLUGIN: &str = "kubernetes.io/configmap";
pub const DOWNWARD_API_PLUGIN: &str = "kubernetes.io/downward-api";
pub const PROJECTED_PLUGIN: &str = "kubernetes.io/projected";

/// Which driver serves a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    EmptyDir {
        medium: StorageMedium,
    },
    HostPath,
    Secret,
    ConfigMap,
    DownwardApi,
    Projected,
    /// A FlexVolume driver, `vendor/driver`.
    Flex {
        driver: String,
    },
}

impl VolumeKind {
    /// The upstream plugin name (`kubernetes.io/empty-dir`, ...,
    /// `flexvolume-vendor/driver`).
    pub fn plugin_name(&self) -> String {
        match self {
            Self::EmptyDir { .. } => EMPTY_DIR_PLUGIN.into(),
            Self::HostPath => HOST_PATH_PLUGIN.into(),
            Self::Secret => SECRET_PLUGIN.into(),
            Self::ConfigMap => CONFIG_MAP_PLUGIN.into(),
            Self::DownwardApi => DOWNWARD_API_PLUGIN.into(),
            Self::Projected => PROJECTED_PLUGIN.into(),
            Self::Flex { driver } => format!("flexvolume-{driver}"),
        }
    }
}

/// A volume that is set up, as the kubelet needs it for CRI mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedVolume {
    pub name: String,
    pub kind: VolumeKind,
    /// What to give the runtime as `host_path` (before any subPath).
    pub host_path: PathBuf,
    /// The volume forces read-only mounts (API-data volumes always; flex and
    /// others when their source says `readOnly`).
    pub read_only: bool,
    /// Whether the runtime may relabel the volume for SELinux (CRI
    /// `selinux_relabel`); false for hostPath, as upstream.
    pub selinux_relabel: bool,
    /// emptyDir `sizeLimit` in bytes, for eviction against
    /// [`VolumeManager::volume_disk_usage`].
    pub size_limit: Option<u64>,
    /// For the atomic-writer volumes: whether this setup call wrote new
    /// content (an update the containers now see).
    pub content_changed: bool,
}

/// Every volume of one pod, by volume name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    pub pod_uid: String,
    pub volumes: BTreeMap<String, MountedVolume>,
}

/// One CRI mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMount {
    pub volume_name: String,
    pub container_path: String,
    pub host_path: PathBuf,
    pub read_only: bool,
    pub propagation: MountPropagation,
    pub selinux_relabel: bool,
}

/// Why one volume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupFailure {
    #[error("invalid volume name")]
    BadName(#[source] PathError),
    #[error("unsupported volume type {0}")]
    Unsupported(String),
    #[error(transparent)]
    EmptyDir(#[from] EmptyDirError),
    #[error(transparent)]
    HostPath(#[from] HostPathError),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    DownwardApi(#[from] DownwardApiError),
    #[error(transparent)]
    Write(#[from] AtomicWriterError),
    #[error(transparent)]
    Flex(#[from] FlexVolumeError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A volume of a pod that could not be set up (everything this call had
/// mounted is rolled back).
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?}")]
pub struct VolumeError {
    pub pod_uid: String,
    pub volume: String,
    #[source]
    pub reason: Box<SetupFailure>,
}

/// The whole chain of an error, `outer: inner: ...`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl VolumeError {
    /// The pod event text, worded as upstream's `FailedMount` events:
    /// `MountVolume.SetUp failed for volume "x" : <reason>`.
    pub fn event_message(&self) -> String {
        format!("{self} : {}", chain(&self.reason))
    }
}

/// Why a container's `volumeMount` cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MountFailure {
    #[error("cannot find volume {0:?} in the pod's volumes")]
    UnknownVolume(String),
    #[error("{0}")]
    Propagation(String),
    #[error("Bidirectional mount propagation is available only to privileged containers")]
    BidirectionalNotPrivileged,
    #[error("subPath and subPathExpr are mutually exclusive")]
    SubPathAndExpr,
    #[error(transparent)]
    SubPath(#[from] SubPathError),
}

/// A container mount that cannot be made (subPath binds made by this call
/// are rolled back).
#[derive(Debug, thiserror::Error)]
#[error("volumeMount {volume_mount:?} of container {container:?}")]
pub struct ContainerMountError {
    pub container: String,
    pub volume_mount: String,
    #[source]
    pub reason: Box<MountFailure>,
}

impl ContainerMountError {
    /// The event text, `<this>: <reason chain>`.
    pub fn event_message(&self) -> String {
        chain(self)
    }
}

/// One failure during teardown (teardown goes on after it).
#[derive(Debug, thiserror::Error)]
pub enum TeardownFailure {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Flex(#[from] FlexVolumeError),
    #[error("{path} still has mounts below it; not removed")]
    StillMounted { path: PathBuf },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything that went wrong tearing down one pod.
#[derive(Debug, thiserror::Error)]
#[error("tearing down the volumes of pod {pod_uid}: {}", .failures.iter().map(|f| chain(f)).collect::<Vec<_>>().join("; "))]
pub struct TeardownError {
    pub pod_uid: String,
    pub failures: Vec<TeardownFailure>,
}

/// Settings of a [`VolumeManager`].
#[derive(Debug, Clone)]
pub struct VolumeManagerConfig {
    /// `--root-dir` (`/var/lib/kubelet`).
    pub root_dir: PathBuf,
    /// `--volume-plugin-dir` ([`flexvolume::DEFAULT_PLUGIN_DIR`]).
    pub flex_plugin_dir: PathBuf,
    /// This node's name (given to FlexVolume `attach`/`detach`).
    pub node_name: String,
    pub node_allocatable: NodeAllocatable,
}

/// Sets up and tears down pod volumes. Blocking (syscalls and driver
/// executables): call it from `spawn_blocking` in async code. Safe to share
/// between threads; calls for different pods may run concurrently.
#[derive(Debug)]
pub struct VolumeManager {
    dirs: PodDirs,
    node_name: String,
    node: NodeAllocatable,
    mounter: Arc<dyn Mounter>,
    flex: FlexVolumePlugins,
}

/// What a setup call created and must undo on a later failure.
enum Undo {
    /// A volume dir this call created (and maybe mounted).
    Dir(PathBuf),
    /// A FlexVolume mount this call made.
    Flex {
        driver: String,
        dir: PathBuf,
        device: Option<(PathBuf, String)>,
    },
}

impl VolumeManager {
    pub fn new(config: VolumeManagerConfig, mounter: Arc<dyn Mounter>) -> Self {
        Self {
            dirs: PodDirs::new(config.root_dir),
            node_name: config.node_name,
            node: config.node_allocatable,
            mounter,
            flex: FlexVolumePlugins::new(config.flex_plugin_dir),
        }
    }

    /// The directory layout this manager uses.
    pub fn dirs(&self) -> &PodDirs {
        &self.dirs
    }

    /// The FlexVolume drivers (e.g. to list them, or to replace the timeout).
    pub fn flex_plugins(&self) -> &FlexVolumePlugins {
        &self.flex
    }

    pub fn set_flex_plugins(&mut self, plugins: FlexVolumePlugins) {
        self.flex = plugins;
    }

    /// Whether [`Self::setup_pod_volumes`] touches the file system for
    /// `pod`: only when it declares a volume. A caller that hands the set-up
    /// to a blocking thread can skip that hand-off otherwise.
    pub fn setup_needs_io(pod: &Pod) -> bool {
        pod.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| !v.is_empty())
    }

    /// Sets up every volume of `pod` (idempotent: volumes already set up are
    /// kept, API-data volumes are rewritten only when their content changed).
    /// On error, what this call mounted or created is undone and the error
    /// names the volume.
    pub fn setup_pod_volumes(
        &self,
        pod: &Pod,
        objects: &dyn ObjectStore,
    ) -> Result<PodVolumes, VolumeError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut undo = Vec::new();
        let mut out = PodVolumes {
            pod_uid: uid.clone(),
            volumes: BTreeMap::new(),
        };
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default();
        for volume in volumes {
            let result = validate_name(&uid)
                .and_then(|()| validate_name(&volume.name))
                .map_err(SetupFailure::BadName)
                .and_then(|()| self.setup_volume(pod, &uid, volume, objects, &mut undo));
            match result {
                Ok(v) => {
                    out.volumes.insert(volume.name.clone(), v);
                }
                Err(reason) => {
                    let err = VolumeError {
                        pod_uid: uid.clone(),
                        volume: volume.name.clone(),
                        reason: Box::new(reason),
                    };
                    tracing::warn!(pod.uid = %uid, volume = %volume.name, error = %err.event_message(), "volume setup failed; rolling back");
                    self.roll_back(undo);
                    return Err(err);
                }
            }
        }
        Ok(out)
    }

    fn roll_back(&self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            let result = match u {
                Undo::Dir(dir) => self.remove_volume_dir(&dir).map_err(|e| chain(&e)),
                Undo::Flex {
                    driver,
                    dir,
                    device,
                } => self
                    .flex_teardown(&driver, &dir, device)
                    .map_err(|e| chain(&e)),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "rolling back a volume setup failed");
            }
        }
    }

    fn setup_volume(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
        objects: &dyn ObjectStore,
        undo: &mut Vec<Undo>,
    ) -> Result<MountedVolume, SetupFailure> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = volume.name.as_str();
        let mounted = |kind, host_path, read_only, selinux_relabel| MountedVolume {
            name: name.to_owned(),
            kind,
            host_path,
            read_only,
            selinux_relabel,
            size_limit: None,
            content_changed: false,
        };
        if let Some(e) = &volume.empty_dir {
            let medium = StorageMedium::parse(e.medium.as_deref())?;
            let size_limit = size_limit_bytes(e.size_limit.as_ref())?;
            let tmpfs = match medium {
                StorageMedium::Memory => {
                    Some(memory_volume_size(e.size_limit.as_ref(), pod, &self.node)?)
                }
                StorageMedium::Default => None,
            };
            let mode = e.mode.map_or(EMPTY_DIR_MODE, |m| m as u32 & 0o7777);
            let dir = self.dirs.volume_dir(uid, EMPTY_DIR_PLUGIN, name);
            self.prepare_dir(&dir, tmpfs.map(Some), Some(mode), undo)?;
            let mut v = mounted(VolumeKind::EmptyDir { medium }, dir, false, true);
            v.size_limit = size_limit;
            return Ok(v);
        }
        if let Some(h) = &volume.host_path {
            let ty = HostPathType::parse(h.type_.as_deref())?;
            let path = check_host_path(&h.path, ty)?;
            return Ok(mounted(VolumeKind::HostPath, path, false, false));
        }
        if let Some(s) = &volume.secret {
            let payload = objects::secret_payload(namespace, s, objects)?;
            return self.write_api_volume(
                pod,
                uid,
                name,
                VolumeKind::Secret,
                SECRET_PLUGIN,
                true,
                &payload,
                undo,
            );
        }
        if let Some(c) = &volume.config_map {
            let payload = objects::config_map_payload(namespace, c, objects)?;
            return self.write_api_volume(
                pod,
                uid,
                name,
                VolumeKind::ConfigMap,
                CONFIG_MAP_PLUGIN,
                false,
                &payload,
                undo,
            );
        }
        if let Some(d) = &volume.downward_api {
            let payload = downward_api::payload(
                pod,
                d.items.as_deref().unwrap_or_default(),
                d.default_mode,
                &self.node,
            )?;
            return self.write_api_volume(
                pod,
                uid,
                name,
                VolumeKind::DownwardApi,
                DOWNWARD_API_PLUGIN,
                false,
                &payload,
                undo,
            );
        }
        if let Some(p) = &volume.projected {
            let payload = objects::projected_payload(pod, p, objects, &self.node)?;
            return self.write_api_volume(
                pod,
                uid,
                name,
                VolumeKind::Projected,
                PROJECTED_PLUGIN,
                true,
                &payload,
                undo,
            );
        }
        if let Some(f) = &volume.flex_volume {
            return self.setup_flex(pod, uid, volume, f, objects, undo);
        }
        Err(SetupFailure::Unsupported(volume_type_name(volume)))
    }

    /// Creates `dir` (mode applied regardless of umask) and, when asked,
    /// mounts a tmpfs there. An existing dir is reused as it is (a tmpfs
    /// already mounted stays). Records what it created in `undo`.
    fn prepare_dir(
        &self,
        dir: &Path,
        tmpfs: Option<Option<u64>>,
        mode: Option<u32>,
        undo: &mut Vec<Undo>,
    ) -> Result<(), SetupFailure> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| SetupFailure::Io { what, path, source }
        };
        let existed = dir.exists();
        if !existed {
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
            undo.push(Undo::Dir(dir.to_owned()));
        }
        if let Some(size) = tmpfs
            && !self.mounter.is_mount_point(dir)?
        {
            self.mounter.mount_tmpfs(dir, size)?;
            if existed {
                undo.push(Undo::Dir(dir.to_owned()));
            }
        }
        if !existed && let Some(mode) = mode {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", dir))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn write_api_volume(
        &self,
        pod: &Pod,
        uid: &str,
        name: &str,
        kind: VolumeKind,
        plugin: &str,
        on_tmpfs: bool,
        payload: &Payload,
        undo: &mut Vec<Undo>,
    ) -> Result<MountedVolume, SetupFailure> {
        let dir = self.dirs.volume_dir(uid, plugin, name);
        let tmpfs = if on_tmpfs {
            Some(Some(memory_volume_size(None, pod, &self.node)?))
        } else {
            None
        };
        self.prepare_dir(&dir, tmpfs, (!on_tmpfs).then_some(EMPTY_DIR_MODE), undo)?;
        let outcome = AtomicWriter::new(&dir).write(payload)?;
        if outcome == WriteOutcome::Written {
            tracing::info!(pod.uid = %uid, volume = name, plugin, files = payload.len(), "volume content written");
        }
        Ok(MountedVolume {
            name: name.to_owned(),
            kind,
            host_path: dir,
            read_only: true,
            selinux_relabel: true,
            size_limit: None,
            content_changed: outcome == WriteOutcome::Written,
        })
    }

    fn setup_flex(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
        source: &k8s_openapi::api::core::v1::FlexVolumeSource,
        objects: &dyn ObjectStore,
        undo: &mut Vec<Undo>,
    ) -> Result<MountedVolume, SetupFailure> {
        let driver = self.flex.driver(&source.driver)?;
        let caps = driver.capabilities();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let secret = match &source.secret_ref {
            Some(r) if !r.name.is_empty() => {
                let s = objects
                    .secret(namespace, &r.name)
                    .map_err(|source| ObjectError::SecretLookup {
                        namespace: namespace.into(),
                        name: r.name.clone(),
                        source,
                    })?
                    .ok_or_else(|| ObjectError::SecretNotFound(r.name.clone()))?;
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                Some(data)
            }
            _ => None,
        };
        let read_only = source.read_only.unwrap_or(false);
        let input = FlexOptionsInput {
            volume_name: &volume.name,
            fs_type: source.fs_type.as_deref(),
            read_only,
            user_options: source.options.as_ref(),
            pod_name: pod.metadata.name.as_deref().unwrap_or(""),
            pod_namespace: namespace,
            pod_uid: uid,
            service_account_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or(""),
            secret: secret.as_ref(),
            fs_group: pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.fs_group)
                .filter(|_| caps.fs_group),
        };
        let dir = self.dirs.volume_dir(uid, driver.name(), &volume.name);
        let result = MountedVolume {
            name: volume.name.clone(),
            kind: VolumeKind::Flex {
                driver: driver.name().to_owned(),
            },
            host_path: dir.clone(),
            read_only,
            selinux_relabel: caps.selinux_relabel,
            size_limit: None,
            content_changed: false,
        };
        // Mount only once.
        if self.mounter.is_mount_point(&dir)? {
            return Ok(result);
        }
        let mut device = None;
        if caps.attach {
            let dmp = self
                .dirs
                .flex_device_mount_path(driver.name(), &volume.name);
            let base = flexvolume::options_json(&flexvolume::base_options(&input));
            let mounted_now = driver.attach_and_mount_device(
                &volume.name,
                &base,
                &self.node_name,
                &dmp,
                self.mounter.as_ref(),
            )?;
            device = Some((dmp, mounted_now));
        }
        let mount_json = flexvolume::options_json(&flexvolume::mount_options(&input));
        let dmp = device.as_ref().map(|(p, _)| p.as_path());
        if let Err(e) = driver.mount(&dir, &mount_json, dmp, self.mounter.as_ref()) {
            let _ = fs::remove_dir(&dir);
            if let Some((dmp, true)) = device {
                let rollback = driver
                    .unmount_device(&dmp, self.mounter.as_ref())
                    .and_then(|()| driver.detach(&volume.name, &self.node_name));
                if let Err(r) = rollback {
                    tracing::error!(error = %chain(&r), "rolling back the FlexVolume device failed");
                }
            }
            return Err(e.into());
        }
        undo.push(Undo::Flex {
            driver: driver.name().to_owned(),
            dir,
            device: device
                .filter(|(_, now)| *now)
                .map(|(p, _)| (p, volume.name.clone())),
        });
        Ok(result)
    }

    /// Whether [`Self::container_mounts`] touches the file system for
    /// `container`: only for a `subPath` or `subPathExpr` (a bind mount);
    /// every other mount is computed from the set-up volumes.
    pub fn container_mounts_need_io(container: &Container) -> bool {
        container.volume_mounts.iter().flatten().any(|vm| {
            set_sub_path(&vm.sub_path).is_some() || set_sub_path(&vm.sub_path_expr).is_some()
        })
    }

    /// Builds the CRI mounts of `container` from its `volumeMounts`: resolves
    /// `subPath`/`subPathExpr` (expanded from `env`, the container's resolved
    /// environment) into safe bind mounts under the pod's `volume-subpaths`
    /// dir, applies `readOnly` and maps `mountPropagation`.
    pub fn container_mounts(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &PodVolumes,
        env: &HashMap<String, String>,
        privileged: bool,
    ) -> Result<Vec<ContainerMount>, ContainerMountError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let mut made: Vec<PathBuf> = Vec::new();
        let mut out = Vec::new();
        for (index, vm) in container.volume_mounts.iter().flatten().enumerate() {
            let fail = |reason| ContainerMountError {
                container: container.name.clone(),
                volume_mount: vm.name.clone(),
                reason: Box::new(reason),
            };
            let result = (|| {
                let vol = volumes
                    .volumes
                    .get(&vm.name)
                    .ok_or_else(|| MountFailure::UnknownVolume(vm.name.clone()))?;
                let propagation = MountPropagation::parse(vm.mount_propagation.as_deref())
                    .map_err(MountFailure::Propagation)?;
                if propagation == MountPropagation::Bidirectional && !privileged {
                    return Err(MountFailure::BidirectionalNotPrivileged);
                }
                let sub_path = match (set_sub_path(&vm.sub_path), set_sub_path(&vm.sub_path_expr)) {
                    (Some(_), Some(_)) => return Err(MountFailure::SubPathAndExpr),
                    (Some(p), None) => Some(p.to_owned()),
                    (None, Some(expr)) => Some(subpath::expand(expr, env)),
                    (None, None) => None,
                };
                let host_path = match sub_path {
                    Some(sp) => {
                        validate_name(&container.name)
                            .map_err(|e| SubPathError::Invalid(container.name.clone(), e))?;
                        let target =
                            self.dirs
                                .subpath_target(uid, &vm.name, &container.name, index);
                        let was_mounted = self.mounter.is_mount_point(&target).unwrap_or(false);
                        let p = subpath::bind_sub_path(
                            self.mounter.as_ref(),
                            &vol.host_path,
                            &sp,
                            &target,
                        )?;
                        if !was_mounted {
                            made.push(target);
                        }
                        p
                    }
                    None => vol.host_path.clone(),
                };
                Ok(ContainerMount {
                    volume_name: vm.name.clone(),
                    container_path: vm.mount_path.clone(),
                    host_path,
                    read_only: vm.read_only.unwrap_or(false) || vol.read_only,
                    propagation,
                    selinux_relabel: vol.selinux_relabel,
                })
            })();
            match result {
                Ok(m) => out.push(m),
                Err(reason) => {
                    for target in made.iter().rev() {
                        if let Err(e) = self.mounter.unmount(target) {
                            tracing::error!(error = %chain(&e), "rolling back a subPath mount failed");
                        }
                    }
                    return Err(fail(reason));
                }
            }
        }
        Ok(out)
    }

    /// Bytes used by a volume's directory (for emptyDir `sizeLimit`
    /// eviction). Works for memory-backed volumes too.
    pub fn volume_disk_usage(&self, volume: &MountedVolume) -> std::io::Result<u64> {
        emptydir::disk_usage(&volume.host_path)
    }

    /// Unmounts and removes everything of pod `uid`: subPath binds, every
    /// volume (FlexVolume ones through their driver, detaching attachable
    /// ones no other pod uses), then the pod dir itself. Keeps going after a
    /// failure and reports all of them; the pod dir stays if any mount is
    /// left.
    pub fn teardown_pod(&self, uid: &str) -> Result<(), TeardownError> {
        let mut failures = Vec::new();
        if validate_name(uid).is_err() {
            return Err(TeardownError {
                pod_uid: uid.to_owned(),
                failures: vec![TeardownFailure::Io {
                    what: "invalid pod UID",
                    path: PathBuf::from(uid),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                }],
            });
        }
        let pod_dir = self.dirs.pod_dir(uid);
        if !pod_dir.exists() {
            return Ok(());
        }
        // 1. subPath binds: they pin the volumes.
        let subpaths = self.dirs.subpaths_dir(uid);
        if let Err(e) = self.remove_volume_dir(&subpaths) {
            failures.push(e);
        }
        // 2. volumes, plugin by plugin.
        let volumes_dir = self.dirs.pod_volumes_dir(uid);
        for plugin_dir in read_dir_paths(&volumes_dir, &mut failures) {
            let plugin = plugin_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for volume_dir in read_dir_paths(&plugin_dir, &mut failures) {
                let result = if plugin.starts_with("kubernetes.io~") {
                    self.remove_volume_dir(&volume_dir)
                } else {
                    let driver = unescape_plugin_name(&plugin);
                    let vol = volume_dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let dmp = self.dirs.flex_device_mount_path(&driver, &vol);
                    let device = (dmp.exists() && !self.other_pod_uses(uid, &plugin, &vol))
                        .then_some((dmp, vol));
                    self.flex_teardown(&driver, &volume_dir, device)
                };
                if let Err(e) = result {
                    failures.push(e);
                }
            }
            if let Err(e) = remove_empty_dir(&plugin_dir) {
                failures.push(e);
            }
        }
        // 3. the pod dir, when nothing is mounted below it any more.
        match self.mounter.mount_points_under(&pod_dir) {
            Ok(left) if left.is_empty() => {
                if let Err(source) = fs::remove_dir_all(&pod_dir) {
                    failures.push(TeardownFailure::Io {
                        what: "removing",
                        path: pod_dir.clone(),
                        source,
                    });
                }
            }
            Ok(_) => failures.push(TeardownFailure::StillMounted { path: pod_dir }),
            Err(e) => failures.push(e.into()),
        }
        if failures.is_empty() {
            tracing::info!(pod.uid = uid, "pod volumes torn down");
            Ok(())
        } else {
            Err(TeardownError {
                pod_uid: uid.to_owned(),
                failures,
            })
        }
    }

    /// Tears down the pod dirs under `<root>/pods` whose UID is not in
    /// `active_uids` (pods removed while the kubelet was down). Returns the
    /// UIDs cleaned up, and the failures.
    pub fn cleanup_orphaned_pod_dirs(
        &self,
        active_uids: &HashSet<String>,
    ) -> (Vec<String>, Vec<TeardownError>) {
        let mut cleaned = Vec::new();
        let mut errors = Vec::new();
        let Ok(entries) = fs::read_dir(self.dirs.pods_dir()) else {
            return (cleaned, errors);
        };
        let mut uids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|u| !active_uids.contains(u))
            .collect();
        uids.sort();
        for uid in uids {
            match self.teardown_pod(&uid) {
                Ok(()) => cleaned.push(uid),
                Err(e) => errors.push(e),
            }
        }
        (cleaned, errors)
    }

    /// Whether a pod other than `uid` has a volume dir `<plugin>/<volume>`.
    fn other_pod_uses(&self, uid: &str, plugin: &str, volume: &str) -> bool {
        let Ok(entries) = fs::read_dir(self.dirs.pods_dir()) else {
            return false;
        };
        entries.filter_map(|e| e.ok()).any(|e| {
            e.file_name() != uid && e.path().join("volumes").join(plugin).join(volume).exists()
        })
    }

    fn flex_teardown(
        &self,
        driver: &str,
        dir: &Path,
        device: Option<(PathBuf, String)>,
    ) -> Result<(), TeardownFailure> {
        match self.flex.driver(driver) {
            Ok(d) => {
                d.unmount(dir, self.mounter.as_ref())?;
                if let Some((dmp, volume)) = device {
                    d.unmount_device(&dmp, self.mounter.as_ref())?;
                    d.detach(&volume, &self.node_name)?;
                }
                Ok(())
            }
            Err(FlexVolumeError::DriverNotFound { .. }) => {
                // The driver was uninstalled: unmount what we can see.
                tracing::warn!(driver, dir = %dir.display(), "FlexVolume driver gone; unmounting directly");
                self.remove_volume_dir(dir)?;
                if let Some((dmp, _)) = device {
                    self.remove_volume_dir(&dmp)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Unmounts everything at or below `dir`, then removes it; refuses to
    /// remove it while a mount is left.
    fn remove_volume_dir(&self, dir: &Path) -> Result<(), TeardownFailure> {
        if fs::symlink_metadata(dir).is_err() {
            return Ok(());
        }
        for m in self.mounter.mount_points_under(dir)? {
            self.mounter.unmount(&m)?;
        }
        if !self.mounter.mount_points_under(dir)?.is_empty() {
            return Err(TeardownFailure::StillMounted {
                path: dir.to_owned(),
            });
        }
        fs::remove_dir_all(dir).map_err(|source| TeardownFailure::Io {
            what: "removing",
            path: dir.to_owned(),
            source,
        })
    }
}

fn read_dir_paths(dir: &Path, failures: &mut Vec<TeardownFailure>) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut v: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            v.sort();
            v
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            failures.push(TeardownFailure::Io {
                what: "listing",
                path: dir.to_owned(),
                source,
            });
            Vec::new()
        }
    }
}

fn remove_empty_dir(dir: &Path) -> Result<(), TeardownFailure> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TeardownFailure::Io {
            what: "removing",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// The API name of a volume's source (`persistentVolumeClaim`, `nfs`, ...).
fn volume_type_name(volume: &Volume) -> String {
    match serde_json::to_value(volume) {
        Ok(serde_json::Value::Object(m)) => m
            .keys()
            .find(|k| *k != "name")
            .cloned()
            .unwrap_or_else(|| "(none)".into()),
        _ => "(unknown)".into(),
    }
}

/// A `subPath` or `subPathExpr` that asks for one: an empty one is the
/// same as none, as upstream.
fn set_sub_path(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

/// For static pods (which upstream forbids to reference API objects): the
/// first volume that needs a Secret, ConfigMap or service account token, as
/// the error the kubelet reports for the pod.
pub fn check_static_pod_volumes(pod: &Pod) -> Result<(), VolumeError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
    {
        let kind = if v.secret.is_some() {
            Some("secrets")
        } else if v.config_map.is_some() {
            Some("configmaps")
        } else if let Some(p) = &v.projected {
            p.sources.iter().flatten().find_map(|s| {
                if s.secret.is_some() {
                    Some("secrets")
                } else if s.config_map.is_some() {
                    Some("configmaps")
                } else if s.service_account_token.is_some() {
                    Some("service account tokens")
                } else {
                    None
                }
            })
        } else {
            v.flex_volume
                .as_ref()
                .and_then(|f| f.secret_ref.as_ref())
                .map(|_| "secrets")
        };
        if let Some(kind) = kind {
            return Err(VolumeError {
                pod_uid: uid,
                volume: v.name.clone(),
                reason: Box::new(SetupFailure::Unsupported(format!(
                    "static pods may not reference {kind}"
                ))),
            });
        }
    }
    Ok(())
}

/// The escaped on-disk plugin dir name of a FlexVolume driver.
pub fn flex_plugin_dir_name(driver: &str) -> String {
    escape_plugin_name(driver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::{FakeMounter, MountCall};
    use crate::objects::InMemoryObjects;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
        EmptyDirVolumeSource, FlexVolumeSource, HostPathVolumeSource, NFSVolumeSource,
        ObjectFieldSelector, PodSpec, SecretVolumeSource, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::os::unix::fs::PermissionsExt;

    const NODE: NodeAllocatable = NodeAllocatable {
        cpu_millicores: 2000,
        memory_bytes: 1 << 30,
        ephemeral_storage_bytes: 1 << 40,
    };

    struct Env {
        dir: tempfile::TempDir,
        mounter: Arc<FakeMounter>,
        vm: VolumeManager,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mounter = Arc::new(FakeMounter::new());
        let vm = VolumeManager::new(
            VolumeManagerConfig {
                root_dir: dir.path().join("kubelet"),
                flex_plugin_dir: dir.path().join("flex"),
                node_name: "node-1".into(),
                node_allocatable: NODE,
            },
            mounter.clone(),
        );
        Env { dir, mounter, vm }
    }

    fn vol(name: &str) -> Volume {
        Volume {
            name: name.into(),
            ..Default::default()
        }
    }

    fn pod(uid: &str, volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn objects() -> InMemoryObjects {
        let mut o = InMemoryObjects::default();
        o.insert_secret("ns", "creds", &[("password", b"hunter2")]);
        o.insert_config_map("ns", "conf", &[("app.ini", "x=1")]);
        o
    }

    fn all_kinds(host: &Path) -> Vec<Volume> {
        vec![
            Volume {
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..vol("scratch")
            },
            Volume {
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity("64Mi".into())),
                    ..Default::default()
                }),
                ..vol("cache")
            },
            Volume {
                host_path: Some(HostPathVolumeSource {
                    path: host.to_str().unwrap().into(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..vol("host")
            },
            Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some("creds".into()),
                    ..Default::default()
                }),
                ..vol("creds")
            },
            Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: "conf".into(),
                    ..Default::default()
                }),
                ..vol("conf")
            },
            Volume {
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: "name".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..vol("podinfo")
            },
        ]
    }

    #[test]
    fn setup_every_kind_then_teardown_leaves_nothing() {
        let e = env();
        let host = e.dir.path().join("host/data");
        let p = pod("uid-1", all_kinds(&host));
        let v = e.vm.setup_pod_volumes(&p, &objects()).unwrap();
        let root = e.dir.path().join("kubelet/pods/uid-1/volumes");

        let cache = root.join("kubernetes.io~empty-dir/cache");
        let creds = root.join("kubernetes.io~secret/creds");
        assert_eq!(v.volumes["cache"].host_path, cache);
        assert_eq!(v.volumes["host"].host_path, host);
        assert!(host.is_dir());
        assert!(!v.volumes["host"].selinux_relabel);
        assert!(v.volumes["creds"].read_only && v.volumes["conf"].read_only);
        assert!(!v.volumes["scratch"].read_only);
        assert_eq!(
            fs::metadata(root.join("kubernetes.io~empty-dir/scratch"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o777
        );
        assert_eq!(
            fs::read_to_string(creds.join("password")).unwrap(),
            "hunter2"
        );
        assert_eq!(
            fs::read_to_string(root.join("kubernetes.io~configmap/conf/app.ini")).unwrap(),
            "x=1"
        );
        assert_eq!(
            fs::read_to_string(root.join("kubernetes.io~downward-api/podinfo/name")).unwrap(),
            "web"
        );
        // tmpfs for the Memory emptyDir (sizeLimit wins) and the secret
        // (node allocatable, as the pod has no limit).
        assert_eq!(
            e.mounter.calls(),
            vec![
                MountCall::Tmpfs {
                    target: cache.clone(),
                    size: Some(64 << 20)
                },
                MountCall::Tmpfs {
                    target: creds.clone(),
                    size: Some(1 << 30)
                },
            ]
        );

        // Setting up again changes nothing.
        let again = e.vm.setup_pod_volumes(&p, &objects()).unwrap();
        assert_eq!(e.mounter.calls().len(), 2);
        assert!(again.volumes.values().all(|v| !v.content_changed));

        e.vm.teardown_pod("uid-1").unwrap();
        assert!(e.mounter.mounted().is_empty());
        assert!(!e.dir.path().join("kubelet/pods/uid-1").exists());
        assert!(
            host.is_dir(),
            "hostPath content is the host's, never removed"
        );
    }

    #[test]
    fn update_rewrites_only_changed_volumes() {
        let e = env();
        let p = pod("uid-u", all_kinds(&e.dir.path().join("h")));
        let mut o = objects();
        e.vm.setup_pod_volumes(&p, &o).unwrap();
        o.insert_config_map("ns", "conf", &[("app.ini", "x=2")]);
        let v = e.vm.setup_pod_volumes(&p, &o).unwrap();
        let changed: Vec<&str> = v
            .volumes
            .values()
            .filter(|v| v.content_changed)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(changed, ["conf"]);
        assert_eq!(
            fs::read_to_string(v.volumes["conf"].host_path.join("app.ini")).unwrap(),
            "x=2"
        );
    }

    #[test]
    fn failure_rolls_back_and_names_the_volume() {
        let e = env();
        let mut vols = all_kinds(&e.dir.path().join("h"));
        vols.push(Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some("absent".into()),
                ..Default::default()
            }),
            ..vol("missing")
        });
        let err =
            e.vm.setup_pod_volumes(&pod("uid-2", vols), &objects())
                .unwrap_err();
        assert_eq!(err.volume, "missing");
        assert_eq!(
            err.event_message(),
            "MountVolume.SetUp failed for volume \"missing\" : secret \"absent\" not found"
        );
        assert!(e.mounter.mounted().is_empty(), "{:?}", e.mounter.mounted());
        let vols_dir = e.dir.path().join("kubelet/pods/uid-2/volumes");
        for plugin in ["kubernetes.io~empty-dir", "kubernetes.io~secret"] {
            let left: Vec<_> = fs::read_dir(vols_dir.join(plugin))
                .map(|d| d.collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{plugin}: {left:?}");
        }
    }

    #[test]
    fn a_failed_mount_is_rolled_back_too() {
        let e = env();
        let creds = e
            .dir
            .path()
            .join("kubelet/pods/uid-3/volumes/kubernetes.io~secret/creds");
        e.mounter.fail_mounts_at(&creds);
        let err =
            e.vm.setup_pod_volumes(
                &pod("uid-3", all_kinds(&e.dir.path().join("h"))),
                &objects(),
            )
            .unwrap_err();
        assert_eq!(err.volume, "creds");
        assert!(
            err.event_message().contains("mounting tmpfs"),
            "{}",
            err.event_message()
        );
        assert!(e.mounter.mounted().is_empty());
    }

    #[test]
    fn bad_input_is_refused_with_the_volume_named() {
        let e = env();
        let cases = vec![
            (
                Volume {
                    nfs: Some(NFSVolumeSource {
                        path: "/x".into(),
                        server: "s".into(),
                        ..Default::default()
                    }),
                    ..vol("remote")
                },
                "unsupported volume type nfs",
            ),
            (
                Volume {
                    host_path: Some(HostPathVolumeSource {
                        path: "/tmp/../etc".into(),
                        type_: None,
                    }),
                    ..vol("sneaky")
                },
                "must be an absolute path without '..'",
            ),
            (
                Volume {
                    config_map: Some(ConfigMapVolumeSource {
                        name: "conf".into(),
                        items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                            key: "app.ini".into(),
                            path: "/etc/passwd".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..vol("abs")
                },
                "invalid path: must be relative path: /etc/passwd",
            ),
            (
                Volume {
                    config_map: Some(ConfigMapVolumeSource {
                        name: "conf".into(),
                        items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                            key: "app.ini".into(),
                            path: "../../escape".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..vol("dotdot")
                },
                "invalid path: must not contain '..'",
            ),
            (
                Volume {
                    flex_volume: Some(FlexVolumeSource {
                        driver: "acme/none".into(),
                        ..Default::default()
                    }),
                    ..vol("flex")
                },
                "no FlexVolume driver \"acme/none\"",
            ),
            (
                Volume {
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..vol("../up")
                },
                "invalid volume name",
            ),
        ];
        for (v, want) in cases {
            let name = v.name.clone();
            let err =
                e.vm.setup_pod_volumes(&pod("uid-bad", vec![v]), &objects())
                    .unwrap_err();
            assert_eq!(err.volume, name);
            let msg = err.event_message();
            assert!(msg.contains(want), "{name}: {msg}");
        }
        assert!(e.mounter.calls().is_empty());
    }

    #[test]
    fn container_mounts_subpaths_propagation_and_read_only() {
        let e = env();
        let p = pod("uid-c", all_kinds(&e.dir.path().join("h")));
        let v = e.vm.setup_pod_volumes(&p, &objects()).unwrap();
        let mounts = vec![
            VolumeMount {
                name: "scratch".into(),
                mount_path: "/data".into(),
                mount_propagation: Some("HostToContainer".into()),
                ..Default::default()
            },
            VolumeMount {
                name: "scratch".into(),
                mount_path: "/logs".into(),
                sub_path_expr: Some("logs/$(POD_NAME)".into()),
                ..Default::default()
            },
            VolumeMount {
                name: "conf".into(),
                mount_path: "/etc/app".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "host".into(),
                mount_path: "/host".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ];
        let c = Container {
            name: "app".into(),
            volume_mounts: Some(mounts),
            ..Default::default()
        };
        let env = HashMap::from([("POD_NAME".to_owned(), "web".to_owned())]);
        let m = e.vm.container_mounts(&p, &c, &v, &env, false).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].propagation.cri_value(), 1);
        assert!(!m[0].read_only);
        let target = e
            .dir
            .path()
            .join("kubelet/pods/uid-c/volume-subpaths/scratch/app/1");
        assert_eq!(m[1].host_path, target);
        assert!(v.volumes["scratch"].host_path.join("logs/web").is_dir());
        assert!(m[2].read_only, "configMap volumes are read-only");
        assert!(m[3].read_only);
        assert!(e.mounter.mounted().contains(&target));

        // Bidirectional without privilege, and a subPath escape, both fail
        // and leave no new subPath mount behind.
        let before = e.mounter.mounted();
        std::os::unix::fs::symlink("/etc", v.volumes["scratch"].host_path.join("evil")).unwrap();
        for (vm, want) in [
            (
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/x".into(),
                    mount_propagation: Some("Bidirectional".into()),
                    ..Default::default()
                },
                "only to privileged containers",
            ),
            (
                VolumeMount {
                    name: "scratch".into(),
                    mount_path: "/x".into(),
                    sub_path: Some("evil".into()),
                    ..Default::default()
                },
                "not within volume path",
            ),
            (
                VolumeMount {
                    name: "nope".into(),
                    mount_path: "/x".into(),
                    ..Default::default()
                },
                "cannot find volume",
            ),
        ] {
            let c = Container {
                name: "app2".into(),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "scratch".into(),
                        mount_path: "/ok".into(),
                        sub_path: Some("ok".into()),
                        ..Default::default()
                    },
                    vm,
                ]),
                ..Default::default()
            };
            let err = e.vm.container_mounts(&p, &c, &v, &env, false).unwrap_err();
            assert!(
                err.event_message().contains(want),
                "{}",
                err.event_message()
            );
            assert_eq!(e.mounter.mounted(), before);
        }

        e.vm.teardown_pod("uid-c").unwrap();
        assert!(e.mounter.mounted().is_empty());
    }

    #[test]
    fn io_predicates_match_what_the_calls_touch() {
        let e = env();
        let root = e.dir.path().join("kubelet");
        // No volumes: nothing is made, nothing is mounted.
        let bare = pod("uid-bare", Vec::new());
        assert!(!VolumeManager::setup_needs_io(&bare));
        let v = e.vm.setup_pod_volumes(&bare, &objects()).unwrap();
        assert!(v.volumes.is_empty());
        assert!(!root.exists(), "no directory for a pod without volumes");
        assert!(e.mounter.calls().is_empty());

        let p = pod(
            "uid-io",
            vec![Volume {
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..vol("scratch")
            }],
        );
        assert!(VolumeManager::setup_needs_io(&p));
        let v = e.vm.setup_pod_volumes(&p, &objects()).unwrap();
        let listing = |dir: &Path| {
            let mut all = Vec::new();
            let mut todo = vec![dir.to_owned()];
            while let Some(d) = todo.pop() {
                for entry in std::fs::read_dir(&d).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        todo.push(path.clone());
                    }
                    all.push(path);
                }
            }
            all.sort();
            all
        };
        let mount = |sub_path: Option<&str>, expr: Option<&str>| Container {
            name: "app".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "scratch".into(),
                mount_path: "/data".into(),
                sub_path: sub_path.map(Into::into),
                sub_path_expr: expr.map(Into::into),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let env = HashMap::from([("NAME".to_owned(), "web".to_owned())]);
        // Plain mounts and empty subPaths: computed, nothing touched.
        for c in [mount(None, None), mount(Some(""), Some(""))] {
            assert!(!VolumeManager::container_mounts_need_io(&c));
            let (before, calls) = (listing(&root), e.mounter.calls());
            let m = e.vm.container_mounts(&p, &c, &v, &env, false).unwrap();
            assert_eq!(m[0].host_path, v.volumes["scratch"].host_path);
            assert_eq!(listing(&root), before);
            assert_eq!(e.mounter.calls(), calls);
        }
        // A subPath or subPathExpr is a bind mount.
        for c in [mount(Some("a"), None), mount(None, Some("$(NAME)"))] {
            assert!(VolumeManager::container_mounts_need_io(&c));
            let calls = e.mounter.calls().len();
            e.vm.container_mounts(&p, &c, &v, &env, false).unwrap();
            assert!(e.mounter.calls().len() > calls);
        }
        e.vm.teardown_pod("uid-io").unwrap();
    }

    #[test]
    fn orphaned_pod_dirs_are_cleaned_up() {
        let e = env();
        let vols = || {
            vec![Volume {
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    ..Default::default()
                }),
                ..vol("m")
            }]
        };
        e.vm.setup_pod_volumes(&pod("keep", vols()), &objects())
            .unwrap();
        e.vm.setup_pod_volumes(&pod("gone", vols()), &objects())
            .unwrap();
        let (cleaned, errors) =
            e.vm.cleanup_orphaned_pod_dirs(&HashSet::from(["keep".to_owned()]));
        assert_eq!(cleaned, ["gone"]);
        assert!(errors.is_empty());
        assert_eq!(e.mounter.mounted().len(), 1);
        assert!(e.dir.path().join("kubelet/pods/keep").exists());
        assert!(!e.dir.path().join("kubelet/pods/gone").exists());
    }

    #[test]
    fn static_pods_may_not_reference_api_objects() {
        let p = pod("s", all_kinds(Path::new("/tmp/x")));
        let err = check_static_pod_volumes(&p).unwrap_err();
        assert_eq!(err.volume, "creds");
        assert!(
            err.event_message()
                .contains("static pods may not reference secrets")
        );
        let ok = pod("s", vec![all_kinds(Path::new("/tmp/x")).remove(0)]);
        assert!(check_static_pod_volumes(&ok).is_ok());
    }
}
