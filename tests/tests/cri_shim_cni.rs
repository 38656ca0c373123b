//! cri-shim's pod networking end to end, over its CRI socket: a sandbox
//! gets its address from our CNI plugins and from the reference plugins,
//! chosen only by `--cni-bin-dir` (the conflist is the same); a hostPort of
//! the sandbox reaches busybox httpd in the pod from 127.0.0.1; the
//! bandwidth annotations become tbf qdiscs; NetworkReady follows the conf
//! dir without a restart; CNI GC at start releases an attachment no
//! sandbox owns; after RemovePodSandbox no veth, IFB, iptables rule, address
//! file or cache entry is left.
//!
//! Needs root; when not root every trial is reported as ignored, by name.
//! Networks 240-249 of the e2e fixture (bridges `kre2e24N`, subnets
//! 10.91.24N.0/24), namespaces `cniv-*`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use cni_plugins::plugins::bandwidth::ifb_name;
use e2e::cni_shim::CniShim;
use e2e::harness::{self, BUSYBOX_HTTPD_IMAGE, CniNetwork, CriClient, HTTPD_INDEX_TEXT};
use k8s_cri::v1 as cri;
use libtest_mimic::{Arguments, Trial};
use serde_json::{Value, json};

const REFERENCE_BIN_DIR: &str = "/usr/lib/cni";

/// Rewrites the fixture network's conflist: bridge with host-local, then
/// portmap and bandwidth declaring their capabilities.
fn write_conflist(net: &CniNetwork, dir: &Path, version: &str) -> anyhow::Result<Value> {
    let list = json!({
        "cniVersion": version,
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("cni/ipam"),
                    "ranges": [[{"subnet": net.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    });
    let path = net.conf_dir.join(format!("10-{}.conflist", net.name));
    std::fs::write(&path, serde_json::to_vec_pretty(&list)?)?;
    Ok(list)
}

fn sandbox_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e-cni".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
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

fn httpd_config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "httpd".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX_HTTPD_IMAGE.into(),
            ..Default::default()
        }),
        log_path: "httpd/0.log".into(),
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

async fn network_condition(cri: &mut CriClient) -> anyhow::Result<cri::RuntimeCondition> {
    let status = cri
        .status(cri::StatusRequest::default())
        .await?
        .into_inner()
        .status
        .context("Status without a status")?;
    status
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("no NetworkReady condition")
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program).args(args).output()?;
    ensure!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn iptables_lines_with(needle: &str) -> anyhow::Result<Vec<String>> {
    Ok(sh("iptables-save", &[])?
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect())
}

/// Address files (named by IP) in the network's host-local dir.
fn reserved_ips(dir: &Path, network: &str) -> Vec<String> {
    std::fs::read_dir(dir.join("cni/ipam").join(network))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect()
}

/// The root tbf of `dev`, from `tc -j qdisc show`.
fn root_tbf_rate(dev: &str) -> anyhow::Result<Option<u64>> {
    let qdiscs: Value = serde_json::from_str(&sh("tc", &["-j", "qdisc", "show", "dev", dev])?)?;
    Ok(qdiscs.as_array().into_iter().flatten().find_map(|q| {
        (q["kind"] == "tbf" && q["root"] == true)
            .then(|| q["options"]["rate"].as_u64())
            .flatten()
    }))
}

/// A sandbox with a hostPort and both bandwidth annotations, busybox httpd
/// in it: the address is from the network's subnet, the hostPort answers
/// on 127.0.0.1, the host veth shapes at 10 Mbit (1.25 MB/s), the IFB at
/// 20 Mbit; RemovePodSandbox leaves nothing of it.
async fn pod_network(index: u32, bin_dir: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cri-shim-cni-e2e-")
        .tempdir()?;
    let net = CniNetwork::create(dir.path(), index)?;
    write_conflist(&net, dir.path(), "1.0.0")?;
    let shim = CniShim::start(dir.path(), &net.conf_dir, &bin_dir)?;
    let outcome = pod_network_body(&shim, &net, dir.path()).await;
    let cleanup = shim.remove_everything().await;
    if outcome.is_err() {
        eprintln!("cri-shim log:\n{}", shim.log_text());
    }
    outcome.and(cleanup)
}

async fn pod_network_body(shim: &CniShim, net: &CniNetwork, dir: &Path) -> anyhow::Result<()> {
    let mut cri = shim.client().await?;
    let ready = network_condition(&mut cri).await?;
    ensure!(ready.status, "network not ready: {ready:?}");

    let host_port = harness::free_tcp_port()?;
    let mut config = sandbox_config("web", &dir.join("logs"));
    config.port_mappings = vec![
        cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: i32::from(host_port),
            host_ip: String::new(),
        },
        // Without a host port: nothing for CNI.
        cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: 0,
            host_ip: String::new(),
        },
    ];
    config.annotations = HashMap::from([
        (
            "kubernetes.io/ingress-bandwidth".to_owned(),
            "10M".to_owned(),
        ),
        (
            "kubernetes.io/egress-bandwidth".to_owned(),
            "20M".to_owned(),
        ),
    ]);
    let id = harness::run_sandbox(&mut cri, &config).await?;
    let status = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no sandbox status")?;
    let ip = status.network.context("no network status")?.ip;
    let prefix = net.subnet.trim_end_matches("0/24");
    ensure!(
        ip.starts_with(prefix),
        "pod IP {ip:?} not in {}",
        net.subnet
    );
    ensure!(
        reserved_ips(dir, &net.name) == [ip.clone()],
        "host-local files {:?}",
        reserved_ips(dir, &net.name)
    );

    harness::create_and_start(&mut cri, &id, &config, httpd_config()).await?;
    let body = harness::wait_until(
        &format!("httpd in the pod answers on 127.0.0.1:{host_port}"),
        harness::DEADLINE,
        harness::POLL,
        async || {
            let response = harness::http_get(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_port,
                "/",
                Duration::from_secs(2),
            )?;
            Ok((response.status == 200).then_some(response.body))
        },
    )
    .await?;
    ensure!(body.contains(HTTPD_INDEX_TEXT), "{body:?}");
    ensure!(
        !iptables_lines_with(&id)?.is_empty(),
        "no portmap rules name the sandbox"
    );

    let veths = net.veths()?;
    ensure!(veths.len() == 1, "veths on {}: {veths:?}", net.bridge);
    let ingress = root_tbf_rate(&veths[0])?;
    ensure!(
        ingress == Some(1_250_000),
        "tbf on {}: {ingress:?}",
        veths[0]
    );
    let ifb = ifb_name(&net.name, &id);
    ensure!(link_exists(&ifb), "no IFB {ifb}");
    let egress = root_tbf_rate(&ifb)?;
    ensure!(egress == Some(2_500_000), "tbf on {ifb}: {egress:?}");

    harness::remove_sandbox(&mut cri, &id).await?;
    ensure!(net.veths()?.is_empty(), "veths left: {:?}", net.veths()?);
    ensure!(!link_exists(&ifb), "IFB {ifb} left");
    let rules = iptables_lines_with(&id)?;
    ensure!(
        rules.is_empty(),
        "iptables rules left:\n{}",
        rules.join("\n")
    );
    ensure!(
        reserved_ips(dir, &net.name).is_empty(),
        "addresses left: {:?}",
        reserved_ips(dir, &net.name)
    );
    let cached = std::fs::read_dir(shim.root.join("cni-cache/results"))
        .map(|d| d.count())
        .unwrap_or(0);
    ensure!(cached == 0, "{cached} CNI cache entries left");
    ensure!(
        harness::http_get(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port,
            "/",
            Duration::from_secs(1)
        )
        .is_err(),
        "the host port still answers"
    );
    Ok(())
}

/// With an empty conf dir NetworkReady is false (NetworkPluginNotReady,
/// "cni plugin not initialized") and a sandbox is refused; once a conflist
/// is written the same process reports it ready and runs sandboxes.
async fn network_ready_follows_the_conf_dir() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cri-shim-cni-e2e-")
        .tempdir()?;
    let net = CniNetwork::create(dir.path(), 242)?;
    // The conflist is written later, into a conf dir that starts empty.
    let list = write_conflist(&net, dir.path(), "1.1.0")?;
    let conf_dir = dir.path().join("later-net.d");
    std::fs::create_dir(&conf_dir)?;
    let shim = CniShim::start(dir.path(), &conf_dir, &harness::bin_dir()?)?;
    let outcome = async {
        let mut cri = shim.client().await?;
        let pid = shim.pid();
        let cond = network_condition(&mut cri).await?;
        ensure!(!cond.status, "ready without a config: {cond:?}");
        ensure!(cond.reason == "NetworkPluginNotReady", "{cond:?}");
        ensure!(
            cond.message.contains("cni plugin not initialized"),
            "{cond:?}"
        );
        let refused = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config("early", &dir.path().join("logs"))),
                runtime_handler: String::new(),
            })
            .await;
        ensure!(refused.is_err(), "a sandbox ran without a network config");
        ensure!(
            harness::list_sandboxes(&mut cri, None).await?.is_empty(),
            "the refused sandbox is listed"
        );

        // Written as installers do: a temp name, then renamed into place.
        let tmp = conf_dir.join(".10-net.conflist.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&list)?)?;
        std::fs::rename(&tmp, conf_dir.join("10-net.conflist"))?;
        harness::wait_until(
            "NetworkReady turns true",
            Duration::from_secs(20),
            harness::POLL,
            async || Ok(network_condition(&mut cri).await?.status.then_some(())),
        )
        .await?;
        ensure!(shim.pid() == pid, "cri-shim was restarted");
        let id = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config("late", &dir.path().join("logs"))),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        harness::remove_sandbox(&mut cri, &id).await?;
        Ok(())
    }
    .await;
    let cleanup = shim.remove_everything().await;
    outcome.and(cleanup)
}

/// An attachment made behind cri-shim's back (a runtime that lost the
/// sandbox: its cache entry, address and veth are there, no sandbox is)
/// is released by the GC at start; a real sandbox keeps its network.
async fn gc_at_start_releases_leftovers() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cri-shim-cni-e2e-")
        .tempdir()?;
    let net = CniNetwork::create(dir.path(), 243)?;
    write_conflist(&net, dir.path(), "1.1.0")?;
    let bin_dir = harness::bin_dir()?;
    let mut shim = CniShim::start(dir.path(), &net.conf_dir, &bin_dir)?;
    let ghost_ns = format!("cniv-ghost-{}", std::process::id());
    let _ = sh("ip", &["netns", "del", &ghost_ns]);
    sh("ip", &["netns", "add", &ghost_ns])?;
    let outcome = async {
        let mut cri = shim.client().await?;
        let live = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config("live", &dir.path().join("logs"))),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;

        let invoker = cni_plugins::Invoker::new(
            net.conf_dir.clone(),
            vec![bin_dir.clone()],
            shim.root.join("cni-cache"),
        );
        let list = invoker.load_network()?;
        let ghost_id = "cnivghost0123456789";
        let rt = cni_plugins::RuntimeConf {
            container_id: ghost_id.into(),
            netns: PathBuf::from("/run/netns").join(&ghost_ns),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: serde_json::Map::new(),
        };
        let ghost = invoker.add(&list, &rt).await.context("ghost ADD")?;
        let ghost_ip = ghost.pod_ips("eth0")[0].to_string();
        let entry = shim
            .root
            .join(format!("cni-cache/results/{}-{ghost_id}-eth0", net.name));
        ensure!(entry.is_file(), "no cache entry for the ghost");
        ensure!(net.veths()?.len() == 2, "veths: {:?}", net.veths()?);

        shim.restart()?;
        harness::wait_until(
            "GC at start released the ghost attachment",
            Duration::from_secs(30),
            harness::POLL,
            async || Ok((!entry.exists()).then_some(())),
        )
        .await?;
        let left = reserved_ips(dir.path(), &net.name);
        ensure!(
            left.len() == 1 && left[0] != ghost_ip,
            "host-local holds {left:?} (ghost had {ghost_ip})"
        );
        ensure!(
            sh(
                "ip",
                &["netns", "exec", &ghost_ns, "ip", "link", "show", "eth0"]
            )
            .is_err(),
            "the ghost kept its eth0"
        );
        ensure!(net.veths()?.len() == 1, "veths: {:?}", net.veths()?);
        let mut cri = shim.client().await?;
        let status = cri
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: live.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        ensure!(
            status.state == cri::PodSandboxState::SandboxReady as i32,
            "the live sandbox is not ready after the restart"
        );
        ensure!(
            shim.log_text().contains("CNI GC released"),
            "no GC line in the log"
        );
        Ok(())
    }
    .await;
    if !shim.running() {
        let _ = shim.restart();
    }
    let cleanup = shim.remove_everything().await;
    let _ = sh("ip", &["netns", "del", &ghost_ns]);
    if outcome.is_err() {
        eprintln!("cri-shim log:\n{}", shim.log_text());
    }
    outcome.and(cleanup)
}

/// A trial body: a boxed future so trials fit in one list.
type TrialFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

fn trial(name: &'static str, f: TrialFn) -> Trial {
    let root = harness::is_root();
    Trial::test(name, move || {
        if !Path::new(REFERENCE_BIN_DIR).join("bandwidth").is_file() {
            return Err(format!(
                "reference CNI plugins missing in {REFERENCE_BIN_DIR}: install containernetworking-plugins"
            )
            .into());
        }
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        rt.block_on(f()).map_err(|e| format!("{e:#}").into())
    })
    .with_ignored_flag(!root)
    .with_kind(if root { "" } else { "needs root" })
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        trial("cri_shim_cni_pod_network_from_our_plugins", || {
            Box::pin(async {
                let ours = harness::bin_dir()?;
                for plugin in ["bridge", "host-local", "portmap", "bandwidth"] {
                    if !ours.join(plugin).is_file() {
                        bail!(
                            "our {plugin} plugin is not built in {}: cargo build --workspace",
                            ours.display()
                        );
                    }
                }
                pod_network(240, ours).await
            })
        }),
        trial("cri_shim_cni_pod_network_from_reference_plugins", || {
            Box::pin(pod_network(241, PathBuf::from(REFERENCE_BIN_DIR)))
        }),
        trial("cri_shim_cni_network_ready_follows_the_conf_dir", || {
            Box::pin(network_ready_follows_the_conf_dir())
        }),
        trial("cri_shim_cni_gc_at_start_releases_leftovers", || {
            Box::pin(gc_at_start_releases_leftovers())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}
