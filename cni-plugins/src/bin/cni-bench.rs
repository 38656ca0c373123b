//! cni-bench: ADD + DEL of the chain bridge + host-local + portmap +
//! loopback (+ bandwidth with `--bandwidth`, limits in both directions as
//! the pod annotations give them) into a fresh network namespace, through
//! our plugins and through the reference plugins, alternating, in one run;
//! prints median and p95.
//!
//!   sudo target/release/cni-bench --runs 100 --ours target/release --reference /usr/lib/cni
//!
//! Each side gets its own bridge (`cnitb0`/`cnitb1`), subnet in
//! 10.240.40.0/23 and data dir; everything is removed at the end. The
//! namespace is created outside the timed part, as a runtime creates it
//! before calling CNI.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cni_plugins::{Invoker, RuntimeConf};
use serde_json::json;

#[derive(Parser)]
#[command(
    about = "Times ADD+DEL of bridge+host-local+portmap+loopback: ours vs the reference plugins"
)]
struct Args {
    /// Runs per plugin set.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Directory with our plugin binaries (default: next to this binary).
    #[arg(long)]
    ours: Option<PathBuf>,
    /// Directory with the reference plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    reference: PathBuf,
    /// Append the bandwidth plugin (ingress and egress limits) to the chain.
    #[arg(long)]
    bandwidth: bool,
}

struct Side {
    label: &'static str,
    invoker: Invoker,
    bridge: String,
    samples: Vec<Duration>,
    dir: PathBuf,
    bandwidth: bool,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program).args(args).status()?;
    if !status.success() {
        bail!("{program} {args:?}: {status}");
    }
    Ok(())
}

fn side(
    label: &'static str,
    bin_dir: PathBuf,
    index: u32,
    bandwidth: bool,
) -> anyhow::Result<Side> {
    let dir = std::env::temp_dir().join(format!("cnit-bench-{}-{label}", std::process::id()));
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let bridge = format!("cnitb{index}");
    let _ = Command::new("ip")
        .args(["link", "del", &bridge])
        .stderr(std::process::Stdio::null())
        .status();
    let mut list = json!({
        "cniVersion": "1.0.0",
        "name": format!("cnit-bench-{label}"),
        "plugins": [
            {
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("ipam"),
                    "ranges": [[{"subnet": format!("10.240.{}.0/24", 40 + index)}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "loopback"}
        ]
    });
    if bandwidth && let Some(plugins) = list["plugins"].as_array_mut() {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    std::fs::write(
        conf_dir.join("10-bench.conflist"),
        serde_json::to_vec(&list)?,
    )?;
    let invoker = Invoker::new(conf_dir, vec![bin_dir], dir.join("cache"));
    Ok(Side {
        label,
        invoker,
        bridge,
        samples: Vec::new(),
        dir,
        bandwidth,
    })
}

async fn cycle(side: &mut Side, n: usize) -> anyhow::Result<()> {
    let netns = format!("cnit-bench-{}-{n}", side.label);
    run("ip", &["netns", "add", &netns])?;
    let mut capability_args = serde_json::Map::new();
    capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 18040, "containerPort": 80, "protocol": "tcp"}]),
    );
    if side.bandwidth {
        // What cri-shim sends for 10M/20M bandwidth annotations.
        capability_args.insert(
            "bandwidth".into(),
            json!({"ingressRate": 10_000_000u64, "ingressBurst": u64::from(u32::MAX),
                   "egressRate": 20_000_000u64, "egressBurst": u64::from(u32::MAX)}),
        );
    }
    let rt = RuntimeConf {
        container_id: format!("cnitbench{}{n}", side.label),
        netns: format!("/run/netns/{netns}").into(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        capability_args,
    };
    let net = side.invoker.load_network()?;
    let start = Instant::now();
    let outcome = async {
        side.invoker.add(&net, &rt).await.context("ADD")?;
        side.invoker.del(Some(&net), &rt).await.context("DEL")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let elapsed = start.elapsed();
    run("ip", &["netns", "del", &netns])?;
    outcome.with_context(|| format!("{} run {n}", side.label))?;
    side.samples.push(elapsed);
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ours = match args.ours {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("binary dir")?
            .to_owned(),
    };
    let mut sides = [
        side("ours", ours, 0, args.bandwidth)?,
        side("reference", args.reference, 1, args.bandwidth)?,
    ];
    // One warm-up each (bridge creation, first iptables chains).
    for side in &mut sides {
        cycle(side, usize::MAX).await?;
        side.samples.clear();
    }
    let mut failure = None;
    'runs: for n in 0..args.runs {
        for side in &mut sides {
            if let Err(err) = cycle(side, n).await {
                failure = Some(err);
                break 'runs;
            }
        }
    }
    for side in &sides {
        let _ = Command::new("ip")
            .args(["link", "del", &side.bridge])
            .status();
        let _ = std::fs::remove_dir_all(&side.dir);
    }
    if let Some(err) = failure {
        return Err(err);
    }
    println!(
        "ADD+DEL of bridge+host-local+portmap+loopback{}, {} runs each",
        if args.bandwidth { "+bandwidth" } else { "" },
        args.runs
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10}",
        "plugins", "median ms", "p95 ms", "mean ms"
    );
    let mut medians = Vec::new();
    for side in &mut sides {
        side.samples.sort();
        let median = percentile(&side.samples, 50.0);
        let p95 = percentile(&side.samples, 95.0);
        let mean = side.samples.iter().sum::<Duration>() / side.samples.len() as u32;
        println!(
            "{:<10} {:>10.1} {:>10.1} {:>10.1}",
            side.label,
            ms(median),
            ms(p95),
            ms(mean)
        );
        medians.push(median);
    }
    println!(
        "ours / reference (median): {:.2}",
        medians[0].as_secs_f64() / medians[1].as_secs_f64()
    );
    Ok(())
}
