//! The Kubernetes node agent: turns desired pods into containers through a
//! CRI runtime.
//!
//! [`run`] wires the pieces: the static pod source publishes desired pods,
//! the PLEG reports runtime changes, and the pod workers sync each pod
//! through the runtime manager. With no remote runtime endpoint, cri-shim
//! runs in-process on a private socket and is reached over that socket like
//! any other runtime.

pub mod actions;
pub mod backoff;
pub mod cgroups;
pub mod config;
pub mod config_file;
pub mod hooks;
pub mod labels;
pub mod pleg;
pub mod pod_workers;
pub mod prober;
pub mod qos;
pub mod resources;
pub mod runtime;
pub mod server;
pub mod startup;
pub mod static_pods;
pub mod status;

#[cfg(test)]
mod fake_runtime;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{EmbeddedRuntimeConfig, KubeletConfig, RuntimeEndpoint};
use crate::pleg::GenericPleg;
use crate::pod_workers::{PodWorkers, StatusReporter};
use crate::runtime::{CriError, RemoteRuntimeService, RuntimeManager, RuntimeService};
use crate::server::{ReadOnlyServer, ServerError};
use crate::static_pods::StaticPodSource;
use crate::status::PodStatusStore;

/// How long the kubelet waits for the embedded runtime's socket to accept.
const EMBEDDED_RUNTIME_STARTUP: Duration = Duration::from_secs(60);

/// Displays an error with all its sources: `outer: inner: root cause`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            let text = error.to_string();
            // Some errors (tonic, hyper) repeat their source in their own
            // message; print each text once.
            if !previous.contains(&text) {
                write!(f, ": {text}")?;
            }
            previous = text;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn error_chain_lists_sources_once() {
        let error = Outer(Middle(std::io::Error::other("disk on fire")));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "outer: middle: disk on fire"
        );
    }
}

/// Errors that stop the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// `--root-dir` could not be created.
    #[error("creating root directory {path}")]
    RootDir {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stale embedded runtime socket could not be removed.
    #[error("removing stale runtime socket {path}")]
    StaleSocket {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime endpoint could not be reached.
    #[error("connecting to the container runtime")]
    Connect(#[source] cri_shim::client::ConnectError),
    /// The embedded runtime did not accept connections in time.
    #[error("the embedded runtime did not come up on {path} within {timeout:?}")]
    EmbeddedRuntimeStartup {
        /// Socket path.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// Last connection error.
        #[source]
        source: cri_shim::client::ConnectError,
    },
    /// The embedded runtime stopped with an error.
    #[error("the embedded runtime failed")]
    EmbeddedRuntime(#[source] cri_shim::ServeError),
    /// The embedded runtime task panicked or was aborted.
    #[error("the embedded runtime task ended abnormally")]
    EmbeddedRuntimeTask(#[source] tokio::task::JoinError),
    /// The embedded runtime stopped although nobody asked it to.
    #[error("the embedded runtime stopped unexpectedly")]
    EmbeddedRuntimeStopped,
    /// The runtime did not answer `Version`.
    #[error("querying the container runtime version")]
    RuntimeVersion(#[source] CriError),
    /// The node's resources could not be read.
    #[error("reading the node's resources (root dir {path})")]
    NodeResources {
        /// Root dir.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The pod cgroup hierarchy could not be created.
    #[error("creating the pod cgroup hierarchy")]
    Cgroups(#[source] cgroups::CgroupError),
    /// The kubelet server could not start.
    #[error("starting the kubelet server")]
    Server(#[source] ServerError),
}

type EmbeddedRuntime = JoinHandle<Result<(), cri_shim::ServeError>>;

fn start_embedded_runtime(
    config: &EmbeddedRuntimeConfig,
    root_dir: &Path,
    cancel: CancellationToken,
) -> Result<EmbeddedRuntime, KubeletError> {
    std::fs::create_dir_all(root_dir).map_err(|source| KubeletError::RootDir {
        path: root_dir.to_owned(),
        source,
    })?;
    match std::fs::remove_file(&config.socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(KubeletError::StaleSocket {
                path: config.socket.clone(),
                source: e,
            });
        }
        _ => {}
    }
    let shim_config = cri_shim::Config {
        listen: format!("unix://{}", config.socket.display()),
        root: config.root.clone(),
        cni_conf_dir: config.cni_conf_dir.clone(),
        cni_bin_dirs: config.cni_bin_dirs.clone(),
        helper_path: config.helper_path.clone(),
        insecure_registries: config.insecure_registries.clone(),
        ..cri_shim::Config::default()
    };
    tracing::info!(socket = %config.socket.display(), root = %config.root.display(), "starting embedded runtime");
    Ok(tokio::spawn(cri_shim::serve(shim_config, cancel)))
}

fn embedded_runtime_ended(
    result: Result<Result<(), cri_shim::ServeError>, tokio::task::JoinError>,
) -> KubeletError {
    match result {
        Ok(Ok(())) => KubeletError::EmbeddedRuntimeStopped,
        Ok(Err(e)) => KubeletError::EmbeddedRuntime(e),
        Err(e) => KubeletError::EmbeddedRuntimeTask(e),
    }
}

/// Connects to the embedded runtime, retrying while it binds its socket.
async fn connect_embedded(
    socket: &Path,
    server: &mut EmbeddedRuntime,
    cancel: &CancellationToken,
) -> Result<Option<tonic::transport::Channel>, KubeletError> {
    let endpoint = format!("unix://{}", socket.display());
    let deadline = tokio::time::Instant::now() + EMBEDDED_RUNTIME_STARTUP;
    let mut retry = Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
    loop {
        let error = match cri_shim::client::connect(&endpoint).await {
            Ok(channel) => return Ok(Some(channel)),
            Err(error) => error,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(KubeletError::EmbeddedRuntimeStartup {
                path: socket.to_owned(),
                timeout: EMBEDDED_RUNTIME_STARTUP,
                source: error,
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            result = &mut *server => return Err(embedded_runtime_ended(result)),
            _ = tokio::time::sleep(retry.next_delay()) => {}
        }
    }
}

/// Runs the kubelet until `cancel` fires. Pods keep running after it returns
/// (as upstream); remove their manifests first to tear them down.
pub async fn run(config: KubeletConfig, cancel: CancellationToken) -> Result<(), KubeletError> {
    let cancel = cancel.child_token();
    let mut embedded = None;
    let result = run_with_runtime(&config, &cancel, &mut embedded).await;
    cancel.cancel();
    let stopped = stop_embedded(embedded).await;
    result.and(stopped)
}

/// Connects to the runtime (starting the embedded one if configured) and
/// runs the kubelet's tasks until cancelled. `embedded` is left holding a
/// still-running embedded runtime for the caller to stop.
async fn run_with_runtime(
    config: &KubeletConfig,
    cancel: &CancellationToken,
    embedded: &mut Option<EmbeddedRuntime>,
) -> Result<(), KubeletError> {
    let channel = match &config.runtime {
        RuntimeEndpoint::Remote(endpoint) => cri_shim::client::connect(endpoint)
            .await
            .map_err(KubeletError::Connect)?,
        RuntimeEndpoint::Embedded(embedded_config) => {
            let server = embedded.insert(start_embedded_runtime(
                embedded_config,
                &config.root_dir,
                cancel.child_token(),
            )?);
            match connect_embedded(&embedded_config.socket, server, cancel).await {
                Ok(Some(channel)) => channel,
                Ok(None) => return Ok(()),
                Err(error) => {
                    if !matches!(error, KubeletError::EmbeddedRuntimeStartup { .. }) {
                        *embedded = None;
                    }
                    return Err(error);
                }
            }
        }
    };
    let service = RemoteRuntimeService::new(channel, config.runtime_request_timeout);
    let version = service
        .version()
        .await
        .map_err(KubeletError::RuntimeVersion)?;
    tracing::info!(
        runtime.name = version.runtime_name,
        runtime.version = version.runtime_version,
        runtime.api_version = version.runtime_api_version,
        node.name = config.node_name,
        "connected to container runtime"
    );

    let store = Arc::new(PodStatusStore::default());
    let read_only_server = match config.read_only_address {
        Some(address) => Some(
            ReadOnlyServer::bind(address, store.clone())
                .await
                .map_err(KubeletError::Server)?,
        ),
        None => None,
    };
    let host_ips = vec![config::node_ip(config.node_ip).to_string()];
    std::fs::create_dir_all(&config.root_dir).map_err(|source| KubeletError::RootDir {
        path: config.root_dir.clone(),
        source,
    })?;
    let capacity =
        volume_drivers::NodeAllocatable::from_host(&config.root_dir).map_err(|source| {
            KubeletError::NodeResources {
                path: config.root_dir.clone(),
                source,
            }
        })?;
    // Allocatable: capacity minus kubeReserved and systemReserved.
    let node_allocatable = volume_drivers::NodeAllocatable {
        cpu_millicores: capacity
            .cpu_millicores
            .saturating_sub((config.reserved_cpu * 1000.0) as u64),
        memory_bytes: capacity
            .memory_bytes
            .saturating_sub(config.reserved_memory as u64),
        ..capacity
    };
    let status = StatusReporter {
        store,
        runtime_name: version.runtime_name.clone(),
        host_ips: host_ips.clone(),
    };
    let runtime = Arc::new(
        RuntimeManager::new(
            service,
            config.pod_logs_dir.clone(),
            config.resolv_conf.clone(),
        )
        .with_node(
            host_ips,
            node_allocatable.cpu_millicores as f64 / 1000.0,
            node_allocatable.memory_bytes as f64,
        )
        .with_volumes(Arc::new(volume_manager(config, node_allocatable)))
        .with_seccomp_root(config.root_dir.join("seccomp"))
        .with_cgroups_from(config, &node_allocatable)?
        .with_cluster_dns(runtime::sandbox::ClusterDns {
            servers: config.cluster_dns.iter().map(ToString::to_string).collect(),
            domain: config.cluster_domain.clone(),
        }),
    );
    let (desired_tx, desired_rx) = watch::channel(None);
    let source = StaticPodSource::new(
        config.pod_manifest_path.clone(),
        config.node_name.clone(),
        config.file_check_frequency,
    );
    let (pleg_tx, pleg_rx) = mpsc::channel(64);
    let pleg = GenericPleg::new(runtime.clone(), config.pleg_relist_period);
    let workers = PodWorkers::new(runtime, cancel.clone()).with_status(status);

    let server_task = read_only_server.map(|server| {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(error) = server.serve(cancel).await {
                tracing::error!(error = %ErrorChain(&error), "read-only server failed");
            }
        })
    });
    let source_task = tokio::spawn(source.run(desired_tx, cancel.clone()));
    let pleg_task = tokio::spawn(pleg.run(pleg_tx, cancel.clone()));
    let server_ended = match embedded.as_mut() {
        Some(server) => tokio::select! {
            _ = workers.run(desired_rx, pleg_rx) => None,
            ended = server => Some(ended),
        },
        None => {
            workers.run(desired_rx, pleg_rx).await;
            None
        }
    };
    cancel.cancel();
    for task in [source_task, pleg_task].into_iter().chain(server_task) {
        if let Err(error) = task.await {
            tracing::error!(error = %error, "kubelet task ended abnormally");
        }
    }
    match server_ended {
        Some(ended) => {
            *embedded = None;
            // On shutdown the server may finish before the workers do.
            if cancel.is_cancelled() && matches!(ended, Ok(Ok(()))) {
                Ok(())
            } else {
                Err(embedded_runtime_ended(ended))
            }
        }
        None => Ok(()),
    }
}

/// Cgroup root of every controller on this host.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

impl<R: RuntimeService> RuntimeManager<R> {
    /// With `cgroupsPerQOS`: creates the QoS hierarchy and puts pods in it.
    fn with_cgroups_from(
        self,
        config: &KubeletConfig,
        allocatable: &volume_drivers::NodeAllocatable,
    ) -> Result<Self, KubeletError> {
        let Some(root) = &config.cgroup_root else {
            return Ok(self);
        };
        let manager = Arc::new(cgroups::CgroupFs::new(CGROUP_MOUNT));
        let layout = cgroups::PodCgroups::new(root);
        layout
            .ensure_hierarchy(
                manager.as_ref(),
                allocatable.cpu_millicores,
                allocatable.memory_bytes,
            )
            .map_err(KubeletError::Cgroups)?;
        tracing::info!(cgroup = layout.kubepods(), "pod cgroup hierarchy ready");
        Ok(self.with_cgroups(manager, layout))
    }
}

fn volume_manager(
    config: &KubeletConfig,
    node_allocatable: volume_drivers::NodeAllocatable,
) -> volume_drivers::VolumeManager {
    volume_drivers::VolumeManager::new(
        volume_drivers::VolumeManagerConfig {
            root_dir: config.root_dir.clone(),
            flex_plugin_dir: config.volume_plugin_dir.clone(),
            node_name: config.node_name.clone(),
            node_allocatable,
        },
        Arc::new(volume_drivers::NixMounter::default()),
    )
}

/// Waits for the cancelled embedded runtime to shut down.
async fn stop_embedded(server: Option<EmbeddedRuntime>) -> Result<(), KubeletError> {
    match server {
        None => Ok(()),
        Some(server) => match server.await {
            Ok(Ok(())) => Ok(()),
            other => Err(embedded_runtime_ended(other)),
        },
    }
}
