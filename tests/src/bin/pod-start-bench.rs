//! Pod start latency: time from writing a static pod manifest to its
//! container being reported running by the CRI runtime, for our kubelet on
//! its embedded cri-shim and on containerd, and for the upstream kubelet 1.20
//! (`$UPSTREAM_K8S_BIN_DIR`, see `scripts/upstream-k8s.sh`) on a standalone
//! cri-shim and on containerd, side by side in one run.
//!
//! `pod-start-bench [--runs 20] [--runtime cri-shim|containerd|both]
//! [--kubelet ours|upstream|both]` prints min/median/p95/max per pair.
//! Needs root (real runc, netns, CNI).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Parser, ValueEnum};
use e2e::harness::{self, Node, RuntimeKind};
use e2e::upstream::{self, UpstreamNode, UpstreamRuntime};
use k8s_cri::v1 as cri;

#[derive(Parser)]
struct Args {
    /// Measured pod starts per runtime (after one warm-up start).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Which runtimes to measure: cri-shim (embedded in our kubelet, a
    /// standalone one under the upstream kubelet), containerd, or both.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    runtime: Which,
    /// Which kubelets to measure: ours, the upstream 1.20 one, or both.
    #[arg(long, value_enum, default_value_t = Kubelets::Ours)]
    kubelet: Kubelets,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    #[value(alias = "embedded")]
    CriShim,
    Containerd,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kubelets {
    Ours,
    Upstream,
    Both,
}

/// CNI network numbers of the upstream nodes (235-239 belong to the
/// upstream trials and this benchmark).
const UPSTREAM_CRI_SHIM_NETWORK: u32 = 237;
const UPSTREAM_CONTAINERD_NETWORK: u32 = 238;

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: docker.io/library/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sleep\", \"3600\"]\n"
    )
}

/// A kubelet on its runtime, as measured.
enum Subject {
    Ours(Node),
    Upstream(UpstreamNode),
}

impl Subject {
    async fn start(kubelet: Kubelets, runtime: Which) -> anyhow::Result<Self> {
        Ok(match (kubelet, runtime) {
            (Kubelets::Ours, Which::CriShim) => {
                Subject::Ours(Node::start(RuntimeKind::Embedded).await?)
            }
            (Kubelets::Ours, _) => Subject::Ours(Node::start(RuntimeKind::Containerd).await?),
            (_, Which::CriShim) => Subject::Upstream(
                UpstreamNode::start(UpstreamRuntime::CriShim, UPSTREAM_CRI_SHIM_NETWORK).await?,
            ),
            (_, _) => Subject::Upstream(
                UpstreamNode::start(UpstreamRuntime::Containerd, UPSTREAM_CONTAINERD_NETWORK)
                    .await?,
            ),
        })
    }

    fn endpoint(&self) -> &str {
        match self {
            Subject::Ours(node) => &node.kubelet.endpoint,
            Subject::Upstream(node) => node.runtime.endpoint(),
        }
    }

    fn pod_name(&self, name: &str) -> String {
        match self {
            Subject::Ours(node) => node.kubelet.pod_name(name),
            Subject::Upstream(node) => node.kubelet.pod_name(name),
        }
    }

    fn write_manifest(&self, file: &str, content: &str) -> anyhow::Result<()> {
        match self {
            Subject::Ours(node) => node.kubelet.write_manifest(file, content),
            Subject::Upstream(node) => node.kubelet.write_manifest(file, content),
        }
    }

    fn remove_manifest(&self, file: &str) -> anyhow::Result<()> {
        match self {
            Subject::Ours(node) => node.kubelet.remove_manifest(file),
            Subject::Upstream(node) => node.kubelet.remove_manifest(file),
        }
    }

    /// Waits until the kubelet has taken pod `pod` down. Ours removes the
    /// sandbox; the upstream kubelet stops it and leaves the removal to its
    /// garbage collector (once a minute), so then the benchmark removes the
    /// stopped sandbox and its containers itself, to keep the starts apart.
    async fn wait_pod_gone(&self, cri: &mut harness::CriClient, pod: &str) -> anyhow::Result<()> {
        let poll = Duration::from_millis(20);
        match self {
            Subject::Ours(_) => {
                harness::wait_until("the pod is gone", harness::DEADLINE, poll, async || {
                    Ok(harness::list_sandboxes(cri, Some(pod))
                        .await?
                        .is_empty()
                        .then_some(()))
                })
                .await
            }
            Subject::Upstream(_) => {
                let ready = cri::PodSandboxState::SandboxReady as i32;
                let running = cri::ContainerState::ContainerRunning as i32;
                harness::wait_until("the pod is stopped", harness::DEADLINE, poll, async || {
                    let sandboxes = harness::list_sandboxes(cri, Some(pod)).await?;
                    let containers = harness::list_containers(cri, Some(pod)).await?;
                    let stopped = !sandboxes.iter().any(|s| s.state == ready)
                        && !containers.iter().any(|c| c.state == running);
                    Ok(stopped.then_some(()))
                })
                .await?;
                for container in harness::list_containers(cri, Some(pod)).await? {
                    cri.remove_container(cri::RemoveContainerRequest {
                        container_id: container.id,
                    })
                    .await?;
                }
                for sandbox in harness::list_sandboxes(cri, Some(pod)).await? {
                    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: sandbox.id,
                    })
                    .await?;
                }
                Ok(())
            }
        }
    }
}

/// Starts one pod and returns the time until its container runs.
async fn one_start(
    subject: &Subject,
    cri: &mut harness::CriClient,
    i: usize,
) -> anyhow::Result<Duration> {
    let name = format!("bench{i}");
    let pod = subject.pod_name(&name);
    let file = format!("{name}.yaml");
    let running = cri::ContainerState::ContainerRunning as i32;
    let t0 = Instant::now();
    subject.write_manifest(&file, &manifest(&name))?;
    loop {
        let containers = harness::list_containers(cri, Some(&pod)).await?;
        if containers.iter().any(|c| c.state == running) {
            break;
        }
        ensure!(t0.elapsed() < harness::DEADLINE, "pod {pod} did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = t0.elapsed();
    subject.remove_manifest(&file)?;
    subject.wait_pod_gone(cri, &pod).await?;
    Ok(elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn measure(kubelet: Kubelets, runtime: Which, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let subject = Subject::start(kubelet, runtime)
        .await
        .context("starting the test node")?;
    let mut cri = harness::cri_client(subject.endpoint()).await?;
    harness::wait_until(
        "the runtime answers",
        harness::DEADLINE,
        Duration::from_millis(50),
        async || {
            Ok(cri
                .version(cri::VersionRequest::default())
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    one_start(&subject, &mut cri, 0).await.context("warm-up")?;
    let mut samples = Vec::with_capacity(runs);
    for i in 1..=runs {
        samples.push(one_start(&subject, &mut cri, i).await?);
    }
    if let Subject::Upstream(node) = subject {
        let (outcome, logs) = node.shutdown_with_logs().await;
        outcome.map_err(|e| anyhow::anyhow!("{e:#}\n{logs}"))?;
    }
    Ok(samples)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        harness::is_root(),
        "pod-start-bench needs root (runc, network namespaces, CNI)"
    );
    if args.kubelet != Kubelets::Ours {
        upstream::bin_dir().map_err(anyhow::Error::msg)?;
    }
    let kubelets: &[Kubelets] = match args.kubelet {
        Kubelets::Ours => &[Kubelets::Ours],
        Kubelets::Upstream => &[Kubelets::Upstream],
        Kubelets::Both => &[Kubelets::Ours, Kubelets::Upstream],
    };
    let runtimes: &[Which] = match args.runtime {
        Which::CriShim => &[Which::CriShim],
        Which::Containerd => &[Which::Containerd],
        Which::Both => &[Which::CriShim, Which::Containerd],
    };
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "manifest written -> container running, {} runs each (after 1 warm-up)",
        args.runs
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "kubelet / runtime", "min", "median", "p95", "max"
    );
    for &kubelet in kubelets {
        for &runtime in runtimes {
            let label = match (kubelet, runtime) {
                (Kubelets::Ours, Which::CriShim) => "ours / embedded cri-shim",
                (Kubelets::Ours, _) => "ours / containerd 1.6",
                (_, Which::CriShim) => "upstream 1.20.2 / cri-shim (v1alpha2)",
                (_, _) => "upstream 1.20.2 / containerd 1.6",
            };
            let mut samples = rt.block_on(measure(kubelet, runtime, args.runs))?;
            samples.sort();
            let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
            println!(
                "{:<40} {:>9} {:>9} {:>9} {:>9}",
                label,
                ms(samples[0]),
                ms(percentile(&samples, 0.5)),
                ms(percentile(&samples, 0.95)),
                ms(samples[samples.len() - 1])
            );
        }
    }
    Ok(())
}
