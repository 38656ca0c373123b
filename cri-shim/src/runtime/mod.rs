//! The runtime: pod sandboxes and containers, their on-disk records, and the
//! operations the CRI server maps its RPCs to.
//!
//! Invariants:
//! - Every object has a record file under `<root>`; the in-memory maps are a
//!   cache of those files, rebuilt at start ([`Runtime::open`]).
//! - Lifecycle operations on one object are serialised by its `op` lock; reads
//!   (List*, *Status) only take the short `record` lock, so a StopContainer
//!   waiting out a grace period never blocks a relist.
//! - A failed RunPodSandbox or CreateContainer undoes what it made before
//!   returning the error.

mod container;
pub mod network;
mod ocirt;
mod pidfd;
mod sandbox;
mod stats;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use container::ContainerState;
pub use ocirt::{ExecOutput, MAX_EXEC_OUTPUT, OciRuntime, OciRuntimeError};
pub use sandbox::SandboxState;

use crate::config::Config;
use crate::image::{ImageError, ImageStore};
use crate::oci::OciError;

/// Errors of runtime operations; mapped to gRPC status codes at the server.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No sandbox has this id (or unique id prefix).
    #[error("pod sandbox {id:?} not found")]
    SandboxNotFound {
        /// The id as given.
        id: String,
    },
    /// No container has this id (or unique id prefix).
    #[error("container {id:?} not found")]
    ContainerNotFound {
        /// The id as given.
        id: String,
    },
    /// An id prefix matches more than one object.
    #[error("id prefix {id:?} is ambiguous")]
    AmbiguousId {
        /// The prefix.
        id: String,
    },
    /// The name is reserved by another sandbox or container.
    #[error("name {name:?} is reserved for {owner:?}")]
    AlreadyExists {
        /// The reserved name.
        name: String,
        /// Id of the object holding it.
        owner: String,
    },
    /// A required field is missing or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The sandbox is not ready for new containers.
    #[error("pod sandbox {id:?} is not ready")]
    SandboxNotReady {
        /// Sandbox id.
        id: String,
    },
    /// The operation needs a running container.
    #[error("container {id:?} is not running")]
    ContainerNotRunning {
        /// Container id.
        id: String,
    },
    /// An ExecSync command outlived its timeout and was killed.
    #[error("command {cmd:?} in container {id:?} timed out after {timeout:?}")]
    ExecTimeout {
        /// Container id.
        id: String,
        /// The command.
        cmd: Vec<String>,
        /// The timeout it exceeded.
        timeout: std::time::Duration,
    },
    /// The image is not in the store.
    #[error("image {image:?} not found")]
    ImageNotFound {
        /// Image reference.
        image: String,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The container config cannot become an OCI spec.
    #[error(transparent)]
    Spec(#[from] OciError),
    /// CNI failed for a sandbox.
    #[error("pod sandbox {sandbox}: network: {source}")]
    Network {
        /// Sandbox id.
        sandbox: String,
        /// CNI error.
        #[source]
        source: cni_plugins::CniError,
    },
    /// The configured helper executable cannot be used.
    #[error("choosing the helper executable: {0}")]
    Helper(#[source] crate::reexec::ChildError),
    /// The pod's namespaces could not be made and pinned.
    #[error("pod sandbox {sandbox}: pinning the namespaces: {message}")]
    Pin {
        /// Sandbox id.
        sandbox: String,
        /// What went wrong.
        message: String,
    },
    /// The infra process did not come up.
    #[error("pod sandbox {sandbox}: infra process: {message}")]
    Infra {
        /// Sandbox id.
        sandbox: String,
        /// What went wrong.
        message: String,
    },
    /// The container monitor or `runc create` failed.
    #[error("container {container}: {message}")]
    Create {
        /// Container id.
        container: String,
        /// The runtime's message.
        message: String,
    },
    /// The monitor did not reopen the container's log.
    #[error("container {container}: reopening the log: {reason}")]
    ReopenLog {
        /// Container id.
        container: String,
        /// What went wrong.
        reason: String,
    },
    /// The OCI runtime binary failed.
    #[error(transparent)]
    OciRuntime(#[from] OciRuntimeError),
    /// A mount or unmount failed.
    #[error("{op} {path}: {source}")]
    Mount {
        /// What was attempted.
        op: &'static str,
        /// Mount point.
        path: PathBuf,
        /// Errno.
        #[source]
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.to_owned();
        move |source| RuntimeError::Io { op, path, source }
    }
}

/// A sandbox or container known to the runtime.
struct Entry<R> {
    /// Serialises lifecycle operations on this object.
    op: tokio::sync::Mutex<()>,
    /// The record; held only briefly.
    record: Mutex<R>,
}

impl<R: Clone> Entry<R> {
    fn new(record: R) -> Arc<Self> {
        Arc::new(Self {
            op: tokio::sync::Mutex::new(()),
            record: Mutex::new(record),
        })
    }

    fn get(&self) -> R {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut R)) -> R {
        let mut guard = self.record.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
        guard.clone()
    }
}

/// The runtime; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    images: ImageStore,
    cni: cni_plugins::Invoker,
    oci: OciRuntime,
    /// What monitors and infra processes run from.
    helper: crate::reexec::HelperExe,
    sandboxes: RwLock<HashMap<String, Arc<Entry<sandbox::SandboxRecord>>>>,
    containers: RwLock<HashMap<String, Arc<Entry<container::ContainerRecord>>>>,
    /// Exit notifications per container id (true once exited).
    exits: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Reserved names (sandbox and container) → owner id.
    names: Mutex<HashMap<String, String>>,
    /// oom_score_adj of this process, the floor for containers.
    oom_score_adj: i32,
    /// This process's capability bounding set: all a container can get.
    capabilities: std::collections::HashSet<oci_spec::runtime::Capability>,
    /// Whether the host has the hugetlb cgroup controller (else hugepage
    /// limits are dropped, see [`crate::oci::linux_resources`]).
    hugetlb_controller: bool,
    /// Last CPU sample per container `(timestamp ns, usage ns)`, to turn
    /// cumulative CPU time into a rate between two stats calls.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    /// Container lifecycle events for GetContainerEvents subscribers.
    events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
    /// The pod CIDRs from the kubelet's UpdateRuntimeConfig, for `ipRanges`.
    pod_cidrs: Mutex<Vec<String>>,
}

/// Events kept for a slow GetContainerEvents subscriber before it lags.
const EVENT_BUFFER: usize = 1024;

/// Persisted as `<dir>/<file>` via a temp file and rename.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    replace_file(path, &encode_json(path, value)?)
}

/// Runs the bulk work `f` (files, mounts, bundles, records) on one of the
/// [`BULK`](cni_plugins::work::BULK) threads, at the default CPU priority,
/// so under load the async workers keep answering calls.
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, cni_plugins::work::TaskLost> {
    cni_plugins::work::BULK.run(f).await
}

/// [`write_json`] from async code: encoded here, written and renamed on a
/// bulk-work thread (a rename can wait on the journal of a busy disk).
async fn persist_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let data = encode_json(path, value)?;
    let path = path.to_owned();
    let failed = path.clone();
    off_workers(move || replace_file(&path, &data))
        .await
        .map_err(|e| RuntimeError::Io {
            op: "writing",
            path: failed,
            source: std::io::Error::other(e),
        })?
}

fn encode_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, RuntimeError> {
    serde_json::to_vec_pretty(value).map_err(|e| RuntimeError::Io {
        op: "encoding",
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Replaces `path` with `data` through a temp file and rename.
fn replace_file(path: &Path, data: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, data).map_err(RuntimeError::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(RuntimeError::io("renaming", path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// 64 hex characters, like containerd's ids.
fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Finds the unique key with prefix `id`.
fn resolve_prefix<V>(map: &HashMap<String, V>, id: &str) -> Result<Option<String>, RuntimeError> {
    if id.is_empty() {
        return Ok(None);
    }
    if map.contains_key(id) {
        return Ok(Some(id.to_owned()));
    }
    let mut found = map.keys().filter(|k| k.starts_with(id));
    match (found.next(), found.next()) {
        (Some(k), None) => Ok(Some(k.clone())),
        (Some(_), Some(_)) => Err(RuntimeError::AmbiguousId { id: id.to_owned() }),
        _ => Ok(None),
    }
}

/// The entries a CRI list filter's `id` selects: all for an empty id, the one
/// with that id or unique prefix, else none.
fn select_entries<R>(map: &RwLock<HashMap<String, Arc<Entry<R>>>>, id: &str) -> Vec<Arc<Entry<R>>> {
    let map = map.read().unwrap_or_else(|e| e.into_inner());
    if id.is_empty() {
        return map.values().cloned().collect();
    }
    match resolve_prefix(&map, id) {
        Ok(Some(key)) => vec![Arc::clone(&map[&key])],
        Ok(None) | Err(_) => Vec::new(),
    }
}

/// Whether `labels` match every pair of `selector`.
pub(crate) fn labels_match(
    labels: &HashMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Runtime {
    /// Opens the runtime state under `config.root`, adopting what a previous
    /// run left (running containers keep running) and removing half-made
    /// objects.
    pub async fn open(config: Config) -> Result<Self, RuntimeError> {
        for dir in ["sandboxes", "containers", "runc", "cni-cache"] {
            let p = config.root.join(dir);
            std::fs::create_dir_all(&p).map_err(RuntimeError::io("creating", &p))?;
        }
        let helper = crate::reexec::HelperExe::resolve(config.helper_path.as_deref())
            .map_err(RuntimeError::Helper)?;
        let images = ImageStore::open(&config.root)?;
        let cni = cni_plugins::Invoker::new(
            config.cni_conf_dir.clone(),
            config.cni_bin_dirs.clone(),
            config.root.join("cni-cache"),
        )
        .with_plugin_timeout(config.cni_plugin_timeout);
        let oci = OciRuntime {
            binary: config.oci_runtime.clone(),
            root: config.root.join("runc"),
        };
        let oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let rt = Runtime {
            inner: Arc::new(Inner {
                config,
                images,
                cni,
                oci,
                helper,
                sandboxes: RwLock::default(),
                containers: RwLock::default(),
                exits: Mutex::default(),
                names: Mutex::default(),
                oom_score_adj,
                capabilities: crate::oci::current_bounding_set(),
                hugetlb_controller: crate::stats::has_hugetlb_controller(std::path::Path::new(
                    crate::stats::CGROUP_ROOT,
                )),
                cpu_samples: Mutex::default(),
                events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
                pod_cidrs: Mutex::default(),
            }),
        };
        rt.load_sandboxes().await;
        rt.load_containers().await;
        Ok(rt)
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// The runtime configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the pod network can take sandboxes: a valid network config
    /// exists in the conf dir (read afresh, so one written later is picked
    /// up) and, for a spec 1.1 network, every plugin answers STATUS. The
    /// error says why not.
    pub async fn network_ready(&self) -> Result<(), cni_plugins::CniError> {
        let net = self.inner.cni.load_network()?;
        self.inner.cni.status(&net).await
    }

    /// Records the pod CIDRs the kubelet pushed (UpdateRuntimeConfig); new
    /// sandboxes get them as the `ipRanges` capability.
    pub fn set_pod_cidrs(&self, cidrs: Vec<String>) {
        let mut current = self
            .inner
            .pod_cidrs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *current != cidrs {
            tracing::info!(pod_cidrs = ?cidrs, "pod CIDRs updated");
            *current = cidrs;
        }
    }

    fn pod_cidrs(&self) -> Vec<String> {
        self.inner
            .pod_cidrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// CNI GC: releases the attachments of sandboxes that no longer exist
    /// (a crash between ADD and the record's removal, a lost state dir) and,
    /// for spec 1.1 networks, lets the plugins collect what is not in use.
    /// The sandboxes that exist are every sandbox directory, listed under
    /// the invoker's GC lock: a RunPodSandbox writes its directory before
    /// its ADD, so one in flight is never collected. Without a network
    /// config there is nothing to collect.
    pub async fn cni_gc(&self) -> Result<cni_plugins::GcOutcome, cni_plugins::CniError> {
        let net = match self.inner.cni.load_network() {
            Ok(net) => net,
            Err(cni_plugins::CniError::NoNetworkConfig { .. }) => {
                return Ok(cni_plugins::GcOutcome::default());
            }
            Err(e) => return Err(e),
        };
        let sandboxes = self.inner.config.root.join("sandboxes");
        self.inner
            .cni
            .gc(&net, || {
                list_dirs(&sandboxes)
                    .into_iter()
                    .map(|id| cni_plugins::GcAttachment {
                        container_id: id,
                        ifname: network::POD_IFNAME.to_owned(),
                    })
                    .collect()
            })
            .await
    }

    /// A stream of container lifecycle events from now on.
    pub fn subscribe_events(
        &self,
    ) -> tokio::sync::broadcast::Receiver<cri::ContainerEventResponse> {
        self.inner.events.subscribe()
    }

    /// Publishes an event with the pod's current sandbox and container
    /// statuses (what the kubelet's evented PLEG consumes).
    fn emit_container_event(
        &self,
        container_id: &str,
        sandbox_id: &str,
        kind: cri::ContainerEventType,
    ) {
        if self.inner.events.receiver_count() == 0 {
            return;
        }
        let containers_statuses = self
            .container_ids_of_sandbox(sandbox_id)
            .iter()
            .filter_map(|id| self.container_status(id).ok())
            .collect();
        let event = cri::ContainerEventResponse {
            container_id: container_id.to_owned(),
            container_event_type: kind as i32,
            created_at: crate::monitor::now_ns(),
            pod_sandbox_status: self.pod_sandbox_status(sandbox_id).ok(),
            containers_statuses,
        };
        // No subscriber left between the check and the send is fine.
        let _ = self.inner.events.send(event);
    }

    fn reserve_name(&self, name: &str, owner: &str) -> Result<(), RuntimeError> {
        let mut names = self.inner.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = names.get(name) {
            return Err(RuntimeError::AlreadyExists {
                name: name.to_owned(),
                owner: existing.clone(),
            });
        }
        names.insert(name.to_owned(), owner.to_owned());
        Ok(())
    }

    fn release_name(&self, name: &str) {
        self.inner
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    fn sandbox_entry(
        &self,
        id: &str,
    ) -> Result<(String, Arc<Entry<sandbox::SandboxRecord>>), RuntimeError> {
        let map = self
            .inner
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let key = resolve_prefix(&map, id)?
            .ok_or_else(|| RuntimeError::SandboxNotFound { id: id.to_owned() })?;
        let entry = Arc::clone(&map[&key]);
        Ok((key, entry))
    }

    fn container_entry(
        &self,
        id: &str,
    ) -> Result<(String, Arc<Entry<container::ContainerRecord>>), RuntimeError> {
        let map = self
            .inner
            .containers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let key = resolve_prefix(&map, id)?
            .ok_or_else(|| RuntimeError::ContainerNotFound { id: id.to_owned() })?;
        let entry = Arc::clone(&map[&key]);
        Ok((key, entry))
    }

    fn container_ids_of_sandbox(&self, sandbox_id: &str) -> Vec<String> {
        let map = self
            .inner
            .containers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, e)| e.get().sandbox_id == sandbox_id)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.inner.config.root.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.config.root.join("containers").join(id)
    }
}

/// Ids of the directories under `dir` (one per object).
fn list_dirs(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_plugins::exec::thread_nice;

    #[test]
    fn bulk_work_runs_at_the_default_priority_between_raised_tasks_needs_cap_sys_nice() {
        let rt = crate::tuning::daemon_runtime().unwrap();
        rt.block_on(async {
            let pool = tokio::task::spawn_blocking(thread_nice).await.unwrap();
            if pool != Some(crate::tuning::DAEMON_NICE) {
                eprintln!("skipped: raising a thread's priority needs CAP_SYS_NICE (root)");
                return;
            }
            assert_eq!(off_workers(thread_nice).await.unwrap(), Some(0));
            // The thread that ran it is raised again for the pool's own work.
            let (during, after) = tokio::task::spawn_blocking(|| {
                let during = crate::tuning::at_default_priority(thread_nice);
                (during, thread_nice())
            })
            .await
            .unwrap();
            assert_eq!((during, after), (Some(0), Some(crate::tuning::DAEMON_NICE)));
        });
    }
}
