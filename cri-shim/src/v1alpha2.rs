//! `runtime.v1alpha2` on the same socket as `runtime.v1` (as containerd 1.6
//! does), so kubelets from 1.20 on can use cri-shim.
//!
//! Every v1alpha2 RPC is forwarded to the v1 implementation. The two APIs
//! share message names and field numbers (v1 began as a copy of v1alpha2 and
//! only added fields), so a message converts by encoding it in one package
//! and decoding it in the other: fields v1alpha2 lacks are dropped, nothing
//! else changes. Only `Version` differs: it reports `v1alpha2`.

use k8s_cri::v1;
use k8s_cri::v1alpha2 as alpha;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::image::ImageService;
use crate::server::RuntimeServer;

/// Re-encodes a message of one CRI package as its twin in the other.
fn convert<A: Message, B: Message + Default>(message: &A) -> Result<B, Status> {
    B::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("converting between CRI v1 and v1alpha2: {e}")))
}

/// Implements a v1alpha2 service trait for a wrapper of its v1 twin: the
/// listed unary RPCs are forwarded, `{ ... }` holds hand-written methods.
/// The whole impl comes from the macro so `async_trait` sees every method.
macro_rules! forward_service {
    (
        impl $alpha_trait:path, for $ty:ty => $v1_trait:path;
        { $($custom:tt)* }
        $( $method:ident ( $req:ident ) -> $resp:ident ; )*
    ) => {
        #[tonic::async_trait]
        impl $alpha_trait for $ty {
            $($custom)*
            $(
                async fn $method(
                    &self,
                    request: Request<alpha::$req>,
                ) -> Result<Response<alpha::$resp>, Status> {
                    let request = Request::new(convert::<_, v1::$req>(request.get_ref())?);
                    let response = <_ as $v1_trait>::$method(&self.0, request).await?;
                    Ok(Response::new(convert::<_, alpha::$resp>(response.get_ref())?))
                }
            )*
        }
    };
}

/// The v1alpha2 RuntimeService over the v1 one.
#[derive(Clone)]
pub struct AlphaRuntime(pub RuntimeServer);

forward_service! {
    impl alpha::runtime_service_server::RuntimeService, for AlphaRuntime
        => v1::runtime_service_server::RuntimeService;
    {
        async fn version(
            &self,
            request: Request<alpha::VersionRequest>,
        ) -> Result<Response<alpha::VersionResponse>, Status> {
            use v1::runtime_service_server::RuntimeService as _;
            let request = Request::new(convert::<_, v1::VersionRequest>(request.get_ref())?);
            let response = self.0.version(request).await?.into_inner();
            Ok(Response::new(alpha::VersionResponse {
                version: response.version,
                runtime_name: response.runtime_name,
                runtime_version: response.runtime_version,
                runtime_api_version: "v1alpha2".into(),
            }))
        }
    }
    run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
    stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
    remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
    pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
    list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
    create_container(CreateContainerRequest) -> CreateContainerResponse;
    start_container(StartContainerRequest) -> StartContainerResponse;
    stop_container(StopContainerRequest) -> StopContainerResponse;
    remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
    list_containers(ListContainersRequest) -> ListContainersResponse;
    container_status(ContainerStatusRequest) -> ContainerStatusResponse;
    update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
    reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
    exec_sync(ExecSyncRequest) -> ExecSyncResponse;
    exec(ExecRequest) -> ExecResponse;
    attach(AttachRequest) -> AttachResponse;
    port_forward(PortForwardRequest) -> PortForwardResponse;
    container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
    list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
    pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
    list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
    update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
    status(StatusRequest) -> StatusResponse;
}

/// The v1alpha2 ImageService over the v1 one.
#[derive(Clone)]
pub struct AlphaImage(pub ImageService);

forward_service! {
    impl alpha::image_service_server::ImageService, for AlphaImage
        => v1::image_service_server::ImageService;
    {}
    list_images(ListImagesRequest) -> ListImagesResponse;
    image_status(ImageStatusRequest) -> ImageStatusResponse;
    pull_image(PullImageRequest) -> PullImageResponse;
    remove_image(RemoveImageRequest) -> RemoveImageResponse;
    image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn sandbox_config() -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 3,
            }),
            hostname: "web".into(),
            log_directory: "/var/log/pods/x".into(),
            dns_config: Some(v1::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: vec![v1::PortMapping {
                protocol: v1::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            }],
            labels: HashMap::from([("app".into(), "web".into())]),
            annotations: HashMap::from([("a".into(), "b".into())]),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/pod1".into(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(v1::NamespaceOption {
                        network: v1::NamespaceMode::Node as i32,
                        pid: v1::NamespaceMode::Container as i32,
                        ipc: v1::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    run_as_user: Some(v1::Int64Value { value: 1000 }),
                    ..Default::default()
                }),
                sysctls: HashMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fields_shared_by_both_versions_survive_a_round_trip() {
        let v1_config = sandbox_config();
        let alpha_config: alpha::PodSandboxConfig = convert(&v1_config).unwrap();
        assert_eq!(alpha_config.metadata.as_ref().unwrap().attempt, 3);
        assert_eq!(alpha_config.port_mappings[0].host_port, 5353);
        assert_eq!(
            alpha_config.linux.as_ref().unwrap().cgroup_parent,
            "/kubepods/pod1"
        );
        let back: v1::PodSandboxConfig = convert(&alpha_config).unwrap();
        assert_eq!(back, v1_config);
    }

    #[test]
    fn enums_keep_their_numbers() {
        let status = v1::ContainerStatus {
            id: "c".into(),
            state: v1::ContainerState::ContainerExited as i32,
            exit_code: 137,
            reason: "OOMKilled".into(),
            ..Default::default()
        };
        let alpha_status: alpha::ContainerStatus = convert(&status).unwrap();
        assert_eq!(
            alpha_status.state,
            alpha::ContainerState::ContainerExited as i32
        );
        assert_eq!(
            (alpha_status.exit_code, alpha_status.reason.as_str()),
            (137, "OOMKilled")
        );
    }
}
