//! Fixtures shared by the privileged plugin tests: namespaces and bridges
//! that remove themselves, and running one plugin binary the way a
//! runtime does (environment + config on stdin).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use libtest_mimic::{Completion, Failed, Trial};
use serde_json::Value;

/// Debian's reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// Where cargo put our plugin binaries (it builds them for this test).
pub fn ours() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_loopback"))
        .parent()
        .expect("binary has a directory")
        .to_owned()
}

/// Both plugin sets, named.
pub fn plugin_sets() -> [(&'static str, PathBuf); 2] {
    [
        ("ours", ours()),
        ("reference", PathBuf::from(REFERENCE_DIR)),
    ]
}

/// A trial that needs root: ignored with the reason otherwise, never passed.
pub fn root_trial(name: &'static str, test: fn() -> anyhow::Result<()>) -> Trial {
    Trial::ignorable_test(name, move || {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Completion::ignored_with(
                "skipped: needs root (creates network namespaces, bridges and iptables rules)",
            ));
        }
        if !Path::new(REFERENCE_DIR).join("bridge").is_file() {
            return Err(Failed::from(format!(
                "reference CNI plugins missing in {REFERENCE_DIR}: install containernetworking-plugins"
            )));
        }
        test()
            .map(|()| Completion::Completed)
            .map_err(|err| format!("{err:#}").into())
    })
}

/// Runs a program; fails with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
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

/// A network namespace `cnit-<tag>-<pid>`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let name = format!("cnit-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        Ok(Self { name })
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The per-container environment for a plugin call in this namespace.
    pub fn env(&self, container_id: &str, ifname: &str) -> Vec<(String, String)> {
        vec![
            ("CNI_CONTAINERID".into(), container_id.into()),
            ("CNI_NETNS".into(), self.path()),
            ("CNI_IFNAME".into(), ifname.into()),
        ]
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A bridge name that is deleted on drop (the plugin creates the bridge).
#[derive(Debug)]
pub struct BridgeGuard(pub String);

impl BridgeGuard {
    pub fn new(name: &str) -> Self {
        let _ = run("ip", &["link", "del", name]);
        Self(name.to_owned())
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
    }
}

/// What one plugin run did.
#[derive(Debug)]
pub struct PluginRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    /// The stdout JSON of a successful run (`null` when it printed nothing).
    pub fn success(self) -> anyhow::Result<Value> {
        ensure!(
            self.status.success(),
            "plugin failed ({}): {}{}",
            self.status,
            self.stdout,
            self.stderr
        );
        if self.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout: {}", self.stdout))
    }

    /// The error code of a failed run.
    pub fn code(&self) -> Option<u64> {
        if self.status.success() {
            return None;
        }
        serde_json::from_str::<Value>(&self.stdout)
            .ok()
            .and_then(|v| v["code"].as_u64())
    }

    /// The error JSON of a failed run.
    pub fn error(&self) -> anyhow::Result<Value> {
        ensure!(!self.status.success(), "plugin succeeded: {}", self.stdout);
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout: {}", self.stdout))
    }
}

/// Runs plugin `kind` from `dir` with `command`, `env` and `config`;
/// CNI_PATH is `dir`.
pub fn run_plugin(
    dir: &Path,
    kind: &str,
    command: &str,
    env: &[(String, String)],
    config: &Value,
) -> anyhow::Result<PluginRun> {
    run_plugin_raw(dir, kind, command, env, config.to_string().as_bytes())
}

/// Like [`run_plugin`] with raw stdin bytes.
pub fn run_plugin_raw(
    dir: &Path,
    kind: &str,
    command: &str,
    env: &[(String, String)],
    stdin: &[u8],
) -> anyhow::Result<PluginRun> {
    let path = dir.join(kind);
    let mut child = Command::new(&path)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", path.display()))?;
    let _ = child.stdin.take().context("stdin")?.write_all(stdin);
    let output = child.wait_with_output()?;
    Ok(PluginRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `base` with `over` replacing or adding variables.
pub fn merge(base: &[(String, String)], over: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base
        .iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .cloned()
        .collect();
    out.extend_from_slice(over);
    out
}

/// A result with the `sandbox` paths removed (they differ between two
/// namespaces by construction) and an empty `dns` dropped (older libcni
/// writes `"dns":{}`, newer leaves it out; both mean no DNS).
pub fn without_sandbox(result: &Value) -> Value {
    let mut result = result.clone();
    if result["dns"] == serde_json::json!({}) {
        result.as_object_mut().map(|o| o.remove("dns"));
    }
    if let Some(interfaces) = result["interfaces"].as_array_mut() {
        for iface in interfaces {
            if let Some(obj) = iface.as_object_mut() {
                obj.remove("sandbox");
            }
        }
    }
    result
}

/// The nat and filter rules, as iptables-save prints them, for v4 and v6.
pub fn all_rules() -> anyhow::Result<String> {
    let mut out = String::new();
    for program in ["iptables-save", "ip6tables-save"] {
        out += &run(program, &[])?;
    }
    Ok(out)
}

/// Lines of `rules` that mention `needle`.
pub fn lines_with(rules: &str, needle: &str) -> Vec<String> {
    rules
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Whether a link exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Files in a host-local network dir, sorted.
pub fn ipam_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Only the files that are address reservations.
pub fn reserved_ips(dir: &Path) -> Vec<String> {
    ipam_files(dir)
        .into_iter()
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

pub fn fail<T>(msg: String) -> anyhow::Result<T> {
    bail!(msg)
}
