//! Whole chains (bridge + host-local + portmap + loopback) driven by the
//! crate's own invoker, as a runtime drives them, through our binaries and
//! through the reference ones.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use cni_plugins::{CniResult, Invoker, RuntimeConf};
use serde_json::{Value, json};

use super::support::*;

/// One network: conf dir, cache, host-local data dir, bridge.
pub struct Network {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub bridge: BridgeGuard,
    pub bin_dir: PathBuf,
}

impl Network {
    /// A conflist with the four plugins, for `bin_dir`'s plugin set.
    pub fn create(
        name: &str,
        bridge: &str,
        v4: &str,
        v6: Option<&str>,
        bin_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        Self::create_with(name, bridge, v4, v6, bin_dir, json!({}))
    }

    /// [`Network::create`] with `bridge_options` merged into the bridge
    /// plugin's config.
    pub fn create_with(
        name: &str,
        bridge: &str,
        v4: &str,
        v6: Option<&str>,
        bin_dir: PathBuf,
        bridge_options: Value,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("net.d"))?;
        let mut ranges = vec![json!([{"subnet": v4}])];
        let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
        if let Some(v6) = v6 {
            ranges.push(json!([{"subnet": v6}]));
            routes.push(json!({"dst": "::/0"}));
        }
        let network = Self {
            bridge: BridgeGuard::new(bridge),
            name: name.to_owned(),
            bin_dir,
            dir,
        };
        let list = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "dns": {"nameservers": ["10.240.0.10"], "search": ["svc.cluster.local"]},
                    "ipam": {
                        "type": "host-local",
                        "dataDir": network.ipam_root(),
                        "resolvConf": network.resolv_conf()?,
                        "ranges": ranges,
                        "routes": routes
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "loopback"}
            ]
        });
        let mut list = list;
        if let (Some(plugin), Some(options)) = (
            list["plugins"][0].as_object_mut(),
            bridge_options.as_object(),
        ) {
            plugin.extend(options.clone());
        }
        // With isDefaultGateway the default route comes from the bridge, not
        // from IPAM (both at once would add it twice).
        if bridge_options["isDefaultGateway"] == json!(true) {
            list["plugins"][0]["ipam"]["routes"] = json!([]);
        }
        std::fs::write(
            network.dir.path().join("net.d/10-cnit.conflist"),
            serde_json::to_vec_pretty(&list)?,
        )?;
        Ok(network)
    }

    fn resolv_conf(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "nameserver 10.240.0.10\nsearch svc.cluster.local cluster.local\noptions ndots:5\n",
        )?;
        Ok(path)
    }

    pub fn ipam_root(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_root().join(&self.name)
    }

    pub fn invoker(&self, bin_dir: &Path) -> Invoker {
        Invoker::new(
            self.dir.path().join("net.d"),
            vec![bin_dir.to_owned()],
            self.dir.path().join("cache"),
        )
    }

    pub fn runtime_conf(&self, ns: &Netns, id: &str, ports: &[(u16, u16)]) -> RuntimeConf {
        let mut capability_args = serde_json::Map::new();
        let mappings: Vec<Value> = ports
            .iter()
            .map(|(host, container)| {
                json!({"hostPort": host, "containerPort": container, "protocol": "tcp"})
            })
            .collect();
        capability_args.insert("portMappings".into(), Value::Array(mappings));
        RuntimeConf {
            container_id: id.to_owned(),
            netns: ns.path().into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), id.into()),
            ],
            capability_args,
        }
    }

    pub fn add(&self, rt: &RuntimeConf) -> anyhow::Result<CniResult> {
        self.add_with(&self.bin_dir, rt)
    }

    pub fn del(&self, rt: &RuntimeConf) -> anyhow::Result<()> {
        self.del_with(&self.bin_dir, rt)
    }

    pub fn add_with(&self, bin_dir: &Path, rt: &RuntimeConf) -> anyhow::Result<CniResult> {
        let invoker = self.invoker(bin_dir);
        runtime()?.block_on(async {
            let net = invoker.load_network()?;
            Ok(invoker.add(&net, rt).await?)
        })
    }

    pub fn del_with(&self, bin_dir: &Path, rt: &RuntimeConf) -> anyhow::Result<()> {
        let invoker = self.invoker(bin_dir);
        runtime()?.block_on(async {
            let net = invoker.load_network()?;
            Ok(invoker.del(Some(&net), rt).await?)
        })
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// What a pod sees and what the host holds for it, with the parts that
/// differ by construction (MACs, veth names, netns paths) left out.
fn observe(network: &Network, ns: &Netns, result: &CniResult, id: &str) -> anyhow::Result<Value> {
    let mut raw = result.raw.clone();
    if let Some(interfaces) = raw["interfaces"].as_array_mut() {
        for (index, iface) in interfaces.iter_mut().enumerate() {
            let obj = iface.as_object_mut().context("interface")?;
            obj.remove("sandbox");
            ensure!(
                obj.remove("mac").is_some(),
                "interface {index} without a MAC"
            );
            if index == 1 {
                let name = obj.remove("name").unwrap_or_default();
                ensure!(name.as_str().unwrap_or("").starts_with("veth"), "{name}");
            }
        }
    }
    if raw["dns"] == json!({}) {
        raw.as_object_mut().map(|o| o.remove("dns"));
    }
    let addrs: Vec<String> = ns
        .exec(&["ip", "-o", "addr", "show"])?
        .lines()
        .filter(|l| !l.contains("fe80::"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(4)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let routes4 = ns.exec(&["ip", "-4", "route", "show"])?;
    let routes6: Vec<String> = ns
        .exec(&["ip", "-6", "route", "show"])?
        .lines()
        .filter(|l| !l.starts_with("fe80::"))
        .map(str::to_owned)
        .collect();
    let links: Vec<String> = ns
        .exec(&["ip", "-o", "link", "show"])?
        .lines()
        .map(|l| {
            // "2: eth0@if123: <FLAGS> mtu 1500 ..." -> name (peer cut), flags, mtu
            let fields: Vec<&str> = l.split_whitespace().collect();
            let name = fields.get(1).unwrap_or(&"").split('@').next().unwrap_or("");
            format!(
                "{name} {} {}",
                fields.get(2).unwrap_or(&""),
                fields.get(4).unwrap_or(&"")
            )
        })
        .collect();
    let rules: Vec<String> = lines_with(&all_rules()?, &format!("id: \\\"{id}\\\""));
    let mut dn_rules: Vec<String> = lines_with(
        &all_rules()?,
        &cni_plugins::plugins::portmap::dnat_chain(&network.name, id),
    );
    dn_rules.sort();
    let bridge_addrs: Vec<String> = run("ip", &["-o", "addr", "show", "dev", &network.bridge.0])?
        .lines()
        .filter(|l| !l.contains("fe80::"))
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let files = ipam_files(&network.ipam_dir());
    Ok(json!({
        "result": raw,
        "addrs": addrs,
        "routes4": routes4,
        "routes6": routes6,
        "links": links,
        "rules": rules,
        "dn_rules": dn_rules,
        "bridge_addrs": bridge_addrs,
        "files": files,
    }))
}

/// The same conflist through our plugins and through the reference ones,
/// each in a fresh namespace on a fresh bridge and data dir: the same
/// result, addresses, routes, DNS, rules and files.
pub fn chain_matches_reference() -> anyhow::Result<()> {
    let mut seen = Vec::new();
    for (set, bin) in plugin_sets() {
        let network = Network::create(
            "cnit-eq",
            "cnit30",
            "10.240.30.0/24",
            Some("fd00:240:30::/64"),
            bin,
        )?;
        let ns = Netns::create(&format!("eq-{set}"))?;
        let rt = network.runtime_conf(&ns, "cniteq", &[(18030, 80)]);
        let result = network.add(&rt).with_context(|| format!("{set} ADD"))?;
        let observed = observe(&network, &ns, &result, "cniteq");
        let del = network.del(&rt);
        let observed = observed?;
        del.with_context(|| format!("{set} DEL"))?;
        ensure!(
            observed["result"]["dns"]["nameservers"] == json!(["10.240.0.10"]),
            "{set}: no DNS in {}",
            observed["result"]
        );
        seen.push((set, observed));
    }
    let (ours, theirs) = (&seen[0].1, &seen[1].1);
    for key in [
        "result",
        "addrs",
        "routes4",
        "routes6",
        "links",
        "rules",
        "dn_rules",
        "bridge_addrs",
        "files",
    ] {
        ensure!(
            ours[key] == theirs[key],
            "{key} differs:\nours      {}\nreference {}",
            ours[key],
            theirs[key]
        );
    }
    Ok(())
}

/// The bridge options the main comparison leaves out (`promiscMode`,
/// `isDefaultGateway`, `forceAddress`, `mtu`) give the same state through
/// our plugins and the reference ones: the default route via the gateway,
/// the MTU, a promiscuous bridge. (`vlan` needs a kernel with bridge VLAN
/// filtering, which these test machines lack: `ip link add type bridge
/// vlan_filtering 1` answers "Operation not supported".)
pub fn bridge_options_match_reference() -> anyhow::Result<()> {
    let options = json!({
        // Either hairpin or promiscuous mode, never both (as the reference).
        "hairpinMode": false,
        "promiscMode": true,
        "isDefaultGateway": true,
        "forceAddress": true,
        "mtu": 1400
    });
    let mut seen = Vec::new();
    for (set, bin) in plugin_sets() {
        let network = Network::create_with(
            "cnit-opt",
            "cnit32",
            "10.240.32.0/24",
            None,
            bin,
            options.clone(),
        )?;
        let ns = Netns::create(&format!("opt-{set}"))?;
        let rt = network.runtime_conf(&ns, "cnitopt", &[]);
        network.add(&rt).with_context(|| format!("{set} ADD"))?;
        let observed = (|| -> anyhow::Result<Value> {
            let routes = ns.exec(&["ip", "-4", "route", "show"])?;
            let eth0 = ns.exec(&["ip", "-o", "link", "show", "eth0"])?;
            let mtu = eth0
                .split_whitespace()
                .skip_while(|w| *w != "mtu")
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let bridge = run("ip", &["-o", "link", "show", &network.bridge.0])?;
            let promisc = bridge.contains("PROMISC");
            Ok(json!({
                "routes": routes,
                "mtu": mtu,
                "promisc": promisc,
            }))
        })();
        let del = network.del(&rt);
        let observed = observed?;
        del.with_context(|| format!("{set} DEL"))?;
        ensure!(
            observed["routes"]
                .as_str()
                .is_some_and(|r| r.starts_with("default via 10.240.32.1")),
            "{set}: no default route via the gateway: {observed}"
        );
        ensure!(observed["mtu"] == "1400", "{set}: {observed}");
        ensure!(
            observed["promisc"] == true,
            "{set}: bridge not promiscuous: {observed}"
        );
        seen.push((set, observed));
    }
    ensure!(
        seen[0].1 == seen[1].1,
        "bridge options differ:\nours      {}\nreference {}",
        seen[0].1,
        seen[1].1
    );
    Ok(())
}

/// ADD through one plugin set, DEL through the other, both ways round:
/// nothing of the pod is left (veth, address file, iptables rules).
pub fn chain_state_crosses_plugin_sets() -> anyhow::Result<()> {
    let sets = plugin_sets();
    for (adder, deleter) in [(&sets[0], &sets[1]), (&sets[1], &sets[0])] {
        let network = Network::create(
            "cnit-x",
            "cnit31",
            "10.240.31.0/24",
            Some("fd00:240:31::/64"),
            adder.1.clone(),
        )?;
        let ns = Netns::create(&format!("x-{}", adder.0))?;
        let id = format!("cnitx{}", adder.0);
        let rt = network.runtime_conf(&ns, &id, &[(18031, 80)]);
        let result = network
            .add(&rt)
            .with_context(|| format!("{} ADD", adder.0))?;
        ensure!(result.pod_ips("eth0").len() == 2, "{}", result.raw);
        ensure!(reserved_ips(&network.ipam_dir()).len() == 2);
        network
            .del_with(&deleter.1, &rt)
            .with_context(|| format!("{} DEL after {} ADD", deleter.0, adder.0))?;
        assert_nothing_left(&network, &ns, &id)?;
    }
    Ok(())
}

fn assert_nothing_left(network: &Network, ns: &Netns, id: &str) -> anyhow::Result<()> {
    let ports = run("ip", &["-o", "link", "show", "master", &network.bridge.0]).unwrap_or_default();
    ensure!(
        ports.trim().is_empty(),
        "veths left on the bridge:\n{ports}"
    );
    ensure!(
        ns.exec(&["ip", "link", "show", "eth0"]).is_err(),
        "eth0 left in the netns"
    );
    let files = reserved_ips(&network.ipam_dir());
    ensure!(files.is_empty(), "address files left: {files:?}");
    let rules = all_rules()?;
    let left = lines_with(&rules, id);
    ensure!(left.is_empty(), "rules left: {left:#?}");
    for chain in [
        cni_plugins::iptables::chain_name("CNI-", &network.name, id),
        cni_plugins::plugins::portmap::dnat_chain(&network.name, id),
    ] {
        ensure!(!rules.contains(&chain), "chain {chain} left");
    }
    Ok(())
}

struct Listener(Child);

impl Listener {
    /// busybox nc answering every connection on `port` inside `ns`.
    fn start(ns: &Netns, port: u16, reply: &str) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "busybox",
                "nc",
                "-ll",
                "-p",
                &port.to_string(),
                "-e",
                "busybox",
                "echo",
                reply,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fetch(addr: &str) -> anyhow::Result<String> {
    let mut last = None;
    for _ in 0..50 {
        match TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(3)))?;
                // The listener answers and closes; a reset after the
                // answer is fine, the bytes are what counts.
                let mut bytes = Vec::new();
                let mut chunk = [0u8; 256];
                while let Ok(n) = stream.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    bytes.extend_from_slice(&chunk[..n]);
                }
                if !bytes.is_empty() {
                    return Ok(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            Err(err) => last = Some(err),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("no answer from {addr}: {last:?}")
}

/// Two pods on our bridge reach each other and the host; a hostPort
/// reaches a listener in a pod from the host (via the bridge address and
/// via localhost); after DEL nothing of either pod is left.
pub fn connectivity_and_clean_del() -> anyhow::Result<()> {
    let network = Network::create(
        "cnit-conn",
        "cnit32",
        "10.240.32.0/24",
        Some("fd00:240:32::/64"),
        ours(),
    )?;
    let a = Netns::create("conn-a")?;
    let b = Netns::create("conn-b")?;
    let rt_a = network.runtime_conf(&a, "cnitconna", &[(18032, 8080)]);
    let rt_b = network.runtime_conf(&b, "cnitconnb", &[]);
    let outcome = (|| {
        let ra = network.add(&rt_a)?;
        let rb = network.add(&rt_b)?;
        let ip_a = ra.pod_ips("eth0");
        let ip_b = rb.pod_ips("eth0");
        ensure!(ip_a.len() == 2 && ip_b.len() == 2, "{ip_a:?} {ip_b:?}");
        for target in &ip_b {
            a.exec(&["busybox", "ping", "-c1", "-W2", &target.to_string()])
                .with_context(|| format!("a -> b {target}"))?;
        }
        b.exec(&["busybox", "ping", "-c1", "-W2", &ip_a[0].to_string()])?;
        // The host, through the gateway address on the bridge.
        a.exec(&["busybox", "ping", "-c1", "-W2", "10.240.32.1"])?;
        run("busybox", &["ping", "-c1", "-W2", &ip_a[0].to_string()])?;
        a.exec(&["busybox", "ping", "-c1", "-W2", "127.0.0.1"])?;
        let _listener = Listener::start(&a, 8080, "hello-from-pod")?;
        let via_bridge = fetch("10.240.32.1:18032")?;
        ensure!(via_bridge.contains("hello-from-pod"), "{via_bridge:?}");
        let via_localhost = fetch("127.0.0.1:18032")?;
        ensure!(
            via_localhost.contains("hello-from-pod"),
            "{via_localhost:?}"
        );
        // Pod b reaches pod a through the host port too (hairpin NAT).
        let hairpin = b.exec(&[
            "busybox",
            "sh",
            "-c",
            "echo | busybox nc -w 3 10.240.32.1 18032",
        ])?;
        ensure!(hairpin.contains("hello-from-pod"), "{hairpin:?}");
        Ok(())
    })();
    let del_a = network.del(&rt_a);
    let del_b = network.del(&rt_b);
    outcome?;
    del_a?;
    del_b?;
    assert_nothing_left(&network, &a, "cnitconna")?;
    assert_nothing_left(&network, &b, "cnitconnb")?;
    // DEL again, and with the namespace gone: both fine.
    network.del(&rt_a)?;
    drop(a);
    network.del(&rt_a)?;
    Ok(())
}

fn bridge_config(network: &Network, ipam: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network.name,
        "type": "bridge",
        "bridge": network.bridge.0,
        "isGateway": true,
        "ipMasq": true,
        "ipam": ipam
    })
}

/// Malformed JSON (6), unknown IPAM type (7), bad CIDR (7), missing env
/// (4), an exhausted range (11): the right code from our plugins, and no
/// veth, address file or rule left.
pub fn bad_input_codes_and_nothing_left() -> anyhow::Result<()> {
    let network = Network::create("cnit-bad", "cnit33", "10.240.33.0/24", None, ours())?;
    let ns = Netns::create("bad")?;
    let env = ns.env("cnitbad", "eth0");
    let bin = ours();
    let expect = |run: PluginRun, code: u64, what: &str| -> anyhow::Result<()> {
        let err = run.error().with_context(|| what.to_owned())?;
        ensure!(err["code"] == code, "{what}: {err}");
        ensure!(
            err["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
        Ok(())
    };
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        expect(
            run_plugin_raw(
                &bin,
                plugin,
                "ADD",
                &env,
                b"{\"cniVersion\": \"1.0.0\", \"name\":",
            )?,
            6,
            &format!("{plugin} malformed JSON"),
        )?;
        expect(
            run_plugin_raw(&bin, plugin, "ADD", &[], b"{}")?,
            4,
            &format!("{plugin} missing env"),
        )?;
    }
    let unknown = bridge_config(&network, json!({"type": "no-such-ipam"}));
    expect(
        run_plugin(&bin, "bridge", "ADD", &env, &unknown)?,
        7,
        "unknown ipam type",
    )?;
    let bad_cidr = bridge_config(
        &network,
        json!({"type": "host-local", "dataDir": network.ipam_root(), "ranges": [[{"subnet": "10.240.33.0/33"}]]}),
    );
    expect(
        run_plugin(&bin, "bridge", "ADD", &env, &bad_cidr)?,
        7,
        "bad CIDR",
    )?;
    expect(
        run_plugin(&bin, "host-local", "ADD", &env, &bad_cidr)?,
        7,
        "bad CIDR (host-local)",
    )?;
    // A /30 has one address for pods (.2; .1 is the gateway).
    let tiny = bridge_config(
        &network,
        json!({"type": "host-local", "dataDir": network.ipam_root(), "ranges": [[{"subnet": "10.240.33.0/30"}]]}),
    );
    let first = run_plugin(&bin, "bridge", "ADD", &ns.env("cnitbad1", "eth0"), &tiny)?.success()?;
    ensure!(first["ips"][0]["address"] == "10.240.33.2/30", "{first}");
    let other = Netns::create("bad2")?;
    let full = run_plugin(&bin, "bridge", "ADD", &other.env("cnitbad2", "eth0"), &tiny)?;
    let err = full.error()?;
    ensure!(err["code"] == 11, "exhausted: {err}");
    ensure!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains("no IP addresses available"),
        "{err}"
    );
    ensure!(
        other.exec(&["ip", "link", "show", "eth0"]).is_err(),
        "eth0 left after failed ADD"
    );
    let ports = run("ip", &["-o", "link", "show", "master", &network.bridge.0])?;
    ensure!(
        ports.lines().count() == 1,
        "veths after failed ADD:\n{ports}"
    );
    ensure!(
        lines_with(&all_rules()?, "cnitbad2").is_empty(),
        "rules of the failed ADD left"
    );
    ensure!(
        reserved_ips(&network.ipam_dir()) == ["10.240.33.2"],
        "{:?}",
        reserved_ips(&network.ipam_dir())
    );
    // None of the failures above left anything for cnitbad.
    ensure!(
        ns.exec(&["ip", "link", "show", "eth0"]).is_ok(),
        "first pod lost eth0"
    );
    run_plugin(&bin, "bridge", "DEL", &ns.env("cnitbad1", "eth0"), &tiny)?.success()?;
    assert_nothing_left(&network, &ns, "cnitbad")?;
    Ok(())
}

/// What the host holds for `network`: links on or named like its bridge,
/// its host-local files, and iptables lines naming its pods, subnets or
/// network. Only this test's own state: other tests (and other engineers'
/// runs on a shared machine) add and remove links and rules meanwhile.
fn host_state(network: &Network) -> anyhow::Result<(usize, Vec<String>, usize)> {
    let bridge = &network.bridge.0;
    let ports = run("ip", &["-o", "link", "show", "master", bridge])?;
    let named = std::fs::read_dir("/sys/class/net")?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(bridge.as_str()))
        .count();
    let links = ports.lines().count() + named;
    let files = ipam_files(&network.ipam_dir());
    let rules = all_rules()?
        .lines()
        .filter(|l| l.starts_with("-A"))
        .filter(|l| {
            l.contains("cnitleak")
                || l.contains(&network.name)
                || l.contains("10.240.34.")
                || l.contains("fd00:240:34:")
        })
        .count();
    Ok((links, files, rules))
}

/// 500 ADD/DEL cycles of the whole chain, each in a fresh namespace:
/// afterwards the host has the same links, files and rules as after the
/// first cycle.
pub fn add_del_500_cycles_leak_nothing() -> anyhow::Result<()> {
    let network = Network::create(
        "cnit-leak",
        "cnit34",
        "10.240.34.0/24",
        Some("fd00:240:34::/64"),
        ours(),
    )?;
    let mut baseline = None;
    for cycle in 0..500 {
        let ns = Netns::create("leak")?;
        let id = format!("cnitleak{cycle}");
        let rt = network.runtime_conf(&ns, &id, &[(18034, 80)]);
        let result = network
            .add(&rt)
            .with_context(|| format!("cycle {cycle} ADD"))?;
        ensure!(
            result.pod_ips("eth0").len() == 2,
            "cycle {cycle}: {}",
            result.raw
        );
        network
            .del(&rt)
            .with_context(|| format!("cycle {cycle} DEL"))?;
        drop(ns);
        if cycle == 0 {
            baseline = Some(host_state(&network)?);
        }
    }
    let end = host_state(&network)?;
    let baseline = baseline.context("no baseline")?;
    ensure!(
        end.0 == baseline.0,
        "links: {} after the first cycle, {} at the end",
        baseline.0,
        end.0
    );
    ensure!(
        end.1 == baseline.1,
        "ipam files: {:?} vs {:?}",
        baseline.1,
        end.1
    );
    ensure!(
        end.2 == baseline.2,
        "iptables lines: {} vs {}",
        baseline.2,
        end.2
    );
    ensure!(reserved_ips(&network.ipam_dir()).is_empty());
    let cache =
        std::fs::read_dir(network.dir.path().join("cache/results")).map_or(0, |d| d.count());
    ensure!(cache == 0, "{cache} cache entries left");
    Ok(())
}
