//! The upstream kubelet 1.20 (built from Debian's source package by
//! `scripts/upstream-k8s.sh`) runs static pods on a standalone cri-shim, which
//! serves it the `runtime.v1alpha2` CRI next to `runtime.v1` on one socket;
//! the same trial on containerd 1.6 for comparison.
//!
//! Each trial brings up its own runtime, network and kubelet and tears them
//! down even when it fails; a teardown that leaves anything behind fails the
//! trial. Without root the trials are reported as ignored ("needs root");
//! without the upstream binaries (`$UPSTREAM_K8S_BIN_DIR`) as ignored with
//! that reason, never as passed.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, ensure};
use e2e::harness::{
    self, BUSYBOX_HTTPD_IMAGE, BUSYBOX_IMAGE, DEADLINE, HTTPD_INDEX_TEXT, LogStream, RunningPod,
    list_containers, list_sandboxes, pod_log_path, read_cri_log, running_pod,
};
use e2e::upstream::{self, GC_DEADLINE, UpstreamNode, UpstreamRuntime, check_pod_running};
use libtest_mimic::{Arguments, Completion, Trial};

type TrialFn = fn() -> anyhow::Result<()>;

/// CNI network numbers of these trials (235-239 are this file's).
const CRI_SHIM_NETWORK: u32 = 235;
const CONTAINERD_NETWORK: u32 = 236;

const TRIALS: &[(&str, TrialFn)] = &[
    (
        "upstream_kubelet_1_20_runs_static_pods_on_cri_shim",
        on_cri_shim,
    ),
    (
        "upstream_kubelet_1_20_runs_static_pods_on_containerd",
        on_containerd,
    ),
];

fn main() {
    let args = Arguments::from_args();
    let root = harness::is_root();
    let binaries = upstream::bin_dir();
    if !root {
        eprintln!(
            "upstream_kubelet: not running as root (euid {}): the trials need root and are \
             reported as ignored",
            nix::unistd::geteuid()
        );
    } else if let Err(reason) = &binaries {
        eprintln!("upstream_kubelet: {reason}; the trials are reported as ignored");
    }
    let trials = TRIALS
        .iter()
        .map(|&(name, run)| trial(name, run, root, binaries.as_ref().err()))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// A trial that needs root and the upstream binaries: ignored with the
/// missing one as the reason, also when ignored trials are requested.
fn trial(name: &str, run: TrialFn, root: bool, missing_binaries: Option<&String>) -> Trial {
    let ignore_reason = if !root {
        Some("needs root".to_owned())
    } else {
        missing_binaries.cloned()
    };
    let reason = ignore_reason.clone();
    let trial = Trial::ignorable_test(name, move || {
        if let Some(reason) = &reason {
            return Ok(Completion::ignored_with(reason.clone()));
        }
        run()
            .map(|()| Completion::Completed)
            .map_err(|e| report(&e).into())
    });
    match ignore_reason {
        None => trial,
        Some(_) if !root => trial.with_ignored_flag(true).with_kind("needs root"),
        Some(_) => trial
            .with_ignored_flag(true)
            .with_kind("needs upstream binaries"),
    }
}

/// An error and its causes, one per line.
fn report(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let _ = write!(text, "\n  caused by: {cause}");
    }
    text
}

fn on_cri_shim() -> anyhow::Result<()> {
    on_upstream_node(UpstreamRuntime::CriShim, CRI_SHIM_NETWORK, static_pods_run)
}

fn on_containerd() -> anyhow::Result<()> {
    on_upstream_node(
        UpstreamRuntime::Containerd,
        CONTAINERD_NETWORK,
        static_pods_run,
    )
}

/// Brings up an upstream node, runs `body` against it and tears it down. A
/// failure report carries the logs; an unclean teardown fails the trial too.
fn on_upstream_node(
    runtime: UpstreamRuntime,
    network: u32,
    body: impl AsyncFnOnce(&UpstreamNode) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the trial's tokio runtime")?;
    tokio.block_on(async {
        let node = UpstreamNode::start(runtime, network)
            .await
            .context("bringing up the runtime and the upstream kubelet")?;
        let outcome = body(&node).await;
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

/// httpd and sh as PID 1 ignore SIGTERM: keep the kill short.
const GRACE_SECONDS: u32 = 2;

fn logger_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: logger
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  containers:
    - name: logger
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
"#
    )
}

fn web_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
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

/// The CRI id of the running container `name` of `pod`.
fn container_id<'a>(pod: &'a RunningPod, name: &str) -> anyhow::Result<&'a str> {
    pod.containers
        .iter()
        .find(|c| harness::container_name(c) == name)
        .map(|c| c.id.as_str())
        .with_context(|| format!("no running container {name} in sandbox {}", pod.sandbox_id))
}

/// Both static pods run (seen through the CRI and on the kubelet's read-only
/// `/pods`), serve and log; deleting one manifest removes that pod and
/// leaves the other running.
async fn static_pods_run(node: &UpstreamNode) -> anyhow::Result<()> {
    let kubelet = &node.kubelet;
    kubelet.write_manifest("logger.yaml", &logger_manifest())?;
    kubelet.write_manifest("web.yaml", &web_manifest())?;
    let logger_name = kubelet.pod_name("logger");
    let web_name = kubelet.pod_name("web");
    let mut cri = node.cri().await?;

    // Through the CRI: a ready sandbox with an IP, the container running.
    let logger = node
        .wait_until("the logger pod runs", DEADLINE, async || {
            running_pod(&mut cri, &logger_name, &["logger"]).await
        })
        .await?;
    let web = node
        .wait_until("the web pod runs", DEADLINE, async || {
            running_pod(&mut cri, &web_name, &["web"]).await
        })
        .await?;
    ensure!(
        logger.namespace == "default" && web.namespace == "default",
        "namespace labels {:?} and {:?}",
        logger.namespace,
        web.namespace
    );

    // Through the kubelet: /pods reports them Running, with the runtime's
    // container ids and the sandbox IPs.
    let logger_id = container_id(&logger, "logger")?;
    let web_id = container_id(&web, "web")?;
    for (pod_name, pod, container, id) in [
        (&logger_name, &logger, "logger", logger_id),
        (&web_name, &web, "web", web_id),
    ] {
        let what = format!("the kubelet's /pods reports {pod_name} running");
        node.wait_until(&what, DEADLINE, async || {
            let Some(reported) = kubelet.pod(pod_name)? else {
                return Ok(None);
            };
            check_pod_running(&reported, &[(container, id)])?;
            let pod_ip = reported["status"]["podIP"].as_str().unwrap_or_default();
            ensure!(
                pod_ip == pod.ip.to_string(),
                "/pods says podIP {pod_ip:?}, the sandbox has {}",
                pod.ip
            );
            ensure!(
                reported["metadata"]["uid"] == pod.uid.as_str(),
                "/pods says uid {}, the sandbox label {}",
                reported["metadata"]["uid"],
                pod.uid
            );
            Ok(Some(()))
        })
        .await?;
    }

    // The web server answers on its pod IP.
    let body = node
        .wait_until(
            &format!("http://{}/ answers", web.ip),
            DEADLINE,
            async || {
                let response = harness::http_get(web.ip, 80, "/", Duration::from_secs(3))?;
                ensure!(response.status == 200, "status {}", response.status);
                Ok(Some(response.body))
            },
        )
        .await?;
    ensure!(
        body.contains(HTTPD_INDEX_TEXT),
        "unexpected index page: {body:?}"
    );

    // Logs in /var/log/pods, in the CRI format, as the runtime writes them
    // for this kubelet.
    let logger_log = pod_log_path("default", &logger_name, &logger.uid, "logger", 0);
    node.wait_until(
        &format!("{} holds ticks", logger_log.display()),
        DEADLINE,
        async || {
            let lines = read_cri_log(&logger_log)?;
            let ticks: Vec<&str> = lines
                .iter()
                .filter(|l| l.stream == LogStream::Stdout && !l.partial)
                .map(|l| l.content.as_str())
                .filter(|content| content.starts_with("tick "))
                .collect();
            Ok((ticks.len() >= 2 && ticks[0] == "tick 0").then_some(()))
        },
    )
    .await?;
    let web_log = pod_log_path("default", &web_name, &web.uid, "web", 0);
    node.wait_until(
        &format!("httpd's request log reaches {}", web_log.display()),
        DEADLINE,
        async || {
            let logged = read_cri_log(&web_log)?.iter().any(|line| {
                line.stream == LogStream::Stderr && line.content.contains("response:200")
            });
            Ok(logged.then_some(()))
        },
    )
    .await?;

    // Deleting the manifest: the kubelet drops the pod and kills it at once ...
    kubelet.remove_manifest("logger.yaml")?;
    node.wait_until("the logger pod is killed", DEADLINE, async || {
        let listed = kubelet.pod(&logger_name)?.is_some();
        let running = running_pod(&mut cri, &logger_name, &[]).await?.is_some()
            || list_containers(&mut cri, Some(&logger_name))
                .await?
                .iter()
                .any(|c| c.state == k8s_cri::v1::ContainerState::ContainerRunning as i32);
        Ok((!listed && !running).then_some(()))
    })
    .await?;
    // ... and its garbage collector (once a minute) removes its containers,
    // sandbox and logs.
    node.wait_until(
        "the kubelet removed the logger pod's sandbox, containers and logs",
        GC_DEADLINE,
        async || {
            let sandboxes = list_sandboxes(&mut cri, Some(&logger_name)).await?;
            let containers = list_containers(&mut cri, Some(&logger_name)).await?;
            let log_dir = logger_log
                .parent()
                .and_then(|container_dir| container_dir.parent())
                .context("log path has no pod dir")?;
            Ok((sandboxes.is_empty() && containers.is_empty() && !log_dir.exists()).then_some(()))
        },
    )
    .await?;

    // The other pod was left alone.
    let still = running_pod(&mut cri, &web_name, &["web"])
        .await?
        .context("the web pod no longer runs")?;
    ensure!(
        container_id(&still, "web")? == web_id,
        "the web container was replaced"
    );
    Ok(())
}
