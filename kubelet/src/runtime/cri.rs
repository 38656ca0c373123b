//! The narrow CRI surface the kubelet uses, as a trait, with the gRPC client
//! implementation. Pod logic is written against [`RuntimeService`] so it can be
//! tested with an in-memory runtime.

use std::future::Future;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tracing::Instrument;

/// The CRI API version this kubelet speaks.
pub const CRI_API_VERSION: &str = "v1";

/// A failed CRI call.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The runtime answered with an error status.
    #[error("CRI {method}")]
    Status {
        /// RPC name.
        method: &'static str,
        /// Status from the runtime.
        #[source]
        status: Box<tonic::Status>,
    },
    /// No answer within the runtime request timeout.
    #[error("CRI {method} timed out after {timeout:?}")]
    Timeout {
        /// RPC name.
        method: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// The answer lacks a field the CRI requires.
    #[error("CRI {method} answered without {field}")]
    MissingField {
        /// RPC name.
        method: &'static str,
        /// Missing field.
        field: &'static str,
    },
}

/// The container events a runtime streams (`GetContainerEvents`).
pub type ContainerEvents = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, CriError>> + Send>,
>;

impl CriError {
    /// The runtime does not implement the method (e.g. containerd 1.6 and
    /// `GetContainerEvents`).
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, Self::Status { status, .. } if status.code() == tonic::Code::Unimplemented)
    }

    /// The object named in the request does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// The CRI runtime and image calls the kubelet makes. Ids are the runtime's.
pub trait RuntimeService: Send + Sync + 'static {
    /// `Version`.
    fn version(&self) -> impl Future<Output = Result<cri::VersionResponse, CriError>> + Send;
    /// `RunPodSandbox`; returns the sandbox id.
    fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    /// `StopPodSandbox`.
    fn stop_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    /// `RemovePodSandbox`.
    fn remove_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    /// `PodSandboxStatus`.
    fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<cri::PodSandboxStatus, CriError>> + Send;
    /// `ListPodSandbox`.
    fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> impl Future<Output = Result<Vec<cri::PodSandbox>, CriError>> + Send;
    /// `CreateContainer`; returns the container id.
    fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    /// `StartContainer`.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    /// `StopContainer`; `timeout` is the grace period in seconds.
    fn stop_container(
        &self,
        id: &str,
        timeout: i64,
    ) -> impl Future<Output = Result<(), CriError>> + Send;
    /// `RemoveContainer`.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    /// `ListContainers`.
    fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> impl Future<Output = Result<Vec<cri::Container>, CriError>> + Send;
    /// `ContainerStatus`.
    fn container_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<cri::ContainerStatus, CriError>> + Send;
    /// `ImageStatus`; `None` if the image is not present.
    fn image_status(
        &self,
        image: cri::ImageSpec,
    ) -> impl Future<Output = Result<Option<cri::Image>, CriError>> + Send;
    /// `PullImage`; returns the image reference.
    fn pull_image(
        &self,
        image: cri::ImageSpec,
        sandbox_config: cri::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    /// `GetContainerEvents`: the stream of container events from now on.
    fn container_events(&self) -> impl Future<Output = Result<ContainerEvents, CriError>> + Send;
    /// `ExecSync`: runs `cmd` in the container, bounded by `timeout`.
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<cri::ExecSyncResponse, CriError>> + Send;
}

/// [`RuntimeService`] over a CRI gRPC channel. Every call but `PullImage` is
/// bounded by the runtime request timeout (pulls may legitimately take long).
#[derive(Debug, Clone)]
pub struct RemoteRuntimeService {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

impl RemoteRuntimeService {
    /// Wraps a connected channel.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout,
        }
    }

    async fn call<T>(
        &self,
        method: &'static str,
        timeout: Option<Duration>,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        let call = call.instrument(tracing::debug_span!("cri_call", method));
        let result = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| CriError::Timeout { method, timeout })?,
            None => call.await,
        };
        result
            .map(tonic::Response::into_inner)
            .map_err(|status| CriError::Status {
                method,
                status: Box::new(status),
            })
    }
}

impl RuntimeService for RemoteRuntimeService {
    async fn version(&self) -> Result<cri::VersionResponse, CriError> {
        let request = cri::VersionRequest {
            version: CRI_API_VERSION.to_owned(),
        };
        self.call(
            "Version",
            Some(self.timeout),
            self.runtime.clone().version(request),
        )
        .await
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String, CriError> {
        let request = cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let mut client = self.runtime.clone();
        let response = self.call(
            "RunPodSandbox",
            Some(self.timeout),
            client.run_pod_sandbox(request),
        );
        Ok(response.await?.pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call(
            "StopPodSandbox",
            Some(self.timeout),
            self.runtime.clone().stop_pod_sandbox(request),
        )
        .await
        .map(drop)
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        let mut client = self.runtime.clone();
        self.call(
            "RemovePodSandbox",
            Some(self.timeout),
            client.remove_pod_sandbox(request),
        )
        .await
        .map(drop)
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, CriError> {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        let mut client = self.runtime.clone();
        let response = self.call(
            "PodSandboxStatus",
            Some(self.timeout),
            client.pod_sandbox_status(request),
        );
        response.await?.status.ok_or(CriError::MissingField {
            method: "PodSandboxStatus",
            field: "status",
        })
    }

    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, CriError> {
        let request = cri::ListPodSandboxRequest { filter };
        let mut client = self.runtime.clone();
        let response = self.call(
            "ListPodSandbox",
            Some(self.timeout),
            client.list_pod_sandbox(request),
        );
        Ok(response.await?.items)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let mut client = self.runtime.clone();
        let response = self.call(
            "CreateContainer",
            Some(self.timeout),
            client.create_container(request),
        );
        Ok(response.await?.container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let request = cri::StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.call(
            "StartContainer",
            Some(self.timeout),
            self.runtime.clone().start_container(request),
        )
        .await
        .map(drop)
    }

    async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), CriError> {
        let request = cri::StopContainerRequest {
            container_id: id.to_owned(),
            timeout,
        };
        // The runtime waits up to the grace period before it kills: allow for it.
        let grace = Duration::from_secs(timeout.max(0).unsigned_abs());
        let mut client = self.runtime.clone();
        self.call(
            "StopContainer",
            Some(self.timeout + grace),
            client.stop_container(request),
        )
        .await
        .map(drop)
    }

    async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let request = cri::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        let mut client = self.runtime.clone();
        self.call(
            "RemoveContainer",
            Some(self.timeout),
            client.remove_container(request),
        )
        .await
        .map(drop)
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, CriError> {
        let request = cri::ListContainersRequest { filter };
        let mut client = self.runtime.clone();
        let response = self.call(
            "ListContainers",
            Some(self.timeout),
            client.list_containers(request),
        );
        Ok(response.await?.containers)
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CriError> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let mut client = self.runtime.clone();
        let response = self.call(
            "ContainerStatus",
            Some(self.timeout),
            client.container_status(request),
        );
        response.await?.status.ok_or(CriError::MissingField {
            method: "ContainerStatus",
            field: "status",
        })
    }

    async fn image_status(&self, image: cri::ImageSpec) -> Result<Option<cri::Image>, CriError> {
        let request = cri::ImageStatusRequest {
            image: Some(image),
            verbose: false,
        };
        let mut client = self.images.clone();
        let response = self.call(
            "ImageStatus",
            Some(self.timeout),
            client.image_status(request),
        );
        Ok(response.await?.image)
    }

    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let request = cri::PullImageRequest {
            image: Some(image),
            auth: None,
            sandbox_config: Some(sandbox_config),
        };
        let mut client = self.images.clone();
        let response = self.call("PullImage", None, client.pull_image(request));
        Ok(response.await?.image_ref)
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        let request = cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd,
            timeout: timeout.as_secs().max(1) as i64,
        };
        let mut client = self.runtime.clone();
        // The runtime enforces `timeout`; ours only guards against a runtime
        // that does not answer at all.
        let response = self.call(
            "ExecSync",
            Some(timeout + self.timeout),
            client.exec_sync(request),
        );
        response.await
    }

    async fn container_events(&self) -> Result<ContainerEvents, CriError> {
        use futures::StreamExt;
        let mut client = self.runtime.clone();
        // Only opening the stream is bounded; the stream itself lasts.
        let stream = self
            .call(
                "GetContainerEvents",
                Some(self.timeout),
                client.get_container_events(cri::GetEventsRequest {}),
            )
            .await?;
        Ok(Box::pin(stream.map(|event| {
            event.map_err(|status| CriError::Status {
                method: "GetContainerEvents",
                status: Box::new(status),
            })
        })))
    }
}
