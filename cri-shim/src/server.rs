//! The CRI v1 RuntimeService over [`Runtime`], and the one mapping of
//! runtime errors to gRPC status codes.

use std::pin::Pin;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::runtime::{Runtime, RuntimeError};

/// CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";
/// Name reported by `Version`.
pub const RUNTIME_NAME: &str = "cri-shim";

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Self {
        let msg = e.to_string();
        match e {
            RuntimeError::SandboxNotFound { .. }
            | RuntimeError::ContainerNotFound { .. }
            | RuntimeError::ImageNotFound { .. } => Status::not_found(msg),
            RuntimeError::AlreadyExists { .. } => Status::already_exists(msg),
            RuntimeError::InvalidArgument(_)
            | RuntimeError::AmbiguousId { .. }
            | RuntimeError::Spec(_) => Status::invalid_argument(msg),
            RuntimeError::SandboxNotReady { .. } | RuntimeError::ContainerNotRunning { .. } => {
                Status::failed_precondition(msg)
            }
            // The kubelet turns DeadlineExceeded into a probe timeout.
            RuntimeError::ExecTimeout { .. } => Status::deadline_exceeded(msg),
            _ => Status::unknown(msg),
        }
    }
}

/// The RuntimeService implementation.
#[derive(Clone)]
pub struct RuntimeServer {
    runtime: Runtime,
}

impl RuntimeServer {
    /// Serves `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

type Result<T> = std::result::Result<Response<T>, Status>;

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented by cri-shim yet"))
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServer {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Result<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<cri::RunPodSandboxResponse> {
        let config = req
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
        let pod_sandbox_id = self.runtime.run_pod_sandbox(config).await?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<cri::StopPodSandboxResponse> {
        self.runtime
            .stop_pod_sandbox(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<cri::RemovePodSandboxResponse> {
        self.runtime
            .remove_pod_sandbox(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let status = self
            .runtime
            .pod_sandbox_status(&req.into_inner().pod_sandbox_id)?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<cri::ListPodSandboxResponse> {
        let items = self.runtime.list_pod_sandboxes(req.into_inner().filter)?;
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<cri::CreateContainerResponse> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer: config is required"))?;
        let container_id = self
            .runtime
            .create_container(&req.pod_sandbox_id, config, req.sandbox_config)
            .await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<cri::StartContainerResponse> {
        self.runtime
            .start_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<cri::StopContainerResponse> {
        let req = req.into_inner();
        self.runtime
            .stop_container(&req.container_id, req.timeout)
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<cri::RemoveContainerResponse> {
        self.runtime
            .remove_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<cri::ListContainersResponse> {
        let containers = self.runtime.list_containers(req.into_inner().filter)?;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<cri::ContainerStatusResponse> {
        let status = self
            .runtime
            .container_status(&req.into_inner().container_id)?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(status),
            ..Default::default()
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<cri::UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        self.runtime
            .update_container_resources(&req.container_id, req.linux)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<cri::ReopenContainerLogResponse> {
        self.runtime
            .reopen_container_log(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<cri::ExecSyncResponse> {
        let req = req.into_inner();
        let out = self
            .runtime
            .exec_sync(&req.container_id, req.cmd, req.timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(&self, _: Request<cri::ExecRequest>) -> Result<cri::ExecResponse> {
        Err(unimplemented("Exec"))
    }

    async fn attach(&self, _: Request<cri::AttachRequest>) -> Result<cri::AttachResponse> {
        Err(unimplemented("Attach"))
    }

    async fn port_forward(
        &self,
        _: Request<cri::PortForwardRequest>,
    ) -> Result<cri::PortForwardResponse> {
        Err(unimplemented("PortForward"))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<cri::ContainerStatsResponse> {
        let stats = self
            .runtime
            .container_stats(&req.into_inner().container_id)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<cri::ListContainerStatsResponse> {
        let stats = self.runtime.list_container_stats(req.into_inner().filter)?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<cri::PodSandboxStatsResponse> {
        let stats = self
            .runtime
            .pod_sandbox_stats(&req.into_inner().pod_sandbox_id)?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<cri::ListPodSandboxStatsResponse> {
        let stats = self
            .runtime
            .list_pod_sandbox_stats(req.into_inner().filter)?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<cri::UpdateRuntimeConfigResponse> {
        // The kubelet pushes the node's pod CIDR here; sandboxes pass it to
        // plugins declaring the `ipRanges` capability.
        let pod_cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !pod_cidr.is_empty() {
            self.runtime
                .set_pod_cidrs(crate::runtime::network::parse_pod_cidrs(&pod_cidr));
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, _: Request<cri::StatusRequest>) -> Result<cri::StatusResponse> {
        let network = match self.runtime.network_ready().await {
            Ok(()) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                ..Default::default()
            },
            Err(e) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: cni plugin not initialized: {e}"),
            },
        };
        let runtime = cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            ..Default::default()
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            ..Default::default()
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<cri::CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }

    type GetContainerEventsStream = Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = std::result::Result<cri::ContainerEventResponse, Status>,
                > + Send,
        >,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Self::GetContainerEventsStream> {
        let events = self.runtime.subscribe_events();
        let stream = futures::stream::unfold(events, |mut events| async move {
            loop {
                match events.recv().await {
                    Ok(event) => return Some((Ok(event), events)),
                    Err(RecvError::Lagged(missed)) => {
                        // The subscriber relists on its own schedule too;
                        // dropping it would cost it more than a gap.
                        tracing::warn!(missed, "GetContainerEvents subscriber lagged");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<cri::ListMetricDescriptorsResponse> {
        Err(unimplemented("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<cri::ListPodSandboxMetricsResponse> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}
