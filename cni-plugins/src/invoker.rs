//! The runtime side of CNI, what libcni does for containerd: load the
//! network config, run the plugin chain for ADD, DEL and CHECK, ask the
//! plugins for STATUS and GC (spec 1.1), and keep the result cache that
//! lets DEL work after a runtime restart.
//!
//! Invariants: a failed ADD leaves nothing behind (the whole chain gets a
//! DEL before the error is returned); a cache entry exists for exactly the
//! attachments whose ADD completed and whose DEL has not yet succeeded;
//! DEL may be repeated. Callers serialise ADD and DEL for one sandbox; GC
//! of a network never overlaps an ADD, DEL or CHECK on it (a per-network
//! lock, shared by ADD/DEL/CHECK, exclusive for GC). A plugin is asked for
//! its VERSION before its first ADD, CHECK, STATUS or GC (again when the
//! binary changes) and not run with a config version it does not support.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::RwLock;
use tracing::{Instrument, debug, info_span, warn};

use crate::cache::{CACHE_KIND, CacheEntry, CacheError, ResultCache};
use crate::conf::{self, ConfError, NetworkConfigList};
use crate::exec::{ExecError, PluginExec, PluginOutput, PluginRequest, ProcessExec};
use crate::result::{CniResult, ResultError};
use crate::version;

/// How long one plugin may run before it is killed (with its process
/// group). libcni itself has no limit (only the caller's context), and the
/// kubelet gives a RunPodSandbox 4 minutes; a minute per plugin is generous
/// for IPAM plugins waiting on a lock or a remote store, yet a hung plugin
/// fails the sandbox before the kubelet's deadline for the usual chains.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The key of `runtimeConfig`-like data GC hands plugins: the attachments
/// that still exist.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// How much of a plugin's output goes into an error message.
const OUTPUT_EXCERPT_BYTES: usize = 2048;

/// Errors of the CNI invoker.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The conf dir holds no valid network configuration.
    #[error("no valid CNI network config found in {dir}")]
    NoNetworkConfig {
        /// The conf dir searched.
        dir: PathBuf,
    },
    /// The conf dir exists but could not be listed.
    #[error("listing CNI conf dir {dir}")]
    ReadConfDir {
        /// The conf dir.
        dir: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A network config handed in is not usable.
    #[error("invalid CNI network config {network:?}")]
    InvalidNetwork {
        /// Network name.
        network: String,
        /// What is wrong with it.
        #[source]
        source: ConfError,
    },
    /// A runtime argument would be unsafe or meaningless to pass on.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// No plugin binary of that type in any bin dir.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound {
        /// Plugin type.
        plugin: String,
        /// The bin dirs searched.
        dirs: Vec<PathBuf>,
    },
    /// The plugin reported an error in CNI's error format.
    #[error("CNI plugin {plugin} failed with code {code}: {msg}{}", details_suffix(.details))]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// CNI error code (1-99 reserved by the spec).
        code: u32,
        /// Short message.
        msg: String,
        /// Longer explanation; may be empty.
        details: String,
    },
    /// The plugin failed without printing a CNI error.
    #[error("CNI plugin {plugin} exited with {status}: {output}")]
    PluginFailed {
        /// Plugin type.
        plugin: String,
        /// Exit code, or the fact it was killed by a signal.
        status: String,
        /// An excerpt of stdout, or of stderr when stdout is empty.
        output: String,
    },
    /// The plugin could not be run at all.
    #[error("running CNI plugin {plugin}")]
    Exec {
        /// Plugin type.
        plugin: String,
        /// Underlying error.
        #[source]
        source: ExecError,
    },
    /// The plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin} did not finish within {timeout:?}")]
    Timeout {
        /// Plugin type.
        plugin: String,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// The plugin succeeded but its output is not a CNI result.
    #[error("decoding the result of CNI plugin {plugin}")]
    Decode {
        /// Plugin type.
        plugin: String,
        /// Underlying error.
        #[source]
        source: ResultError,
    },
    /// The plugin does not speak the network config's spec version.
    #[error(
        "plugin {plugin} does not support config version {version:?} (it supports {supported:?})"
    )]
    IncompatibleVersion {
        /// Plugin type.
        plugin: String,
        /// The config list's `cniVersion`.
        version: String,
        /// What the plugin's VERSION answered.
        supported: Vec<String>,
    },
    /// The network's spec version predates the command.
    #[error(
        "configuration version {version:?} of network {network:?} does not support the {command} command"
    )]
    CommandUnsupported {
        /// Network name.
        network: String,
        /// The config list's `cniVersion`.
        version: String,
        /// `CHECK`, `GC` or `STATUS`.
        command: &'static str,
    },
    /// CHECK needs the ADD result, and there is none.
    #[error("failed to get network {network:?} cached result for container {container_id}")]
    NoCachedResult {
        /// Network name.
        network: String,
        /// Container id.
        container_id: String,
    },
    /// GC went through but some of its steps failed.
    #[error("GC of network {network:?}: {}", join_errors(.errors))]
    Gc {
        /// Network name.
        network: String,
        /// Every failure, in order.
        errors: Vec<CniError>,
    },
    /// The result cache could not be read or written.
    #[error("CNI result cache {path}")]
    Cache {
        /// The entry or directory concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: CacheError,
    },
}

fn join_errors(errors: &[CniError]) -> String {
    errors
        .iter()
        .map(|e| error_chain(e))
        .collect::<Vec<_>>()
        .join("; ")
}

impl CniError {
    /// The CNI error code when a plugin reported one.
    pub fn plugin_code(&self) -> Option<u32> {
        match self {
            Self::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

/// The per-attachment arguments of one ADD or DEL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    /// Sandbox id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// Path of the sandbox's network namespace (`CNI_NETNS`); may be empty
    /// on DEL when the namespace is already gone.
    pub netns: PathBuf,
    /// Interface name inside the sandbox (`CNI_IFNAME`), usually `eth0`.
    pub ifname: String,
    /// `CNI_ARGS` pairs, such as `K8S_POD_NAMESPACE` or `IgnoreUnknown=1`.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, ...), passed to
    /// the plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

/// An attachment that still exists, as GC's `cni.dev/valid-attachments`
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    /// Sandbox id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name in the sandbox.
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// What a GC did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Cached attachments of sandboxes that no longer exist, DELeted.
    pub released: Vec<GcAttachment>,
    /// Whether the plugins were sent GC (spec 1.1 networks only).
    pub plugins_collected: bool,
}

/// The CNI operations the invoker performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }

    /// Whether the plugin's VERSION answer is checked first. DEL is not:
    /// a plugin upgraded since the ADD must still get the chance to undo it.
    fn negotiates_version(self) -> bool {
        matches!(self, Self::Add | Self::Check | Self::Gc | Self::Status)
    }
}

/// What one binary answered to VERSION, and which file that was.
#[derive(Debug, Clone)]
struct KnownVersions {
    modified: Option<SystemTime>,
    len: u64,
    supported: Vec<String>,
}

/// The per-network locks: shared by ADD, DEL and CHECK, exclusive for GC.
type NetworkLocks = Arc<Mutex<HashMap<String, Arc<RwLock<()>>>>>;

/// Runs CNI plugin chains for pod sandboxes.
#[derive(Debug, Clone)]
pub struct Invoker {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    cache: ResultCache,
    exec: Arc<dyn PluginExec>,
    plugin_timeout: Duration,
    /// VERSION answers by binary path, shared by clones.
    versions: Arc<Mutex<HashMap<PathBuf, KnownVersions>>>,
    locks: NetworkLocks,
}

impl Invoker {
    /// An invoker reading networks from `conf_dir`, plugins from `bin_dirs`
    /// (searched in order) and keeping results under `cache_dir`.
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Self {
        Self {
            conf_dir,
            bin_dirs,
            cache: ResultCache::new(&cache_dir),
            cache_dir,
            exec: Arc::new(ProcessExec),
            plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
            versions: Arc::default(),
            locks: Arc::default(),
        }
    }

    /// Replaces the per-plugin timeout ([`DEFAULT_PLUGIN_TIMEOUT`]).
    pub fn with_plugin_timeout(mut self, timeout: Duration) -> Self {
        self.plugin_timeout = timeout;
        self
    }

    /// Replaces how plugins are run (the default spawns processes).
    pub fn with_exec(mut self, exec: Arc<dyn PluginExec>) -> Self {
        self.exec = exec;
        self
    }

    /// The conf dir networks are loaded from.
    pub fn conf_dir(&self) -> &std::path::Path {
        &self.conf_dir
    }

    /// The cache dir results are kept in.
    pub fn cache_dir(&self) -> &std::path::Path {
        &self.cache_dir
    }

    /// The per-plugin timeout in force.
    pub fn plugin_timeout(&self) -> Duration {
        self.plugin_timeout
    }

    fn network_lock(&self, network: &str) -> Arc<RwLock<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(network.to_owned()).or_default())
    }

    /// Loads the network config as libcni does: `.conflist`, `.conf`,
    /// `.json` files in conf_dir, sorted by file name, the first valid one
    /// wins; a single-plugin `.conf` is wrapped into a list. Invalid files
    /// are skipped with a warning.
    pub fn load_network(&self) -> Result<NetworkConfigList, CniError> {
        let files = conf::conf_files(&self.conf_dir).map_err(|source| CniError::ReadConfDir {
            dir: self.conf_dir.clone(),
            source,
        })?;
        for path in files {
            let parsed = std::fs::read(&path)
                .map_err(|err| err.to_string())
                .and_then(|bytes| {
                    NetworkConfigList::from_file_bytes(&path, &bytes)
                        .map_err(|err| error_chain(&err))
                });
            match parsed {
                Ok(list) => {
                    debug!(
                        path = %path.display(),
                        network = %list.name,
                        "loaded CNI network config"
                    );
                    return Ok(list);
                }
                // Skipped rather than fatal: a later file may be valid, and
                // a half-written file from an installer must not take the
                // node's networking down.
                Err(error) => {
                    warn!(path = %path.display(), %error, "skipping invalid CNI network config");
                }
            }
        }
        Err(CniError::NoNetworkConfig {
            dir: self.conf_dir.clone(),
        })
    }

    /// Runs ADD for every plugin in order, feeding each the previous one's
    /// result, and caches the final result with the config. If any step
    /// fails, the whole chain gets a best-effort DEL before the error is
    /// returned.
    pub async fn add(
        &self,
        net: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, CniError> {
        validate_network(net)?;
        validate_runtime_conf(rt)?;
        let span = info_span!(
            "cni_add",
            network = %net.name,
            container.id = %rt.container_id,
            ifname = %rt.ifname
        );
        let lock = self.network_lock(&net.name);
        async {
            let _shared = lock.read().await;
            match self.add_chain(net, rt).await {
                Ok(result) => Ok(result),
                Err(err) => {
                    if let Err(cleanup) = self.del_chain(net, None, rt).await {
                        // The ADD error is what the caller acts on; this one
                        // only explains what may be left behind.
                        warn!(error = %error_chain(&cleanup), "DEL after failed ADD failed");
                    }
                    Err(err)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn add_chain(
        &self,
        net: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, CniError> {
        let mut prev: Option<(String, Value)> = None;
        for plugin in &net.plugins {
            let plugin_type = plugin_type(plugin);
            let stdout = self
                .run_plugin(
                    Command::Add,
                    net,
                    plugin,
                    prev.as_ref().map(|(_, v)| v),
                    rt,
                    None,
                )
                .await?;
            let value = serde_json::from_slice(&stdout).map_err(|e| CniError::Decode {
                plugin: plugin_type.to_owned(),
                source: ResultError::Json(e),
            })?;
            prev = Some((plugin_type.to_owned(), value));
        }
        // validate_network guarantees at least one plugin ran.
        let (last_plugin, raw) = prev.unwrap_or_default();
        let result = CniResult::from_value(raw.clone()).map_err(|source| CniError::Decode {
            plugin: last_plugin,
            source,
        })?;
        let entry = CacheEntry {
            kind: CACHE_KIND.to_owned(),
            container_id: rt.container_id.clone(),
            config: Some(net.bytes.clone()),
            if_name: rt.ifname.clone(),
            network_name: net.name.clone(),
            netns: Some(rt.netns.to_string_lossy().into_owned()).filter(|p| !p.is_empty()),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: Some(raw),
        };
        // Without the entry a restarted runtime could not DEL with the right
        // config, so a failed write fails the ADD (and undoes it).
        self.cache
            .write(&entry)
            .await
            .map_err(|(path, source)| CniError::Cache { path, source })?;
        Ok(result)
    }

    /// DEL in reverse order with the cached result as `prevResult`. Uses
    /// the cached network config if there is one (so DEL works even if the
    /// conf dir changed), else `net`; if neither exists returns `Ok(())`.
    /// Keeps going through the chain after a plugin error and reports the
    /// first error at the end; the cache entry is removed only on success.
    ///
    /// `CNI_ARGS` and capability args left empty in `rt` are taken from the
    /// cache, since a restarted runtime may no longer know them.
    pub async fn del(
        &self,
        net: Option<&NetworkConfigList>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        if let Some(net) = net {
            validate_network(net)?;
        }
        validate_runtime_conf(rt)?;
        let span = info_span!("cni_del", container.id = %rt.container_id, ifname = %rt.ifname);
        self.del_attachments(net, rt).instrument(span).await
    }

    async fn del_attachments(
        &self,
        net: Option<&NetworkConfigList>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        let found = self
            .cache
            .find(&rt.container_id, &rt.ifname, net.map(|n| n.name.as_str()))
            .await
            .map_err(|(path, source)| CniError::Cache { path, source })?;
        if found.is_empty() {
            return match net {
                Some(net) => {
                    let lock = self.network_lock(&net.name);
                    let _shared = lock.read().await;
                    self.del_chain(net, None, rt).await
                }
                None => Ok(()),
            };
        }
        let mut first_error = None;
        for found in found {
            let network = match &found.entry {
                Ok(entry) => entry.network_name.clone(),
                Err(_) => net.map(|n| n.name.clone()).unwrap_or_default(),
            };
            let lock = self.network_lock(&network);
            let _shared = lock.read().await;
            let outcome = match found.entry {
                Ok(entry) => self.del_cached(net, entry, rt).await,
                Err(err) => match net {
                    // Unreadable, but named after `net`: DEL with `net` so
                    // the attachment does not outlive the broken entry.
                    Some(net) => {
                        warn!(
                            path = %found.path.display(),
                            error = %error_chain(&err),
                            "unreadable CNI cache entry; deleting with the current config"
                        );
                        self.del_chain(net, None, rt).await.map(|()| true)
                    }
                    None => Ok(false),
                },
            };
            let outcome = match outcome {
                Ok(true) => {
                    self.cache
                        .remove(&found.path)
                        .await
                        .map_err(|source| CniError::Cache {
                            path: found.path.clone(),
                            source,
                        })
                }
                Ok(false) => Ok(()),
                Err(err) => Err(err),
            };
            if let Err(err) = outcome {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// DELs one cached attachment; `Ok(false)` when there is no config to
    /// DEL with, so the entry is kept for a caller who has one.
    async fn del_cached(
        &self,
        net: Option<&NetworkConfigList>,
        entry: CacheEntry,
        rt: &RuntimeConf,
    ) -> Result<bool, CniError> {
        let cached_net = entry.config.as_deref().and_then(|bytes| {
            NetworkConfigList::from_either(bytes)
                .inspect_err(|err| {
                    warn!(
                        network = %entry.network_name,
                        error = %error_chain(err),
                        "cached CNI config unusable; falling back to the current one"
                    );
                })
                .ok()
        });
        let Some(target) = cached_net.as_ref().or(net) else {
            warn!(
                network = %entry.network_name,
                "cached CNI attachment has no config and none was given; leaving it"
            );
            return Ok(false);
        };
        let mut rt = rt.clone();
        if rt.netns.as_os_str().is_empty()
            && let Some(netns) = entry.netns
        {
            rt.netns = netns.into();
        }
        if rt.args.is_empty() {
            rt.args = entry.cni_args;
        }
        if rt.capability_args.is_empty() {
            rt.capability_args = entry.capability_args;
        }
        // Spec 0.3.x plugins do not expect prevResult on DEL; libcni
        // passes it from 0.4.0 on.
        let prev = entry
            .result
            .filter(|_| passes_prev_result_on_del(&target.cni_version));
        self.del_chain(target, prev.as_ref(), &rt).await?;
        Ok(true)
    }

    /// CHECK, as libcni's `CheckNetworkList`: every plugin in order, with
    /// the cached ADD result as `prevResult`. Needs spec 0.4.0 or later and
    /// a cached result; a list with `disableCheck` passes without running
    /// anything. `CNI_ARGS` and capability args left empty in `rt` come
    /// from the cache, as for DEL.
    pub async fn check(&self, net: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        validate_network(net)?;
        validate_runtime_conf(rt)?;
        if version::at_least(&net.cni_version, "0.4.0") != Some(true) {
            return Err(CniError::CommandUnsupported {
                network: net.name.clone(),
                version: net.cni_version.clone(),
                command: "CHECK",
            });
        }
        if net.disable_check() {
            return Ok(());
        }
        let span = info_span!("cni_check", network = %net.name, container.id = %rt.container_id);
        let lock = self.network_lock(&net.name);
        async {
            let _shared = lock.read().await;
            let found = self
                .cache
                .find(&rt.container_id, &rt.ifname, Some(&net.name))
                .await
                .map_err(|(path, source)| CniError::Cache { path, source })?;
            let entry = found
                .into_iter()
                .filter_map(|f| f.entry.ok())
                .find(|e| e.network_name == net.name)
                .ok_or_else(|| CniError::NoCachedResult {
                    network: net.name.clone(),
                    container_id: rt.container_id.clone(),
                })?;
            let Some(cached) = entry.result else {
                return Err(CniError::NoCachedResult {
                    network: net.name.clone(),
                    container_id: rt.container_id.clone(),
                });
            };
            let mut rt = rt.clone();
            if rt.args.is_empty() {
                rt.args = entry.cni_args;
            }
            if rt.capability_args.is_empty() {
                rt.capability_args = entry.capability_args;
            }
            for plugin in &net.plugins {
                self.run_plugin(Command::Check, net, plugin, Some(&cached), &rt, None)
                    .await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// STATUS (spec 1.1), as libcni's `GetStatusNetworkList`: asks every
    /// plugin whether it is ready for ADDs and returns the first error
    /// (a plugin answers code 50 "not available" when it is not). Lists of
    /// earlier versions have no STATUS and are taken to be ready.
    pub async fn status(&self, net: &NetworkConfigList) -> Result<(), CniError> {
        validate_network(net)?;
        if version::at_least(&net.cni_version, "1.1.0") != Some(true) {
            return Ok(());
        }
        let rt = RuntimeConf::default();
        for plugin in &net.plugins {
            self.run_plugin(Command::Status, net, plugin, None, &rt, None)
                .await?;
        }
        Ok(())
    }

    /// GC, as libcni's `GCNetworkList`: every cached attachment of this
    /// network that is not in `valid` gets a DEL (with the config, netns
    /// and arguments of its ADD) and loses its cache entry; then, for spec
    /// 1.1 lists without `disableGC`, every plugin gets GC with the valid
    /// attachments (`cni.dev/valid-attachments`), so it can release what
    /// the cache does not know about (say, host-local addresses of a
    /// runtime that lost its state).
    ///
    /// `valid` is called once the network's lock is held exclusively, so an
    /// ADD that finished before it is seen and none runs during GC: the
    /// caller lists its sandboxes there, not before. Keeps going after an
    /// error and reports them all in [`CniError::Gc`].
    pub async fn gc<F>(&self, net: &NetworkConfigList, valid: F) -> Result<GcOutcome, CniError>
    where
        F: FnOnce() -> Vec<GcAttachment>,
    {
        validate_network(net)?;
        let span = info_span!("cni_gc", network = %net.name);
        let lock = self.network_lock(&net.name);
        async {
            let _exclusive = lock.write().await;
            let valid = valid();
            let mut outcome = GcOutcome::default();
            let mut errors = Vec::new();
            let cached = self
                .cache
                .list(&net.name)
                .await
                .map_err(|(path, source)| CniError::Cache { path, source })?;
            for found in cached {
                let Ok(entry) = found.entry else { continue };
                let attachment = GcAttachment {
                    container_id: entry.container_id.clone(),
                    ifname: entry.if_name.clone(),
                };
                if valid.contains(&attachment) {
                    continue;
                }
                let rt = RuntimeConf {
                    container_id: entry.container_id.clone(),
                    netns: PathBuf::new(),
                    ifname: entry.if_name.clone(),
                    args: Vec::new(),
                    capability_args: Map::new(),
                };
                if let Err(err) = validate_runtime_conf(&rt) {
                    errors.push(err);
                    continue;
                }
                let deleted = match self.del_cached(Some(net), entry, &rt).await {
                    Ok(_) => self
                        .cache
                        .remove(&found.path)
                        .await
                        .map_err(|source| CniError::Cache {
                            path: found.path.clone(),
                            source,
                        }),
                    Err(err) => Err(err),
                };
                match deleted {
                    Ok(()) => {
                        debug!(container.id = %attachment.container_id, "GC released a stale attachment");
                        outcome.released.push(attachment);
                    }
                    Err(err) => errors.push(err),
                }
            }
            if version::at_least(&net.cni_version, "1.1.0") == Some(true) && !net.disable_gc() {
                let inject = (VALID_ATTACHMENTS_KEY, json!(valid));
                let rt = RuntimeConf::default();
                for plugin in &net.plugins {
                    if let Err(err) = self
                        .run_plugin(Command::Gc, net, plugin, None, &rt, Some(&inject))
                        .await
                    {
                        errors.push(err);
                    }
                }
                outcome.plugins_collected = true;
            }
            if errors.is_empty() {
                Ok(outcome)
            } else {
                Err(CniError::Gc {
                    network: net.name.clone(),
                    errors,
                })
            }
        }
        .instrument(span)
        .await
    }

    /// DEL for every plugin in reverse order, not stopping at errors: each
    /// plugin owns different resources, and skipping one would leak them.
    async fn del_chain(
        &self,
        net: &NetworkConfigList,
        prev: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        let mut first_error = None;
        for plugin in net.plugins.iter().rev() {
            if let Err(err) = self
                .run_plugin(Command::Del, net, plugin, prev, rt, None)
                .await
            {
                if first_error.is_some() {
                    warn!(
                        plugin = plugin_type(plugin),
                        error = %error_chain(&err),
                        "CNI DEL failed"
                    );
                } else {
                    first_error = Some(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs one plugin and returns its stdout on success. `inject` adds one
    /// top-level key to its config (GC's valid attachments).
    async fn run_plugin(
        &self,
        command: Command,
        net: &NetworkConfigList,
        plugin: &Value,
        prev: Option<&Value>,
        rt: &RuntimeConf,
        inject: Option<&(&str, Value)>,
    ) -> Result<Vec<u8>, CniError> {
        let plugin_type = plugin_type(plugin);
        let (path, meta) = self.find_plugin(plugin_type).await?;
        if command.negotiates_version() {
            self.ensure_version(plugin_type, &path, &meta, &net.cni_version)
                .await?;
        }
        let mut stdin = plugin_stdin(net, plugin, prev, &rt.capability_args);
        if let (Some((key, value)), Some(conf)) = (inject, stdin.as_object_mut()) {
            conf.insert((*key).to_owned(), value.clone());
        }
        let request = PluginRequest {
            path,
            env: self.plugin_env(command, rt),
            stdin: stdin.to_string().into_bytes(),
        };
        debug!(
            plugin = plugin_type,
            command = command.as_str(),
            "running CNI plugin"
        );
        let output = self.exec_with_timeout(plugin_type, request).await?;
        interpret_output(plugin_type, command, output)
    }

    async fn exec_with_timeout(
        &self,
        plugin_type: &str,
        request: PluginRequest,
    ) -> Result<PluginOutput, CniError> {
        tokio::time::timeout(self.plugin_timeout, self.exec.exec(request))
            .await
            .map_err(|_| CniError::Timeout {
                plugin: plugin_type.to_owned(),
                timeout: self.plugin_timeout,
            })?
            .map_err(|source| CniError::Exec {
                plugin: plugin_type.to_owned(),
                source,
            })
    }

    /// Fails unless the plugin at `path` speaks `cni_version`, asking its
    /// VERSION the first time and again whenever the file changed.
    async fn ensure_version(
        &self,
        plugin_type: &str,
        path: &Path,
        meta: &std::fs::Metadata,
        cni_version: &str,
    ) -> Result<(), CniError> {
        let modified = meta.modified().ok();
        let len = meta.len();
        let known = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .filter(|k| k.modified == modified && k.len == len)
            .map(|k| k.supported.clone());
        let supported = match known {
            Some(supported) => supported,
            None => {
                let supported = self.query_version(plugin_type, path, cni_version).await?;
                self.versions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        path.to_owned(),
                        KnownVersions {
                            modified,
                            len,
                            supported: supported.clone(),
                        },
                    );
                supported
            }
        };
        if supported.iter().any(|v| v == cni_version) {
            Ok(())
        } else {
            Err(CniError::IncompatibleVersion {
                plugin: plugin_type.to_owned(),
                version: cni_version.to_owned(),
                supported,
            })
        }
    }

    /// The plugin's VERSION answer (`supportedVersions`). Like libcni, a
    /// plugin too old to know VERSION is taken to speak only 0.1.0.
    async fn query_version(
        &self,
        plugin_type: &str,
        path: &Path,
        cni_version: &str,
    ) -> Result<Vec<String>, CniError> {
        let request = PluginRequest {
            path: path.to_owned(),
            env: vec![
                ("CNI_COMMAND".into(), Command::Version.as_str().into()),
                ("CNI_PATH".into(), self.bin_path()),
            ],
            stdin: json!({ "cniVersion": cni_version })
                .to_string()
                .into_bytes(),
        };
        let output = self.exec_with_timeout(plugin_type, request).await?;
        let stdout = match interpret_output(plugin_type, Command::Version, output) {
            Ok(stdout) => stdout,
            Err(CniError::Plugin { msg, .. }) if msg == "unknown CNI_COMMAND: VERSION" => {
                return Ok(vec!["0.1.0".to_owned()]);
            }
            Err(err) => return Err(err),
        };
        #[derive(Deserialize)]
        struct VersionInfo {
            #[serde(rename = "supportedVersions", default)]
            supported_versions: Vec<String>,
            #[serde(rename = "cniVersion", default)]
            cni_version: String,
        }
        let info: VersionInfo = serde_json::from_slice(&stdout).map_err(|e| CniError::Decode {
            plugin: plugin_type.to_owned(),
            source: ResultError::Json(e),
        })?;
        // Pre-0.3 answers carry only their own version.
        if info.supported_versions.is_empty() && !info.cni_version.is_empty() {
            return Ok(vec![info.cni_version]);
        }
        debug!(plugin = plugin_type, supported = ?info.supported_versions, "CNI plugin versions");
        Ok(info.supported_versions)
    }

    /// First bin dir holding a regular file named `plugin_type`.
    async fn find_plugin(
        &self,
        plugin_type: &str,
    ) -> Result<(PathBuf, std::fs::Metadata), CniError> {
        if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
            return Err(CniError::InvalidArgument {
                field: "plugin type",
                value: plugin_type.to_owned(),
                reason: "must be a file name, not a path",
            });
        }
        let candidates: Vec<PathBuf> = self.bin_dirs.iter().map(|d| d.join(plugin_type)).collect();
        let found = crate::work::BULK
            .run(move || {
                candidates.into_iter().find_map(|candidate| {
                    let meta = std::fs::metadata(&candidate).ok()?;
                    meta.is_file().then_some((candidate, meta))
                })
            })
            .await;
        if let Ok(Some(found)) = found {
            return Ok(found);
        }
        Err(CniError::PluginNotFound {
            plugin: plugin_type.to_owned(),
            dirs: self.bin_dirs.clone(),
        })
    }

    /// `CNI_PATH`: the bin dirs, in order.
    fn bin_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|dir| dir.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn plugin_env(&self, command: Command, rt: &RuntimeConf) -> Vec<(String, String)> {
        let args = rt
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let path = self.bin_path();
        vec![
            ("CNI_COMMAND".into(), command.as_str().into()),
            ("CNI_CONTAINERID".into(), rt.container_id.clone()),
            ("CNI_NETNS".into(), rt.netns.to_string_lossy().into_owned()),
            ("CNI_IFNAME".into(), rt.ifname.clone()),
            ("CNI_ARGS".into(), args),
            ("CNI_PATH".into(), path),
        ]
    }
}

/// A plugin's `type`; lists are validated before use, so it is present.
fn plugin_type(plugin: &Value) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The config a plugin reads on stdin: its own config with the list's
/// `name` and `cniVersion`, the previous result, and `runtimeConfig` for
/// the capabilities it declares (and only those, so plugins never see
/// arguments they did not ask for).
fn plugin_stdin(
    net: &NetworkConfigList,
    plugin: &Value,
    prev: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), Value::String(net.name.clone()));
    conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let runtime_config: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, declared)| declared.as_bool() == Some(true))
        .filter_map(|(name, _)| Some((name.clone(), capability_args.get(name)?.clone())))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    Value::Object(conf)
}

/// CNI's error object, printed on stdout with a non-zero exit.
#[derive(Deserialize)]
struct PluginErrorJson {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

fn interpret_output(
    plugin: &str,
    command: Command,
    output: PluginOutput,
) -> Result<Vec<u8>, CniError> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    if output.success() {
        if !stderr.is_empty() {
            debug!(plugin, command = command.as_str(), %stderr, "CNI plugin stderr");
        }
        return Ok(output.stdout);
    }
    // The plugin's own log, which the error below does not carry.
    if !stderr.is_empty() {
        warn!(plugin, command = command.as_str(), %stderr, "CNI plugin failed");
    }
    if let Ok(error) = serde_json::from_slice::<PluginErrorJson>(&output.stdout) {
        return Err(CniError::Plugin {
            plugin: plugin.to_owned(),
            code: error.code,
            msg: error.msg,
            details: error.details,
        });
    }
    let status = match output.exit_code {
        Some(code) => format!("exit code {code}"),
        None => "a signal".to_owned(),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let shown = if stdout.trim().is_empty() {
        stderr
    } else {
        stdout.trim()
    };
    Err(CniError::PluginFailed {
        plugin: plugin.to_owned(),
        status,
        output: excerpt(shown),
    })
}

fn excerpt(text: &str) -> String {
    if text.len() <= OUTPUT_EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut end = OUTPUT_EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Whether DEL gets `prevResult` for a list of this spec version. A
/// version we cannot parse is taken to be a newer one.
fn passes_prev_result_on_del(cni_version: &str) -> bool {
    let mut parts = cni_version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (0, 4),
        _ => true,
    }
}

fn validate_network(net: &NetworkConfigList) -> Result<(), CniError> {
    net.validate().map_err(|source| CniError::InvalidNetwork {
        network: net.name.clone(),
        source,
    })
}

/// libcni's checks: the id and ifname become part of cache file names and
/// kernel interface names.
fn validate_runtime_conf(rt: &RuntimeConf) -> Result<(), CniError> {
    if !conf::is_valid_identifier(&rt.container_id) {
        return Err(CniError::InvalidArgument {
            field: "container id",
            value: rt.container_id.clone(),
            reason: "must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
        });
    }
    let ifname = &rt.ifname;
    let reason = if ifname.is_empty() {
        Some("must not be empty")
    } else if ifname.len() > 15 {
        Some("must be at most 15 bytes (IFNAMSIZ)")
    } else if ifname == "." || ifname == ".." {
        Some("must not be . or ..")
    } else if ifname.contains(['/', ':']) || ifname.chars().any(char::is_whitespace) {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CniError::InvalidArgument {
            field: "interface name",
            value: ifname.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

/// An error and its sources on one line, for log fields.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
