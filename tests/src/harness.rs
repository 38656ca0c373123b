//! Bring-up of real nodes for the end-to-end tests, and the probes the tests
//! observe them with.
//!
//! A [`Node`] is one kubelet with its own temp dir, node name, CNI network
//! (bridge + subnet) and runtime: the kubelet's embedded cri-shim with its own
//! root, or a private [`Containerd`]. Tests can therefore run in parallel.
//!
//! Invariant: whatever a node creates is removed when it is dropped, also when
//! the test failed or panicked: the kubelet is asked to remove its pods (the
//! manifests are deleted), whatever it left is removed through the CRI, then
//! the processes are stopped, the bridge is deleted, leftover mounts under the
//! temp dir are detached and the dir is removed. [`Node::shutdown`] does the
//! same and also reports what had to be cleaned up by force, so a test can fail
//! on an unclean teardown.

use std::collections::HashMap;
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Container, ContainerFilter, ContainerState, ContainerStatus, ContainerStatusRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandbox, PodSandboxFilter, PodSandboxState,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tonic::transport::Channel;

/// How long a pod may take to start, or to go away; generous, because a
/// loaded CI machine is slow, and a test waits only as long as it must.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Poll interval of [`wait_until`] in the tests.
pub const POLL: Duration = Duration::from_millis(250);

/// Reference of the busybox image (full userland, cmd `sh`).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:latest";
/// Reference of the web server image (`httpd -f -v -p 80 -h /var/www`).
pub const BUSYBOX_HTTPD_IMAGE: &str = "docker.io/library/busybox-httpd:latest";
/// What the web server image's index page contains.
pub const HTTPD_INDEX_TEXT: &str = "hello from busybox-httpd";

/// Label the kubelet puts on sandboxes and containers: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the pod's UID.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label: the container's name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Container annotation: how often the kubelet restarted this container.
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

/// Where the reference CNI plugins live on Debian.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Root of the container logs the kubelet asks the runtime to write.
pub(crate) const POD_LOG_ROOT: &str = "/var/log/pods";
/// Configuration template of the private containerd.
const CONTAINERD_CONFIG_TEMPLATE: &str = include_str!("../fixtures/containerd/config.toml.in");
/// How long a process gets between SIGTERM and SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(15);

/// A client for the CRI runtime service.
pub type CriClient = RuntimeServiceClient<Channel>;

/// Whether the tests run as root; the end-to-end trials need it.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The directory cargo put this test binary's sibling binaries in:
/// `target/<profile>/deps/e2e-<hash>` -> `target/<profile>`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let mut dir = exe
        .parent()
        .context("test binary has no parent directory")?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().context("deps directory has no parent")?;
    }
    Ok(dir.to_owned())
}

/// Path of a workspace binary next to the test binary.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    ensure!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, or scripts/test.sh)",
        path.display()
    );
    Ok(path)
}

/// The OCI-layout archives of the test images.
#[derive(Debug)]
pub struct TestImages {
    /// Directory holding `busybox.tar`, `busybox-httpd.tar` and `pause.tar`.
    pub dir: PathBuf,
}

impl TestImages {
    const FILES: [&str; 3] = ["busybox.tar", "busybox-httpd.tar", "pause.tar"];

    /// The images in `$E2E_IMAGES_DIR`, or `tests/images/out`; built there
    /// from the host's busybox when missing (once per test process).
    pub fn get() -> anyhow::Result<&'static TestImages> {
        static IMAGES: OnceLock<Result<TestImages, String>> = OnceLock::new();
        IMAGES
            .get_or_init(|| {
                let dir = std::env::var_os("E2E_IMAGES_DIR").map_or_else(
                    || Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out"),
                    PathBuf::from,
                );
                let images = TestImages { dir };
                if !images.all().iter().all(|path| path.is_file()) {
                    crate::image::write_test_images(Path::new("/bin/busybox"), &images.dir, false)
                        .map_err(|e| {
                            format!(
                                "building the test images in {}: {e:#}",
                                images.dir.display()
                            )
                        })?;
                }
                Ok(images)
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// `busybox.tar`.
    pub fn busybox(&self) -> PathBuf {
        self.dir.join(Self::FILES[0])
    }

    /// `busybox-httpd.tar`.
    pub fn busybox_httpd(&self) -> PathBuf {
        self.dir.join(Self::FILES[1])
    }

    /// `pause.tar` (containerd's sandbox image).
    pub fn pause(&self) -> PathBuf {
        self.dir.join(Self::FILES[2])
    }

    fn all(&self) -> [PathBuf; 3] {
        Self::FILES.map(|file| self.dir.join(file))
    }
}

/// Waits until `check` returns `Ok(Some(_))`, polling every `poll`, for at most
/// `deadline`. `Ok(None)` means "not yet"; an error also means "not yet", and
/// the last one is reported if the deadline passes; except [`ProcessExited`],
/// which ends the wait at once.
pub async fn wait_until<T>(
    what: &str,
    deadline: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) if e.chain().any(|cause| cause.is::<ProcessExited>()) => {
                return Err(e.context(format!("while waiting until {what}")));
            }
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {deadline:?} waiting until {what}")),
                None => anyhow!("timed out after {deadline:?} waiting until {what}"),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// The repository's example FlexVolume drivers (`kubelet-rs~tmpfs`), the
/// kubelet's `--volume-plugin-dir` in the tests.
pub fn flex_plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flexvolume")
}

/// Environment variable with the `-v` level of test kubelets (default 4:
/// debug logs to read when a test fails; benchmarks set 0, as production).
pub const KUBELET_VERBOSITY_ENV: &str = "E2E_KUBELET_VERBOSITY";

fn kubelet_verbosity() -> String {
    std::env::var(KUBELET_VERBOSITY_ENV).unwrap_or_else(|_| "4".to_owned())
}

/// Starts the kubelet binary with plain (uncoloured) output into `log`.
fn spawn_kubelet(binary: &Path, args: &[std::ffi::OsString], log: File) -> anyhow::Result<Child> {
    Command::new(binary)
        .args(args)
        // Plain log files: the tests search them.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The pods a kubelet reports on its read-only port (`GET /pods`, a `PodList`).
pub fn read_only_pods(port: u16) -> anyhow::Result<Vec<serde_json::Value>> {
    let response = http_get(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        "/pods",
        Duration::from_secs(5),
    )?;
    ensure!(
        response.status == 200,
        "GET /pods: status {}: {}",
        response.status,
        response.body
    );
    let mut list: serde_json::Value =
        serde_json::from_str(&response.body).context("GET /pods: not JSON")?;
    ensure!(
        list["kind"] == "PodList",
        "GET /pods: kind {}",
        list["kind"]
    );
    match list["items"].take() {
        serde_json::Value::Array(items) => Ok(items),
        other => bail!("GET /pods: items is {other}"),
    }
}

/// Writes a static pod manifest atomically (temp file, then rename), so a
/// kubelet never reads half a file.
pub fn write_manifest_file(dir: &Path, file_name: &str, content: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{file_name}.tmp"));
    fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    let path = dir.join(file_name);
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// Deletes a static pod manifest.
pub fn remove_manifest_file(dir: &Path, file_name: &str) -> anyhow::Result<()> {
    let path = dir.join(file_name);
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// The `--cgroup-root` of a test kubelet: its own subtree, so parallel
/// kubelets never share `kubepods`.
pub fn test_cgroup_root(node_name: &str) -> String {
    format!("/kubelet-rs-e2e/{node_name}")
}

/// Pod cgroups (`pod<uid>`) under the QoS levels of a kubelet's cgroup root.
fn pod_cgroups_left(cgroup_root: &str) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for qos in ["", "/burstable", "/besteffort"] {
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(cgroup_root.trim_start_matches('/'))
            .join(format!("kubepods{qos}"));
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("pod") && entry.path().is_dir() {
                left.push(entry.path());
            }
        }
    }
    left
}

/// Removes a test kubelet's cgroup subtree from every hierarchy (deepest
/// first); returns what could not be removed.
pub fn remove_cgroup_tree(relative: &str) -> Vec<String> {
    let relative = relative.trim_start_matches('/');
    let mut left = Vec::new();
    let roots: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        vec![PathBuf::from("/sys/fs/cgroup")]
    } else {
        fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    for root in roots {
        let top = root.join(relative);
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            dirs.push(dir);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            if let Err(e) = fs::remove_dir(&dir) {
                left.push(format!("cgroup {}: {e}", dir.display()));
            }
        }
    }
    left
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick).
pub fn free_tcp_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

/// `GET path` over a plain TCP connection (HTTP/1.0, so the server closes the
/// connection after the answer); `timeout` bounds connect, write and each read.
pub fn http_get(
    ip: IpAddr,
    port: u16,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let addr = SocketAddr::new(ip, port);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: a server that answers after its first read must not see
    // (and reset the connection over) the rest of the request arriving later.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\nUser-Agent: kubelet-rs-e2e\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending the request to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {addr}"))?;
    parse_http_response(&raw).with_context(|| format!("answer from {addr}"))
}

fn parse_http_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/"),
        "not an HTTP status line: {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

/// Which output stream a container log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

/// One line of a log file in the CRI format:
/// `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLogLine {
    /// The timestamp as written.
    pub timestamp: String,
    /// Stream the line came from.
    pub stream: LogStream,
    /// `P`: the line continues in the next entry; `F`: full (last part of) a line.
    pub partial: bool,
    /// The text, without the trailing newline.
    pub content: String,
}

/// Parses one line of a CRI-format log file, checking every field.
pub fn parse_cri_log_line(line: &str) -> anyhow::Result<CriLogLine> {
    let mut fields = line.splitn(4, ' ');
    let (Some(timestamp), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
    else {
        bail!("not a CRI log line (too few fields): {line:?}");
    };
    let content = fields.next().unwrap_or_default();
    ensure!(
        is_rfc3339_nano(timestamp),
        "bad timestamp {timestamp:?} in {line:?}"
    );
    let stream = match stream {
        "stdout" => LogStream::Stdout,
        "stderr" => LogStream::Stderr,
        other => bail!("bad stream {other:?} in {line:?}"),
    };
    let partial = match tag {
        "P" => true,
        "F" => false,
        other => bail!("bad tag {other:?} (want P or F) in {line:?}"),
    };
    Ok(CriLogLine {
        timestamp: timestamp.to_owned(),
        stream,
        partial,
        content: content.to_owned(),
    })
}

/// Reads a whole CRI-format log file; every line must be well-formed.
pub fn read_cri_log(path: &Path) -> anyhow::Result<Vec<CriLogLine>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            parse_cri_log_line(line)
                .with_context(|| format!("{} line {}", path.display(), index + 1))
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as Go's `time.RFC3339Nano`
/// writes it (the fraction has 1 to 9 digits, trailing zeros trimmed).
fn is_rfc3339_nano(ts: &str) -> bool {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    let b = ts.as_bytes();
    if b.len() < 20 || !ts.is_ascii() {
        return false;
    }
    let date_time = digits(&ts[0..4])
        && b[4] == b'-'
        && digits(&ts[5..7])
        && b[7] == b'-'
        && digits(&ts[8..10])
        && b[10] == b'T'
        && digits(&ts[11..13])
        && b[13] == b':'
        && digits(&ts[14..16])
        && b[16] == b':'
        && digits(&ts[17..19]);
    if !date_time {
        return false;
    }
    let mut rest = &ts[19..];
    if let Some(after_dot) = rest.strip_prefix('.') {
        let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&len) {
            return false;
        }
        rest = &after_dot[len..];
    }
    match rest.as_bytes() {
        [b'Z'] => true,
        [b'+' | b'-', ..] if rest.len() == 6 => {
            digits(&rest[1..3]) && rest.as_bytes()[3] == b':' && digits(&rest[4..6])
        }
        _ => false,
    }
}

/// Path of a container's log: `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log`.
pub fn pod_log_path(
    namespace: &str,
    pod_name: &str,
    pod_uid: &str,
    container: &str,
    restart_count: u32,
) -> PathBuf {
    Path::new(POD_LOG_ROOT)
        .join(format!("{namespace}_{pod_name}_{pod_uid}"))
        .join(container)
        .join(format!("{restart_count}.log"))
}

/// Connects a CRI runtime service client to `endpoint` (`unix:///...`).
pub async fn cri_client(endpoint: &str) -> anyhow::Result<CriClient> {
    let channel = cri_shim::client::connect(endpoint).await?;
    Ok(RuntimeServiceClient::new(channel))
}

/// RunPodSandbox of `config`; the sandbox id.
pub async fn run_sandbox(
    cri: &mut CriClient,
    config: &k8s_cri::v1::PodSandboxConfig,
) -> anyhow::Result<String> {
    Ok(cri
        .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

/// CreateContainer of `config` in `sandbox` (made from `sandbox_config`),
/// then StartContainer; the container id.
pub async fn create_and_start(
    cri: &mut CriClient,
    sandbox: &str,
    sandbox_config: &k8s_cri::v1::PodSandboxConfig,
    config: k8s_cri::v1::ContainerConfig,
) -> anyhow::Result<String> {
    let id = cri
        .create_container(k8s_cri::v1::CreateContainerRequest {
            pod_sandbox_id: sandbox.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    cri.start_container(k8s_cri::v1::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

/// RemovePodSandbox of `sandbox`.
pub async fn remove_sandbox(cri: &mut CriClient, sandbox: &str) -> anyhow::Result<()> {
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox.to_owned(),
    })
    .await?;
    Ok(())
}

/// Pod sandboxes, all or those of the pod named `pod_name`.
pub async fn list_sandboxes(
    cri: &mut CriClient,
    pod_name: Option<&str>,
) -> anyhow::Result<Vec<PodSandbox>> {
    let filter = pod_name.map(|name| PodSandboxFilter {
        label_selector: HashMap::from([(LABEL_POD_NAME.to_owned(), name.to_owned())]),
        ..Default::default()
    });
    let response = cri
        .list_pod_sandbox(ListPodSandboxRequest { filter })
        .await?;
    Ok(response.into_inner().items)
}

/// Containers in any state, all or those of the pod named `pod_name`.
pub async fn list_containers(
    cri: &mut CriClient,
    pod_name: Option<&str>,
) -> anyhow::Result<Vec<Container>> {
    let filter = pod_name.map(|name| ContainerFilter {
        label_selector: HashMap::from([(LABEL_POD_NAME.to_owned(), name.to_owned())]),
        ..Default::default()
    });
    let response = cri
        .list_containers(ListContainersRequest { filter })
        .await?;
    Ok(response.into_inner().containers)
}

/// A container's full status.
pub async fn container_status(cri: &mut CriClient, id: &str) -> anyhow::Result<ContainerStatus> {
    let request = ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose: false,
    };
    let response = cri.container_status(request).await?;
    response
        .into_inner()
        .status
        .with_context(|| format!("no status for container {id}"))
}

/// The restart count the kubelet recorded on a container: the
/// `io.kubernetes.container.restartCount` annotation, or else the attempt.
pub fn restart_count(container: &Container) -> u32 {
    container
        .annotations
        .get(ANNOTATION_RESTART_COUNT)
        .and_then(|count| count.parse().ok())
        .or_else(|| container.metadata.as_ref().map(|metadata| metadata.attempt))
        .unwrap_or(0)
}

/// The name of a container in its pod spec (label, or CRI metadata).
pub fn container_name(container: &Container) -> &str {
    container
        .labels
        .get(LABEL_CONTAINER_NAME)
        .map(String::as_str)
        .or_else(|| {
            container
                .metadata
                .as_ref()
                .map(|metadata| metadata.name.as_str())
        })
        .unwrap_or_default()
}

/// A pod whose sandbox is ready and whose containers run.
#[derive(Debug, Clone)]
pub struct RunningPod {
    /// The ready sandbox.
    pub sandbox_id: String,
    /// The pod UID (label `io.kubernetes.pod.uid`).
    pub uid: String,
    /// The pod namespace (label `io.kubernetes.pod.namespace`).
    pub namespace: String,
    /// The pod IP the runtime reports.
    pub ip: IpAddr,
    /// The running containers of the sandbox.
    pub containers: Vec<Container>,
}

/// The pod `pod_name` if it has a ready sandbox with an IP in which every
/// container of `containers` runs; `Ok(None)` if not (yet).
pub async fn running_pod(
    cri: &mut CriClient,
    pod_name: &str,
    containers: &[&str],
) -> anyhow::Result<Option<RunningPod>> {
    let ready = PodSandboxState::SandboxReady as i32;
    for sandbox in list_sandboxes(cri, Some(pod_name)).await? {
        if sandbox.state != ready {
            continue;
        }
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.id.clone(),
            verbose: false,
        };
        let status = cri.pod_sandbox_status(request).await?.into_inner().status;
        let Some(ip) = status
            .and_then(|status| status.network)
            .map(|network| network.ip)
        else {
            continue;
        };
        if ip.is_empty() {
            continue;
        }
        let ip = ip
            .parse()
            .with_context(|| format!("sandbox {} has IP {ip:?}", sandbox.id))?;
        let running: Vec<Container> = list_containers(cri, Some(pod_name))
            .await?
            .into_iter()
            .filter(|c| {
                c.pod_sandbox_id == sandbox.id && c.state == ContainerState::ContainerRunning as i32
            })
            .collect();
        if containers
            .iter()
            .all(|want| running.iter().any(|c| container_name(c) == *want))
        {
            let label = |key: &str| sandbox.labels.get(key).cloned().unwrap_or_default();
            let uid = match label(LABEL_POD_UID) {
                uid if uid.is_empty() => sandbox
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default(),
                uid => uid,
            };
            return Ok(Some(RunningPod {
                sandbox_id: sandbox.id.clone(),
                uid,
                namespace: label(LABEL_POD_NAMESPACE),
                ip,
                containers: running,
            }));
        }
    }
    Ok(None)
}

/// Where test processes lease network numbers (see [`CniNetwork::create`]).
const NETWORK_LEASE_DIR: &str = "/run/kubelet-rs-e2e";

/// A bridge network for one test: its own conf dir, bridge name, subnet and
/// host-local data dir. Deletes its bridge when dropped.
#[derive(Debug)]
pub struct CniNetwork {
    /// The network name in the conflist.
    pub name: String,
    /// Linux bridge device (at most 15 characters).
    pub bridge: String,
    /// IPv4 subnet of the pods, e.g. `10.91.3.0/24`.
    pub subnet: String,
    /// Directory holding only this network's conflist.
    pub conf_dir: PathBuf,
    /// Held while the network exists; released after the bridge is deleted.
    _lease: Flock<File>,
}

impl CniNetwork {
    /// Leases a free network number N in 1..=200 (an exclusive lock on
    /// `/run/kubelet-rs-e2e/net-N.lock`, so concurrent test processes never
    /// share one) and writes the conflist for bridge `kre2eN`, subnet
    /// `10.91.N.0/24`, under `dir`.
    pub fn create_unique(dir: &Path) -> anyhow::Result<Self> {
        for index in 1..=200 {
            if let Some(lease) = lease_network_number(index, FlockArg::LockExclusiveNonblock)? {
                return Self::with_lease(dir, index, lease);
            }
        }
        bail!("all 200 test networks are in use")
    }

    /// Like [`Self::create_unique`], with the given number N (201..=250 are
    /// never handed out by `create_unique`); waits while another test
    /// process holds N.
    pub fn create(dir: &Path, index: u32) -> anyhow::Result<Self> {
        ensure!(
            (1..=250).contains(&index),
            "network number {index} out of range"
        );
        let lease = lease_network_number(index, FlockArg::LockExclusive)?
            .context("blocking lock returned without the lock")?;
        Self::with_lease(dir, index, lease)
    }

    fn with_lease(dir: &Path, index: u32, lease: Flock<File>) -> anyhow::Result<Self> {
        let name = format!("kubelet-rs-e2e-{index}");
        let bridge = format!("kre2e{index}");
        let subnet = format!("10.91.{index}.0/24");
        let conf_dir = dir.join("cni/net.d");
        let data_dir = dir.join("cni/ipam");
        fs::create_dir_all(&conf_dir)?;
        fs::create_dir_all(&data_dir)?;
        // A bridge of that name is a leftover of a killed run: its lease is free.
        if link_exists(&bridge) {
            run_quiet(Command::new("ip").args(["link", "del", &bridge]))?;
        }
        let conflist = conflist(&name, &bridge, &subnet, &data_dir);
        let path = conf_dir.join(format!("10-{name}.conflist"));
        fs::write(&path, serde_json::to_vec_pretty(&conflist)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            name,
            bridge,
            subnet,
            conf_dir,
            _lease: lease,
        })
    }

    /// The interfaces attached to the bridge: one veth per pod.
    pub fn veths(&self) -> anyhow::Result<Vec<String>> {
        if !link_exists(&self.bridge) {
            return Ok(Vec::new());
        }
        let output = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()?;
        ensure!(
            output.status.success(),
            "ip link show master {} failed",
            self.bridge
        );
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect())
    }

    fn delete_bridge(&self) -> anyhow::Result<()> {
        if link_exists(&self.bridge) {
            run_quiet(Command::new("ip").args(["link", "del", &self.bridge]))?;
        }
        Ok(())
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.delete_bridge() {
            eprintln!("e2e cleanup: deleting bridge {}: {e:#}", self.bridge);
        }
    }
}

fn conflist(name: &str, bridge: &str, subnet: &str, data_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": data_dir,
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        }]
    })
}

/// Locks `/run/kubelet-rs-e2e/net-<index>.lock`; `None` if a non-blocking
/// attempt found it held by another test.
fn lease_network_number(index: u32, mode: FlockArg) -> anyhow::Result<Option<Flock<File>>> {
    fs::create_dir_all(NETWORK_LEASE_DIR)
        .with_context(|| format!("creating {NETWORK_LEASE_DIR}"))?;
    let path = Path::new(NETWORK_LEASE_DIR).join(format!("net-{index}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, mode) {
        Ok(lease) => Ok(Some(lease)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => bail!("locking {}: {errno}", path.display()),
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Runs a command to completion; fails with its stderr if it fails.
pub(crate) fn run_quiet(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A process under test (kubelet, containerd) exited while the harness
/// relied on it; [`wait_until`] stops at once on this error.
#[derive(Debug, Clone)]
pub struct ProcessExited {
    /// Which process.
    pub process: &'static str,
    /// How it ended.
    pub status: ExitStatus,
}

impl std::fmt::Display for ProcessExited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} exited unexpectedly: {}", self.process, self.status)
    }
}

impl std::error::Error for ProcessExited {}

/// A child process; `&self` can check that it still runs, so probes can stop
/// waiting as soon as the process under test died.
#[derive(Debug)]
pub(crate) struct Process {
    name: &'static str,
    child: Mutex<Option<Child>>,
}

impl Process {
    pub(crate) fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child: Mutex::new(Some(child)),
        }
    }

    /// `Err(ProcessExited)` once the process has exited.
    pub(crate) fn check_alive(&self) -> anyhow::Result<()> {
        let mut guard = self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let child = guard
            .as_mut()
            .with_context(|| format!("{} was stopped", self.name))?;
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(ProcessExited {
                process: self.name,
                status,
            }
            .into()),
        }
    }

    /// Takes the child out, to stop it; `None` if already taken.
    /// The pid, while the process has not been stopped.
    pub(crate) fn pid(&self) -> Option<u32> {
        let guard = self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.as_ref().map(Child::id)
    }

    pub(crate) fn take(&mut self) -> Option<Child> {
        self.child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    pub(crate) fn is_taken(&mut self) -> bool {
        self.child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none()
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns the exit status
/// and whether SIGKILL was needed.
pub(crate) fn terminate(child: &mut Child, grace: Duration) -> (Option<ExitStatus>, bool) {
    if let Ok(Some(status)) = child.try_wait() {
        return (Some(status), false);
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            return (Some(status), false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    (child.wait().ok(), true)
}

/// The last `lines` lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs the future `make` returns to completion on a fresh runtime in a
/// scoped thread, so that `Drop` can do async cleanup whether or not it runs
/// inside a runtime. The future is created on that thread: it need not be `Send`.
pub(crate) fn block_on_fresh<F: Future>(make: impl FnOnce() -> F + Send) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a runtime for cleanup")
                    .block_on(make())
            })
            .join()
            .expect("cleanup thread panicked")
    })
}

/// Force-removes whatever the runtime still holds: containers, then sandboxes.
/// Returns what it found (and removed), one line each.
pub(crate) async fn remove_everything(endpoint: &str) -> anyhow::Result<Vec<String>> {
    let mut cri = cri_client(endpoint).await?;
    let mut found = Vec::new();
    for container in list_containers(&mut cri, None).await? {
        found.push(format!(
            "container {} ({})",
            container.id,
            container_name(&container)
        ));
        let id = container.id;
        let _ = cri
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await;
        cri.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .with_context(|| format!("removing container {id}"))?;
    }
    for sandbox in list_sandboxes(&mut cri, None).await? {
        let name = sandbox
            .labels
            .get(LABEL_POD_NAME)
            .cloned()
            .unwrap_or_default();
        found.push(format!("sandbox {} ({name})", sandbox.id));
        let id = sandbox.id;
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .with_context(|| format!("stopping sandbox {id}"))?;
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .with_context(|| format!("removing sandbox {id}"))?;
    }
    Ok(found)
}

/// Containers runc still knows under `root`, force-deleted. Returns their ids.
fn delete_runc_leftovers(root: &Path) -> Vec<String> {
    if !root.is_dir() {
        return Vec::new();
    }
    let root_arg = root.as_os_str();
    let Ok(list) = run_quiet(
        Command::new("runc")
            .arg("--root")
            .arg(root_arg)
            .args(["list", "-q"]),
    ) else {
        return Vec::new();
    };
    let ids: Vec<String> = list
        .lines()
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    for id in &ids {
        let _ = run_quiet(
            Command::new("runc")
                .arg("--root")
                .arg(root_arg)
                .args(["delete", "--force", id]),
        );
    }
    ids
}

/// A private containerd with the test images imported.
#[derive(Debug)]
pub struct Containerd {
    /// `unix://<dir>/containerd/containerd.sock`.
    pub endpoint: String,
    /// Its log (stdout and stderr).
    pub log_path: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    process: Process,
}

impl Containerd {
    /// Renders the config from `tests/fixtures/containerd`, starts
    /// `containerd --config`, waits until its CRI service answers and imports
    /// the test images into the `k8s.io` namespace.
    pub async fn start(
        dir: &Path,
        network: &CniNetwork,
        images: &TestImages,
    ) -> anyhow::Result<Self> {
        let root = dir.join("containerd");
        fs::create_dir_all(&root)?;
        let config_path = root.join("config.toml");
        fs::write(
            &config_path,
            render_containerd_config(&root, &network.conf_dir)?,
        )?;
        let log_path = root.join("containerd.log");
        let log = File::create(&log_path)?;
        let mut command = Command::new("containerd");
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // At the default CPU priority, as a service manager starts it, even
        // from a test process that raised its own (the benchmarks do).
        let child = cri_shim::tuning::at_default_priority(|| command.spawn())
            .context("starting containerd (Debian's containerd, see scripts/install-deps.sh)")?;
        let socket = root.join("containerd.sock");
        let containerd = Containerd {
            endpoint: format!("unix://{}", socket.display()),
            log_path,
            root,
            socket,
            process: Process::new("containerd", child),
        };
        containerd.wait_ready().await.with_context(|| {
            format!(
                "containerd did not come up; its log:\n{}",
                tail(&containerd.log_path, 30)
            )
        })?;
        for image in images.all() {
            containerd.ctr(&["-n", "k8s.io", "images", "import"], &image)?;
        }
        Ok(containerd)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_cri_ready(
            "containerd's CRI service answers",
            &self.process,
            &self.endpoint,
        )
        .await
    }

    fn ctr(&self, args: &[&str], path: &Path) -> anyhow::Result<()> {
        run_quiet(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(args)
                .arg(path),
        )?;
        Ok(())
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// `Err(ProcessExited)` if containerd died.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        self.process.check_alive()
    }

    /// Stops containerd; returns what had to be cleaned up by force.
    fn stop(&mut self) -> Vec<String> {
        let Some(mut child) = self.process.take() else {
            return Vec::new();
        };
        let mut problems: Vec<String> = delete_runc_leftovers(&self.root.join("runc/k8s.io"))
            .into_iter()
            .map(|id| format!("containerd: runc container {id} was left running"))
            .collect();
        if let (_, true) = terminate(&mut child, STOP_GRACE) {
            problems.push("containerd did not stop on SIGTERM".to_owned());
        }
        problems
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for problem in self.stop() {
            eprintln!("e2e cleanup: {problem}");
        }
    }
}

/// The containerd configuration for a containerd rooted at `root`.
pub fn render_containerd_config(root: &Path, cni_conf_dir: &Path) -> anyhow::Result<String> {
    let root = root.to_str().context("containerd root is not UTF-8")?;
    let conf = cni_conf_dir.to_str().context("CNI conf dir is not UTF-8")?;
    ensure!(
        !format!("{root}{conf}").contains(['"', '\\']),
        "paths must not need TOML escaping: {root} {conf}"
    );
    Ok(CONTAINERD_CONFIG_TEMPLATE
        .replace("@ROOT@", root)
        .replace("@CNI_CONF_DIR@", conf))
}

/// Waits until the CRI runtime at `endpoint` answers `Version`, giving up
/// at once if `process` (the runtime or the kubelet embedding it) died.
async fn wait_cri_ready(what: &str, process: &Process, endpoint: &str) -> anyhow::Result<()> {
    wait_until(what, Duration::from_secs(30), POLL, async || {
        process.check_alive()?;
        let mut cri = cri_client(endpoint).await?;
        cri.version(VersionRequest::default()).await?;
        Ok(Some(()))
    })
    .await
}

/// The namespace options a kubelet sends: the pod's network and IPC, the
/// pid namespace as given (CONTAINER unless shareProcessNamespace).
pub fn pod_namespaces(pid: k8s_cri::v1::NamespaceMode) -> k8s_cri::v1::NamespaceOption {
    use k8s_cri::v1::NamespaceMode;
    k8s_cri::v1::NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Which CRI runtime a kubelet uses.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// The kubelet's in-process cri-shim with its own root.
    Embedded,
    /// Another runtime at this `unix://` endpoint.
    Remote(String),
}

/// A running kubelet process.
#[derive(Debug)]
pub struct Kubelet {
    /// `--hostname-override`: static pod `x` is named `x-<node_name>`.
    pub node_name: String,
    /// `--pod-manifest-path`.
    pub manifest_dir: PathBuf,
    /// `--root-dir`.
    pub root_dir: PathBuf,
    /// The kubelet's stdout and stderr.
    pub log_path: PathBuf,
    /// The CRI endpoint the kubelet uses (for the embedded runtime,
    /// `unix://<root_dir>/cri-shim.sock`).
    pub endpoint: String,
    /// `--read-only-port` on 127.0.0.1.
    pub read_only_port: u16,
    runtime: Runtime,
    /// `--cri-shim-root` of the embedded runtime.
    shim_root: Option<PathBuf>,
    /// The binary and its arguments, for [`Kubelet::restart`].
    binary: PathBuf,
    args: Vec<std::ffi::OsString>,
    cni_conf_dir: PathBuf,
    dir: PathBuf,
    process: Process,
}

impl Kubelet {
    /// Starts `kubelet` with an empty manifest dir under `dir`. For the
    /// embedded runtime, first imports the test images into its cri-shim root
    /// and waits until the runtime answers.
    pub async fn start(
        dir: &Path,
        node_name: &str,
        runtime: Runtime,
        network: &CniNetwork,
        images: &TestImages,
    ) -> anyhow::Result<Self> {
        let kubelet_bin = binary("kubelet")?;
        let manifest_dir = dir.join("manifests");
        let root_dir = dir.join("kubelet");
        fs::create_dir_all(&manifest_dir)?;
        fs::create_dir_all(&root_dir)?;
        let log_path = dir.join("kubelet.log");
        let log = File::create(&log_path)?;

        let read_only_port = free_tcp_port()?;
        let mut command = Command::new(&kubelet_bin);
        command
            .arg(format!("--read-only-port={read_only_port}"))
            .arg("--volume-plugin-dir")
            .arg(flex_plugin_dir())
            .arg(format!("--cgroup-root={}", test_cgroup_root(node_name)))
            .arg("--pod-manifest-path")
            .arg(&manifest_dir)
            .arg("--root-dir")
            .arg(&root_dir)
            .args(["--hostname-override", node_name])
            .arg("--cni-conf-dir")
            .arg(&network.conf_dir)
            .args(["--cni-bin-dir", CNI_BIN_DIR])
            .arg("-v")
            .arg(kubelet_verbosity());
        let (endpoint, shim_root) = match &runtime {
            Runtime::Embedded => {
                let shim_root = dir.join("cri-shim");
                let shim_bin = binary("cri-shim")?;
                for image in [images.busybox(), images.busybox_httpd()] {
                    run_quiet(
                        Command::new(&shim_bin)
                            .arg("--root")
                            .arg(&shim_root)
                            .arg("import")
                            .arg(&image),
                    )
                    .context("importing a test image into the embedded runtime's root")?;
                }
                command.arg("--cri-shim-root").arg(&shim_root);
                (
                    format!("unix://{}/cri-shim.sock", root_dir.display()),
                    Some(shim_root),
                )
            }
            Runtime::Remote(endpoint) => {
                command.args(["--container-runtime-endpoint", endpoint]);
                (endpoint.clone(), None)
            }
        };
        let args: Vec<std::ffi::OsString> = command.get_args().map(ToOwned::to_owned).collect();
        let child = spawn_kubelet(&kubelet_bin, &args, log)?;
        let kubelet = Kubelet {
            node_name: node_name.to_owned(),
            manifest_dir,
            root_dir,
            log_path,
            endpoint,
            read_only_port,
            runtime,
            shim_root,
            cni_conf_dir: network.conf_dir.clone(),
            dir: dir.to_owned(),
            process: Process::new("kubelet", child),
            binary: kubelet_bin,
            args,
        };
        kubelet.wait_runtime_ready().await.with_context(|| {
            format!(
                "kubelet did not come up; its log:\n{}",
                tail(&kubelet.log_path, 30)
            )
        })?;
        Ok(kubelet)
    }

    /// Stops the kubelet with SIGTERM (its pods keep running, as upstream)
    /// and starts it again with the same flags, logging to the same file;
    /// `while_down` runs in between.
    pub async fn restart(
        &mut self,
        while_down: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if let Some(mut child) = self.process.take() {
            let (status, killed) = terminate(&mut child, Duration::from_secs(30));
            ensure!(!killed, "the kubelet did not stop on SIGTERM");
            ensure!(
                status.is_some_and(|s| s.success()),
                "the kubelet exited with {status:?} on SIGTERM"
            );
        }
        while_down()?;
        let log = fs::OpenOptions::new().append(true).open(&self.log_path)?;
        let child = spawn_kubelet(&self.binary, &self.args, log)?;
        self.process = Process::new("kubelet", child);
        self.wait_runtime_ready().await.with_context(|| {
            format!(
                "the restarted kubelet did not come up; its log:\n{}",
                tail(&self.log_path, 30)
            )
        })
    }

    async fn wait_runtime_ready(&self) -> anyhow::Result<()> {
        wait_cri_ready(
            "the kubelet's runtime answers",
            &self.process,
            &self.endpoint,
        )
        .await
    }

    /// The pods the kubelet reports on its read-only server (`GET /pods`).
    pub fn pods(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        read_only_pods(self.read_only_port)
    }

    /// Static pod `name` (short name) as `GET /pods` reports it, if listed.
    pub fn reported_pod(&self, name: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let full = self.pod_name(name);
        Ok(self
            .pods()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str()))
    }

    /// The name the kubelet gives static pod `name`: `<name>-<node>`.
    pub fn pod_name(&self, name: &str) -> String {
        format!("{name}-{}", self.node_name)
    }

    /// Writes a manifest atomically (temp file, then rename), so the kubelet
    /// never reads half a file.
    pub fn write_manifest(&self, file_name: &str, content: &str) -> anyhow::Result<()> {
        write_manifest_file(&self.manifest_dir, file_name, content)
    }

    /// Deletes a manifest.
    pub fn remove_manifest(&self, file_name: &str) -> anyhow::Result<()> {
        remove_manifest_file(&self.manifest_dir, file_name)
    }

    /// `Err(ProcessExited)` if the kubelet died.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        self.process.check_alive()
    }

    /// The kubelet's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The kubelet's log so far.
    pub fn log(&self) -> anyhow::Result<String> {
        let bytes = fs::read(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Removes the manifests, waits for the kubelet to remove every pod,
    /// stops it, then removes by force whatever is left. Returns the problems:
    /// an empty list means the kubelet tore everything down itself.
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

        // Whether the kubelet removed every pod itself.
        let mut clean = false;
        if let Ok(Some(status)) = child.try_wait() {
            problems.push(format!("kubelet exited before teardown: {status}"));
        } else {
            let endpoint = self.endpoint.clone();
            let cgroup_root = test_cgroup_root(&self.node_name);
            let mut left = None;
            let outcome = wait_until(
                "the kubelet removed every pod",
                DEADLINE,
                POLL,
                async || {
                    if let Some(status) = child.try_wait()? {
                        return Err(ProcessExited {
                            process: "kubelet",
                            status,
                        }
                        .into());
                    }
                    let mut cri = cri_client(&endpoint).await?;
                    let sandboxes = list_sandboxes(&mut cri, None).await?;
                    let containers = list_containers(&mut cri, None).await?;
                    left = Some((sandboxes.len(), containers.len()));
                    // A pod is gone once its cgroup is too: the kubelet
                    // removes that last, after the runtime's objects.
                    let done = sandboxes.is_empty()
                        && containers.is_empty()
                        && pod_cgroups_left(&cgroup_root).is_empty();
                    Ok(done.then_some(()))
                },
            )
            .await;
            match (outcome, left) {
                (Ok(()), _) => clean = true,
                (Err(_), Some((sandboxes, containers))) => problems.push(format!(
                    "after its manifests were removed the kubelet left {sandboxes} sandboxes \
                     and {containers} containers for {DEADLINE:?}"
                )),
                (Err(e), None) => problems.push(format!("{e:#}")),
            }
            match terminate(&mut child, STOP_GRACE) {
                (_, true) => problems.push("kubelet did not exit on SIGTERM".to_owned()),
                (Some(status), false) if !status.success() => {
                    problems.push(format!("kubelet exited with {status} on SIGTERM"));
                }
                _ => {}
            }
        }
        let _ = child.kill();
        let _ = child.wait();

        if !clean {
            match self.remove_leftover_pods().await {
                Ok(found) => problems.extend(
                    found
                        .into_iter()
                        .map(|what| format!("removed by force: {what}")),
                ),
                Err(e) => {
                    problems.push(format!("removing leftover pods through the runtime: {e:#}"))
                }
            }
        }
        if let Some(shim_root) = &self.shim_root {
            for id in delete_runc_leftovers(&shim_root.join("runc")) {
                problems.push(format!(
                    "runc container {id} of the embedded runtime was left"
                ));
            }
        }
        self.remove_pod_logs();
        // The kubelet removes pod cgroups; the QoS levels stay, as upstream.
        let cgroup_root = test_cgroup_root(&self.node_name);
        for left in pod_cgroups_left(&cgroup_root) {
            problems.push(format!("pod cgroup left: {}", left.display()));
        }
        problems.extend(remove_cgroup_tree(&cgroup_root));
        problems
    }

    /// After the kubelet stopped: removes what is left through the runtime.
    /// The embedded runtime died with the kubelet, so a standalone cri-shim on
    /// the same root takes over its state for that.
    async fn remove_leftover_pods(&self) -> anyhow::Result<Vec<String>> {
        match &self.runtime {
            Runtime::Remote(endpoint) => remove_everything(endpoint).await,
            Runtime::Embedded => {
                let shim_root = self
                    .shim_root
                    .as_ref()
                    .context("embedded runtime without a root")?;
                let socket = self.dir.join("cleanup-cri-shim.sock");
                let endpoint = format!("unix://{}", socket.display());
                let log = File::create(self.dir.join("cleanup-cri-shim.log"))?;
                let child = Command::new(binary("cri-shim")?)
                    .env("NO_COLOR", "1")
                    .args(["--listen", &endpoint])
                    .arg("--root")
                    .arg(shim_root)
                    .arg("--cni-conf-dir")
                    .arg(&self.cni_conf_dir)
                    .args(["--cni-bin-dir", CNI_BIN_DIR])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("starting cri-shim to clean up")?;
                let mut process = Process::new("the cleanup cri-shim", child);
                let outcome = async {
                    wait_until(
                        "the cleanup cri-shim answers",
                        Duration::from_secs(20),
                        POLL,
                        async || {
                            process.check_alive()?;
                            let mut cri = cri_client(&endpoint).await?;
                            cri.version(VersionRequest::default()).await?;
                            Ok(Some(()))
                        },
                    )
                    .await?;
                    remove_everything(&endpoint).await
                }
                .await;
                if let Some(mut child) = process.take() {
                    terminate(&mut child, STOP_GRACE);
                }
                outcome
            }
        }
    }

    /// Deletes `/var/log/pods/<ns>_<name>-<node>_<uid>`: the node name is
    /// unique to this test, so these are exactly this kubelet's pods.
    fn remove_pod_logs(&self) {
        let suffix = format!("-{}", self.node_name);
        let Ok(entries) = fs::read_dir(POD_LOG_ROOT) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let parts: Vec<&str> = name.split('_').collect();
            if let [_, pod, _] = parts[..]
                && pod.ends_with(&suffix)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if self.process.is_taken() {
            return;
        }
        for problem in block_on_fresh(|| self.teardown()) {
            eprintln!("e2e cleanup ({}): {problem}", self.node_name);
        }
    }
}

/// The temp dir of a node. Dropped last: detaches mounts left under it and
/// kills processes that still name it (shims, monitors), then removes it.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    dir: Option<tempfile::TempDir>,
}

impl ScratchDir {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kubelet-rs-e2e-")
            .tempdir()?;
        Ok(Self { dir: Some(dir) })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|dir| dir.path())
            .expect("scratch dir is present until drop")
    }

    /// Kills processes whose command line names this dir, and detaches the
    /// mounts under it. Returns what it found.
    pub(crate) fn sweep(&self) -> Vec<String> {
        let path = self.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        let own_pid = std::process::id();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if pid == own_pid {
                    continue;
                }
                let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&format!("{path}/")) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    found.push(format!("killed leftover process {pid}: {}", cmdline.trim()));
                }
            }
        }
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|mount_point| mount_point.starts_with(&format!("{path}/")))
            .map(str::to_owned)
            .collect();
        // Innermost first.
        mounts.sort_by_key(|mount_point| std::cmp::Reverse(mount_point.len()));
        for mount_point in mounts {
            let _ = nix::mount::umount2(mount_point.as_str(), nix::mount::MntFlags::MNT_DETACH);
            found.push(format!("detached leftover mount {mount_point}"));
        }
        found
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        for problem in self.sweep() {
            eprintln!("e2e cleanup: {problem}");
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                eprintln!("e2e cleanup: removing {}: {e}", path.display());
            }
        }
    }
}

/// The CRI runtime of a test node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The kubelet's embedded cri-shim.
    Embedded,
    /// A private containerd started for the test.
    Containerd,
    /// A standalone cri-shim process (the kubelet's `--container-runtime-endpoint`).
    CriShimProcess,
}

/// One test node: a kubelet, maybe a containerd, a network and a temp dir.
/// Fields drop in order: kubelet (removes pods), containerd, network, dir.
#[derive(Debug)]
pub struct Node {
    /// The kubelet.
    pub kubelet: Kubelet,
    /// The recording proxy between the kubelet and its runtime, for
    /// [`Node::start_tapped`].
    pub tap: Option<crate::cri_tap::CriTap>,
    /// The standalone cri-shim, for [`RuntimeKind::CriShimProcess`].
    pub cri_shim: Option<CriShim>,
    /// The private containerd, for [`RuntimeKind::Containerd`].
    pub containerd: Option<Containerd>,
    /// The node's pod network.
    pub network: CniNetwork,
    scratch: ScratchDir,
}

impl Node {
    /// Brings up a node with a unique name and network.
    pub async fn start(runtime: RuntimeKind) -> anyhow::Result<Self> {
        Self::start_inner(runtime, false).await
    }

    /// [`Node::start`] with a [`crate::cri_tap::CriTap`] between the kubelet
    /// and its runtime (not for the embedded runtime, which the kubelet
    /// reaches in-process). [`Kubelet::endpoint`] stays the runtime's own.
    pub async fn start_tapped(runtime: RuntimeKind) -> anyhow::Result<Self> {
        ensure!(
            runtime != RuntimeKind::Embedded,
            "the embedded runtime cannot be tapped"
        );
        Self::start_inner(runtime, true).await
    }

    async fn start_inner(runtime: RuntimeKind, tapped: bool) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        let node_name = format!("e2e-{}-{index}", std::process::id());
        let images = TestImages::get()?;
        let scratch = ScratchDir::new()?;
        let network = CniNetwork::create_unique(scratch.path())?;
        let (mut containerd, mut cri_shim) = (None, None);
        let runtime = match runtime {
            RuntimeKind::Embedded => Runtime::Embedded,
            RuntimeKind::Containerd => Runtime::Remote(
                containerd
                    .insert(Containerd::start(scratch.path(), &network, images).await?)
                    .endpoint
                    .clone(),
            ),
            RuntimeKind::CriShimProcess => {
                let dir = scratch.path().join("cri-shim");
                fs::create_dir_all(&dir)?;
                let archives = [images.busybox(), images.busybox_httpd()];
                let shim = CriShim::start_with_images(&dir, &network, &archives)?;
                Runtime::Remote(cri_shim.insert(shim).endpoint.clone())
            }
        };
        let (tap, kubelet_runtime) = match &runtime {
            Runtime::Remote(endpoint) if tapped => {
                let tap =
                    crate::cri_tap::CriTap::start(&scratch.path().join("tap.sock"), endpoint)?;
                let through = Runtime::Remote(tap.endpoint.clone());
                (Some(tap), through)
            }
            _ => (None, runtime.clone()),
        };
        let mut kubelet = Kubelet::start(
            scratch.path(),
            &node_name,
            kubelet_runtime,
            &network,
            images,
        )
        .await?;
        if let Runtime::Remote(endpoint) = runtime {
            kubelet.endpoint = endpoint;
        }
        Ok(Node {
            kubelet,
            tap,
            cri_shim,
            containerd,
            network,
            scratch,
        })
    }

    /// The node name (`--hostname-override`).
    pub fn name(&self) -> &str {
        &self.kubelet.node_name
    }

    /// `Err(ProcessExited)` if the kubelet or the node's containerd died.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        self.kubelet.check_alive()?;
        if let Some(containerd) = &self.containerd {
            containerd.check_alive()?;
        }
        Ok(())
    }

    /// [`wait_until`] with [`DEADLINE`] and [`POLL`] that gives up at once
    /// when the kubelet (or containerd) died.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        wait_until(what, DEADLINE, POLL, async || {
            self.check_alive()?;
            check().await
        })
        .await
    }

    /// Waits until [`running_pod`] finds static pod `name` of this node.
    pub async fn wait_for_running_pod(
        &self,
        cri: &mut CriClient,
        name: &str,
        containers: &[&str],
    ) -> anyhow::Result<RunningPod> {
        let pod_name = self.kubelet.pod_name(name);
        let what = format!("pod {pod_name} runs containers {containers:?}");
        self.wait_until(&what, async || {
            running_pod(cri, &pod_name, containers).await
        })
        .await
    }

    /// A client for the node's CRI runtime.
    pub async fn cri(&self) -> anyhow::Result<CriClient> {
        cri_client(&self.kubelet.endpoint).await
    }

    /// The last lines of the kubelet's (and containerd's) log, for a failure report.
    pub fn diagnostics(&self) -> String {
        let mut text = format!(
            "--- kubelet log ({}), last lines ---\n{}\n",
            self.kubelet.log_path.display(),
            tail(&self.kubelet.log_path, 60)
        );
        if let Some(containerd) = &self.containerd {
            text.push_str(&format!(
                "--- containerd log ({}), last lines ---\n{}\n",
                containerd.log_path.display(),
                tail(&containerd.log_path, 30)
            ));
        }
        text
    }

    /// Tears the node down and fails if the kubelet did not remove its pods
    /// itself, or anything (veth, process, mount) was left behind; the error
    /// then carries the logs.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let (outcome, logs) = self.shutdown_with_logs().await;
        outcome.map_err(|e| anyhow!("{e:#}\n{logs}"))
    }

    /// [`Self::shutdown`], also returning [`Self::diagnostics`] as they are
    /// after the teardown (so they show how the kubelet stopped).
    pub async fn shutdown_with_logs(mut self) -> (anyhow::Result<()>, String) {
        let mut problems = self.kubelet.teardown().await;
        self.tap = None;
        if let Some(shim) = &mut self.cri_shim {
            if let Err(e) = shim.remove_everything().await {
                problems.push(format!("removing what is left in cri-shim: {e:#}"));
            }
            shim.kill9();
        }
        if let Some(containerd) = &mut self.containerd {
            problems.extend(containerd.stop());
        }
        match self.network.veths() {
            Ok(veths) if veths.is_empty() => {}
            Ok(veths) => problems.push(format!(
                "interfaces left on bridge {}: {}",
                self.network.bridge,
                veths.join(", ")
            )),
            Err(e) => problems.push(format!("listing the bridge's interfaces: {e:#}")),
        }
        if let Err(e) = self.network.delete_bridge() {
            problems.push(format!("deleting bridge {}: {e:#}", self.network.bridge));
        }
        problems.extend(self.scratch.sweep());
        let logs = self.diagnostics();
        let outcome = if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "unclean teardown of node {}:\n  {}",
                self.name(),
                problems.join("\n  ")
            ))
        };
        (outcome, logs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_log_lines() {
        let line = parse_cri_log_line("2024-05-01T10:00:00.123456789Z stdout F tick 1").unwrap();
        assert_eq!(line.stream, LogStream::Stdout);
        assert!(!line.partial);
        assert_eq!(line.content, "tick 1");

        let line = parse_cri_log_line("2024-05-01T10:00:00+02:00 stderr P ").unwrap();
        assert_eq!(line.stream, LogStream::Stderr);
        assert!(line.partial);
        assert_eq!(line.content, "");

        let line = parse_cri_log_line("2024-05-01T10:00:00.5Z stdout F a  b ").unwrap();
        assert_eq!(line.content, "a  b ");
    }

    #[test]
    fn rejects_malformed_cri_log_lines() {
        for bad in [
            "",
            "tick 1",
            "2024-05-01 10:00:00Z stdout F x",
            "2024-05-01T10:00:00Z stdin F x",
            "2024-05-01T10:00:00Z stdout X x",
            "2024-05-01T10:00:00.1234567890Z stdout F x",
            "2024-05-01T10:00:00. stdout F x",
            "2024-05-01T10:00:00 stdout F x",
            "2024-05-01T10:00:00+0200 stdout F x",
        ] {
            assert!(parse_cri_log_line(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn reads_a_log_file_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        fs::write(
            &path,
            "2024-05-01T10:00:00Z stdout F one\n2024-05-01T10:00:01Z stderr F two\n",
        )
        .unwrap();
        assert_eq!(read_cri_log(&path).unwrap().len(), 2);
        fs::write(&path, "2024-05-01T10:00:00Z stdout F one\nplain text\n").unwrap();
        let error = format!("{:#}", read_cri_log(&path).unwrap_err());
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn parses_http_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\n";
        let response = parse_http_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "<p>hello</p>\n");
        assert!(parse_http_response(b"garbage").is_err());
        assert!(parse_http_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn http_get_talks_http_1_0() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before the end of its request");
                request.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.0 404 Not Found\r\n\r\nnope")
                .unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let ip = IpAddr::from([127, 0, 0, 1]);
        let response = http_get(ip, port, "/x", Duration::from_secs(5)).unwrap();
        assert_eq!(
            response,
            HttpResponse {
                status: 404,
                body: "nope".to_owned()
            }
        );
        assert!(server.join().unwrap().starts_with("GET /x HTTP/1.0\r\n"));
    }

    #[test]
    fn containerd_config_is_rendered_under_its_root() {
        let config = render_containerd_config(
            Path::new("/tmp/t/containerd"),
            Path::new("/tmp/t/cni/net.d"),
        )
        .unwrap();
        assert!(!config.contains('@'), "placeholder left in:\n{config}");
        assert!(config.contains(r#"address = "/tmp/t/containerd/containerd.sock""#));
        assert!(config.contains(r#"conf_dir = "/tmp/t/cni/net.d""#));
        assert!(config.contains(r#"sandbox_image = "localhost/pause:latest""#));
        assert!(config.contains("restrict_oom_score_adj = true"));
        assert!(render_containerd_config(Path::new("/tmp/\"x"), Path::new("/c")).is_err());
    }

    #[test]
    fn test_network_conflist_is_isolated() {
        let conf = conflist("n", "kre2e7", "10.91.7.0/24", Path::new("/tmp/t/ipam"));
        assert_eq!(conf["cniVersion"], "1.0.0");
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "kre2e7");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/t/ipam");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.91.7.0/24");
    }

    #[test]
    fn restart_count_prefers_the_annotation() {
        let mut container = Container {
            metadata: Some(k8s_cri::v1::ContainerMetadata {
                name: "c".into(),
                attempt: 2,
            }),
            ..Default::default()
        };
        assert_eq!(restart_count(&container), 2);
        container
            .annotations
            .insert(ANNOTATION_RESTART_COUNT.into(), "3".into());
        assert_eq!(restart_count(&container), 3);
        assert_eq!(container_name(&container), "c");
    }

    #[test]
    fn pod_log_path_follows_the_kubelet_layout() {
        assert_eq!(
            pod_log_path("default", "web-n1", "abc", "web", 0),
            Path::new("/var/log/pods/default_web-n1_abc/web/0.log")
        );
    }
}

/// A standalone cri-shim process with its own root, socket and network,
/// with the busybox test image imported.
#[derive(Debug)]
pub struct CriShim {
    child: std::process::Child,
    /// `--root` (images, records, runc state).
    pub root: PathBuf,
    /// `unix://<dir>/cri.sock`.
    pub endpoint: String,
    conf_dir: PathBuf,
    log: PathBuf,
}

impl CriShim {
    /// Imports busybox into `<dir>/root` and starts the server.
    pub fn start(dir: &Path, net: &CniNetwork) -> anyhow::Result<Self> {
        Self::start_with_images(dir, net, &[TestImages::get()?.busybox()])
    }

    /// Imports the image archives `images` into `<dir>/root` and starts the server.
    pub fn start_with_images(
        dir: &Path,
        net: &CniNetwork,
        images: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let socket = dir.join("cri.sock");
        let endpoint = format!("unix://{}", socket.display());
        let mut shim = CriShim {
            child: Command::new("true").spawn()?,
            root: dir.join("root"),
            endpoint,
            conf_dir: net.conf_dir.clone(),
            log: dir.join("cri-shim.log"),
        };
        for image in images {
            shim.import(image)?;
        }
        shim.restart()?;
        Ok(shim)
    }

    /// Imports an image archive into the root (`cri-shim import`), while
    /// the server is stopped.
    fn import(&self, archive: &Path) -> anyhow::Result<()> {
        let status = Command::new(binary("cri-shim")?)
            .arg("--root")
            .arg(&self.root)
            .arg("import")
            .arg(archive)
            .stdout(Stdio::null())
            .status()?;
        ensure!(
            status.success(),
            "cri-shim import of {} failed",
            archive.display()
        );
        Ok(())
    }

    /// (Re)starts the server process and waits for its socket.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.wait();
        let socket = socket_of(&self.endpoint);
        // A killed server leaves its socket file; wait for the new one.
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Command::new(binary("cri-shim")?)
            .arg("--root")
            .arg(&self.root)
            .arg("--listen")
            .arg(&self.endpoint)
            .arg("--cni-conf-dir")
            .arg(&self.conf_dir)
            .arg("--cni-bin-dir")
            .arg("/usr/lib/cni")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let start = Instant::now();
        while !socket.exists() {
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "cri-shim socket did not appear"
            );
            if let Some(status) = self.child.try_wait()? {
                bail!("cri-shim exited with {status}: {}", tail(&self.log, 20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `Ok(Some(_))` once the server process has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL (containers keep running).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A CRI client for it.
    pub async fn client(&self) -> anyhow::Result<CriClient> {
        cri_client(&self.endpoint).await
    }

    /// Removes every sandbox and container through the CRI, so a failed
    /// trial leaves no infra process, netns, veth or mount behind.
    pub async fn remove_everything(&self) -> anyhow::Result<()> {
        remove_everything_at(&self.endpoint).await
    }
}

/// Removes every container, then every sandbox, of the CRI runtime at
/// `endpoint`.
pub async fn remove_everything_at(endpoint: &str) -> anyhow::Result<()> {
    let mut cri = cri_client(endpoint).await?;
    for c in list_containers(&mut cri, None).await? {
        cri.remove_container(k8s_cri::v1::RemoveContainerRequest { container_id: c.id })
            .await?;
    }
    for s in list_sandboxes(&mut cri, None).await? {
        remove_sandbox(&mut cri, &s.id).await?;
    }
    Ok(())
}

impl Drop for CriShim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn socket_of(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.trim_start_matches("unix://"))
}
