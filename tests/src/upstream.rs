//! The upstream kubelet 1.20 as a peer in the end-to-end tests: the real
//! `kubelet` built from Debian's `kubernetes` 1.20.2 source package by
//! `scripts/upstream-k8s.sh`, found through `$UPSTREAM_K8S_BIN_DIR`, run in
//! standalone mode (no kubeconfig, static pods only) on a CRI runtime of the
//! test's own: a standalone cri-shim (which serves the `runtime.v1alpha2` API
//! this kubelet speaks) or a private containerd.
//!
//! Invariant: an upstream kubelet changes nothing on the host that outlives it.
//! It gets its own root dir, ports, cgroup root (`--cgroup-root`, so it never
//! sees, and never "cleans up", the pod cgroups of another kubelet) and CNI
//! network (through the runtime: with a remote runtime the kubelet leaves the
//! network to it). It runs in a mount namespace of its own in which the kernel
//! tunables it would set (`kernel.panic`, `vm.overcommit_memory`, ...) are
//! shadowed by files, and without its iptables utility chains, so the host's
//! sysctls and firewall stay as they were. When dropped, it removes its
//! manifests, waits until the kubelet killed its pods, stops it, removes the
//! dead containers and sandboxes through the CRI (the upstream kubelet leaves
//! them to its garbage collector, which runs once a minute), and removes its
//! cgroups, its root-dir bind mount and its pod logs.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use k8s_cri::v1::{ContainerState, PodSandboxState};
use serde_json::{Value, json};

use crate::harness::{
    CniNetwork, Containerd, CriClient, CriShim, DEADLINE, POD_LOG_ROOT, POLL, Process,
    ProcessExited, STOP_GRACE, ScratchDir, TestImages, block_on_fresh, cri_client, free_tcp_port,
    http_get, list_containers, list_sandboxes, remove_cgroup_tree, remove_everything, run_quiet,
    tail, terminate, test_cgroup_root, wait_until,
};

/// Environment variable naming the directory of the upstream binaries
/// (`kubelet`, `kube-apiserver`, ...); `scripts/test.sh` sets it.
pub const BIN_DIR_ENV: &str = "UPSTREAM_K8S_BIN_DIR";
/// The version the binaries must report (`kubelet --version`).
pub const VERSION: &str = "v1.20.2";
/// The sandbox image of the tests (also containerd's `sandbox_image`).
pub const PAUSE_IMAGE: &str = "localhost/pause:latest";
/// How long the kubelet's container garbage collector may take to remove the
/// containers and sandbox of a deleted pod: it runs once a minute.
pub const GC_DEADLINE: Duration = Duration::from_secs(150);

/// Where the upstream kubelet puts `<pod>_<ns>_<container>-<id>.log` symlinks.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// The kernel tunables the 1.20 kubelet sets at start
/// (`setupKernelTunables`), as paths under `/proc/sys`.
const KERNEL_TUNABLES: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Run by `unshare --mount` before the kubelet: shadows each tunable in
/// `$2...` with a file in `$1` holding its current value, so the kubelet's
/// writes land in those files. `/proc` is made private in the new namespace
/// first, so the bind mounts do not propagate to the host.
const SHADOW_SYSCTLS_SCRIPT: &str = r#"set -eu
dir=$1; shift
mount --make-rprivate /proc
while [ "$1" != -- ]; do
    shadow="$dir/$(echo "$1" | tr / .)"
    cat "/proc/sys/$1" >"$shadow"
    mount --bind "$shadow" "/proc/sys/$1"
    shift
done
shift
exec "$@"
"#;

/// The directory holding the upstream binaries, or why there is none (for
/// the reason of an ignored trial).
pub fn bin_dir() -> Result<PathBuf, String> {
    let Some(dir) = std::env::var_os(BIN_DIR_ENV) else {
        return Err(format!(
            "needs the upstream Kubernetes 1.20 binaries: {BIN_DIR_ENV} is not set \
             (scripts/test.sh sets it; build them with scripts/upstream-k8s.sh)"
        ));
    };
    let dir = PathBuf::from(dir);
    let kubelet = dir.join("kubelet");
    if !kubelet.is_file() {
        return Err(format!(
            "needs the upstream Kubernetes 1.20 binaries: {} is missing ({BIN_DIR_ENV}={})",
            kubelet.display(),
            dir.display()
        ));
    }
    Ok(dir)
}

/// The kubelet's `--cgroup-root` ([`test_cgroup_root`]), made in every
/// cgroup hierarchy before the kubelet starts: the upstream kubelet refuses
/// a root that does not exist. Removed with everything below it on drop.
#[derive(Debug)]
struct CgroupRoot {
    /// `/kubelet-rs-e2e/<node>`, as the kubelet is given it.
    name: String,
    removed: bool,
}

impl CgroupRoot {
    fn create(node_name: &str) -> anyhow::Result<Self> {
        let name = test_cgroup_root(node_name);
        // From here on, drop removes whatever was made.
        let root = CgroupRoot {
            name,
            removed: false,
        };
        for hierarchy in cgroup_hierarchies() {
            let mut dir = hierarchy.clone();
            for component in root.name.trim_start_matches('/').split('/') {
                let parent = dir.clone();
                dir.push(component);
                if dir.is_dir() {
                    continue;
                }
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                // A new v1 cpuset has no CPUs and memory nodes, and takes no
                // tasks until it has some: give it its parent's.
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if let Ok(value) = fs::read_to_string(parent.join(file)) {
                        fs::write(dir.join(file), value.trim())
                            .with_context(|| format!("writing {}", dir.join(file).display()))?;
                    }
                }
            }
        }
        Ok(root)
    }

    /// Removes the cgroups, innermost first; reports what could not be
    /// removed. The pods' processes are gone by now, but their cgroups may
    /// take a moment to empty.
    fn remove(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.removed, true) {
            return Vec::new();
        }
        let mut left = remove_cgroup_tree(&self.name);
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            left = remove_cgroup_tree(&self.name);
        }
        left
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        for problem in self.remove() {
            eprintln!("e2e cleanup: {problem}");
        }
    }
}

/// The cgroup hierarchies, as [`remove_cgroup_tree`] walks them: the unified
/// one on a cgroup v2 host, else every hierarchy under `/sys/fs/cgroup`
/// (with the hybrid host's `unified`, where runc puts the pods' cgroups too).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_owned()];
    }
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && !path.is_symlink())
        .collect()
}

/// A running upstream kubelet 1.20 in standalone mode.
#[derive(Debug)]
pub struct UpstreamKubelet {
    /// `--hostname-override`: static pod `x` is named `x-<node_name>`.
    pub node_name: String,
    /// The config's `staticPodPath`.
    pub manifest_dir: PathBuf,
    /// `--root-dir`.
    pub root_dir: PathBuf,
    /// The kubelet's stdout and stderr.
    pub log_path: PathBuf,
    /// `--container-runtime-endpoint`.
    pub endpoint: String,
    /// The read-only port (`/pods`, `/healthz`) on 127.0.0.1.
    pub read_only_port: u16,
    cgroup_root: CgroupRoot,
    process: Process,
}

impl UpstreamKubelet {
    /// Starts `<bin_dir>/kubelet` on the CRI runtime at `endpoint` with an
    /// empty manifest dir under `dir`, and waits until its read-only server
    /// answers `/healthz`.
    pub async fn start(
        bin_dir: &Path,
        dir: &Path,
        node_name: &str,
        endpoint: &str,
    ) -> anyhow::Result<Self> {
        let kubelet_bin = bin_dir.join("kubelet");
        let version = run_quiet(Command::new(&kubelet_bin).arg("--version"))?;
        ensure!(
            version.trim() == format!("Kubernetes {VERSION}"),
            "{} reports {:?}, expected Kubernetes {VERSION}",
            kubelet_bin.display(),
            version.trim()
        );
        let manifest_dir = dir.join("manifests");
        let root_dir = dir.join("kubelet");
        let shadow_dir = dir.join("sysctl-shadow");
        for d in [&manifest_dir, &root_dir, &shadow_dir] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let cgroup_root = CgroupRoot::create(node_name)?;
        let read_only_port = free_tcp_port()?;
        let config_path = dir.join("kubelet-config.json");
        let config = kubelet_config(
            &manifest_dir,
            &root_dir,
            &cgroup_root.name,
            [free_tcp_port()?, read_only_port, free_tcp_port()?],
        );
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;

        let log_path = dir.join("upstream-kubelet.log");
        let log = File::create(&log_path)?;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "unchanged", "--"])
            .args(["sh", "-c", SHADOW_SYSCTLS_SCRIPT, "shadow-sysctls"])
            .arg(&shadow_dir)
            .args(KERNEL_TUNABLES)
            .arg("--")
            .arg(&kubelet_bin)
            .arg("--config")
            .arg(&config_path)
            .arg("--root-dir")
            .arg(&root_dir)
            .arg("--cert-dir")
            .arg(root_dir.join("pki"))
            .args(["--hostname-override", node_name])
            .args(["--container-runtime", "remote"])
            .args(["--container-runtime-endpoint", endpoint])
            .args(["--pod-infra-container-image", PAUSE_IMAGE])
            .args(["--v", "2"]);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the upstream kubelet under unshare (util-linux)")?;
        let kubelet = UpstreamKubelet {
            node_name: node_name.to_owned(),
            manifest_dir,
            root_dir,
            log_path,
            endpoint: endpoint.to_owned(),
            read_only_port,
            cgroup_root,
            process: Process::new("upstream kubelet", child),
        };
        wait_until(
            "the upstream kubelet answers /healthz",
            Duration::from_secs(60),
            POLL,
            async || {
                kubelet.check_alive()?;
                let response = kubelet.get("/healthz")?;
                Ok((response.status == 200 && response.body.trim() == "ok").then_some(()))
            },
        )
        .await
        .with_context(|| {
            format!(
                "the upstream kubelet did not come up; its errors:\n{}",
                klog_errors(&kubelet.log_path, 30)
            )
        })?;
        Ok(kubelet)
    }

    /// `GET path` on the read-only port.
    pub fn get(&self, path: &str) -> anyhow::Result<crate::harness::HttpResponse> {
        http_get(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            self.read_only_port,
            path,
            Duration::from_secs(5),
        )
    }

    /// The pods the kubelet reports on its read-only `/pods` (a `PodList`).
    pub fn pods(&self) -> anyhow::Result<Vec<Value>> {
        crate::harness::read_only_pods(self.read_only_port)
    }

    /// The pod named `pod_name` in `/pods`, if listed.
    pub fn pod(&self, pod_name: &str) -> anyhow::Result<Option<Value>> {
        Ok(self
            .pods()?
            .into_iter()
            .find(|pod| pod["metadata"]["name"] == pod_name))
    }

    /// The name the kubelet gives static pod `name`: `<name>-<node>`.
    pub fn pod_name(&self, name: &str) -> String {
        format!("{name}-{}", self.node_name)
    }

    /// Writes a manifest atomically (temp file, then rename).
    pub fn write_manifest(&self, file_name: &str, content: &str) -> anyhow::Result<()> {
        crate::harness::write_manifest_file(&self.manifest_dir, file_name, content)
    }

    /// Deletes a manifest.
    pub fn remove_manifest(&self, file_name: &str) -> anyhow::Result<()> {
        crate::harness::remove_manifest_file(&self.manifest_dir, file_name)
    }

    /// `Err(ProcessExited)` if the kubelet died.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        self.process.check_alive()
    }

    /// The kubelet's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Removes the manifests, waits until the kubelet killed every pod, stops
    /// it and removes what is left. Returns the problems: the kubelet did not
    /// kill its pods, did not stop, or something could not be removed. The
    /// dead containers and sandboxes the kubelet leaves to its garbage
    /// collector are removed through the CRI and are not problems.
    async fn teardown(&mut self) -> Vec<String> {
        let Some(mut child) = self.process.take() else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        if let Ok(entries) = fs::read_dir(&self.manifest_dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            problems.push(format!(
                "the upstream kubelet exited before teardown: {status}"
            ));
        } else {
            let endpoint = self.endpoint.clone();
            let outcome = wait_until(
                "the upstream kubelet killed every pod",
                DEADLINE,
                POLL,
                async || {
                    if let Some(status) = child.try_wait()? {
                        return Err(ProcessExited {
                            process: "upstream kubelet",
                            status,
                        }
                        .into());
                    }
                    let mut cri = cri_client(&endpoint).await?;
                    Ok(nothing_runs(&mut cri).await?.then_some(()))
                },
            )
            .await;
            if let Err(e) = outcome {
                problems.push(format!("{e:#}"));
            }
            if let (_, true) = terminate(&mut child, STOP_GRACE) {
                problems.push("the upstream kubelet did not exit on SIGTERM".to_owned());
            }
        }
        let _ = child.kill();
        let _ = child.wait();

        if let Err(e) = remove_everything(&self.endpoint).await {
            problems.push(format!("removing the pods through the runtime: {e:#}"));
        }
        problems.extend(self.cgroup_root.remove());
        problems.extend(detach_mounts_under(&self.root_dir));
        self.remove_pod_logs();
        problems
    }

    /// Deletes `/var/log/pods/<ns>_<name>-<node>_<uid>` and the
    /// `/var/log/containers/<name>-<node>_<ns>_...` links: the node name is
    /// unique to this kubelet, so these are exactly its pods'.
    fn remove_pod_logs(&self) {
        let suffix = format!("-{}", self.node_name);
        for (root, pod_field) in [(POD_LOG_ROOT, 1), (CONTAINER_LOG_LINKS, 0)] {
            let Ok(entries) = fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let parts: Vec<&str> = name.split('_').collect();
                if parts.len() == 3 && parts[pod_field].ends_with(&suffix) {
                    let path = entry.path();
                    let _ = if path.is_symlink() || path.is_file() {
                        fs::remove_file(&path)
                    } else {
                        fs::remove_dir_all(&path)
                    };
                }
            }
        }
    }
}

impl Drop for UpstreamKubelet {
    fn drop(&mut self) {
        if self.process.is_taken() {
            return;
        }
        for problem in block_on_fresh(|| self.teardown()) {
            eprintln!("e2e cleanup ({}): {problem}", self.node_name);
        }
    }
}

/// The klog error and fatal lines (`E1127 ...`, `F1127 ...`) of a log, the
/// last `lines` of them: a fatal error is followed by every goroutine's stack,
/// which buries it for [`tail`].
pub fn klog_errors(path: &Path, lines: usize) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let errors: Vec<&str> = text
        .lines()
        .filter(|line| {
            let mut chars = line.chars();
            matches!(chars.next(), Some('E' | 'F')) && chars.take(4).all(|c| c.is_ascii_digit())
        })
        .collect();
    errors[errors.len().saturating_sub(lines)..].join("\n")
}

/// Whether the runtime has no running container and no ready sandbox.
pub async fn nothing_runs(cri: &mut CriClient) -> anyhow::Result<bool> {
    let running = ContainerState::ContainerRunning as i32;
    let ready = PodSandboxState::SandboxReady as i32;
    let containers = list_containers(cri, None).await?;
    let sandboxes = list_sandboxes(cri, None).await?;
    Ok(!containers.iter().any(|c| c.state == running)
        && !sandboxes.iter().any(|s| s.state == ready))
}

/// Detaches the mounts at and under `dir` (the kubelet bind-mounts its root
/// dir onto itself to make it shared), innermost first.
fn detach_mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| *point == prefix || point.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect();
    // Innermost first; a mount point listed twice has two stacked mounts.
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    let mut problems = Vec::new();
    for point in mounts {
        match nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => problems.push(format!("detaching {point}: {e}")),
        }
    }
    problems
}

/// The `KubeletConfiguration` of a test kubelet. Ports: `[port,
/// read_only_port, healthz_port]`, all on 127.0.0.1.
fn kubelet_config(
    manifest_dir: &Path,
    root_dir: &Path,
    cgroup_root: &str,
    [port, read_only_port, healthz_port]: [u16; 3],
) -> Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "staticPodPath": manifest_dir,
        "volumePluginDir": root_dir.join("volume-plugins"),
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": read_only_port,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        // Standalone: no API server to ask for webhook authn/authz.
        "authentication": {
            "anonymous": { "enabled": true },
            "webhook": { "enabled": false }
        },
        "authorization": { "mode": "AlwaysAllow" },
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": false,
        // The host's firewall is not the test's to change.
        "makeIPTablesUtilChains": false,
        // A nearly full disk of a shared test machine must not make the
        // kubelet evict pods or delete the locally imported images (nothing
        // can be pulled again here).
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1Mi",
            "nodefs.inodesFree": "1",
            "imagefs.available": "1Mi"
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99
    })
}

/// The CRI runtime under an upstream kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamRuntime {
    /// A standalone cri-shim (served as `runtime.v1alpha2` to this kubelet).
    CriShim,
    /// A private containerd 1.6.
    Containerd,
}

/// The runtime process of an [`UpstreamNode`].
#[derive(Debug)]
pub enum RuntimeProcess {
    /// A standalone cri-shim.
    CriShim(CriShim),
    /// A private containerd.
    Containerd(Containerd),
}

impl RuntimeProcess {
    /// Its `unix://` endpoint.
    pub fn endpoint(&self) -> &str {
        match self {
            RuntimeProcess::CriShim(shim) => &shim.endpoint,
            RuntimeProcess::Containerd(containerd) => &containerd.endpoint,
        }
    }
}

/// One upstream test node: an upstream kubelet on its own runtime, network
/// and temp dir. Fields drop in order: kubelet (removes pods), runtime,
/// network, dir.
#[derive(Debug)]
pub struct UpstreamNode {
    /// The kubelet.
    pub kubelet: UpstreamKubelet,
    /// Its runtime.
    pub runtime: RuntimeProcess,
    /// The pod network (configured in the runtime).
    pub network: CniNetwork,
    scratch: ScratchDir,
}

impl UpstreamNode {
    /// Brings up a runtime with the test images (busybox, busybox-httpd,
    /// pause) on network `network_index` and an upstream kubelet on it.
    pub async fn start(runtime: UpstreamRuntime, network_index: u32) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let bin_dir = bin_dir().map_err(|reason| anyhow!(reason))?;
        let images = TestImages::get()?;
        let node_name = format!(
            "up-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let scratch = ScratchDir::new()?;
        let network = CniNetwork::create(scratch.path(), network_index)?;
        let runtime = match runtime {
            UpstreamRuntime::CriShim => {
                let mut shim = CriShim::start(scratch.path(), &network)?;
                import_into_cri_shim(&mut shim, &[images.busybox_httpd(), images.pause()])?;
                RuntimeProcess::CriShim(shim)
            }
            UpstreamRuntime::Containerd => RuntimeProcess::Containerd(
                Containerd::start(scratch.path(), &network, images).await?,
            ),
        };
        let kubelet =
            UpstreamKubelet::start(&bin_dir, scratch.path(), &node_name, runtime.endpoint())
                .await?;
        Ok(UpstreamNode {
            kubelet,
            runtime,
            network,
            scratch,
        })
    }

    /// `Err(ProcessExited)` if the kubelet or containerd died.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        self.kubelet.check_alive()?;
        if let RuntimeProcess::Containerd(containerd) = &self.runtime {
            containerd.check_alive()?;
        }
        Ok(())
    }

    /// [`wait_until`] with `deadline` and [`POLL`] that gives up at once
    /// when the kubelet (or containerd) died.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        wait_until(what, deadline, POLL, async || {
            self.check_alive()?;
            check().await
        })
        .await
    }

    /// A client for the node's runtime.
    pub async fn cri(&self) -> anyhow::Result<CriClient> {
        cri_client(self.runtime.endpoint()).await
    }

    /// The last lines of the kubelet's (and containerd's) log.
    pub fn diagnostics(&self) -> String {
        let mut text = format!(
            "--- upstream kubelet log ({}), last errors ---\n{}\n\
             --- upstream kubelet log, last lines ---\n{}\n",
            self.kubelet.log_path.display(),
            klog_errors(&self.kubelet.log_path, 20),
            tail(&self.kubelet.log_path, 40)
        );
        if let RuntimeProcess::Containerd(containerd) = &self.runtime {
            text.push_str(&format!(
                "--- containerd log ({}), last lines ---\n{}\n",
                containerd.log_path.display(),
                tail(&containerd.log_path, 30)
            ));
        }
        text
    }

    /// Tears the node down; fails if the kubelet did not kill its pods or did
    /// not stop, or anything (veth, process, mount, cgroup) was left behind.
    /// Also returns [`Self::diagnostics`] as they are after the kubelet's
    /// teardown.
    pub async fn shutdown_with_logs(mut self) -> (anyhow::Result<()>, String) {
        let mut problems = self.kubelet.teardown().await;
        let logs = self.diagnostics();
        let UpstreamNode {
            kubelet,
            runtime,
            network,
            scratch,
        } = self;
        drop(kubelet);
        // Stops the runtime; it holds nothing any more.
        drop(runtime);
        match network.veths() {
            Ok(veths) if veths.is_empty() => {}
            Ok(veths) => problems.push(format!(
                "interfaces left on bridge {}: {}",
                network.bridge,
                veths.join(", ")
            )),
            Err(e) => problems.push(format!("listing the bridge's interfaces: {e:#}")),
        }
        drop(network);
        problems.extend(scratch.sweep());
        let outcome = if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "unclean teardown of an upstream node:\n  {}",
                problems.join("\n  ")
            ))
        };
        (outcome, logs)
    }
}

/// Imports OCI archives into a running standalone cri-shim: its image store
/// reads its index at start, so the server is stopped for the import and
/// started again (containers keep running across that).
pub fn import_into_cri_shim(shim: &mut CriShim, archives: &[PathBuf]) -> anyhow::Result<()> {
    shim.kill9();
    let bin = crate::harness::binary("cri-shim")?;
    for archive in archives {
        run_quiet(
            Command::new(&bin)
                .arg("--root")
                .arg(&shim.root)
                .arg("import")
                .arg(archive),
        )
        .with_context(|| format!("importing {} into cri-shim", archive.display()))?;
    }
    shim.restart()
}

/// Fails unless `pod` (an item of `/pods`) is `Running` and each container
/// `(name, id)` of `containers` is running with the runtime's container id.
pub fn check_pod_running(pod: &Value, containers: &[(&str, &str)]) -> anyhow::Result<()> {
    let name = &pod["metadata"]["name"];
    let phase = &pod["status"]["phase"];
    if phase != "Running" {
        bail!("pod {name} is in phase {phase}, not Running");
    }
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .with_context(|| format!("pod {name} has no containerStatuses"))?;
    for (container, id) in containers {
        let status = statuses
            .iter()
            .find(|s| s["name"] == *container)
            .with_context(|| format!("pod {name} has no status for container {container}"))?;
        ensure!(
            status["state"]["running"].is_object(),
            "container {container} of pod {name} is not running: {}",
            status["state"]
        );
        let reported = status["containerID"].as_str().unwrap_or_default();
        ensure!(
            reported.split_once("://").map(|(_, rest)| rest) == Some(*id),
            "container {container} of pod {name} has containerID {reported:?}, the runtime \
             has id {id}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_the_host_alone() {
        let config = kubelet_config(
            Path::new("/t/manifests"),
            Path::new("/t/kubelet"),
            "/kubelet-rs-e2e-n",
            [1, 2, 3],
        );
        assert_eq!(config["kind"], "KubeletConfiguration");
        assert_eq!(config["staticPodPath"], "/t/manifests");
        assert_eq!(config["cgroupRoot"], "/kubelet-rs-e2e-n");
        assert_eq!(config["makeIPTablesUtilChains"], false);
        assert_eq!(config["readOnlyPort"], 2);
        assert_eq!(config["address"], "127.0.0.1");
        assert_eq!(config["imageGCHighThresholdPercent"], 100);
    }

    #[test]
    fn pod_status_is_checked_against_the_runtime_ids() {
        let pod = json!({
            "metadata": { "name": "web-n" },
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": "web",
                    "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } },
                    "containerID": "containerd://abc"
                }]
            }
        });
        check_pod_running(&pod, &[("web", "abc")]).unwrap();
        assert!(check_pod_running(&pod, &[("web", "abd")]).is_err());
        assert!(check_pod_running(&pod, &[("other", "abc")]).is_err());
        let mut pending = pod.clone();
        pending["status"]["phase"] = json!("Pending");
        assert!(check_pod_running(&pending, &[("web", "abc")]).is_err());
    }
}
