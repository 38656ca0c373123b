//! cri-shim: a CRI v1 runtime over an OCI runtime binary (`runc`).
//!
//! The gRPC server ([`serve`]) starts two kinds of helper processes: the
//! per-container monitor that holds stdio and records the exit code, and the
//! sandbox infra process that pins a pod's namespaces. Both run from the small
//! `cri-shim-helper` executable (crate `cri-shim-helper`), found next to the
//! server's own executable or given by [`Config::helper_path`]. Without it the
//! server re-executes itself, so whatever binary links this library (the
//! `cri-shim` binary, or the kubelet when it embeds the runtime) must call
//! [`reexec::run_child_role_if_requested`] first thing in `main`.

pub mod authority;
pub mod client;
pub mod config;
pub mod image;
pub mod oci;
pub mod reexec;
pub mod runtime;
pub mod seccomp;
pub mod server;
pub mod stats;
pub mod tuning;
pub mod v1alpha2;

pub use config::Config;
pub use cri_shim_helper::{infra, logs, monitor, pin};

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use k8s_cri::v1alpha2::image_service_server::ImageServiceServer as AlphaImageServiceServer;
use k8s_cri::v1alpha2::runtime_service_server::RuntimeServiceServer as AlphaRuntimeServiceServer;
use tokio_util::sync::CancellationToken;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is not a `unix://` endpoint.
    #[error("unsupported listen address {0:?}: only unix:// sockets are served")]
    ListenAddress(String),
    /// The socket could not be bound.
    #[error("binding {path}: {source}")]
    Bind {
        /// Socket path.
        path: std::path::PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime state could not be opened.
    #[error("opening runtime state: {0}")]
    Runtime(#[from] runtime::RuntimeError),
    /// The registry client could not be set up.
    #[error("setting up image pulls: {0}")]
    Registry(#[from] image::registry::RegistryError),
    /// The gRPC transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// CNI GC once at start (after the runtime state was loaded, so half-made
/// sandboxes are already torn down) and then every `interval` (never again
/// when zero), until `cancel`.
async fn cni_gc_loop(
    runtime: runtime::Runtime,
    interval: std::time::Duration,
    cancel: CancellationToken,
) {
    loop {
        match runtime.cni_gc().await {
            Ok(outcome) if !outcome.released.is_empty() => tracing::info!(
                released = outcome.released.len(),
                "CNI GC released the attachments of sandboxes that no longer exist"
            ),
            Ok(_) => tracing::debug!("CNI GC found nothing to release"),
            // Retried at the next round; the network keeps working meanwhile.
            Err(error) => tracing::warn!(%error, "CNI GC failed"),
        }
        if interval.is_zero() {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// How long shutdown waits for in-flight CRI calls.
pub const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves CRI v1 on `config.listen` until `cancel` fires. Containers keep
/// running when it returns.
pub async fn serve(config: Config, cancel: CancellationToken) -> Result<(), ServeError> {
    let path = client::socket_path(&config.listen)
        .ok_or_else(|| ServeError::ListenAddress(config.listen.clone()))?;
    let bind_err = |source| ServeError::Bind {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_err(e)),
        _ => {}
    }
    let runtime = runtime::Runtime::open(config.clone()).await?;
    tokio::spawn(cni_gc_loop(
        runtime.clone(),
        config.cni_gc_interval,
        cancel.clone(),
    ));
    let listener = tokio::net::UnixListener::bind(&path).map_err(bind_err)?;
    tracing::info!(socket = %path.display(), root = %config.root.display(), "cri-shim serving CRI v1");
    let images = image::ImageService::new(
        runtime.images().clone(),
        config.root.clone(),
        config.registry_config(),
    )?;
    let runtime_server = server::RuntimeServer::new(runtime);
    let server = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(runtime_server.clone()))
        .add_service(ImageServiceServer::new(images.clone()))
        .add_service(AlphaRuntimeServiceServer::new(v1alpha2::AlphaRuntime(
            runtime_server,
        )))
        .add_service(AlphaImageServiceServer::new(v1alpha2::AlphaImage(images)))
        .serve_with_incoming_shutdown(
            // The repair lets kubelets before 1.26 in, whose grpc-go sends the
            // socket path as :authority (see the authority module).
            futures::TryStreamExt::map_ok(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                authority::AuthorityRepair::new,
            ),
            cancel.cancelled(),
        );
    // Graceful shutdown waits for in-flight calls, and a StopContainer may be
    // sitting out a long grace period. Bound the drain: containers outlive
    // the server anyway, and whatever a cut-short call left half-made is
    // cleaned up when the runtime state is opened next time.
    let drain_deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!(drain = ?SHUTDOWN_DRAIN, "in-flight CRI calls cut short at shutdown");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&path);
    Ok(result?)
}
