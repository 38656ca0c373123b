//! Pod sandboxes: the pod's namespaces pinned by bind mounts (network under
//! `/run/netns`, IPC and UTS in the sandbox directory), CNI attachment, and
//! the per-sandbox `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
//!
//! A short-lived pin helper creates the namespaces and bind-mounts them (the
//! model of CRI-O's `pinns`); no process stays for them. Only a pod with a
//! pod-level pid namespace (pid mode POD) gets an infra process, whose child
//! is that namespace's PID 1. Sandboxes made by earlier versions, whose infra
//! process holds every namespace, keep working: their containers join its
//! `/proc/<pid>/ns/*`.
//!
//! A sandbox is Ready while its record says so, its infra process (if any)
//! lives and every pinned namespace is still mounted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::pidfd;
use super::{Entry, Runtime, RuntimeError, list_dirs, new_id, persist_json, read_json, write_json};
use crate::infra::InfraSpec;
use crate::monitor::now_ns;
use crate::pin::{PINNED, PinSpec};
use crate::reexec::{HelperExe, INFRA_ARG, PIN_ARG};

/// How long an infra process may take to set up its namespaces.
const INFRA_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the pin helper may take to create and pin the namespaces.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where sandbox network namespaces are pinned (visible to `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// Sandbox state as CRI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Namespaces and network are up.
    Ready,
    /// Stopped (or its infra process died).
    NotReady,
}

/// The persisted sandbox (`<root>/sandboxes/<id>/sandbox.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub(super) id: String,
    pub(super) config: cri::PodSandboxConfig,
    pub(super) created_at: i64,
    pub(super) state: SandboxState,
    pub(super) infra_pid: Option<i32>,
    /// Bind-mounted network namespace; `None` with host networking.
    pub(super) netns: Option<PathBuf>,
    /// Pod IPs from CNI, primary first.
    pub(super) ips: Vec<String>,
    /// Whether a CNI ADD succeeded and a DEL is still owed.
    pub(super) network_attached: bool,
    /// The pod's `/dev/shm` tmpfs while it is mounted.
    #[serde(default)]
    pub(super) shm: Option<PathBuf>,
    /// PID 1 of the pod's pid namespace (pid mode POD), a child of the infra.
    #[serde(default)]
    pub(super) pid_holder: Option<i32>,
    /// Bind-mounted IPC namespace; `None` with host IPC, and in sandboxes
    /// whose infra process holds it (made before namespaces were pinned).
    #[serde(default)]
    pub(super) ipcns: Option<PathBuf>,
    /// Bind-mounted UTS namespace; `None` with host network, and in
    /// sandboxes whose infra process holds it.
    #[serde(default)]
    pub(super) utsns: Option<PathBuf>,
    /// RunPodSandbox has not finished: found so at start, it is half-made.
    #[serde(default)]
    pub(super) setting_up: bool,
}

impl SandboxRecord {
    fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    fn namespace_options(&self) -> cri::NamespaceOption {
        self.config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default()
    }

    pub(super) fn host_network(&self) -> bool {
        self.namespace_options().network == cri::NamespaceMode::Node as i32
    }

    /// The pod has one pid namespace shared by its containers.
    pub(super) fn shared_pid(&self) -> bool {
        self.namespace_options().pid == cri::NamespaceMode::Pod as i32
    }

    pub(super) fn host_ipc(&self) -> bool {
        self.namespace_options().ipc == cri::NamespaceMode::Node as i32
    }

    /// The name reserved for this sandbox, unique per pod and attempt.
    pub(super) fn reserved_name(&self) -> String {
        reserved_name(&self.metadata())
    }

    pub(super) fn hostname(&self) -> String {
        if self.config.hostname.is_empty() {
            self.metadata().name
        } else {
            self.config.hostname.clone()
        }
    }
}

fn reserved_name(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// The pinned network namespace path of a sandbox.
fn netns_path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("cri-shim-{}", &id[..id.len().min(16)]))
}

impl Runtime {
    /// RunPodSandbox.
    pub async fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let meta = config.metadata.clone().ok_or_else(|| {
            RuntimeError::InvalidArgument("sandbox config has no metadata".into())
        })?;
        for (field, value) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if value.is_empty() {
                return Err(RuntimeError::InvalidArgument(format!(
                    "sandbox metadata.{field} is empty"
                )));
            }
        }
        validate_namespace_options(&config)?;
        // A pod whose limits cannot be applied must not start unlimited.
        super::network::bandwidth_from_annotations(&config.annotations)
            .map_err(|e| RuntimeError::InvalidArgument(e.to_string()))?;
        let id = new_id();
        let name = reserved_name(&meta);
        self.reserve_name(&name, &id)?;
        let mut record = SandboxRecord {
            id: id.clone(),
            config,
            created_at: now_ns(),
            state: SandboxState::NotReady,
            infra_pid: None,
            netns: None,
            ips: Vec::new(),
            network_attached: false,
            shm: None,
            pid_holder: None,
            ipcns: None,
            utsns: None,
            setting_up: true,
        };
        let span = tracing::info_span!("run_pod_sandbox", sandbox.id = %id, pod.name = %meta.name, pod.namespace = %meta.namespace, pod.uid = %meta.uid);
        async {
            match self.set_up_sandbox(&mut record).await {
                Ok(()) => {
                    record.state = SandboxState::Ready;
                    record.setting_up = false;
                    persist_json(&self.sandbox_dir(&id).join("sandbox.json"), &record).await?;
                    self.inner
                        .sandboxes
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), Entry::new(record));
                    tracing::info!("pod sandbox ready");
                    Ok(id)
                }
                Err(e) => {
                    // Undo whatever was made; the error that matters is the first.
                    let leftovers = self.tear_down_sandbox(&mut record).await;
                    for l in leftovers {
                        tracing::warn!(error = %l, "cleaning up failed sandbox");
                    }
                    let _ = std::fs::remove_dir_all(self.sandbox_dir(&id));
                    self.release_name(&name);
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn set_up_sandbox(&self, record: &mut SandboxRecord) -> Result<(), RuntimeError> {
        let id = record.id.clone();
        let dir = self.sandbox_dir(&id);
        // The sandbox's files and its shm mount on a bulk-work thread, so
        // under load the async workers keep answering other calls. The
        // record comes back also after a failure: the teardown needs to
        // know what was made.
        let (this, mut taken) = (self.clone(), record.clone());
        let (returned, prepared) = super::off_workers(move || {
            let prepared = this.prepare_sandbox_files(&mut taken);
            (taken, prepared)
        })
        .await
        .map_err(|e| RuntimeError::Infra {
            sandbox: id.clone(),
            message: format!("preparing the sandbox files ended abnormally: {e}"),
        })?;
        *record = returned;
        let hostname = record.hostname();
        if let Some(pins) = prepared? {
            pin_namespaces(&self.inner.helper, &pins).await?;
        }
        if record.shared_pid() {
            let spec = InfraSpec {
                id: id.clone(),
                hostname: hostname.clone(),
                new_net: false,
                new_ipc: false,
                new_uts: false,
                new_pid: true,
            };
            let (pid, pid_holder) = spawn_infra(&self.inner.helper, &id, &spec).await?;
            record.infra_pid = Some(pid);
            record.pid_holder = pid_holder;
            persist_json(&dir.join("sandbox.json"), record).await?;
        }

        let Some(netns) = record.netns.clone() else {
            return Ok(());
        };
        let net = self
            .inner
            .cni
            .load_network()
            .map_err(|source| RuntimeError::Network {
                sandbox: id.clone(),
                source,
            })?;
        let rt = self.cni_runtime_conf(record, &netns);
        // Mark before the call: a failed or interrupted ADD still owes a DEL.
        record.network_attached = true;
        persist_json(&dir.join("sandbox.json"), record).await?;
        let result =
            self.inner
                .cni
                .add(&net, &rt)
                .await
                .map_err(|source| RuntimeError::Network {
                    sandbox: id.clone(),
                    source,
                })?;
        record.ips = result
            .pod_ips(&rt.ifname)
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        let hosts = dir.join("hosts");
        tokio::fs::write(&hosts, hosts_file(&hostname, &record.ips))
            .await
            .map_err(RuntimeError::io("writing", &hosts))?;
        tracing::info!(ips = ?record.ips, network = %net.name, "pod network attached");
        Ok(())
    }

    /// The blocking part of [`Self::set_up_sandbox`]: the sandbox's
    /// directory, record, `hostname`, `resolv.conf` and `hosts` files, its
    /// shm mount; returns the namespaces to pin (recorded before they exist,
    /// so whatever a failure or a crash leaves is unmounted by the teardown).
    fn prepare_sandbox_files(
        &self,
        record: &mut SandboxRecord,
    ) -> Result<Option<PinSpec>, RuntimeError> {
        let id = record.id.clone();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(&dir).map_err(RuntimeError::io("creating", &dir))?;
        // Write the record early so a crash mid-setup leaves something the
        // next start can find and clean.
        write_json(&dir.join("sandbox.json"), record)?;
        let hostname = record.hostname();
        let write = |name: &str, content: String| {
            let p = dir.join(name);
            std::fs::write(&p, content).map_err(RuntimeError::io("writing", &p))
        };
        write("hostname", format!("{hostname}\n"))?;
        write(
            "resolv.conf",
            resolv_conf(record.config.dns_config.as_ref()),
        )?;
        write("hosts", hosts_file(&hostname, &[]))?;
        if !record.host_ipc() {
            let shm = dir.join("shm");
            mount_shm(&shm)?;
            record.shm = Some(shm);
            write_json(&dir.join("sandbox.json"), record)?;
        }
        let host_network = record.host_network();
        let pins = PinSpec {
            id: id.clone(),
            hostname,
            net: (!host_network).then(|| netns_path(&id)),
            ipc: (!record.host_ipc()).then(|| dir.join("ipcns")),
            uts: (!host_network).then(|| dir.join("utsns")),
        };
        if pins.net.is_none() && pins.ipc.is_none() && pins.uts.is_none() {
            return Ok(None);
        }
        if pins.net.is_some() {
            std::fs::create_dir_all(NETNS_DIR)
                .map_err(RuntimeError::io("creating", Path::new(NETNS_DIR)))?;
        }
        record.netns = pins.net.clone();
        record.ipcns = pins.ipc.clone();
        record.utsns = pins.uts.clone();
        write_json(&dir.join("sandbox.json"), record)?;
        Ok(Some(pins))
    }

    /// The CNI arguments of a sandbox.
    fn cni_runtime_conf(&self, r: &SandboxRecord, netns: &Path) -> cni_plugins::RuntimeConf {
        super::network::runtime_conf(&r.id, &r.config, netns, &self.pod_cidrs())
    }

    /// Releases network, infra process and the pinned namespaces; returns
    /// what failed and keeps going after each failure.
    async fn tear_down_sandbox(&self, record: &mut SandboxRecord) -> Vec<RuntimeError> {
        let mut errors = Vec::new();
        if record.network_attached {
            let netns = record.netns.clone().unwrap_or_default();
            let rt = self.cni_runtime_conf(record, &netns);
            let net = self.inner.cni.load_network().ok();
            match self.inner.cni.del(net.as_ref(), &rt).await {
                Ok(()) => record.network_attached = false,
                Err(source) => errors.push(RuntimeError::Network {
                    sandbox: record.id.clone(),
                    source,
                }),
            }
        }
        if let Some(pid) = record.infra_pid {
            if pidfd::alive_with(pid, &record.id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = tokio::time::timeout(Duration::from_secs(5), pidfd::wait_exit(pid)).await;
            }
            record.infra_pid = None;
        }
        // The unmounts on a bulk-work thread: they wait on the mount lock,
        // which a host starting many pods holds often.
        let mounts = (
            record.shm.clone(),
            [
                record.netns.clone(),
                record.ipcns.clone(),
                record.utsns.clone(),
            ],
        );
        let unmounted = super::off_workers(move || unmount_sandbox(mounts)).await;
        let (shm, pinned, unmount_errors) = match unmounted {
            Ok(done) => done,
            Err(e) => {
                let source = std::io::Error::other(e);
                errors.push(RuntimeError::io(
                    "unmounting",
                    &self.sandbox_dir(&record.id),
                )(source));
                return errors;
            }
        };
        errors.extend(unmount_errors);
        record.shm = shm;
        [record.netns, record.ipcns, record.utsns] = pinned;
        errors
    }

    /// StopPodSandbox: kills the sandbox's containers and releases its
    /// namespaces and network. Idempotent.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let (id, entry) = match self.sandbox_entry(id) {
            Ok(found) => found,
            // Stopping an unknown sandbox is not an error (containerd).
            Err(RuntimeError::SandboxNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = entry.op.lock().await;
        for cid in self.container_ids_of_sandbox(&id) {
            self.stop_container(&cid, 0).await?;
        }
        let mut record = entry.get();
        let errors = self.tear_down_sandbox(&mut record).await;
        record.state = SandboxState::NotReady;
        entry.update(|r| *r = record.clone());
        persist_json(&self.sandbox_dir(&id).join("sandbox.json"), &record).await?;
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// RemovePodSandbox: stops it if needed, removes its containers and all
    /// its state. Idempotent.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let (id, entry) = match self.sandbox_entry(id) {
            Ok(found) => found,
            Err(RuntimeError::SandboxNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_pod_sandbox(&id).await?;
        let _op = entry.op.lock().await;
        for cid in self.container_ids_of_sandbox(&id) {
            self.remove_container(&cid).await?;
        }
        let dir = self.sandbox_dir(&id);
        let removing = dir.clone();
        super::off_workers(move || std::fs::remove_dir_all(&removing))
            .await
            .map_err(std::io::Error::other)
            .and_then(|removed| removed)
            .or_else(ignore_not_found)
            .map_err(RuntimeError::io("removing", &dir))?;
        self.inner
            .sandboxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.release_name(&entry.get().reserved_name());
        tracing::info!(sandbox.id = %id, "pod sandbox removed");
        Ok(())
    }

    /// PodSandboxStatus.
    pub fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, RuntimeError> {
        let (_, entry) = self.sandbox_entry(id)?;
        Ok(self.sandbox_status(&entry.get()))
    }

    /// The state CRI reports: Ready only while the pod's namespaces exist:
    /// its infra process (if it has one) is alive and every pinned namespace
    /// is still mounted.
    pub(super) fn sandbox_cri_state(&self, r: &SandboxRecord) -> cri::PodSandboxState {
        let infra_alive = r.infra_pid.is_none_or(|pid| pidfd::alive_with(pid, &r.id));
        let pinned = [&r.netns, &r.ipcns, &r.utsns]
            .into_iter()
            .flatten()
            .all(|path| is_pinned_namespace(path));
        if r.state == SandboxState::Ready && infra_alive && pinned {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        }
    }

    /// Records of the sandboxes a CRI filter selects by id (or unique
    /// prefix) and labels.
    pub(super) fn sandboxes_matching(
        &self,
        id: &str,
        label_selector: &HashMap<String, String>,
    ) -> Vec<SandboxRecord> {
        super::select_entries(&self.inner.sandboxes, id)
            .iter()
            .map(|e| e.get())
            .filter(|r| super::labels_match(&r.config.labels, label_selector))
            .collect()
    }

    fn sandbox_status(&self, r: &SandboxRecord) -> cri::PodSandboxStatus {
        let state = self.sandbox_cri_state(r);
        let ns = r.namespace_options();
        cri::PodSandboxStatus {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            state: state as i32,
            created_at: r.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: r.ips.first().cloned().unwrap_or_default(),
                additional_ips: r
                    .ips
                    .iter()
                    .skip(1)
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: Some(ns) }),
            }),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
            runtime_handler: String::new(),
        }
    }

    /// ListPodSandbox.
    pub fn list_pod_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        let filter = filter.unwrap_or_default();
        Ok(self
            .sandboxes_matching(&filter.id, &filter.label_selector)
            .into_iter()
            .map(|r| cri::PodSandbox {
                state: self.sandbox_cri_state(&r) as i32,
                id: r.id,
                metadata: r.config.metadata,
                created_at: r.created_at,
                labels: r.config.labels,
                annotations: r.config.annotations,
                runtime_handler: String::new(),
            })
            .filter(|s| filter.state.as_ref().is_none_or(|f| f.state == s.state))
            .collect())
    }

    /// Paths and settings a container of this sandbox needs.
    pub(super) fn sandbox_paths(&self, r: &SandboxRecord) -> crate::oci::SandboxPaths {
        let dir = self.sandbox_dir(&r.id);
        let host_network = r.host_network();
        // Pinned, or held by the infra process of an older sandbox.
        let infra_ns = |kind: &str| {
            r.infra_pid
                .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/{kind}")))
        };
        crate::oci::SandboxPaths {
            netns: r.netns.clone(),
            ipcns: if r.host_ipc() {
                None
            } else {
                r.ipcns.clone().or_else(|| infra_ns("ipc"))
            },
            utsns: if host_network {
                None
            } else {
                r.utsns.clone().or_else(|| infra_ns("uts"))
            },
            hosts: Some(if host_network {
                PathBuf::from("/etc/hosts")
            } else {
                dir.join("hosts")
            }),
            resolv_conf: Some(dir.join("resolv.conf")),
            hostname_file: Some(dir.join("hostname")),
            hostname: r.hostname(),
            pidns: r
                .pid_holder
                .map(|p| PathBuf::from(format!("/proc/{p}/ns/pid"))),
            shm: if r.host_ipc() {
                Some(PathBuf::from("/dev/shm"))
            } else {
                r.shm.clone()
            },
            sysctls: r
                .config
                .linux
                .as_ref()
                .map(|l| l.sysctls.clone())
                .unwrap_or_default(),
            cgroup_parent: r
                .config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .unwrap_or_default(),
        }
    }

    pub(super) fn sandbox_record(&self, id: &str) -> Result<SandboxRecord, RuntimeError> {
        Ok(self.sandbox_entry(id)?.1.get())
    }

    /// Rebuilds the sandbox map from disk; removes half-made sandboxes.
    pub(super) async fn load_sandboxes(&self) {
        let dir = self.inner.config.root.join("sandboxes");
        for id in list_dirs(&dir) {
            let Some(mut record) = read_json::<SandboxRecord>(&dir.join(&id).join("sandbox.json"))
            else {
                tracing::warn!(sandbox.id = %id, "removing sandbox directory without a record");
                let _ = std::fs::remove_dir_all(dir.join(&id));
                continue;
            };
            // (Sandboxes of older versions have no `setting_up`; for them an
            // infra pid in a NotReady record tells the same.)
            if record.setting_up
                || (record.state == SandboxState::NotReady && record.infra_pid.is_some())
            {
                // Crashed during RunPodSandbox: the caller never got the id.
                tracing::warn!(sandbox.id = %id, "removing sandbox that was never completed");
                for e in self.tear_down_sandbox(&mut record).await {
                    tracing::warn!(sandbox.id = %id, error = %e, "cleaning up half-made sandbox");
                }
                let _ = std::fs::remove_dir_all(dir.join(&id));
                continue;
            }
            if let Err(e) = self.reserve_name(&record.reserved_name(), &id) {
                tracing::warn!(sandbox.id = %id, error = %e, "duplicate sandbox name on disk");
            }
            self.inner
                .sandboxes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Entry::new(record));
        }
    }
}

fn ignore_not_found(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Starts the infra process and waits for it to report readiness:
/// `(infra pid, pid of the pod pid namespace's init if there is one)`.
async fn spawn_infra(
    helper: &HelperExe,
    id: &str,
    spec: &InfraSpec,
) -> Result<(i32, Option<i32>), RuntimeError> {
    let err = |message: String| RuntimeError::Infra {
        sandbox: id.to_owned(),
        message,
    };
    let spec_json = serde_json::to_string(spec).map_err(|e| err(e.to_string()))?;
    let (pid, report) = helper
        .spawn("infra process", INFRA_ARG, &spec_json, INFRA_START_TIMEOUT)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut words = report.split_whitespace();
    match (words.next(), words.next().map(str::parse::<i32>)) {
        (Some("ready"), None) if !spec.new_pid => Ok((pid, None)),
        (Some("ready"), Some(Ok(holder))) if spec.new_pid => Ok((pid, Some(holder))),
        _ => Err(err(format!("did not start: {report}"))),
    }
}

/// Runs the pin helper, which creates the namespaces `spec` asks for and
/// bind-mounts them at the paths it names.
async fn pin_namespaces(helper: &HelperExe, spec: &PinSpec) -> Result<(), RuntimeError> {
    let err = |message: String| RuntimeError::Pin {
        sandbox: spec.id.clone(),
        message,
    };
    let spec_json = serde_json::to_string(spec).map_err(|e| err(e.to_string()))?;
    let (_, report) = helper
        .spawn("namespace pin helper", PIN_ARG, &spec_json, PIN_TIMEOUT)
        .await
        .map_err(|e| err(e.to_string()))?;
    if report == PINNED {
        Ok(())
    } else {
        Err(err(report.trim_start_matches("error: ").to_owned()))
    }
}

/// Size of a pod's `/dev/shm`, as containerd's default.
const SHM_SIZE: &str = "size=65536k";

/// Checks the sandbox namespace modes: a sandbox cannot target a container,
/// and network and IPC are per pod or the node's.
fn validate_namespace_options(config: &cri::PodSandboxConfig) -> Result<(), RuntimeError> {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(ns) = ns else { return Ok(()) };
    let allowed = |field: &str, mode: i32, ok: &[cri::NamespaceMode]| {
        if ok.iter().any(|m| *m as i32 == mode) {
            return Ok(());
        }
        let name = cri::NamespaceMode::try_from(mode)
            .map(|m| m.as_str_name().to_owned())
            .unwrap_or_else(|_| mode.to_string());
        Err(RuntimeError::InvalidArgument(format!(
            "linux.security_context.namespace_options.{field}: {name} is not valid for a pod sandbox"
        )))
    };
    use cri::NamespaceMode::{Container, Node, Pod};
    allowed("network", ns.network, &[Pod, Node])?;
    allowed("ipc", ns.ipc, &[Pod, Node])?;
    allowed("pid", ns.pid, &[Pod, Container, Node])
}

/// Mounts a fresh tmpfs for the pod's `/dev/shm` at `path`.
fn mount_shm(path: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(path).map_err(RuntimeError::io("creating", path))?;
    let options = format!("mode=1777,{SHM_SIZE}");
    nix::mount::mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|source| RuntimeError::Mount {
        op: "mounting the pod's /dev/shm at",
        path: path.to_owned(),
        source,
    })
}

/// Whether `path` is a mounted namespace (nsfs), not the empty file left
/// after an unmount.
fn is_pinned_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// The shm mount and pinned namespaces of a sandbox left after unmounting
/// what can be, with the errors of what could not.
type Unmounted = (Option<PathBuf>, [Option<PathBuf>; 3], Vec<RuntimeError>);

/// Unmounts a sandbox's shm and unmounts and removes its pinned namespaces.
fn unmount_sandbox((shm, pinned): (Option<PathBuf>, [Option<PathBuf>; 3])) -> Unmounted {
    let mut errors = Vec::new();
    let shm = shm.and_then(
        |shm| match nix::mount::umount2(&shm, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => None,
            Err(source) => {
                errors.push(RuntimeError::Mount {
                    op: "unmounting",
                    path: shm.clone(),
                    source,
                });
                Some(shm)
            }
        },
    );
    let pinned = pinned.map(|path| {
        let path = path?;
        match unmount_and_remove(&path) {
            Ok(()) => None,
            Err(e) => {
                errors.push(e);
                Some(path)
            }
        }
    });
    (shm, pinned, errors)
}

fn unmount_and_remove(path: &Path) -> Result<(), RuntimeError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(source) => {
            return Err(RuntimeError::Mount {
                op: "unmounting",
                path: path.to_owned(),
                source,
            });
        }
    }
    std::fs::remove_file(path)
        .or_else(ignore_not_found)
        .map_err(RuntimeError::io("removing", path))
}

/// `/etc/resolv.conf` from the CRI DNS config, or the host's when none is given.
fn resolv_conf(dns: Option<&cri::DnsConfig>) -> String {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut out = String::new();
            if !d.searches.is_empty() {
                out.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for s in &d.servers {
                out.push_str(&format!("nameserver {s}\n"));
            }
            if !d.options.is_empty() {
                out.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            out
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

fn hosts_file(hostname: &str, ips: &[String]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for ip in ips {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_file_names_pod_ips() {
        let h = hosts_file("web", &["10.88.0.5".into()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.5\tweb\n"));
    }

    #[test]
    fn only_a_mounted_namespace_counts_as_pinned() {
        // Any process's namespace files are on nsfs; a plain file (what is
        // left after an unmount) or a missing path is not.
        assert!(is_pinned_namespace(Path::new("/proc/self/ns/uts")));
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join("utsns");
        std::fs::write(&left, "").unwrap();
        assert!(!is_pinned_namespace(&left));
        assert!(!is_pinned_namespace(&dir.path().join("missing")));
    }

    #[test]
    fn netns_path_is_short_and_unique_per_id() {
        let a = netns_path(&"a".repeat(64));
        assert_eq!(a, Path::new("/run/netns/cri-shim-aaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn reserved_name_includes_attempt() {
        let m = cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "u".into(),
            namespace: "default".into(),
            attempt: 2,
        };
        assert_eq!(reserved_name(&m), "web_default_u_2");
    }
}
