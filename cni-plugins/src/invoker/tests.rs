//! Invoker tests against a fake [`PluginExec`] that records every call and
//! answers as configured, so the chain, cache and error logic run without
//! root or real plugins. Plugin lookup is real: the bin dirs hold empty
//! files named after the plugins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::*;

#[derive(Debug, Clone, PartialEq)]
struct Call {
    plugin: String,
    command: String,
    env: HashMap<String, String>,
    stdin: Value,
}

#[derive(Debug, Clone)]
enum Reply {
    /// Exit 0 printing this JSON (nothing for `Null`).
    Json(Value),
    /// Exit 0 printing these bytes.
    Raw(&'static str),
    /// Exit non-zero.
    Fail {
        exit_code: Option<i32>,
        stdout: &'static str,
        stderr: &'static str,
    },
    /// Never finish.
    Hang,
}

/// Records calls; ADD without a configured reply passes `prevResult` on
/// (as portmap does) or, first in a chain, returns [`default_result`].
/// VERSION is answered from `versions` (every version by default) and
/// recorded apart from the other calls, in `version_calls`.
#[derive(Debug, Default)]
struct FakeExec {
    calls: Mutex<Vec<Call>>,
    replies: Mutex<HashMap<(String, String), Reply>>,
    versions: Mutex<HashMap<String, Vec<&'static str>>>,
    version_calls: Mutex<Vec<String>>,
}

impl FakeExec {
    fn reply(&self, plugin: &str, command: &str, reply: Reply) {
        self.replies
            .lock()
            .unwrap()
            .insert((plugin.to_owned(), command.to_owned()), reply);
    }

    fn clear_replies(&self) {
        self.replies.lock().unwrap().clear();
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn supports(&self, plugin: &str, versions: &[&'static str]) {
        self.versions
            .lock()
            .unwrap()
            .insert(plugin.to_owned(), versions.to_vec());
    }

    fn take_version_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.version_calls.lock().unwrap())
    }
}

impl PluginExec for FakeExec {
    fn exec(&self, request: PluginRequest) -> BoxFuture<'_, Result<PluginOutput, ExecError>> {
        let plugin = request
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let env: HashMap<String, String> = request.env.into_iter().collect();
        let command = env["CNI_COMMAND"].clone();
        let version_reply = self
            .replies
            .lock()
            .unwrap()
            .contains_key(&(plugin.clone(), command.clone()));
        if command == "VERSION" && !version_reply {
            self.version_calls.lock().unwrap().push(plugin.clone());
            let supported = self
                .versions
                .lock()
                .unwrap()
                .get(&plugin)
                .cloned()
                .unwrap_or_else(|| crate::version::SUPPORTED_VERSIONS.to_vec());
            let answer = json!({"cniVersion": "1.1.0", "supportedVersions": supported});
            return Box::pin(async move {
                Ok(PluginOutput {
                    exit_code: Some(0),
                    stdout: answer.to_string().into_bytes(),
                    stderr: Vec::new(),
                })
            });
        }
        let stdin: Value = serde_json::from_slice(&request.stdin).unwrap();
        let reply = self
            .replies
            .lock()
            .unwrap()
            .get(&(plugin.clone(), command.clone()))
            .cloned();
        let reply = reply.unwrap_or_else(|| match command.as_str() {
            "ADD" => Reply::Json(
                stdin
                    .get("prevResult")
                    .cloned()
                    .unwrap_or_else(default_result),
            ),
            _ => Reply::Json(Value::Null),
        });
        self.calls.lock().unwrap().push(Call {
            plugin,
            command,
            env,
            stdin,
        });
        Box::pin(async move {
            let output = match reply {
                Reply::Json(Value::Null) => PluginOutput {
                    exit_code: Some(0),
                    ..PluginOutput::default()
                },
                Reply::Json(value) => PluginOutput {
                    exit_code: Some(0),
                    stdout: value.to_string().into_bytes(),
                    stderr: Vec::new(),
                },
                Reply::Raw(text) => PluginOutput {
                    exit_code: Some(0),
                    stdout: text.as_bytes().to_vec(),
                    stderr: Vec::new(),
                },
                Reply::Fail {
                    exit_code,
                    stdout,
                    stderr,
                } => PluginOutput {
                    exit_code,
                    stdout: stdout.as_bytes().to_vec(),
                    stderr: stderr.as_bytes().to_vec(),
                },
                Reply::Hang => std::future::pending().await,
            };
            Ok(output)
        })
    }
}

fn default_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/test"}],
        "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0}]
    })
}

struct Fixture {
    dir: TempDir,
    exec: Arc<FakeExec>,
    invoker: Invoker,
}

impl Fixture {
    fn new(plugins: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Two bin dirs, the plugins in the second, so the search goes past
        // the first.
        let bin_dirs = vec![dir.path().join("bin1"), dir.path().join("bin2")];
        for bin in &bin_dirs {
            std::fs::create_dir(bin).unwrap();
        }
        for plugin in plugins {
            std::fs::write(bin_dirs[1].join(plugin), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        let exec = Arc::new(FakeExec::default());
        let invoker = Invoker::new(dir.path().join("net.d"), bin_dirs, dir.path().join("cache"))
            .with_exec(exec.clone());
        Self { dir, exec, invoker }
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn bin_path(&self) -> String {
        let root = self.dir.path().display();
        format!("{root}/bin1:{root}/bin2")
    }

    fn cache_file(&self, network: &str) -> PathBuf {
        self.dir
            .path()
            .join("cache/results")
            .join(format!("{network}-ctr1-eth0"))
    }
}

fn conflist(name: &str, version: &str, plugins: Value) -> NetworkConfigList {
    let list = json!({"cniVersion": version, "name": name, "plugins": plugins});
    NetworkConfigList::from_conflist(list.to_string().as_bytes()).unwrap()
}

/// bridge, then portmap declaring portMappings (and bandwidth as false),
/// then tuning declaring nothing.
fn pod_network() -> NetworkConfigList {
    conflist(
        "podnet",
        "1.0.0",
        json!([
            {"type": "bridge", "bridge": "cni0", "name": "stale", "cniVersion": "0.1.0",
             "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}},
            {"type": "tuning"}
        ]),
    )
}

fn port_mappings() -> Value {
    json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
}

fn runtime_conf() -> RuntimeConf {
    let mut capability_args = Map::new();
    capability_args.insert("portMappings".into(), port_mappings());
    capability_args.insert("bandwidth".into(), json!({"ingressRate": 1000}));
    capability_args.insert("dns".into(), json!({"servers": ["10.96.0.10"]}));
    RuntimeConf {
        container_id: "ctr1".into(),
        netns: "/run/netns/test".into(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), "web".into()),
        ],
        capability_args,
    }
}

fn sequence(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.command, c.plugin))
        .collect()
}

fn write(dir: &Path, name: &str, content: &str) {
    std::fs::write(dir.join(name), content).unwrap();
}

#[test]
fn load_network_takes_first_valid_file_by_name() {
    let fx = Fixture::new(&[]);
    let dir = fx.conf_dir();
    write(&dir, "00-broken.conflist", "{ not json");
    write(
        &dir,
        "05-notes.txt",
        r#"{"cniVersion":"1.0.0","name":"txt","type":"bridge"}"#,
    );
    write(
        &dir,
        "07-noplugins.conflist",
        r#"{"cniVersion":"1.0.0","name":"empty","plugins":[]}"#,
    );
    write(
        &dir,
        "10-single.conf",
        r#"{"cniVersion":"0.4.0","name":"single","type":"bridge"}"#,
    );
    write(
        &dir,
        "20-list.conflist",
        r#"{"cniVersion":"1.0.0","name":"list","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
    );

    let net = fx.invoker.load_network().unwrap();
    assert_eq!(net.name, "single");
    assert_eq!(net.cni_version, "0.4.0");
    assert_eq!(
        net.plugins,
        vec![json!({"cniVersion": "0.4.0", "name": "single", "type": "bridge"})]
    );

    std::fs::remove_file(dir.join("10-single.conf")).unwrap();
    let net = fx.invoker.load_network().unwrap();
    assert_eq!(net.name, "list");
    assert_eq!(net.plugins.len(), 2);
}

#[test]
fn load_network_reads_json_as_single_conf() {
    let fx = Fixture::new(&[]);
    write(
        &fx.conf_dir(),
        "99-x.json",
        r#"{"cniVersion":"1.0.0","name":"j","type":"ptp"}"#,
    );
    let net = fx.invoker.load_network().unwrap();
    assert_eq!(net.name, "j");
    assert_eq!(net.plugins[0]["type"], "ptp");
}

#[test]
fn load_network_without_valid_config() {
    let fx = Fixture::new(&[]);
    write(
        &fx.conf_dir(),
        "10-bad.conf",
        r#"{"name":"nover","type":"bridge"}"#,
    );
    let err = fx.invoker.load_network().unwrap_err();
    assert!(
        matches!(&err, CniError::NoNetworkConfig { dir } if *dir == fx.conf_dir()),
        "{err:?}"
    );

    let missing = Invoker::new(
        fx.dir.path().join("absent"),
        Vec::new(),
        fx.dir.path().into(),
    );
    assert!(matches!(
        missing.load_network(),
        Err(CniError::NoNetworkConfig { .. })
    ));
}

#[tokio::test]
async fn add_runs_chain_with_env_injection_and_prev_result() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    let bridge_result = default_result();
    let mut portmap_result = default_result();
    portmap_result["dns"] = json!({"nameservers": ["10.96.0.10"]});
    let tuning_result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/test"}],
        "ips": [{"address": "10.0.0.9/24", "interface": 0}]
    });
    fx.exec
        .reply("bridge", "ADD", Reply::Json(bridge_result.clone()));
    fx.exec
        .reply("portmap", "ADD", Reply::Json(portmap_result.clone()));
    fx.exec
        .reply("tuning", "ADD", Reply::Json(tuning_result.clone()));

    let net = pod_network();
    let result = fx.invoker.add(&net, &runtime_conf()).await.unwrap();

    let calls = fx.exec.take_calls();
    assert_eq!(
        sequence(&calls),
        ["ADD bridge", "ADD portmap", "ADD tuning"]
    );
    for call in &calls {
        let env = &call.env;
        assert_eq!(env["CNI_COMMAND"], "ADD");
        assert_eq!(env["CNI_CONTAINERID"], "ctr1");
        assert_eq!(env["CNI_NETNS"], "/run/netns/test");
        assert_eq!(env["CNI_IFNAME"], "eth0");
        assert_eq!(
            env["CNI_ARGS"],
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
        );
        assert_eq!(env["CNI_PATH"], fx.bin_path());
        // The list's name and version win over what the plugin conf says.
        assert_eq!(call.stdin["name"], "podnet");
        assert_eq!(call.stdin["cniVersion"], "1.0.0");
    }
    assert_eq!(calls[0].stdin["bridge"], "cni0");
    assert!(calls[0].stdin.get("prevResult").is_none());
    assert_eq!(calls[1].stdin["prevResult"], bridge_result);
    assert_eq!(calls[2].stdin["prevResult"], portmap_result);

    // Only the declared-true capability, and only to its declarer.
    assert!(calls[0].stdin.get("runtimeConfig").is_none());
    assert_eq!(
        calls[1].stdin["runtimeConfig"],
        json!({"portMappings": port_mappings()})
    );
    assert!(calls[2].stdin.get("runtimeConfig").is_none());

    assert_eq!(result.raw, tuning_result);
    assert_eq!(
        result.pod_ips("eth0"),
        ["10.0.0.9".parse::<IpAddr>().unwrap()]
    );

    let cached: Value =
        serde_json::from_slice(&std::fs::read(fx.cache_file("podnet")).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], "ctr1");
    assert_eq!(cached["networkName"], "podnet");
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["result"], tuning_result);
    assert_eq!(cached["capabilityArgs"]["portMappings"], port_mappings());
    assert_eq!(cached["cniArgs"][2], json!(["K8S_POD_NAME", "web"]));
    use base64::Engine;
    let config = base64::engine::general_purpose::STANDARD
        .decode(cached["config"].as_str().unwrap())
        .unwrap();
    assert_eq!(config, net.bytes);
}

#[tokio::test]
async fn capability_declared_but_not_given_is_not_injected() {
    let fx = Fixture::new(&["portmap"]);
    let net = conflist(
        "n",
        "1.0.0",
        json!([{"type": "portmap", "capabilities": {"portMappings": true}}]),
    );
    let rt = RuntimeConf {
        capability_args: Map::new(),
        ..runtime_conf()
    };
    fx.invoker.add(&net, &rt).await.unwrap();
    let calls = fx.exec.take_calls();
    assert!(calls[0].stdin.get("runtimeConfig").is_none());
}

#[tokio::test]
async fn del_runs_reverse_with_cached_result_and_is_idempotent() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    let net = pod_network();
    let rt = runtime_conf();
    let added = fx.invoker.add(&net, &rt).await.unwrap();
    fx.exec.take_calls();

    fx.invoker.del(Some(&net), &rt).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(
        sequence(&calls),
        ["DEL tuning", "DEL portmap", "DEL bridge"]
    );
    for call in &calls {
        assert_eq!(call.env["CNI_COMMAND"], "DEL");
        assert_eq!(call.stdin["prevResult"], added.raw);
    }
    assert_eq!(
        calls[1].stdin["runtimeConfig"],
        json!({"portMappings": port_mappings()})
    );
    assert!(!fx.cache_file("podnet").exists());

    // No cache and no config: nothing to do.
    fx.invoker.del(None, &rt).await.unwrap();
    assert!(fx.exec.take_calls().is_empty());

    // No cache but a config: DEL again without prevResult, which plugins
    // must tolerate.
    fx.invoker.del(Some(&net), &rt).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(
        sequence(&calls),
        ["DEL tuning", "DEL portmap", "DEL bridge"]
    );
    assert!(calls.iter().all(|c| c.stdin.get("prevResult").is_none()));
}

#[tokio::test]
async fn del_uses_cached_config_and_args_after_the_conf_dir_changed() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning", "ptp"]);
    let net = pod_network();
    fx.invoker.add(&net, &runtime_conf()).await.unwrap();
    fx.exec.take_calls();

    // After a restart: another network is configured now, and the caller
    // no longer knows the args it used.
    let replacement = conflist("othernet", "1.0.0", json!([{"type": "ptp"}]));
    let rt = RuntimeConf {
        args: Vec::new(),
        capability_args: Map::new(),
        ..runtime_conf()
    };
    fx.invoker.del(Some(&replacement), &rt).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(
        sequence(&calls),
        ["DEL tuning", "DEL portmap", "DEL bridge"]
    );
    assert!(calls.iter().all(|c| c.stdin["name"] == "podnet"));
    assert_eq!(
        calls[0].env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
    );
    assert_eq!(
        calls[1].stdin["runtimeConfig"],
        json!({"portMappings": port_mappings()})
    );
    assert!(!fx.cache_file("podnet").exists());
}

#[tokio::test]
async fn del_without_net_uses_cache() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    fx.invoker
        .add(&pod_network(), &runtime_conf())
        .await
        .unwrap();
    fx.exec.take_calls();
    fx.invoker.del(None, &runtime_conf()).await.unwrap();
    assert_eq!(
        sequence(&fx.exec.take_calls()),
        ["DEL tuning", "DEL portmap", "DEL bridge"]
    );
    fx.invoker.del(None, &runtime_conf()).await.unwrap();
    assert!(fx.exec.take_calls().is_empty());
}

#[tokio::test]
async fn del_keeps_going_reports_first_error_and_keeps_cache() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    let net = pod_network();
    let rt = runtime_conf();
    fx.invoker.add(&net, &rt).await.unwrap();
    fx.exec.take_calls();
    fx.exec.reply(
        "tuning",
        "DEL",
        Reply::Fail {
            exit_code: Some(1),
            stdout: r#"{"cniVersion":"1.0.0","code":11,"msg":"try again later"}"#,
            stderr: "",
        },
    );
    fx.exec.reply(
        "bridge",
        "DEL",
        Reply::Fail {
            exit_code: Some(1),
            stdout: r#"{"cniVersion":"1.0.0","code":999,"msg":"bridge"}"#,
            stderr: "",
        },
    );

    let err = fx.invoker.del(Some(&net), &rt).await.unwrap_err();
    assert!(
        matches!(&err, CniError::Plugin { plugin, code: 11, .. } if plugin == "tuning"),
        "{err:?}"
    );
    assert_eq!(
        sequence(&fx.exec.take_calls()),
        ["DEL tuning", "DEL portmap", "DEL bridge"]
    );
    assert!(fx.cache_file("podnet").exists());

    fx.exec.clear_replies();
    fx.invoker.del(Some(&net), &rt).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.stdin.get("prevResult").is_some()));
    assert!(!fx.cache_file("podnet").exists());
}

#[tokio::test]
async fn failed_add_deletes_the_whole_chain_and_caches_nothing() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    fx.exec.reply(
        "portmap",
        "ADD",
        Reply::Fail {
            exit_code: Some(1),
            stdout: r#"{"code":7,"msg":"invalid port","details":"hostPort 0"}"#,
            stderr: "portmap: bad mapping",
        },
    );
    let err = fx
        .invoker
        .add(&pod_network(), &runtime_conf())
        .await
        .unwrap_err();
    match &err {
        CniError::Plugin {
            plugin,
            code,
            msg,
            details,
        } => {
            assert_eq!(plugin, "portmap");
            assert_eq!(*code, 7);
            assert_eq!(msg, "invalid port");
            assert_eq!(details, "hostPort 0");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "CNI plugin portmap failed with code 7: invalid port (hostPort 0)"
    );
    let calls = fx.exec.take_calls();
    assert_eq!(
        sequence(&calls),
        [
            "ADD bridge",
            "ADD portmap",
            "DEL tuning",
            "DEL portmap",
            "DEL bridge"
        ]
    );
    assert!(
        calls[2..]
            .iter()
            .all(|c| c.stdin.get("prevResult").is_none())
    );
    assert!(!fx.cache_file("podnet").exists());
}

#[tokio::test]
async fn missing_plugin_is_reported_and_rolled_back() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist(
        "n",
        "1.0.0",
        json!([{"type": "bridge"}, {"type": "absent"}]),
    );
    let err = fx.invoker.add(&net, &runtime_conf()).await.unwrap_err();
    match &err {
        CniError::PluginNotFound { plugin, dirs } => {
            assert_eq!(plugin, "absent");
            assert_eq!(dirs.len(), 2);
        }
        other => panic!("unexpected error {other:?}"),
    }
    // DEL of "absent" cannot run either; bridge still gets its DEL.
    assert_eq!(
        sequence(&fx.exec.take_calls()),
        ["ADD bridge", "DEL bridge"]
    );
}

#[tokio::test]
async fn plugin_type_with_a_path_is_refused() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.0.0", json!([{"type": "../bin2/bridge"}]));
    let err = fx.invoker.add(&net, &runtime_conf()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CniError::InvalidArgument {
                field: "plugin type",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(fx.exec.take_calls().is_empty());
}

#[tokio::test]
async fn hanging_plugin_times_out() {
    let fx = Fixture::new(&["bridge"]);
    let invoker = fx
        .invoker
        .clone()
        .with_plugin_timeout(Duration::from_millis(50));
    fx.exec.reply("bridge", "ADD", Reply::Hang);
    let net = conflist("n", "1.0.0", json!([{"type": "bridge"}]));
    let err = invoker.add(&net, &runtime_conf()).await.unwrap_err();
    assert!(
        matches!(&err, CniError::Timeout { plugin, timeout }
            if plugin == "bridge" && *timeout == Duration::from_millis(50)),
        "{err:?}"
    );
}

#[tokio::test]
async fn failure_without_error_json_carries_output() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.0.0", json!([{"type": "bridge"}]));
    fx.exec.reply(
        "bridge",
        "ADD",
        Reply::Fail {
            exit_code: None,
            stdout: "",
            stderr: "panic: runtime error\n",
        },
    );
    let err = fx.invoker.add(&net, &runtime_conf()).await.unwrap_err();
    match &err {
        CniError::PluginFailed {
            plugin,
            status,
            output,
        } => {
            assert_eq!(plugin, "bridge");
            assert_eq!(status, "a signal");
            assert_eq!(output, "panic: runtime error");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn undecodable_results_fail_the_add() {
    let fx = Fixture::new(&["bridge", "portmap"]);
    let net = conflist(
        "n",
        "1.0.0",
        json!([{"type": "bridge"}, {"type": "portmap"}]),
    );
    fx.exec.reply("bridge", "ADD", Reply::Raw("not json"));
    let err = fx.invoker.add(&net, &runtime_conf()).await.unwrap_err();
    assert!(
        matches!(&err, CniError::Decode { plugin, source: ResultError::Json(_) }
            if plugin == "bridge"),
        "{err:?}"
    );
    assert_eq!(
        sequence(&fx.exec.take_calls()),
        ["ADD bridge", "DEL portmap", "DEL bridge"]
    );

    // JSON, but not a result: only the final one has to be.
    fx.exec.clear_replies();
    fx.exec.reply(
        "portmap",
        "ADD",
        Reply::Json(json!({"ips": [{"address": "nope"}]})),
    );
    let err = fx.invoker.add(&net, &runtime_conf()).await.unwrap_err();
    assert!(
        matches!(&err, CniError::Decode { plugin, .. } if plugin == "portmap"),
        "{err:?}"
    );
    assert!(!fx.dir.path().join("cache/results/n-ctr1-eth0").exists());
}

#[tokio::test]
async fn spec_031_del_gets_no_prev_result() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("old", "0.3.1", json!([{"type": "bridge"}]));
    fx.invoker.add(&net, &runtime_conf()).await.unwrap();
    fx.exec.take_calls();
    fx.invoker.del(Some(&net), &runtime_conf()).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(sequence(&calls), ["DEL bridge"]);
    assert!(calls[0].stdin.get("prevResult").is_none());
    assert!(!fx.cache_file("old").exists());
}

#[tokio::test]
async fn unreadable_cache_entry_is_deleted_with_the_given_config() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.0.0", json!([{"type": "bridge"}]));
    std::fs::create_dir_all(fx.dir.path().join("cache/results")).unwrap();
    std::fs::write(fx.cache_file("n"), "truncated{").unwrap();

    // Without a config there is nothing to DEL with: left alone.
    fx.invoker.del(None, &runtime_conf()).await.unwrap();
    assert!(fx.exec.take_calls().is_empty());
    assert!(fx.cache_file("n").exists());

    fx.invoker.del(Some(&net), &runtime_conf()).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(sequence(&calls), ["DEL bridge"]);
    assert!(calls[0].stdin.get("prevResult").is_none());
    assert!(!fx.cache_file("n").exists());
}

#[tokio::test]
async fn unsafe_runtime_conf_is_refused_before_running_anything() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.0.0", json!([{"type": "bridge"}]));
    let cases = [
        (
            "container id",
            RuntimeConf {
                container_id: "../x".into(),
                ..runtime_conf()
            },
        ),
        (
            "container id",
            RuntimeConf {
                container_id: String::new(),
                ..runtime_conf()
            },
        ),
        (
            "interface name",
            RuntimeConf {
                ifname: String::new(),
                ..runtime_conf()
            },
        ),
        (
            "interface name",
            RuntimeConf {
                ifname: "a-very-long-ifname".into(),
                ..runtime_conf()
            },
        ),
        (
            "interface name",
            RuntimeConf {
                ifname: "eth0:1".into(),
                ..runtime_conf()
            },
        ),
        (
            "interface name",
            RuntimeConf {
                ifname: "..".into(),
                ..runtime_conf()
            },
        ),
    ];
    for (expected, rt) in cases {
        let err = fx.invoker.add(&net, &rt).await.unwrap_err();
        assert!(
            matches!(&err, CniError::InvalidArgument { field, .. } if *field == expected),
            "{rt:?}: {err:?}"
        );
        let err = fx.invoker.del(Some(&net), &rt).await.unwrap_err();
        assert!(matches!(err, CniError::InvalidArgument { .. }));
    }
    assert!(fx.exec.take_calls().is_empty());
}

#[tokio::test]
async fn hand_built_invalid_network_is_refused() {
    let fx = Fixture::new(&["bridge"]);
    let net = NetworkConfigList {
        name: "n".into(),
        cni_version: "1.0.0".into(),
        plugins: Vec::new(),
        bytes: Vec::new(),
    };
    let err = fx.invoker.add(&net, &runtime_conf()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CniError::InvalidNetwork {
                source: ConfError::NoPlugins,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn version_is_asked_once_per_binary_and_again_when_it_changes() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    let net = pod_network();
    let rt = runtime_conf();
    fx.invoker.add(&net, &rt).await.unwrap();
    assert_eq!(
        fx.exec.take_version_calls(),
        ["bridge", "portmap", "tuning"]
    );
    fx.invoker.del(Some(&net), &rt).await.unwrap();
    // A clone shares what was learnt.
    fx.invoker.clone().add(&net, &rt).await.unwrap();
    assert!(fx.exec.take_version_calls().is_empty());
    // An upgraded binary (another size) is asked again.
    std::fs::write(fx.dir.path().join("bin2/portmap"), "new").unwrap();
    fx.invoker.del(Some(&net), &rt).await.unwrap();
    assert!(
        fx.exec.take_version_calls().is_empty(),
        "DEL does not negotiate"
    );
    fx.invoker.add(&net, &rt).await.unwrap();
    assert_eq!(fx.exec.take_version_calls(), ["portmap"]);
}

#[tokio::test]
async fn incompatible_plugin_is_refused_before_anything_runs() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    fx.exec.supports("portmap", &["0.3.1", "0.4.0"]);
    let err = fx
        .invoker
        .add(&pod_network(), &runtime_conf())
        .await
        .unwrap_err();
    match &err {
        CniError::IncompatibleVersion {
            plugin,
            version,
            supported,
        } => {
            assert_eq!(plugin, "portmap");
            assert_eq!(version, "1.0.0");
            assert_eq!(supported, &["0.3.1", "0.4.0"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("does not support config version"));
    // bridge ran before portmap was reached; the rollback DELs the chain.
    assert_eq!(
        sequence(&fx.exec.take_calls()),
        ["ADD bridge", "DEL tuning", "DEL portmap", "DEL bridge"]
    );
    assert!(!fx.cache_file("podnet").exists());
}

#[tokio::test]
async fn plugin_without_version_command_speaks_only_010() {
    let fx = Fixture::new(&["old"]);
    fx.exec.reply(
        "old",
        "VERSION",
        Reply::Fail {
            exit_code: Some(1),
            stdout: r#"{"code":4,"msg":"unknown CNI_COMMAND: VERSION"}"#,
            stderr: "",
        },
    );
    let net = conflist("n", "1.0.0", json!([{"type": "old"}]));
    let err = fx.invoker.add(&net, &runtime_conf()).await.unwrap_err();
    assert!(
        matches!(&err, CniError::IncompatibleVersion { supported, .. } if supported == &["0.1.0"]),
        "{err:?}"
    );
    assert!(fx.exec.take_calls().iter().all(|c| c.command != "ADD"));
}

#[tokio::test]
async fn check_runs_in_order_with_the_cached_result() {
    let fx = Fixture::new(&["bridge", "portmap", "tuning"]);
    let net = pod_network();
    let rt = runtime_conf();
    let added = fx.invoker.add(&net, &rt).await.unwrap();
    fx.exec.take_calls();
    // A restarted runtime: no args, no capabilities; the cache has them.
    let bare = RuntimeConf {
        args: Vec::new(),
        capability_args: Map::new(),
        ..rt.clone()
    };
    fx.invoker.check(&net, &bare).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(
        sequence(&calls),
        ["CHECK bridge", "CHECK portmap", "CHECK tuning"]
    );
    for call in &calls {
        assert_eq!(call.stdin["prevResult"], added.raw);
        assert_eq!(call.env["CNI_NETNS"], "/run/netns/test");
        assert!(call.env["CNI_ARGS"].contains("K8S_POD_NAME=web"));
    }
    assert_eq!(
        calls[1].stdin["runtimeConfig"],
        json!({"portMappings": port_mappings()})
    );

    fx.exec.reply(
        "portmap",
        "CHECK",
        Reply::Fail {
            exit_code: Some(1),
            stdout: r#"{"cniVersion":"1.0.0","code":999,"msg":"chain CNI-DN-x not found"}"#,
            stderr: "",
        },
    );
    let err = fx.invoker.check(&net, &rt).await.unwrap_err();
    assert_eq!(err.plugin_code(), Some(999));
    assert!(
        err.to_string().contains("chain CNI-DN-x not found"),
        "{err}"
    );
    // Stops at the first failure.
    assert_eq!(
        sequence(&fx.exec.take_calls()),
        ["CHECK bridge", "CHECK portmap"]
    );
}

#[tokio::test]
async fn check_needs_a_cached_result_and_a_new_enough_list() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.0.0", json!([{"type": "bridge"}]));
    let err = fx.invoker.check(&net, &runtime_conf()).await.unwrap_err();
    assert!(matches!(err, CniError::NoCachedResult { .. }), "{err:?}");

    let old = conflist("n", "0.3.1", json!([{"type": "bridge"}]));
    let err = fx.invoker.check(&old, &runtime_conf()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CniError::CommandUnsupported {
                command: "CHECK",
                ..
            }
        ),
        "{err:?}"
    );

    let disabled = NetworkConfigList::from_conflist(
        br#"{"cniVersion":"1.0.0","name":"n","disableCheck":true,"plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    fx.invoker.check(&disabled, &runtime_conf()).await.unwrap();
    assert!(fx.exec.take_calls().is_empty());
}

#[tokio::test]
async fn status_asks_every_plugin_of_a_11_list() {
    let fx = Fixture::new(&["bridge", "portmap"]);
    let old = conflist(
        "n",
        "1.0.0",
        json!([{"type": "bridge"}, {"type": "portmap"}]),
    );
    fx.invoker.status(&old).await.unwrap();
    assert!(fx.exec.take_calls().is_empty());

    let net = conflist(
        "n",
        "1.1.0",
        json!([{"type": "bridge"}, {"type": "portmap"}]),
    );
    fx.invoker.status(&net).await.unwrap();
    let calls = fx.exec.take_calls();
    assert_eq!(sequence(&calls), ["STATUS bridge", "STATUS portmap"]);
    assert_eq!(calls[0].env["CNI_CONTAINERID"], "");
    assert_eq!(calls[0].stdin["name"], "n");
    assert!(calls[0].stdin.get("prevResult").is_none());

    fx.exec.reply(
        "bridge",
        "STATUS",
        Reply::Fail {
            exit_code: Some(1),
            stdout: r#"{"cniVersion":"1.1.0","code":50,"msg":"no addresses left"}"#,
            stderr: "",
        },
    );
    let err = fx.invoker.status(&net).await.unwrap_err();
    assert_eq!(err.plugin_code(), Some(50));
    assert_eq!(sequence(&fx.exec.take_calls()), ["STATUS bridge"]);
}

fn attachment(id: &str) -> GcAttachment {
    GcAttachment {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

#[tokio::test]
async fn gc_deletes_stale_attachments_and_passes_the_valid_ones() {
    let fx = Fixture::new(&["bridge", "portmap"]);
    let net = conflist(
        "gcnet",
        "1.1.0",
        json!([{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]),
    );
    for id in ["keep", "gone"] {
        let rt = RuntimeConf {
            container_id: id.into(),
            netns: format!("/run/netns/{id}").into(),
            ..runtime_conf()
        };
        fx.invoker.add(&net, &rt).await.unwrap();
    }
    // Another network's entry is not this GC's business.
    let other = conflist("other", "1.1.0", json!([{"type": "bridge"}]));
    let rt = RuntimeConf {
        container_id: "gone".into(),
        ..runtime_conf()
    };
    fx.invoker.add(&other, &rt).await.unwrap();
    fx.exec.take_calls();

    let outcome = fx
        .invoker
        .gc(&net, || vec![attachment("keep")])
        .await
        .unwrap();
    assert_eq!(outcome.released, [attachment("gone")]);
    assert!(outcome.plugins_collected);
    let calls = fx.exec.take_calls();
    assert_eq!(
        sequence(&calls),
        ["DEL portmap", "DEL bridge", "GC bridge", "GC portmap"]
    );
    // The stale attachment's DEL is its ADD's: netns, args, capabilities.
    assert_eq!(calls[0].env["CNI_CONTAINERID"], "gone");
    assert_eq!(calls[0].env["CNI_NETNS"], "/run/netns/gone");
    assert!(calls[0].env["CNI_ARGS"].contains("K8S_POD_NAMESPACE=default"));
    assert_eq!(
        calls[0].stdin["runtimeConfig"],
        json!({"portMappings": port_mappings()})
    );
    for gc in &calls[2..] {
        assert_eq!(gc.env["CNI_COMMAND"], "GC");
        assert_eq!(
            gc.stdin[VALID_ATTACHMENTS_KEY],
            json!([{"containerID": "keep", "ifname": "eth0"}])
        );
    }
    let results = fx.dir.path().join("cache/results");
    assert!(results.join("gcnet-keep-eth0").is_file());
    assert!(!results.join("gcnet-gone-eth0").exists());
    assert!(results.join("other-gone-eth0").is_file());
}

#[tokio::test]
async fn gc_of_a_10_list_only_deletes_and_disable_gc_skips_plugins() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.0.0", json!([{"type": "bridge"}]));
    fx.invoker.add(&net, &runtime_conf()).await.unwrap();
    fx.exec.take_calls();
    let outcome = fx.invoker.gc(&net, Vec::new).await.unwrap();
    assert_eq!(outcome.released, [attachment("ctr1")]);
    assert!(!outcome.plugins_collected);
    assert_eq!(sequence(&fx.exec.take_calls()), ["DEL bridge"]);

    let disabled = NetworkConfigList::from_conflist(
        br#"{"cniVersion":"1.1.0","name":"n","disableGC":true,"plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let outcome = fx.invoker.gc(&disabled, Vec::new).await.unwrap();
    assert!(!outcome.plugins_collected);
    assert!(fx.exec.take_calls().is_empty());
}

#[tokio::test]
async fn gc_reports_every_failure_and_keeps_failed_entries() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.1.0", json!([{"type": "bridge"}]));
    for id in ["a", "b"] {
        let rt = RuntimeConf {
            container_id: id.into(),
            ..runtime_conf()
        };
        fx.invoker.add(&net, &rt).await.unwrap();
    }
    let fail = Reply::Fail {
        exit_code: Some(1),
        stdout: r#"{"cniVersion":"1.1.0","code":11,"msg":"busy"}"#,
        stderr: "",
    };
    fx.exec.reply("bridge", "DEL", fail.clone());
    fx.exec.reply("bridge", "GC", fail);
    let err = fx.invoker.gc(&net, Vec::new).await.unwrap_err();
    match &err {
        CniError::Gc { network, errors } => {
            assert_eq!(network, "n");
            assert_eq!(errors.len(), 3, "{errors:?}");
            assert!(errors.iter().all(|e| e.plugin_code() == Some(11)));
        }
        other => panic!("{other:?}"),
    }
    let results = fx.dir.path().join("cache/results");
    assert!(results.join("n-a-eth0").is_file() && results.join("n-b-eth0").is_file());
}

#[tokio::test]
async fn gc_waits_for_an_add_in_progress_and_sees_it() {
    let fx = Fixture::new(&["bridge"]);
    let net = conflist("n", "1.1.0", json!([{"type": "bridge"}]));
    fx.exec.reply("bridge", "ADD", Reply::Hang);
    let rt = runtime_conf();
    let mut add = Box::pin(fx.invoker.add(&net, &rt));
    let mut gc = Box::pin(fx.invoker.gc(&net, || vec![attachment("ctr1")]));
    // The ADD takes the lock first and hangs in its plugin.
    let first = tokio::select! {
        biased;
        _ = &mut add => "add",
        _ = tokio::time::sleep(Duration::from_millis(20)) => "none",
    };
    assert_eq!(first, "none");
    let gc_done = tokio::time::timeout(Duration::from_millis(100), &mut gc).await;
    assert!(gc_done.is_err(), "GC ran during an ADD");
    // The ADD goes away (its caller gave up); GC proceeds.
    drop(add);
    fx.exec.clear_replies();
    let outcome = tokio::time::timeout(Duration::from_secs(5), gc)
        .await
        .expect("GC still blocked")
        .unwrap();
    assert!(outcome.released.is_empty());
}

#[test]
fn prev_result_on_del_from_040() {
    assert!(!passes_prev_result_on_del("0.3.1"));
    assert!(!passes_prev_result_on_del("0.1.0"));
    assert!(passes_prev_result_on_del("0.4.0"));
    assert!(passes_prev_result_on_del("1.0.0"));
    assert!(passes_prev_result_on_del("1.1.0"));
    assert!(passes_prev_result_on_del("next"));
}

#[test]
fn invoker_and_its_futures_can_cross_threads() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_clone_send_sync<T: Clone + Send + Sync>() {}
    assert_clone_send_sync::<Invoker>();
    let fx = Fixture::new(&[]);
    let net = pod_network();
    let rt = runtime_conf();
    // cri-shim runs these inside spawned gRPC handlers.
    assert_send(&fx.invoker.add(&net, &rt));
    assert_send(&fx.invoker.del(Some(&net), &rt));
}
