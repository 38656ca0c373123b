//! Privileged integration tests of the invoker's operations beyond ADD and
//! DEL, through real plugin processes (ours and Debian's reference ones)
//! against real namespaces, bridges, iptables and host-local state: CHECK,
//! GC with `cni.dev/valid-attachments`, STATUS, `runtimeConfig` injection
//! (a hostPort that works), VERSION negotiation, the plugin timeout and the
//! plugin's error code and message reaching the caller.
//!
//! Needs root; otherwise every trial reports itself as ignored with the
//! reason. Each trial owns its namespaces (`cniv-*`), bridge (`cniv*`) and
//! subnet (10.241.N.0/24), so trials may run in parallel; guards remove
//! what they made however a trial ends.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use cni_plugins::{CniError, GcAttachment, Invoker, NetworkConfigList, RuntimeConf};
use libtest_mimic::Arguments;
use serde_json::{Map, Value, json};

use support::*;

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        root_trial(
            "check_passes_then_finds_a_broken_pod",
            check_passes_then_finds_a_broken_pod,
        ),
        root_trial(
            "gc_releases_what_no_sandbox_uses",
            gc_releases_what_no_sandbox_uses,
        ),
        root_trial(
            "gc_of_a_10_network_with_reference_plugins",
            gc_of_a_10_network_with_reference_plugins,
        ),
        root_trial("status_of_a_11_network", status_of_a_11_network),
        root_trial(
            "host_port_from_runtime_config",
            host_port_from_runtime_config,
        ),
        root_trial(
            "incompatible_version_is_refused",
            incompatible_version_is_refused,
        ),
        root_trial(
            "hung_plugin_is_killed_at_the_timeout",
            hung_plugin_is_killed_at_the_timeout,
        ),
        root_trial(
            "plugin_errors_reach_the_caller",
            plugin_errors_reach_the_caller,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// A network namespace `cniv-<tag>-<pid>`, deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn create(tag: &str) -> anyhow::Result<Self> {
        let name = format!("cniv-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        Ok(Self { name })
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// One network: conflist (bridge with host-local, then `extra`), cache and
/// host-local data dir in a temp dir, bridge `cniv<octet>`, subnet
/// `10.241.<octet>.0/24`.
struct Net {
    dir: tempfile::TempDir,
    name: String,
    octet: u8,
    bridge: BridgeGuard,
    invoker: Invoker,
}

impl Net {
    fn create(
        name: &str,
        octet: u8,
        version: &str,
        bin_dir: &Path,
        extra: Value,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("net.d"))?;
        let bridge = BridgeGuard::new(&format!("cniv{octet}"));
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": bridge.0,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": dir.path().join("ipam"),
                "ranges": [[{"subnet": format!("10.241.{octet}.0/24")}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        })];
        plugins.extend(extra.as_array().cloned().unwrap_or_default());
        let list = json!({"cniVersion": version, "name": name, "plugins": plugins});
        std::fs::write(
            dir.path().join("net.d/10-cniv.conflist"),
            serde_json::to_vec_pretty(&list)?,
        )?;
        let invoker = Invoker::new(
            dir.path().join("net.d"),
            vec![bin_dir.to_owned()],
            dir.path().join("cache"),
        );
        Ok(Self {
            dir,
            name: name.to_owned(),
            octet,
            bridge,
            invoker,
        })
    }

    fn load(&self) -> anyhow::Result<NetworkConfigList> {
        Ok(self.invoker.load_network()?)
    }

    fn rt(&self, ns: &Ns, id: &str, capability_args: Map<String, Value>) -> RuntimeConf {
        RuntimeConf {
            container_id: id.to_owned(),
            netns: ns.path(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), id.into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), id.into()),
                ("K8S_POD_UID".into(), format!("uid-{id}")),
            ],
            capability_args,
        }
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam").join(&self.name)
    }

    fn cache_entry(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("cache/results/{}-{id}-eth0", self.name))
    }

    fn gateway(&self) -> String {
        format!("10.241.{}.1", self.octet)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The host-side veth of a pod: the peer of its eth0.
fn host_veth(ns: &Ns) -> anyhow::Result<String> {
    let index = ns.exec(&["cat", "/sys/class/net/eth0/iflink"])?;
    let index = index.trim();
    for entry in std::fs::read_dir("/sys/class/net")? {
        let entry = entry?;
        let ifindex = std::fs::read_to_string(entry.path().join("ifindex")).unwrap_or_default();
        if ifindex.trim() == index {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("no host link with index {index}")
}

fn port_mappings(host: u16, container: u16) -> Map<String, Value> {
    let mut caps = Map::new();
    caps.insert(
        "portMappings".into(),
        json!([{"hostPort": host, "containerPort": container, "protocol": "tcp", "hostIP": ""}]),
    );
    caps
}

/// CHECK with the cached result passes on a healthy pod, through our
/// plugins and the reference ones, also for a runtime that lost the
/// arguments; once the pod's address is gone it fails with the bridge
/// plugin's error (CHECK stops at the first failing plugin).
fn check_passes_then_finds_a_broken_pod() -> anyhow::Result<()> {
    for (index, (set, bin)) in plugin_sets().into_iter().enumerate() {
        let octet = 1 + index as u8;
        // The reference portmap (1.1.1) fails CHECK for any IPv4-only pod:
        // it looks for the pod's chain in the IPv6 table too. Ours is
        // checked with portmap in the chain.
        let extra = if set == "ours" {
            json!([{"type": "portmap", "capabilities": {"portMappings": true}}])
        } else {
            json!([])
        };
        let net = Net::create(&format!("cniv-check-{set}"), octet, "1.0.0", &bin, extra)?;
        let ns = Ns::create(&format!("check{octet}"))?;
        let rt = net.rt(
            &ns,
            &format!("cnivcheck{octet}"),
            port_mappings(18_300 + u16::from(octet), 80),
        );
        let list = net.load()?;
        runtime()?.block_on(async {
            let outcome = async {
                net.invoker.add(&list, &rt).await.context("ADD")?;
                net.invoker.check(&list, &rt).await.context("CHECK")?;
                let bare = RuntimeConf {
                    args: Vec::new(),
                    capability_args: Map::new(),
                    ..rt.clone()
                };
                net.invoker
                    .check(&list, &bare)
                    .await
                    .context("CHECK with the cached arguments")?;
                ns.exec(&["ip", "addr", "flush", "dev", "eth0"])?;
                match net.invoker.check(&list, &rt).await {
                    Err(CniError::Plugin {
                        plugin, code, msg, ..
                    }) => {
                        eprintln!("{set}: CHECK of the broken pod: {plugin} code {code}: {msg}");
                        ensure!(plugin == "bridge", "{set}: failed in {plugin}");
                        ensure!(!msg.is_empty(), "{set}: empty message");
                    }
                    other => bail!("{set}: CHECK of a pod without its address: {other:?}"),
                }
                Ok(())
            }
            .await;
            let del = net.invoker.del(Some(&list), &rt).await;
            outcome?;
            del.context("DEL")?;
            ensure!(
                reserved_ips(&net.ipam_dir()).is_empty(),
                "{set}: addresses left"
            );
            Ok(())
        })?;
    }
    Ok(())
}

/// GC of a spec 1.1 network through our plugins: the pod still listed
/// keeps everything; the other loses its veth, portmap rules, address and
/// cache entry (DEL from the cache); an address no cache entry knows (a
/// runtime that lost its state) is released by host-local's own GC.
fn gc_releases_what_no_sandbox_uses() -> anyhow::Result<()> {
    let net = Net::create(
        "cniv-gc",
        3,
        "1.1.0",
        &ours(),
        json!([{"type": "portmap", "capabilities": {"portMappings": true}}]),
    )?;
    let keep = Ns::create("gc-keep")?;
    let gone = Ns::create("gc-gone")?;
    let rt_keep = net.rt(&keep, "cnivgckeep", Map::new());
    let rt_gone = net.rt(&gone, "cnivgcgone", port_mappings(18_303, 80));
    let list = net.load()?;
    runtime()?.block_on(async {
        let outcome = async {
            net.invoker.add(&list, &rt_keep).await.context("ADD keep")?;
            let gone_ip = net.invoker.add(&list, &rt_gone).await.context("ADD gone")?;
            let gone_ip = gone_ip.pod_ips("eth0")[0].to_string();
            let gone_veth = host_veth(&gone)?;
            // A reservation of an attachment nobody has a record of.
            std::fs::write(net.ipam_dir().join("10.241.3.200"), "cnivghost\r\neth0")?;
            ensure!(
                !lines_with(&all_rules()?, "cnivgcgone").is_empty(),
                "no portmap rules for the pod to collect"
            );

            let outcome = net
                .invoker
                .gc(&list, || {
                    vec![GcAttachment {
                        container_id: "cnivgckeep".into(),
                        ifname: "eth0".into(),
                    }]
                })
                .await
                .context("GC")?;
            ensure!(
                outcome.released
                    == [GcAttachment {
                        container_id: "cnivgcgone".into(),
                        ifname: "eth0".into()
                    }],
                "released {:?}",
                outcome.released
            );
            ensure!(outcome.plugins_collected, "plugins were not sent GC");
            let left = reserved_ips(&net.ipam_dir());
            ensure!(
                left.len() == 1 && left[0] != gone_ip && left[0] != "10.241.3.200",
                "host-local still holds {left:?} (released {gone_ip} and 10.241.3.200?)"
            );
            ensure!(
                !link_exists(&gone_veth),
                "veth {gone_veth} of the collected pod left"
            );
            ensure!(
                lines_with(&all_rules()?, "cnivgcgone").is_empty(),
                "portmap rules of the collected pod left"
            );
            ensure!(!net.cache_entry("cnivgcgone").exists(), "cache entry left");
            ensure!(
                net.cache_entry("cnivgckeep").is_file(),
                "kept pod lost its cache entry"
            );
            net.invoker
                .check(&list, &rt_keep)
                .await
                .context("CHECK of the kept pod after GC")?;
            Ok(())
        }
        .await;
        let del_keep = net.invoker.del(Some(&list), &rt_keep).await;
        let del_gone = net.invoker.del(Some(&list), &rt_gone).await;
        outcome?;
        del_keep.context("DEL keep")?;
        del_gone.context("DEL gone (again)")?;
        ensure!(reserved_ips(&net.ipam_dir()).is_empty(), "addresses left");
        Ok(())
    })
}

/// A spec 1.0 network (the reference plugins predate 1.1): GC still DELs
/// the stale cached attachment, and sends the plugins no GC.
fn gc_of_a_10_network_with_reference_plugins() -> anyhow::Result<()> {
    let net = Net::create(
        "cniv-gcref",
        4,
        "1.0.0",
        Path::new(REFERENCE_DIR),
        json!([]),
    )?;
    let keep = Ns::create("gcref-keep")?;
    let gone = Ns::create("gcref-gone")?;
    let rt_keep = net.rt(&keep, "cnivgcrefkeep", Map::new());
    let rt_gone = net.rt(&gone, "cnivgcrefgone", Map::new());
    let list = net.load()?;
    runtime()?.block_on(async {
        let outcome = async {
            net.invoker.add(&list, &rt_keep).await?;
            net.invoker.add(&list, &rt_gone).await?;
            let ghost = net.ipam_dir().join("10.241.4.200");
            std::fs::write(&ghost, "cnivghost\r\neth0")?;
            let outcome = net
                .invoker
                .gc(&list, || {
                    vec![GcAttachment {
                        container_id: "cnivgcrefkeep".into(),
                        ifname: "eth0".into(),
                    }]
                })
                .await?;
            ensure!(outcome.released.len() == 1, "{outcome:?}");
            ensure!(!outcome.plugins_collected, "GC sent to 1.0.0 plugins");
            ensure!(
                gone.exec(&["ip", "link", "show", "eth0"]).is_err(),
                "collected pod kept eth0"
            );
            ensure!(
                ghost.exists(),
                "without plugin GC the unknown reservation must stay"
            );
            std::fs::remove_file(&ghost)?;
            ensure!(
                reserved_ips(&net.ipam_dir()).len() == 1,
                "{:?}",
                reserved_ips(&net.ipam_dir())
            );
            Ok(())
        }
        .await;
        let del = net.invoker.del(Some(&list), &rt_keep).await;
        outcome?;
        del?;
        Ok(())
    })
}

/// STATUS of a spec 1.1 network through our plugins: ready while
/// host-local can open its store (bridge asks its IPAM plugin), failing
/// with the plugin's code and message when it cannot.
fn status_of_a_11_network() -> anyhow::Result<()> {
    let net = Net::create("cniv-status", 5, "1.1.0", &ours(), json!([]))?;
    let list = net.load()?;
    runtime()?.block_on(async {
        net.invoker.status(&list).await.context("STATUS")?;
        // The data dir cannot be made: its parent is a regular file.
        let blocker = net.dir.path().join("not-a-dir");
        std::fs::write(&blocker, "")?;
        let mut broken: Value = serde_json::from_slice(&list.bytes)?;
        broken["plugins"][0]["ipam"]["dataDir"] = json!(blocker.join("ipam"));
        let broken = NetworkConfigList::from_conflist(&serde_json::to_vec(&broken)?)?;
        match net.invoker.status(&broken).await {
            Err(err @ CniError::Plugin { .. }) => {
                eprintln!("STATUS of the broken network: {err}");
                ensure!(err.plugin_code().is_some_and(|c| c > 0), "{err:?}");
            }
            other => bail!("STATUS with an unusable data dir: {other:?}"),
        }
        Ok(())
    })
}

/// `portMappings` handed to the invoker reach portmap (which declares the
/// capability) and only through `runtimeConfig`: a listener in the pod is
/// reached on the host port from 127.0.0.1, through our plugins and the
/// reference ones; DEL removes the rules.
fn host_port_from_runtime_config() -> anyhow::Result<()> {
    for (index, (set, bin)) in plugin_sets().into_iter().enumerate() {
        let octet = 6 + index as u8;
        let host_port = 18_300 + u16::from(octet);
        let net = Net::create(
            &format!("cniv-hp-{set}"),
            octet,
            "1.0.0",
            &bin,
            json!([{"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]),
        )?;
        let ns = Ns::create(&format!("hp{octet}"))?;
        let id = format!("cnivhp{octet}");
        let rt = net.rt(&ns, &id, port_mappings(host_port, 8080));
        let list = net.load()?;
        runtime()?.block_on(async {
            let outcome = async {
                net.invoker.add(&list, &rt).await.context("ADD")?;
                let _listener = Listener::start(&ns, 8080, &format!("hello-{set}"))?;
                let answer = fetch(&format!("127.0.0.1:{host_port}"))?;
                ensure!(
                    answer.contains(&format!("hello-{set}")),
                    "{set}: {answer:?}"
                );
                let via_gateway = fetch(&format!("{}:{host_port}", net.gateway()))?;
                ensure!(via_gateway.contains("hello"), "{set}: {via_gateway:?}");
                Ok(())
            }
            .await;
            let del = net.invoker.del(Some(&list), &rt).await;
            outcome?;
            del?;
            ensure!(
                lines_with(&all_rules()?, &id).is_empty(),
                "{set}: rules left after DEL"
            );
            Ok(())
        })?;
    }
    Ok(())
}

/// The reference plugins answer VERSION without 1.1.0: a 1.1.0 network is
/// refused before anything is made.
fn incompatible_version_is_refused() -> anyhow::Result<()> {
    let net = Net::create(
        "cniv-version",
        8,
        "1.1.0",
        Path::new(REFERENCE_DIR),
        json!([]),
    )?;
    let ns = Ns::create("version")?;
    let rt = net.rt(&ns, "cnivversion", Map::new());
    let list = net.load()?;
    runtime()?.block_on(async {
        match net.invoker.add(&list, &rt).await {
            Err(CniError::IncompatibleVersion {
                plugin,
                version,
                supported,
            }) => {
                ensure!(
                    plugin == "bridge" && version == "1.1.0",
                    "{plugin} {version}"
                );
                ensure!(supported.iter().any(|v| v == "1.0.0"), "{supported:?}");
            }
            other => {
                let _ = net.invoker.del(Some(&list), &rt).await;
                bail!("ADD of a 1.1.0 network through 1.0 plugins: {other:?}");
            }
        }
        ensure!(!link_exists(&net.bridge.0), "bridge made anyway");
        ensure!(
            ns.exec(&["ip", "link", "show", "eth0"]).is_err(),
            "eth0 made anyway"
        );
        ensure!(
            reserved_ips(&net.ipam_dir()).is_empty(),
            "address reserved anyway"
        );
        Ok(())
    })
}

/// A plugin directory holding one shell-script plugin `name`.
fn script_plugin(dir: &Path, name: &str, body: &str) -> anyhow::Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let path = bin.join(name);
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$CNI_COMMAND\" = VERSION ]; then\n\
           echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}'; exit 0\n\
         fi\n\
         if [ \"$CNI_COMMAND\" = DEL ]; then exit 0; fi\n\
         {body}\n"
    );
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

fn single_plugin_invoker(
    dir: &Path,
    bin: PathBuf,
    plugin: &str,
) -> anyhow::Result<(Invoker, NetworkConfigList)> {
    std::fs::create_dir_all(dir.join("net.d"))?;
    std::fs::write(
        dir.join("net.d/10-script.conflist"),
        json!({"cniVersion": "1.0.0", "name": "cniv-script", "plugins": [{"type": plugin}]})
            .to_string(),
    )?;
    let invoker = Invoker::new(dir.join("net.d"), vec![bin], dir.join("cache"));
    let list = invoker.load_network()?;
    Ok((invoker, list))
}

fn script_rt(id: &str) -> RuntimeConf {
    RuntimeConf {
        container_id: id.into(),
        netns: "/run/netns/cniv-none".into(),
        ifname: "eth0".into(),
        ..RuntimeConf::default()
    }
}

/// A plugin that hangs on ADD (after starting a helper) is killed with
/// its helper when the timeout runs out; the ADD fails with a timeout.
fn hung_plugin_is_killed_at_the_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pids = dir.path().join("pids");
    let bin = script_plugin(
        dir.path(),
        "sleeper",
        &format!(
            "sleep 600 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; sleep 600",
            p = pids.display()
        ),
    )?;
    let (invoker, list) = single_plugin_invoker(dir.path(), bin, "sleeper")?;
    let invoker = invoker.with_plugin_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let outcome = runtime()?.block_on(invoker.add(&list, &script_rt("cnivsleeper")));
    let elapsed = started.elapsed();
    match outcome {
        Err(CniError::Timeout { plugin, timeout }) => {
            ensure!(
                plugin == "sleeper" && timeout == Duration::from_secs(2),
                "{plugin} {timeout:?}"
            );
        }
        other => bail!("ADD of a hanging plugin: {other:?}"),
    }
    ensure!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(15),
        "the ADD took {elapsed:?}"
    );
    let text = std::fs::read_to_string(&pids).context("the plugin never started")?;
    for pid in text.split_whitespace() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its reaper: either way not running.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "process {pid} still runs: {stat}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// What a failing plugin prints reaches the caller as its code, message
/// and details: from a script and from a real plugin (our bridge and the
/// reference one refusing a bad subnet), and the rollback leaves nothing.
fn plugin_errors_reach_the_caller() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = script_plugin(
        dir.path(),
        "quota",
        r#"echo '{"cniVersion":"1.0.0","code":142,"msg":"quota exceeded","details":"10 pods per node"}'; echo 'quota log line' >&2; exit 1"#,
    )?;
    let (invoker, list) = single_plugin_invoker(dir.path(), bin, "quota")?;
    let err = runtime()?
        .block_on(invoker.add(&list, &script_rt("cnivquota")))
        .err()
        .context("the quota plugin's ADD succeeded")?;
    match &err {
        CniError::Plugin {
            plugin,
            code,
            msg,
            details,
        } => {
            ensure!(plugin == "quota" && *code == 142, "{err:?}");
            ensure!(
                msg == "quota exceeded" && details == "10 pods per node",
                "{err:?}"
            );
        }
        other => bail!("expected the plugin's error, got {other:?}"),
    }
    ensure!(
        err.to_string()
            == "CNI plugin quota failed with code 142: quota exceeded (10 pods per node)",
        "{err}"
    );

    for (index, (set, bin)) in plugin_sets().into_iter().enumerate() {
        let octet = 9 + index as u8;
        let net = Net::create(&format!("cniv-err-{set}"), octet, "1.0.0", &bin, json!([]))?;
        let mut conf: Value = serde_json::from_slice(&std::fs::read(
            net.dir.path().join("net.d/10-cniv.conflist"),
        )?)?;
        conf["plugins"][0]["ipam"]["ranges"] =
            json!([[{"subnet": format!("10.241.{octet}.0/33")}]]);
        let list = NetworkConfigList::from_conflist(&serde_json::to_vec(&conf)?)?;
        let ns = Ns::create(&format!("err{octet}"))?;
        let rt = net.rt(&ns, &format!("cniverr{octet}"), Map::new());
        let err = runtime()?
            .block_on(net.invoker.add(&list, &rt))
            .err()
            .with_context(|| format!("{set}: ADD with a /33 succeeded"))?;
        eprintln!("{set}: {err}");
        match &err {
            CniError::Plugin {
                plugin, code, msg, ..
            } => {
                ensure!(plugin == "bridge", "{set}: {err:?}");
                ensure!(*code > 0 && msg.contains("33"), "{set}: {err:?}");
            }
            other => bail!("{set}: expected the plugin's error, got {other:?}"),
        }
        ensure!(
            ns.exec(&["ip", "link", "show", "eth0"]).is_err(),
            "{set}: eth0 left"
        );
        ensure!(
            reserved_ips(&net.ipam_dir()).is_empty(),
            "{set}: address left"
        );
    }
    Ok(())
}

/// busybox nc answering every connection on `port` inside `ns`.
struct Listener(std::process::Child);

impl Listener {
    fn start(ns: &Ns, port: u16, reply: &str) -> anyhow::Result<Self> {
        let port = port.to_string();
        let child = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "busybox", "nc", "-ll", "-p", &port, "-e", "busybox",
                "echo", reply,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
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

/// What a TCP server at `addr` says, retrying while it starts.
fn fetch(addr: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let mut last = None;
    for _ in 0..50 {
        match std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(3)))?;
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
    bail!("no answer from {addr}: {last:?}")
}
