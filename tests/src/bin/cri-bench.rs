//! cri-shim against containerd through the same CRI client, in one run:
//!
//! - pod start (RunPodSandbox + CreateContainer + StartContainer) and pod stop
//!   (StopContainer + StopPodSandbox + RemovePodSandbox), min/median/p95/max
//!   over `--cycles` pods started and stopped one at a time;
//! - memory with `--pods` pods running: the sum of RSS of the runtime's own
//!   processes (cri-shim + its monitors and infra processes; containerd + its
//!   containerd-shim-runc-v2 processes; containers themselves excluded), with
//!   the cri-shim figures also per process kind (server, monitor, infra) and
//!   the executable the helpers run from.
//!
//! Pods are configured as a kubelet configures them (pod network and IPC,
//! a pid namespace per container).
//!
//! `cri-bench [--cycles 30] [--pods 50]`; needs root. Both runtimes use the
//! reference CNI plugins (bridge + host-local) on their own bridge.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use e2e::bench::{memory_kib, percentile, start_pod, stop_pod};
use e2e::harness::{self, CniNetwork, Containerd, CriClient, CriShim, TestImages};

#[derive(Parser)]
struct Args {
    /// Pods started and stopped one at a time per runtime (after 1 warm-up).
    #[arg(long, default_value_t = 30)]
    cycles: usize,
    /// Pods running at once for the memory figure.
    #[arg(long, default_value_t = 50)]
    pods: usize,
}

struct Timings {
    start: Vec<Duration>,
    stop: Vec<Duration>,
}

async fn cycles(
    cri: &mut CriClient,
    n: usize,
    log_dir: &std::path::Path,
) -> anyhow::Result<Timings> {
    let warm = start_pod(cri, "warmup", log_dir).await?;
    stop_pod(cri, &warm).await?;
    let mut t = Timings {
        start: Vec::new(),
        stop: Vec::new(),
    };
    for i in 0..n {
        let t0 = Instant::now();
        let sandbox = start_pod(cri, &format!("cycle{i}"), log_dir).await?;
        t.start.push(t0.elapsed());
        let t1 = Instant::now();
        stop_pod(cri, &sandbox).await?;
        t.stop.push(t1.elapsed());
    }
    Ok(t)
}

/// Summed (RSS, PSS) of `pids`.
fn sum_memory(pids: impl IntoIterator<Item = u32>) -> (u64, u64) {
    pids.into_iter()
        .map(memory_kib)
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2))
}

/// (pid, ppid, cmdline) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Field 4 (ppid) follows the parenthesised command name.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        out.push((
            pid,
            ppid,
            String::from_utf8_lossy(&cmdline).replace('\0', " "),
        ));
    }
    out
}

/// cri-shim server + its direct children (monitors and infra processes):
/// ((RSS, PSS), helper count), after printing the figures per process kind.
fn cri_shim_memory(server: u32) -> ((u64, u64), usize) {
    let procs = processes();
    let helpers: Vec<(u32, &str)> = procs
        .iter()
        .filter(|(_, ppid, cmd)| *ppid == server && cmd.contains("__cri-shim-"))
        .map(|(pid, _, cmd)| {
            let role = cmd.split(' ').nth(1).unwrap_or_default();
            (*pid, role.trim_start_matches("__cri-shim-"))
        })
        .collect();
    let kib = |v: u64| format!("{:.2} MiB", v as f64 / 1024.0);
    let (rss, pss) = memory_kib(server);
    println!(
        "  server           RSS {:>10}  PSS {:>10}",
        kib(rss),
        kib(pss)
    );
    for role in ["monitor", "infra"] {
        let pids: Vec<u32> = helpers
            .iter()
            .filter(|(_, r)| *r == role)
            .map(|(pid, _)| *pid)
            .collect();
        if pids.is_empty() {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", pids[0]))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let (rss, pss) = sum_memory(pids.iter().copied());
        let n = pids.len() as u64;
        println!(
            "  {role:<7} x{:<4}   RSS {:>10}  PSS {:>10}  (each: RSS {}, PSS {}; {exe})",
            n,
            kib(rss),
            kib(pss),
            kib(rss / n),
            kib(pss / n),
        );
    }
    let count = helpers.len();
    (
        sum_memory(std::iter::once(server).chain(helpers.iter().map(|(pid, _)| *pid))),
        count,
    )
}

/// containerd + the shims started for it (they name its socket):
/// ((RSS, PSS), shim count).
fn containerd_memory(daemon: u32, socket: &str) -> ((u64, u64), usize) {
    let shims: Vec<u32> = processes()
        .iter()
        .filter(|(_, _, cmd)| cmd.contains("containerd-shim") && cmd.contains(socket))
        .map(|(pid, _, _)| *pid)
        .collect();
    let count = shims.len();
    (sum_memory(std::iter::once(daemon).chain(shims)), count)
}

fn row(label: &str, what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
    println!(
        "{:<16} {:<6} {:>9} {:>9} {:>9} {:>9}",
        label,
        what,
        ms(samples[0]),
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.95)),
        ms(samples[samples.len() - 1])
    );
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let images = TestImages::get()?;
    let dir = tempfile::Builder::new().prefix("cri-bench-").tempdir()?;
    let shim_dir = dir.path().join("cri-shim");
    let ctrd_dir = dir.path().join("containerd");
    std::fs::create_dir_all(&shim_dir)?;
    std::fs::create_dir_all(&ctrd_dir)?;
    let shim_net = CniNetwork::create(&shim_dir, 210)?;
    let ctrd_net = CniNetwork::create(&ctrd_dir, 211)?;
    let shim = CriShim::start(&shim_dir, &shim_net)?;
    let containerd = Containerd::start(&ctrd_dir, &ctrd_net, images).await?;
    let containerd_pid = containerd.pid().context("containerd is not running")?;
    let containerd_socket = containerd.endpoint.trim_start_matches("unix://").to_owned();

    let runtimes = [
        ("cri-shim", shim.endpoint.clone()),
        ("containerd 1.6", containerd.endpoint.clone()),
    ];
    println!(
        "pod start/stop through CRI, {} cycles each (after 1 warm-up)",
        args.cycles
    );
    println!(
        "{:<16} {:<6} {:>9} {:>9} {:>9} {:>9}",
        "runtime", "", "min", "median", "p95", "max"
    );
    for (label, endpoint) in &runtimes {
        let mut cri = harness::cri_client(endpoint).await?;
        let log_dir = dir.path().join("logs").join(label.replace(' ', "-"));
        let mut t = cycles(&mut cri, args.cycles, &log_dir).await?;
        row(label, "start", &mut t.start);
        row(label, "stop", &mut t.stop);
    }

    println!(
        "\nmemory with {} pods running (the runtime's own processes, containers excluded)",
        args.pods
    );
    let mut totals = Vec::new();
    for (label, endpoint) in &runtimes {
        let mut cri = harness::cri_client(endpoint).await?;
        let log_dir = dir
            .path()
            .join("logs")
            .join(format!("mem-{}", label.replace(' ', "-")));
        let mut sandboxes = Vec::new();
        for i in 0..args.pods {
            sandboxes.push(start_pod(&mut cri, &format!("mem{i}"), &log_dir).await?);
        }
        // Let lazily allocated state settle before reading RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("{label}");
        let ((rss, pss), helpers) = if *label == "cri-shim" {
            cri_shim_memory(shim.pid())
        } else {
            containerd_memory(containerd_pid, &containerd_socket)
        };
        println!(
            "{:<16} RSS {:>7.1} MiB  PSS {:>7.1} MiB  ({} helper processes)",
            label,
            rss as f64 / 1024.0,
            pss as f64 / 1024.0,
            helpers,
        );
        totals.push((rss, pss));
        for s in &sandboxes {
            stop_pod(&mut cri, s).await?;
        }
    }
    if let [(shim_rss, shim_pss), (ctrd_rss, ctrd_pss)] = totals[..] {
        println!(
            "cri-shim / containerd: RSS {:.2}x, PSS {:.2}x",
            shim_rss as f64 / ctrd_rss as f64,
            shim_pss as f64 / ctrd_pss as f64
        );
    }
    ensure!(
        harness::list_sandboxes(&mut shim.client().await?, None)
            .await?
            .is_empty(),
        "cri-shim pods left"
    );
    shim.remove_everything().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        harness::is_root(),
        "cri-bench needs root (runc, network namespaces, CNI)"
    );
    tokio::runtime::Runtime::new()?.block_on(run(&args))
}
