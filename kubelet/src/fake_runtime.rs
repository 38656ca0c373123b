//! An in-memory [`RuntimeService`] for tests: sandboxes and containers with
//! CRI state transitions, a call log, and hooks to make containers exit or
//! sandboxes die. Tests wait on its change notifications, not on sleeps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::sync::watch;

use crate::runtime::{CriError, RuntimeService};

use crate::pod_workers::Clock;

#[derive(Debug, Clone)]
pub struct FakeSandbox {
    pub config: cri::PodSandboxConfig,
    pub state: cri::PodSandboxState,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    pub state: cri::ContainerState,
    pub created_at: i64,
    /// The sandbox's log directory joined with the config's log path.
    pub log_path: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
}

/// One recorded call: method and the id or name it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub target: String,
}

#[derive(Debug, Default)]
pub struct FakeState {
    next_id: u64,
    last_timestamp: i64,
    pub sandboxes: BTreeMap<String, FakeSandbox>,
    pub containers: BTreeMap<String, FakeContainer>,
    pub images: HashSet<String>,
    pub calls: Vec<Call>,
}

impl FakeState {
    /// Containers of a pod UID.
    pub fn containers_of(&self, uid: &str) -> Vec<(&String, &FakeContainer)> {
        self.containers
            .iter()
            .filter(|(_, c)| {
                c.config
                    .labels
                    .get(crate::labels::POD_UID)
                    .map(String::as_str)
                    == Some(uid)
            })
            .collect()
    }

    /// Sandboxes of a pod UID.
    pub fn sandboxes_of(&self, uid: &str) -> Vec<(&String, &FakeSandbox)> {
        self.sandboxes
            .iter()
            .filter(|(_, s)| {
                s.config
                    .labels
                    .get(crate::labels::POD_UID)
                    .map(String::as_str)
                    == Some(uid)
            })
            .collect()
    }

    /// Running containers of a pod UID.
    pub fn running_of(&self, uid: &str) -> Vec<(&String, &FakeContainer)> {
        self.containers_of(uid)
            .into_iter()
            .filter(|(_, c)| c.state == cri::ContainerState::ContainerRunning)
            .collect()
    }

    /// Calls of one method.
    pub fn calls_of(&self, method: &str) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.method == method).collect()
    }
}

/// The fake runtime; clones share state.
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<FakeState>>,
    changed: Arc<watch::Sender<u64>>,
    clock: Clock,
    /// Events to stream from `GetContainerEvents`; none: Unimplemented, as
    /// containerd 1.6 answers.
    events: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<cri::ContainerEventResponse>>>>,
    /// `RunPodSandbox` waits while a test holds this ([`Self::hold_sandboxes`]).
    sandbox_gate: Arc<tokio::sync::RwLock<()>>,
    /// `ContainerStatus` waits while a test holds this
    /// ([`Self::hold_container_statuses`]).
    status_gate: Arc<tokio::sync::RwLock<()>>,
    /// `CreateContainer` waits while a test holds this
    /// ([`Self::hold_creates`]).
    create_gate: Arc<tokio::sync::RwLock<()>>,
}

fn not_found(method: &'static str, id: &str) -> CriError {
    CriError::Status {
        method,
        status: Box::new(tonic::Status::not_found(format!("{id} not found"))),
    }
}

fn matches_labels(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl FakeRuntime {
    pub fn new(clock: Clock, images: &[&str]) -> Self {
        let state = FakeState {
            images: images.iter().map(|i| (*i).to_owned()).collect(),
            ..FakeState::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            changed: Arc::new(watch::channel(0).0),
            clock,
            events: Arc::default(),
            sandbox_gate: Arc::default(),
            status_gate: Arc::default(),
            create_gate: Arc::default(),
        }
    }

    /// `RunPodSandbox` calls wait (unanswered, unrecorded) until the
    /// returned guard is dropped.
    pub async fn hold_sandboxes(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.sandbox_gate.clone().write_owned().await
    }

    /// `ContainerStatus` calls wait (unanswered, unrecorded) until the
    /// returned guard is dropped.
    pub async fn hold_container_statuses(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.status_gate.clone().write_owned().await
    }

    /// `CreateContainer` calls wait (unanswered, unrecorded) until the
    /// returned guard is dropped.
    pub async fn hold_creates(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.create_gate.clone().write_owned().await
    }

    /// Makes `GetContainerEvents` available; the test sends events here.
    pub fn offer_events(&self) -> tokio::sync::mpsc::UnboundedSender<cri::ContainerEventResponse> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.events.lock().unwrap() = Some(rx);
        tx
    }

    fn now_nanos(&self) -> i64 {
        crate::runtime::time_to_nanos((self.clock)())
    }

    /// Runs `f` on the state, recording the call, and notifies waiters.
    fn mutate<T>(&self, call: Option<Call>, f: impl FnOnce(&mut FakeState, i64) -> T) -> T {
        let now = self.now_nanos();
        let result = {
            let mut state = self.state.lock().unwrap();
            // Strictly increasing timestamps keep "most recent" unambiguous.
            let stamp = now.max(state.last_timestamp + 1);
            state.last_timestamp = stamp;
            if let Some(call) = call {
                state.calls.push(call);
            }
            f(&mut state, stamp)
        };
        self.changed.send_modify(|v| *v += 1);
        result
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Waits until `predicate` holds (checked after every change).
    pub async fn wait_for(&self, what: &str, predicate: impl Fn(&FakeState) -> bool) {
        let mut changes = self.changed.subscribe();
        let wait = async {
            loop {
                if predicate(&self.state()) {
                    return;
                }
                changes.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(Duration::from_secs(600), wait)
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}; state: {:#?}", *self.state());
        }
    }

    /// The container's process exits with `code`.
    pub fn exit_container(&self, id: &str, code: i32) {
        self.mutate(None, |state, now| {
            let c = state.containers.get_mut(id).unwrap();
            c.state = cri::ContainerState::ContainerExited;
            c.finished_at = now;
            c.exit_code = code;
        });
    }

    /// The sandbox's infra process dies: the sandbox is no longer ready.
    pub fn kill_sandbox(&self, id: &str) {
        self.mutate(None, |state, _| {
            state.sandboxes.get_mut(id).unwrap().state = cri::PodSandboxState::SandboxNotready;
        });
    }

    /// The id of image `name`.
    fn image_id(name: &str) -> String {
        format!("sha256:{name}")
    }

    fn next_id(state: &mut FakeState, prefix: &str) -> String {
        state.next_id += 1;
        format!("{prefix}{}", state.next_id)
    }
}

impl RuntimeService for FakeRuntime {
    async fn version(&self) -> Result<cri::VersionResponse, CriError> {
        Ok(cri::VersionResponse {
            version: "v1".into(),
            runtime_name: "fake".into(),
            runtime_version: "0".into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String, CriError> {
        let _open = self.sandbox_gate.read().await;
        let uid = config
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        self.mutate(
            Some(Call {
                method: "RunPodSandbox",
                target: uid,
            }),
            |state, now| {
                let id = Self::next_id(state, "sandbox-");
                state.sandboxes.insert(
                    id.clone(),
                    FakeSandbox {
                        config,
                        state: cri::PodSandboxState::SandboxReady,
                        created_at: now,
                    },
                );
                Ok(id)
            },
        )
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.mutate(
            Some(Call {
                method: "StopPodSandbox",
                target: id.into(),
            }),
            |state, now| {
                let sandbox = state
                    .sandboxes
                    .get_mut(id)
                    .ok_or_else(|| not_found("StopPodSandbox", id))?;
                sandbox.state = cri::PodSandboxState::SandboxNotready;
                for c in state.containers.values_mut().filter(|c| c.sandbox_id == id) {
                    if c.state == cri::ContainerState::ContainerRunning {
                        c.state = cri::ContainerState::ContainerExited;
                        c.finished_at = now;
                        c.exit_code = 137;
                    }
                }
                Ok(())
            },
        )
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.mutate(
            Some(Call {
                method: "RemovePodSandbox",
                target: id.into(),
            }),
            |state, _| {
                state
                    .sandboxes
                    .remove(id)
                    .ok_or_else(|| not_found("RemovePodSandbox", id))?;
                state.containers.retain(|_, c| c.sandbox_id != id);
                Ok(())
            },
        )
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, CriError> {
        let mut state = self.state();
        state.calls.push(Call {
            method: "PodSandboxStatus",
            target: id.into(),
        });
        let sandbox = state
            .sandboxes
            .get(id)
            .ok_or_else(|| not_found("PodSandboxStatus", id))?;
        Ok(cri::PodSandboxStatus {
            id: id.into(),
            metadata: sandbox.config.metadata.clone(),
            state: sandbox.state as i32,
            created_at: sandbox.created_at,
            labels: sandbox.config.labels.clone(),
            annotations: sandbox.config.annotations.clone(),
            network: Some(cri::PodSandboxNetworkStatus {
                ip: "10.0.0.9".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, CriError> {
        let filter = filter.unwrap_or_default();
        let state = self.state();
        Ok(state
            .sandboxes
            .iter()
            .filter(|(_, s)| matches_labels(&s.config.labels, &filter.label_selector))
            .map(|(id, s)| cri::PodSandbox {
                id: id.clone(),
                metadata: s.config.metadata.clone(),
                state: s.state as i32,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: String::new(),
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let _open = self.create_gate.read().await;
        let log_path = crate::runtime::container::runtime_log_path(
            &sandbox_config.log_directory,
            &config.log_path,
        );
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.mutate(
            Some(Call {
                method: "CreateContainer",
                target: name,
            }),
            |state, now| {
                if !state.sandboxes.contains_key(sandbox_id) {
                    return Err(not_found("CreateContainer", sandbox_id));
                }
                let id = Self::next_id(state, "container-");
                state.containers.insert(
                    id.clone(),
                    FakeContainer {
                        sandbox_id: sandbox_id.into(),
                        config,
                        state: cri::ContainerState::ContainerCreated,
                        created_at: now,
                        log_path,
                        started_at: 0,
                        finished_at: 0,
                        exit_code: 0,
                    },
                );
                Ok(id)
            },
        )
    }

    async fn start_container(&self, id: &str) -> Result<(), CriError> {
        self.mutate(
            Some(Call {
                method: "StartContainer",
                target: id.into(),
            }),
            |state, now| {
                let c = state
                    .containers
                    .get_mut(id)
                    .ok_or_else(|| not_found("StartContainer", id))?;
                c.state = cri::ContainerState::ContainerRunning;
                c.started_at = now;
                Ok(())
            },
        )
    }

    async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), CriError> {
        let target = format!("{id} timeout={timeout}");
        self.mutate(
            Some(Call {
                method: "StopContainer",
                target,
            }),
            |state, now| {
                let c = state
                    .containers
                    .get_mut(id)
                    .ok_or_else(|| not_found("StopContainer", id))?;
                if c.state == cri::ContainerState::ContainerRunning {
                    c.state = cri::ContainerState::ContainerExited;
                    c.finished_at = now;
                    c.exit_code = 143;
                }
                Ok(())
            },
        )
    }

    async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        self.mutate(
            Some(Call {
                method: "RemoveContainer",
                target: id.into(),
            }),
            |state, _| {
                state
                    .containers
                    .remove(id)
                    .map(drop)
                    .ok_or_else(|| not_found("RemoveContainer", id))
            },
        )
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, CriError> {
        let filter = filter.unwrap_or_default();
        let state = self.state();
        Ok(state
            .containers
            .iter()
            .filter(|(_, c)| matches_labels(&c.config.labels, &filter.label_selector))
            .map(|(id, c)| cri::Container {
                id: id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                state: c.state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CriError> {
        let _open = self.status_gate.read().await;
        let mut state = self.state();
        state.calls.push(Call {
            method: "ContainerStatus",
            target: id.into(),
        });
        let c = state
            .containers
            .get(id)
            .ok_or_else(|| not_found("ContainerStatus", id))?;
        Ok(cri::ContainerStatus {
            id: id.into(),
            metadata: c.config.metadata.clone(),
            state: c.state as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c.config.image.clone(),
            image_ref: c
                .config
                .image
                .as_ref()
                .map(|i| Self::image_id(&i.image))
                .unwrap_or_default(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            log_path: c.log_path.clone(),
            ..Default::default()
        })
    }

    async fn image_status(&self, image: cri::ImageSpec) -> Result<Option<cri::Image>, CriError> {
        let present = self.state().images.contains(&image.image);
        Ok(present.then(|| cri::Image {
            id: Self::image_id(&image.image),
            ..Default::default()
        }))
    }

    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        _sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        self.mutate(
            Some(Call {
                method: "PullImage",
                target: image.image.clone(),
            }),
            |state, _| {
                state.images.insert(image.image.clone());
                Ok(Self::image_id(&image.image))
            },
        )
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        _timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        let mut state = self.state();
        state.calls.push(Call {
            method: "ExecSync",
            target: id.to_owned(),
        });
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| not_found("ExecSync", id))?;
        // `exit N` as the last word of the command sets the exit code.
        let exit_code = match (cmd.first().map(String::as_str), cmd.last()) {
            (Some("exit"), Some(code)) => code.parse().unwrap_or(1),
            _ => 0,
        };
        let exit_code = if container.state == cri::ContainerState::ContainerRunning {
            exit_code
        } else {
            126
        };
        Ok(cri::ExecSyncResponse {
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code,
        })
    }

    async fn container_events(&self) -> Result<crate::runtime::ContainerEvents, CriError> {
        match self.events.lock().unwrap().take() {
            Some(rx) => Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|event| (Ok(event), rx))
            }))),
            None => Err(CriError::Status {
                method: "GetContainerEvents",
                status: Box::new(tonic::Status::unimplemented("no container events")),
            }),
        }
    }
}
