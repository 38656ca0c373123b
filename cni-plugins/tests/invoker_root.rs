//! Privileged integration test: the invoker driving Debian's reference
//! plugins (bridge, host-local, portmap, tuning from /usr/lib/cni) against a
//! real network namespace. Needs root; otherwise every trial reports itself
//! as ignored, with the reason, and never as passed.
//!
//! Each trial owns its netns, bridge and subnet, so trials may run in
//! parallel; a guard removes the netns and bridge however a trial ends.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use cni_plugins::{CniError, CniResult, Invoker, NetworkConfigList, RuntimeConf};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::json;

const PLUGIN_DIR: &str = "/usr/lib/cni";

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("bridge_host_local_portmap_add_del", || {
            privileged(bridge_host_local_portmap_add_del)
        }),
        Trial::ignorable_test("failed_add_leaves_nothing_behind", || {
            privileged(failed_add_leaves_nothing_behind)
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn privileged(test: fn() -> anyhow::Result<()>) -> Result<Completion, Failed> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(Completion::ignored_with(
            "skipped: needs root (creates a netns, a bridge and iptables rules)",
        ));
    }
    // Missing plugins on a root machine are a broken setup, not a skip:
    // skipping would hide it.
    if !Path::new(PLUGIN_DIR).join("bridge").is_file() {
        return Err(format!(
            "reference CNI plugins missing in {PLUGIN_DIR}: install containernetworking-plugins"
        )
        .into());
    }
    test()
        .map(|()| Completion::Completed)
        .map_err(|err| format!("{err:#}").into())
}

/// One trial's host resources, removed on drop whatever happened.
struct Sandbox {
    netns: String,
    bridge: String,
    container_id: String,
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn create(tag: &str, bridge: &str) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let sandbox = Self {
            netns: format!("cnitest-{tag}-{pid}"),
            bridge: bridge.to_owned(),
            container_id: format!("cnitest{tag}{pid}"),
            dir: tempfile::tempdir()?,
        };
        // A bridge left by an earlier, killed run would carry its old state.
        let _ = run("ip", &["link", "del", bridge]);
        run("ip", &["netns", "add", &sandbox.netns])?;
        std::fs::create_dir(sandbox.conf_dir())?;
        Ok(sandbox)
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn invoker(&self) -> Invoker {
        Invoker::new(self.conf_dir(), vec![PLUGIN_DIR.into()], self.cache_dir())
    }

    fn runtime_conf(&self) -> RuntimeConf {
        let mut capability_args = serde_json::Map::new();
        capability_args.insert(
            "portMappings".into(),
            json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]),
        );
        RuntimeConf {
            container_id: self.container_id.clone(),
            netns: self.netns_path(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), "cnitest".into()),
                (
                    "K8S_POD_INFRA_CONTAINER_ID".into(),
                    self.container_id.clone(),
                ),
                (
                    "K8S_POD_UID".into(),
                    "00000000-0000-0000-0000-000000000001".into(),
                ),
            ],
            capability_args,
        }
    }

    /// bridge (with host-local IPAM), then `extra` plugins.
    fn write_conflist(
        &self,
        network: &str,
        subnet: &str,
        extra: serde_json::Value,
    ) -> anyhow::Result<()> {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.ipam_dir(),
            }
        })];
        plugins.extend(extra.as_array().cloned().unwrap_or_default());
        let list = json!({"cniVersion": "1.0.0", "name": network, "plugins": plugins});
        std::fs::write(
            self.conf_dir().join("10-cnitest.conflist"),
            serde_json::to_vec_pretty(&list)?,
        )?;
        Ok(())
    }

    fn in_netns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.netns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn ipam_files(&self, network: &str) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir().join(network))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", name]).is_ok()
}

fn nat_rules() -> anyhow::Result<String> {
    run("iptables-save", &["-t", "nat"])
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The host end of the pod's veth: in the result, outside the sandbox, and
/// not the bridge.
fn host_veth(result: &CniResult, bridge: &str) -> anyhow::Result<String> {
    result
        .interfaces
        .iter()
        .find(|i| i.sandbox.as_deref().unwrap_or("").is_empty() && i.name != bridge)
        .map(|i| i.name.clone())
        .context("no host-side veth in the result")
}

fn bridge_host_local_portmap_add_del() -> anyhow::Result<()> {
    let sandbox = Sandbox::create("a", "cnitest0")?;
    sandbox.write_conflist(
        "cnitest",
        "10.99.0.0/24",
        json!([{"type": "portmap", "capabilities": {"portMappings": true}}]),
    )?;
    let invoker = sandbox.invoker();
    let rt = sandbox.runtime_conf();
    runtime()?.block_on(async {
        let net = invoker.load_network()?;
        ensure!(
            net.name == "cnitest" && net.plugins.len() == 2,
            "loaded {net:?}"
        );
        let outcome = add_then_del(&sandbox, &invoker, &net, &rt).await;
        if outcome.is_err() {
            // Undo whatever the failed check left, before the guard drops
            // the netns and bridge; iptables rules would outlive both.
            let _ = invoker.del(Some(&net), &rt).await;
        }
        outcome
    })
}

async fn add_then_del(
    sandbox: &Sandbox,
    invoker: &Invoker,
    net: &NetworkConfigList,
    rt: &RuntimeConf,
) -> anyhow::Result<()> {
    let result = invoker.add(net, rt).await.context("ADD")?;
    eprintln!("ADD result: {}", result.raw);

    let ips = result.pod_ips("eth0");
    ensure!(ips.len() == 1, "expected one pod IP, got {ips:?}");
    let ip = ips[0].to_string();
    ensure!(
        ip.starts_with("10.99.0."),
        "pod IP {ip} outside 10.99.0.0/24"
    );
    let addr = sandbox.in_netns(&["ip", "-4", "addr", "show", "eth0"])?;
    ensure!(
        addr.contains(&format!("inet {ip}/24")),
        "eth0 in the netns lacks {ip}/24:\n{addr}"
    );
    let veth = host_veth(&result, &sandbox.bridge)?;
    let link = run("ip", &["link", "show", &veth])?;
    ensure!(
        link.contains(&format!("master {}", sandbox.bridge)),
        "{veth} not on the bridge:\n{link}"
    );
    ensure!(
        sandbox.ipam_files("cnitest") == [ip.clone()],
        "host-local files: {:?}",
        sandbox.ipam_files("cnitest")
    );
    let rules = nat_rules()?;
    ensure!(
        rules.contains(&rt.container_id) && rules.contains("18080"),
        "no portmap DNAT rules for the pod:\n{rules}"
    );
    let cache_file = sandbox
        .cache_dir()
        .join(format!("results/cnitest-{}-eth0", rt.container_id));
    ensure!(
        cache_file.is_file(),
        "no cache entry at {}",
        cache_file.display()
    );

    // A restarted runtime that no longer has the config nor the args: the
    // cache alone must be enough.
    let restarted = Invoker::new(
        sandbox.dir.path().join("empty-net.d"),
        vec![PLUGIN_DIR.into()],
        sandbox.cache_dir(),
    );
    let bare = RuntimeConf {
        args: Vec::new(),
        capability_args: serde_json::Map::new(),
        ..rt.clone()
    };
    restarted
        .del(None, &bare)
        .await
        .context("DEL after restart")?;

    ensure!(!link_exists(&veth), "host veth {veth} still exists");
    ensure!(
        sandbox.in_netns(&["ip", "link", "show", "eth0"]).is_err(),
        "eth0 still exists in the netns"
    );
    ensure!(
        sandbox.ipam_files("cnitest").is_empty(),
        "host-local still holds {:?}",
        sandbox.ipam_files("cnitest")
    );
    let rules = nat_rules()?;
    ensure!(
        !rules.contains(&rt.container_id),
        "portmap rules left behind:\n{rules}"
    );
    ensure!(!cache_file.exists(), "cache entry not removed");

    // Idempotent: without a cache, with and without a config.
    invoker.del(Some(net), rt).await.context("second DEL")?;
    invoker.del(None, rt).await.context("third DEL")?;
    eprintln!("pod IP {ip} on {veth}: added, deleted, deleted again");
    Ok(())
}

fn failed_add_leaves_nothing_behind() -> anyhow::Result<()> {
    let sandbox = Sandbox::create("b", "cnitest1")?;
    // tuning fails on a sysctl that does not exist, after bridge and
    // host-local have done their work.
    sandbox.write_conflist(
        "cnitest-fail",
        "10.99.1.0/24",
        json!([{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_key": "1"}}]),
    )?;
    let invoker = sandbox.invoker();
    let rt = sandbox.runtime_conf();
    runtime()?.block_on(async {
        let net = invoker.load_network()?;
        let err = match invoker.add(&net, &rt).await {
            Ok(result) => {
                let _ = invoker.del(Some(&net), &rt).await;
                bail!("ADD succeeded unexpectedly: {}", result.raw);
            }
            Err(err) => err,
        };
        eprintln!("ADD failed as intended: {err}");
        ensure!(
            matches!(&err, CniError::Plugin { plugin, .. } if plugin == "tuning"),
            "expected a tuning plugin error, got {err:?}"
        );
        ensure!(
            sandbox.in_netns(&["ip", "link", "show", "eth0"]).is_err(),
            "eth0 left in the netns"
        );
        ensure!(
            sandbox.ipam_files("cnitest-fail").is_empty(),
            "host-local still holds {:?}",
            sandbox.ipam_files("cnitest-fail")
        );
        let links = run("ip", &["-o", "link", "show", "master", &sandbox.bridge])?;
        ensure!(
            links.trim().is_empty(),
            "veths left on the bridge:\n{links}"
        );
        let results = sandbox.cache_dir().join("results");
        let cached = std::fs::read_dir(&results).map_or(0, |entries| entries.count());
        ensure!(cached == 0, "cache entries written for a failed ADD");
        Ok(())
    })
}
