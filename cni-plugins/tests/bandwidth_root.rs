//! Privileged integration tests of our `bandwidth` plugin against Debian's
//! reference one: the same qdiscs and rates as `tc -j qdisc show` reports
//! them, the same IFB device, CHECK and DEL of each other's state, and the
//! limits arriving through the invoker as `runtimeConfig.bandwidth`.
//!
//! Needs root; otherwise every trial reports itself as ignored with the
//! reason. Namespaces are `cniv-bw*`, host veths `cnivbw*`, the subnet
//! 10.241.30.0/24; guards remove them however a trial ends.

mod support;

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use cni_plugins::plugins::bandwidth::ifb_name;
use cni_plugins::{Invoker, RuntimeConf};
use libtest_mimic::Arguments;
use serde_json::{Map, Value, json};

use support::*;

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        root_trial("qdiscs_match_the_reference", qdiscs_match_the_reference),
        root_trial(
            "check_and_del_across_plugin_sets",
            check_and_del_across_plugin_sets,
        ),
        root_trial(
            "limits_from_runtime_config_through_the_invoker",
            limits_from_runtime_config_through_the_invoker,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// A namespace with `eth0` inside and its veth peer `host` outside, both
/// up; the namespace (and with it the pair) is deleted on drop.
struct VethPod {
    ns: String,
    host: String,
}

impl VethPod {
    fn create(tag: &str) -> anyhow::Result<Self> {
        let ns = format!("cniv-bw{tag}-{}", std::process::id());
        let host = format!("cnivbw{tag}");
        let _ = run("ip", &["netns", "del", &ns]);
        let _ = run("ip", &["link", "del", &host]);
        run("ip", &["netns", "add", &ns])?;
        let pod = Self { ns, host };
        run(
            "ip",
            &[
                "link", "add", &pod.host, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
            ],
        )?;
        run("ip", &["link", "set", &pod.host, "up"])?;
        run("ip", &["-n", &pod.ns, "link", "set", "eth0", "up"])?;
        Ok(pod)
    }

    fn netns(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }

    /// What an interface plugin would have returned for it.
    fn prev_result(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": self.host}, {"name": "eth0", "sandbox": self.netns()}],
            "ips": []
        })
    }
}

impl Drop for VethPod {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.ns]);
        let _ = run("ip", &["link", "del", &self.host]);
    }
}

/// A bare network namespace `cniv-<tag>-<pid>`, deleted on drop.
struct Ns(String);

impl Ns {
    fn create(tag: &str) -> anyhow::Result<Self> {
        let name = format!("cniv-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        Ok(Self(name))
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

fn config(network: &str, prev: &Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "bandwidth",
        "ingressRate": 8_000_000,
        "ingressBurst": 800_000,
        "egressRate": 16_000_000,
        "egressBurst": 1_600_000,
        "prevResult": prev,
    })
}

/// `tc -j qdisc show dev <dev>` without the counters that differ by how
/// long a qdisc has existed.
fn qdiscs(dev: &str) -> anyhow::Result<Value> {
    let mut list: Value = serde_json::from_str(&run("tc", &["-j", "qdisc", "show", "dev", dev])?)?;
    if let Some(items) = list.as_array_mut() {
        for item in items {
            if let Some(obj) = item.as_object_mut() {
                obj.remove("refcnt");
            }
        }
    }
    Ok(list)
}

/// The egress redirect filters' targets, from `tc -j filter show`, each
/// once: the reference attaches the same redirect twice (its netlink
/// library prepends one for the filter's `RedirIndex` to the explicit
/// action), the second never runs since the first steals the packet; ours
/// attaches it once.
fn redirect_targets(dev: &str) -> anyhow::Result<Vec<String>> {
    let filters: Value = serde_json::from_str(&run(
        "tc",
        &["-j", "filter", "show", "dev", dev, "ingress"],
    )?)?;
    let mut targets = Vec::new();
    for filter in filters.as_array().into_iter().flatten() {
        for action in filter["options"]["actions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if action["kind"] == "mirred"
                && action["mirred_action"] == "redirect"
                && action["direction"] == "egress"
            {
                targets.push(action["to_dev"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    targets.sort();
    targets.dedup();
    Ok(targets)
}

/// What one plugin set's ADD made: (host qdiscs, IFB qdiscs, redirect
/// targets, the result's interfaces without MACs).
fn observe(pod: &VethPod, ifb: &str, result: &Value) -> anyhow::Result<Value> {
    let mut interfaces = result["interfaces"].clone();
    for iface in interfaces.as_array_mut().into_iter().flatten() {
        ensure!(
            iface["name"] != ifb || iface["mac"].as_str().is_some_and(|m| m.len() == 17),
            "IFB without a MAC in {result}"
        );
        if let Some(obj) = iface.as_object_mut() {
            obj.remove("mac");
        }
    }
    Ok(json!({
        "host": qdiscs(&pod.host)?,
        "ifb": qdiscs(ifb)?,
        "redirect": redirect_targets(&pod.host)?,
        "interfaces": interfaces,
    }))
}

/// ADD through each plugin set on a fresh veth: the same tbf on the host
/// veth (rate in bytes, burst, 25 ms latency), the same ingress qdisc and
/// redirect to the same IFB `bwp<hash>`, the same tbf on it, the same
/// result; DEL removes the IFB.
fn qdiscs_match_the_reference() -> anyhow::Result<()> {
    let mut seen = Vec::new();
    for (index, (set, bin)) in plugin_sets().into_iter().enumerate() {
        let pod = VethPod::create(&format!("m{index}"))?;
        let id = "cnivbwmatch";
        let ifb = ifb_name("cniv-bw", id);
        let env = vec![
            ("CNI_CONTAINERID".to_owned(), id.to_owned()),
            ("CNI_NETNS".to_owned(), pod.netns()),
            ("CNI_IFNAME".to_owned(), "eth0".to_owned()),
        ];
        let conf = config("cniv-bw", &pod.prev_result());
        let result = run_plugin(&bin, "bandwidth", "ADD", &env, &conf)?
            .success()
            .with_context(|| format!("{set} ADD"))?;
        let observed = observe(&pod, &ifb, &result);
        let del = run_plugin(&bin, "bandwidth", "DEL", &env, &conf)?.success();
        let mut observed = observed?;
        del.with_context(|| format!("{set} DEL"))?;
        ensure!(!link_exists(&ifb), "{set}: IFB {ifb} left after DEL");
        // The veth names differ by construction.
        observed["interfaces"][0]["name"] = json!("<host veth>");
        observed["interfaces"][1]["sandbox"] = json!("<netns>");
        eprintln!("{set}: {observed}");
        seen.push((set, observed));
    }
    let (ours, reference) = (&seen[0].1, &seen[1].1);
    ensure!(
        ours == reference,
        "ours:      {ours}\nreference: {reference}"
    );
    let host_tbf = &ours["host"][0];
    ensure!(
        host_tbf["kind"] == "tbf" && host_tbf["options"]["rate"] == 1_000_000,
        "{ours}"
    );
    ensure!(ours["ifb"][0]["options"]["rate"] == 2_000_000, "{ours}");
    Ok(())
}

/// Either plugin's CHECK accepts the other's state and refuses a wrong
/// rate; ours also fails once a qdisc is gone; either's DEL removes the
/// other's IFB.
fn check_and_del_across_plugin_sets() -> anyhow::Result<()> {
    let sets = plugin_sets();
    for (index, (maker, make_bin)) in sets.iter().enumerate() {
        let (checker, check_bin) = &sets[1 - index];
        let pod = VethPod::create(&format!("x{index}"))?;
        let id = format!("cnivbwx{index}");
        let ifb = ifb_name("cniv-bw", &id);
        let env = vec![
            ("CNI_CONTAINERID".to_owned(), id.clone()),
            ("CNI_NETNS".to_owned(), pod.netns()),
            ("CNI_IFNAME".to_owned(), "eth0".to_owned()),
        ];
        let add = run_plugin(
            make_bin,
            "bandwidth",
            "ADD",
            &env,
            &config("cniv-bw", &pod.prev_result()),
        )?
        .success()
        .with_context(|| format!("{maker} ADD"))?;
        let conf = config("cniv-bw", &add);
        let outcome = (|| {
            for (who, bin) in [(maker, make_bin), (checker, check_bin)] {
                run_plugin(bin, "bandwidth", "CHECK", &env, &conf)?
                    .success()
                    .with_context(|| format!("{who} CHECK of {maker}'s state"))?;
            }
            // A different rate is noticed.
            let mut other = conf.clone();
            other["ingressRate"] = json!(4_000_000);
            let wrong = run_plugin(check_bin, "bandwidth", "CHECK", &env, &other)?;
            ensure!(
                !wrong.status.success(),
                "{checker} CHECK passed a wrong rate"
            );
            // Ours also notices a missing tbf; the reference stops looking
            // at the first qdisc that is not a tbf and passes.
            run("tc", &["qdisc", "del", "dev", &ifb, "root"])?;
            let missing = run_plugin(&ours(), "bandwidth", "CHECK", &env, &conf)?;
            ensure!(
                !missing.status.success(),
                "our CHECK passed without the IFB's tbf ({maker}'s state)"
            );
            Ok(())
        })();
        let del = run_plugin(check_bin, "bandwidth", "DEL", &env, &conf)?.success();
        outcome?;
        del.with_context(|| format!("{checker} DEL of {maker}'s state"))?;
        ensure!(!link_exists(&ifb), "{checker} DEL left {maker}'s IFB {ifb}");
        // DEL again: nothing to do, still fine.
        run_plugin(check_bin, "bandwidth", "DEL", &env, &conf)?.success()?;
    }
    Ok(())
}

/// bridge + host-local + bandwidth (declaring the `bandwidth` capability)
/// through the invoker, with the limits only in the runtime's capability
/// arguments: the host veth gets the tbf, the IFB exists, CHECK passes,
/// DEL removes the IFB.
fn limits_from_runtime_config_through_the_invoker() -> anyhow::Result<()> {
    for (index, (set, bin)) in plugin_sets().into_iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let bridge = BridgeGuard::new(&format!("cnivbwbr{index}"));
        let list = json!({
            "cniVersion": "1.0.0",
            "name": "cniv-bwrc",
            "plugins": [
                {"type": "bridge", "bridge": bridge.0, "isGateway": true,
                 "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                          "ranges": [[{"subnet": format!("10.241.{}.0/24", 30 + index)}]]}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        });
        std::fs::create_dir(dir.path().join("net.d"))?;
        std::fs::write(dir.path().join("net.d/10-bw.conflist"), list.to_string())?;
        let invoker = Invoker::new(
            dir.path().join("net.d"),
            vec![bin.clone()],
            dir.path().join("cache"),
        );
        let ns = Ns::create(&format!("bwrc{index}"))?;
        let id = format!("cnivbwrc{index}");
        let mut caps = Map::new();
        // What cri-shim sends for kubernetes.io/ingress-bandwidth: 10M.
        caps.insert(
            "bandwidth".into(),
            json!({"ingressRate": 10_000_000u64, "ingressBurst": u64::from(u32::MAX),
                   "egressRate": 20_000_000u64, "egressBurst": u64::from(u32::MAX)}),
        );
        let rt = RuntimeConf {
            container_id: id.clone(),
            netns: ns.path(),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: caps,
        };
        let ifb = ifb_name("cniv-bwrc", &id);
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        tokio.block_on(async {
            let net = invoker.load_network()?;
            let outcome = async {
                let result = invoker.add(&net, &rt).await.context("ADD")?;
                let veth = result
                    .interfaces
                    .iter()
                    .find(|i| {
                        i.sandbox.as_deref().unwrap_or("").is_empty() && i.name.starts_with("veth")
                    })
                    .map(|i| i.name.clone())
                    .context("no host veth in the result")?;
                let host = qdiscs(&veth)?;
                ensure!(
                    host[0]["kind"] == "tbf" && host[0]["options"]["rate"] == 1_250_000,
                    "{set}: host veth qdiscs {host}"
                );
                ensure!(
                    result.interfaces.iter().any(|i| i.name == ifb),
                    "{set}: IFB {ifb} not in the result"
                );
                ensure!(
                    qdiscs(&ifb)?[0]["options"]["rate"] == 2_500_000,
                    "{set}: IFB qdiscs"
                );
                invoker.check(&net, &rt).await.context("CHECK")?;
                Ok(())
            }
            .await;
            let del = invoker.del(Some(&net), &rt).await;
            outcome?;
            del.context("DEL")?;
            if link_exists(&ifb) {
                bail!("{set}: IFB {ifb} left after DEL");
            }
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}
