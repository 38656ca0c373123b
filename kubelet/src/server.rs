//! The kubelet's read-only HTTP server (`readOnlyPort`, 10255 by default):
//! `/healthz` and `/pods`, the PodList with live statuses, as upstream
//! serves them without authentication. The authenticated server on 10250
//! comes with API mode.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::status::PodStatusStore;

/// Errors of the kubelet server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening address could not be bound.
    #[error("binding the read-only server to {address}")]
    Bind {
        /// Address.
        address: SocketAddr,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving on {address}")]
    Serve {
        /// Address.
        address: SocketAddr,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound read-only server, not yet serving.
#[derive(Debug)]
pub struct ReadOnlyServer {
    listener: TcpListener,
    address: SocketAddr,
    pods: Arc<PodStatusStore>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PodList<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: ListMeta,
    items: Vec<&'a RawValue>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn pods(State(store): State<Arc<PodStatusStore>>) -> impl IntoResponse {
    let items = store.list_json();
    let list = PodList {
        kind: "PodList",
        api_version: "v1",
        metadata: ListMeta::default(),
        items: items.iter().map(AsRef::as_ref).collect(),
    };
    // Serializing API types cannot fail; an empty body would be the only outcome.
    let body = serde_json::to_vec(&list).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

impl ReadOnlyServer {
    /// Binds `address` (port 0 picks a free port; see [`Self::local_addr`]).
    pub async fn bind(address: SocketAddr, pods: Arc<PodStatusStore>) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServerError::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { address, source })?;
        Ok(Self {
            listener,
            address,
            pods,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `cancel` fires.
    pub async fn serve(self, cancel: CancellationToken) -> Result<(), ServerError> {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/pods", get(pods))
            .route("/pods/", get(pods))
            .with_state(self.pods);
        tracing::info!(address = %self.address, "read-only server listening");
        let address = self.address;
        axum::serve(self.listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
            .map_err(|source| ServerError::Serve { address, source })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    async fn get(address: SocketAddr, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_healthz_and_the_pod_list() {
        let store = Arc::new(PodStatusStore::default());
        let pod: Pod = serde_yaml::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns, uid: u1}\nspec: {containers: [{name: a}]}\nstatus: {phase: Running}\n",
        )
        .unwrap();
        store.set(pod.clone());
        let server = ReadOnlyServer::bind("127.0.0.1:0".parse().unwrap(), store.clone())
            .await
            .unwrap();
        let address = server.local_addr();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(cancel.clone()));

        let (head, body) = get(address, "/healthz").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "ok");

        let (head, body) = get(address, "/pods").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_lowercase()
                .contains("content-type: application/json")
        );
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["items"][0]["metadata"]["name"], "p");
        assert_eq!(list["items"][0]["status"]["phase"], "Running");

        // A changed status is served, not the JSON of the one before.
        let mut done = pod;
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        store.set(done);
        let (_, body) = get(address, "/pods").await;
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["items"][0]["status"]["phase"], "Succeeded");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);

        let (head, _) = get(address, "/nope").await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
