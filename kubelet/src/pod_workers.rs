//! Pod workers: one task per pod UID that syncs the pod level-triggered, and
//! the manager that starts, retargets and reaps them.
//!
//! A worker's intent only ever moves from running to terminating; once its
//! pod is gone from the runtime the worker ends. A pod that is desired again
//! afterwards gets a fresh worker. A new pod waits while a terminating pod
//! with the same namespace/name still exists (an edited static manifest
//! keeps its name but gets a new UID), so both never hold the same host
//! ports. Runtime pods that nobody desires are torn down as orphans, but
//! only after the pod source and the PLEG have both reported once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ErrorChain;
use crate::actions::ObservedPod;
use crate::actions::{Action, DesiredPod, PodIntent, compute_actions, termination_grace_period};
use crate::backoff::{Backoff, CrashLoopBackOff};
use crate::pleg::{PodLifecycleEvent, PodObjects, observed_objects};
use crate::prober::Prober;
use crate::runtime::{
    Executed, Made, PodRef, RuntimeError, RuntimeManager, RuntimeService, find_container,
};
use crate::startup::Startup;
use crate::static_pods::{DesiredPods, DesiredPodsReceiver};
use crate::status::{PodStatusStore, StatusInputs, Waiting, pod_status};

/// First retry delay after a failed sync.
const SYNC_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay after failed syncs (upstream retries every 10 s).
const SYNC_RETRY_MAX: Duration = Duration::from_secs(10);

/// First delay after a failed image pull (upstream `backOffPeriod`).
const IMAGE_PULL_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest delay between image pull attempts (upstream `MaxContainerBackOff`).
const IMAGE_PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Where pod statuses go and what they need from the node.
#[derive(Debug, Clone, Default)]
pub struct StatusReporter {
    /// The store the kubelet server reads.
    pub store: Arc<PodStatusStore>,
    /// The runtime's name, the scheme of container ids (`containerd://...`).
    pub runtime_name: String,
    /// The node's IPs, primary first.
    pub host_ips: Vec<String>,
}

/// Upstream image pull back-off of one image: pulls wait out a doubling
/// delay after failures; a success forgets it.
#[derive(Debug)]
struct PullBackOff {
    backoff: Backoff,
    until: SystemTime,
}

/// Wall-clock source. Production uses [`SystemTime::now`]; tests pass one
/// that follows tokio's paused clock so CrashLoopBackOff can be fast-forwarded.
pub type Clock = fn() -> SystemTime;

/// What a worker is told to do.
#[derive(Debug, Clone)]
pub enum WorkerIntent {
    /// Keep the pod running as specified.
    Run(Arc<Pod>),
    /// Stop and remove everything of the pod.
    Terminate {
        /// Grace period override in seconds; `None` uses what each container recorded.
        grace_period: Option<i64>,
    },
}

/// How a sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncOutcome {
    /// Nothing of a terminating pod is left.
    Terminated,
    /// Actions ran without error.
    Synced {
        /// CrashLoopBackOff expiry to wake up at.
        next_wakeup: Option<SystemTime>,
        /// Actions were executed (state changed).
        acted: bool,
    },
}

struct PodWorker<R> {
    pod: PodRef,
    runtime: Arc<RuntimeManager<R>>,
    intent: watch::Receiver<WorkerIntent>,
    wake: Arc<Notify>,
    crash_loop: CrashLoopBackOff,
    /// Back-off deadlines already logged, so each is reported once.
    reported_waits: HashMap<String, SystemTime>,
    /// Image pull back-off by image reference.
    pull_backoff: HashMap<String, PullBackOff>,
    status: StatusReporter,
    prober: Arc<Prober<R>>,
    clock: Clock,
    cancel: CancellationToken,
    /// The observation the last sync acted on and what it made, for the
    /// sync that follows at once: it asks for the new objects only.
    made: Option<(ObservedPod, Made)>,
    /// The runtime had nothing of this pod at the last relist before the
    /// worker started, and only this worker makes objects for its UID: the
    /// first sync starts from an empty observation instead of listing.
    known_empty: bool,
    /// What the last sync observed, in a relist's terms, shared with the
    /// worker's handle: a relist that shows just that wakes no one.
    seen: Arc<Mutex<Option<PodObjects>>>,
    /// Whether the pod's start is still to be logged.
    startup: Startup,
}

/// The upstream waiting reason a failed action leaves its container in.
fn waiting_after(error: &RuntimeError) -> Option<(&str, Waiting)> {
    let (name, reason) = match error {
        RuntimeError::Image { container_name, .. } => (container_name, "ErrImagePull"),
        RuntimeError::ImageNeverPull { container_name, .. } => {
            (container_name, "ErrImageNeverPull")
        }
        RuntimeError::CreateContainer { container_name, .. } => {
            (container_name, "CreateContainerError")
        }
        RuntimeError::ContainerConfig { container_name, .. } => {
            (container_name, "CreateContainerConfigError")
        }
        RuntimeError::StartContainer { container_name, .. } => {
            (container_name, "RunContainerError")
        }
        RuntimeError::PostStartHook { container_name, .. } => {
            (container_name, "PostStartHookError")
        }
        _ => return None,
    };
    let message = match error {
        RuntimeError::PostStartHook { message, .. } => message.clone(),
        _ => error.source_chain().unwrap_or_else(|| error.to_string()),
    };
    Some((
        name.as_str(),
        Waiting {
            reason: reason.to_owned(),
            message,
        },
    ))
}

impl<R: RuntimeService> PodWorker<R> {
    async fn run(mut self) {
        let mut retry = Backoff::new(SYNC_RETRY_INITIAL, SYNC_RETRY_MAX);
        let mut immediate_resync_used = false;
        loop {
            // A wake-up stored before this observation is answered by it: it
            // came from a relist that finished before the observation starts.
            let _ = self.wake.notified().now_or_never();
            let intent = self.intent.borrow_and_update().clone();
            let span =
                tracing::info_span!("sync_pod", pod.uid = %self.pod.uid, pod.name = %self.pod.name);
            let cancel = self.cancel.clone();
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                outcome = self.sync(&intent).instrument(span) => outcome,
            };
            let wake_at = match outcome {
                Ok(SyncOutcome::Terminated) => {
                    tracing::info!(pod.uid = %self.pod.uid, pod.name = %self.pod.name, "pod terminated");
                    return;
                }
                Ok(SyncOutcome::Synced { next_wakeup, acted }) => {
                    retry.reset();
                    // After acting, the pod is observed again at once instead
                    // of waiting for the PLEG to notice: a started pod's
                    // status shows it running, a terminating pod's removal
                    // completes. Once per wake-up, so a runtime that does not
                    // change cannot spin us.
                    if acted && !immediate_resync_used {
                        immediate_resync_used = true;
                        continue;
                    }
                    self.made = None;
                    let now = (self.clock)();
                    next_wakeup
                        .map(|at| Instant::now() + at.duration_since(now).unwrap_or_default())
                }
                Err(errors) => {
                    self.made = None;
                    for error in &errors {
                        tracing::error!(pod.uid = %self.pod.uid, pod.name = %self.pod.name, error = %ErrorChain(error), "pod sync failed");
                    }
                    Some(Instant::now() + retry.next_delay())
                }
            };
            immediate_resync_used = false;
            let timer = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = self.intent.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = self.wake.notified() => {}
                _ = timer => {}
            }
        }
    }

    async fn sync(&mut self, intent: &WorkerIntent) -> Result<SyncOutcome, Vec<RuntimeError>> {
        let known_empty = std::mem::take(&mut self.known_empty);
        let targeted = match self.made.take() {
            _ if known_empty => Some(ObservedPod::default()),
            Some((before, made)) => self
                .runtime
                .observe_made(&self.pod.uid, &before, &made)
                .await
                .inspect_err(|error| {
                    tracing::debug!(error = %ErrorChain(error), "observing what was made; listing the pod");
                })
                .ok(),
            None => None,
        };
        let mut observed = match targeted {
            Some(observed) => observed,
            None => self
                .runtime
                .observe_pod(&self.pod.uid)
                .await
                .map_err(|e| vec![e])?,
        };
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(observed_objects(&observed));
        self.startup.first_look(!observed.containers.is_empty());
        match intent {
            WorkerIntent::Run(pod) => {
                self.runtime
                    .read_termination_messages(pod, &mut observed)
                    .await;
                self.prober
                    .sync_pod(pod, &observed, self.pod_ip(pod, &observed));
                observed.unhealthy = self.prober.unhealthy(&observed);
            }
            WorkerIntent::Terminate { .. } => self.prober.remove_pod(&self.pod.uid),
        }
        let desired;
        let (pod, pod_intent) = match intent {
            WorkerIntent::Run(pod) => {
                desired = DesiredPod::from_pod(pod);
                (Some(pod.as_ref()), PodIntent::Run(&desired))
            }
            WorkerIntent::Terminate { grace_period } => (
                None,
                PodIntent::Terminate {
                    grace_period: *grace_period,
                },
            ),
        };
        let now = (self.clock)();
        let mut plan = compute_actions(pod_intent, &observed, &self.crash_loop, now);
        if plan.terminated {
            // Nothing of the pod runs any more: its volumes can go.
            self.runtime
                .teardown_volumes(&self.pod.uid)
                .await
                .map_err(|e| vec![e])?;
            self.runtime
                .remove_pod_cgroup(&self.pod.uid)
                .await
                .map_err(|e| vec![e])?;
            self.runtime.forget_pod(&self.pod.uid);
            return Ok(SyncOutcome::Terminated);
        }
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        self.reported_waits
            .retain(|name, _| plan.waiting.iter().any(|w| &w.name == name));
        for wait in &plan.waiting {
            let reported =
                self.reported_waits.insert(wait.name.clone(), wait.until) == Some(wait.until);
            let remaining = wait.until.duration_since(now).unwrap_or_default();
            waiting.insert(
                wait.name.clone(),
                Waiting {
                    reason: "CrashLoopBackOff".to_owned(),
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        self.crash_loop
                            .current(&wait.name)
                            .map_or(0, |d| d.as_secs()),
                        wait.name,
                        self.pod.name,
                        self.pod.namespace,
                        self.pod.uid
                    ),
                },
            );
            if !reported {
                tracing::info!(
                    container.name = wait.name,
                    backoff_s = self.crash_loop.current(&wait.name).map(|d| d.as_secs()),
                    remaining_ms = remaining.as_millis() as u64,
                    event = "BackOff",
                    "back-off restarting failed container (CrashLoopBackOff)"
                );
            }
        }
        if let Some(pod) = pod {
            self.hold_back_pulls(pod, &mut plan, &mut waiting, now);
        }
        for action in &plan.actions {
            if let Action::StartContainer {
                name,
                previous_finished_at: Some(finished_at),
                ..
            } = action
            {
                self.crash_loop.record_restart(name, *finished_at, now);
            }
        }
        let Executed { errors, made } = self
            .runtime
            .execute(pod, &self.pod, &observed, &plan.actions)
            .await;
        // An execution that only made things (a sandbox, started containers)
        // is followed by a look at just those; anything else lists the pod.
        let only_made = plan.actions.iter().all(|a| {
            matches!(
                a,
                Action::RunPodSandbox { .. } | Action::StartContainer { .. }
            )
        });
        let made_only = errors.is_empty() && only_made && made != Made::default();
        // The pod as the execution left it, where it knows: its status need
        // not wait for the runtime's answers to the look that follows.
        let assumed = made_only.then(|| made.assumed(&observed)).flatten();
        if made_only {
            self.made = Some((observed.clone(), made));
        }
        if let Some(pod) = pod {
            self.record_pulls(pod, &plan.actions, &errors, now);
            for error in &errors {
                if let Some((name, reason)) = waiting_after(error) {
                    waiting.insert(name.to_owned(), reason);
                }
            }
            match assumed {
                Some(assumed) => {
                    // Probes of the started containers start with it.
                    self.prober
                        .sync_pod(pod, &assumed, self.pod_ip(pod, &assumed));
                    self.publish_status(pod, &assumed, waiting, (self.clock)());
                }
                None => self.publish_status(pod, &observed, waiting, now),
            }
        }
        if errors.is_empty() {
            Ok(SyncOutcome::Synced {
                next_wakeup: plan.next_wakeup(),
                acted: !plan.actions.is_empty(),
            })
        } else {
            Err(errors)
        }
    }
}

impl<R: RuntimeService> PodWorker<R> {
    /// The address probes reach the pod at: its sandbox IP, or the node's
    /// for host-network pods.
    fn pod_ip(&self, pod: &Pod, observed: &crate::actions::ObservedPod) -> Option<IpAddr> {
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let ips = if host_network {
            &self.status.host_ips
        } else {
            &observed.latest_sandbox()?.ips
        };
        ips.first()?.parse().ok()
    }

    /// Drops container starts whose image is in pull back-off; they wait as
    /// `ImagePullBackOff` and the worker wakes up when the back-off ends.
    fn hold_back_pulls(
        &self,
        pod: &Pod,
        plan: &mut crate::actions::PodActions,
        waiting: &mut HashMap<String, Waiting>,
        now: SystemTime,
    ) {
        plan.actions.retain(|action| {
            let Action::StartContainer { name, .. } = action else {
                return true;
            };
            let image = find_container(pod, name).and_then(|c| c.image.as_deref());
            let Some(held) = image.and_then(|image| {
                self.pull_backoff
                    .get(image)
                    .filter(|b| b.until > now)
                    .map(|b| (image, b.until))
            }) else {
                return true;
            };
            let (image, until) = held;
            waiting.insert(
                name.clone(),
                Waiting {
                    reason: "ImagePullBackOff".to_owned(),
                    message: format!("Back-off pulling image \"{image}\""),
                },
            );
            plan.waiting.push(crate::actions::BackOffWait {
                name: name.clone(),
                until,
            });
            false
        });
    }

    /// Starts the pull back-off of images whose pull failed and forgets it
    /// for images of containers that started.
    fn record_pulls(
        &mut self,
        pod: &Pod,
        actions: &[Action],
        errors: &[RuntimeError],
        now: SystemTime,
    ) {
        for action in actions {
            let Action::StartContainer { name, .. } = action else {
                continue;
            };
            let Some(image) = find_container(pod, name).and_then(|c| c.image.clone()) else {
                continue;
            };
            let pull_failed = errors.iter().any(|e| {
                matches!(e, RuntimeError::Image { container_name, .. } if container_name == name)
            });
            if pull_failed {
                let entry = self
                    .pull_backoff
                    .entry(image)
                    .or_insert_with(|| PullBackOff {
                        backoff: Backoff::new(IMAGE_PULL_BACKOFF_INITIAL, IMAGE_PULL_BACKOFF_MAX),
                        until: now,
                    });
                entry.until = now + entry.backoff.next_delay();
            } else {
                self.pull_backoff.remove(&image);
            }
        }
    }

    fn publish_status(
        &mut self,
        pod: &Pod,
        observed: &crate::actions::ObservedPod,
        waiting: HashMap<String, Waiting>,
        now: SystemTime,
    ) {
        let store = &self.status.store;
        let previous = store.get(&self.pod.uid);
        let inputs = StatusInputs {
            waiting,
            probes: self.prober.statuses(observed),
            runtime_name: self.status.runtime_name.clone(),
            host_ips: self.status.host_ips.clone(),
        };
        let status = pod_status(
            pod,
            observed,
            &inputs,
            previous.as_ref().and_then(|p| p.status.as_ref()),
            now,
        );
        let mut reported = pod.clone();
        reported.status = Some(status);
        let started = self.startup.published(
            &reported,
            || self.runtime.pull_span(&self.pod.uid),
            (self.clock)(),
        );
        store.set(reported);
        if let Some(record) = started {
            record.log();
        }
    }
}

struct WorkerHandle {
    pod: PodRef,
    intent: watch::Sender<WorkerIntent>,
    wake: Arc<Notify>,
    /// [`PodWorker::seen`].
    seen: Arc<Mutex<Option<PodObjects>>>,
}

impl WorkerHandle {
    fn is_terminating(&self) -> bool {
        matches!(*self.intent.borrow(), WorkerIntent::Terminate { .. })
    }

    /// Whether the worker's last observation matches a relist's record.
    fn has_seen(&self, event: &PodLifecycleEvent) -> bool {
        event.present
            && self
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                == Some(&event.objects)
    }
}

/// Owns the pod workers and routes desired-state changes and PLEG events to them.
pub struct PodWorkers<R> {
    runtime: Arc<RuntimeManager<R>>,
    cancel: CancellationToken,
    clock: Clock,
    workers: HashMap<String, WorkerHandle>,
    tasks: JoinSet<()>,
    task_pods: HashMap<tokio::task::Id, String>,
    desired: Option<Arc<DesiredPods>>,
    /// Pods the PLEG saw in the runtime; `None` until its first relist.
    runtime_pods: Option<BTreeMap<String, PodRef>>,
    /// Desired pods already reported as waiting for a namesake to terminate.
    reported_waiting: HashSet<String>,
    status: StatusReporter,
    prober: Arc<Prober<R>>,
    /// Pods whose probe results changed.
    probe_results: mpsc::UnboundedReceiver<String>,
    /// Housekeeping that is not a pod worker.
    background: JoinSet<()>,
    /// Pod dirs of pods that are neither desired nor in the runtime were
    /// removed (once, when both were first known).
    pod_dirs_cleaned: bool,
}

impl<R: RuntimeService> PodWorkers<R> {
    /// Workers acting through `runtime`, all stopped by `cancel`.
    pub fn new(runtime: Arc<RuntimeManager<R>>, cancel: CancellationToken) -> Self {
        Self::with_clock(runtime, cancel, SystemTime::now)
    }

    /// Like [`PodWorkers::new`] with a given wall clock.
    pub fn with_clock(
        runtime: Arc<RuntimeManager<R>>,
        cancel: CancellationToken,
        clock: Clock,
    ) -> Self {
        let (probe_tx, probe_results) = mpsc::unbounded_channel();
        let prober = Prober::new(runtime.clone(), probe_tx, cancel.child_token());
        Self {
            prober,
            probe_results,
            pod_dirs_cleaned: false,
            background: JoinSet::new(),
            runtime,
            cancel,
            clock,
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            task_pods: HashMap::new(),
            desired: None,
            runtime_pods: None,
            reported_waiting: HashSet::new(),
            status: StatusReporter::default(),
        }
    }

    /// Reports pod statuses through `status` (a private store by default).
    pub fn with_status(mut self, status: StatusReporter) -> Self {
        self.status = status;
        self
    }

    /// Runs until cancelled, then waits for the workers to stop.
    pub async fn run(
        mut self,
        mut desired: DesiredPodsReceiver,
        mut pleg: mpsc::Receiver<Vec<PodLifecycleEvent>>,
    ) {
        self.desired = desired.borrow_and_update().clone();
        let mut source_open = true;
        let mut pleg_open = true;
        loop {
            tokio::select! {
                // First: a worker that ends because of the shutdown must not
                // be replaced.
                biased;
                _ = self.cancel.cancelled() => break,
                changed = desired.changed(), if source_open => {
                    match changed {
                        Ok(()) => {
                            self.desired = desired.borrow_and_update().clone();
                            self.reconcile();
                        }
                        Err(_) => source_open = false,
                    }
                }
                Some(uid) = self.probe_results.recv() => {
                    if let Some(worker) = self.workers.get(&uid) {
                        worker.wake.notify_one();
                    }
                }
                batch = pleg.recv(), if pleg_open => {
                    match batch {
                        Some(batch) => self.handle_pleg(batch),
                        None => pleg_open = false,
                    }
                }
                Some(joined) = self.tasks.join_next_with_id() => {
                    let (id, panic) = match joined {
                        Ok((id, ())) => (id, None),
                        Err(e) => (e.id(), Some(e)),
                    };
                    if let Some(uid) = self.task_pods.remove(&id) {
                        if let Some(panic) = &panic {
                            tracing::error!(pod.uid = uid, error = %panic, "pod worker failed");
                        }
                        self.workers.remove(&uid);
                        // Confirmed gone; after a panic unknown, so kept until
                        // the PLEG tells (a new worker then lists first).
                        if let (None, Some(pods)) = (&panic, self.runtime_pods.as_mut()) {
                            pods.remove(&uid);
                        }
                        self.reconcile();
                    }
                }
            }
        }
        while self.tasks.join_next().await.is_some() {}
        while self.background.join_next().await.is_some() {}
    }

    fn handle_pleg(&mut self, batch: Vec<PodLifecycleEvent>) {
        let pods = self.runtime_pods.get_or_insert_default();
        let mut unknown_pod_seen = batch.is_empty();
        for event in batch {
            if event.present {
                pods.insert(event.pod.uid.clone(), event.pod.clone());
            } else {
                pods.remove(&event.pod.uid);
            }
            match self.workers.get(&event.pod.uid) {
                // The worker's last observation shows all the relist does:
                // a sync would list, find the same and change nothing (on
                // a busy runtime, three calls per pod that just started).
                Some(worker) if worker.has_seen(&event) => {}
                Some(worker) => worker.wake.notify_one(),
                None => unknown_pod_seen = true,
            }
        }
        if unknown_pod_seen {
            self.reconcile();
        }
    }

    /// Brings the set of workers in line with the desired pods and the runtime.
    fn reconcile(&mut self) {
        let (Some(desired), Some(runtime_pods)) = (self.desired.clone(), self.runtime_pods.clone())
        else {
            return;
        };
        // Shutting down: workers end and none starts (a new one would act
        // on a pod the next kubelet adopts).
        if self.cancel.is_cancelled() {
            return;
        }
        if !self.pod_dirs_cleaned {
            self.pod_dirs_cleaned = true;
            let active: HashSet<String> =
                desired.keys().chain(runtime_pods.keys()).cloned().collect();
            self.clean_orphaned_pod_dirs(active);
        }
        for (uid, worker) in &self.workers {
            // Cloned so no read guard is held while sending on the same channel.
            let current = worker.intent.borrow().clone();
            match (desired.get(uid), &current) {
                (None, WorkerIntent::Run(pod)) => {
                    tracing::info!(
                        pod.uid = uid,
                        pod.name = worker.pod.name,
                        "pod no longer desired, terminating"
                    );
                    self.status.store.remove(uid);
                    let grace_period = Some(termination_grace_period(pod));
                    // The receiver lives as long as the worker; if it is gone, so is the worker.
                    let _ = worker
                        .intent
                        .send_replace(WorkerIntent::Terminate { grace_period });
                }
                (Some(new), WorkerIntent::Run(old)) if new != old => {
                    let _ = worker.intent.send_replace(WorkerIntent::Run(new.clone()));
                }
                _ => {}
            }
        }
        // Orphans first, so a desired pod with the same name waits for them.
        for (uid, pod) in &runtime_pods {
            if !desired.contains_key(uid) && !self.workers.contains_key(uid) {
                tracing::info!(
                    pod.uid = uid,
                    pod.name = pod.name,
                    "tearing down orphaned pod"
                );
                self.spawn(
                    pod.clone(),
                    WorkerIntent::Terminate { grace_period: None },
                    false,
                );
            }
        }
        for (uid, pod) in desired.iter() {
            if self.workers.contains_key(uid) {
                continue;
            }
            let pod_ref = PodRef::from_pod(pod);
            let full_name = pod_ref.full_name();
            if let Some(previous) = self
                .workers
                .values()
                .find(|w| w.pod.full_name() == full_name)
            {
                if !self.reported_waiting.insert(uid.clone()) {
                    continue;
                }
                tracing::info!(
                    pod.uid = uid,
                    pod.name = pod_ref.name,
                    previous.uid = previous.pod.uid,
                    previous.terminating = previous.is_terminating(),
                    "waiting for the previous pod with this name to terminate"
                );
                continue;
            }
            self.reported_waiting.remove(uid);
            let known_empty = !runtime_pods.contains_key(uid);
            self.spawn(pod_ref, WorkerIntent::Run(pod.clone()), known_empty);
        }
        self.reported_waiting
            .retain(|uid| desired.contains_key(uid));
    }

    /// Removes, in the background, the dirs of pods that vanished while the
    /// kubelet was down (their volumes unmounted first).
    fn clean_orphaned_pod_dirs(&mut self, active: HashSet<String>) {
        // Here, not in the background: a pod desired after `active` was
        // taken is not in it, and its worker, started by a later listing,
        // makes its cgroup, which this must not remove.
        for error in self.runtime.remove_orphaned_pod_cgroups(&active) {
            tracing::warn!(error = %ErrorChain(&error), "removing the cgroup of a vanished pod");
        }
        let Some(manager) = self.runtime.volumes().cloned() else {
            return;
        };
        self.background.spawn_blocking(move || {
            let (cleaned, errors) = manager.cleanup_orphaned_pod_dirs(&active);
            for uid in cleaned {
                tracing::info!(pod.uid = uid, "removed the directory of a pod that no longer exists");
            }
            for error in errors {
                tracing::warn!(error = %ErrorChain(&error), "removing the directory of a vanished pod");
            }
        });
    }

    fn spawn(&mut self, pod: PodRef, intent: WorkerIntent, known_empty: bool) {
        let (intent_tx, intent_rx) = watch::channel(intent);
        let wake = Arc::new(Notify::new());
        let seen = Arc::new(Mutex::new(None));
        let worker = PodWorker {
            pod: pod.clone(),
            runtime: self.runtime.clone(),
            intent: intent_rx,
            wake: wake.clone(),
            crash_loop: CrashLoopBackOff::default(),
            reported_waits: HashMap::new(),
            pull_backoff: HashMap::new(),
            status: self.status.clone(),
            prober: self.prober.clone(),
            clock: self.clock,
            cancel: self.cancel.child_token(),
            made: None,
            known_empty,
            seen: seen.clone(),
            startup: Startup::default(),
        };
        let task = self.tasks.spawn(worker.run());
        self.task_pods.insert(task.id(), pod.uid.clone());
        self.workers.insert(
            pod.uid.clone(),
            WorkerHandle {
                pod,
                intent: intent_tx,
                wake,
                seen,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::fake_runtime::Call;
    use std::path::Path;
    use std::sync::OnceLock;

    use k8s_cri::v1 as cri;

    use super::*;
    use crate::fake_runtime::{FakeRuntime, FakeState};
    use crate::labels;
    use crate::pleg::GenericPleg;

    /// Wall clock that advances with tokio's (paused) clock.
    fn test_clock() -> SystemTime {
        static BASE: OnceLock<(SystemTime, Instant)> = OnceLock::new();
        let (system, instant) = *BASE.get_or_init(|| (SystemTime::now(), Instant::now()));
        system + Instant::now().saturating_duration_since(instant)
    }

    fn pod(uid: &str, name: &str, restart_policy: &str, grace: i64) -> Arc<Pod> {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, uid: {uid}}}\n\
             spec:\n  restartPolicy: {restart_policy}\n  terminationGracePeriodSeconds: {grace}\n  \
             containers:\n  - {{name: app, image: busybox, imagePullPolicy: IfNotPresent}}\n"
        );
        Arc::new(serde_yaml::from_str(&yaml).unwrap())
    }

    /// Pod `u1`, `web-node1`: one container, restartPolicy Always.
    fn web() -> Arc<Pod> {
        pod("u1", "web-node1", "Always", 30)
    }

    fn desired(pods: &[&Arc<Pod>]) -> Option<Arc<DesiredPods>> {
        let map = pods
            .iter()
            .map(|p| (p.metadata.uid.clone().unwrap(), (*p).clone()))
            .collect();
        Some(Arc::new(map))
    }

    struct Kubelet {
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        desired: watch::Sender<Option<Arc<DesiredPods>>>,
        /// The pod statuses the workers publish.
        statuses: Arc<PodStatusStore>,
    }

    impl Kubelet {
        fn start(fake: &FakeRuntime, logs: &Path, pods: Option<Arc<DesiredPods>>) -> Self {
            let runtime =
                RuntimeManager::new(fake.clone(), logs.to_owned(), logs.join("no-resolv.conf"));
            Self::start_on(runtime, pods)
        }

        /// A kubelet on `runtime`.
        fn start_on(runtime: RuntimeManager<FakeRuntime>, pods: Option<Arc<DesiredPods>>) -> Self {
            let runtime = Arc::new(runtime);
            let (desired, desired_rx) = watch::channel(pods);
            let (pleg_tx, pleg_rx) = mpsc::channel(64);
            let cancel = CancellationToken::new();
            let pleg = GenericPleg::new(runtime.clone(), Duration::from_secs(1));
            tokio::spawn(pleg.run(pleg_tx, cancel.clone()));
            let statuses = Arc::new(PodStatusStore::default());
            let workers = PodWorkers::with_clock(runtime, cancel.clone(), test_clock).with_status(
                StatusReporter {
                    store: statuses.clone(),
                    runtime_name: "fake".into(),
                    host_ips: vec!["10.0.0.1".into()],
                },
            );
            let task = tokio::spawn(workers.run(desired_rx, pleg_rx));
            Self {
                cancel,
                task,
                desired,
                statuses,
            }
        }

        /// Pod `uid`'s status once `predicate` holds for it.
        async fn wait_for_status(
            &self,
            what: &str,
            uid: &str,
            predicate: impl Fn(&k8s_openapi::api::core::v1::PodStatus) -> bool,
        ) -> k8s_openapi::api::core::v1::PodStatus {
            let mut changes = self.statuses.subscribe();
            let wait = async {
                loop {
                    let status = self.statuses.get(uid).and_then(|p| p.status.clone());
                    if let Some(status) = status.filter(|s| predicate(s)) {
                        return status;
                    }
                    changes.changed().await.unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(600), wait)
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        }

        /// A kubelet with pod `u1` (`web-node1`, restartPolicy Always,
        /// see [`web`]), once the pod's container runs.
        async fn with_web_running(fake: &FakeRuntime, logs: &Path) -> Self {
            let kubelet = Self::start(fake, logs, desired(&[&web()]));
            fake.wait_for("container running", |s| s.running_of("u1").len() == 1)
                .await;
            kubelet
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap();
        }
    }

    fn restart_count(c: &crate::fake_runtime::FakeContainer) -> &str {
        &c.config.annotations[labels::CONTAINER_RESTART_COUNT]
    }

    fn running_with_restart(state: &FakeState, uid: &str, count: &str) -> bool {
        state
            .running_of(uid)
            .iter()
            .any(|(_, c)| restart_count(c) == count)
    }

    fn only_running(fake: &FakeRuntime, uid: &str) -> String {
        fake.state().running_of(uid)[0].0.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn starts_a_pod_and_restarts_an_exited_container_with_backoff() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let kubelet = Kubelet::with_web_running(&fake, logs.path()).await;
        {
            let state = fake.state();
            let (_, sandbox) = state.sandboxes_of("u1")[0];
            assert_eq!(sandbox.config.metadata.as_ref().unwrap().attempt, 0);
            let (_, container) = state.running_of("u1")[0];
            assert_eq!(container.config.labels[labels::CONTAINER_NAME], "app");
            assert_eq!(container.config.labels[labels::POD_NAME], "web-node1");
            assert_eq!(restart_count(container), "0");
            assert!(
                state.calls_of("PullImage").is_empty(),
                "present image is not pulled"
            );
        }
        assert!(logs.path().join("default_web-node1_u1/app").is_dir());

        // First exit: restarted at once.
        fake.exit_container(&only_running(&fake, "u1"), 1);
        fake.wait_for("first restart", |s| running_with_restart(s, "u1", "1"))
            .await;

        // Second exit: held back 10 s by CrashLoopBackOff, then restarted by
        // the worker's own timer (the runtime reports no further change).
        let exited_at = Instant::now();
        fake.exit_container(&only_running(&fake, "u1"), 1);
        fake.wait_for("second restart", |s| running_with_restart(s, "u1", "2"))
            .await;
        let waited = exited_at.elapsed();
        assert!(
            waited >= Duration::from_secs(10),
            "restarted after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(13),
            "restarted after {waited:?}"
        );

        // Only the most recent dead instance is kept.
        fake.wait_for("old instance removed", |s| s.containers_of("u1").len() == 2)
            .await;
        kubelet.stop().await;
    }

    /// A relist that shows what the worker last observed wakes no one: a
    /// started pod is not listed again at the next relist. One that shows
    /// a change does.
    #[tokio::test(start_paused = true)]
    async fn a_relist_showing_what_the_worker_saw_does_not_wake_it() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let kubelet = Kubelet::with_web_running(&fake, logs.path()).await;
        let statuses = || fake.state().calls_of("ContainerStatus").len();
        // The worker looks at what it started at once; let it settle.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let settled = statuses();
        assert!(settled >= 1, "the start was observed");
        // Five relists see the pod, first as new, then unchanged.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(statuses(), settled, "no sync after the start");

        fake.exit_container(&only_running(&fake, "u1"), 1);
        fake.wait_for("restart", |s| running_with_restart(s, "u1", "1"))
            .await;
        assert!(statuses() > settled, "the exit was observed");
        // The exited instance and the new one, unchanged: no sync either.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let settled = statuses();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(statuses(), settled, "no sync after the restart");
        kubelet.stop().await;
    }

    /// A started container shows running in the pod's status once its
    /// start is answered, before the runtime answers for its status; the
    /// runtime's answer then shows the same. On the pod network and the
    /// host's.
    #[tokio::test(start_paused = true)]
    async fn a_started_container_shows_running_before_the_runtime_answers_for_it() {
        shows_running_before_the_runtime_answers(web(), "10.0.0.9").await;
        let mut host = (*web()).clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        shows_running_before_the_runtime_answers(Arc::new(host), "10.0.0.1").await;
    }

    async fn shows_running_before_the_runtime_answers(pod: Arc<Pod>, pod_ip: &str) {
        let dir = tempfile::tempdir().unwrap();
        let (fake, runtime) = with_pod_dirs(dir.path());
        let held = fake.hold_container_statuses().await;
        let kubelet = Kubelet::start_on(runtime, desired(&[&pod]));
        let running = |s: &k8s_openapi::api::core::v1::PodStatus| {
            s.container_statuses
                .iter()
                .flatten()
                .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        };
        let assumed = kubelet.wait_for_status("app running", "u1", running).await;
        assert!(fake.state().calls_of("ContainerStatus").is_empty());
        assert_eq!(assumed.phase.as_deref(), Some("Running"));
        assert_eq!(assumed.pod_ips.as_ref().unwrap()[0].ip, pod_ip);
        let app = &assumed.container_statuses.as_ref().unwrap()[0];
        let id = only_running(&fake, "u1");
        assert_eq!(app.container_id.as_deref(), Some(&*format!("fake://{id}")));
        assert_eq!(app.image_id, "sha256:busybox");
        assert!(app.ready);
        let started_at = |s: &k8s_openapi::api::core::v1::PodStatus| {
            let mut s = s.clone();
            let state = s.container_statuses.as_mut().unwrap()[0].state.as_mut();
            let running = state.unwrap().running.as_mut().unwrap();
            (running.started_at.take(), s)
        };
        let (assumed_start, assumed) = started_at(&assumed);
        assert!(assumed_start.is_some());

        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fake.state().calls_of("ContainerStatus").len(), 1);
        let confirmed = kubelet.wait_for_status("app running", "u1", running).await;
        // Apart from the start time, which the runtime stamps itself.
        assert_eq!(started_at(&confirmed).1, assumed);
        kubelet.stop().await;
    }

    /// Pod `u1` (`web-node1`) made in a new sandbox and started by one
    /// execution, without errors: the observation before, and what was made.
    async fn run_and_start_web(runtime: &RuntimeManager<FakeRuntime>) -> (ObservedPod, Made) {
        let web = web();
        let pod_ref = PodRef::from_pod(&web);
        let before = runtime.observe_pod("u1").await.unwrap();
        let actions = [
            Action::RunPodSandbox { attempt: 0 },
            Action::StartContainer {
                name: "app".into(),
                restart_count: 0,
                sandbox: crate::actions::SandboxTarget::New,
                previous_finished_at: None,
            },
        ];
        let Executed { errors, made } = runtime
            .execute(Some(&web), &pod_ref, &before, &actions)
            .await;
        assert!(errors.is_empty(), "{errors:?}");
        (before, made)
    }

    #[tokio::test(start_paused = true)]
    async fn looking_at_what_was_made_sees_what_a_full_listing_sees() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let runtime = RuntimeManager::new(
            fake.clone(),
            logs.path().to_owned(),
            logs.path().join("none"),
        );
        let (before, made) = run_and_start_web(&runtime).await;
        assert!(made.sandbox.is_some());
        assert_eq!(made.containers.len(), 1);
        let targeted = runtime.observe_made("u1", &before, &made).await.unwrap();
        let listed = runtime.observe_pod("u1").await.unwrap();
        assert_eq!(targeted, listed);
        assert_eq!(targeted.sandboxes[0].ips, ["10.0.0.9"]);
    }

    /// With a pod directory every container gets the pod's hosts file,
    /// which names the pod IP. The new sandbox's status is asked while the
    /// first container is created (its env does not need the IP), once,
    /// and serves the observation after the start.
    #[tokio::test]
    async fn a_new_sandbox_is_asked_for_its_ips_while_the_container_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, runtime) = with_pod_dirs(dir.path());
        let (before, made) = run_and_start_web(&runtime).await;
        let methods: Vec<&str> = fake.state().calls.iter().map(|c| c.method).collect();
        let position = |m: &str| methods.iter().position(|x| *x == m).unwrap();
        assert_eq!(
            methods.iter().filter(|m| **m == "PodSandboxStatus").count(),
            1,
            "{methods:?}"
        );
        assert!(
            position("RunPodSandbox") < position("PodSandboxStatus")
                && position("PodSandboxStatus") < position("StartContainer"),
            "{methods:?}"
        );
        let observed = made
            .sandbox_observed
            .as_ref()
            .expect("the sandbox's status");
        assert_eq!(observed.ips, ["10.0.0.9"]);
        let hosts = std::fs::read_to_string(dir.path().join("root/pods/u1/etc-hosts")).unwrap();
        assert!(
            hosts.lines().any(|l| l.starts_with("10.0.0.9\t")),
            "the hosts file names the pod IP:\n{hosts}"
        );
        let targeted = runtime.observe_made("u1", &before, &made).await.unwrap();
        assert_eq!(targeted, runtime.observe_pod("u1").await.unwrap());
    }

    /// The new sandbox's IPs reach the hosts file while the runtime still
    /// creates the container: once CreateContainer answers, StartContainer
    /// follows with no file work between.
    #[tokio::test]
    async fn the_hosts_file_names_the_pod_ip_before_the_container_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, runtime) = with_pod_dirs(dir.path());
        let hosts_file = dir.path().join("root/pods/u1/etc-hosts");
        let held = fake.hold_creates().await;
        let start = run_and_start_web(&runtime);
        tokio::pin!(start);
        seen_while_held(start.as_mut(), "CreateContainer", || {
            let hosts = std::fs::read_to_string(&hosts_file).unwrap_or_default();
            hosts.lines().any(|l| l.starts_with("10.0.0.9\t"))
        })
        .await;
        assert!(fake.state().calls_of("CreateContainer").is_empty());
        drop(held);
        let (_, made) = start.await;
        assert_eq!(made.containers.len(), 1);
        assert_eq!(fake.state().calls_of("StartContainer").len(), 1);
    }

    /// Waits (30 s at most, looking every 5 ms) until `seen` holds, while
    /// `running`, which a fake runtime's held `call` keeps from ending, goes
    /// on: what the running work does before that call is answered.
    async fn seen_while_held<F: std::future::Future>(
        mut running: std::pin::Pin<&mut F>,
        call: &str,
        seen: impl Fn() -> bool,
    ) {
        let look = async {
            while !seen() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = &mut running => panic!("the work ended while {call} was held"),
            found = tokio::time::timeout(Duration::from_secs(30), look) => {
                found.unwrap_or_else(|_| panic!("not seen while {call} was unanswered"));
            }
        }
    }

    /// A fake runtime, and a runtime manager on it with pod directories
    /// under `dir/root` and logs under `dir/logs`.
    fn with_pod_dirs(dir: &Path) -> (FakeRuntime, RuntimeManager<FakeRuntime>) {
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let volumes = volume_drivers::VolumeManager::new(
            volume_drivers::VolumeManagerConfig {
                root_dir: dir.join("root"),
                flex_plugin_dir: dir.join("flex"),
                node_name: "node1".into(),
                node_allocatable: volume_drivers::NodeAllocatable {
                    cpu_millicores: 2000,
                    memory_bytes: 1 << 30,
                    ephemeral_storage_bytes: 1 << 30,
                },
            },
            Arc::new(volume_drivers::FakeMounter::new()),
        );
        let runtime = RuntimeManager::new(fake.clone(), dir.join("logs"), dir.join("none"))
            .with_volumes(Arc::new(volumes));
        (fake, runtime)
    }

    /// The starting containers' host files (log directory, termination
    /// message file, the pod's hosts file) are written while the runtime
    /// makes the sandbox. The second container's hosts file would then name
    /// the pod IP, which the first start learned, so its start writes it.
    #[tokio::test]
    async fn host_files_are_written_while_the_sandbox_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, runtime) = with_pod_dirs(dir.path());
        let two: Pod = serde_yaml::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: two-node1, namespace: default, uid: u2}\n\
             spec:\n  containers:\n  - {name: app, image: busybox, imagePullPolicy: IfNotPresent}\n  \
             - {name: side, image: busybox, imagePullPolicy: IfNotPresent}\n",
        )
        .unwrap();
        let start = |name: &str| Action::StartContainer {
            name: name.into(),
            restart_count: 0,
            sandbox: crate::actions::SandboxTarget::New,
            previous_finished_at: None,
        };
        let actions = [
            Action::RunPodSandbox { attempt: 0 },
            start("app"),
            start("side"),
        ];
        let root = dir.path().join("root/pods/u2");
        let log_dir = dir.path().join("logs/default_two-node1_u2");
        let files = [
            root.join("containers/app/0"),
            root.join("containers/side/0"),
            root.join("etc-hosts"),
            log_dir.join("app"),
            log_dir.join("side"),
        ];

        let held = fake.hold_sandboxes().await;
        let pod_ref = PodRef::from_pod(&two);
        let before = runtime.observe_pod("u2").await.unwrap();
        let execution = runtime.execute(Some(&two), &pod_ref, &before, &actions);
        tokio::pin!(execution);
        seen_while_held(execution.as_mut(), "RunPodSandbox", || {
            files.iter().all(|f| f.exists())
        })
        .await;
        assert!(fake.state().calls_of("RunPodSandbox").is_empty());
        let hosts = std::fs::read_to_string(root.join("etc-hosts")).unwrap();
        assert!(!hosts.contains("10.0.0.9"), "no IP known yet:\n{hosts}");
        drop(held);

        let Executed { errors, made } = execution.await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(made.containers.len(), 2);
        assert_eq!(std::fs::read(&files[1]).unwrap(), b"");
        let hosts = std::fs::read_to_string(root.join("etc-hosts")).unwrap();
        assert!(
            hosts.lines().any(|l| l.starts_with("10.0.0.9\t")),
            "the hosts file names the pod IP:\n{hosts}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sandbox_is_asked_for_its_ips_once() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let kubelet = Kubelet::with_web_running(&fake, logs.path()).await;
        // Relists and periodic syncs come and go; the IPs are remembered.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let sandbox = fake.state().sandboxes_of("u1")[0].0.clone();
        assert_eq!(
            fake.state().calls_of("PodSandboxStatus"),
            [&Call {
                method: "PodSandboxStatus",
                target: sandbox.clone(),
            }]
        );

        // A new sandbox is asked once more.
        fake.kill_sandbox(&sandbox);
        fake.wait_for("second sandbox running", |s| {
            s.sandboxes_of("u1").len() == 2 && s.running_of("u1").len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fake.state().calls_of("PodSandboxStatus").len(), 2);
        kubelet.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_liveness_probe_restarts_the_container() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: live-node1, namespace: default, uid: u1}\n\
             spec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: app\n    image: busybox\n    \
             livenessProbe: {exec: {command: [exit, '1']}, periodSeconds: 1, failureThreshold: 2}\n";
        let live: Arc<Pod> = Arc::new(serde_yaml::from_str(yaml).unwrap());
        let kubelet = Kubelet::start(&fake, logs.path(), desired(&[&live]));
        fake.wait_for("container running", |s| s.running_of("u1").len() == 1)
            .await;
        let started = Instant::now();
        // Two failed probes a second apart, then a kill and a new instance.
        fake.wait_for("restart after failed liveness", |s| {
            running_with_restart(s, "u1", "1")
        })
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1),
            "restarted after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "restarted after {waited:?}"
        );
        assert!(fake.state().calls_of("ExecSync").len() >= 2);
        kubelet.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn restart_policy_never_leaves_an_exited_container_alone() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let job = pod("u1", "job-node1", "Never", 30);
        let kubelet = Kubelet::start(&fake, logs.path(), desired(&[&job]));
        fake.wait_for("container running", |s| s.running_of("u1").len() == 1)
            .await;
        fake.exit_container(&only_running(&fake, "u1"), 1);
        fake.wait_for("sandbox released", |s| {
            s.sandboxes_of("u1")
                .iter()
                .all(|(_, sb)| sb.state == cri::PodSandboxState::SandboxNotready)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        {
            let state = fake.state();
            assert_eq!(state.calls_of("CreateContainer").len(), 1);
            assert_eq!(state.calls_of("RunPodSandbox").len(), 1);
        }
        kubelet.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_kubelet_adopts_running_pods_and_a_missing_image_is_pulled() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &[]);
        let first = Kubelet::with_web_running(&fake, logs.path()).await;
        assert_eq!(fake.state().calls_of("PullImage").len(), 1);
        first.stop().await;

        let calls_before = fake.state().calls.len();
        let second = Kubelet::start(&fake, logs.path(), desired(&[&web()]));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let changes: Vec<Call> = fake.state().calls[calls_before..]
            .iter()
            // Status reads aside.
            .filter(|c| !matches!(c.method, "PodSandboxStatus" | "ContainerStatus"))
            .cloned()
            .collect();
        assert_eq!(changes, [], "nothing was touched");
        second.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_pod_is_stopped_with_its_grace_period_and_removed() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let web = pod("u1", "web-node1", "Always", 5);
        let kubelet = Kubelet::start(&fake, logs.path(), desired(&[&web]));
        fake.wait_for("container running", |s| s.running_of("u1").len() == 1)
            .await;
        let container = only_running(&fake, "u1");

        kubelet.desired.send_replace(desired(&[]));
        fake.wait_for("pod gone", |s| {
            s.sandboxes.is_empty() && s.containers.is_empty()
        })
        .await;
        let (stops, methods): (Vec<_>, Vec<_>) = {
            let state = fake.state();
            let stops = state
                .calls_of("StopContainer")
                .iter()
                .map(|c| c.target.clone())
                .collect();
            (stops, state.calls.iter().map(|c| c.method).collect())
        };
        assert_eq!(stops, [format!("{container} timeout=5")]);
        let teardown = &methods[methods.len() - 4..];
        assert_eq!(
            teardown,
            [
                "StopContainer",
                "StopPodSandbox",
                "RemoveContainer",
                "RemovePodSandbox"
            ]
        );
        kubelet.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn orphans_are_torn_down_only_once_the_source_has_listed() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let first = Kubelet::with_web_running(&fake, logs.path()).await;
        first.stop().await;

        // Source not listed yet: the pod is not an orphan yet.
        let second = Kubelet::start(&fake, logs.path(), None);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.state().running_of("u1").len(), 1);

        second.desired.send_replace(desired(&[]));
        fake.wait_for("orphan gone", |s| {
            s.sandboxes.is_empty() && s.containers.is_empty()
        })
        .await;
        // The orphan's grace period came from the container's annotation.
        assert!(
            fake.state().calls_of("StopContainer")[0]
                .target
                .ends_with("timeout=30")
        );
        second.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_edited_pod_starts_after_the_old_one_with_the_same_name_is_gone() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let old = pod("u1", "web-node1", "Always", 30);
        let new = pod("u2", "web-node1", "Always", 30);
        let kubelet = Kubelet::start(&fake, logs.path(), desired(&[&old]));
        fake.wait_for("old running", |s| s.running_of("u1").len() == 1)
            .await;
        let old_sandbox = fake.state().sandboxes_of("u1")[0].0.clone();

        kubelet.desired.send_replace(desired(&[&new]));
        fake.wait_for("new running, old gone", |s| {
            s.running_of("u2").len() == 1 && s.sandboxes_of("u1").is_empty()
        })
        .await;
        let calls = fake.state().calls.clone();
        let position = |method: &str, target: &str| {
            calls
                .iter()
                .position(|c| c.method == method && c.target == target)
                .unwrap()
        };
        assert!(position("RemovePodSandbox", &old_sandbox) < position("RunPodSandbox", "u2"));
        kubelet.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_sandbox_is_replaced_with_the_next_attempt() {
        let logs = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new(test_clock, &["busybox"]);
        let kubelet = Kubelet::with_web_running(&fake, logs.path()).await;
        let sandbox = fake.state().sandboxes_of("u1")[0].0.clone();

        fake.kill_sandbox(&sandbox);
        fake.wait_for("new sandbox with a running container", |s| {
            let new_sandbox = s.sandboxes_of("u1").into_iter().find(|(_, sb)| {
                sb.state == cri::PodSandboxState::SandboxReady
                    && sb.config.metadata.as_ref().unwrap().attempt == 1
            });
            new_sandbox
                .is_some_and(|(id, _)| s.running_of("u1").iter().any(|(_, c)| &c.sandbox_id == id))
        })
        .await;
        assert_eq!(
            fake.state().running_of("u1").len(),
            1,
            "the old container was stopped"
        );
        kubelet.stop().await;
    }
}
