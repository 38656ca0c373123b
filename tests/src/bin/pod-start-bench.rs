//! Pod start latency: time from writing a static pod manifest to its
//! container being reported running by the CRI runtime, for the kubelet on
//! its embedded cri-shim and on containerd, side by side in one run.
//!
//! `pod-start-bench [--runs 20] [--runtime embedded|containerd|both]`
//! prints min/median/p95/max per runtime. Needs root (real runc, netns, CNI).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Parser, ValueEnum};
use e2e::harness::{self, Node, RuntimeKind};
use k8s_cri::v1 as cri;

#[derive(Parser)]
struct Args {
    /// Measured pod starts per runtime (after one warm-up start).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Which runtimes to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    runtime: Which,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    Embedded,
    Containerd,
    Both,
}

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: docker.io/library/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sleep\", \"3600\"]\n"
    )
}

/// Starts one pod and returns the time until its container runs.
async fn one_start(
    node: &Node,
    cri: &mut harness::CriClient,
    i: usize,
) -> anyhow::Result<Duration> {
    let name = format!("bench{i}");
    let pod = node.kubelet.pod_name(&name);
    let file = format!("{name}.yaml");
    let running = cri::ContainerState::ContainerRunning as i32;
    let t0 = Instant::now();
    node.kubelet.write_manifest(&file, &manifest(&name))?;
    loop {
        let containers = harness::list_containers(cri, Some(&pod)).await?;
        if containers.iter().any(|c| c.state == running) {
            break;
        }
        ensure!(t0.elapsed() < harness::DEADLINE, "pod {pod} did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = t0.elapsed();
    node.kubelet.remove_manifest(&file)?;
    harness::wait_until(
        "the pod is gone",
        harness::DEADLINE,
        Duration::from_millis(20),
        async || {
            Ok(harness::list_sandboxes(cri, Some(&pod))
                .await?
                .is_empty()
                .then_some(()))
        },
    )
    .await?;
    Ok(elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn measure(kind: RuntimeKind, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let node = Node::start(kind).await.context("starting the test node")?;
    let mut cri = harness::cri_client(&node.kubelet.endpoint).await?;
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
    one_start(&node, &mut cri, 0).await.context("warm-up")?;
    let mut samples = Vec::with_capacity(runs);
    for i in 1..=runs {
        samples.push(one_start(&node, &mut cri, i).await?);
    }
    Ok(samples)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        harness::is_root(),
        "pod-start-bench needs root (runc, network namespaces, CNI)"
    );
    let kinds: &[(RuntimeKind, &str)] = match args.runtime {
        Which::Embedded => &[(RuntimeKind::Embedded, "embedded cri-shim")],
        Which::Containerd => &[(RuntimeKind::Containerd, "containerd 1.6")],
        Which::Both => &[
            (RuntimeKind::Embedded, "embedded cri-shim"),
            (RuntimeKind::Containerd, "containerd 1.6"),
        ],
    };
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "manifest written -> container running, {} runs each (after 1 warm-up)",
        args.runs
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9}",
        "runtime", "min", "median", "p95", "max"
    );
    for (kind, label) in kinds {
        let mut samples = rt.block_on(measure(*kind, args.runs))?;
        samples.sort();
        let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
        println!(
            "{:<20} {:>9} {:>9} {:>9} {:>9}",
            label,
            ms(samples[0]),
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.95)),
            ms(samples[samples.len() - 1])
        );
    }
    Ok(())
}
