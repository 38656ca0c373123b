//! cri-shim: a CRI v1 runtime over an OCI runtime binary (`runc`).
//!
//! The same library serves three roles of one binary: the gRPC server
//! ([`serve`]), the sandbox infra process that pins a pod's namespaces, and
//! the per-container monitor that holds stdio and records the exit code.
//! Whatever binary links this library (the `cri-shim` binary, or the kubelet
//! when it embeds the runtime) must call [`reexec::run_child_role_if_requested`]
//! first thing in `main`, because the server re-executes `/proc/self/exe`.

pub mod client;
pub mod config;
pub mod reexec;

pub use config::Config;

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
    /// The gRPC transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves CRI v1 on `config.listen` until `cancel` fires.
pub async fn serve(config: Config, cancel: CancellationToken) -> Result<(), ServeError> {
    let _ = (config, cancel);
    unimplemented!("the runtime lands in the next commits")
}
