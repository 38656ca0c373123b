//! End-to-end trials: the real `kubelet` binary runs static pods with real
//! runc, overlayfs, network namespaces and the reference CNI plugins, on its
//! embedded cri-shim or on a private containerd, observed through the CRI, over
//! HTTP and in the log files.
//!
//! Each trial brings up its own node (temp dir, node name, bridge, subnet,
//! runtime), so trials run in parallel, and tears it down even when it fails;
//! a teardown that leaves anything behind fails the trial. Without root every
//! trial is reported as ignored ("needs root"), never as passed.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use e2e::harness::{
    self, BUSYBOX_HTTPD_IMAGE, BUSYBOX_IMAGE, HTTPD_INDEX_TEXT, LogStream, Node, RuntimeKind,
    container_status, list_containers, list_sandboxes, pod_log_path, read_cri_log, restart_count,
    running_pod,
};
use e2e::helper_procs::{MONITOR, ensure_runs_from_helper};
use k8s_cri::v1::ContainerState;
use libtest_mimic::{Arguments, Completion, Trial};

type TrialFn = fn() -> anyhow::Result<()>;
/// A trial run once per runtime: on the embedded cri-shim and on containerd.
type ScenarioFn = fn(RuntimeKind) -> anyhow::Result<()>;

const ON_BOTH_RUNTIMES: &[(&str, ScenarioFn)] = &[
    (
        "pod_status_with_init_containers_and_sidecar",
        pod_status_with_init_containers_and_sidecar,
    ),
    (
        "failed_init_container_fails_pod",
        failed_init_container_fails_pod,
    ),
    (
        "crash_loop_and_completion_in_pod_status",
        crash_loop_and_completion_in_pod_status,
    ),
    (
        "missing_image_reports_pull_errors",
        missing_image_reports_pull_errors,
    ),
    (
        "environment_and_resources_from_the_pod",
        environment_and_resources_from_the_pod,
    ),
    ("hosts_file_and_host_aliases", hosts_file_and_host_aliases),
    (
        "security_context_reaches_the_container",
        security_context_reaches_the_container,
    ),
    (
        "probes_drive_readiness_and_restarts",
        probes_drive_readiness_and_restarts,
    ),
    (
        "volumes_are_mounted_and_torn_down",
        volumes_are_mounted_and_torn_down,
    ),
    (
        "bad_volume_fails_only_its_pod",
        bad_volume_fails_only_its_pod,
    ),
    ("hooks_and_termination_order", hooks_and_termination_order),
    ("termination_messages", termination_messages),
    (
        "image_pull_policies_with_a_registry",
        image_pull_policies_with_a_registry,
    ),
    (
        "kubelet_restart_restarts_nothing",
        kubelet_restart_restarts_nothing,
    ),
];

const TRIALS: &[(&str, TrialFn)] = &[
    (
        "static_pod_web_embedded_runtime",
        static_pod_web_embedded_runtime,
    ),
    ("static_pod_web_containerd", static_pod_web_containerd),
    (
        "static_pod_web_cri_shim_process_through_tap",
        static_pod_web_cri_shim_process_through_tap,
    ),
    ("manifest_edit_replaces_pod", manifest_edit_replaces_pod),
    ("manifest_delete_removes_pod", manifest_delete_removes_pod),
    (
        "restart_policy_always_restarts",
        restart_policy_always_restarts,
    ),
    (
        "restart_policy_never_does_not",
        restart_policy_never_does_not,
    ),
    (
        "malformed_manifest_next_to_good_one",
        malformed_manifest_next_to_good_one,
    ),
];

fn main() {
    let args = Arguments::from_args();
    let root = harness::is_root();
    if !root {
        eprintln!(
            "e2e: not running as root (euid {}): the end-to-end trials need root and are \
             reported as ignored",
            nix::unistd::geteuid()
        );
    }
    let mut trials: Vec<Trial> = TRIALS
        .iter()
        .map(|&(name, run)| privileged(name, Box::new(run), root))
        .collect();
    for &(name, scenario) in ON_BOTH_RUNTIMES {
        for (suffix, kind) in [
            ("embedded_runtime", RuntimeKind::Embedded),
            ("containerd", RuntimeKind::Containerd),
        ] {
            let run = Box::new(move || scenario(kind));
            trials.push(privileged(&format!("{name}_{suffix}"), run, root));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// A trial that needs root: ignored (with the reason "needs root") without
/// it, also when ignored trials are requested explicitly.
fn privileged(
    name: &str,
    run: Box<dyn FnOnce() -> anyhow::Result<()> + Send>,
    root: bool,
) -> Trial {
    let trial = Trial::ignorable_test(name, move || {
        if !harness::is_root() {
            return Ok(Completion::ignored_with("needs root"));
        }
        run()
            .map(|()| Completion::Completed)
            .map_err(|e| report(&e).into())
    });
    if root {
        trial
    } else {
        trial.with_ignored_flag(true).with_kind("needs root")
    }
}

/// An error and its causes, one per line (without a backtrace).
fn report(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let _ = write!(text, "\n  caused by: {cause}");
    }
    text
}

/// Brings up a node, runs `body` against it and tears the node down. A
/// failure report carries the logs; an unclean teardown fails the trial too.
fn on_node(
    runtime: RuntimeKind,
    body: impl AsyncFnOnce(&Node) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    on_node_mut(runtime, async |node: &mut Node| body(node).await)
}

/// [`on_node`] for bodies that restart the kubelet.
fn on_node_mut(
    runtime: RuntimeKind,
    body: impl AsyncFnOnce(&mut Node) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the trial's tokio runtime")?;
    tokio.block_on(async {
        let mut node = Node::start(runtime).await.context("bringing up the node")?;
        let outcome = body(&mut node).await;
        let (teardown, diagnostics) = node.shutdown_with_logs().await;
        if outcome.is_ok() && teardown.is_ok() {
            return Ok(());
        }
        let mut text = String::new();
        if let Err(e) = &outcome {
            let _ = writeln!(text, "{}", report(e));
        }
        if let Err(e) = &teardown {
            let _ = writeln!(text, "{}", report(e));
        }
        text.push_str(&diagnostics);
        Err(anyhow::Error::msg(text))
    })
}

/// Pod termination: a shell or httpd as PID 1 ignores SIGTERM (no handler),
/// so keep the grace period short; teardown then takes seconds, not 30.
const GRACE_SECONDS: u32 = 2;

fn web_manifest(extra_label: Option<(&str, &str)>) -> String {
    let extra = extra_label
        .map(|(k, v)| format!("\n    {k}: \"{v}\""))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web{extra}
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: web
      image: {BUSYBOX_HTTPD_IMAGE}
      imagePullPolicy: IfNotPresent
      ports:
        - containerPort: 80
"#
    )
}

fn busybox_manifest(pod: &str, restart_policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {pod}
spec:
  restartPolicy: {restart_policy}
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", {script:?}]
"#
    )
}

async fn get_index_page(node: &Node, ip: IpAddr) -> anyhow::Result<String> {
    node.wait_until(&format!("http://{ip}/ answers"), async || {
        let response = harness::http_get(ip, 80, "/", Duration::from_secs(3))?;
        ensure!(
            response.status == 200,
            "status {}: {}",
            response.status,
            response.body
        );
        Ok(Some(response.body))
    })
    .await
}

fn static_pod_web_embedded_runtime() -> anyhow::Result<()> {
    on_node(RuntimeKind::Embedded, async |node| {
        web_pod_serves_and_logs(node).await?;
        // The embedded runtime runs the container's monitor from the small
        // cri-shim-helper next to the kubelet, not the kubelet re-executed.
        let mut cri = node.cri().await?;
        let containers = list_containers(&mut cri, Some(&node.kubelet.pod_name("web"))).await?;
        ensure!(containers.len() == 1, "web containers: {containers:?}");
        ensure_runs_from_helper(MONITOR, &containers[0].id, 1)?;
        Ok(())
    })
}

fn static_pod_web_containerd() -> anyhow::Result<()> {
    on_node(RuntimeKind::Containerd, web_pod_serves_and_logs)
}

/// The kubelet on a cri-shim of its own process, through the benchmarks'
/// recording CRI proxy: the pod works as on the embedded runtime, and the
/// proxy attributes the pod's RunPodSandbox, CreateContainer and
/// StartContainer to it, in that order, once each, and the status calls of
/// its sandbox and container.
fn static_pod_web_cri_shim_process_through_tap() -> anyhow::Result<()> {
    use e2e::cri_tap::TimedMethod;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let node = Node::start_tapped(RuntimeKind::CriShimProcess).await?;
        let outcome = web_pod_serves_and_logs(&node).await;
        let tap = node.tap.as_ref().context("the node has no tap")?;
        let (timed, calls) = tap.take();
        let pod = node.kubelet.pod_name("web");
        let (teardown, logs) = node.shutdown_with_logs().await;
        outcome
            .and(teardown)
            .map_err(|e| anyhow::anyhow!("{}\n{logs}", report(&e)))?;
        // The status calls of the pod's objects are attributed too.
        for method in [TimedMethod::PodSandboxStatus, TimedMethod::ContainerStatus] {
            ensure!(
                timed.iter().any(|c| c.method == method && c.pod == pod),
                "the tap attributed no {method:?} to {pod}: {timed:?}"
            );
        }
        let timed: Vec<_> = timed.into_iter().filter(|c| c.method.makes()).collect();
        let seen: Vec<(TimedMethod, &str)> =
            timed.iter().map(|c| (c.method, c.pod.as_str())).collect();
        ensure!(
            seen == [
                (TimedMethod::RunPodSandbox, pod.as_str()),
                (TimedMethod::CreateContainer, pod.as_str()),
                (TimedMethod::StartContainer, pod.as_str()),
            ],
            "timed calls: {seen:?}"
        );
        ensure!(
            timed.windows(2).all(|w| w[0].end <= w[1].start),
            "the calls overlap: {timed:?}"
        );
        ensure!(
            calls
                .get("/runtime.v1.RuntimeService/Version")
                .is_some_and(|took| !took.is_empty()),
            "the tap did not count the kubelet's Version call: {calls:?}"
        );
        Ok(())
    })
}

/// The web pod runs, answers HTTP on its pod IP, and its log file holds the
/// request httpd logged to stderr, in the CRI format.
async fn web_pod_serves_and_logs(node: &Node) -> anyhow::Result<()> {
    node.kubelet
        .write_manifest("web.yaml", &web_manifest(None))?;
    let mut cri = node.cri().await?;
    let pod = node.wait_for_running_pod(&mut cri, "web", &["web"]).await?;
    ensure!(
        pod.namespace == "default",
        "pod namespace label is {:?}",
        pod.namespace
    );

    let body = get_index_page(node, pod.ip).await?;
    ensure!(
        body.contains(HTTPD_INDEX_TEXT),
        "unexpected index page: {body:?}"
    );

    let log = pod_log_path("default", &node.kubelet.pod_name("web"), &pod.uid, "web", 0);
    node.wait_until(
        &format!("httpd's request log reaches {}", log.display()),
        async || {
            let logged = read_cri_log(&log)?.iter().any(|line| {
                line.stream == LogStream::Stderr && line.content.contains("response:200")
            });
            Ok(logged.then_some(()))
        },
    )
    .await
}

fn manifest_edit_replaces_pod() -> anyhow::Result<()> {
    on_node(RuntimeKind::Embedded, async |node| {
        let pod_name = node.kubelet.pod_name("web");
        let mut cri = node.cri().await?;
        node.kubelet
            .write_manifest("web.yaml", &web_manifest(None))?;
        let first = node.wait_for_running_pod(&mut cri, "web", &["web"]).await?;

        node.kubelet
            .write_manifest("web.yaml", &web_manifest(Some(("edited", "yes"))))?;
        let second = node
            .wait_until("the edited pod runs with a new UID", async || {
                let pod = running_pod(&mut cri, &pod_name, &["web"]).await?;
                Ok(pod.filter(|pod| pod.uid != first.uid))
            })
            .await?;
        ensure!(
            second.sandbox_id != first.sandbox_id,
            "the sandbox was not replaced"
        );

        node.wait_until("the old sandbox and its containers are gone", async || {
            let sandboxes = list_sandboxes(&mut cri, Some(&pod_name)).await?;
            let containers = list_containers(&mut cri, Some(&pod_name)).await?;
            let old_left = sandboxes.iter().any(|s| s.id == first.sandbox_id)
                || containers
                    .iter()
                    .any(|c| c.pod_sandbox_id == first.sandbox_id);
            Ok((!old_left).then_some(()))
        })
        .await?;
        get_index_page(node, second.ip).await?;
        Ok(())
    })
}

fn manifest_delete_removes_pod() -> anyhow::Result<()> {
    on_node(RuntimeKind::Embedded, async |node| {
        let pod_name = node.kubelet.pod_name("web");
        let mut cri = node.cri().await?;
        node.kubelet
            .write_manifest("web.yaml", &web_manifest(None))?;
        node.wait_for_running_pod(&mut cri, "web", &["web"]).await?;
        ensure!(
            !node.network.veths()?.is_empty(),
            "the pod has no veth on the test bridge"
        );

        node.kubelet.remove_manifest("web.yaml")?;
        node.wait_until("the pod's sandbox and containers are removed", async || {
            let sandboxes = list_sandboxes(&mut cri, Some(&pod_name)).await?;
            let containers = list_containers(&mut cri, Some(&pod_name)).await?;
            Ok((sandboxes.is_empty() && containers.is_empty()).then_some(()))
        })
        .await?;
        let veths = node.network.veths()?;
        ensure!(
            veths.is_empty(),
            "veths left on the bridge after the pod was removed: {veths:?}"
        );
        Ok(())
    })
}

/// Runs briefly and fails.
const CRASHING_SCRIPT: &str = "echo run; sleep 1; exit 3";

fn restart_policy_always_restarts() -> anyhow::Result<()> {
    on_node(RuntimeKind::Embedded, async |node| {
        let manifest = busybox_manifest("crash", "Always", CRASHING_SCRIPT);
        node.kubelet.write_manifest("crash.yaml", &manifest)?;
        let pod_name = node.kubelet.pod_name("crash");
        let mut cri = node.cri().await?;
        let restarted = node
            .wait_until("the container was restarted", async || {
                let containers = list_containers(&mut cri, Some(&pod_name)).await?;
                Ok(containers.into_iter().find(|c| restart_count(c) >= 1))
            })
            .await?;

        // The first run logged to 0.log before it exited.
        let uid = restarted
            .labels
            .get(harness::LABEL_POD_UID)
            .context("container has no pod UID label")?;
        let log = pod_log_path("default", &pod_name, uid, "main", 0);
        let lines = read_cri_log(&log)?;
        ensure!(
            lines
                .iter()
                .any(|line| line.stream == LogStream::Stdout && line.content == "run"),
            "{} does not hold the first run's output: {lines:?}",
            log.display()
        );
        Ok(())
    })
}

fn restart_policy_never_does_not() -> anyhow::Result<()> {
    on_node(RuntimeKind::Embedded, async |node| {
        let manifest = busybox_manifest("once", "Never", CRASHING_SCRIPT);
        node.kubelet.write_manifest("once.yaml", &manifest)?;
        let pod_name = node.kubelet.pod_name("once");
        let mut cri = node.cri().await?;
        let exited = node
            .wait_until("the container exited", async || {
                for container in list_containers(&mut cri, Some(&pod_name)).await? {
                    let status = container_status(&mut cri, &container.id).await?;
                    if status.state == ContainerState::ContainerExited as i32 {
                        return Ok(Some(status));
                    }
                }
                Ok(None)
            })
            .await?;
        ensure!(
            exited.exit_code == 3,
            "exit code {} (want 3)",
            exited.exit_code
        );

        // Longer than the first restart backoff (10 s): under Always the
        // container would have been restarted by now.
        tokio::time::sleep(Duration::from_secs(15)).await;
        node.check_alive()?;
        let containers = list_containers(&mut cri, Some(&pod_name)).await?;
        ensure!(
            containers.len() == 1,
            "want the one exited container, have {containers:?}"
        );
        let container = &containers[0];
        ensure!(
            restart_count(container) == 0,
            "restarted under Never: {container:?}"
        );
        ensure!(
            container.state == ContainerState::ContainerExited as i32,
            "the container no longer is exited: {container:?}"
        );
        Ok(())
    })
}

fn malformed_manifest_next_to_good_one() -> anyhow::Result<()> {
    on_node(RuntimeKind::Embedded, async |node| {
        let broken = "apiVersion: v1\nkind: Pod\nmetadata: [this is not\n";
        node.kubelet.write_manifest("broken.yaml", broken)?;
        let good = busybox_manifest("good", "Always", "sleep 3600");
        node.kubelet.write_manifest("good.yaml", &good)?;
        let mut cri = node.cri().await?;
        node.wait_for_running_pod(&mut cri, "good", &["main"])
            .await?;
        node.wait_until("the kubelet log names broken.yaml", async || {
            Ok(node.kubelet.log()?.contains("broken.yaml").then_some(()))
        })
        .await
    })
}

/// A field of a JSON object as text ("" when absent).
fn text<'a>(value: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
}

/// The status entry of container `name` in `statuses` (a JSON array).
fn container_entry<'a>(
    statuses: &'a serde_json::Value,
    name: &str,
) -> anyhow::Result<&'a serde_json::Value> {
    statuses
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no status of container {name} in {statuses}"))
}

fn condition_status<'a>(pod: &'a serde_json::Value, kind: &str) -> &'a str {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
}

/// Waits until the CRI log at `log` has every line of `want`.
async fn wait_for_log_lines(
    node: &Node,
    what: &str,
    log: &std::path::Path,
    want: &[String],
) -> anyhow::Result<()> {
    node.wait_until(what, async || {
        let lines: Vec<String> = match read_cri_log(log) {
            Ok(lines) => lines.into_iter().map(|l| l.content).collect(),
            Err(_) => return Ok(None),
        };
        Ok(want.iter().all(|w| lines.contains(w)).then_some(()))
    })
    .await
    .with_context(|| format!("want lines {want:?} in {}", log.display()))
}

/// The lines the container printed before a `---` line, once it has.
async fn log_lines_before_marker(
    node: &Node,
    what: &str,
    log: &std::path::Path,
) -> anyhow::Result<Vec<String>> {
    node.wait_until(what, async || {
        let lines: Vec<String> = match read_cri_log(log) {
            Ok(lines) => lines.into_iter().map(|l| l.content).collect(),
            Err(_) => return Ok(None),
        };
        Ok(lines
            .iter()
            .position(|l| l == "---")
            .map(|end| lines[..end].to_vec()))
    })
    .await
}

/// The kubelet writes each pod's `/etc/hosts` as upstream does and mounts
/// it into the containers: the managed file with the pod's IP and hostname
/// and the `hostAliases` for a pod on the pod network; the node's file
/// under the host-network header, with the aliases, for a host-network pod,
/// whose `status.podIP` is the node's IP.
fn hosts_file_and_host_aliases(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let aliases = "hostAliases:\n    - {ip: 127.0.0.1, hostnames: [foo.local, bar.local]}\n    - {ip: 10.1.2.3, hostnames: [foo.remote]}";
        let pod_manifest = |name: &str, extra: &str| {
            format!(
                r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  {extra}
  {aliases}
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "cat /etc/hosts; echo ---; echo MY_POD_IP=$MY_POD_IP; sleep 3600"]
      env:
        - {{name: MY_POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
"#
            )
        };
        node.kubelet
            .write_manifest("named.yaml", &pod_manifest("named", "hostname: db-0"))?;
        node.kubelet.write_manifest(
            "hostnet.yaml",
            &pod_manifest("hostnet", "hostNetwork: true"),
        )?;
        let alias_lines = [
            "",
            "# Entries added by HostAliases.",
            "127.0.0.1\tfoo.local\tbar.local",
            "10.1.2.3\tfoo.remote",
        ];

        let named = wait_for_reported(node, "named", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        let pod_ip = text(&named, &["status", "podIP"]).to_owned();
        let uid = text(&named, &["metadata", "uid"]);
        let log = pod_log_path("default", &node.kubelet.pod_name("named"), uid, "main", 0);
        let seen = log_lines_before_marker(node, "named printed /etc/hosts", &log).await?;
        let mut want: Vec<String> = [
            "# Kubernetes-managed hosts file.",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "fe00::0\tip6-localnet",
            "fe00::0\tip6-mcastprefix",
            "fe00::1\tip6-allnodes",
            "fe00::2\tip6-allrouters",
        ]
        .map(str::to_owned)
        .to_vec();
        want.push(format!("{pod_ip}\tdb-0"));
        want.extend(alias_lines.map(str::to_owned));
        ensure!(
            seen == want,
            "named's /etc/hosts: {seen:#?}, want {want:#?}"
        );
        let hosts_file = node.kubelet.root_dir.join(format!("pods/{uid}/etc-hosts"));
        ensure!(
            hosts_file.is_file(),
            "no hosts file at {}",
            hosts_file.display()
        );

        let hostnet = wait_for_reported(node, "hostnet", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        let host_ip = text(&hostnet, &["status", "hostIP"]).to_owned();
        ensure!(
            text(&hostnet, &["status", "podIP"]) == host_ip,
            "a host-network pod's IP is the node's: {}",
            hostnet["status"]
        );
        let uid = text(&hostnet, &["metadata", "uid"]);
        let log = pod_log_path("default", &node.kubelet.pod_name("hostnet"), uid, "main", 0);
        let seen = log_lines_before_marker(node, "hostnet printed /etc/hosts", &log).await?;
        let node_hosts = std::fs::read_to_string("/etc/hosts")?;
        let mut want = vec!["# Kubernetes-managed hosts file (host network).".to_owned()];
        want.extend(node_hosts.lines().map(str::to_owned));
        want.extend(alias_lines.map(str::to_owned));
        ensure!(
            seen == want,
            "hostnet's /etc/hosts: {seen:#?}, want {want:#?}"
        );
        wait_for_log_lines(
            node,
            "hostnet printed its pod IP",
            &log,
            &[format!("MY_POD_IP={host_ip}")],
        )
        .await
    })
}

/// Waits until `/pods` shows the first container of static pod `name`
/// waiting with `reason`; returns the waiting message.
async fn wait_for_waiting(node: &Node, name: &str, reason: &str) -> anyhow::Result<String> {
    let pod = wait_for_reported(node, name, reason, |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == reason
    })
    .await?;
    let waiting = &pod["status"]["containerStatuses"][0];
    Ok(text(waiting, &["state", "waiting", "message"]).to_owned())
}

/// Waits until `/pods` reports static pod `name` in a state `accept` likes.
async fn wait_for_reported(
    node: &Node,
    name: &str,
    what: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let mut last = None;
    let result = node
        .wait_until(&format!("/pods reports {name}: {what}"), async || {
            let pod = node.kubelet.reported_pod(name)?;
            let found = pod.as_ref().filter(|p| accept(p)).cloned();
            last = pod;
            Ok(found)
        })
        .await;
    result.with_context(|| format!("last reported: {}", last.unwrap_or_default()))
}

fn runtime_scheme(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Embedded | RuntimeKind::CriShimProcess => "cri-shim://",
        RuntimeKind::Containerd => "containerd://",
    }
}

/// Two init containers run to completion in order, a sidecar keeps running
/// beside the app, and `/pods` shows all of it as the API would: phase,
/// conditions, init and app container statuses, pod IP, QoS class.
fn pod_status_with_init_containers_and_sidecar(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: layered
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  initContainers:
    - name: first
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo first"]
    - name: proxy
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      restartPolicy: Always
      command: ["sleep", "3600"]
    - name: second
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo second"]
  containers:
    - name: app
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"#
        );
        node.kubelet.write_manifest("layered.yaml", &manifest)?;
        let pod = wait_for_reported(node, "layered", "Running and Ready", |p| {
            text(p, &["status", "phase"]) == "Running" && condition_status(p, "Ready") == "True"
        })
        .await?;
        let status = &pod["status"];
        for kind in [
            "Initialized",
            "ContainersReady",
            "PodReadyToStartContainers",
            "PodScheduled",
        ] {
            ensure!(
                condition_status(&pod, kind) == "True",
                "{kind} is not True: {status}"
            );
        }
        ensure!(status["qosClass"] == "BestEffort", "qosClass: {status}");
        let inits = &status["initContainerStatuses"];
        for name in ["first", "second"] {
            let entry = container_entry(inits, name)?;
            let terminated = &entry["state"]["terminated"];
            ensure!(
                terminated["exitCode"] == 0 && terminated["reason"] == "Completed",
                "init container {name}: {entry}"
            );
        }
        let proxy = container_entry(inits, "proxy")?;
        ensure!(
            proxy["state"]["running"].is_object() && proxy["ready"] == true,
            "sidecar: {proxy}"
        );
        let app = container_entry(&status["containerStatuses"], "app")?;
        ensure!(
            app["ready"] == true && app["state"]["running"].is_object(),
            "app: {app}"
        );
        ensure!(
            text(app, &["containerID"]).starts_with(runtime_scheme(kind)),
            "containerID: {app}"
        );
        ensure!(!text(app, &["imageID"]).is_empty(), "imageID: {app}");

        // The init containers ran one after the other, before the sidecar's
        // successor and the app: compare the start and finish times.
        let finished_first = text(
            container_entry(inits, "first")?,
            &["state", "terminated", "finishedAt"],
        );
        let started_second = text(
            container_entry(inits, "second")?,
            &["state", "terminated", "startedAt"],
        );
        let started_app = text(app, &["state", "running", "startedAt"]);
        ensure!(
            finished_first <= started_second && started_second <= started_app,
            "order: first finished {finished_first}, second started {started_second}, app started {started_app}"
        );

        // The pod IP is the sandbox's, as the CRI reports it.
        let mut cri = node.cri().await?;
        let running = harness::running_pod(&mut cri, &node.kubelet.pod_name("layered"), &["app"])
            .await?
            .context("the CRI has no running pod")?;
        ensure!(
            text(status, &["podIP"]) == running.ip.to_string(),
            "podIP {} but the sandbox has {}",
            status["podIP"],
            running.ip
        );
        Ok(())
    })
}

/// Under `restartPolicy: Never` a failing init container fails the pod and
/// the app container never starts.
fn failed_init_container_fails_pod(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: badinit
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  initContainers:
    - name: setup
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "exit 3"]
  containers:
    - name: app
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"#
        );
        node.kubelet.write_manifest("badinit.yaml", &manifest)?;
        let pod = wait_for_reported(node, "badinit", "Failed", |p| {
            text(p, &["status", "phase"]) == "Failed"
        })
        .await?;
        let setup = container_entry(&pod["status"]["initContainerStatuses"], "setup")?;
        ensure!(
            setup["state"]["terminated"]["exitCode"] == 3,
            "setup: {setup}"
        );
        let app = container_entry(&pod["status"]["containerStatuses"], "app")?;
        ensure!(
            text(app, &["state", "waiting", "reason"]) == "PodInitializing",
            "app: {app}"
        );
        ensure!(condition_status(&pod, "Initialized") == "False", "{pod}");
        let mut cri = node.cri().await?;
        let containers = list_containers(&mut cri, Some(&node.kubelet.pod_name("badinit"))).await?;
        ensure!(
            containers
                .iter()
                .all(|c| harness::container_name(c) == "setup"),
            "the app container was created: {containers:?}"
        );
        Ok(())
    })
}

/// A crashing container is reported in CrashLoopBackOff with its last run,
/// and a pod whose container succeeded under `Never` is Succeeded.
fn crash_loop_and_completion_in_pod_status(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let crash = busybox_manifest("crash", "Always", "echo run; exit 3");
        node.kubelet.write_manifest("crash.yaml", &crash)?;
        let done = busybox_manifest("done", "Never", "echo done");
        node.kubelet.write_manifest("done.yaml", &done)?;

        let pod = wait_for_reported(node, "crash", "in CrashLoopBackOff", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await?;
        let main = &pod["status"]["containerStatuses"][0];
        ensure!(
            main["lastState"]["terminated"]["exitCode"] == 3
                && main["lastState"]["terminated"]["reason"] == "Error",
            "lastState: {main}"
        );
        ensure!(
            main["restartCount"].as_i64() >= Some(1),
            "restartCount: {main}"
        );
        ensure!(
            text(main, &["state", "waiting", "message"]).contains("back-off"),
            "message: {main}"
        );
        ensure!(
            text(&pod, &["status", "phase"]) == "Running",
            "phase: {pod}"
        );

        let done = wait_for_reported(node, "done", "Succeeded", |p| {
            text(p, &["status", "phase"]) == "Succeeded"
        })
        .await?;
        ensure!(condition_status(&done, "Ready") == "False", "{done}");
        Ok(())
    })
}

/// An image that is nowhere to be had gives `ErrImagePull`, then
/// `ImagePullBackOff`; the pod next to it runs regardless.
fn missing_image_reports_pull_errors(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: noimage
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: app
      image: 127.0.0.1:9/e2e/missing:v1
"#
        );
        node.kubelet.write_manifest("noimage.yaml", &manifest)?;
        let good = busybox_manifest("neighbour", "Always", "sleep 3600");
        node.kubelet.write_manifest("neighbour.yaml", &good)?;
        let reason = |p: &serde_json::Value| {
            text(
                &p["status"]["containerStatuses"][0],
                &["state", "waiting", "reason"],
            )
            .to_owned()
        };
        let first = wait_for_reported(node, "noimage", "ErrImagePull", |p| {
            reason(p) == "ErrImagePull"
        })
        .await?;
        ensure!(
            text(
                &first["status"]["containerStatuses"][0],
                &["state", "waiting", "message"]
            )
            .contains("missing"),
            "message does not name the image: {first}"
        );
        wait_for_reported(node, "noimage", "ImagePullBackOff", |p| {
            reason(p) == "ImagePullBackOff"
        })
        .await?;
        wait_for_reported(node, "neighbour", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        Ok(())
    })
}

/// Env vars from the pod's fields and resources reach the container, its
/// memory limit is its cgroup's, and a Secret reference (which a static pod
/// cannot have) gives `CreateContainerConfigError` naming the field.
fn environment_and_resources_from_the_pod(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: envpod
  labels: {{tier: backend}}
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "env | sort; echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null); sleep 3600"]
      env:
        - {{name: MY_POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: MY_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: MY_TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
        - {{name: MY_NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        - {{name: MEM_MI, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
        - {{name: GREETING, value: "hi $(MY_NAME)"}}
      resources:
        limits: {{cpu: 200m, memory: 48Mi}}
"#
        );
        node.kubelet.write_manifest("envpod.yaml", &manifest)?;
        let secretive = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: secretive
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      env:
        - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: db, key: password}}}}}}
"#
        );
        node.kubelet.write_manifest("secretive.yaml", &secretive)?;

        let pod = wait_for_reported(node, "envpod", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        ensure!(
            pod["status"]["qosClass"] == "Guaranteed",
            "qosClass: {}",
            pod["status"]
        );
        let pod_ip = text(&pod, &["status", "podIP"]).to_owned();
        let uid = text(&pod, &["metadata", "uid"]).to_owned();
        let pod_name = node.kubelet.pod_name("envpod");
        let log = pod_log_path("default", &pod_name, &uid, "main", 0);
        let want = [
            format!("MY_POD_IP={pod_ip}"),
            format!("MY_NAME={pod_name}"),
            "MY_TIER=backend".to_owned(),
            format!("MY_NODE={}", node.name()),
            "MEM_MI=48".to_owned(),
            format!("GREETING=hi {pod_name}"),
            format!("limit={}", 48 * 1024 * 1024),
        ];
        wait_for_log_lines(node, "the container printed its environment", &log, &want).await?;

        // The pod has its own cgroup with the summed limits, in the
        // Guaranteed level, and the container's cgroup is below it.
        let pod_cgroup = std::path::Path::new("/sys/fs/cgroup/memory")
            .join(harness::test_cgroup_root(node.name()).trim_start_matches('/'))
            .join(format!("kubepods/pod{uid}"));
        let limit = std::fs::read_to_string(pod_cgroup.join("memory.limit_in_bytes"))
            .with_context(|| format!("reading the pod cgroup {}", pod_cgroup.display()))?;
        ensure!(
            limit.trim() == (48 * 1024 * 1024).to_string(),
            "pod cgroup memory limit {limit:?}"
        );
        let children = std::fs::read_dir(&pod_cgroup)?
            .flatten()
            .filter(|e| e.path().is_dir())
            .count();
        ensure!(
            children >= 1,
            "no container cgroup below {}",
            pod_cgroup.display()
        );

        let message = wait_for_waiting(node, "secretive", "CreateContainerConfigError").await?;
        ensure!(
            message.contains("env[PASSWORD].valueFrom.secretKeyRef"),
            "message does not name the field: {message}"
        );

        // Once the pod is gone, so is its cgroup.
        node.kubelet.remove_manifest("envpod.yaml")?;
        node.wait_until("the pod's cgroup removed with the pod", async || {
            Ok((!pod_cgroup.exists()).then_some(()))
        })
        .await?;
        Ok(())
    })
}

/// The pod's and container's securityContext reach the process: user,
/// group, supplemental groups with the fsGroup, a RuntimeDefault seccomp
/// filter; `runAsNonRoot` with an image that runs as root is refused with
/// upstream's CreateContainerConfigError message.
fn security_context_reaches_the_container(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let secure = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: secure
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
    supplementalGroups: [4000]
    runAsNonRoot: true
    seccompProfile: {{type: RuntimeDefault}}
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "grep -E '^(Uid|Gid|Groups|Seccomp):' /proc/self/status; echo ---; sleep 3600"]
"#
        );
        node.kubelet.write_manifest("secure.yaml", &secure)?;
        let rooted = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: rooted
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      securityContext: {{runAsNonRoot: true}}
"#
        );
        node.kubelet.write_manifest("rooted.yaml", &rooted)?;

        let pod = wait_for_reported(node, "secure", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        let uid = text(&pod, &["metadata", "uid"]);
        let log = pod_log_path("default", &node.kubelet.pod_name("secure"), uid, "main", 0);
        let lines = log_lines_before_marker(node, "secure printed its ids", &log).await?;
        let field = |name: &str| -> Vec<String> {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        ensure!(field("Uid:") == ["1000"; 4], "uids: {lines:?}");
        ensure!(field("Gid:") == ["3000"; 4], "gids: {lines:?}");
        let groups = field("Groups:");
        ensure!(
            ["2000", "4000"]
                .iter()
                .all(|g| groups.iter().any(|x| x == g)),
            "supplemental groups (with the fsGroup): {lines:?}"
        );
        ensure!(field("Seccomp:") == ["2"], "a seccomp filter: {lines:?}");

        let message = wait_for_waiting(node, "rooted", "CreateContainerConfigError").await?;
        ensure!(
            message.starts_with("container has runAsNonRoot and image will run as root (pod: "),
            "message: {message}"
        );
        Ok(())
    })
}

/// An HTTP readiness probe holds the pod unready until the page exists; a
/// startup probe (TCP) gates a container until a port opens; an exec
/// liveness probe that starts failing gets its container restarted, killed
/// with the probe's own `terminationGracePeriodSeconds`.
fn probes_drive_readiness_and_restarts(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: web
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "mkdir -p /www; (sleep 4; echo ok > /www/ready) & exec httpd -f -p 8080 -h /www"]
      ports: [{{name: http, containerPort: 8080}}]
      readinessProbe:
        httpGet: {{path: /ready, port: http, httpHeaders: [{{name: X-Probe, value: e2e}}]}}
        periodSeconds: 1
    - name: gated
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      startupProbe:
        tcpSocket: {{port: 8080}}
        periodSeconds: 1
        failureThreshold: 30
    - name: live
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; sleep 3600"]
      livenessProbe:
        exec: {{command: ["test", "-f", "/tmp/healthy"]}}
        periodSeconds: 1
        failureThreshold: 2
        terminationGracePeriodSeconds: 3
"#
        );
        node.kubelet.write_manifest("probed.yaml", &manifest)?;
        let ready = |p: &serde_json::Value, name: &str| {
            container_entry(&p["status"]["containerStatuses"], name)
                .map(|c| c["ready"] == true)
                .unwrap_or(false)
        };
        // Running but not yet ready: the page is missing (404).
        let early = wait_for_reported(node, "probed", "web running, not ready", |p| {
            container_entry(&p["status"]["containerStatuses"], "web")
                .is_ok_and(|c| c["state"]["running"].is_object())
        })
        .await?;
        ensure!(
            !ready(&early, "web"),
            "web ready before its page exists: {early}"
        );
        ensure!(condition_status(&early, "Ready") == "False", "{early}");

        wait_for_reported(node, "probed", "web ready and gated started", |p| {
            ready(p, "web")
                && container_entry(&p["status"]["containerStatuses"], "gated")
                    .is_ok_and(|c| c["started"] == true)
        })
        .await?;
        let restarted = wait_for_reported(node, "probed", "live restarted by liveness", |p| {
            container_entry(&p["status"]["containerStatuses"], "live")
                .is_ok_and(|c| c["restartCount"].as_i64() >= Some(1))
        })
        .await?;
        let web = container_entry(&restarted["status"]["containerStatuses"], "web")?;
        ensure!(web["restartCount"] == 0, "web restarted: {web}");
        let log = node.kubelet.log()?;
        ensure!(
            log.contains("Liveness probe failed"),
            "the kubelet log does not report the failed liveness probe"
        );
        // The probe's own grace period (3 s), not the pod's (2 s), for that kill.
        ensure!(
            log.contains(r#"container.name="live" grace_period=3 reason=Unhealthy"#),
            "the unhealthy container was not killed with its probe's grace period"
        );
        Ok(())
    })
}

/// Mount points under `dir` (from this process's mountinfo).
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|mount_point| mount_point.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// emptyDir (disk and memory), hostPath, downwardAPI and a FlexVolume from
/// the example driver reach the containers: an init container writes into
/// the emptyDir, the app reads it through a subPath; after the manifest is
/// removed nothing is left mounted and the pod directory is gone.
fn volumes_are_mounted_and_torn_down(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let host_dir = node
            .kubelet
            .root_dir
            .parent()
            .context("no scratch dir")?
            .join("hostdata");
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{app: vols}}
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  initContainers:
    - name: prepare
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "mkdir -p /work/sub && echo from-init > /work/sub/note"]
      volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
    - name: app
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "cat /note; cat /info/labels; echo; cat /flex/pod; echo; grep ' /fast ' /proc/mounts | cut -d' ' -f3; echo written > /host/out; sleep 3600"]
      volumeMounts:
        - {{name: work, mountPath: /note, subPath: sub/note}}
        - {{name: info, mountPath: /info}}
        - {{name: flex, mountPath: /flex}}
        - {{name: fast, mountPath: /fast}}
        - {{name: host, mountPath: /host}}
  volumes:
    - {{name: work, emptyDir: {{}}}}
    - {{name: fast, emptyDir: {{medium: Memory, sizeLimit: 8Mi}}}}
    - name: info
      downwardAPI:
        items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]
    - name: flex
      flexVolume: {{driver: kubelet-rs/tmpfs, options: {{size: 4m}}}}
    - name: host
      hostPath: {{path: {host}, type: DirectoryOrCreate}}
"#,
            host = host_dir.display()
        );
        node.kubelet.write_manifest("vols.yaml", &manifest)?;
        let pod = wait_for_reported(node, "vols", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        let uid = text(&pod, &["metadata", "uid"]).to_owned();
        let pod_name = node.kubelet.pod_name("vols");
        let log = pod_log_path("default", &pod_name, &uid, "app", 0);
        let want = [
            "from-init".to_owned(),
            "app=\"vols\"".to_owned(),
            format!("default/{pod_name}/{uid}"),
            "tmpfs".to_owned(),
        ];
        wait_for_log_lines(node, "the app printed its volumes", &log, &want).await?;
        let written = std::fs::read_to_string(host_dir.join("out"))
            .context("the hostPath file written by the container")?;
        ensure!(written == "written\n", "hostPath content {written:?}");
        let pod_dir = node.kubelet.root_dir.join("pods").join(&uid);
        ensure!(
            !mounts_under(&pod_dir).is_empty(),
            "no volume mounts under {}",
            pod_dir.display()
        );

        node.kubelet.remove_manifest("vols.yaml")?;
        node.wait_until("the pod's volumes are torn down", async || {
            let gone = !pod_dir.exists() && mounts_under(&pod_dir).is_empty();
            Ok(gone.then_some(()))
        })
        .await
        .with_context(|| format!("left mounted: {:?}", mounts_under(&pod_dir)))?;
        Ok(())
    })
}

/// A hostPath of the wrong type and a FlexVolume driver that does not exist:
/// the pod never starts a container, the kubelet reports `FailedMount`
/// naming the volume, nothing is left mounted, and the pod next to it runs.
fn bad_volume_fails_only_its_pod(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: badvol
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: app
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: etc, mountPath: /etc-host}}]
  volumes:
    - {{name: scratch, emptyDir: {{}}}}
    - {{name: etc, hostPath: {{path: /etc/hostname, type: Directory}}}}
"#
        );
        node.kubelet.write_manifest("badvol.yaml", &manifest)?;
        let flex = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: noflex
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: app
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
  volumes:
    - {{name: data, flexVolume: {{driver: nobody/nothing}}}}
"#
        );
        node.kubelet.write_manifest("noflex.yaml", &flex)?;
        let good = busybox_manifest("neighbour", "Always", "sleep 3600");
        node.kubelet.write_manifest("neighbour.yaml", &good)?;

        wait_for_reported(node, "neighbour", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        node.wait_until("the kubelet reports both FailedMount errors", async || {
            let log = node.kubelet.log()?;
            let named = log.lines().any(|l| {
                l.contains("FailedMount") && l.contains("\"etc\"") && l.contains("not a directory")
            }) && log
                .lines()
                .any(|l| l.contains("FailedMount") && l.contains("\"data\""));
            Ok(named.then_some(()))
        })
        .await?;
        for name in ["badvol", "noflex"] {
            let pod = node
                .kubelet
                .reported_pod(name)?
                .context("pod not reported")?;
            ensure!(
                text(&pod, &["status", "phase"]) == "Pending",
                "{name}: {pod}"
            );
            let uid = text(&pod, &["metadata", "uid"]);
            let pod_dir = node.kubelet.root_dir.join("pods").join(uid);
            let left = mounts_under(&pod_dir);
            ensure!(left.is_empty(), "{name}: left mounted: {left:?}");
        }
        let mut cri = node.cri().await?;
        for name in ["badvol", "noflex"] {
            let containers = list_containers(&mut cri, Some(&node.kubelet.pod_name(name))).await?;
            ensure!(
                containers.is_empty(),
                "{name} has containers: {containers:?}"
            );
        }
        Ok(())
    })
}

/// postStart runs before the container goes on; on removal the app's
/// preStop hook runs first, the sidecar's after the app has stopped.
fn hooks_and_termination_order(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let host_dir = node
            .kubelet
            .root_dir
            .parent()
            .context("no scratch dir")?
            .join("hooks");
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: hooked
spec:
  terminationGracePeriodSeconds: 3
  initContainers:
    - name: side
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      restartPolicy: Always
      command: ["sleep", "3600"]
      volumeMounts: [{{name: out, mountPath: /out}}]
      lifecycle:
        preStop: {{exec: {{command: ["sh", "-c", "echo side-prestop >> /out/order"]}}}}
  containers:
    - name: app
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "while [ ! -f /tmp/started ]; do sleep 0.1; done; echo poststart-seen; sleep 3600"]
      volumeMounts: [{{name: out, mountPath: /out}}]
      lifecycle:
        postStart: {{exec: {{command: ["sh", "-c", "touch /tmp/started"]}}}}
        preStop: {{exec: {{command: ["sh", "-c", "echo app-prestop >> /out/order; sleep 1"]}}}}
  volumes:
    - {{name: out, hostPath: {{path: {host}, type: DirectoryOrCreate}}}}
"#,
            host = host_dir.display()
        );
        node.kubelet.write_manifest("hooked.yaml", &manifest)?;
        let pod = wait_for_reported(node, "hooked", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        let uid = text(&pod, &["metadata", "uid"]).to_owned();
        let log = pod_log_path("default", &node.kubelet.pod_name("hooked"), &uid, "app", 0);
        node.wait_until("the app saw its postStart hook's file", async || {
            let seen = read_cri_log(&log)
                .map(|lines| lines.iter().any(|l| l.content == "poststart-seen"))
                .unwrap_or(false);
            Ok(seen.then_some(()))
        })
        .await?;

        node.kubelet.remove_manifest("hooked.yaml")?;
        let mut cri = node.cri().await?;
        let pod_name = node.kubelet.pod_name("hooked");
        node.wait_until("the pod is gone", async || {
            Ok(list_sandboxes(&mut cri, Some(&pod_name))
                .await?
                .is_empty()
                .then_some(()))
        })
        .await?;
        let order = std::fs::read_to_string(host_dir.join("order"))
            .context("no preStop hook wrote its line")?;
        ensure!(
            order == "app-prestop\nside-prestop\n",
            "preStop order: {order:?}"
        );
        Ok(())
    })
}

/// A container's termination message file and, with
/// `FallbackToLogsOnError`, the tail of its log become the terminated state's
/// message.
fn termination_messages(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: messages
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: file
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo -n all done > /dev/termination-log"]
    - name: custom
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      terminationMessagePath: /tmp/why
      command: ["sh", "-c", "echo -n custom path > /tmp/why; exit 4"]
    - name: logs
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      terminationMessagePolicy: FallbackToLogsOnError
      command: ["sh", "-c", "echo first; echo last words; exit 2"]
"#
        );
        node.kubelet.write_manifest("messages.yaml", &manifest)?;
        let pod = wait_for_reported(node, "messages", "Failed", |p| {
            text(p, &["status", "phase"]) == "Failed"
        })
        .await?;
        let statuses = &pod["status"]["containerStatuses"];
        for (name, want) in [
            ("file", "all done"),
            ("custom", "custom path"),
            ("logs", "first\nlast words"),
        ] {
            let entry = container_entry(statuses, name)?;
            let message = text(entry, &["state", "terminated", "message"]);
            ensure!(
                message == want,
                "{name}: message {message:?}, want {want:?}"
            );
        }
        Ok(())
    })
}

/// Images come from a registry: an `IfNotPresent` image (the default for a
/// versioned tag) is pulled once for two pods; a `latest` image (default
/// `Always`) is pulled for every container start.
fn image_pull_policies_with_a_registry(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node(kind, async |node| {
        use e2e::registry::{Registry, RegistryOptions, read_layout_tar};
        let dir = node
            .kubelet
            .root_dir
            .parent()
            .context("no scratch dir")?
            .join("registry");
        let registry = Registry::start(&dir, RegistryOptions::default()).await?;
        let image = read_layout_tar(&harness::TestImages::get()?.busybox())?;
        let versioned = registry.push(&image, "e2e/pulled", "v1", false).await?;
        let latest = registry.push(&image, "e2e/pulled", "latest", false).await?;
        let pod = |name: &str, image: &str, containers: usize| {
            let mut text = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
                 terminationGracePeriodSeconds: {GRACE_SECONDS}\n  containers:\n"
            );
            for i in 0..containers {
                text.push_str(&format!(
                    "  - {{name: c{i}, image: \"{image}\", command: [sleep, \"3600\"]}}\n"
                ));
            }
            text
        };
        node.kubelet
            .write_manifest("one.yaml", &pod("one", &versioned.reference, 1))?;
        wait_for_reported(node, "one", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        node.kubelet
            .write_manifest("two.yaml", &pod("two", &versioned.reference, 1))?;
        node.kubelet
            .write_manifest("fresh.yaml", &pod("fresh", &latest.reference, 2))?;
        for name in ["two", "fresh"] {
            wait_for_reported(node, name, "Running", |p| {
                text(p, &["status", "phase"]) == "Running"
            })
            .await?;
        }
        let tag_requests = |tag: &str| -> anyhow::Result<usize> {
            let path = format!("/v2/e2e/pulled/manifests/{tag}");
            Ok(registry
                .access_log()?
                .iter()
                .filter(|l| l.path == path && l.method != "PUT" && l.status < 400)
                .count())
        };
        let v1 = tag_requests("v1")?;
        ensure!(
            v1 == 1,
            "the IfNotPresent image was resolved {v1} times, want 1"
        );
        let fresh = tag_requests("latest")?;
        ensure!(
            fresh == 2,
            "the Always image was resolved {fresh} times, want 2 (one per container)"
        );
        let reported = node
            .kubelet
            .reported_pod("one")?
            .context("pod one not reported")?;
        let image_id = text(&reported["status"]["containerStatuses"][0], &["imageID"]);
        ensure!(!image_id.is_empty(), "no imageID: {reported}");
        Ok(())
    })
}

/// A kubelet restart adopts what runs: no container is restarted (same ids,
/// restart count 0); a pod whose manifest went away while the kubelet was
/// down is torn down, its volume directory included; the directory of a pod
/// that exists nowhere is removed at start.
fn kubelet_restart_restarts_nothing(kind: RuntimeKind) -> anyhow::Result<()> {
    on_node_mut(kind, async |node: &mut Node| {
        let keep = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: keep
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  initContainers:
    - name: init
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["true"]
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
"#
        );
        let gone = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: gone
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: main
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
      volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes: [{{name: scratch, emptyDir: {{}}}}]
"#
        );
        node.kubelet.write_manifest("keep.yaml", &keep)?;
        node.kubelet.write_manifest("gone.yaml", &gone)?;
        let ready = |p: &serde_json::Value| condition_status(p, "Ready") == "True";
        wait_for_reported(node, "keep", "Ready", ready).await?;
        let gone_pod = wait_for_reported(node, "gone", "Running", |p| {
            text(p, &["status", "phase"]) == "Running"
        })
        .await?;
        let gone_dir = node
            .kubelet
            .root_dir
            .join("pods")
            .join(text(&gone_pod, &["metadata", "uid"]));
        ensure!(gone_dir.exists(), "no pod dir {}", gone_dir.display());
        let mut cri = node.cri().await?;
        let keep_name = node.kubelet.pod_name("keep");
        let before = list_containers(&mut cri, Some(&keep_name)).await?;
        // Each start is logged once, as upstream's startup latency tracker.
        for name in [&keep_name, &node.kubelet.pod_name("gone")] {
            node.wait_until("the pod's start is logged", async || {
                Ok((startups_logged(node, name)? == 1).then_some(()))
            })
            .await?;
        }

        // A directory of a pod that exists nowhere any more, as a crash
        // mid-teardown leaves it.
        let stale_dir = node
            .kubelet
            .root_dir
            .join("pods/0123456789abcdef0123456789abcdef");
        let manifests = node.kubelet.manifest_dir.clone();
        node.kubelet
            .restart(|| {
                std::fs::remove_file(manifests.join("gone.yaml"))?;
                let volume = stale_dir.join("volumes/kubernetes.io~empty-dir/scratch");
                std::fs::create_dir_all(&volume)?;
                std::fs::write(volume.join("data"), "left over")?;
                Ok(())
            })
            .await?;
        node.wait_until("the stale pod directory is removed at start", async || {
            Ok((!stale_dir.exists()).then_some(()))
        })
        .await?;

        let mut cri = node.cri().await?;
        let gone_name = node.kubelet.pod_name("gone");
        node.wait_until(
            "the pod removed while the kubelet was down is gone",
            async || {
                let left = list_sandboxes(&mut cri, Some(&gone_name)).await?;
                Ok((left.is_empty() && !gone_dir.exists()).then_some(()))
            },
        )
        .await?;
        let pod = wait_for_reported(node, "keep", "Ready again", ready).await?;
        let after = list_containers(&mut cri, Some(&keep_name)).await?;
        let ids = |list: &[k8s_cri::v1::Container]| {
            let mut ids: Vec<String> = list.iter().map(|c| c.id.clone()).collect();
            ids.sort();
            ids
        };
        ensure!(
            ids(&before) == ids(&after),
            "containers changed: {before:?} -> {after:?}"
        );
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            ensure!(status["restartCount"] == 0, "restarted: {status}");
        }
        // The adopted pod did not start again, so no second record.
        ensure!(
            startups_logged(node, &keep_name)? == 1,
            "the adopted pod's start was logged again"
        );
        Ok(())
    })
}

/// How many `Observed pod startup duration` lines the kubelet's log has for
/// static pod `name` (in `default`); each must have the durations and the
/// time the status showed it running.
fn startups_logged(node: &Node, name: &str) -> anyhow::Result<usize> {
    let log = node.kubelet.log()?;
    let pod = format!("pod=\"default/{name}\"");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Observed pod startup duration") && l.contains(&pod))
        .collect();
    for line in &lines {
        for field in [
            "podStartSLOduration=",
            "podStartE2EDuration=",
            "configSeen=",
            "observedRunningTime=",
        ] {
            ensure!(line.contains(field), "no {field} in {line:?}");
        }
    }
    Ok(lines.len())
}
