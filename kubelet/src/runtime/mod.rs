//! The runtime manager: reads a pod's CRI state into an [`ObservedPod`] and
//! carries out [`Action`]s as CRI calls (upstream `kuberuntime_manager`).
//!
//! CRI objects are found by their `io.kubernetes.pod.uid` label only, so the
//! runtime is the single source of truth and a restarted kubelet adopts what
//! is there. Errors of one action do not stop the independent ones after it;
//! they are returned together with the pod UID and the object id.

pub mod container;
pub mod cri;
pub mod etc_hosts;
mod file_work;
pub mod sandbox;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_cri::v1 as cri_api;
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::actions::{
    Action, ContainerState, ObservedContainer, ObservedPod, ObservedSandbox, SandboxTarget,
};
use crate::cgroups::{CgroupManager, PodCgroups};
use crate::labels;
pub use cri::{ContainerEvents, CriError, RemoteRuntimeService, RuntimeService};
use volume_drivers::{PodVolumes, VolumeManager};

/// Identity of a pod, known from its spec or from the labels of its CRI objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PodRef {
    /// The identity of a pod object.
    pub fn from_pod(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        Self {
            uid: meta.uid.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The pod a CRI object belongs to; `None` for objects without a pod UID
    /// label, which this kubelet did not create and leaves alone.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        let uid = labels.get(labels::POD_UID).filter(|uid| !uid.is_empty())?;
        let get = |key: &str| labels.get(key).cloned().unwrap_or_default();
        Some(Self {
            uid: uid.clone(),
            namespace: get(labels::POD_NAMESPACE),
            name: get(labels::POD_NAME),
        })
    }

    /// `namespace/name`, unique among the pods of a node at any time.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Errors of runtime operations on one pod.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Listing the pod's sandboxes or containers failed.
    #[error("listing runtime objects of pod {pod_uid}")]
    ListPod {
        /// Pod UID.
        pod_uid: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Reading a container's status failed.
    #[error("reading status of container {container_id} of pod {pod_uid}")]
    ContainerStatus {
        /// Pod UID.
        pod_uid: String,
        /// Container id.
        container_id: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Reading a sandbox's status failed.
    #[error("reading status of sandbox {sandbox_id} of pod {pod_uid}")]
    PodSandboxStatus {
        /// Pod UID.
        pod_uid: String,
        /// Sandbox id.
        sandbox_id: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Creating the sandbox failed.
    #[error("creating sandbox (attempt {attempt}) of pod {pod_name} ({pod_uid})")]
    RunPodSandbox {
        /// Pod UID.
        pod_uid: String,
        /// Pod name.
        pod_name: String,
        /// Sandbox attempt.
        attempt: u32,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Stopping a sandbox failed.
    #[error("stopping sandbox {sandbox_id} of pod {pod_uid}")]
    StopPodSandbox {
        /// Pod UID.
        pod_uid: String,
        /// Sandbox id.
        sandbox_id: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Removing a sandbox failed.
    #[error("removing sandbox {sandbox_id} of pod {pod_uid}")]
    RemovePodSandbox {
        /// Pod UID.
        pod_uid: String,
        /// Sandbox id.
        sandbox_id: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Checking or pulling an image failed.
    #[error("ensuring image {image} for container {container_name} of pod {pod_uid}")]
    Image {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// Image reference.
        image: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// The image is absent and `imagePullPolicy: Never` forbids pulling it.
    #[error(
        "image {image} for container {container_name} of pod {pod_uid} is not present and imagePullPolicy is Never"
    )]
    ImageNeverPull {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// Image reference.
        image: String,
    },
    /// The pod's volumes could not be set up (upstream `FailedMount`).
    #[error("setting up the volumes of pod {pod_uid}")]
    Volumes {
        /// Pod UID.
        pod_uid: String,
        /// What failed, naming the volume.
        #[source]
        source: volume_drivers::VolumeError,
    },
    /// A container's volume mounts (subPath) could not be made.
    #[error("mounting the volumes of container {container_name} of pod {pod_uid}")]
    ContainerMounts {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// What failed, naming the volume mount.
        #[source]
        source: volume_drivers::ContainerMountError,
    },
    /// The pod's volumes could not be torn down.
    #[error("tearing down the volumes of pod {pod_uid}")]
    VolumeTeardown {
        /// Pod UID.
        pod_uid: String,
        /// Everything that failed.
        #[source]
        source: volume_drivers::TeardownError,
    },
    /// The blocking task writing a container's files failed.
    #[error("writing the files of a container of pod {pod_uid}")]
    FileTask {
        /// Pod UID.
        pod_uid: String,
        /// Why the task ended.
        #[source]
        source: file_work::TaskLost,
    },
    /// The pod's hosts file could not be written.
    #[error("writing the hosts file {path} of pod {pod_uid}")]
    EtcHosts {
        /// Pod UID.
        pod_uid: String,
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The termination message file could not be made.
    #[error("creating the termination message file {path} of pod {pod_uid}")]
    TerminationLog {
        /// Pod UID.
        pod_uid: String,
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The pod's cgroup could not be created or removed.
    #[error("managing the cgroup of pod {pod_uid}")]
    PodCgroup {
        /// Pod UID.
        pod_uid: String,
        /// What failed.
        #[source]
        source: crate::cgroups::CgroupError,
    },
    /// The blocking task making a pod's log directory and cgroup panicked.
    #[error("sandbox set-up task of pod {pod_uid} ended abnormally")]
    CgroupTask {
        /// Pod UID.
        pod_uid: String,
        /// Why the task ended.
        #[source]
        source: file_work::TaskLost,
    },
    /// A blocking volume task panicked.
    #[error("volume task of pod {pod_uid} ended abnormally")]
    VolumeTask {
        /// Pod UID.
        pod_uid: String,
        /// Join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The container's postStart hook failed; the container was killed.
    #[error("postStart hook of container {container_name} of pod {pod_uid} failed: {message}")]
    PostStartHook {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// What the hook reported.
        message: String,
    },
    /// The pod's sandbox config could not be built from its spec.
    #[error("building the sandbox config of pod {pod_uid}")]
    SandboxConfig {
        /// Pod UID.
        pod_uid: String,
        /// What is wrong.
        #[source]
        source: container::ContainerConfigError,
    },
    /// The container's config could not be built from its spec.
    #[error("building the config of container {container_name} of pod {pod_uid}")]
    ContainerConfig {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// What is wrong.
        #[source]
        source: container::ContainerConfigError,
    },
    /// Creating a container failed.
    #[error("creating container {container_name} (restart {restart_count}) of pod {pod_uid}")]
    CreateContainer {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// Restart count of the instance.
        restart_count: u32,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Starting a created container failed.
    #[error("starting container {container_name} ({container_id}) of pod {pod_uid}")]
    StartContainer {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// Container id.
        container_id: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Stopping a container failed.
    #[error("stopping container {container_name} ({container_id}) of pod {pod_uid}")]
    StopContainer {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// Container id.
        container_id: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// Removing a container failed.
    #[error("removing container {container_name} ({container_id}) of pod {pod_uid}")]
    RemoveContainer {
        /// Pod UID.
        pod_uid: String,
        /// Container name.
        container_name: String,
        /// Container id.
        container_id: String,
        /// CRI error.
        #[source]
        source: CriError,
    },
    /// A log directory could not be created.
    #[error("creating log directory {path} of pod {pod_uid}")]
    LogDirectory {
        /// Pod UID.
        pod_uid: String,
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The host resolver configuration could not be read.
    #[error("reading {path} for the DNS config of pod {pod_uid}")]
    ResolvConf {
        /// Pod UID.
        pod_uid: String,
        /// resolv.conf path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A sandbox or container was to be created for a pod without a spec
    /// (an orphan) or for a container not in the spec: a bug in the caller.
    #[error("no spec for container {container_name:?} of pod {pod_uid}")]
    MissingSpec {
        /// Pod UID.
        pod_uid: String,
        /// Container name (empty for the sandbox).
        container_name: String,
    },
}

impl RuntimeError {
    /// The message of the underlying cause with its own sources, without the
    /// pod and container context (which a container status already carries).
    pub fn source_chain(&self) -> Option<String> {
        std::error::Error::source(self).map(|source| crate::ErrorChain(source).to_string())
    }
}

/// `at` in the CRI's terms: nanoseconds since the epoch (the inverse of
/// [`nanos_to_time`]).
pub(crate) fn time_to_nanos(at: SystemTime) -> i64 {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

/// Now, in the CRI's terms.
fn since_epoch_nanos() -> i64 {
    time_to_nanos(SystemTime::now())
}

fn nanos_to_time(nanos: i64) -> Option<SystemTime> {
    (nanos > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos.unsigned_abs()))
}

fn observed_sandbox(sandbox: cri_api::PodSandbox) -> ObservedSandbox {
    ObservedSandbox {
        attempt: sandbox.metadata.as_ref().map_or(0, |m| m.attempt),
        ready: sandbox.state == cri_api::PodSandboxState::SandboxReady as i32,
        created_at: sandbox.created_at,
        id: sandbox.id,
        ips: Vec::new(),
    }
}

/// The IPs of a sandbox status, primary first.
fn sandbox_status_ips(status: &cri_api::PodSandboxStatus) -> Vec<String> {
    status
        .network
        .as_ref()
        .map(|n| {
            std::iter::once(n.ip.clone())
                .chain(n.additional_ips.iter().map(|ip| ip.ip.clone()))
                .filter(|ip| !ip.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Maps a CRI container state to the kubelet's.
pub fn container_state(state: i32) -> ContainerState {
    match cri_api::ContainerState::try_from(state) {
        Ok(cri_api::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(cri_api::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(cri_api::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

fn observed_container(sandbox_id: String, status: cri_api::ContainerStatus) -> ObservedContainer {
    let metadata = status.metadata.unwrap_or_default();
    let annotation = |key: &str| status.annotations.get(key);
    ObservedContainer {
        name: status
            .labels
            .get(labels::CONTAINER_NAME)
            .cloned()
            .unwrap_or(metadata.name),
        restart_count: annotation(labels::CONTAINER_RESTART_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(metadata.attempt),
        hash: annotation(labels::CONTAINER_HASH).cloned(),
        termination_grace_period: annotation(labels::POD_TERMINATION_GRACE_PERIOD)
            .and_then(|v| v.parse().ok()),
        state: container_state(status.state),
        created_at: status.created_at,
        started_at: nanos_to_time(status.started_at),
        finished_at: nanos_to_time(status.finished_at),
        exit_code: status.exit_code,
        reason: status.reason,
        message: status.message,
        image: status.image.map(|i| i.image).unwrap_or_default(),
        image_ref: status.image_ref,
        log_path: Some(status.log_path).filter(|p| !p.is_empty()),
        sidecar: annotation(labels::CONTAINER_SIDECAR).is_some_and(|v| v == "true"),
        pre_stop: annotation(labels::CONTAINER_PRE_STOP_HANDLER).cloned(),
        sandbox_id,
        id: status.id,
    }
}

/// Time since the kubelet first saw the pod (`kubernetes.io/config.seen`).
fn since_pod_seen(pod: &Pod) -> Option<Duration> {
    crate::startup::config_seen(pod)?.elapsed().ok()
}

/// The app or init container `name` of the pod's spec.
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// The sandbox a container is started in.
#[derive(Debug, Clone)]
struct TargetSandbox {
    id: String,
    attempt: u32,
    /// Pod IPs, primary first (for the env and hooks).
    pod_ips: Vec<String>,
    /// A new sandbox on the pod network whose status (and so IPs) is not
    /// known yet: the first container start asks for it while the runtime
    /// creates the container.
    ips_pending: bool,
}

/// A started container, and the status of its new sandbox when the start
/// asked for it.
struct Started {
    container_id: String,
    sandbox: Option<ObservedSandbox>,
    /// The container as its start showed it ([`MadeContainer::assumed`]).
    assumed: Option<ObservedContainer>,
}

/// A new sandbox's id, its status when asked for, and the containers whose
/// host files were written while it was made.
type PodSandboxMade = (
    String,
    Option<ObservedSandbox>,
    Vec<(String, ContainerFiles)>,
);

/// The outcome of [`RuntimeManager::execute`].
#[derive(Debug, Default)]
pub struct Executed {
    /// Every error, in action order.
    pub errors: Vec<RuntimeError>,
    /// What was made.
    pub made: Made,
}

/// The objects an execution made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Made {
    /// The new sandbox's id.
    pub sandbox: Option<String>,
    /// The new sandbox as its status after RunPodSandbox showed it, when
    /// that was asked for (for its IPs); the observation after the start
    /// uses it instead of asking again (a sandbox that died since shows at
    /// the next relist).
    pub sandbox_observed: Option<ObservedSandbox>,
    /// The new sandbox as RunPodSandbox's answer showed it (ready), when
    /// its status was not asked for: a host-network pod's, whose IPs are
    /// the node's.
    pub sandbox_assumed: Option<ObservedSandbox>,
    /// Started containers.
    pub containers: Vec<MadeContainer>,
}

/// A container an execution started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeContainer {
    /// The container's id.
    pub id: String,
    /// Its sandbox's id.
    pub sandbox_id: String,
    /// The container as its start showed it: running since StartContainer
    /// answered, which the CRI gives only once the container has started.
    /// `None` when its image was pulled: the image's id, which its status
    /// names, is then not known without asking.
    pub assumed: Option<ObservedContainer>,
}

impl Made {
    /// `before` with what was made as the kubelet knows it, without asking
    /// the runtime: a pod's status can show a started container running at
    /// once, while the runtime is asked for the container's status. `None`
    /// when something made is not known well enough: a container whose
    /// image was pulled, a new sandbox on the pod network whose status (and
    /// so IPs) was not asked for.
    pub fn assumed(&self, before: &ObservedPod) -> Option<ObservedPod> {
        let sandbox = self
            .sandbox_observed
            .as_ref()
            .or(self.sandbox_assumed.as_ref());
        let sandbox_known = self.sandbox.is_none() || sandbox.is_some();
        let containers: Option<Vec<ObservedContainer>> =
            self.containers.iter().map(|c| c.assumed.clone()).collect();
        match (sandbox_known, containers) {
            (true, Some(containers)) => Some(with_made(before, sandbox.cloned(), containers)),
            _ => None,
        }
    }
}

/// `before` and the objects made since.
fn with_made(
    before: &ObservedPod,
    sandbox: Option<ObservedSandbox>,
    containers: impl IntoIterator<Item = ObservedContainer>,
) -> ObservedPod {
    let mut observed = before.clone();
    observed.sandboxes.extend(sandbox);
    observed.containers.extend(containers);
    observed.unhealthy.clear();
    observed
}

/// The host files a container start writes, all on one thread of
/// [`file_work`] (a start under load then waits for one hand-off, not one
/// per file). For the containers starting in a new sandbox they are written
/// while the runtime makes it (see `RuntimeManager::run_pod_sandbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerFiles {
    pod_uid: String,
    /// The container's log directory.
    log_dir: Option<PathBuf>,
    /// The instance's termination message file, made empty (a retried
    /// creation of the same instance starts afresh), as upstream.
    termination_log: Option<PathBuf>,
    /// The pod's hosts file.
    etc_hosts: Option<(PathBuf, etc_hosts::Planned)>,
}

impl ContainerFiles {
    async fn write(self) -> Result<(), RuntimeError> {
        let uid = self.pod_uid.clone();
        file_work::run(move || self.write_blocking())
            .await
            .map_err(|source| RuntimeError::FileTask {
                pod_uid: uid,
                source,
            })?
    }

    fn write_blocking(&self) -> Result<(), RuntimeError> {
        let pod_uid = &self.pod_uid;
        if let Some(log_dir) = &self.log_dir {
            std::fs::create_dir_all(log_dir).map_err(|source| RuntimeError::LogDirectory {
                pod_uid: pod_uid.clone(),
                path: log_dir.clone(),
                source,
            })?;
        }
        if let Some(path) = &self.termination_log {
            let error = |source| RuntimeError::TerminationLog {
                pod_uid: pod_uid.clone(),
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(error)?;
            }
            std::fs::write(path, b"").map_err(error)?;
        }
        if let Some((path, planned)) = &self.etc_hosts {
            let error = |source| RuntimeError::EtcHosts {
                pod_uid: pod_uid.clone(),
                path: path.clone(),
                source,
            };
            let text = match planned {
                etc_hosts::Planned::Managed(text) => text.clone(),
                etc_hosts::Planned::HostNetwork { aliases } => etc_hosts::host_network_content(
                    &std::fs::read_to_string(etc_hosts::CONTAINER_PATH).map_err(error)?,
                    aliases,
                ),
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(error)?;
            }
            std::fs::write(path, text).map_err(error)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                .map_err(error)?;
        }
        Ok(())
    }
}

/// A sandbox as its status reports it, with its IPs.
fn sandbox_from_status(status: cri_api::PodSandboxStatus, ips: Vec<String>) -> ObservedSandbox {
    ObservedSandbox {
        attempt: status.metadata.as_ref().map_or(0, |m| m.attempt),
        ready: status.state == cri_api::PodSandboxState::SandboxReady as i32,
        created_at: status.created_at,
        id: status.id,
        ips,
    }
}

/// The CRI spec of a container's image.
fn image_spec(container: &Container) -> cri_api::ImageSpec {
    let image = container.image.clone().unwrap_or_default();
    cri_api::ImageSpec {
        image: image.clone(),
        user_specified_image: image,
        ..Default::default()
    }
}

/// Upstream's `Localhost` seccomp profile root under the default root dir.
const DEFAULT_SECCOMP_ROOT: &str = "/var/lib/kubelet/seccomp";

/// What a container start uses that the execution prepared.
struct StartInputs<'a> {
    sandbox_config: &'a cri_api::PodSandboxConfig,
    volumes: Option<&'a Arc<PodVolumes>>,
    /// The image check made while the sandbox was made (with the image's
    /// status when it was present already); `None`: check now.
    image: Option<Result<Option<cri_api::Image>, RuntimeError>>,
    /// The container's host files, written while the sandbox was made; the
    /// start writes them again only if it would write something else.
    files: Option<ContainerFiles>,
}

/// Carries out pod actions on a CRI runtime.
#[derive(Debug)]
pub struct RuntimeManager<R> {
    service: R,
    pod_logs_dir: PathBuf,
    resolv_conf: PathBuf,
    /// Node facts container environments may refer to (pod IPs are filled per container).
    node: container::EnvContext,
    /// Sets up pod volumes; without it volume mounts are ignored with a warning.
    volumes: Option<Arc<VolumeManager>>,
    /// The cluster's DNS for `ClusterFirst` pods.
    cluster_dns: sandbox::ClusterDns,
    /// Where `Localhost` seccomp profiles are (`<root-dir>/seccomp`).
    seccomp_root: PathBuf,
    /// Pod cgroups (`cgroupsPerQOS`); `None`: the runtime's default parent.
    cgroups: Option<(Arc<dyn CgroupManager>, PodCgroups)>,
    /// Per pod UID, the IPs of its latest ready sandbox as `(sandbox id,
    /// IPs)`. A sandbox keeps its IPs for life, so one `PodSandboxStatus`
    /// per sandbox is enough; dropped by [`Self::forget_pod`].
    sandbox_ips: std::sync::Mutex<HashMap<String, (String, Vec<String>)>>,
    /// The host's resolver configuration as last read, with the identity
    /// of the file it was read from (see [`Self::host_dns`]).
    host_dns: std::sync::Mutex<Option<(FileIdentity, cri_api::DnsConfig)>>,
    /// When each pod's image pulls ran, for its startup record; dropped by
    /// [`Self::forget_pod`].
    pulls: crate::startup::PullSpans,
}

/// What tells one version of a file from another: inode, size and mtime.
type FileIdentity = (u64, u64, i64, i64);

fn file_identity(metadata: &std::fs::Metadata) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    (
        metadata.ino(),
        metadata.size(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    )
}

impl<R: RuntimeService> RuntimeManager<R> {
    /// A manager writing pod logs under `pod_logs_dir` and giving pods the
    /// resolver configuration of `resolv_conf`.
    pub fn new(service: R, pod_logs_dir: PathBuf, resolv_conf: PathBuf) -> Self {
        Self {
            service,
            pod_logs_dir,
            resolv_conf,
            node: container::EnvContext::default(),
            volumes: None,
            cluster_dns: sandbox::ClusterDns::default(),
            seccomp_root: PathBuf::from(DEFAULT_SECCOMP_ROOT),
            cgroups: None,
            sandbox_ips: Default::default(),
            host_dns: Default::default(),
            pulls: Default::default(),
        }
    }

    /// Drops what is remembered of pod `uid` once it is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.ip_cache().remove(uid);
        self.pulls.forget(uid);
    }

    /// When pod `uid`'s image pulls ran, if it pulled any.
    pub fn pull_span(&self, uid: &str) -> Option<crate::startup::PullSpan> {
        self.pulls.get(uid)
    }

    fn ip_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Vec<String>)>> {
        self.sandbox_ips.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_ips(&self, uid: &str, sandbox_id: &str, ips: &[String]) {
        self.ip_cache()
            .insert(uid.to_owned(), (sandbox_id.to_owned(), ips.to_vec()));
    }

    /// Puts every pod in its own cgroup below `layout` (created with the
    /// pod's limits before its sandbox, removed after it is gone).
    pub fn with_cgroups(mut self, manager: Arc<dyn CgroupManager>, layout: PodCgroups) -> Self {
        self.cgroups = Some((manager, layout));
        self
    }

    /// Removes the cgroup of pod `uid`, whatever its QoS class was, on one
    /// thread of `file_work`: listing and removing cgroups waits on the
    /// kernel's cgroup lock, which the runtime's cgroup work holds while
    /// pods start (an async worker doing it waited up to half a second,
    /// with every other pod's work waiting behind it).
    pub async fn remove_pod_cgroup(&self, uid: &str) -> Result<(), RuntimeError> {
        let Some((manager, layout)) = self.cgroups.clone() else {
            return Ok(());
        };
        let owner = uid.to_owned();
        file_work::run(move || {
            for (path, _) in layout
                .existing_pods(manager.as_ref())
                .into_iter()
                .filter(|(_, pod)| *pod == owner)
            {
                manager
                    .remove(&path)
                    .map_err(|source| RuntimeError::PodCgroup {
                        pod_uid: owner.clone(),
                        source,
                    })?;
            }
            Ok(())
        })
        .await
        .map_err(|source| RuntimeError::CgroupTask {
            pod_uid: uid.to_owned(),
            source,
        })?
    }

    /// Removes the cgroups of pods not in `active`; returns what failed.
    pub fn remove_orphaned_pod_cgroups(
        &self,
        active: &std::collections::HashSet<String>,
    ) -> Vec<RuntimeError> {
        let Some((manager, layout)) = &self.cgroups else {
            return Vec::new();
        };
        layout
            .existing_pods(manager.as_ref())
            .into_iter()
            .filter(|(_, uid)| !active.contains(uid))
            .filter_map(|(path, uid)| {
                manager
                    .remove(&path)
                    .map_err(|source| RuntimeError::PodCgroup {
                        pod_uid: uid,
                        source,
                    })
                    .err()
            })
            .collect()
    }

    /// Looks up `Localhost` seccomp profiles under `root` (upstream:
    /// `<root-dir>/seccomp`).
    pub fn with_seccomp_root(mut self, root: PathBuf) -> Self {
        self.seccomp_root = root;
        self
    }

    /// Resolves `ClusterFirst` pods through `cluster_dns`.
    pub fn with_cluster_dns(mut self, cluster_dns: sandbox::ClusterDns) -> Self {
        self.cluster_dns = cluster_dns;
        self
    }

    /// Mounts pod volumes through `volumes`.
    pub fn with_volumes(mut self, volumes: Arc<VolumeManager>) -> Self {
        self.volumes = Some(volumes);
        self
    }

    /// The volume manager, if volumes are handled.
    pub fn volumes(&self) -> Option<&Arc<VolumeManager>> {
        self.volumes.as_ref()
    }

    /// Sets up every volume of `pod` (idempotent). Static pods may not use
    /// API objects, so no object store is given.
    async fn setup_volumes(&self, pod: &Pod) -> Result<Option<Arc<PodVolumes>>, RuntimeError> {
        let Some(manager) = self.volumes.clone() else {
            return Ok(None);
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let owned = pod.clone();
        let result = volume_work(&uid, VolumeManager::setup_needs_io(pod), move || {
            volume_drivers::check_static_pod_volumes(&owned)?;
            manager.setup_pod_volumes(&owned, &volume_drivers::NoApiObjects)
        })
        .await?;
        match result {
            Ok(volumes) => Ok(Some(Arc::new(volumes))),
            Err(source) => {
                tracing::warn!(
                    pod.uid = uid,
                    event = "FailedMount",
                    "{}",
                    source.event_message()
                );
                Err(RuntimeError::Volumes {
                    pod_uid: uid,
                    source,
                })
            }
        }
    }

    /// Unmounts and removes everything of pod `uid` under the root dir;
    /// works without the pod's spec.
    pub async fn teardown_volumes(&self, uid: &str) -> Result<(), RuntimeError> {
        let Some(manager) = self.volumes.clone() else {
            return Ok(());
        };
        let owned = uid.to_owned();
        tokio::task::spawn_blocking(move || manager.teardown_pod(&owned))
            .await
            .map_err(|source| RuntimeError::VolumeTask {
                pod_uid: uid.to_owned(),
                source,
            })?
            .map_err(|source| RuntimeError::VolumeTeardown {
                pod_uid: uid.to_owned(),
                source,
            })
    }

    /// The host files of a container start (see [`ContainerFiles`]) and the
    /// mounts they become: the termination message file at the container's
    /// `terminationMessagePath`, and the pod's hosts file at `/etc/hosts`
    /// (see [`etc_hosts`]); both need the pod directory, so a volume manager.
    fn container_files(
        &self,
        pod: &Pod,
        container: &Container,
        restart_count: u32,
        (pod_ips, ips_pending): (&[String], bool),
        log_dir: PathBuf,
    ) -> (ContainerFiles, Vec<cri_api::Mount>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut files = ContainerFiles {
            pod_uid: uid.clone(),
            log_dir: Some(log_dir),
            termination_log: None,
            etc_hosts: None,
        };
        let mut mounts = Vec::new();
        let Some(manager) = self.volumes.as_ref() else {
            return (files, mounts);
        };
        let container_path = container
            .termination_message_path
            .clone()
            .unwrap_or_else(|| container::DEFAULT_TERMINATION_MESSAGE_PATH.to_owned());
        if !container_path.is_empty() {
            let host_path = manager.dirs().container_termination_log(
                &uid,
                &container.name,
                &restart_count.to_string(),
            );
            mounts.push(cri_api::Mount {
                container_path,
                host_path: host_path.display().to_string(),
                ..Default::default()
            });
            files.termination_log = Some(host_path);
        }
        // Rewritten at every container start, as upstream. With the IPs
        // still pending, written without them first (the start writes them
        // in before the container runs).
        if etc_hosts::is_mounted(container, pod_ips, ips_pending) {
            let path = manager.dirs().pod_dir(&uid).join(etc_hosts::FILE_NAME);
            let planned = self.hosts_plan(pod, pod_ips);
            mounts.push(cri_api::Mount {
                container_path: etc_hosts::CONTAINER_PATH.to_owned(),
                host_path: path.display().to_string(),
                selinux_relabel: true,
                ..Default::default()
            });
            files.etc_hosts = Some((path, planned));
        }
        (files, mounts)
    }

    /// The IPs containers of `pod` started in `sandbox` are given. A
    /// host-network pod's are the node's (upstream sets them so in the pod
    /// status, and starts containers with them).
    fn pod_ips<'a>(&'a self, pod: &Pod, sandbox_ips: &'a [String]) -> &'a [String] {
        match sandbox::host_network(pod) {
            true => &self.node.host_ips,
            false => sandbox_ips,
        }
    }

    /// [`Self::container_files`] of a container started in a sandbox with
    /// IPs `sandbox_ips` (or whose IPs are still pending).
    fn container_files_in(
        &self,
        pod: &Pod,
        container: &Container,
        restart_count: u32,
        (sandbox_ips, ips_pending): (&[String], bool),
        sandbox_config: &cri_api::PodSandboxConfig,
    ) -> (ContainerFiles, Vec<cri_api::Mount>) {
        self.container_files(
            pod,
            container,
            restart_count,
            (self.pod_ips(pod, sandbox_ips), ips_pending),
            Path::new(&sandbox_config.log_directory).join(&container.name),
        )
    }

    /// The pod's hosts file naming `pod_ips`.
    fn hosts_plan(&self, pod: &Pod, pod_ips: &[String]) -> etc_hosts::Planned {
        etc_hosts::plan(
            pod,
            &sandbox::pod_hostname(pod),
            etc_hosts::pod_domain(pod, self.cluster_dns.domain.as_deref()).as_deref(),
            pod_ips,
        )
    }

    /// Replaces the message of exited containers with their termination
    /// message: the file at `terminationMessagePath` (at most 4096 bytes),
    /// or with `FallbackToLogsOnError` after a failure, the last 80 lines of
    /// the log (at most 2048 bytes), as upstream.
    pub async fn read_termination_messages(&self, pod: &Pod, observed: &mut ObservedPod) {
        let Some(manager) = self.volumes.as_ref() else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for c in observed
            .containers
            .iter_mut()
            .filter(|c| c.state == crate::actions::ContainerState::Exited)
        {
            let file = manager.dirs().container_termination_log(
                &uid,
                &c.name,
                &c.restart_count.to_string(),
            );
            let mut message = read_prefix(&file, MAX_TERMINATION_MESSAGE).await;
            let fallback = find_container(pod, &c.name)
                .and_then(|spec| spec.termination_message_policy.as_deref())
                == Some("FallbackToLogsOnError");
            if message.is_empty()
                && fallback
                && c.exit_code != 0
                && let Some(log) = c.log_path.as_deref()
            {
                message = log_tail(Path::new(log), 80, MAX_FALLBACK_MESSAGE).await;
            }
            if !message.is_empty() {
                c.message = message;
            }
        }
    }

    /// The CRI mounts of one container (subPath binds are made here).
    async fn container_mounts(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &Arc<PodVolumes>,
        envs: &[cri_api::KeyValue],
    ) -> Result<Vec<cri_api::Mount>, RuntimeError> {
        let Some(manager) = self.volumes.clone() else {
            return Ok(Vec::new());
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let env: HashMap<String, String> = envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let privileged = container
            .security_context
            .as_ref()
            .and_then(|sc| sc.privileged)
            .unwrap_or(false);
        let name = container.name.clone();
        let io = VolumeManager::container_mounts_need_io(container);
        let (pod, container, volumes) = (pod.clone(), container.clone(), volumes.clone());
        let mounts = volume_work(&uid, io, move || {
            manager.container_mounts(&pod, &container, &volumes, &env, privileged)
        })
        .await?
        .map_err(|source| RuntimeError::ContainerMounts {
            pod_uid: uid,
            container_name: name,
            source,
        })?;
        Ok(mounts
            .into_iter()
            .map(|m| cri_api::Mount {
                container_path: m.container_path,
                host_path: m.host_path.display().to_string(),
                readonly: m.read_only,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation.cri_value(),
                ..Default::default()
            })
            .collect())
    }

    /// Sets the node's IPs and allocatable cpu (cores) and memory (bytes),
    /// which container environments may refer to.
    pub fn with_node(mut self, host_ips: Vec<String>, cpu: f64, memory: f64) -> Self {
        self.node = container::EnvContext {
            pod_ips: Vec::new(),
            host_ips,
            node_cpu: cpu,
            node_memory: memory,
        };
        self
    }

    /// The underlying CRI service.
    pub fn service(&self) -> &R {
        &self.service
    }

    /// Everything the runtime has for pod `uid`.
    pub async fn observe_pod(&self, uid: &str) -> Result<ObservedPod, RuntimeError> {
        let selector = HashMap::from([(labels::POD_UID.to_owned(), uid.to_owned())]);
        let list_error = |source| RuntimeError::ListPod {
            pod_uid: uid.to_owned(),
            source,
        };
        let sandbox_filter = cri_api::PodSandboxFilter {
            label_selector: selector.clone(),
            ..Default::default()
        };
        let container_filter = cri_api::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        };
        // Independent calls go out together: under load each one waits its
        // turn in the runtime, and a pod's status waits for all of them.
        let (sandboxes, containers) = futures::future::try_join(
            self.service.list_pod_sandbox(Some(sandbox_filter)),
            self.service.list_containers(Some(container_filter)),
        )
        .await
        .map_err(list_error)?;

        let mut observed = ObservedPod {
            sandboxes: sandboxes.into_iter().map(observed_sandbox).collect(),
            containers: Vec::with_capacity(containers.len()),
            unhealthy: Default::default(),
        };
        let statuses = futures::future::join_all(
            containers
                .iter()
                .map(|container| self.service.container_status(&container.id)),
        );
        let (ips, statuses) =
            futures::future::join(self.read_pod_ips(uid, &observed), statuses).await;
        for (container, status) in containers.into_iter().zip(statuses) {
            match status {
                Ok(status) => observed
                    .containers
                    .push(observed_container(container.pod_sandbox_id, status)),
                // Removed since the listing.
                Err(e) if e.is_not_found() => {}
                Err(source) => {
                    return Err(RuntimeError::ContainerStatus {
                        pod_uid: uid.to_owned(),
                        container_id: container.id,
                        source,
                    });
                }
            }
        }
        if let Some((latest, ips)) = ips?
            && let Some(sandbox) = observed.sandboxes.iter_mut().find(|s| s.id == latest)
        {
            sandbox.ips = ips;
        }
        Ok(observed)
    }

    /// Sandbox `sandbox_id` as its status shows it, its IPs remembered;
    /// `None` if it is gone.
    async fn sandbox_status(
        &self,
        uid: &str,
        sandbox_id: &str,
    ) -> Result<Option<ObservedSandbox>, RuntimeError> {
        match self.service.pod_sandbox_status(sandbox_id).await {
            Ok(status) => {
                let ips = sandbox_status_ips(&status);
                self.remember_ips(uid, sandbox_id, &ips);
                Ok(Some(sandbox_from_status(status, ips)))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(RuntimeError::PodSandboxStatus {
                pod_uid: uid.to_owned(),
                sandbox_id: sandbox_id.to_owned(),
                source,
            }),
        }
    }

    /// The IPs of the latest sandbox if it is ready, as `(sandbox id, IPs)`:
    /// remembered, or asked once per sandbox.
    async fn read_pod_ips(
        &self,
        uid: &str,
        observed: &ObservedPod,
    ) -> Result<Option<(String, Vec<String>)>, RuntimeError> {
        let Some(latest) = observed
            .latest_sandbox()
            .filter(|s| s.ready)
            .map(|s| s.id.clone())
        else {
            return Ok(None);
        };
        if let Some((id, ips)) = self.ip_cache().get(uid)
            && *id == latest
        {
            return Ok(Some((latest, ips.clone())));
        }
        let Some(sandbox) = self.sandbox_status(uid, &latest).await? else {
            return Ok(None);
        };
        Ok(Some((latest, sandbox.ips)))
    }

    /// The host's resolver configuration (`--resolv-conf`). Every sandbox
    /// config needs it; the file is read again only when it changed, which
    /// a `stat` tells (a read is a trip to a blocking thread, and many pods
    /// starting at once would each make one).
    async fn host_dns(&self, pod_uid: &str) -> Result<cri_api::DnsConfig, RuntimeError> {
        let cache = || self.host_dns.lock().unwrap_or_else(|e| e.into_inner());
        let identity = match std::fs::metadata(&self.resolv_conf) {
            Ok(metadata) => Some(file_identity(&metadata)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(cri_api::DnsConfig::default());
            }
            // The read below reports it.
            Err(_) => None,
        };
        if let (Some(identity), Some((seen, dns))) = (identity, cache().as_ref())
            && identity == *seen
        {
            return Ok(dns.clone());
        }
        match tokio::fs::read_to_string(&self.resolv_conf).await {
            Ok(text) => {
                let dns = sandbox::parse_resolv_conf(&text);
                if let Some(identity) = identity {
                    *cache() = Some((identity, dns.clone()));
                }
                Ok(dns)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(cri_api::DnsConfig::default()),
            Err(source) => Err(RuntimeError::ResolvConf {
                pod_uid: pod_uid.to_owned(),
                path: self.resolv_conf.clone(),
                source,
            }),
        }
    }

    async fn sandbox_config(
        &self,
        pod: &Pod,
        attempt: u32,
    ) -> Result<cri_api::PodSandboxConfig, RuntimeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let host_dns = self.host_dns(uid).await?;
        let dns = sandbox::pod_dns_config(pod, &host_dns, &self.cluster_dns);
        let mut config = sandbox::pod_sandbox_config(pod, attempt, &self.pod_logs_dir, &dns);
        if let Some(linux) = config.linux.as_mut() {
            if let Some((_, layout)) = &self.cgroups {
                linux.cgroup_parent = layout.pod(pod);
            }
            if let Some(sc) = linux.security_context.as_mut() {
                sc.seccomp = Some(
                    container::seccomp_profile(pod, None, &self.seccomp_root).map_err(
                        |source| RuntimeError::SandboxConfig {
                            pod_uid: uid.to_owned(),
                            source,
                        },
                    )?,
                );
            }
        }
        Ok(config)
    }

    /// Executes `actions` (from `compute_actions` over `observed`) for the pod.
    /// `pod` is the spec, absent for orphans (which only get stop/remove
    /// actions). Returns every error; an action whose prerequisite failed
    /// (a container in a sandbox that could not be created) is skipped.
    pub async fn execute(
        &self,
        pod: Option<&Pod>,
        pod_ref: &PodRef,
        observed: &ObservedPod,
        actions: &[Action],
    ) -> Executed {
        let uid = pod_ref.uid.as_str();
        let mut errors = Vec::new();
        let mut made = Made::default();
        // The sandbox made earlier in this list.
        let mut new_sandbox: Option<TargetSandbox> = None;
        // Set up once per execution, before the first container starts;
        // `Err(())` once that failed (reported), so no container starts.
        let mut pod_volumes: Option<Result<Option<Arc<PodVolumes>>, ()>> = None;
        // Sandbox configs by attempt, built once per execution.
        let mut configs: HashMap<u32, Arc<cri_api::PodSandboxConfig>> = HashMap::new();
        // Image checks (and pulls) done while the new sandbox was made, by
        // container name.
        let mut images: HashMap<String, Result<Option<cri_api::Image>, RuntimeError>> =
            HashMap::new();
        // Host files written while the new sandbox was made, by container
        // name.
        let mut prepared_files: HashMap<String, ContainerFiles> = HashMap::new();
        let mut index = 0;
        while index < actions.len() {
            let action = &actions[index];
            index += 1;
            let result = match action {
                Action::StopContainer { container_id, .. } => {
                    // Consecutive stops of one group (app containers, or
                    // sidecars) run in parallel, as upstream kills them.
                    let sidecar = |id: &str| {
                        observed
                            .containers
                            .iter()
                            .find(|c| c.id == id)
                            .is_some_and(|c| c.sidecar)
                    };
                    let group_sidecar = sidecar(container_id);
                    let mut group = vec![action];
                    while let Some(next @ Action::StopContainer { container_id, .. }) =
                        actions.get(index)
                    {
                        if sidecar(container_id) != group_sidecar {
                            break;
                        }
                        group.push(next);
                        index += 1;
                    }
                    let stops = group
                        .into_iter()
                        .map(|action| self.stop_container(pod_ref, observed, action));
                    errors.extend(
                        futures::future::join_all(stops)
                            .await
                            .into_iter()
                            .filter_map(Result::err),
                    );
                    Ok(())
                }
                Action::StopPodSandbox { sandbox_id } => {
                    tracing::info!(
                        pod.uid = uid,
                        pod.name = pod_ref.name,
                        sandbox.id = sandbox_id,
                        "stopping pod sandbox"
                    );
                    match self.service.stop_pod_sandbox(sandbox_id).await {
                        Err(e) if !e.is_not_found() => Err(RuntimeError::StopPodSandbox {
                            pod_uid: uid.to_owned(),
                            sandbox_id: sandbox_id.clone(),
                            source: e,
                        }),
                        _ => Ok(()),
                    }
                }
                Action::RunPodSandbox { attempt } => match pod {
                    Some(pod) => {
                        match self.sandbox_config_for(pod, *attempt, &mut configs).await {
                            Ok(config) => {
                                // The images of the containers that start in
                                // the new sandbox, and the pod's volumes, are
                                // made ready while the runtime makes the
                                // sandbox: none needs the other.
                                let starting: Vec<(&Container, u32)> = actions[index..]
                                    .iter()
                                    .filter_map(|a| match a {
                                        Action::StartContainer {
                                            name,
                                            restart_count,
                                            sandbox: SandboxTarget::New,
                                            ..
                                        } => find_container(pod, name).map(|c| (c, *restart_count)),
                                        _ => None,
                                    })
                                    .collect();
                                let set_up_volumes = !starting.is_empty() && pod_volumes.is_none();
                                // Every container gets the pod's hosts file
                                // naming its IPs (with a pod directory). The
                                // first container's creation need not wait
                                // for them unless its env or postStart hook
                                // uses them: its start asks for the sandbox's
                                // status while the runtime creates it.
                                let pod_network = !sandbox::host_network(pod);
                                let need_ips = pod_network
                                    && (self.volumes.is_some()
                                        || starting
                                            .iter()
                                            .any(|(c, _)| container::needs_pod_ips(c)));
                                let ask_now = need_ips
                                    && starting
                                        .first()
                                        .is_none_or(|(c, _)| container::needs_pod_ips(c));
                                // The starting containers' host files are
                                // written with the pod's cgroup, while the
                                // runtime makes the sandbox, unless the
                                // first one waits for the IPs (its files
                                // name them).
                                let early_files = match ask_now {
                                    true => Vec::new(),
                                    false => starting
                                        .iter()
                                        .map(|(c, restart_count)| {
                                            // As the first start will see
                                            // the new sandbox: no IPs yet.
                                            let (files, _) = self.container_files_in(
                                                pod,
                                                c,
                                                *restart_count,
                                                (&[], need_ips),
                                                &config,
                                            );
                                            (c.name.clone(), files)
                                        })
                                        .collect(),
                                };
                                let (sandbox, pulled, volumes) = tokio::join!(
                                    self.run_pod_sandbox(
                                        pod,
                                        *attempt,
                                        &config,
                                        ask_now,
                                        early_files
                                    ),
                                    // One after the other, in container
                                    // order, as upstream's serial pulls.
                                    async {
                                        let mut checked = Vec::with_capacity(starting.len());
                                        for (c, _) in &starting {
                                            let result = self.ensure_image(uid, c, &config).await;
                                            checked.push((c.name.clone(), result));
                                        }
                                        checked
                                    },
                                    async {
                                        match set_up_volumes {
                                            true => Some(self.setup_volumes(pod).await),
                                            false => None,
                                        }
                                    }
                                );
                                images.extend(pulled);
                                if let Some(result) = volumes {
                                    pod_volumes =
                                        Some(result.as_ref().map(Clone::clone).map_err(|_| ()));
                                    if let Err(error) = result {
                                        errors.push(error);
                                    }
                                }
                                sandbox.map(|(id, observed, written)| {
                                    prepared_files.extend(written);
                                    made.sandbox = Some(id.clone());
                                    let ips = observed
                                        .as_ref()
                                        .map(|o| o.ips.clone())
                                        .unwrap_or_default();
                                    if !pod_network {
                                        made.sandbox_assumed = Some(ObservedSandbox {
                                            id: id.clone(),
                                            attempt: *attempt,
                                            ready: true,
                                            created_at: since_epoch_nanos(),
                                            ips: Vec::new(),
                                        });
                                    }
                                    made.sandbox_observed = observed;
                                    new_sandbox = Some(TargetSandbox {
                                        id,
                                        attempt: *attempt,
                                        pod_ips: ips,
                                        ips_pending: need_ips && !ask_now,
                                    });
                                })
                            }
                            Err(error) => Err(error),
                        }
                    }
                    None => Err(RuntimeError::MissingSpec {
                        pod_uid: uid.to_owned(),
                        container_name: String::new(),
                    }),
                },
                Action::StartContainer {
                    name,
                    restart_count,
                    sandbox,
                    ..
                } => {
                    let target = match sandbox {
                        SandboxTarget::New => new_sandbox.clone(),
                        // The observed pod carries the IPs of its latest
                        // ready sandbox, the one containers start in.
                        SandboxTarget::Existing(id) => {
                            let sandbox = observed.sandboxes.iter().find(|s| &s.id == id);
                            Some(TargetSandbox {
                                id: id.clone(),
                                attempt: sandbox.map_or(0, |s| s.attempt),
                                pod_ips: sandbox.map(|s| s.ips.clone()).unwrap_or_default(),
                                ips_pending: false,
                            })
                        }
                    };
                    match (pod, target) {
                        // The sandbox could not be created; that error is already reported.
                        (_, None) => Ok(()),
                        (Some(pod), Some(target)) => {
                            let volumes = match &pod_volumes {
                                Some(done) => done.clone(),
                                None => {
                                    let result = self.setup_volumes(pod).await;
                                    let done = result.as_ref().map(Clone::clone).map_err(|_| ());
                                    pod_volumes = Some(done.clone());
                                    if let Err(error) = result {
                                        errors.push(error);
                                    }
                                    done
                                }
                            };
                            let config = self
                                .sandbox_config_for(pod, target.attempt, &mut configs)
                                .await;
                            match (volumes, config) {
                                (Ok(volumes), Ok(config)) => self
                                    .start_container(
                                        pod,
                                        name,
                                        *restart_count,
                                        &target,
                                        StartInputs {
                                            sandbox_config: &config,
                                            volumes: volumes.as_ref(),
                                            image: images.remove(name),
                                            files: prepared_files.remove(name),
                                        },
                                    )
                                    .await
                                    .map(|started| {
                                        // The new sandbox's status, asked
                                        // during the start: later starts and
                                        // the observation use it.
                                        if let Some(observed) = started.sandbox {
                                            if let Some(new) = new_sandbox.as_mut() {
                                                new.pod_ips = observed.ips.clone();
                                                new.ips_pending = false;
                                            }
                                            made.sandbox_observed = Some(observed);
                                        }
                                        made.containers.push(MadeContainer {
                                            id: started.container_id,
                                            sandbox_id: target.id.clone(),
                                            assumed: started.assumed,
                                        })
                                    }),
                                (Ok(_), Err(error)) => Err(error),
                                // Reported when the set-up failed.
                                (Err(()), _) => Ok(()),
                            }
                        }
                        (None, Some(_)) => Err(RuntimeError::MissingSpec {
                            pod_uid: uid.to_owned(),
                            container_name: name.clone(),
                        }),
                    }
                }
                Action::RemoveContainer {
                    container_id,
                    name,
                    delete_log,
                } => {
                    tracing::debug!(
                        pod.uid = uid,
                        container.id = container_id,
                        container.name = name,
                        "removing container"
                    );
                    let removed = match self.service.remove_container(container_id).await {
                        Err(e) if !e.is_not_found() => Err(RuntimeError::RemoveContainer {
                            pod_uid: uid.to_owned(),
                            container_name: name.clone(),
                            container_id: container_id.clone(),
                            source: e,
                        }),
                        _ => Ok(()),
                    };
                    if removed.is_ok() && *delete_log {
                        let log_path = observed
                            .containers
                            .iter()
                            .find(|c| &c.id == container_id)
                            .and_then(|c| c.log_path.as_deref());
                        if let Some(path) = log_path {
                            remove_log_file(uid, container_id, Path::new(path)).await;
                        }
                    }
                    removed
                }
                Action::RemovePodSandbox { sandbox_id } => {
                    tracing::debug!(
                        pod.uid = uid,
                        sandbox.id = sandbox_id,
                        "removing pod sandbox"
                    );
                    match self.service.remove_pod_sandbox(sandbox_id).await {
                        Err(e) if !e.is_not_found() => Err(RuntimeError::RemovePodSandbox {
                            pod_uid: uid.to_owned(),
                            sandbox_id: sandbox_id.clone(),
                            source: e,
                        }),
                        _ => Ok(()),
                    }
                }
            };
            if let Err(error) = result {
                errors.push(error);
            }
        }
        Executed { errors, made }
    }

    /// The pod after `made` was added to `before` (the observation the
    /// actions were computed from): one status call per new object, all at
    /// once, instead of listing the pod again. Only for executions that
    /// made things and removed nothing.
    pub async fn observe_made(
        &self,
        uid: &str,
        before: &ObservedPod,
        made: &Made,
    ) -> Result<ObservedPod, RuntimeError> {
        let sandbox = async {
            match (&made.sandbox, &made.sandbox_observed) {
                (_, Some(observed)) => Ok(Some(observed.clone())),
                // Gone already: as absent as a listing would show it.
                (Some(id), None) => self.sandbox_status(uid, id).await,
                (None, None) => Ok(None),
            }
        };
        let containers = futures::future::join_all(made.containers.iter().map(|c| async move {
            self.service
                .container_status(&c.id)
                .await
                .map(|status| observed_container(c.sandbox_id.clone(), status))
                .map_err(|source| RuntimeError::ContainerStatus {
                    pod_uid: uid.to_owned(),
                    container_id: c.id.clone(),
                    source,
                })
        }));
        let (sandbox, containers) = futures::future::join(sandbox, containers).await;
        let containers = containers.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(with_made(before, sandbox?, containers))
    }

    /// Runs the container's preStop hook (if it has one and runs), then
    /// stops it with what is left of the grace period.
    async fn stop_container(
        &self,
        pod_ref: &PodRef,
        observed: &ObservedPod,
        action: &Action,
    ) -> Result<(), RuntimeError> {
        let Action::StopContainer {
            container_id,
            name,
            grace_period,
            reason,
        } = action
        else {
            return Ok(());
        };
        let uid = pod_ref.uid.as_str();
        tracing::info!(
            pod.uid = uid,
            pod.name = pod_ref.name,
            container.id = container_id,
            container.name = name,
            grace_period,
            ?reason,
            event = "Killing",
            "stopping container"
        );
        let grace = Duration::from_secs(grace_period.unsigned_abs());
        let instance = observed.containers.iter().find(|c| &c.id == container_id);
        let pre_stop = instance
            .filter(|c| c.state == crate::actions::ContainerState::Running)
            .and_then(|c| c.pre_stop.as_deref())
            .and_then(|json| {
                serde_json::from_str::<k8s_openapi::api::core::v1::LifecycleHandler>(json).ok()
            });
        let mut remaining = *grace_period;
        if let Some(handler) = pre_stop {
            let started = std::time::Instant::now();
            let pod_ip = observed
                .latest_sandbox()
                .and_then(|s| s.ips.first())
                .and_then(|ip| ip.parse().ok());
            let outcome = crate::hooks::run_handler(
                &self.service,
                &handler,
                container_id,
                None,
                pod_ip,
                grace,
            )
            .await;
            if let Err(message) = outcome {
                tracing::warn!(
                    pod.uid = uid,
                    container.name = name,
                    event = "FailedPreStopHook",
                    "PreStopHook failed: {message}"
                );
            }
            let spent = started.elapsed().as_secs() as i64;
            remaining = (grace_period - spent).max(crate::actions::MINIMUM_GRACE_PERIOD);
        }
        match self.service.stop_container(container_id, remaining).await {
            Err(e) if !e.is_not_found() => Err(RuntimeError::StopContainer {
                pod_uid: uid.to_owned(),
                container_name: name.clone(),
                container_id: container_id.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Creates the pod's sandbox; returns its id and pod IPs.
    /// The sandbox config of `pod` for `attempt`, built once per execution.
    async fn sandbox_config_for(
        &self,
        pod: &Pod,
        attempt: u32,
        configs: &mut HashMap<u32, Arc<cri_api::PodSandboxConfig>>,
    ) -> Result<Arc<cri_api::PodSandboxConfig>, RuntimeError> {
        if let Some(config) = configs.get(&attempt) {
            return Ok(config.clone());
        }
        let config = Arc::new(self.sandbox_config(pod, attempt).await?);
        configs.insert(attempt, config.clone());
        Ok(config)
    }

    async fn run_pod_sandbox(
        &self,
        pod: &Pod,
        attempt: u32,
        config: &cri_api::PodSandboxConfig,
        need_ips: bool,
        files: Vec<(String, ContainerFiles)>,
    ) -> Result<PodSandboxMade, RuntimeError> {
        let pod_ref = PodRef::from_pod(pod);
        // The pod's log directory and its cgroup (a dozen mkdirs and writes
        // in cgroupfs, which serialise on the kernel's cgroup lock while many
        // pods start), on one thread of `file_work`, while the runtime makes
        // the sandbox: the runtime writes into the log directory only for
        // containers, and makes the sandbox's cgroup below the pod's
        // (creating the missing parents itself, as runc does). Both are done
        // before any container is created. Then the starting containers'
        // host files (`files`): one that fails is written, and its error
        // reported, by its start.
        let log_dir = PathBuf::from(&config.log_directory);
        let cgroup = self.cgroups.as_ref().map(|(manager, layout)| {
            (
                manager.clone(),
                layout.pod(pod),
                crate::cgroups::pod_limits(pod),
            )
        });
        let uid = pod_ref.uid.clone();
        let prepare = file_work::run(move || {
            std::fs::create_dir_all(&log_dir).map_err(|source| RuntimeError::LogDirectory {
                pod_uid: uid.clone(),
                path: log_dir.clone(),
                source,
            })?;
            if let Some((manager, path, limits)) = cgroup {
                manager
                    .ensure(&path, &limits)
                    .map_err(|source| RuntimeError::PodCgroup {
                        pod_uid: uid.clone(),
                        source,
                    })?;
            }
            let mut written = files;
            written.retain(|(name, files)| match files.write_blocking() {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(pod.uid = uid, container.name = name, error = %crate::ErrorChain(&error), "writing a container's host files early");
                    false
                }
            });
            Ok(written)
        });
        // The request goes out first: `prepare` hands its work off when
        // first polled, after `run`.
        let run = self.service.run_pod_sandbox(config.clone());
        let (sandbox, prepared) = tokio::join!(biased; run, prepare);
        let sandbox_id = sandbox.map_err(|source| RuntimeError::RunPodSandbox {
            pod_uid: pod_ref.uid.clone(),
            pod_name: pod_ref.name.clone(),
            attempt,
            source,
        })?;
        let prepared = prepared
            .map_err(|source| RuntimeError::CgroupTask {
                pod_uid: pod_ref.uid.clone(),
                source,
            })
            .and_then(|done| done);
        let files_written = match prepared {
            Ok(written) => written,
            Err(error) => {
                // No sandbox is left without its pod's limits or log directory.
                if let Err(e) = self.service.remove_pod_sandbox(&sandbox_id).await {
                    tracing::warn!(pod.uid = pod_ref.uid, sandbox.id = sandbox_id, error = %e, "removing the sandbox of a pod whose cgroup or log directory could not be made");
                }
                return Err(error);
            }
        };
        // Asked now when a container start needs the IPs (the pod's hosts
        // file, env, a hook); else the next observation asks.
        let observed = match need_ips {
            true => self.sandbox_status(&pod_ref.uid, &sandbox_id).await?,
            false => None,
        };
        tracing::info!(
            pod.uid = pod_ref.uid,
            pod.name = pod_ref.name,
            sandbox.id = sandbox_id,
            attempt,
            pod.ip = observed
                .as_ref()
                .and_then(|o: &ObservedSandbox| o.ips.first())
                .map(String::as_str),
            since_pod_seen_ms = since_pod_seen(pod).map(|d| d.as_millis() as u64),
            "pod sandbox started"
        );
        Ok((sandbox_id, observed, files_written))
    }

    /// Makes the container's image present by its pull policy; returns the
    /// image's status when it was present already (`None` after a pull).
    async fn ensure_image(
        &self,
        pod_uid: &str,
        container: &Container,
        sandbox_config: &cri_api::PodSandboxConfig,
    ) -> Result<Option<cri_api::Image>, RuntimeError> {
        let image = container.image.clone().unwrap_or_default();
        let spec = image_spec(container);
        let image_error = |source| RuntimeError::Image {
            pod_uid: pod_uid.to_owned(),
            container_name: container.name.clone(),
            image: image.clone(),
            source,
        };
        let policy = image_pull_policy(container);
        if policy != PullPolicy::Always
            && let Some(present) = self
                .service
                .image_status(spec.clone())
                .await
                .map_err(image_error)?
        {
            return Ok(Some(present));
        }
        if policy == PullPolicy::Never {
            return Err(RuntimeError::ImageNeverPull {
                pod_uid: pod_uid.to_owned(),
                container_name: container.name.clone(),
                image,
            });
        }
        tracing::info!(
            pod.uid = pod_uid,
            container.name = container.name,
            image,
            event = "Pulling",
            "pulling image"
        );
        self.pulls.started(pod_uid, SystemTime::now());
        let pulled = self.service.pull_image(spec, sandbox_config.clone()).await;
        self.pulls.finished(pod_uid, SystemTime::now());
        let image_ref = pulled.map_err(image_error)?;
        tracing::info!(
            pod.uid = pod_uid,
            container.name = container.name,
            image,
            image_ref,
            event = "Pulled",
            "pulled image"
        );
        Ok(None)
    }

    /// Upstream `verifyRunAsNonRoot`, with the image's user from `inspected`
    /// or, when the pull gave none, from one more `ImageStatus`.
    async fn verify_run_as_non_root(
        &self,
        pod: &Pod,
        container: &Container,
        inspected: Option<cri_api::Image>,
    ) -> Result<(), RuntimeError> {
        if !container::needs_image_user(pod, container) {
            return Ok(());
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let image = match inspected {
            Some(image) => Some(image),
            None => self
                .service
                .image_status(image_spec(container))
                .await
                .map_err(|source| RuntimeError::Image {
                    pod_uid: uid.to_owned(),
                    container_name: container.name.clone(),
                    image: container.image.clone().unwrap_or_default(),
                    source,
                })?,
        };
        container::verify_run_as_non_root(pod, container, image.as_ref()).map_err(|source| {
            RuntimeError::ContainerConfig {
                pod_uid: uid.to_owned(),
                container_name: container.name.clone(),
                source,
            }
        })
    }

    async fn start_container(
        &self,
        pod: &Pod,
        name: &str,
        restart_count: u32,
        sandbox: &TargetSandbox,
        inputs: StartInputs<'_>,
    ) -> Result<Started, RuntimeError> {
        let StartInputs {
            sandbox_config,
            volumes,
            image,
            files: prepared,
        } = inputs;
        let sandbox_id = sandbox.id.as_str();
        let pod_ref = PodRef::from_pod(pod);
        let uid = pod_ref.uid.as_str();
        let container = find_container(pod, name).ok_or_else(|| RuntimeError::MissingSpec {
            pod_uid: uid.to_owned(),
            container_name: name.to_owned(),
        })?;
        let inspected = match image {
            Some(checked) => checked?,
            None => self.ensure_image(uid, container, sandbox_config).await?,
        };
        // What the runtime's status of the container names as its image:
        // the image's first repo digest, else its id (as containerd's and
        // cri-shim's do).
        let image_ref = inspected
            .as_ref()
            .map(|i| i.repo_digests.first().unwrap_or(&i.id).clone());
        self.verify_run_as_non_root(pod, container, inspected)
            .await?;
        let context = container::EnvContext {
            pod_ips: self.pod_ips(pod, &sandbox.pod_ips).to_vec(),
            ..self.node.clone()
        };
        let config_error = |source| RuntimeError::ContainerConfig {
            pod_uid: uid.to_owned(),
            container_name: name.to_owned(),
            source,
        };
        let mut config = container::container_config(pod, container, restart_count, &context)
            .map_err(config_error)?;
        let seccomp = container::seccomp_profile(pod, Some(container), &self.seccomp_root)
            .map_err(config_error)?;
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.seccomp = Some(seccomp);
        }
        let has_mounts = container
            .volume_mounts
            .as_ref()
            .is_some_and(|m| !m.is_empty());
        let (files, file_mounts) = self.container_files_in(
            pod,
            container,
            restart_count,
            (&sandbox.pod_ips, sandbox.ips_pending),
            sandbox_config,
        );
        let hosts_file = files.etc_hosts.as_ref().map(|(path, _)| path.clone());
        let files = (prepared.as_ref() != Some(&files)).then_some(files);
        // The container as its status will show it once started.
        let assumed = image_ref.map(|image_ref| cri_api::ContainerStatus {
            metadata: config.metadata.clone(),
            image: config.image.clone(),
            image_ref,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path: container::runtime_log_path(&sandbox_config.log_directory, &config.log_path),
            ..Default::default()
        });
        // Written before the new sandbox's IPs can be: their rewrite of the
        // hosts file below must not be overwritten by this plan's.
        if let Some(files) = files {
            files.write().await?;
        }
        let create = async {
            match volumes {
                Some(volumes) => {
                    config.mounts = self
                        .container_mounts(pod, container, volumes, &config.envs)
                        .await?;
                }
                None if has_mounts => tracing::warn!(
                    pod.uid = uid,
                    pod.name = pod_ref.name,
                    container.name = name,
                    "volume mounts are ignored: no volume manager"
                ),
                None => {}
            }
            config.mounts.extend(file_mounts);
            self.service
                .create_container(sandbox_id, config, sandbox_config.clone())
                .await
                .map_err(|source| RuntimeError::CreateContainer {
                    pod_uid: uid.to_owned(),
                    container_name: name.to_owned(),
                    restart_count,
                    source,
                })
        };
        // A new sandbox's IPs, asked while the runtime creates the
        // container, and written into its hosts file (mounted, so rewritten
        // in place) as soon as they are known: the container starts once it
        // is created, with no file work between (under a hundred pods
        // starting, a hand-off to the pod-file threads waited up to 33 ms).
        let (container_id, observed) = match sandbox.ips_pending {
            false => (create.await?, None),
            true => {
                let ips_known = async {
                    let observed = self.sandbox_status(uid, sandbox_id).await?;
                    if let (Some(path), Some(observed)) = (hosts_file, &observed) {
                        ContainerFiles {
                            pod_uid: uid.to_owned(),
                            log_dir: None,
                            termination_log: None,
                            etc_hosts: Some((path, self.hosts_plan(pod, &observed.ips))),
                        }
                        .write()
                        .await?;
                    }
                    Ok(observed)
                };
                let (created, observed) = tokio::join!(create, ips_known);
                let container_id = created?;
                match observed {
                    Ok(observed) => (container_id, observed),
                    Err(error) => {
                        // Nothing half-made is left behind.
                        let _ = self.service.remove_container(&container_id).await;
                        return Err(error);
                    }
                }
            }
        };
        let created_at = since_epoch_nanos();
        self.service
            .start_container(&container_id)
            .await
            .map_err(|source| RuntimeError::StartContainer {
                pod_uid: uid.to_owned(),
                container_name: name.to_owned(),
                container_id: container_id.clone(),
                source,
            })?;
        let assumed = assumed.map(|status| {
            observed_container(
                sandbox_id.to_owned(),
                cri_api::ContainerStatus {
                    id: container_id.clone(),
                    state: cri_api::ContainerState::ContainerRunning as i32,
                    created_at,
                    started_at: since_epoch_nanos(),
                    ..status
                },
            )
        });
        if let Some(handler) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let pod_ip = context.pod_ips.first().and_then(|ip| ip.parse().ok());
            let grace = crate::actions::termination_grace_period(pod);
            let outcome = crate::hooks::run_handler(
                &self.service,
                handler,
                &container_id,
                Some(container),
                pod_ip,
                Duration::from_secs(
                    grace
                        .max(crate::actions::MINIMUM_GRACE_PERIOD)
                        .unsigned_abs(),
                ),
            )
            .await;
            if let Err(message) = outcome {
                tracing::warn!(
                    pod.uid = uid,
                    container.name = name,
                    event = "FailedPostStartHook",
                    "PostStartHook failed: {message}"
                );
                // Upstream kills a container whose postStart hook failed.
                let _ = self
                    .service
                    .stop_container(&container_id, crate::actions::MINIMUM_GRACE_PERIOD)
                    .await;
                return Err(RuntimeError::PostStartHook {
                    pod_uid: uid.to_owned(),
                    container_name: name.to_owned(),
                    message,
                });
            }
        }
        tracing::info!(
            pod.uid = uid,
            pod.name = pod_ref.name,
            sandbox.id = sandbox_id,
            container.id = container_id,
            container.name = name,
            restart_count,
            since_pod_seen_ms = since_pod_seen(pod).map(|d| d.as_millis() as u64),
            event = "Started",
            "container started"
        );
        Ok(Started {
            container_id,
            sandbox: observed,
            assumed,
        })
    }
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullPolicy {
    /// Pull on every container start.
    Always,
    /// Pull when absent.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// The container's pull policy with the API default: `Always` for an image
/// without a tag or tagged `latest` (and no digest), else `IfNotPresent`.
fn image_pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        Some("Never") => PullPolicy::Never,
        _ => {
            let image = container.image.as_deref().unwrap_or_default();
            let name = image.rsplit('/').next().unwrap_or(image);
            let latest =
                !name.contains('@') && name.split_once(':').is_none_or(|(_, tag)| tag == "latest");
            if latest {
                PullPolicy::Always
            } else {
                PullPolicy::IfNotPresent
            }
        }
    }
}

/// Upstream `maxMsgSize` of a termination message file.
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// Upstream `kubecontainer.MaxContainerTerminationMessageLogLength`.
const MAX_FALLBACK_MESSAGE: usize = 2048;

/// Volume work `f` of pod `uid`: on a blocking thread when it touches the
/// disk (`io`), else here, with no trip to one (each takes tokio's pool
/// lock, which a hundred pods starting at once queue on).
async fn volume_work<T: Send + 'static>(
    uid: &str,
    io: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    match io {
        false => Ok(f()),
        true => tokio::task::spawn_blocking(f)
            .await
            .map_err(|source| RuntimeError::VolumeTask {
                pod_uid: uid.to_owned(),
                source,
            }),
    }
}

/// Up to `limit` bytes of a file as text; empty if it cannot be read.
async fn read_prefix(path: &Path, limit: usize) -> String {
    match tokio::fs::read(path).await {
        Ok(mut bytes) => {
            bytes.truncate(limit);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(_) => String::new(),
    }
}

/// The content of the last `lines` lines of a CRI log, at most `limit`
/// bytes (the end is kept).
async fn log_tail(path: &Path, lines: usize, limit: usize) -> String {
    let Ok(text) = tokio::fs::read_to_string(path).await else {
        return String::new();
    };
    // `<time> <stream> <P|F> <content>`
    let contents: Vec<&str> = text
        .lines()
        .map(|line| line.splitn(4, ' ').nth(3).unwrap_or_default())
        .collect();
    let start = contents.len().saturating_sub(lines);
    let mut tail = contents[start..].join("\n");
    if tail.len() > limit {
        let mut cut = tail.len() - limit;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_owned();
    }
    tail
}

/// Deletes the log of a garbage-collected container instance; failure only
/// costs disk space, so it is logged here and not returned.
async fn remove_log_file(pod_uid: &str, container_id: &str, path: &Path) {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(pod.uid = pod_uid, container.id = container_id, path = %path.display(), error = %e, "removing container log");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(image: &str, explicit: Option<&str>) -> PullPolicy {
        let container = Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: explicit.map(str::to_owned),
            ..Default::default()
        };
        image_pull_policy(&container)
    }

    #[test]
    fn the_default_policy_follows_the_tag() {
        assert_eq!(policy("busybox", None), PullPolicy::Always);
        assert_eq!(policy("busybox:latest", None), PullPolicy::Always);
        assert_eq!(policy("localhost:5000/busybox", None), PullPolicy::Always);
        assert_eq!(
            policy("localhost:5000/busybox:1.36", None),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            policy("busybox@sha256:abcd", None),
            PullPolicy::IfNotPresent
        );
        assert_eq!(policy("busybox:latest", Some("Never")), PullPolicy::Never);
        assert_eq!(policy("busybox:1", Some("Always")), PullPolicy::Always);
    }

    /// Pod cgroups named by their paths, recording the thread each removal
    /// ran on.
    #[derive(Debug, Default)]
    struct RecordingCgroups {
        pods: std::sync::Mutex<Vec<String>>,
        removed_on: std::sync::Mutex<Vec<(String, std::thread::ThreadId)>>,
    }

    impl CgroupManager for RecordingCgroups {
        fn ensure(
            &self,
            path: &str,
            _: &crate::cgroups::CgroupLimits,
        ) -> Result<(), crate::cgroups::CgroupError> {
            self.pods.lock().unwrap().push(path.to_owned());
            Ok(())
        }
        fn remove(&self, path: &str) -> Result<(), crate::cgroups::CgroupError> {
            self.pods.lock().unwrap().retain(|p| p != path);
            self.removed_on
                .lock()
                .unwrap()
                .push((path.to_owned(), std::thread::current().id()));
            Ok(())
        }
        fn children(&self, path: &str) -> Vec<String> {
            let prefix = format!("{path}/");
            self.pods
                .lock()
                .unwrap()
                .iter()
                .filter_map(|p| p.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_owned)
                .collect()
        }
    }

    /// Listing and removing cgroups waits on the kernel's cgroup lock: a
    /// pod's cgroup is removed off the async thread that asked, and only
    /// that pod's.
    #[tokio::test]
    async fn a_pod_cgroup_is_removed_off_the_async_thread() {
        let cgroups = Arc::new(RecordingCgroups::default());
        for path in ["/kubepods/podu1", "/kubepods/besteffort/podu2"] {
            cgroups.ensure(path, &Default::default()).unwrap();
        }
        let fake = crate::fake_runtime::FakeRuntime::new(std::time::SystemTime::now, &[]);
        let runtime = RuntimeManager::new(fake, PathBuf::from("/nonexistent"), PathBuf::new())
            .with_cgroups(cgroups.clone(), PodCgroups::new("/"));

        runtime.remove_pod_cgroup("u2").await.unwrap();
        assert_eq!(*cgroups.pods.lock().unwrap(), ["/kubepods/podu1"]);
        let removed = cgroups.removed_on.lock().unwrap().clone();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert_eq!(removed[0].0, "/kubepods/besteffort/podu2");
        assert_ne!(removed[0].1, std::thread::current().id());
    }
}
