//! Pure sync decisions: what to do to bring a pod's runtime state to its
//! desired state (upstream `computePodActions` plus per-pod container GC).
//!
//! [`compute_actions`] does no I/O and reads no clock; the pod worker feeds it
//! the desired pod, what the runtime reported, the CrashLoopBackOff state and
//! the time, and executes the returned list in order. Being level-triggered,
//! running it again on unchanged state yields no new work.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Container, Pod};
use md5::{Digest, Md5};

use crate::backoff::CrashLoopBackOff;

/// Upstream default of `terminationGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD: i64 = 30;
/// Upstream `minimumGracePeriodInSeconds`: even "0" gives a container 2 s.
pub const MINIMUM_GRACE_PERIOD: i64 = 2;

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart every exited container (the default).
    Always,
    /// Restart containers that exited non-zero.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Parses the API value; unset or unknown means `Always`, the API default.
    pub fn from_spec(value: Option<&str>) -> Self {
        match value {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }
}

/// The part of a container spec the sync decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredContainer {
    /// Container name.
    pub name: String,
    /// Hash of the container spec (see [`container_hash`]).
    pub hash: String,
    /// An init container with `restartPolicy: Always` (a sidecar): it keeps
    /// running beside the app containers and is restarted whenever it exits.
    pub sidecar: bool,
}

impl DesiredContainer {
    fn from_spec(container: &Container) -> Self {
        Self {
            name: container.name.clone(),
            hash: container_hash(container),
            sidecar: container.restart_policy.as_deref() == Some("Always"),
        }
    }
}

/// The part of a pod spec the sync decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPod {
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Grace period for stopping containers, in seconds.
    pub termination_grace_period: i64,
    /// Init containers (sidecars among them) in spec order.
    pub init_containers: Vec<DesiredContainer>,
    /// App containers in spec order.
    pub containers: Vec<DesiredContainer>,
}

impl DesiredPod {
    /// Extracts the sync-relevant view of a pod.
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        Self {
            restart_policy: RestartPolicy::from_spec(
                spec.and_then(|s| s.restart_policy.as_deref()),
            ),
            termination_grace_period: termination_grace_period(pod),
            init_containers: spec
                .and_then(|s| s.init_containers.as_deref())
                .unwrap_or_default()
                .iter()
                .map(DesiredContainer::from_spec)
                .collect(),
            containers: spec
                .map(|s| s.containers.as_slice())
                .unwrap_or_default()
                .iter()
                .map(DesiredContainer::from_spec)
                .collect(),
        }
    }

    fn is_init_container(&self, name: &str) -> bool {
        self.init_containers.iter().any(|c| c.name == name)
    }

    fn in_spec(&self, name: &str) -> bool {
        self.is_init_container(name) || self.containers.iter().any(|c| c.name == name)
    }
}

/// `spec.terminationGracePeriodSeconds` with the API default.
pub fn termination_grace_period(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD)
}

/// A stable hash of a container spec, stored in the
/// `io.kubernetes.container.hash` annotation: a running container whose hash
/// differs from its spec's is restarted. md5 of the canonical JSON, 8 hex digits.
pub fn container_hash(container: &Container) -> String {
    let digest = Md5::digest(serde_json::to_vec(container).unwrap_or_default());
    hex::encode(&digest[..4])
}

/// What the worker wants for its pod.
#[derive(Debug, Clone, Copy)]
pub enum PodIntent<'a> {
    /// The pod should be running as `desired`.
    Run(&'a DesiredPod),
    /// Everything of the pod should be stopped and removed. `grace_period`
    /// overrides the grace recorded on each container (orphans have no spec).
    Terminate {
        /// Grace period in seconds, if known.
        grace_period: Option<i64>,
    },
}

/// State of a CRI container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// The runtime does not know.
    #[default]
    Unknown,
}

/// A sandbox of the pod as the runtime reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSandbox {
    /// Sandbox id.
    pub id: String,
    /// `metadata.attempt`.
    pub attempt: u32,
    /// `SANDBOX_READY`.
    pub ready: bool,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// Pod IPs, primary first (read for the latest ready sandbox only).
    pub ips: Vec<String>,
}

/// A container of the pod as the runtime reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedContainer {
    /// Container id.
    pub id: String,
    /// Id of its sandbox.
    pub sandbox_id: String,
    /// `io.kubernetes.container.name`.
    pub name: String,
    /// State.
    pub state: ContainerState,
    /// `io.kubernetes.container.restartCount`.
    pub restart_count: u32,
    /// `io.kubernetes.container.hash`, if set.
    pub hash: Option<String>,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// When it started, if it has.
    pub started_at: Option<SystemTime>,
    /// When it exited, if it has.
    pub finished_at: Option<SystemTime>,
    /// Exit code (meaningful once exited).
    pub exit_code: i32,
    /// The runtime's brief reason for the state (`Completed`, `Error`, `OOMKilled`).
    pub reason: String,
    /// The runtime's message about the state.
    pub message: String,
    /// The image as the container spec names it.
    pub image: String,
    /// The image id the runtime resolved it to.
    pub image_ref: String,
    /// `io.kubernetes.pod.terminationGracePeriod`, if set.
    pub termination_grace_period: Option<i64>,
    /// Host path of its log file, if the runtime reports one.
    pub log_path: Option<String>,
    /// A sidecar (stopped after the app containers).
    pub sidecar: bool,
    /// JSON of its preStop handler, if it has one.
    pub pre_stop: Option<String>,
}

/// Everything the runtime has for one pod UID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPod {
    /// Sandboxes, any state.
    pub sandboxes: Vec<ObservedSandbox>,
    /// Containers, any state.
    pub containers: Vec<ObservedContainer>,
    /// Ids of running containers whose liveness or startup probe failed:
    /// they are killed and restarted according to the restart policy. The
    /// value is the failed probe's `terminationGracePeriodSeconds`, which
    /// replaces the pod's for that kill.
    pub unhealthy: HashMap<String, Option<i64>>,
}

impl ObservedPod {
    /// Nothing of the pod is left in the runtime.
    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty() && self.containers.is_empty()
    }

    /// The newest sandbox (by creation time, then attempt).
    pub fn latest_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes
            .iter()
            .max_by_key(|s| (s.created_at, s.attempt))
    }

    /// The most recent instance of a container, as upstream `FindContainerStatusByName`.
    pub fn latest_container(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| c.created_at)
    }

    /// The most recent instance of a container in one sandbox.
    pub fn latest_in_sandbox(&self, name: &str, sandbox_id: &str) -> Option<&ObservedContainer> {
        self.containers
            .iter()
            .filter(|c| c.name == name && c.sandbox_id == sandbox_id)
            .max_by_key(|c| c.created_at)
    }

    fn latest_exited(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers
            .iter()
            .filter(|c| c.name == name && c.state == ContainerState::Exited)
            .max_by_key(|c| c.created_at)
    }

    /// Next restart count of a container: one more than any instance had.
    fn next_restart_count(&self, name: &str) -> u32 {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.restart_count + 1)
            .max()
            .unwrap_or(0)
    }
}

/// Which sandbox a container is started in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxTarget {
    /// The sandbox created by the `RunPodSandbox` earlier in the same list.
    New,
    /// An existing ready sandbox.
    Existing(String),
}

/// Why a container is stopped (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The pod is being removed.
    PodTerminating,
    /// The sandbox is gone or not ready, so the pod is rebuilt.
    SandboxChanged,
    /// The container's spec changed.
    SpecChanged,
    /// The container is not in the pod spec.
    NotInSpec,
    /// Its state is unknown; it is stopped before a new instance starts.
    UnknownState,
    /// Its liveness or startup probe failed.
    Unhealthy,
    /// Its pod has finished (all containers done, or an init container failed
    /// for good) and the rest is stopped.
    PodFinished,
}

/// One runtime operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `StopContainer` with a grace period.
    StopContainer {
        /// Container id.
        container_id: String,
        /// Container name.
        name: String,
        /// Seconds between SIGTERM and SIGKILL.
        grace_period: i64,
        /// Why.
        reason: StopReason,
    },
    /// `StopPodSandbox`.
    StopPodSandbox {
        /// Sandbox id.
        sandbox_id: String,
    },
    /// `RunPodSandbox`.
    RunPodSandbox {
        /// `metadata.attempt`.
        attempt: u32,
    },
    /// Ensure the image, `CreateContainer` and `StartContainer`.
    StartContainer {
        /// Container name (index into the pod spec).
        name: String,
        /// Restart count of the new instance.
        restart_count: u32,
        /// Where.
        sandbox: SandboxTarget,
        /// Finish time of the instance this one replaces after an exit; the
        /// worker records the restart in its CrashLoopBackOff.
        previous_finished_at: Option<SystemTime>,
    },
    /// `RemoveContainer`.
    RemoveContainer {
        /// Container id.
        container_id: String,
        /// Container name.
        name: String,
        /// Delete the instance's log file too. Garbage collection of old
        /// instances does (as upstream); pod teardown keeps the logs.
        delete_log: bool,
    },
    /// `RemovePodSandbox`.
    RemovePodSandbox {
        /// Sandbox id.
        sandbox_id: String,
    },
}

/// A container held back by CrashLoopBackOff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackOffWait {
    /// Container name.
    pub name: String,
    /// When it may be restarted.
    pub until: SystemTime,
}

/// The outcome of [`compute_actions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodActions {
    /// Operations, to be executed in order.
    pub actions: Vec<Action>,
    /// Containers in CrashLoopBackOff; the worker wakes up at the earliest.
    pub waiting: Vec<BackOffWait>,
    /// The pod is to be terminated and nothing of it is left.
    pub terminated: bool,
}

impl PodActions {
    /// When the worker must sync again even without events.
    pub fn next_wakeup(&self) -> Option<SystemTime> {
        self.waiting.iter().map(|w| w.until).min()
    }
}

/// Decides what to do with a pod. See the module documentation.
pub fn compute_actions(
    intent: PodIntent<'_>,
    observed: &ObservedPod,
    backoff: &CrashLoopBackOff,
    now: SystemTime,
) -> PodActions {
    match intent {
        PodIntent::Terminate { grace_period } => compute_termination(grace_period, observed),
        PodIntent::Run(desired) => compute_run(desired, observed, backoff, now),
    }
}

fn clamp_grace(seconds: i64) -> i64 {
    seconds.max(MINIMUM_GRACE_PERIOD)
}

/// Stop everything (containers first, with their grace), then remove everything.
fn compute_termination(grace_period: Option<i64>, observed: &ObservedPod) -> PodActions {
    let mut actions = Vec::new();
    // App containers first, sidecars after them (the executor stops each
    // group in parallel, one group after the other).
    let mut live: Vec<&ObservedContainer> = observed
        .containers
        .iter()
        .filter(|c| c.state != ContainerState::Exited)
        .collect();
    live.sort_by_key(|c| c.sidecar);
    for c in live {
        let grace = grace_period
            .or(c.termination_grace_period)
            .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD);
        actions.push(Action::StopContainer {
            container_id: c.id.clone(),
            name: c.name.clone(),
            grace_period: clamp_grace(grace),
            reason: StopReason::PodTerminating,
        });
    }
    // Not-ready sandboxes are stopped too: stopping also releases the network,
    // which a sandbox whose infra process died may still hold.
    for s in &observed.sandboxes {
        actions.push(Action::StopPodSandbox {
            sandbox_id: s.id.clone(),
        });
    }
    for c in &observed.containers {
        actions.push(Action::RemoveContainer {
            container_id: c.id.clone(),
            name: c.name.clone(),
            delete_log: false,
        });
    }
    for s in &observed.sandboxes {
        actions.push(Action::RemovePodSandbox {
            sandbox_id: s.id.clone(),
        });
    }
    PodActions {
        actions,
        waiting: Vec::new(),
        terminated: observed.is_empty(),
    }
}

/// Upstream `ShouldContainerBeRestarted` for a container that is not running.
fn should_restart(policy: RestartPolicy, latest: &ObservedContainer) -> bool {
    match latest.state {
        ContainerState::Running => false,
        ContainerState::Created | ContainerState::Unknown => true,
        ContainerState::Exited => match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => latest.exit_code != 0,
            RestartPolicy::Never => false,
        },
    }
}

fn succeeded(observed: &ObservedPod, name: &str) -> bool {
    observed
        .latest_container(name)
        .is_some_and(|c| c.state == ContainerState::Exited && c.exit_code == 0)
}

struct RunPlan<'a> {
    desired: &'a DesiredPod,
    observed: &'a ObservedPod,
    backoff: &'a CrashLoopBackOff,
    now: SystemTime,
    out: PodActions,
}

impl RunPlan<'_> {
    /// Kills a container whose probe failed, with the probe's grace period
    /// if it has one (upstream's probe-level `terminationGracePeriodSeconds`).
    fn stop_unhealthy(&mut self, c: &ObservedContainer, probe_grace: Option<i64>) {
        let grace = probe_grace.unwrap_or(self.desired.termination_grace_period);
        self.stop_with(c, StopReason::Unhealthy, grace);
    }

    fn stop(&mut self, c: &ObservedContainer, reason: StopReason) {
        self.stop_with(c, reason, self.desired.termination_grace_period);
    }

    fn stop_with(&mut self, c: &ObservedContainer, reason: StopReason, grace_period: i64) {
        self.out.actions.push(Action::StopContainer {
            container_id: c.id.clone(),
            name: c.name.clone(),
            grace_period: clamp_grace(grace_period),
            reason,
        });
    }

    /// Kills the whole pod: every live container, every ready sandbox.
    fn kill_pod(&mut self) {
        let observed = self.observed;
        let mut live: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.state != ContainerState::Exited)
            .collect();
        live.sort_by_key(|c| c.sidecar);
        for c in live {
            self.stop(c, StopReason::SandboxChanged);
        }
        for s in observed.sandboxes.iter().filter(|s| s.ready) {
            self.out.actions.push(Action::StopPodSandbox {
                sandbox_id: s.id.clone(),
            });
        }
    }

    /// Starts a container unless CrashLoopBackOff holds it back.
    fn start(&mut self, name: &str, sandbox: &SandboxTarget) -> bool {
        let previous_finished_at = self
            .observed
            .latest_exited(name)
            .and_then(|c| c.finished_at);
        if let Some(finished_at) = previous_finished_at
            && let Some(until) = self.backoff.restart_after(name, finished_at, self.now)
        {
            self.out.waiting.push(BackOffWait {
                name: name.to_owned(),
                until,
            });
            return false;
        }
        self.out.actions.push(Action::StartContainer {
            name: name.to_owned(),
            restart_count: self.observed.next_restart_count(name),
            sandbox: sandbox.clone(),
            previous_finished_at,
        });
        true
    }

    /// Removes dead instances beyond the most recent one per container, dead
    /// containers not in the spec, and old sandboxes that no container uses.
    fn collect_garbage(&mut self) {
        let observed = self.observed;
        let mut dead_by_name: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
        for c in &observed.containers {
            if matches!(c.state, ContainerState::Exited | ContainerState::Created) {
                dead_by_name.entry(c.name.as_str()).or_default().push(c);
            }
        }
        for (name, mut dead) in dead_by_name {
            dead.sort_by_key(|c| std::cmp::Reverse(c.created_at));
            let in_spec = self.desired.in_spec(name);
            let keep = usize::from(in_spec);
            for c in dead.into_iter().skip(keep) {
                self.out.actions.push(Action::RemoveContainer {
                    container_id: c.id.clone(),
                    name: c.name.clone(),
                    delete_log: true,
                });
            }
        }
        let latest = observed.latest_sandbox().map(|s| s.id.as_str());
        for s in &observed.sandboxes {
            let unused = !observed.containers.iter().any(|c| c.sandbox_id == s.id);
            if !s.ready && Some(s.id.as_str()) != latest && unused {
                self.out.actions.push(Action::RemovePodSandbox {
                    sandbox_id: s.id.clone(),
                });
            }
        }
    }
}

/// Where the init containers of the current sandbox stand (upstream
/// `computeInitContainerActions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitProgress {
    /// Every regular init container succeeded and every sidecar runs: the
    /// app containers may run.
    Done,
    /// An init container is running or being (re)started.
    InProgress,
    /// A regular init container failed and the restart policy is `Never`:
    /// the pod has failed.
    Failed,
}

impl RunPlan<'_> {
    /// Walks the init containers in order in sandbox `sandbox_id`, starting
    /// the next one that is due. Sidecars that exited are restarted whatever
    /// the pod's restart policy; once the app containers have started in
    /// this sandbox, the pod stays initialized and only sidecars are tended.
    fn init_containers(&mut self, sandbox_id: &str) -> InitProgress {
        let desired = self.desired;
        let observed = self.observed;
        let target = SandboxTarget::Existing(sandbox_id.to_owned());
        let initialized = desired
            .containers
            .iter()
            .any(|c| observed.latest_in_sandbox(&c.name, sandbox_id).is_some());
        for init in &desired.init_containers {
            let latest = observed.latest_in_sandbox(&init.name, sandbox_id);
            match latest {
                None if initialized && !init.sidecar => {}
                None => {
                    self.start(&init.name, &target);
                    return InitProgress::InProgress;
                }
                Some(c) if c.state == ContainerState::Running => {
                    if let Some(grace) = observed.unhealthy.get(&c.id) {
                        self.stop_unhealthy(c, *grace);
                        self.start(&init.name, &target);
                        if !initialized {
                            return InitProgress::InProgress;
                        }
                    } else if init.sidecar && c.hash.as_deref().is_some_and(|h| h != init.hash) {
                        self.stop(c, StopReason::SpecChanged);
                        self.start(&init.name, &target);
                    } else if !init.sidecar && !initialized {
                        return InitProgress::InProgress;
                    }
                }
                Some(c)
                    if c.state == ContainerState::Exited && c.exit_code == 0 && !init.sidecar => {}
                Some(_) if initialized && !init.sidecar => {}
                Some(c) => {
                    let failed_for_good = c.state == ContainerState::Exited
                        && !init.sidecar
                        && desired.restart_policy == RestartPolicy::Never;
                    if failed_for_good {
                        return InitProgress::Failed;
                    }
                    if c.state == ContainerState::Unknown {
                        self.stop(c, StopReason::UnknownState);
                    }
                    self.start(&init.name, &target);
                    if !initialized {
                        return InitProgress::InProgress;
                    }
                }
            }
        }
        InitProgress::Done
    }
}

fn compute_run(
    desired: &DesiredPod,
    observed: &ObservedPod,
    backoff: &CrashLoopBackOff,
    now: SystemTime,
) -> PodActions {
    let mut plan = RunPlan {
        desired,
        observed,
        backoff,
        now,
        out: PodActions::default(),
    };
    let latest_sandbox = observed.latest_sandbox();
    let ready_sandboxes = observed.sandboxes.iter().filter(|s| s.ready).count();
    let sandbox_changed = latest_sandbox.is_none_or(|s| !s.ready) || ready_sandboxes > 1;

    if sandbox_changed {
        plan.kill_pod();
        let attempt = latest_sandbox.map_or(0, |s| s.attempt + 1);
        // Upstream: a pod that must not be restarted is not given a new
        // sandbox once its containers have run.
        let restarts = desired.restart_policy != RestartPolicy::Never;
        if !restarts && attempt != 0 && !observed.containers.is_empty() {
            plan.collect_garbage();
            return plan.out;
        }
        // A new sandbox runs the init containers again from the first.
        let to_start: Vec<&str> = match desired.init_containers.first() {
            Some(first) => vec![first.name.as_str()],
            None => desired
                .containers
                .iter()
                .filter(|c| {
                    !(desired.restart_policy == RestartPolicy::OnFailure
                        && succeeded(observed, &c.name))
                })
                .map(|c| c.name.as_str())
                .collect(),
        };
        if !to_start.is_empty() {
            plan.out.actions.push(Action::RunPodSandbox { attempt });
            for name in to_start {
                plan.start(name, &SandboxTarget::New);
            }
        }
        plan.collect_garbage();
        return plan.out;
    }

    let Some(current) = latest_sandbox else {
        unreachable!("a pod without sandbox counts as sandbox changed");
    };
    let sandbox = SandboxTarget::Existing(current.id.clone());
    // App containers that all finished for good end the pod; its sidecars
    // are then stopped rather than restarted.
    let apps_finished = !desired.containers.is_empty()
        && desired.containers.iter().all(|c| {
            observed.latest_container(&c.name).is_some_and(|latest| {
                latest.state == ContainerState::Exited
                    && !should_restart(desired.restart_policy, latest)
            })
        });
    let mut pod_active = false;
    if !apps_finished {
        match plan.init_containers(&current.id) {
            InitProgress::InProgress => pod_active = true,
            InitProgress::Failed => {}
            InitProgress::Done => {
                for container in &desired.containers {
                    pod_active |= plan.app_container(container, &sandbox);
                }
            }
        }
    }
    for c in &observed.containers {
        if c.state == ContainerState::Running && !desired.in_spec(&c.name) {
            plan.stop(c, StopReason::NotInSpec);
        }
    }
    // Every container has finished for good (or an init container failed
    // for good): stop what still runs and release the sandbox (and its IP).
    if !pod_active {
        let mut running: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running && desired.in_spec(&c.name))
            .collect();
        running.sort_by_key(|c| c.sidecar);
        for c in running {
            plan.stop(c, StopReason::PodFinished);
        }
        for s in observed.sandboxes.iter().filter(|s| s.ready) {
            plan.out.actions.push(Action::StopPodSandbox {
                sandbox_id: s.id.clone(),
            });
        }
    }
    plan.collect_garbage();
    plan.out
}

impl RunPlan<'_> {
    /// Keeps one app container as its spec and restart policy want;
    /// returns whether it is (or will be) running.
    fn app_container(&mut self, container: &DesiredContainer, sandbox: &SandboxTarget) -> bool {
        let observed = self.observed;
        match observed.latest_container(&container.name) {
            None => {
                self.start(&container.name, sandbox);
                true
            }
            Some(latest) if latest.state == ContainerState::Running => {
                if let Some(grace) = observed.unhealthy.get(&latest.id) {
                    self.stop_unhealthy(latest, *grace);
                    if self.desired.restart_policy != RestartPolicy::Never {
                        self.start(&container.name, sandbox);
                        return true;
                    }
                    return false;
                }
                if latest.hash.as_deref().is_some_and(|h| h != container.hash) {
                    self.stop(latest, StopReason::SpecChanged);
                    self.start(&container.name, sandbox);
                }
                true
            }
            Some(latest) => {
                if !should_restart(self.desired.restart_policy, latest) {
                    return false;
                }
                if latest.state == ContainerState::Unknown {
                    self.stop(latest, StopReason::UnknownState);
                }
                self.start(&container.name, sandbox);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn pod(policy: RestartPolicy, names: &[&str]) -> DesiredPod {
        DesiredPod {
            restart_policy: policy,
            termination_grace_period: 30,
            init_containers: Vec::new(),
            containers: names
                .iter()
                .map(|n| DesiredContainer {
                    name: (*n).into(),
                    hash: format!("h-{n}"),
                    sidecar: false,
                })
                .collect(),
        }
    }

    fn sandbox(id: &str, attempt: u32, ready: bool, created_at: i64) -> ObservedSandbox {
        ObservedSandbox {
            id: id.into(),
            attempt,
            ready,
            created_at,
            ips: Vec::new(),
        }
    }

    fn running(
        id: &str,
        sandbox: &str,
        name: &str,
        restart_count: u32,
        created_at: i64,
    ) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            sandbox_id: sandbox.into(),
            name: name.into(),
            state: ContainerState::Running,
            restart_count,
            hash: Some(format!("h-{name}")),
            created_at,
            finished_at: None,
            exit_code: 0,
            termination_grace_period: Some(30),
            ..ObservedContainer::default()
        }
    }

    fn exited(
        id: &str,
        sandbox: &str,
        name: &str,
        restart_count: u32,
        created_at: i64,
        code: i32,
        finished: SystemTime,
    ) -> ObservedContainer {
        ObservedContainer {
            state: ContainerState::Exited,
            exit_code: code,
            finished_at: Some(finished),
            ..running(id, sandbox, name, restart_count, created_at)
        }
    }

    fn run(desired: &DesiredPod, observed: &ObservedPod) -> PodActions {
        compute_actions(
            PodIntent::Run(desired),
            observed,
            &CrashLoopBackOff::default(),
            at(100),
        )
    }

    fn start(
        name: &str,
        restart_count: u32,
        sandbox: SandboxTarget,
        prev: Option<SystemTime>,
    ) -> Action {
        Action::StartContainer {
            name: name.into(),
            restart_count,
            sandbox,
            previous_finished_at: prev,
        }
    }

    fn existing(id: &str) -> SandboxTarget {
        SandboxTarget::Existing(id.into())
    }

    #[test]
    fn new_pod_gets_a_sandbox_and_all_containers() {
        let out = run(
            &pod(RestartPolicy::Always, &["a", "b"]),
            &ObservedPod::default(),
        );
        assert_eq!(
            out.actions,
            [
                Action::RunPodSandbox { attempt: 0 },
                start("a", 0, SandboxTarget::New, None),
                start("b", 0, SandboxTarget::New, None),
            ]
        );
        assert!(!out.terminated);
    }

    #[test]
    fn running_pod_needs_nothing() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![
                running("c1", "s1", "a", 0, 2),
                running("c2", "s1", "b", 0, 3),
            ],

            ..ObservedPod::default()
        };
        assert_eq!(
            run(&pod(RestartPolicy::Always, &["a", "b"]), &observed),
            PodActions::default()
        );
    }

    #[test]
    fn missing_container_is_started_in_the_existing_sandbox() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![running("c1", "s1", "a", 0, 2)],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a", "b"]), &observed);
        assert_eq!(out.actions, [start("b", 0, existing("s1"), None)]);
    }

    fn one_exited(code: i32) -> ObservedPod {
        ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![exited("c1", "s1", "a", 0, 2, code, at(90))],

            ..ObservedPod::default()
        }
    }

    #[test]
    fn restart_policy_always_restarts_any_exit() {
        for code in [0, 1] {
            let out = run(&pod(RestartPolicy::Always, &["a"]), &one_exited(code));
            assert_eq!(out.actions, [start("a", 1, existing("s1"), Some(at(90)))]);
        }
    }

    #[test]
    fn restart_policy_on_failure_restarts_only_failures() {
        let out = run(&pod(RestartPolicy::OnFailure, &["a"]), &one_exited(1));
        assert_eq!(out.actions, [start("a", 1, existing("s1"), Some(at(90)))]);
        // Succeeded: the pod is done, its sandbox is released.
        let out = run(&pod(RestartPolicy::OnFailure, &["a"]), &one_exited(0));
        assert_eq!(
            out.actions,
            [Action::StopPodSandbox {
                sandbox_id: "s1".into()
            }]
        );
    }

    #[test]
    fn restart_policy_never_does_not_restart_and_releases_the_sandbox() {
        for code in [0, 1] {
            let out = run(&pod(RestartPolicy::Never, &["a"]), &one_exited(code));
            assert_eq!(
                out.actions,
                [Action::StopPodSandbox {
                    sandbox_id: "s1".into()
                }]
            );
        }
        // Once the sandbox is stopped nothing more happens: no new sandbox.
        let mut observed = one_exited(1);
        observed.sandboxes[0].ready = false;
        assert_eq!(
            run(&pod(RestartPolicy::Never, &["a"]), &observed),
            PodActions::default()
        );
    }

    #[test]
    fn never_pod_with_one_container_still_running_keeps_its_sandbox() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![
                exited("c1", "s1", "a", 0, 2, 0, at(90)),
                running("c2", "s1", "b", 0, 3),
            ],

            ..ObservedPod::default()
        };
        assert_eq!(
            run(&pod(RestartPolicy::Never, &["a", "b"]), &observed),
            PodActions::default()
        );
    }

    #[test]
    fn crash_loop_backoff_holds_a_restart_and_sets_the_wakeup() {
        let desired = pod(RestartPolicy::Always, &["a"]);
        let mut backoff = CrashLoopBackOff::default();
        backoff.record_restart("a", at(80), at(80));
        let observed = one_exited(1); // finished at 90, backoff 10 s
        let out = compute_actions(PodIntent::Run(&desired), &observed, &backoff, at(95));
        assert_eq!(out.actions, []);
        assert_eq!(
            out.waiting,
            [BackOffWait {
                name: "a".into(),
                until: at(100)
            }]
        );
        assert_eq!(out.next_wakeup(), Some(at(100)));
        // Backoff does not make the pod look finished: the sandbox stays.
        let out = compute_actions(PodIntent::Run(&desired), &observed, &backoff, at(100));
        assert_eq!(out.actions, [start("a", 1, existing("s1"), Some(at(90)))]);
        assert_eq!(out.next_wakeup(), None);
    }

    #[test]
    fn restart_count_continues_from_the_highest_instance() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![
                exited("old", "s1", "a", 3, 2, 1, at(50)),
                exited("new", "s1", "a", 4, 3, 1, at(90)),
            ],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        assert_eq!(
            out.actions,
            [
                start("a", 5, existing("s1"), Some(at(90))),
                Action::RemoveContainer {
                    container_id: "old".into(),
                    name: "a".into(),
                    delete_log: true
                },
            ]
        );
    }

    #[test]
    fn only_the_most_recent_dead_instance_is_kept() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![
                exited("d1", "s1", "a", 0, 2, 1, at(10)),
                exited("d2", "s1", "a", 1, 3, 1, at(20)),
                running("r", "s1", "a", 2, 4),
            ],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        assert_eq!(
            out.actions,
            [Action::RemoveContainer {
                container_id: "d1".into(),
                name: "a".into(),
                delete_log: true
            }]
        );
    }

    #[test]
    fn created_but_never_started_container_is_replaced() {
        let mut created = running("c1", "s1", "a", 0, 2);
        created.state = ContainerState::Created;
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![created],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Never, &["a"]), &observed);
        assert_eq!(out.actions, [start("a", 1, existing("s1"), None)]);
    }

    #[test]
    fn unknown_container_is_stopped_before_a_new_instance() {
        let mut unknown = running("c1", "s1", "a", 0, 2);
        unknown.state = ContainerState::Unknown;
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![unknown],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        assert_eq!(
            out.actions,
            [
                Action::StopContainer {
                    container_id: "c1".into(),
                    name: "a".into(),
                    grace_period: 30,
                    reason: StopReason::UnknownState
                },
                start("a", 1, existing("s1"), None),
            ]
        );
    }

    #[test]
    fn dead_sandbox_kills_the_pod_and_recreates_with_next_attempt() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, false, 1)],
            containers: vec![running("c1", "s1", "a", 0, 2)],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        assert_eq!(
            out.actions,
            [
                Action::StopContainer {
                    container_id: "c1".into(),
                    name: "a".into(),
                    grace_period: 30,
                    reason: StopReason::SandboxChanged
                },
                Action::RunPodSandbox { attempt: 1 },
                start("a", 1, SandboxTarget::New, None),
            ]
        );
    }

    #[test]
    fn dead_sandbox_of_a_never_pod_is_not_recreated_after_containers_ran() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, false, 1)],
            containers: vec![exited("c1", "s1", "a", 0, 2, 0, at(90))],

            ..ObservedPod::default()
        };
        assert_eq!(
            run(&pod(RestartPolicy::Never, &["a"]), &observed),
            PodActions::default()
        );
        // But a failed first sandbox with no containers is retried.
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, false, 1)],
            containers: vec![],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Never, &["a"]), &observed);
        assert_eq!(out.actions[0], Action::RunPodSandbox { attempt: 1 });
    }

    #[test]
    fn on_failure_pod_recreated_without_its_succeeded_containers() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, false, 1)],
            containers: vec![
                exited("c1", "s1", "ok", 0, 2, 0, at(90)),
                exited("c2", "s1", "bad", 0, 3, 2, at(91)),
            ],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::OnFailure, &["ok", "bad"]), &observed);
        assert_eq!(
            out.actions,
            [
                Action::RunPodSandbox { attempt: 1 },
                start("bad", 1, SandboxTarget::New, Some(at(91)))
            ]
        );
    }

    #[test]
    fn two_ready_sandboxes_are_both_replaced() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1), sandbox("s2", 1, true, 2)],
            containers: vec![],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        assert_eq!(
            out.actions,
            [
                Action::StopPodSandbox {
                    sandbox_id: "s1".into()
                },
                Action::StopPodSandbox {
                    sandbox_id: "s2".into()
                },
                Action::RunPodSandbox { attempt: 2 },
                start("a", 0, SandboxTarget::New, None),
            ]
        );
    }

    #[test]
    fn changed_spec_hash_restarts_the_container() {
        let mut c = running("c1", "s1", "a", 0, 2);
        c.hash = Some("stale".into());
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![c],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        assert_eq!(
            out.actions,
            [
                Action::StopContainer {
                    container_id: "c1".into(),
                    name: "a".into(),
                    grace_period: 30,
                    reason: StopReason::SpecChanged
                },
                start("a", 1, existing("s1"), None),
            ]
        );
    }

    #[test]
    fn containers_not_in_spec_are_stopped_then_removed() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![
                running("c1", "s1", "a", 0, 2),
                running("x1", "s1", "extra", 0, 3),
                exited("x0", "s1", "extra", 0, 1, 0, at(1)),
            ],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        assert_eq!(
            out.actions,
            [
                Action::StopContainer {
                    container_id: "x1".into(),
                    name: "extra".into(),
                    grace_period: 30,
                    reason: StopReason::NotInSpec
                },
                Action::RemoveContainer {
                    container_id: "x0".into(),
                    name: "extra".into(),
                    delete_log: true
                },
            ]
        );
    }

    #[test]
    fn old_unused_sandboxes_are_removed() {
        let observed = ObservedPod {
            sandboxes: vec![
                sandbox("s0", 0, false, 1),
                sandbox("s1", 1, false, 2),
                sandbox("s2", 2, true, 3),
            ],
            containers: vec![
                exited("c0", "s1", "a", 0, 2, 1, at(1)),
                running("c1", "s2", "a", 1, 4),
            ],

            ..ObservedPod::default()
        };
        let out = run(&pod(RestartPolicy::Always, &["a"]), &observed);
        // s1 still holds the last dead instance of "a" (kept for its logs).
        assert_eq!(
            out.actions,
            [Action::RemovePodSandbox {
                sandbox_id: "s0".into()
            }]
        );
    }

    #[test]
    fn termination_stops_then_removes_everything() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers: vec![
                running("c1", "s1", "a", 0, 2),
                exited("c0", "s1", "a", 0, 1, 0, at(1)),
            ],

            ..ObservedPod::default()
        };
        let out = compute_actions(
            PodIntent::Terminate {
                grace_period: Some(5),
            },
            &observed,
            &CrashLoopBackOff::default(),
            at(100),
        );
        assert_eq!(
            out.actions,
            [
                Action::StopContainer {
                    container_id: "c1".into(),
                    name: "a".into(),
                    grace_period: 5,
                    reason: StopReason::PodTerminating
                },
                Action::StopPodSandbox {
                    sandbox_id: "s1".into()
                },
                Action::RemoveContainer {
                    container_id: "c1".into(),
                    name: "a".into(),
                    delete_log: false
                },
                Action::RemoveContainer {
                    container_id: "c0".into(),
                    name: "a".into(),
                    delete_log: false
                },
                Action::RemovePodSandbox {
                    sandbox_id: "s1".into()
                },
            ]
        );
        assert!(!out.terminated);
    }

    #[test]
    fn orphan_termination_uses_the_recorded_grace_period_with_a_floor() {
        let mut c = running("c1", "s1", "a", 0, 2);
        c.termination_grace_period = Some(0);
        let observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![c],

            ..ObservedPod::default()
        };
        let out = compute_actions(
            PodIntent::Terminate { grace_period: None },
            &observed,
            &CrashLoopBackOff::default(),
            at(0),
        );
        assert!(matches!(
            out.actions[0],
            Action::StopContainer {
                grace_period: 2,
                ..
            }
        ));
        let mut c = running("c1", "s1", "a", 0, 2);
        c.termination_grace_period = None;
        let observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![c],

            ..ObservedPod::default()
        };
        let out = compute_actions(
            PodIntent::Terminate { grace_period: None },
            &observed,
            &CrashLoopBackOff::default(),
            at(0),
        );
        assert!(matches!(
            out.actions[0],
            Action::StopContainer {
                grace_period: 30,
                ..
            }
        ));
    }

    #[test]
    fn termination_of_nothing_is_done() {
        let out = compute_actions(
            PodIntent::Terminate { grace_period: None },
            &ObservedPod::default(),
            &CrashLoopBackOff::default(),
            at(0),
        );
        assert!(out.terminated);
        assert!(out.actions.is_empty());
    }

    fn with_init(mut desired: DesiredPod, inits: &[(&str, bool)]) -> DesiredPod {
        desired.init_containers = inits
            .iter()
            .map(|(n, sidecar)| DesiredContainer {
                name: (*n).into(),
                hash: format!("h-{n}"),
                sidecar: *sidecar,
            })
            .collect();
        desired
    }

    fn observed(containers: Vec<ObservedContainer>) -> ObservedPod {
        ObservedPod {
            sandboxes: vec![sandbox("s1", 0, true, 1)],
            containers,
            ..ObservedPod::default()
        }
    }

    fn names_started(out: &PodActions) -> Vec<&str> {
        out.actions
            .iter()
            .filter_map(|a| match a {
                Action::StartContainer { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_sandbox_starts_only_the_first_init_container() {
        let desired = with_init(
            pod(RestartPolicy::Always, &["app"]),
            &[("i1", false), ("i2", false)],
        );
        let out = run(&desired, &ObservedPod::default());
        assert_eq!(
            out.actions,
            [
                Action::RunPodSandbox { attempt: 0 },
                start("i1", 0, SandboxTarget::New, None)
            ]
        );
    }

    #[test]
    fn init_containers_run_one_after_another_then_the_app() {
        let desired = with_init(
            pod(RestartPolicy::Always, &["app"]),
            &[("i1", false), ("i2", false)],
        );
        let running_i1 = observed(vec![running("c1", "s1", "i1", 0, 2)]);
        assert!(run(&desired, &running_i1).actions.is_empty());

        let done_i1 = observed(vec![exited("c1", "s1", "i1", 0, 2, 0, at(50))]);
        assert_eq!(names_started(&run(&desired, &done_i1)), ["i2"]);

        let done_both = observed(vec![
            exited("c1", "s1", "i1", 0, 2, 0, at(50)),
            exited("c2", "s1", "i2", 0, 3, 0, at(60)),
        ]);
        assert_eq!(names_started(&run(&desired, &done_both)), ["app"]);

        // Once the app runs, succeeded init containers are never rerun.
        let app_running = observed(vec![
            exited("c1", "s1", "i1", 0, 2, 0, at(50)),
            exited("c2", "s1", "i2", 0, 3, 0, at(60)),
            running("c3", "s1", "app", 0, 4),
        ]);
        assert!(run(&desired, &app_running).actions.is_empty());
    }

    #[test]
    fn a_failed_init_container_is_retried_or_fails_the_pod() {
        let failed = observed(vec![exited("c1", "s1", "i1", 0, 2, 1, at(50))]);
        let always = with_init(pod(RestartPolicy::Always, &["app"]), &[("i1", false)]);
        let out = run(&always, &failed);
        assert_eq!(out.actions, [start("i1", 1, existing("s1"), Some(at(50)))]);

        let never = with_init(pod(RestartPolicy::Never, &["app"]), &[("i1", false)]);
        let out = run(&never, &failed);
        assert_eq!(
            out.actions,
            [Action::StopPodSandbox {
                sandbox_id: "s1".into()
            }]
        );
    }

    #[test]
    fn init_containers_of_an_old_sandbox_do_not_count() {
        let desired = with_init(
            pod(RestartPolicy::Always, &["app"]),
            &[("i1", false), ("i2", false)],
        );
        let mut state = observed(vec![
            exited("old1", "s0", "i1", 0, 1, 0, at(10)),
            exited("old2", "s0", "i2", 0, 1, 0, at(11)),
            exited("c1", "s1", "i1", 1, 5, 0, at(50)),
        ]);
        state.sandboxes.insert(0, sandbox("s0", 0, false, 0));
        state.sandboxes[1].attempt = 1;
        assert_eq!(names_started(&run(&desired, &state)), ["i2"]);
    }

    #[test]
    fn sidecars_start_in_order_keep_running_and_restart_under_never() {
        let desired = with_init(
            pod(RestartPolicy::Never, &["app"]),
            &[("side", true), ("i1", false)],
        );
        let side_running = observed(vec![running("c1", "s1", "side", 0, 2)]);
        assert_eq!(names_started(&run(&desired, &side_running)), ["i1"]);

        let all_up = observed(vec![
            running("c1", "s1", "side", 0, 2),
            exited("c2", "s1", "i1", 0, 3, 0, at(40)),
            running("c3", "s1", "app", 0, 4),
        ]);
        assert!(run(&desired, &all_up).actions.is_empty());

        let side_exited = observed(vec![
            exited("c1", "s1", "side", 0, 2, 1, at(50)),
            exited("c2", "s1", "i1", 0, 3, 0, at(40)),
            running("c3", "s1", "app", 0, 4),
        ]);
        let out = run(&desired, &side_exited);
        assert_eq!(
            out.actions,
            [start("side", 1, existing("s1"), Some(at(50)))]
        );
    }

    #[test]
    fn sidecars_are_stopped_when_the_app_containers_are_done() {
        let desired = with_init(pod(RestartPolicy::Never, &["app"]), &[("side", true)]);
        let app_done = observed(vec![
            running("c1", "s1", "side", 0, 2),
            exited("c3", "s1", "app", 0, 4, 0, at(60)),
        ]);
        let out = run(&desired, &app_done);
        assert!(out.actions.iter().any(|a| matches!(
            a,
            Action::StopContainer { name, reason: StopReason::PodFinished, .. } if name == "side"
        )));
        assert!(out.actions.contains(&Action::StopPodSandbox {
            sandbox_id: "s1".into()
        }));
    }

    #[test]
    fn an_unhealthy_container_is_killed_and_restarted_by_policy() {
        let mut state = observed(vec![running("c1", "s1", "a", 0, 2)]);
        state.unhealthy.insert("c1".into(), None);
        let out = run(&pod(RestartPolicy::Always, &["a"]), &state);
        assert!(matches!(
            &out.actions[..],
            [
                Action::StopContainer { container_id, reason: StopReason::Unhealthy, .. },
                Action::StartContainer { name, restart_count: 1, .. },
            ] if container_id == "c1" && name == "a"
        ));
        let out = run(&pod(RestartPolicy::Never, &["a"]), &state);
        assert!(matches!(
            &out.actions[0],
            Action::StopContainer {
                reason: StopReason::Unhealthy,
                ..
            }
        ));
        assert_eq!(names_started(&out), Vec::<&str>::new());
    }

    #[test]
    fn a_failed_probe_with_its_own_grace_period_kills_with_it() {
        let mut state = observed(vec![running("c1", "s1", "a", 0, 2)]);
        let desired = pod(RestartPolicy::Always, &["a"]);
        let grace_of = |out: &PodActions| match &out.actions[0] {
            Action::StopContainer { grace_period, .. } => *grace_period,
            other => panic!("{other:?}"),
        };
        state.unhealthy.insert("c1".into(), None);
        assert_eq!(grace_of(&run(&desired, &state)), 30, "the pod's");
        state.unhealthy.insert("c1".into(), Some(3));
        assert_eq!(grace_of(&run(&desired, &state)), 3, "the probe's");
    }

    #[test]
    fn desired_pod_from_manifest_defaults() {
        let pod: Pod = serde_yaml::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: busybox}\n",
        )
        .unwrap();
        let desired = DesiredPod::from_pod(&pod);
        assert_eq!(desired.restart_policy, RestartPolicy::Always);
        assert_eq!(desired.termination_grace_period, 30);
        assert_eq!(desired.containers.len(), 1);
        assert_eq!(desired.containers[0].hash.len(), 8);

        let mut changed = pod.clone();
        changed.spec.as_mut().unwrap().containers[0].args = Some(vec!["x".into()]);
        assert_ne!(
            DesiredPod::from_pod(&changed).containers[0].hash,
            desired.containers[0].hash
        );
    }
}
