//! cri-shim over its CRI socket: a sandbox with a real network namespace and
//! CNI (reference plugins), containers run by runc, CRI-format logs, stop with
//! SIGKILL escalation, AlreadyExists/NotFound, survival of a cri-shim restart,
//! and nothing left behind after RemovePodSandbox. The helper processes run
//! from `cri-shim-helper` (or, without one, from cri-shim re-executed), and a
//! pod's namespaces are pinned by bind mounts, with an infra process only for
//! a pod pid namespace.
//!
//! Needs root; when not root every trial is reported as ignored, by name.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use e2e::harness::{self, CniNetwork, CriClient, CriShim, read_cri_log};
use e2e::helper_procs::{INFRA, LoneCriShim, MONITOR, ensure_runs_from_helper, helper_processes};
use k8s_cri::v1 as cri;
use libtest_mimic::{Arguments, Trial};

/// Runs `body` against a fresh cri-shim on network `index`, then removes
/// whatever the body left, also when it failed.
async fn with_shim(
    index: u32,
    body: impl AsyncFnOnce(&mut CriShim, &CniNetwork, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("cri-shim-e2e-").tempdir()?;
    let net = CniNetwork::create(dir.path(), index)?;
    let mut shim = CriShim::start(dir.path(), &net)?;
    let result = body(&mut shim, &net, dir.path()).await;
    if matches!(shim.try_wait(), Ok(Some(_))) {
        // The server was killed mid-trial and not restarted.
        let _ = shim.restart();
    }
    let cleanup = shim
        .remove_everything()
        .await
        .context("cleaning up after the trial");
    result.and(cleanup)
}

fn sandbox_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_owned(), name.to_owned())]),
        // What the kubelet sends for a pod without shareProcessNamespace.
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(harness::pod_namespaces(cri::NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("io.kubernetes.container.name".to_owned(), name.to_owned())]),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(harness::pod_namespaces(cri::NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn code<T>(r: &Result<T, tonic::Status>) -> tonic::Code {
    r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok)
}

async fn status(cri: &mut CriClient, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    harness::container_status(cri, id).await
}

async fn wait_state(
    cri: &mut CriClient,
    id: &str,
    state: cri::ContainerState,
) -> anyhow::Result<cri::ContainerStatus> {
    harness::wait_until(
        &format!("container {id} is {state:?}"),
        harness::DEADLINE,
        Duration::from_millis(50),
        async || {
            let s = status(cri, id).await?;
            Ok((s.state == state as i32).then_some(s))
        },
    )
    .await
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

async fn sandbox_lifecycle() -> anyhow::Result<()> {
    with_shim(201, sandbox_lifecycle_body).await
}

async fn sandbox_lifecycle_body(
    shim: &mut CriShim,
    net: &CniNetwork,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut cri = shim.client().await?;
    let log_dir = dir.join("logs");

    let version = cri
        .version(cri::VersionRequest::default())
        .await?
        .into_inner();
    ensure!(version.runtime_name == "cri-shim" && version.runtime_api_version == "v1");
    let st = cri
        .status(cri::StatusRequest::default())
        .await?
        .into_inner();
    let conditions = st.status.context("no status")?.conditions;
    ensure!(
        conditions.iter().all(|c| c.status),
        "runtime not ready: {conditions:?}"
    );

    let config = sandbox_config("lifecycle", &log_dir);
    let sandbox_id = harness::run_sandbox(&mut cri, &config).await?;
    let dup = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await;
    ensure!(
        matches!(&dup, Err(s) if s.code() == tonic::Code::AlreadyExists),
        "second RunPodSandbox of the same pod: {dup:?}"
    );
    // Two concurrent RunPodSandbox calls for one new pod: exactly one wins.
    let racing = sandbox_config("racing", &log_dir);
    let run = |mut cri: CriClient, config: cri::PodSandboxConfig| async move {
        cri.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
    };
    let (a, b) = tokio::join!(
        run(shim.client().await?, racing.clone()),
        run(shim.client().await?, racing.clone())
    );
    let codes = [code(&a), code(&b)];
    ensure!(
        codes.contains(&tonic::Code::Ok) && codes.contains(&tonic::Code::AlreadyExists),
        "concurrent RunPodSandbox: {codes:?}"
    );
    let winner = a.or(b)?.into_inner().pod_sandbox_id;
    let racing_sandboxes = cri
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".to_owned(), "racing".to_owned())]),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    ensure!(
        racing_sandboxes.len() == 1 && racing_sandboxes[0].id == winner,
        "sandboxes of one pod after a race: {racing_sandboxes:?}"
    );
    harness::remove_sandbox(&mut cri, &winner).await?;
    let sb = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no sandbox status")?;
    let ip = sb.network.context("no network status")?.ip;
    ensure!(
        ip.starts_with("10.91.201."),
        "pod IP {ip:?} not in {}",
        net.subnet
    );
    ensure!(
        net.veths()?.len() == 1,
        "expected one veth on {}",
        net.bridge
    );

    // A container that writes to both streams and ignores SIGTERM (pid 1).
    let id = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config(
                "talker",
                "echo hello; echo oops >&2; hostname; exec sleep 300",
            )),
            sandbox_config: Some(config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    ensure!(status(&mut cri, &id).await?.state == cri::ContainerState::ContainerCreated as i32);
    cri.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    wait_state(&mut cri, &id, cri::ContainerState::ContainerRunning).await?;
    let log_path = log_dir.join("talker/0.log");
    let lines = harness::wait_until(
        "the log has three lines",
        harness::DEADLINE,
        Duration::from_millis(50),
        async || {
            let lines = read_cri_log(&log_path)?;
            Ok((lines.len() >= 3).then_some(lines))
        },
    )
    .await?;
    let text: Vec<(String, String)> = lines
        .iter()
        .map(|l| (format!("{:?}", l.stream), l.content.clone()))
        .collect();
    ensure!(
        text.contains(&("Stdout".into(), "hello".into())),
        "log: {text:?}"
    );
    ensure!(
        text.contains(&("Stderr".into(), "oops".into())),
        "log: {text:?}"
    );
    ensure!(
        text.contains(&("Stdout".into(), "lifecycle".into())),
        "hostname not set: {text:?}"
    );
    // The container's monitor is the small helper executable.
    let monitor = ensure_runs_from_helper(MONITOR, &id, 1)?;

    // Survives a kill -9 of the runtime and is adopted by the next one; a
    // container that exits while the runtime is down keeps its exit code.
    let brief = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config("brief", "sleep 1; echo bye; exit 5")),
            sandbox_config: Some(config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: brief.clone(),
    })
    .await?;
    let pid_before = status(&mut cri, &id).await?.started_at;
    shim.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    shim.restart()?;
    let mut cri = shim.client().await?;
    let after = status(&mut cri, &id).await?;
    ensure!(
        after.state == cri::ContainerState::ContainerRunning as i32,
        "not running after restart"
    );
    ensure!(after.started_at == pid_before, "container was restarted");
    ensure!(
        ensure_runs_from_helper(MONITOR, &id, 1)? == monitor,
        "the monitor did not survive the restart"
    );
    // The pod's namespaces are pinned by bind mounts, not held by a process,
    // and the restarted runtime still reports the sandbox Ready.
    ensure!(
        helper_processes(INFRA, &sandbox_id).is_empty(),
        "an infra process for a pod without a pod pid namespace"
    );
    let sandbox_state = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no sandbox status")?
        .state;
    ensure!(
        sandbox_state == cri::PodSandboxState::SandboxReady as i32,
        "sandbox not ready after the restart: {sandbox_state}"
    );
    let brief_status = status(&mut cri, &brief).await?;
    ensure!(
        brief_status.state == cri::ContainerState::ContainerExited as i32
            && brief_status.exit_code == 5
            && brief_status.finished_at > brief_status.started_at,
        "exit while the runtime was down: {brief_status:?}"
    );
    let brief_log = read_cri_log(&log_dir.join("brief/0.log"))?;
    ensure!(
        brief_log.iter().any(|l| l.content == "bye"),
        "output written while the runtime was down is missing: {brief_log:?}"
    );

    // SIGTERM is ignored by pid 1 without a handler: StopContainer escalates.
    let t = Instant::now();
    cri.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await?;
    ensure!(
        t.elapsed() >= Duration::from_secs(1),
        "stop did not wait for the grace period"
    );
    let stopped = status(&mut cri, &id).await?;
    ensure!(stopped.state == cri::ContainerState::ContainerExited as i32);
    ensure!(
        stopped.exit_code == 137,
        "exit code {} (want 137 = SIGKILL)",
        stopped.exit_code
    );
    cri.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await?;

    // Exit codes and reasons.
    let failing = harness::create_and_start(
        &mut cri,
        &sandbox_id,
        &config,
        container_config("failing", "exit 3"),
    )
    .await?;
    let exited = wait_state(&mut cri, &failing, cri::ContainerState::ContainerExited).await?;
    ensure!(
        exited.exit_code == 3 && exited.reason == "Error",
        "{exited:?}"
    );
    ensure!(exited.finished_at >= exited.started_at && exited.started_at > 0);

    let missing = cri
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await;
    ensure!(matches!(missing, Err(s) if s.code() == tonic::Code::NotFound));

    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await?;
    harness::remove_sandbox(&mut cri, &sandbox_id).await?;
    harness::remove_sandbox(&mut cri, &sandbox_id).await?;
    ensure!(
        harness::list_sandboxes(&mut cri, None).await?.is_empty(),
        "sandbox still listed"
    );
    ensure!(
        harness::list_containers(&mut cri, None).await?.is_empty(),
        "containers still listed"
    );
    ensure!(net.veths()?.is_empty(), "veth left on {}", net.bridge);
    let netns_left: Vec<_> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&sandbox_id[..16]))
        .collect();
    ensure!(netns_left.is_empty(), "netns left: {netns_left:?}");
    ensure!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
    Ok(())
}

async fn bad_input_leaves_nothing() -> anyhow::Result<()> {
    with_shim(202, bad_input_body).await
}

async fn bad_input_body(shim: &mut CriShim, _net: &CniNetwork, dir: &Path) -> anyhow::Result<()> {
    let mut cri = shim.client().await?;
    let config = sandbox_config("badinput", &dir.join("logs"));
    let sandbox_id = harness::run_sandbox(&mut cri, &config).await?;
    let mut c = container_config("noimage", "true");
    c.image = Some(cri::ImageSpec {
        image: "docker.io/library/absent:1".into(),
        ..Default::default()
    });
    let r = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(c),
            sandbox_config: None,
        })
        .await;
    ensure!(
        matches!(&r, Err(s) if s.code() == tonic::Code::NotFound && s.message().contains("absent")),
        "{r:?}"
    );
    let mut c = container_config("badmount", "true");
    c.mounts = vec![cri::Mount {
        container_path: "/x".into(),
        host_path: "/does/not/exist".into(),
        ..Default::default()
    }];
    let r = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(c),
            sandbox_config: None,
        })
        .await;
    ensure!(
        matches!(&r, Err(s) if s.code() == tonic::Code::InvalidArgument
            && s.message().contains("mounts[0].host_path")),
        "a mount of a missing host path: {r:?}"
    );
    let mut c = container_config("badseccomp", "true");
    c.linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "/no/such/profile.json".into(),
    });
    let r = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(c),
            sandbox_config: None,
        })
        .await;
    ensure!(
        matches!(&r, Err(s) if s.code() == tonic::Code::InvalidArgument
            && s.message().contains("seccomp.localhost_ref")),
        "a missing seccomp profile: {r:?}"
    );
    let mut bad_ns = sandbox_config("badns", &dir.join("logs"));
    bad_ns.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Target as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let r = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad_ns),
            runtime_handler: String::new(),
        })
        .await;
    ensure!(
        matches!(&r, Err(s) if s.code() == tonic::Code::InvalidArgument
            && s.message().contains("namespace_options.network")),
        "a sandbox with a TARGET network namespace: {r:?}"
    );
    ensure!(
        harness::list_sandboxes(&mut cri, None).await?.len() == 1,
        "a rejected sandbox was created"
    );
    ensure!(
        harness::list_containers(&mut cri, None).await?.is_empty(),
        "a failed create left a container"
    );
    let containers_dir = shim.root.join("containers");
    let left = std::fs::read_dir(&containers_dir)?.count();
    ensure!(
        left == 0,
        "{left} container directories left in {}",
        containers_dir.display()
    );
    harness::remove_sandbox(&mut cri, &sandbox_id).await?;
    ensure!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
    Ok(())
}

async fn container_features() -> anyhow::Result<()> {
    with_shim(203, container_features_body).await
}

async fn container_features_body(
    shim: &mut CriShim,
    _net: &CniNetwork,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut cri = shim.client().await?;
    let log_dir = dir.join("logs");

    // Collect events from before the first container exists.
    let mut stream = cri
        .get_container_events(cri::GetEventsRequest::default())
        .await?
        .into_inner();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            let _ = events_tx.send(event);
        }
    });

    let mut config = sandbox_config("features", &log_dir);
    config.linux.get_or_insert_default().sysctls = HashMap::from([(
        "net.ipv4.ip_unprivileged_port_start".to_owned(),
        "80".to_owned(),
    )]);
    let sandbox_id = harness::run_sandbox(&mut cri, &config).await?;
    let create = async |cri: &mut CriClient, c: cri::ContainerConfig| -> anyhow::Result<String> {
        let id = harness::create_and_start(cri, &sandbox_id, &config, c).await?;
        Ok(id)
    };
    let app = create(
        &mut cri,
        container_config("app", "while true; do echo tick; sleep 0.1; done"),
    )
    .await?;
    wait_state(&mut cri, &app, cri::ContainerState::ContainerRunning).await?;

    // ExecSync: output, exit code, timeout.
    let exec = |cmd: &[&str], timeout: i64| cri::ExecSyncRequest {
        container_id: app.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    };
    let out = cri
        .exec_sync(exec(&["sh", "-c", "echo out; echo err >&2; exit 7"], 0))
        .await?
        .into_inner();
    ensure!(
        out.stdout == b"out\n" && out.stderr == b"err\n" && out.exit_code == 7,
        "{out:?}"
    );
    let t = Instant::now();
    let timed_out = cri.exec_sync(exec(&["sleep", "31"], 1)).await;
    ensure!(
        matches!(&timed_out, Err(s) if s.code() == tonic::Code::DeadlineExceeded),
        "{timed_out:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "timeout not enforced"
    );
    let ps = cri
        .exec_sync(exec(&["ps", "-o", "args"], 5))
        .await?
        .into_inner();
    let ps = String::from_utf8_lossy(&ps.stdout);
    ensure!(
        !ps.contains("sleep 31"),
        "the timed-out command still runs:\n{ps}"
    );

    // The pod's containers share /dev/shm and get the pod's sysctls.
    let mut peer = container_config("peer", "exec sleep 300");
    peer.devices = vec![cri::Device {
        container_path: "/dev/xzero".into(),
        host_path: "/dev/zero".into(),
        permissions: "r".into(),
    }];
    let peer = create(&mut cri, peer).await?;
    wait_state(&mut cri, &peer, cri::ContainerState::ContainerRunning).await?;
    cri.exec_sync(exec(&["sh", "-c", "echo shared > /dev/shm/x"], 5))
        .await?;
    let read = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: peer.clone(),
            cmd: vec![
                "cat".into(),
                "/dev/shm/x".into(),
                "/proc/sys/net/ipv4/ip_unprivileged_port_start".into(),
            ],
            timeout: 5,
        })
        .await?
        .into_inner();
    let device = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: peer.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "head -c 5 /dev/xzero | wc -c".into(),
            ],
            timeout: 5,
        })
        .await?
        .into_inner();
    ensure!(
        String::from_utf8_lossy(&device.stdout).trim() == "5",
        "reading the passed-through device: {device:?}"
    );
    ensure!(
        read.stdout == b"shared\n80\n",
        "peer read {:?}",
        String::from_utf8_lossy(&read.stdout)
    );

    // UpdateContainerResources reaches the container's cgroup.
    let limit: i64 = 48 << 20;
    cri.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: app.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: limit,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let memory_file = if v2 {
        format!("/sys/fs/cgroup/cri-shim/{app}/memory.max")
    } else {
        format!("/sys/fs/cgroup/memory/cri-shim/{app}/memory.limit_in_bytes")
    };
    let applied = std::fs::read_to_string(&memory_file).with_context(|| memory_file.clone())?;
    ensure!(
        applied.trim() == limit.to_string(),
        "{memory_file} = {applied}"
    );
    let reported = status(&mut cri, &app)
        .await?
        .resources
        .and_then(|r| r.linux);
    ensure!(
        reported
            .as_ref()
            .is_some_and(|r| r.memory_limit_in_bytes == limit && r.cpu_shares == 512),
        "ContainerStatus.resources = {reported:?}"
    );

    // Stats: cgroup CPU and memory, the writable layer, the pod's network.
    cri.exec_sync(exec(
        &[
            "sh",
            "-c",
            "head -c 300000 /dev/urandom > /big; ping -c 1 -W 2 10.91.203.1",
        ],
        10,
    ))
    .await?;
    let first = cri
        .container_stats(cri::ContainerStatsRequest {
            container_id: app.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    let cpu = first
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    let working_set = first
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    let layer = first
        .writable_layer
        .as_ref()
        .and_then(|w| w.used_bytes.as_ref())
        .map(|v| v.value);
    ensure!(cpu.is_some_and(|c| c > 0), "cpu {cpu:?}");
    ensure!(
        working_set.is_some_and(|w| w > 0),
        "working set {working_set:?}"
    );
    ensure!(
        layer.is_some_and(|l| l >= 300_000),
        "writable layer {layer:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = cri
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: sandbox_id.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    let again = listed
        .iter()
        .find(|c| c.attributes.as_ref().is_some_and(|a| a.id == app))
        .context("app missing from ListContainerStats")?;
    let rate = again
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores.as_ref())
        .map(|v| v.value);
    ensure!(rate.is_some(), "no CPU rate on the second sample");
    let pod = cri
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: sandbox_id.clone(),
        })
        .await?
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .context("no pod stats")?;
    let eth0 = pod
        .network
        .as_ref()
        .and_then(|n| n.default_interface.as_ref())
        .context("no eth0 stats")?;
    ensure!(
        eth0.tx_bytes.as_ref().is_some_and(|v| v.value > 0)
            && eth0.rx_bytes.as_ref().is_some_and(|v| v.value > 0),
        "eth0 {eth0:?}"
    );
    ensure!(
        pod.containers.len() >= 2,
        "pod stats list {} containers",
        pod.containers.len()
    );
    ensure!(
        pod.process
            .and_then(|p| p.process_count)
            .is_some_and(|v| v.value >= 2)
    );

    // ReopenContainerLog after a rotation: both files get CRI lines.
    let log = log_dir.join("app/0.log");
    let rotated = log_dir.join("app/0.log.1");
    std::fs::rename(&log, &rotated)?;
    cri.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: app.clone(),
    })
    .await?;
    harness::wait_until(
        "the reopened log has lines",
        harness::DEADLINE,
        Duration::from_millis(50),
        async || {
            let lines = read_cri_log(&log)?;
            Ok(lines.iter().any(|l| l.content == "tick").then_some(()))
        },
    )
    .await?;
    ensure!(read_cri_log(&rotated)?.iter().any(|l| l.content == "tick"));

    // OOMKilled: a 16 MiB limit and a process that keeps allocating.
    let mut hog = container_config("hog", "tail /dev/zero");
    hog.linux.get_or_insert_default().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    });
    let hog = create(&mut cri, hog).await?;
    let oom = wait_state(&mut cri, &hog, cri::ContainerState::ContainerExited).await?;
    ensure!(oom.reason == "OOMKilled" && oom.exit_code == 137, "{oom:?}");
    let update_exited = cri
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: hog.clone(),
            ..Default::default()
        })
        .await;
    ensure!(
        matches!(&update_exited, Err(s) if s.code() == tonic::Code::FailedPrecondition),
        "{update_exited:?}"
    );
    let not_running = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: hog.clone(),
            cmd: vec!["true".into()],
            timeout: 0,
        })
        .await;
    ensure!(
        matches!(&not_running, Err(s) if s.code() == tonic::Code::FailedPrecondition),
        "{not_running:?}"
    );

    // Events of `app`, in lifecycle order, carrying the pod's statuses.
    cri.stop_container(cri::StopContainerRequest {
        container_id: app.clone(),
        timeout: 0,
    })
    .await?;
    cri.remove_container(cri::RemoveContainerRequest {
        container_id: app.clone(),
    })
    .await?;
    let want = [
        cri::ContainerEventType::ContainerCreatedEvent,
        cri::ContainerEventType::ContainerStartedEvent,
        cri::ContainerEventType::ContainerStoppedEvent,
        cri::ContainerEventType::ContainerDeletedEvent,
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + harness::DEADLINE;
    while seen.len() < want.len() && Instant::now() < deadline {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), events_rx.recv()).await
        else {
            break;
        };
        if event.container_id == app {
            ensure!(
                event
                    .pod_sandbox_status
                    .as_ref()
                    .is_some_and(|s| s.id == sandbox_id),
                "event without its sandbox: {event:?}"
            );
            seen.push(event.container_event_type);
        }
    }
    let want: Vec<i32> = want.iter().map(|e| *e as i32).collect();
    ensure!(seen == want, "events {seen:?}, want {want:?}");
    harness::remove_sandbox(&mut cri, &sandbox_id).await?;
    Ok(())
}

async fn serves_v1alpha2() -> anyhow::Result<()> {
    with_shim(204, serves_v1alpha2_body).await
}

/// A v1alpha2 client (what kubelets up to 1.22 speak) runs a pod; the v1
/// API sees the same objects.
async fn serves_v1alpha2_body(
    shim: &mut CriShim,
    net: &CniNetwork,
    dir: &Path,
) -> anyhow::Result<()> {
    use k8s_cri::v1alpha2 as alpha;
    let channel = cri_shim::client::connect(&shim.endpoint).await?;
    let mut old = alpha::runtime_service_client::RuntimeServiceClient::new(channel.clone());
    let mut old_images = alpha::image_service_client::ImageServiceClient::new(channel);
    let version = old
        .version(alpha::VersionRequest::default())
        .await?
        .into_inner();
    ensure!(version.runtime_api_version == "v1alpha2", "{version:?}");
    let images = old_images
        .list_images(alpha::ListImagesRequest::default())
        .await?
        .into_inner();
    ensure!(
        images.images.iter().any(|i| i
            .repo_tags
            .contains(&"docker.io/library/busybox:latest".to_owned())),
        "busybox not listed over v1alpha2: {images:?}"
    );

    let config = alpha::PodSandboxConfig {
        metadata: Some(alpha::PodSandboxMetadata {
            name: "old".into(),
            uid: "uid-old".into(),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        log_directory: dir.join("logs").display().to_string(),
        labels: HashMap::from([("api".to_owned(), "v1alpha2".to_owned())]),
        ..Default::default()
    };
    let sandbox_id = old
        .run_pod_sandbox(alpha::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let container = alpha::ContainerConfig {
        metadata: Some(alpha::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(alpha::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "300".into()],
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    let id = old
        .create_container(alpha::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    old.start_container(alpha::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    let status = old
        .container_status(alpha::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no status")?;
    ensure!(
        status.state == alpha::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    let sandbox = old
        .pod_sandbox_status(alpha::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no sandbox status")?;
    let ip = sandbox.network.context("no network")?.ip;
    ensure!(
        ip.starts_with("10.91.204."),
        "pod IP {ip} not in {}",
        net.subnet
    );

    let mut cri = shim.client().await?;
    let seen = harness::list_sandboxes(&mut cri, None).await?;
    ensure!(
        seen.len() == 1 && seen[0].labels.get("api").map(String::as_str) == Some("v1alpha2"),
        "v1 sees {seen:?}"
    );
    old.remove_pod_sandbox(alpha::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id,
    })
    .await?;
    ensure!(harness::list_containers(&mut cri, None).await?.is_empty());
    Ok(())
}

async fn cycles_leave_nothing() -> anyhow::Result<()> {
    with_shim(205, cycles_leave_nothing_body).await
}

/// 200 pods created and deleted: no netns, mount, cgroup, helper process,
/// IP reservation, veth or state file of any of them is left.
async fn cycles_leave_nothing_body(
    shim: &mut CriShim,
    net: &CniNetwork,
    dir: &Path,
) -> anyhow::Result<()> {
    const CYCLES: usize = 200;
    let mut cri = shim.client().await?;
    let mut sandbox_ids = Vec::new();
    let mut container_ids = Vec::new();
    for i in 0..CYCLES {
        let config = sandbox_config(&format!("cycle{i}"), &dir.join("logs"));
        let sandbox_id = harness::run_sandbox(&mut cri, &config).await?;
        let id = harness::create_and_start(
            &mut cri,
            &sandbox_id,
            &config,
            container_config("c", "exec sleep 300"),
        )
        .await?;
        cri.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await?;
        harness::remove_sandbox(&mut cri, &sandbox_id).await?;
        sandbox_ids.push(sandbox_id);
        container_ids.push(id);
    }
    ensure!(
        harness::list_sandboxes(&mut cri, None).await?.is_empty(),
        "sandboxes listed"
    );
    ensure!(
        harness::list_containers(&mut cri, None).await?.is_empty(),
        "containers listed"
    );
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| sandbox_ids.iter().any(|id| n.contains(&id[..16])))
        .collect();
    ensure!(netns.is_empty(), "netns left: {netns:?}");
    ensure!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
    let cgroup_dir = |id: &str| {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            format!("/sys/fs/cgroup/cri-shim/{id}")
        } else {
            format!("/sys/fs/cgroup/memory/cri-shim/{id}")
        }
    };
    let cgroups: Vec<String> = container_ids
        .iter()
        .map(|id| cgroup_dir(id))
        .filter(|d| Path::new(d).exists())
        .collect();
    ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let helpers: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| {
            c.contains("__cri-shim-")
                && (sandbox_ids
                    .iter()
                    .chain(&container_ids)
                    .any(|id| c.contains(id.as_str())))
        })
        .collect();
    ensure!(helpers.is_empty(), "helper processes left: {helpers:?}");
    for sub in ["containers", "sandboxes"] {
        let left = std::fs::read_dir(shim.root.join(sub))?.count();
        ensure!(left == 0, "{left} entries left in {sub}/");
    }
    let cache_dir = shim.root.join("cni-cache/results");
    let cache = std::fs::read_dir(&cache_dir)
        .with_context(|| format!("{} (the CNI cache is expected there)", cache_dir.display()))?
        .count();
    ensure!(cache == 0, "{cache} CNI cache entries left");
    let ipam_dir = dir.join("cni/ipam").join(&net.name);
    let reserved: Vec<String> = std::fs::read_dir(&ipam_dir)
        .with_context(|| format!("{} (host-local's data dir)", ipam_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    ensure!(reserved.is_empty(), "IP reservations left: {reserved:?}");
    ensure!(net.veths()?.is_empty(), "veths left on {}", net.bridge);
    Ok(())
}

async fn pid_namespaces() -> anyhow::Result<()> {
    with_shim(206, pid_namespaces_body).await
}

/// Pid modes: POD shares the pod's namespace (PID 1 is the infra's init, not
/// a container), CONTAINER is private, TARGET joins another container's.
async fn pid_namespaces_body(
    shim: &mut CriShim,
    _net: &CniNetwork,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut cri = shim.client().await?;
    let run = async |cri: &mut CriClient,
                     config: &cri::PodSandboxConfig,
                     name: &str,
                     pid: cri::NamespaceMode,
                     target: &str|
           -> anyhow::Result<String> {
        let sandbox = cri
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items
            .into_iter()
            .find(|s| {
                s.metadata
                    .as_ref()
                    .is_some_and(|m| Some(m) == config.metadata.as_ref())
            })
            .context("sandbox")?
            .id;
        let mut c = container_config(name, &format!("exec sleep {}", 300 + name.len()));
        c.linux.get_or_insert_default().security_context =
            Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    target_id: target.to_owned(),
                    ..harness::pod_namespaces(pid)
                }),
                ..Default::default()
            });
        let id = harness::create_and_start(cri, &sandbox, config, c).await?;
        wait_state(cri, &id, cri::ContainerState::ContainerRunning).await?;
        Ok(id)
    };
    let ps = async |cri: &mut CriClient, id: &str| -> anyhow::Result<String> {
        let out = cri
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: vec!["ps".into(), "-o".into(), "pid,args".into()],
                timeout: 5,
            })
            .await?
            .into_inner();
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    let mut shared = sandbox_config("shared", &dir.join("logs"));
    shared.linux.get_or_insert_default().security_context =
        Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(harness::pod_namespaces(cri::NamespaceMode::Pod)),
            ..Default::default()
        });
    let shared_id = harness::run_sandbox(&mut cri, &shared).await?;
    // The pod pid namespace is held by an infra process (the small helper)
    // and its forked PID 1 of that namespace.
    ensure_runs_from_helper(INFRA, &shared_id, 2)?;
    // Names of different lengths sleep for different times, so ps tells them apart.
    let _a = run(&mut cri, &shared, "a", cri::NamespaceMode::Pod, "").await?;
    let bb = run(&mut cri, &shared, "bb", cri::NamespaceMode::Pod, "").await?;
    let seen = ps(&mut cri, &bb).await?;
    ensure!(
        seen.contains("sleep 301") && seen.contains("sleep 302"),
        "POD: bb sees\n{seen}"
    );
    let pid1 = seen
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_default();
    ensure!(
        !pid1.contains("sleep"),
        "a container is PID 1 of the pod namespace: {pid1}"
    );

    let private = sandbox_config("private", &dir.join("logs"));
    let private_id = harness::run_sandbox(&mut cri, &private).await?;
    ensure!(
        helper_processes(INFRA, &private_id).is_empty(),
        "an infra process for a pod without a pod pid namespace"
    );
    let ccc = run(&mut cri, &private, "ccc", cri::NamespaceMode::Container, "").await?;
    let dddd = run(
        &mut cri,
        &private,
        "dddd",
        cri::NamespaceMode::Container,
        "",
    )
    .await?;
    let eeeee = run(
        &mut cri,
        &private,
        "eeeee",
        cri::NamespaceMode::Target,
        &ccc,
    )
    .await?;
    let seen = ps(&mut cri, &dddd).await?;
    ensure!(
        seen.contains("sleep 304") && !seen.contains("sleep 303"),
        "CONTAINER: dddd sees\n{seen}"
    );
    // Both containers are in the pod's network, IPC and UTS namespaces: the
    // ones bind-mounted by the pin helper, not the host's.
    let sandbox_dir = shim.root.join("sandboxes").join(&private_id);
    let netns = Path::new("/run/netns").join(format!("cri-shim-{}", &private_id[..16]));
    for (kind, pin) in [
        ("net", netns),
        ("ipc", sandbox_dir.join("ipcns")),
        ("uts", sandbox_dir.join("utsns")),
    ] {
        let pinned = format!(
            "{kind}:[{}]",
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&pin)?)
        );
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}"))?;
        ensure!(
            Path::new(&pinned) != host,
            "{} is not a pinned {kind} namespace",
            pin.display()
        );
        for c in [&ccc, &dddd] {
            let out = cri
                .exec_sync(cri::ExecSyncRequest {
                    container_id: c.clone(),
                    cmd: vec!["readlink".into(), format!("/proc/self/ns/{kind}")],
                    timeout: 5,
                })
                .await?
                .into_inner();
            let seen = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            ensure!(
                seen == pinned,
                "{kind} namespace of {c}: {seen}, pinned {pinned}"
            );
        }
    }
    let seen = ps(&mut cri, &eeeee).await?;
    ensure!(
        seen.contains("sleep 303") && seen.contains("sleep 305"),
        "TARGET: eeeee sees\n{seen}"
    );
    let bad = run(
        &mut cri,
        &private,
        "ffffff",
        cri::NamespaceMode::Target,
        "no-such-container",
    )
    .await;
    ensure!(
        bad.as_ref()
            .is_err_and(|e| format!("{e:#}").contains("target_id")),
        "TARGET of a missing container: {bad:?}"
    );
    Ok(())
}

/// Without a cri-shim-helper beside it, cri-shim re-executes itself for its
/// helpers (and says so in its log); pods work the same and leave nothing.
async fn without_helper() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cri-shim-lone-")
        .tempdir()?;
    let net = CniNetwork::create_unique(dir.path())?;
    let shim = LoneCriShim::start(dir.path(), &net)?;
    let result = without_helper_body(&shim, dir.path()).await;
    let cleanup = shim
        .remove_everything()
        .await
        .context("cleaning up after the trial");
    result.and(cleanup)
}

async fn without_helper_body(shim: &LoneCriShim, dir: &Path) -> anyhow::Result<()> {
    let log = std::fs::read_to_string(&shim.log)?;
    ensure!(
        log.contains("no cri-shim-helper next to this executable"),
        "no fallback warning in the log:\n{log}"
    );
    let mut cri = shim.client().await?;
    let config = sandbox_config("lone", &dir.join("logs"));
    let sandbox_id = harness::run_sandbox(&mut cri, &config).await?;
    let id = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config("c", "echo from-lone; exec sleep 300")),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    wait_state(&mut cri, &id, cri::ContainerState::ContainerRunning).await?;
    let monitors = helper_processes(MONITOR, &id);
    ensure!(
        monitors.len() == 1 && monitors[0].1 == shim.exe.canonicalize()?,
        "monitor of {id}: {monitors:?}, want one running {}",
        shim.exe.display()
    );
    let log_path = dir.join("logs/c/0.log");
    harness::wait_until(
        "the container's line is logged",
        harness::DEADLINE,
        Duration::from_millis(50),
        async || {
            Ok(read_cri_log(&log_path)?
                .iter()
                .any(|l| l.content == "from-lone")
                .then_some(()))
        },
    )
    .await?;
    harness::remove_sandbox(&mut cri, &sandbox_id).await?;
    // The monitor exits right after it recorded the exit StopContainer waited for.
    harness::wait_until(
        "the monitor exits after RemovePodSandbox",
        Duration::from_secs(5),
        Duration::from_millis(20),
        async || Ok(helper_processes(MONITOR, &id).is_empty().then_some(())),
    )
    .await?;
    ensure!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
    Ok(())
}

/// A trial body: a boxed future so trials fit in one list.
type TrialFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

fn trial(name: &'static str, f: TrialFn) -> Trial {
    let root = harness::is_root();
    Trial::test(name, move || {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        rt.block_on(f()).map_err(|e| format!("{e:#}").into())
    })
    .with_ignored_flag(!root)
    .with_kind(if root { "" } else { "needs root" })
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        trial("cri_shim_sandbox_and_container_lifecycle", || {
            Box::pin(sandbox_lifecycle())
        }),
        trial("cri_shim_bad_input_leaves_nothing", || {
            Box::pin(bad_input_leaves_nothing())
        }),
        trial("cri_shim_exec_update_stats_log_reopen_events_oom", || {
            Box::pin(container_features())
        }),
        trial("cri_shim_serves_v1alpha2", || Box::pin(serves_v1alpha2())),
        trial(
            "cri_shim_pid_namespace_modes",
            || Box::pin(pid_namespaces()),
        ),
        trial("cri_shim_without_helper_re_executes_itself", || {
            Box::pin(without_helper())
        }),
        trial("cri_shim_200_pod_cycles_leave_nothing", || {
            Box::pin(cycles_leave_nothing())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}
