//! A CRI client channel over a unix socket, shared by the kubelet, the CLI and tests.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors connecting to a CRI endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Only `unix://` endpoints (or bare absolute paths) are supported.
    #[error("unsupported CRI endpoint {0:?}: expected unix:///path/to.sock")]
    Endpoint(String),
    /// The transport could not connect.
    #[error("connecting to CRI endpoint {endpoint}: {source}")]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        /// Underlying error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Parses `unix:///run/x.sock` or `/run/x.sock` into a socket path.
pub fn socket_path(endpoint: &str) -> Option<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Opens a channel to a CRI server on a unix socket. The channel reconnects
/// lazily, so a runtime restart does not need a new channel.
pub async fn connect(endpoint: &str) -> Result<Channel, ConnectError> {
    let path = socket_path(endpoint).ok_or_else(|| ConnectError::Endpoint(endpoint.to_owned()))?;
    // The URI is ignored by the connector below; tonic needs a syntactically valid one.
    Endpoint::from_static("http://[::1]:0")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| ConnectError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })
}
