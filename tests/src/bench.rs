//! Shared pieces of the benchmark binaries: CRI pods configured as a kubelet
//! configures them, percentiles and process memory.

use std::time::Duration;

use anyhow::Context;
use k8s_cri::v1 as cri;

use crate::harness::{self, CriClient};

/// A pod sandbox config as a kubelet sends it (pod network and IPC, a pid
/// namespace per container), logs under `log_dir/<name>`.
pub fn sandbox_config(name: &str, log_dir: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(harness::pod_namespaces(cri::NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A `sleep 3600` busybox container config.
pub fn container_config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: harness::BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "main/0.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(harness::pod_namespaces(cri::NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Starts one pod; returns its sandbox id.
pub async fn start_pod(
    cri: &mut CriClient,
    name: &str,
    log_dir: &std::path::Path,
) -> anyhow::Result<String> {
    let config = sandbox_config(name, log_dir);
    let sandbox = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let container = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(container_config()),
            sandbox_config: Some(config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: container,
    })
    .await
    .context("StartContainer")?;
    Ok(sandbox)
}

/// Stops and removes one pod (containers killed at once: timeout 0).
pub async fn stop_pod(cri: &mut CriClient, sandbox: &str) -> anyhow::Result<()> {
    let containers = cri
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: sandbox.to_owned(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    for c in containers {
        cri.stop_container(cri::StopContainerRequest {
            container_id: c.id,
            timeout: 0,
        })
        .await?;
    }
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.to_owned(),
    })
    .await?;
    crate::harness::remove_sandbox(cri, sandbox).await?;
    Ok(())
}

/// (RSS, PSS) of a process in KiB, from `smaps_rollup` (zeros if it is gone).
/// PSS splits shared pages (the binary's text) among the processes mapping
/// them, so many small helpers are not charged the same pages again and again.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
