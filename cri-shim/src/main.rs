//! `cri-shim`: serve CRI v1 on a unix socket, import images, list pods.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cri_shim::config::{
    DEFAULT_CNI_BIN_DIRS, DEFAULT_CNI_CONF_DIR, DEFAULT_CNI_GC_INTERVAL, DEFAULT_LISTEN,
    DEFAULT_ROOT,
};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "cri-shim", version, about = "CRI v1 runtime over runc")]
struct Cli {
    /// Persistent state root (images, bundles, sandbox records).
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Listen address for serving (unix:///path.sock).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// OCI runtime binary.
    #[arg(long, default_value = "runc")]
    runtime: PathBuf,
    /// CNI network configuration directory.
    #[arg(long, default_value = DEFAULT_CNI_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// CNI plugin directories, comma-separated, searched in order.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_CNI_BIN_DIRS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    cni_bin_dir: Vec<String>,
    /// A registry (host[:port]) to pull from in plain HTTP; repeatable.
    /// Loopback registries (localhost, 127.0.0.1, [::1]) always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Seconds one CNI plugin may run before it is killed.
    #[arg(long, default_value_t = cni_plugins::DEFAULT_PLUGIN_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    cni_plugin_timeout: u64,
    /// Seconds between CNI GC runs (one always runs at start); 0: only at start.
    #[arg(long, default_value_t = DEFAULT_CNI_GC_INTERVAL.as_secs())]
    cni_gc_interval: u64,
    /// The cri-shim-helper executable for container monitors and pod infra
    /// processes [default: cri-shim-helper next to this binary; without one,
    /// this binary re-executed].
    #[arg(long, value_name = "PATH")]
    helper_path: Option<PathBuf>,
    /// Log filter (tracing env-filter syntax), also read from RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Add an OCI image layout (tar archive or directory) to the store under --root.
    Import {
        /// OCI image layout tar or directory.
        path: PathBuf,
        /// Reference to name the image (default: from the layout's annotations).
        #[arg(long)]
        name: Option<String>,
    },
    /// List pod sandboxes and their containers on a CRI endpoint.
    Ps {
        /// CRI endpoint to ask.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        endpoint: String,
    },
}

fn main() -> anyhow::Result<()> {
    // Helper roles, when no cri-shim-helper is installed and this binary is
    // re-executed for them.
    cri_shim::reexec::run_child_role_if_requested();
    cri_shim::tuning::limit_malloc_arenas();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = cri_shim::tuning::raise_thread_priority() {
        tracing::warn!(%error, nice = cri_shim::tuning::DAEMON_NICE, "running at the default CPU priority");
    }
    let rt = cri_shim::tuning::daemon_runtime().context("starting tokio")?;
    match cli.command {
        Some(Command::Import { path, name }) => {
            let store = cri_shim::image::ImageStore::open(&cli.root)
                .with_context(|| format!("opening image store under {}", cli.root.display()))?;
            let images = store
                .import(&path, name.as_deref())
                .with_context(|| format!("importing {}", path.display()))?;
            for image in images {
                println!("{} {}", image.id, image.repo_tags.join(","));
            }
            Ok(())
        }
        Some(Command::Ps { endpoint }) => rt.block_on(ps(&endpoint)),
        None => {
            let config = cri_shim::Config {
                listen: cli.listen,
                root: cli.root,
                oci_runtime: cli.runtime,
                cni_conf_dir: cli.cni_conf_dir,
                cni_bin_dirs: cli.cni_bin_dir.into_iter().map(PathBuf::from).collect(),
                insecure_registries: cli.insecure_registries,
                cni_plugin_timeout: std::time::Duration::from_secs(cli.cni_plugin_timeout),
                cni_gc_interval: std::time::Duration::from_secs(cli.cni_gc_interval),
                helper_path: cli.helper_path,
            };
            rt.block_on(async {
                let cancel = CancellationToken::new();
                let on_signal = cancel.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    on_signal.cancel();
                });
                cri_shim::serve(config, cancel).await.context("cri-shim")
            })
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn ps(endpoint: &str) -> anyhow::Result<()> {
    let channel = cri_shim::client::connect(endpoint).await?;
    let mut client = RuntimeServiceClient::new(channel);
    let sandboxes = client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    let containers = client
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    println!(
        "{:<14} {:<40} {:<9} {:<16} CONTAINERS",
        "POD SANDBOX", "NAMESPACE/NAME", "STATE", "IP"
    );
    for s in sandboxes {
        let status = client
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: s.id.clone(),
                verbose: false,
            })
            .await
            .context("PodSandboxStatus")?
            .into_inner()
            .status
            .unwrap_or_default();
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        let meta = s.metadata.unwrap_or_default();
        let state = if s.state == cri::PodSandboxState::SandboxReady as i32 {
            "Ready"
        } else {
            "NotReady"
        };
        let mine: Vec<String> = containers
            .iter()
            .filter(|c| c.pod_sandbox_id == s.id)
            .map(|c| {
                let m = c.metadata.clone().unwrap_or_default();
                let st = cri::ContainerState::try_from(c.state)
                    .map(|st| {
                        st.as_str_name()
                            .trim_start_matches("CONTAINER_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                format!(
                    "{}({} attempt={} {})",
                    m.name,
                    &c.id[..12.min(c.id.len())],
                    m.attempt,
                    st
                )
            })
            .collect();
        println!(
            "{:<14} {:<40} {:<9} {:<16} {}",
            &s.id[..12.min(s.id.len())],
            format!("{}/{}", meta.namespace, meta.name),
            state,
            if ip.is_empty() { "-" } else { &ip },
            mine.join(" ")
        );
    }
    Ok(())
}
