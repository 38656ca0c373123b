//! The kubelet's own cost, for the kubelet on its embedded cri-shim and on
//! containerd, side by side in one run:
//!
//! - static pod start latency, manifest written -> all containers running
//!   *and* `/pods` reporting the pod Running: `--sequential` pods one at a
//!   time (each left running) and `--concurrent` pods written at once,
//!   over `--rounds` rounds that alternate which path goes first;
//!   p50/p99 next to the runtime's own RunPodSandbox + CreateContainer +
//!   StartContainer time for the same pods (CRI calls from this process,
//!   without the kubelet), so the difference is what the kubelet adds;
//! - where a runtime runs in its own process (`cri-shim` as a standalone
//!   runtime, containerd), the kubelet reaches it through a recording proxy
//!   (`e2e::cri_tap`), and every pod's start through the kubelet is split
//!   within the same run: the runtime's own time for that pod's
//!   RunPodSandbox, CreateContainer and StartContainer, and the rest (what the kubelet
//!   adds: noticing the manifest, its own work and other CRI calls, and
//!   `/pods` showing Running). Unlike the comparison with the direct starts,
//!   this does not depend on how fast the saturated runtime happened to be
//!   in one round or the other;
//! - the kubelet process's RSS and CPU with the `--concurrent` pods running,
//!   idle, over `--idle-seconds`. On the embedded runtime the kubelet process
//!   also holds the cri-shim server (its per-container helpers are separate
//!   processes and not counted).
//!
//! Each phase starts on a quiet machine (see [`settle`]), and each burst
//! through the kubelet prints how long the kubelet's threads and this
//! process's own (the proxy on every CRI call's path, the `/pods` reader)
//! waited for a CPU, and the pods with the most kubelet adds step by step;
//! `--per-pod` prints each pod's steps in time.
//!
//! The kubelets log at `-v 0` (info, as in production) unless
//! `E2E_KUBELET_VERBOSITY` says otherwise; the tests' `-v 4` debug logs
//! would cost the measured process CPU.
//!
//! `kubelet-bench [--sequential 50] [--concurrent 110] [--idle-seconds 30]
//! [--runtime embedded,cri-shim,containerd] [--poll-ms 5] [--rounds 3]
//! [--per-pod]`;
//! needs root.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use clap::{Parser, ValueEnum};
use e2e::bench::{memory_kib, percentile, start_pod, stop_pod};
use e2e::cri_tap::{TimedCall, TimedMethod};
use e2e::harness::{self, CriClient, Node, RuntimeKind};

#[derive(Parser)]
struct Args {
    /// Pods started one at a time.
    #[arg(long, default_value_t = 50)]
    sequential: usize,
    /// Pods written at once (then measured idle).
    #[arg(long, default_value_t = 110)]
    concurrent: usize,
    /// Idle period for the CPU figure.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Which runtimes to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "embedded,cri-shim,containerd"
    )]
    runtime: Vec<Which>,
    /// How often `/pods` is read while pods start, in ms. A pod is timed
    /// Running when the answer of the first read that shows it began to
    /// arrive (the kubelet had made it by then), so up to one period plus
    /// one answer late. Every read makes the kubelet copy out
    /// every pod (serialised once per status change) and this process
    /// parse them: on a 2-core machine reading much more often slows the
    /// start being measured (at 5 ms the kubelet's CPU per start did not
    /// grow).
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Rounds of the concurrent comparison. Under a saturated runtime one
    /// round's p99 varies by a second from run to run, so rounds alternate
    /// which path goes first and the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print each pod's steps in the phases through the kubelet (manifest
    /// written, listed by the kubelet, RunPodSandbox sent, shown Running),
    /// in ms from the phase's first manifest written: where a burst waited.
    #[arg(long)]
    per_pod: bool,
    /// Copy each kubelet's log into this directory (to see where the time went).
    #[arg(long)]
    keep_log: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// The kubelet's embedded cri-shim.
    Embedded,
    /// cri-shim in its own process, behind the recording proxy.
    CriShim,
    /// containerd 1.6, behind the recording proxy.
    Containerd,
}

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: docker.io/library/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sleep\", \"3600\"]\n"
    )
}

/// The fields of `/pods` the benchmark reads; the rest is skipped unparsed.
#[derive(serde::Deserialize)]
struct PodList {
    items: Vec<ListedPod>,
}

#[derive(serde::Deserialize)]
struct ListedPod {
    metadata: ListedMeta,
    #[serde(default)]
    status: Option<ListedStatus>,
}

#[derive(serde::Deserialize)]
struct ListedMeta {
    name: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct ListedStatus {
    #[serde(default)]
    phase: Option<String>,
}

/// Pods reported Running: their names and when the kubelet first listed
/// their manifests (`config.seen`).
type RunningPods = Vec<(String, Option<SystemTime>)>;

/// The pods `/pods` reports Running, read on a blocking thread: the read
/// waits on the kubelet, and must not hold up the recording proxy, which
/// shares this process's async workers.
async fn running_pods(node: &Node) -> anyhow::Result<Vec<String>> {
    let port = node.kubelet.read_only_port;
    let running = tokio::task::spawn_blocking(move || running_pods_at(port)).await??;
    Ok(running.into_iter().map(|(name, _)| name).collect())
}

/// The pods the read-only server on `port` reports Running: their names
/// and when the kubelet first listed their manifests (`config.seen`).
fn running_pods_at(port: u16) -> anyhow::Result<RunningPods> {
    Ok(PodsReader::new(port).running()?.0)
}

/// `GET /pods` on one HTTP/1.1 connection kept open from read to read.
/// A new connection per read (about 200 a second while pods start) can
/// wait a second for a SYN retransmission; this opens one again only when
/// the server closed the last.
struct PodsReader {
    port: u16,
    connection: Option<BufReader<TcpStream>>,
}

impl PodsReader {
    fn new(port: u16) -> Self {
        Self {
            port,
            connection: None,
        }
    }

    /// The pods reported Running: their names and when the kubelet first
    /// listed their manifests (`config.seen`); and when the answer began
    /// to arrive.
    fn running(&mut self) -> anyhow::Result<(RunningPods, Instant)> {
        let (body, answered) = match self.get() {
            Ok(got) => got,
            // The server may have closed the connection: once more on a new one.
            Err(_) => {
                self.connection = None;
                self.get()?
            }
        };
        Ok((running_in(&body)?, answered))
    }

    /// The body of `GET /pods`, and when its answer's first line arrived:
    /// the kubelet had made the whole answer by then.
    fn get(&mut self) -> anyhow::Result<(String, Instant)> {
        let port = self.port;
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.set_nodelay(true)?;
                self.connection.insert(BufReader::new(stream))
            }
        };
        connection.get_mut().write_all(
            format!("GET /pods HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
        )?;
        let mut status = String::new();
        connection.read_line(&mut status)?;
        let answered = Instant::now();
        ensure!(status.starts_with("HTTP/1.1 200"), "GET /pods: {status:?}");
        let mut length = None;
        loop {
            let mut line = String::new();
            ensure!(
                connection.read_line(&mut line)? > 0,
                "GET /pods: the connection closed"
            );
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("GET /pods: no Content-Length")?];
        connection.read_exact(&mut body)?;
        Ok((String::from_utf8(body)?, answered))
    }
}

/// The pods a `/pods` answer reports Running: their names and when the
/// kubelet first listed their manifests (`config.seen`).
fn running_in(body: &str) -> anyhow::Result<RunningPods> {
    let list: PodList = serde_json::from_str(body).context("GET /pods")?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Running")
        })
        .map(|p| {
            let seen = p
                .metadata
                .annotations
                .get("kubernetes.io/config.seen")
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .map(SystemTime::from);
            (p.metadata.name, seen)
        })
        .collect())
}

/// Per pod name, when the kubelet published the status that first showed
/// it running: the `observedRunningTime` of its `Observed pod startup
/// duration` lines in `log` (static pods in `default`).
fn published_running(log: &str) -> HashMap<String, SystemTime> {
    let field = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_owned())
    };
    log.lines()
        .filter(|line| line.contains("Observed pod startup duration"))
        .filter_map(|line| {
            let pod = field(line, "pod")?;
            let at =
                chrono::DateTime::parse_from_rfc3339(&field(line, "observedRunningTime")?).ok()?;
            Some((
                pod.strip_prefix("default/")?.to_owned(),
                SystemTime::from(at),
            ))
        })
        .collect()
}

/// One static pod's start through the kubelet.
#[derive(Clone)]
struct Started {
    /// The pod's name (`<manifest name>-<node>`).
    pod: String,
    /// When its manifest was written.
    written: Instant,
    /// From the manifest written until the kubelet listed it (its
    /// `config.seen`, by the wall clock).
    noticed: Option<Duration>,
    /// When the answer of the first `/pods` read that reported it Running
    /// began to arrive.
    running: Instant,
    /// From the manifest written until the kubelet published the status
    /// that shows it running (its log's `observedRunningTime`, by the wall
    /// clock): Running without this process's polling.
    published: Option<Duration>,
}

impl Started {
    fn latency(&self) -> Duration {
        self.running - self.written
    }
}

/// The static pods started by [`start_static_pods`].
struct StaticStarts {
    started: Vec<Started>,
    /// Per `/pods` read after the first: from the previous read's request
    /// to the start of this read's answer, in ms. A pod this read first
    /// shows Running became Running within that span, and is timed at its
    /// end.
    windows: Vec<f64>,
    /// Per `/pods` read: from its request to the start of its answer, in
    /// ms (the kubelet's share of a window; the rest is this process
    /// parsing, sleeping `poll` and waking).
    answers: Vec<f64>,
}

/// Writes the manifests of `names` at once and returns, per pod, when its
/// manifest was written and when `/pods` first reported it Running.
///
/// `/pods` is read every `poll` on one blocking thread for the whole phase:
/// a read then waits neither for a hand-off to a blocking thread nor for a
/// timer on the async workers, which the recording proxy keeps busy while
/// many pods start, so a pod's Running is timed closer to when it happened.
async fn start_static_pods(
    node: &Node,
    names: &[String],
    poll: Duration,
) -> anyhow::Result<StaticStarts> {
    let t0 = Instant::now();
    // The kubelet's log from here on has these pods' startup records.
    let log_path = node.kubelet.log_path.clone();
    let log_from = std::fs::metadata(&log_path)?.len();
    let mut pending = Vec::with_capacity(names.len());
    for name in names {
        node.kubelet
            .write_manifest(&format!("{name}.yaml"), &manifest(name))?;
        pending.push((
            node.kubelet.pod_name(name),
            Instant::now(),
            SystemTime::now(),
        ));
    }
    let port = node.kubelet.read_only_port;
    tokio::task::spawn_blocking(move || {
        let mut started = Vec::with_capacity(pending.len());
        let mut windows = Vec::new();
        let mut answers = Vec::new();
        let mut previous_request: Option<Instant> = None;
        let mut reader = PodsReader::new(port);
        while !pending.is_empty() {
            ensure!(
                t0.elapsed() < Duration::from_secs(300),
                "pods did not start: {pending:?}"
            );
            let request = Instant::now();
            let (running, answered) = reader.running()?;
            if let Some(previous) = previous_request.replace(request) {
                windows.push(ms(answered - previous));
            }
            answers.push(ms(answered - request));
            pending.retain(|(pod, written, written_at)| {
                let Some((_, seen)) = running.iter().find(|(name, _)| name == pod) else {
                    return true;
                };
                started.push((
                    Started {
                        pod: pod.clone(),
                        written: *written,
                        noticed: seen.and_then(|seen| seen.duration_since(*written_at).ok()),
                        running: answered,
                        published: None,
                    },
                    *written_at,
                ));
                false
            });
            std::thread::sleep(poll);
        }
        // The record is logged right after the status is published; wait
        // briefly for the last ones.
        let deadline = Instant::now() + Duration::from_secs(2);
        let published = loop {
            let mut log = std::fs::File::open(&log_path)?;
            std::io::Seek::seek(&mut log, std::io::SeekFrom::Start(log_from))?;
            let mut text = String::new();
            log.read_to_string(&mut text)?;
            let published = published_running(&text);
            if started.iter().all(|(p, _)| published.contains_key(&p.pod))
                || Instant::now() > deadline
            {
                break published;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let started = started
            .into_iter()
            .map(|(mut pod, written_at)| {
                pod.published = published
                    .get(&pod.pod)
                    .and_then(|at| at.duration_since(written_at).ok());
                pod
            })
            .collect();
        Ok(StaticStarts {
            started,
            windows,
            answers,
        })
    })
    .await?
}

/// Per pod through the kubelet, in ms, from the recording proxy's timings.
#[derive(Default)]
struct Breakdown {
    /// Manifest written -> `/pods` Running.
    total: Vec<f64>,
    /// The runtime's RunPodSandbox + CreateContainer + StartContainer.
    runtime: Vec<f64>,
    /// `total - runtime`.
    adds: Vec<f64>,
    /// The same with the pod timed Running when the kubelet published its
    /// status ([`Started::published`]), not when `/pods` was next read.
    published_adds: Vec<f64>,
    /// StartContainer answered -> the kubelet published the status.
    start_to_published: Vec<f64>,
    /// Manifest written -> RunPodSandbox sent.
    before_sandbox: Vec<f64>,
    /// Of that, manifest written -> the kubelet lists it (`config.seen`).
    noticed: Vec<f64>,
    /// StartContainer answered -> `/pods` Running.
    after_start: Vec<f64>,
    /// RunPodSandbox answered -> CreateContainer sent.
    sandbox_to_create: Vec<f64>,
    /// Of that, PodSandboxStatus calls of the pod's sandbox.
    sandbox_status: Vec<f64>,
    /// CreateContainer answered -> StartContainer sent.
    create_to_start: Vec<f64>,
    /// Of StartContainer answered -> `/pods` Running, ContainerStatus calls
    /// of the pod's container.
    container_status: Vec<f64>,
    /// CRI calls per pod start, by method (the whole phase's calls), with
    /// their p50 and p99 durations in ms.
    calls_per_pod: Vec<(String, f64, f64, f64)>,
    /// `Version` calls every 20 ms on a connection of their own, straight to
    /// the runtime, during the phase: how fast the runtime answers a call
    /// that does nothing, in ms.
    probe: Vec<f64>,
    /// The spans within which a pod shown Running by `/pods` became
    /// Running, in ms ([`StaticStarts::windows`]): how finely Running is
    /// timed.
    windows: Vec<f64>,
    /// How long the kubelet took to begin answering each of those reads,
    /// in ms ([`StaticStarts::answers`]).
    answers: Vec<f64>,
    /// The kubelet's threads during the phase, per kind: how long they
    /// waited for a CPU (ms), and how many times they ran.
    kubelet_waited: Vec<(String, f64, u64)>,
    /// The same for this process's threads: the recording proxy, on the
    /// path of every CRI call the kubelet makes, and the `/pods` reader.
    bench_waited: Vec<(String, f64, u64)>,
    /// CPU seconds used during the phase by the kubelet process and by
    /// this one (the proxy, the `/pods` reads, the probe).
    cpu_used: (f64, f64),
    /// Each pod's steps, in ms from the phase's first manifest written
    /// (printed with `--per-pod`).
    timeline: Vec<PodTimeline>,
}

/// When one pod's steps happened, in ms from the first manifest of its
/// phase written.
struct PodTimeline {
    pod: String,
    written: f64,
    /// When the kubelet listed its manifest (`config.seen`).
    listed: Option<f64>,
    /// When the proxy saw its RunPodSandbox.
    sandbox_sent: f64,
    /// When `/pods` first showed it Running.
    running: f64,
    /// What the kubelet added to this pod's start ([`Breakdown::adds`]),
    /// and the steps that make it up.
    adds: f64,
    /// [`Breakdown::published_adds`] of this pod.
    published_adds: Option<f64>,
    steps: KubeletSteps,
}

/// The kubelet's share of one pod's start, step by step, in ms: together
/// they are its `adds` (the runtime's three calls run one after another
/// between them).
struct KubeletSteps {
    /// Manifest written -> the kubelet listed it (`None` without a
    /// `config.seen`; then `to_sandbox` counts from the manifest written).
    listing: Option<f64>,
    /// -> RunPodSandbox sent.
    to_sandbox: f64,
    /// RunPodSandbox answered -> CreateContainer sent.
    sandbox_to_create: f64,
    /// CreateContainer answered -> StartContainer sent.
    create_to_start: f64,
    /// StartContainer answered -> `/pods` showed it Running.
    start_to_running: f64,
    /// StartContainer answered -> the kubelet published the status (in
    /// place of `start_to_running` in [`PodTimeline::published_adds`]).
    start_to_published: Option<f64>,
}

/// Calls `Version` on the runtime at `endpoint` every 20 ms, on a connection
/// of its own, until `stop`; how long each took.
async fn probe_runtime(endpoint: String, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<Duration>> {
    let mut cri = harness::cri_client(&endpoint).await?;
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        cri.version(k8s_cri::v1::VersionRequest::default()).await?;
        took.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(took)
}

fn breakdown(
    started: &[Started],
    timed: &[TimedCall],
    calls: &HashMap<String, Vec<Duration>>,
) -> anyhow::Result<Breakdown> {
    let mut by_pod: HashMap<&str, Vec<&TimedCall>> = HashMap::new();
    for call in timed {
        by_pod.entry(call.pod.as_str()).or_default().push(call);
    }
    let mut out = Breakdown::default();
    // Offsets in the phase are from its first manifest written.
    let first_written = started.iter().map(|p| p.written).min();
    for pod in started {
        let calls = by_pod
            .get(pod.pod.as_str())
            .with_context(|| format!("the proxy saw no start of {}", pod.pod))?;
        let first = |method| {
            calls
                .iter()
                .find(|c| c.method == method)
                .with_context(|| format!("the proxy saw no {method:?} of {}", pod.pod))
        };
        let (sandbox, create, start) = (
            first(TimedMethod::RunPodSandbox)?,
            first(TimedMethod::CreateContainer)?,
            first(TimedMethod::StartContainer)?,
        );
        // The time of the pod's `method` calls that began in [from, to).
        let within = |method, from: Instant, to: Instant| -> f64 {
            calls
                .iter()
                .filter(|c| c.method == method && c.start >= from && c.start < to)
                .map(|c| ms(c.end - c.start))
                .sum()
        };
        let total = ms(pod.latency());
        let runtime: f64 = calls
            .iter()
            .filter(|c| c.method.makes())
            .map(|c| ms(c.end - c.start))
            .sum();
        let before_sandbox = ms(sandbox.start.saturating_duration_since(pod.written));
        let listing = pod.noticed.map(ms);
        let steps = KubeletSteps {
            listing,
            to_sandbox: before_sandbox - listing.unwrap_or(0.0).min(before_sandbox),
            sandbox_to_create: ms(create.start.saturating_duration_since(sandbox.end)),
            create_to_start: ms(start.start.saturating_duration_since(create.end)),
            start_to_running: ms(pod.running.saturating_duration_since(start.end)),
            // The wall clock's span since the manifest was written, laid on
            // the monotonic clock.
            start_to_published: pod
                .published
                .map(|p| ms((pod.written + p).saturating_duration_since(start.end))),
        };
        out.total.push(total);
        out.runtime.push(runtime);
        out.adds.push(total - runtime);
        let published_adds = pod.published.map(|p| ms(p) - runtime);
        out.published_adds.extend(published_adds);
        out.start_to_published.extend(steps.start_to_published);
        out.before_sandbox.push(before_sandbox);
        out.noticed.extend(listing);
        out.after_start.push(steps.start_to_running);
        out.sandbox_to_create.push(steps.sandbox_to_create);
        out.sandbox_status.push(within(
            TimedMethod::PodSandboxStatus,
            sandbox.end,
            create.start,
        ));
        out.create_to_start.push(steps.create_to_start);
        out.container_status
            .push(within(TimedMethod::ContainerStatus, start.end, pod.running));
        let since_first =
            |at: Instant| ms(at.saturating_duration_since(first_written.unwrap_or(at)));
        out.timeline.push(PodTimeline {
            pod: pod.pod.clone(),
            written: since_first(pod.written),
            listed: listing.map(|n| since_first(pod.written) + n),
            sandbox_sent: since_first(sandbox.start),
            running: since_first(pod.running),
            adds: total - runtime,
            published_adds,
            steps,
        });
    }
    let mut per_method: Vec<(String, f64, f64, f64)> = calls
        .iter()
        .map(|(path, took)| {
            let method = path.rsplit('/').next().unwrap_or(path).to_owned();
            let mut took: Vec<f64> = took.iter().map(|d| ms(*d)).collect();
            took.sort_by(f64::total_cmp);
            let per_pod = took.len() as f64 / started.len().max(1) as f64;
            (method, per_pod, pct(&took, 0.5), pct(&took, 0.99))
        })
        .collect();
    per_method.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.calls_per_pod = per_method;
    Ok(out)
}

async fn remove_all(node: &Node, cri: &mut CriClient, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        node.kubelet.remove_manifest(&format!("{name}.yaml"))?;
    }
    // Gone from the runtime, and torn down by the kubelet (its pod
    // directories removed): the next phase starts with no teardown (a
    // mount table read, a directory tree removed, per pod) running beside
    // it.
    let pod_dirs = node.kubelet.root_dir.join("pods");
    harness::wait_until(
        "every pod is gone",
        Duration::from_secs(300),
        Duration::from_millis(100),
        async || {
            let left = harness::list_sandboxes(cri, None).await?;
            let dirs_left = match std::fs::read_dir(&pod_dirs) {
                Ok(mut entries) => entries.next().is_some(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            Ok((left.is_empty() && !dirs_left).then_some(()))
        },
    )
    .await
}

/// Direct CRI starts of `count` pods, `parallel` at a time: per-pod times.
async fn direct_starts(
    endpoint: &str,
    log_dir: &std::path::Path,
    prefix: &str,
    count: usize,
    concurrent: bool,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(count);
    let mut sandboxes = Vec::with_capacity(count);
    if concurrent {
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let endpoint = endpoint.to_owned();
            let log_dir = log_dir.to_owned();
            let name = format!("{prefix}{i}");
            tasks.spawn(async move {
                let mut cri = harness::cri_client(&endpoint).await?;
                let id = start_pod(&mut cri, &name, &log_dir).await?;
                anyhow::Ok((id, t0.elapsed()))
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (id, elapsed) = joined??;
            sandboxes.push(id);
            samples.push(elapsed);
        }
    } else {
        let mut cri = harness::cri_client(endpoint).await?;
        for i in 0..count {
            let t0 = Instant::now();
            sandboxes.push(start_pod(&mut cri, &format!("{prefix}{i}"), log_dir).await?);
            samples.push(t0.elapsed());
        }
    }
    let mut cri = harness::cri_client(endpoint).await?;
    for id in &sandboxes {
        stop_pod(&mut cri, id).await?;
    }
    Ok(samples)
}

/// The machine's CPU time so far, in clock ticks, from the `cpu` line of
/// `/proc/stat`: (busy, counted). Busy is user, nice, system, irq and
/// softirq; counted adds idle and iowait. Steal (time the hypervisor gave
/// to others) is in neither.
fn machine_cpu_ticks(stat: &str) -> anyhow::Result<(u64, u64)> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(ticks.len() >= 7, "malformed cpu line: {line:?}");
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6];
    Ok((busy, busy + ticks[3] + ticks[4]))
}

/// How long a phase waits at most for a quiet machine.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Quiet: the CPUs busy less than this share of the time, in each of two
/// windows of [`SETTLE_WINDOW`] in a row.
const QUIET_BUSY: f64 = 0.10;
const SETTLE_WINDOW: Duration = Duration::from_millis(250);

/// Waits until the machine is quiet ([`QUIET_BUSY`]) or [`SETTLE_LIMIT`]
/// has passed, so that no phase starts while the previous one's work still
/// runs: a runtime may go on removing what its RemovePodSandbox calls left
/// (containerd collects snapshots and content in the background), and the
/// kernel frees cgroups and network namespaces late. Returns the time
/// waited and the busy share of the last window.
async fn settle() -> anyhow::Result<(Duration, f64)> {
    let t0 = Instant::now();
    let mut quiet_windows = 0;
    let mut last = machine_cpu_ticks(&std::fs::read_to_string("/proc/stat")?)?;
    loop {
        tokio::time::sleep(SETTLE_WINDOW).await;
        let now = machine_cpu_ticks(&std::fs::read_to_string("/proc/stat")?)?;
        let busy = (now.0 - last.0) as f64 / ((now.1 - last.1) as f64).max(1.0);
        last = now;
        quiet_windows = if busy < QUIET_BUSY {
            quiet_windows + 1
        } else {
            0
        };
        if quiet_windows >= 2 || t0.elapsed() >= SETTLE_LIMIT {
            return Ok((t0.elapsed(), busy));
        }
    }
}

/// [`settle`], said on stderr when it took more than its two windows.
async fn settle_before(runtime: &str, phase: &str) -> anyhow::Result<()> {
    let (waited, busy) = settle().await?;
    if waited > SETTLE_WINDOW * 3 {
        eprintln!(
            "{runtime}: {phase} waited {:.1} s for a quiet machine ({:.0} % busy at the end)",
            waited.as_secs_f64(),
            busy * 100.0
        );
    }
    Ok(())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("malformed stat")?
        .1
        .split(' ')
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

/// Per thread of process `pid`: its name, the time it spent waiting on a
/// run queue (runnable, not running) and how many times it ran, from
/// `/proc/<pid>/task/<tid>/{comm,schedstat}` (`run_delay` in ns, `pcount`).
fn run_queue_waits(pid: u32) -> anyhow::Result<HashMap<u32, (String, u64, u64)>> {
    let mut waits = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A thread that exited since the listing is left out.
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(entry.path().join("comm")),
            std::fs::read_to_string(entry.path().join("schedstat")),
        ) else {
            continue;
        };
        let fields: Vec<u64> = stat
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        ensure!(fields.len() >= 3, "malformed schedstat: {stat:?}");
        // One name per kind of thread: `pod-files-0` and `pod-files-1` are
        // `pod-files`.
        let name = name.trim_end();
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit());
        let kind = kind.strip_suffix('-').unwrap_or(name);
        waits.insert(tid, (kind.to_owned(), fields[1], fields[2]));
    }
    Ok(waits)
}

/// What the threads of a process waited for a CPU between two
/// [`run_queue_waits`]: per kind of thread, most first, (name, ms, times
/// they ran). A thread that exited in between is left out; one that started
/// counts from zero.
fn waited_between(
    before: &HashMap<u32, (String, u64, u64)>,
    after: &HashMap<u32, (String, u64, u64)>,
) -> Vec<(String, f64, u64)> {
    let mut by_kind: HashMap<&str, (u64, u64)> = HashMap::new();
    for (tid, (kind, delay, count)) in after {
        let (delay_before, count_before) = before
            .get(tid)
            .map_or((0, 0), |(_, delay, count)| (*delay, *count));
        let sum = by_kind.entry(kind).or_default();
        sum.0 += delay.saturating_sub(delay_before);
        sum.1 += count.saturating_sub(count_before);
    }
    let mut waited: Vec<(String, f64, u64)> = by_kind
        .into_iter()
        .map(|(kind, (delay, runs))| (kind.to_owned(), delay as f64 / 1e6, runs))
        .collect();
    waited.sort_by(|a, b| b.1.total_cmp(&a.1));
    waited
}

struct Figures {
    label: &'static str,
    direct_sequential: Vec<Duration>,
    kubelet_sequential: Vec<Duration>,
    direct_concurrent: Vec<Duration>,
    kubelet_concurrent: Vec<Duration>,
    /// Every concurrent round: (direct, through the kubelet).
    concurrent_rounds: Vec<(Vec<Duration>, Vec<Duration>)>,
    rss_mib: f64,
    cpu_cores: f64,
    /// CPU seconds of the kubelet process while the concurrent pods
    /// started: (direct CRI starts and stops, through the kubelet).
    start_cpu: (f64, f64),
    /// Per-pod splits of the kubelet phases (runtime behind the proxy).
    breakdowns: Vec<(String, Breakdown)>,
}

fn latencies(started: &[Started]) -> Vec<Duration> {
    started.iter().map(Started::latency).collect()
}

/// The proxy's timings since the last call, split per pod of `started`
/// (`None` without a proxy).
fn split(node: &Node, started: &[Started]) -> anyhow::Result<Option<Breakdown>> {
    let Some(tap) = &node.tap else {
        return Ok(None);
    };
    let (timed, calls) = tap.take();
    breakdown(started, &timed, &calls).map(Some)
}

async fn measure(kind: Which, label: &'static str, args: &Args) -> anyhow::Result<Figures> {
    let node = match kind {
        Which::Embedded => Node::start(RuntimeKind::Embedded).await,
        Which::CriShim => Node::start_tapped(RuntimeKind::CriShimProcess).await,
        Which::Containerd => Node::start_tapped(RuntimeKind::Containerd).await,
    }
    .context("starting the test node")?;
    // The direct starts go through the proxy too, where there is one, so
    // both paths pay its hop.
    let endpoint = node
        .tap
        .as_ref()
        .map_or(node.kubelet.endpoint.clone(), |t| t.endpoint.clone());
    let endpoint = endpoint.as_str();
    let mut cri = harness::cri_client(&node.kubelet.endpoint).await?;
    let log_dir = node.kubelet.root_dir.join("bench-logs");
    let poll = Duration::from_millis(args.poll_ms);
    let mut breakdowns = Vec::new();

    // Warm-up through both paths.
    direct_starts(endpoint, &log_dir, "warm", 1, false).await?;
    let warm = vec!["warm".to_owned()];
    start_static_pods(&node, &warm, poll).await?;
    remove_all(&node, &mut cri, &warm).await?;

    settle_before(label, "sequential, direct").await?;
    let direct_sequential =
        direct_starts(endpoint, &log_dir, "seq", args.sequential, false).await?;
    let mut started = Vec::with_capacity(args.sequential);
    let sequential: Vec<String> = (0..args.sequential).map(|i| format!("seq{i}")).collect();
    settle_before(label, "sequential, through the kubelet").await?;
    split(&node, &[])?;
    for name in &sequential {
        started.extend(
            start_static_pods(&node, std::slice::from_ref(name), poll)
                .await?
                .started,
        );
    }
    if let Some(split) = split(&node, &started)?
        && !started.is_empty()
    {
        breakdowns.push((format!("sequential ({})", args.sequential), split));
    }
    let kubelet_sequential = latencies(&started);
    remove_all(&node, &mut cri, &sequential).await?;

    let pid = node.kubelet.pid().context("the kubelet is not running")?;
    let rounds = args.rounds.max(1);
    let mut concurrent_rounds = Vec::with_capacity(rounds);
    let (mut cpu_direct, mut cpu_kubelet) = (0.0, 0.0);
    let mut concurrent = Vec::new();
    for round in 0..rounds {
        // Fresh names each round: a static pod of the same name and content
        // would wait for the previous one's worker to finish.
        concurrent = (0..args.concurrent)
            .map(|i| format!("con{round}x{i}"))
            .collect();
        let mut direct = Vec::new();
        let mut through_kubelet = Vec::new();
        for kubelet_first in [round % 2 == 1, round % 2 == 0] {
            if kubelet_first {
                settle_before(label, &format!("round {round}, through the kubelet")).await?;
                split(&node, &[])?;
                let cpu_before = cpu_seconds(pid)?;
                let bench_cpu_before = cpu_seconds(std::process::id())?;
                let waits_before = run_queue_waits(pid)?;
                let bench_waits_before = run_queue_waits(std::process::id())?;
                let stop = Arc::new(AtomicBool::new(false));
                let probe =
                    tokio::spawn(probe_runtime(node.kubelet.endpoint.clone(), stop.clone()));
                let started = start_static_pods(&node, &concurrent, poll).await;
                stop.store(true, Ordering::Relaxed);
                let probe = probe.await??;
                let StaticStarts {
                    started,
                    windows,
                    answers,
                } = started?;
                cpu_kubelet = cpu_seconds(pid)? - cpu_before;
                let cpu_bench = cpu_seconds(std::process::id())? - bench_cpu_before;
                let waited = waited_between(&waits_before, &run_queue_waits(pid)?);
                let bench_waited =
                    waited_between(&bench_waits_before, &run_queue_waits(std::process::id())?);
                if let Some(mut split) = split(&node, &started)? {
                    split.probe = probe.iter().copied().map(ms).collect();
                    split.windows = windows;
                    split.answers = answers;
                    split.kubelet_waited = waited;
                    split.bench_waited = bench_waited;
                    split.cpu_used = (cpu_kubelet, cpu_bench);
                    breakdowns.push((format!("{} at once, round {round}", args.concurrent), split));
                }
                through_kubelet = latencies(&started);
                if round + 1 < rounds {
                    remove_all(&node, &mut cri, &concurrent).await?;
                }
            } else {
                // The direct phase also stops its pods; only starts are compared.
                settle_before(label, &format!("round {round}, direct")).await?;
                let cpu_before = cpu_seconds(pid)?;
                direct = direct_starts(
                    endpoint,
                    &log_dir,
                    &format!("d{round}x"),
                    args.concurrent,
                    true,
                )
                .await?;
                cpu_direct = cpu_seconds(pid)? - cpu_before;
            }
        }
        concurrent_rounds.push((direct, through_kubelet));
    }
    let (direct_concurrent, kubelet_concurrent) =
        concurrent_rounds.last().cloned().unwrap_or_default();

    // Idle with every pod running.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_before = cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let cpu_cores = (cpu_seconds(pid)? - cpu_before) / t0.elapsed().as_secs_f64();
    let (rss_kib, _) = memory_kib(pid);
    let running = running_pods(&node).await?;
    let stopped: Vec<String> = concurrent
        .iter()
        .map(|name| node.kubelet.pod_name(name))
        .filter(|pod| !running.contains(pod))
        .collect();
    // Kept before anything can fail, so a failed run's log is kept too.
    if let Some(dir) = &args.keep_log {
        std::fs::create_dir_all(dir)?;
        let copy = dir.join(format!("kubelet-{}.log", label.replace(' ', "-")));
        std::fs::copy(&node.kubelet.log_path, &copy)
            .with_context(|| format!("copying the kubelet log to {}", copy.display()))?;
    }
    ensure!(
        stopped.is_empty(),
        "{} of {} pods were no longer Running after the idle period: {stopped:?}",
        stopped.len(),
        concurrent.len()
    );
    remove_all(&node, &mut cri, &concurrent).await?;
    node.shutdown_with_logs().await.0?;
    Ok(Figures {
        label,
        direct_sequential,
        kubelet_sequential,
        direct_concurrent,
        kubelet_concurrent,
        concurrent_rounds,
        rss_mib: rss_kib as f64 / 1024.0,
        cpu_cores,
        start_cpu: (cpu_direct, cpu_kubelet),
        breakdowns,
    })
}

/// `d` in milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile of sorted values, nearest rank (NaN if empty).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Table cells of each column's p50/p99 (the columns are sorted).
fn p50_p99_cells<const N: usize>(columns: [&mut Vec<f64>; N]) -> String {
    columns
        .into_iter()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            format!("{:>7.1}/{:<7.1}", pct(v, 0.5), pct(v, 0.99))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn quantiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    (ms(percentile(samples, 0.5)), ms(percentile(samples, 0.99)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        harness::is_root(),
        "kubelet-bench needs root (runc, network namespaces, CNI)"
    );
    let kinds: Vec<(Which, &str)> = args
        .runtime
        .iter()
        .map(|&kind| match kind {
            Which::Embedded => (kind, "embedded cri-shim"),
            Which::CriShim => (kind, "cri-shim process"),
            Which::Containerd => (kind, "containerd 1.6"),
        })
        .collect();
    if std::env::var_os(harness::KUBELET_VERBOSITY_ENV).is_none() {
        // SAFETY: no other thread runs yet (the tokio runtime is made
        // below), so nothing reads the environment concurrently.
        unsafe { std::env::set_var(harness::KUBELET_VERBOSITY_ENV, "0") };
    }
    // The measuring threads (the proxy, the `/pods` reader) run at the
    // daemons' priority, so a busy host delays what is measured, not the
    // measuring; containerd is started at the default priority.
    cri_shim::tuning::raise_thread_priority().context("raising the bench's CPU priority")?;
    let rt = cri_shim::tuning::daemon_runtime()?;
    let mut all = Vec::new();
    for (kind, label) in kinds {
        all.push(rt.block_on(measure(kind, label, &args))?);
    }
    println!(
        "pod start: CRI calls alone vs static pod through the kubelet (manifest -> /pods Running), ms"
    );
    println!(
        "{:<18} {:<22} {:>8} {:>8} {:>14}",
        "runtime", "", "p50", "p99", "kubelet adds p99"
    );
    for f in &mut all {
        for (what, direct, kubelet, count) in [
            (
                "sequential",
                &mut f.direct_sequential,
                &mut f.kubelet_sequential,
                args.sequential,
            ),
            (
                "concurrent",
                &mut f.direct_concurrent,
                &mut f.kubelet_concurrent,
                args.concurrent,
            ),
        ] {
            if count == 0 {
                continue;
            }
            let (d50, d99) = quantiles(direct);
            let (k50, k99) = quantiles(kubelet);
            println!(
                "{:<18} {:<22} {:>8.1} {:>8.1}",
                f.label,
                format!("CRI {what} ({count})"),
                d50,
                d99
            );
            println!(
                "{:<18} {:<22} {:>8.1} {:>8.1} {:>14.1}",
                f.label,
                format!("kubelet {what} ({count})"),
                k50,
                k99,
                k99 - d99
            );
        }
    }
    println!(
        "\n{} pods at once, {} rounds (alternating which path goes first), ms",
        args.concurrent, args.rounds
    );
    for f in &mut all {
        let mut adds = Vec::new();
        for (round, (direct, kubelet)) in f.concurrent_rounds.iter_mut().enumerate() {
            let (d50, d99) = quantiles(direct);
            let (k50, k99) = quantiles(kubelet);
            adds.push(k99 - d99);
            println!(
                "{:<18} round {round}: CRI p50/p99 {d50:>7.1}/{d99:>7.1}  kubelet p50/p99 {k50:>7.1}/{k99:>7.1}  adds p99 {:>7.1}",
                f.label,
                k99 - d99
            );
        }
        adds.sort_by(f64::total_cmp);
        if let Some(median) = adds.get(adds.len() / 2) {
            println!(
                "{:<18} median round: kubelet adds {median:.1} ms p99",
                f.label
            );
        }
    }
    println!("\nper pod through the kubelet, runtime behind the recording proxy: p50/p99 ms");
    println!(
        "{:<18} {:<24} {:>15} {:>15} {:>15} {:>15} {:>15} {:>15} {:>15}",
        "runtime",
        "",
        "manifest->Running",
        "runtime's 3 calls",
        "kubelet adds",
        "adds, published",
        "->RunPodSandbox",
        "Started->/pods",
        "Started->publ."
    );
    for f in &mut all {
        for (phase, b) in &mut f.breakdowns {
            let cells = p50_p99_cells([
                &mut b.total,
                &mut b.runtime,
                &mut b.adds,
                &mut b.published_adds,
                &mut b.before_sandbox,
                &mut b.after_start,
                &mut b.start_to_published,
            ]);
            println!("{:<18} {:<24} {cells}", f.label, phase);
        }
    }
    println!("\nthe kubelet's steps between the runtime's calls, per pod: p50/p99 ms");
    println!(
        "{:<18} {:<24} {:>15} {:>15} {:>15} {:>15} {:>15}",
        "runtime",
        "",
        "Written->Listed",
        "Sandbox->Create",
        "(SandboxStatus)",
        "Create->Start",
        "(ContainerStat)"
    );
    for f in &mut all {
        for (phase, b) in &mut f.breakdowns {
            let cells = p50_p99_cells([
                &mut b.noticed,
                &mut b.sandbox_to_create,
                &mut b.sandbox_status,
                &mut b.create_to_start,
                &mut b.container_status,
            ]);
            println!("{:<18} {:<24} {cells}", f.label, phase);
        }
        if let Some((phase, b)) = f.breakdowns.last() {
            let calls: Vec<String> = b
                .calls_per_pod
                .iter()
                .map(|(method, n, p50, p99)| format!("{method} {n:.1} ({p50:.1}/{p99:.1})"))
                .collect();
            println!(
                "{:<18} CRI calls per pod ({phase}), p50/p99 ms of each: {}",
                f.label,
                calls.join(", ")
            );
        }
        let reads = format!(
            "`/pods` read every {} ms, how late a pod is timed Running",
            args.poll_ms
        );
        let answers = "of which the kubelet took to begin its answer".to_owned();
        let probe = "Version every 20 ms on its own connection".to_owned();
        for (phase, b) in &mut f.breakdowns {
            for (values, what, noun) in [
                (&mut b.windows, &reads, "reads"),
                (&mut b.answers, &answers, "reads"),
                (&mut b.probe, &probe, "calls"),
            ] {
                if values.is_empty() {
                    continue;
                }
                values.sort_by(f64::total_cmp);
                println!(
                    "{:<18} {what} ({phase}): p50/p99/max {:.1}/{:.1}/{:.1} ms over {} {noun}",
                    f.label,
                    pct(values, 0.5),
                    pct(values, 0.99),
                    values.last().copied().unwrap_or(f64::NAN),
                    values.len()
                );
            }
            for (whose, waits, cpu) in [
                ("kubelet threads", &b.kubelet_waited, b.cpu_used.0),
                (
                    "bench threads (proxy, /pods reader)",
                    &b.bench_waited,
                    b.cpu_used.1,
                ),
            ] {
                if waits.is_empty() {
                    continue;
                }
                let waited: f64 = waits.iter().map(|(_, ms, _)| ms).sum();
                let runs: u64 = waits.iter().map(|(_, _, runs)| runs).sum();
                let kinds: Vec<String> = waits
                    .iter()
                    .take(4)
                    .map(|(kind, ms, runs)| format!("{kind} {ms:.0} ms/{runs}"))
                    .collect();
                println!(
                    "{:<18} {whose} waiting for a CPU ({phase}): {waited:.0} ms in all, \
                     {:.0} us per run over {runs} runs (most: {}); their process used {cpu:.2} s of CPU",
                    f.label,
                    waited * 1000.0 / runs.max(1) as f64,
                    kinds.join(", ")
                );
            }
        }
    }
    println!(
        "\nthe pods with the most kubelet adds, per phase (with 110 pods, the second is the p99), ms:\n\
         adds = Written->Listed + ->RunPodSandbox + Sandbox->Create + Create->Start + Started->/pods"
    );
    for f in &mut all {
        for (phase, b) in &mut f.breakdowns {
            b.timeline.sort_by(|a, b| b.adds.total_cmp(&a.adds));
            for t in b.timeline.iter().take(2) {
                let s = &t.steps;
                let listing = s.listing.map_or("-".to_owned(), |l| format!("{l:.1}"));
                println!(
                    "{:<18} {phase:<24} {:<24} {:>6.1} = {listing:>5} + {:>5.1} + {:>5.1} + {:>5.1} + {:>5.1}",
                    f.label,
                    t.pod,
                    t.adds,
                    s.to_sandbox,
                    s.sandbox_to_create,
                    s.create_to_start,
                    s.start_to_running
                );
            }
        }
    }
    println!(
        "\nthe same, with Running timed when the kubelet published the status (its log), ms:\n\
         adds = Written->Listed + ->RunPodSandbox + Sandbox->Create + Create->Start + Started->published"
    );
    for f in &mut all {
        for (phase, b) in &mut f.breakdowns {
            let adds = |t: &PodTimeline| t.published_adds.unwrap_or(f64::NEG_INFINITY);
            b.timeline.sort_by(|a, b| adds(b).total_cmp(&adds(a)));
            for t in b.timeline.iter().take(2) {
                let (Some(adds), Some(published)) = (t.published_adds, t.steps.start_to_published)
                else {
                    continue;
                };
                let s = &t.steps;
                let listing = s.listing.map_or("-".to_owned(), |l| format!("{l:.1}"));
                println!(
                    "{:<18} {phase:<24} {:<24} {adds:>6.1} = {listing:>5} + {:>5.1} + {:>5.1} + {:>5.1} + {published:>5.1}",
                    f.label, t.pod, s.to_sandbox, s.sandbox_to_create, s.create_to_start,
                );
            }
        }
    }
    if args.per_pod {
        println!(
            "\neach pod through the kubelet, ms from the phase's first manifest written: \
             written, listed by the kubelet, RunPodSandbox sent, shown Running"
        );
        for f in &mut all {
            for (phase, b) in &mut f.breakdowns {
                b.timeline.sort_by(|a, b| a.written.total_cmp(&b.written));
                for t in &b.timeline {
                    let listed = t.listed.map_or("-".to_owned(), |l| format!("{l:.1}"));
                    println!(
                        "{:<18} {phase:<24} {:<24} {:>8.1} {listed:>8} {:>8.1} {:>8.1}",
                        f.label, t.pod, t.written, t.sandbox_sent, t.running
                    );
                }
            }
        }
    }
    println!(
        "\nkubelet process, {} pods running, idle {} s",
        args.concurrent, args.idle_seconds
    );
    for f in &all {
        println!(
            "{:<18} RSS {:>7.1} MiB  CPU {:.4} cores",
            f.label, f.rss_mib, f.cpu_cores
        );
    }
    println!(
        "\nCPU of the kubelet process (with the embedded runtime: runtime included) while the {} pods started",
        args.concurrent
    );
    for f in &all {
        let per_pod = |s: f64| s * 1000.0 / args.concurrent.max(1) as f64;
        println!(
            "{:<18} direct CRI (starts and stops) {:>6.2} s = {:>5.1} ms/pod; through the kubelet (starts) {:>6.2} s = {:>5.1} ms/pod",
            f.label,
            f.start_cpu.0,
            per_pod(f.start_cpu.0),
            f.start_cpu.1,
            per_pod(f.start_cpu.1)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_summed_per_kind_of_thread_over_the_threads_seen_at_the_end() {
        let entry = |kind: &str, delay: u64, runs: u64| (kind.to_owned(), delay, runs);
        let before = HashMap::from([
            (1, entry("tokio-rt-worker", 1_000_000, 10)),
            (2, entry("pod-files", 5_000_000, 3)),
            // Exited before the end: left out.
            (3, entry("tokio-rt-worker", 9_000_000, 90)),
        ]);
        let after = HashMap::from([
            (1, entry("tokio-rt-worker", 4_000_000, 15)),
            (2, entry("pod-files", 6_000_000, 4)),
            // Started in between: counts from zero.
            (4, entry("pod-files", 2_500_000, 2)),
        ]);
        assert_eq!(
            waited_between(&before, &after),
            vec![
                ("pod-files".to_owned(), 3.5, 3),
                ("tokio-rt-worker".to_owned(), 3.0, 5)
            ]
        );
    }

    #[test]
    fn pods_are_read_on_one_kept_connection_and_again_after_it_closed() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = r#"{"items":[{"metadata":{"name":"a","annotations":{"kubernetes.io/config.seen":"2026-11-27T10:00:00Z"}},"status":{"phase":"Running"}},{"metadata":{"name":"b"},"status":{"phase":"Pending"}}]}"#;
        // Answers two requests on the first connection, then closes it;
        // one on the second.
        let server = std::thread::spawn(move || {
            for answers in [2, 1] {
                let (stream, _) = listener.accept().unwrap();
                let mut requests = BufReader::new(stream);
                for _ in 0..answers {
                    let mut line = String::new();
                    while line != "\r\n" {
                        line.clear();
                        requests.read_line(&mut line).unwrap();
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    requests.get_mut().write_all(answer.as_bytes()).unwrap();
                }
            }
        });
        let mut reader = PodsReader::new(port);
        for _ in 0..3 {
            let before = Instant::now();
            let (running, answered) = reader.running().unwrap();
            assert!(answered >= before && answered <= Instant::now());
            assert_eq!(running.len(), 1, "only the Running pod");
            assert_eq!(running[0].0, "a");
            assert!(running[0].1.is_some(), "config.seen is read");
        }
        server.join().unwrap();
    }

    #[test]
    fn the_published_running_times_are_read_from_the_startup_records() {
        let log = "2026-11-28T10:00:01.000001Z  INFO kubelet::startup: Observed pod startup duration pod=\"default/a-node\" podStartSLOduration=0.75 podStartE2EDuration=1s configSeen=\"2026-11-28T10:00:00.250Z\" observedRunningTime=\"2026-11-28T10:00:01.250Z\"\n\
                   2026-11-28T10:00:01.000002Z  INFO kubelet::pod_workers: started container pod=\"default/b-node\"\n\
                   2026-11-28T10:00:01.000003Z  INFO kubelet::startup: Observed pod startup duration pod=\"kube-system/c-node\" observedRunningTime=\"2026-11-28T10:00:01.5Z\"\n";
        let published = published_running(log);
        assert_eq!(
            published.len(),
            1,
            "only static pods in default: {published:?}"
        );
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-28T10:00:01.25Z").unwrap();
        assert_eq!(published["a-node"], SystemTime::from(at));
    }

    #[test]
    fn the_machines_busy_and_counted_ticks_are_read_from_the_cpu_line() {
        let stat = "cpu  100 5 30 1000 20 3 2 50 0 0\ncpu0 50 2 15 500 10 1 1 25 0 0\nintr 1\n";
        assert_eq!(machine_cpu_ticks(stat).unwrap(), (140, 1160));
        assert!(machine_cpu_ticks("cpu0 1 2 3 4 5 6 7\n").is_err());
        let now = machine_cpu_ticks(&std::fs::read_to_string("/proc/stat").unwrap()).unwrap();
        assert!(now.0 > 0 && now.1 > now.0, "{now:?}");
    }

    #[test]
    fn the_threads_of_this_process_are_read_by_kind() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-kind-7".to_owned())
            .spawn(move || {
                ready_tx.send(()).unwrap();
                let _ = stop_rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let waits = run_queue_waits(std::process::id()).unwrap();
        drop(stop_tx);
        thread.join().unwrap();
        let kinds: Vec<&str> = waits.values().map(|(kind, _, _)| kind.as_str()).collect();
        assert!(kinds.contains(&"bench-kind"), "{kinds:?}");
        assert!(waits.values().any(|(_, _, runs)| *runs > 0), "{waits:?}");
    }
}
