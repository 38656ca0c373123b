//! The pod status the kubelet reports: [`pod_status`] turns a pod's spec,
//! its runtime state and what the worker and prober know into the API's
//! `PodStatus` (upstream `generateAPIPodStatus` and `getPhase`), and
//! [`PodStatusStore`] keeps the latest one per pod for the kubelet server
//! (and, in API mode, for the status manager to patch).
//!
//! Pure apart from the store: no I/O and no clock, so every rule is
//! unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiContainerState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition,
    PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use crate::actions::{ContainerState, ObservedContainer, ObservedPod, RestartPolicy};
use crate::qos::qos_class;

/// `status.phase` values.
pub mod phase {
    /// Accepted, not all containers running yet.
    pub const PENDING: &str = "Pending";
    /// Bound to the node and at least one container running.
    pub const RUNNING: &str = "Running";
    /// Every container terminated with success and will not restart.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Every container terminated, at least one in failure.
    pub const FAILED: &str = "Failed";
}

/// Why a container is waiting, as the worker knows it (upstream reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `CrashLoopBackOff`, `ErrImagePull`, `ImagePullBackOff`,
    /// `CreateContainerConfigError`, `CreateContainerError`, `RunContainerError`, ...
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// What the prober knows of a running container instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStatus {
    /// The readiness probe (if any) succeeded last.
    pub ready: bool,
    /// The startup probe (if any) has succeeded.
    pub started: bool,
}

/// Everything besides spec and runtime state that goes into a pod status.
#[derive(Debug, Clone, Default)]
pub struct StatusInputs {
    /// Waiting reasons by container name, from the last sync.
    pub waiting: HashMap<String, Waiting>,
    /// Probe results by container id; a running container without an entry
    /// has no probes and counts as started and ready.
    pub probes: HashMap<String, ProbeStatus>,
    /// The runtime's name for container ids (`containerd`, `cri-shim`).
    pub runtime_name: String,
    /// The node's IPs, primary first.
    pub host_ips: Vec<String>,
}

/// `at` in whole seconds, as the API carries it: statuses that read the
/// same compare equal, and are not published again.
fn time(at: SystemTime) -> Option<Time> {
    let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let seconds = i64::try_from(since_epoch.as_secs()).ok()?;
    Timestamp::new(seconds, 0).ok().map(Time)
}

fn container_id(runtime: &str, id: &str) -> String {
    format!("{runtime}://{id}")
}

fn terminated(c: &ObservedContainer, runtime: &str) -> ApiContainerState {
    let reason = if c.reason.is_empty() {
        if c.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_owned()
    } else {
        c.reason.clone()
    };
    ApiContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: c.exit_code,
            reason: Some(reason),
            message: Some(c.message.clone()).filter(|m| !m.is_empty()),
            started_at: c.started_at.and_then(time),
            finished_at: c.finished_at.and_then(time),
            container_id: Some(container_id(runtime, &c.id)),
            signal: None,
        }),
        ..Default::default()
    }
}

fn waiting(reason: &str, message: &str) -> ApiContainerState {
    ApiContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()).filter(|m| !m.is_empty()),
        }),
        ..Default::default()
    }
}

/// The status of one container of the spec. `default_waiting` is the reason
/// for a container that has no instance yet.
fn container_status(
    spec: &Container,
    observed: &ObservedPod,
    inputs: &StatusInputs,
    default_waiting: &str,
) -> ContainerStatus {
    let mut instances: Vec<&ObservedContainer> = observed
        .containers
        .iter()
        .filter(|c| c.name == spec.name)
        .collect();
    instances.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    let latest = instances.first().copied();
    let previous = instances.get(1).copied();
    let runtime = inputs.runtime_name.as_str();
    let worker_waiting = inputs.waiting.get(&spec.name);

    let (state, last_state) = match (latest, worker_waiting) {
        (Some(c), _) if c.state == ContainerState::Running => (
            ApiContainerState {
                running: Some(ContainerStateRunning {
                    started_at: c.started_at.and_then(time),
                }),
                ..Default::default()
            },
            previous.map(|p| terminated(p, runtime)),
        ),
        // Held back (CrashLoopBackOff) or failing to start again: the last
        // run is the last state.
        (Some(c), Some(w)) if c.state == ContainerState::Exited => {
            (waiting(&w.reason, &w.message), Some(terminated(c, runtime)))
        }
        (Some(c), _) if c.state == ContainerState::Exited => (
            terminated(c, runtime),
            previous.map(|p| terminated(p, runtime)),
        ),
        (latest, Some(w)) => (
            waiting(&w.reason, &w.message),
            latest
                .or(previous)
                .filter(|c| c.state == ContainerState::Exited)
                .map(|c| terminated(c, runtime)),
        ),
        (Some(_), None) => (
            waiting("ContainerCreating", ""),
            previous.map(|p| terminated(p, runtime)),
        ),
        (None, None) => (waiting(default_waiting, ""), None),
    };
    let running = latest.filter(|c| c.state == ContainerState::Running);
    let probe = running.map(|c| {
        inputs.probes.get(&c.id).copied().unwrap_or(ProbeStatus {
            ready: true,
            started: true,
        })
    });
    ContainerStatus {
        name: spec.name.clone(),
        image: spec.image.clone().unwrap_or_default(),
        image_id: latest.map(|c| c.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|c| container_id(runtime, &c.id)),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ready: probe.is_some_and(|p| p.ready && p.started),
        started: Some(probe.is_some_and(|p| p.started)),
        restart_count: latest.map_or(0, |c| c.restart_count as i32),
        ..Default::default()
    }
}

fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

fn terminated_code(status: &ContainerStatus) -> Option<i32> {
    status
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

fn last_terminated_code(status: &ContainerStatus) -> Option<i32> {
    status
        .last_state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// Whether the init phase is over: every regular init container succeeded
/// and every sidecar has started. Also true once any app container ran
/// (a restarting sidecar does not send the pod back to initializing).
fn initialization(
    init_specs: &[Container],
    init_statuses: &[ContainerStatus],
    app_started: bool,
) -> (Vec<String>, usize) {
    let mut incomplete = Vec::new();
    let mut failed = 0;
    for (spec, status) in init_specs.iter().zip(init_statuses) {
        if is_sidecar(spec) {
            if status.started != Some(true) && !app_started {
                incomplete.push(spec.name.clone());
            }
            continue;
        }
        match terminated_code(status) {
            Some(0) => {}
            Some(_) => {
                failed += 1;
                incomplete.push(spec.name.clone());
            }
            None if app_started => {}
            None => {
                if last_terminated_code(status).is_some_and(|code| code != 0) {
                    failed += 1;
                }
                incomplete.push(spec.name.clone());
            }
        }
    }
    (incomplete, failed)
}

/// Upstream `getPhase`.
fn phase(
    restart_policy: RestartPolicy,
    pending_init: bool,
    failed_init: usize,
    statuses: &[ContainerStatus],
) -> &'static str {
    if failed_init > 0 && restart_policy == RestartPolicy::Never {
        return phase::FAILED;
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for status in statuses {
        let state = status.state.as_ref();
        if state.is_some_and(|s| s.running.is_some()) {
            running += 1;
        } else if let Some(code) = terminated_code(status) {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else if last_terminated_code(status).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if pending_init || waiting > 0 {
        return phase::PENDING;
    }
    if running > 0 {
        return phase::RUNNING;
    }
    if stopped > 0 {
        return match restart_policy {
            RestartPolicy::Always => phase::RUNNING,
            _ if stopped == succeeded => phase::SUCCEEDED,
            RestartPolicy::Never => phase::FAILED,
            RestartPolicy::OnFailure => phase::RUNNING,
        };
    }
    phase::PENDING
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: Option<&PodStatus>,
    now: SystemTime,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time only moves when the status flips.
    let last_transition_time = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| time(now));
    PodCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: if ok { None } else { reason.map(str::to_owned) },
        message: if ok { None } else { message },
        last_transition_time,
        ..Default::default()
    }
}

fn names_list(names: &[String]) -> String {
    format!("[{}]", names.join(" "))
}

/// The `PodStatus` of `pod`. `previous` keeps condition transition times
/// and the start time stable; `now` stamps the first ones.
pub fn pod_status(
    pod: &Pod,
    observed: &ObservedPod,
    inputs: &StatusInputs,
    previous: Option<&PodStatus>,
    now: SystemTime,
) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let init_specs = spec.init_containers.clone().unwrap_or_default();
    let app_started = spec
        .containers
        .iter()
        .any(|c| observed.latest_container(&c.name).is_some());
    let init_statuses: Vec<ContainerStatus> = init_specs
        .iter()
        .map(|c| container_status(c, observed, inputs, "PodInitializing"))
        .collect();
    let (incomplete_init, failed_init) = initialization(&init_specs, &init_statuses, app_started);
    let initialized = incomplete_init.is_empty();
    let app_waiting = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, observed, inputs, app_waiting))
        .collect();
    let restart_policy = RestartPolicy::from_spec(spec.restart_policy.as_deref());
    let phase = phase(restart_policy, !initialized, failed_init, &statuses);

    let sandbox = observed.latest_sandbox();
    let sandbox_ready = sandbox.is_some_and(|s| s.ready);
    let pod_ips: Vec<String> = sandbox
        .filter(|s| s.ready)
        .map(|s| s.ips.clone())
        .unwrap_or_default();
    let pod_ips = if spec.host_network == Some(true) {
        inputs.host_ips.clone()
    } else {
        pod_ips
    };
    let unready: Vec<String> = statuses
        .iter()
        .chain(
            init_statuses
                .iter()
                .zip(&init_specs)
                .filter(|(_, spec)| is_sidecar(spec))
                .map(|(status, _)| status),
        )
        .filter(|s| !s.ready)
        .map(|s| s.name.clone())
        .collect();
    // A finished pod is never ready; its containers are simply done.
    let finished = phase == phase::SUCCEEDED || phase == phase::FAILED;
    let containers_ready = unready.is_empty() && !finished;
    let unready_reason = if finished {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_message =
        (!finished).then(|| format!("containers with unready status: {}", names_list(&unready)));
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            None,
            previous,
            now,
        ),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: {}",
                names_list(&incomplete_init)
            )),
            previous,
            now,
        ),
        condition(
            "Ready",
            containers_ready,
            Some(unready_reason),
            unready_message.clone(),
            previous,
            now,
        ),
        condition(
            "ContainersReady",
            containers_ready,
            Some(unready_reason),
            unready_message,
            previous,
            now,
        ),
        condition("PodScheduled", true, None, None, previous, now),
    ];
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: inputs.host_ips.first().cloned(),
        host_ips: Some(
            inputs
                .host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect(),
        )
        .filter(|ips: &Vec<HostIP>| !ips.is_empty()),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: Some(pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect())
            .filter(|ips: &Vec<PodIP>| !ips.is_empty()),
        start_time: previous
            .and_then(|p| p.start_time.clone())
            .or_else(|| time(now)),
        qos_class: Some(qos_class(pod).as_str().to_owned()),
        init_container_statuses: Some(init_statuses).filter(|s| !s.is_empty()),
        container_statuses: Some(statuses),
        ..Default::default()
    }
}

/// The pods the kubelet runs, each with its latest status; readers get
/// consistent snapshots and a change counter to wait on.
#[derive(Debug)]
pub struct PodStatusStore {
    pods: Mutex<BTreeMap<String, Arc<Entry>>>,
    changed: watch::Sender<u64>,
}

/// A recorded pod and, once someone asked, its JSON.
#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    /// Serialized at the first read after the status changed, so readers
    /// polling many pods pay only for the pods that changed.
    json: OnceLock<Arc<serde_json::value::RawValue>>,
}

impl Default for PodStatusStore {
    fn default() -> Self {
        Self {
            pods: Mutex::new(BTreeMap::new()),
            changed: watch::Sender::new(0),
        }
    }
}

impl PodStatusStore {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `pod` (with its status) under its UID; a pod whose status did
    /// not change is not re-published.
    pub fn set(&self, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut pods = self.lock();
        if pods.get(&uid).is_some_and(|old| *old.pod == pod) {
            return;
        }
        let entry = Entry {
            pod: Arc::new(pod),
            json: OnceLock::new(),
        };
        pods.insert(uid, Arc::new(entry));
        drop(pods);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The recorded pod `uid`.
    pub fn get(&self, uid: &str) -> Option<Arc<Pod>> {
        self.lock().get(uid).map(|e| e.pod.clone())
    }

    /// Forgets pod `uid`.
    pub fn remove(&self, uid: &str) {
        if self.lock().remove(uid).is_some() {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Every recorded pod, ordered by UID.
    pub fn list(&self) -> Vec<Arc<Pod>> {
        self.lock().values().map(|e| e.pod.clone()).collect()
    }

    /// Every recorded pod as JSON, ordered by UID; each pod is serialized
    /// once per status.
    pub fn list_json(&self) -> Vec<Arc<serde_json::value::RawValue>> {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        entries
            .iter()
            .map(|entry| {
                entry
                    .json
                    .get_or_init(|| {
                        // Serializing API types cannot fail.
                        let text = serde_json::to_string(&*entry.pod).unwrap_or_default();
                        serde_json::value::RawValue::from_string(text)
                            .map(Arc::from)
                            .unwrap_or_else(|_| Arc::from(empty_object()))
                    })
                    .clone()
            })
            .collect()
    }

    /// A receiver that sees a new value on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

fn empty_object() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("{}".to_owned()).expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::actions::ObservedSandbox;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn pod(yaml_spec: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns, uid: u1}}\nspec:\n{yaml_spec}"
        ))
        .unwrap()
    }

    fn inputs() -> StatusInputs {
        StatusInputs {
            runtime_name: "cri-shim".into(),
            host_ips: vec!["10.0.0.1".into()],
            ..StatusInputs::default()
        }
    }

    fn sandbox_ready() -> ObservedSandbox {
        ObservedSandbox {
            id: "s1".into(),
            ready: true,
            created_at: 1,
            ips: vec!["10.88.0.5".into()],
            ..ObservedSandbox::default()
        }
    }

    fn instance(
        id: &str,
        name: &str,
        state: ContainerState,
        code: i32,
        created: i64,
    ) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            sandbox_id: "s1".into(),
            name: name.into(),
            state,
            exit_code: code,
            created_at: created,
            restart_count: (created - 1) as u32,
            started_at: Some(at(created as u64)),
            finished_at: (state == ContainerState::Exited).then(|| at(created as u64 + 1)),
            image_ref: "sha256:abc".into(),
            ..ObservedContainer::default()
        }
    }

    fn observed(containers: Vec<ObservedContainer>) -> ObservedPod {
        ObservedPod {
            sandboxes: vec![sandbox_ready()],
            containers,
            ..ObservedPod::default()
        }
    }

    fn condition<'a>(status: &'a PodStatus, kind: &str) -> &'a PodCondition {
        status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap()
    }

    fn state_of(status: &ContainerStatus) -> &ApiContainerState {
        status.state.as_ref().unwrap()
    }

    const ONE: &str = "  containers:\n  - {name: app, image: busybox}\n";

    #[test]
    fn a_new_pod_is_pending_with_containers_creating() {
        let status = pod_status(&pod(ONE), &ObservedPod::default(), &inputs(), None, at(0));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            state_of(app).waiting.as_ref().unwrap().reason.as_deref(),
            Some("ContainerCreating")
        );
        assert!(!app.ready);
        assert_eq!(
            condition(&status, "PodReadyToStartContainers").status,
            "False"
        );
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(
            condition(&status, "Ready").message.as_deref(),
            Some("containers with unready status: [app]")
        );
        assert_eq!(condition(&status, "PodScheduled").status, "True");
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(status.pod_ip, None);
    }

    #[test]
    fn a_running_pod_is_ready_with_its_ip_and_ids() {
        let running = observed(vec![instance("c1", "app", ContainerState::Running, 0, 1)]);
        let status = pod_status(&pod(ONE), &running, &inputs(), None, at(5));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.5"));
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.1"));
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert!(app.ready);
        assert_eq!(app.started, Some(true));
        assert_eq!(app.container_id.as_deref(), Some("cri-shim://c1"));
        assert_eq!(app.image, "busybox");
        assert_eq!(app.image_id, "sha256:abc");
        assert!(state_of(app).running.is_some());
        for kind in [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
        ] {
            assert_eq!(condition(&status, kind).status, "True", "{kind}");
        }
    }

    #[test]
    fn finished_pods_succeed_or_fail_by_policy() {
        let never = pod(&format!("  restartPolicy: Never\n{ONE}"));
        let ok = observed(vec![instance("c1", "app", ContainerState::Exited, 0, 1)]);
        let status = pod_status(&never, &ok, &inputs(), None, at(5));
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        let terminated = state_of(&status.container_statuses.as_ref().unwrap()[0])
            .terminated
            .clone()
            .unwrap();
        assert_eq!(terminated.reason.as_deref(), Some("Completed"));
        assert_eq!(
            condition(&status, "Ready").reason.as_deref(),
            Some("PodCompleted")
        );

        let failed = observed(vec![instance("c1", "app", ContainerState::Exited, 3, 1)]);
        let status = pod_status(&never, &failed, &inputs(), None, at(5));
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let terminated = state_of(&status.container_statuses.as_ref().unwrap()[0])
            .terminated
            .clone()
            .unwrap();
        assert_eq!(
            (terminated.exit_code, terminated.reason.as_deref()),
            (3, Some("Error"))
        );
    }

    #[test]
    fn crash_loop_back_off_shows_waiting_and_the_last_run() {
        let mut inputs = inputs();
        inputs.waiting.insert(
            "app".into(),
            Waiting {
                reason: "CrashLoopBackOff".into(),
                message: "back-off 10s restarting failed container=app pod=p_ns(u1)".into(),
            },
        );
        let crashed = observed(vec![
            instance("c1", "app", ContainerState::Exited, 1, 1),
            instance("c2", "app", ContainerState::Exited, 1, 2),
        ]);
        let status = pod_status(&pod(ONE), &crashed, &inputs, None, at(5));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            state_of(app).waiting.as_ref().unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
        let last = app
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(last.container_id.as_deref(), Some("cri-shim://c2"));
        assert_eq!(app.restart_count, 1);
    }

    #[test]
    fn init_containers_keep_the_pod_pending_and_uninitialized() {
        let spec = format!("  initContainers:\n  - {{name: init, image: busybox}}\n{ONE}");
        let status = pod_status(
            &pod(&spec),
            &observed(vec![instance("c1", "init", ContainerState::Running, 0, 1)]),
            &inputs(),
            None,
            at(5),
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(condition(&status, "Initialized").status, "False");
        assert_eq!(
            condition(&status, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [init]")
        );
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            state_of(app).waiting.as_ref().unwrap().reason.as_deref(),
            Some("PodInitializing")
        );

        let done = observed(vec![
            instance("c1", "init", ContainerState::Exited, 0, 1),
            instance("c2", "app", ContainerState::Running, 0, 2),
        ]);
        let status = pod_status(&pod(&spec), &done, &inputs(), None, at(6));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Initialized").status, "True");

        let never = format!("  restartPolicy: Never\n{spec}");
        let failed = observed(vec![instance("c1", "init", ContainerState::Exited, 2, 1)]);
        let status = pod_status(&pod(&never), &failed, &inputs(), None, at(6));
        assert_eq!(status.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn readiness_comes_from_the_prober_and_transitions_keep_their_time() {
        let running = observed(vec![instance("c1", "app", ContainerState::Running, 0, 1)]);
        let mut inputs = inputs();
        inputs.probes.insert(
            "c1".into(),
            ProbeStatus {
                ready: false,
                started: true,
            },
        );
        let first = pod_status(&pod(ONE), &running, &inputs, None, at(5));
        assert_eq!(condition(&first, "Ready").status, "False");
        let again = pod_status(&pod(ONE), &running, &inputs, Some(&first), at(9));
        assert_eq!(
            condition(&again, "Ready").last_transition_time,
            condition(&first, "Ready").last_transition_time
        );
        assert_eq!(again.start_time, first.start_time);
        inputs.probes.get_mut("c1").unwrap().ready = true;
        let ready = pod_status(&pod(ONE), &running, &inputs, Some(&again), at(12));
        assert_eq!(condition(&ready, "Ready").status, "True");
        assert_ne!(
            condition(&ready, "Ready").last_transition_time,
            condition(&first, "Ready").last_transition_time
        );
    }

    #[test]
    fn the_store_publishes_only_changes() {
        let store = PodStatusStore::default();
        let rx = store.subscribe();
        let p = pod(ONE);
        store.set(p.clone());
        store.set(p.clone());
        assert_eq!(*rx.borrow(), 1);
        assert_eq!(store.list().len(), 1);
        store.remove("u1");
        assert!(store.get("u1").is_none());
        assert_eq!(*rx.borrow(), 2);
    }
}
