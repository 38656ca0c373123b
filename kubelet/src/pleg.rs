//! The generic PLEG (pod lifecycle event generator): relists all sandboxes and
//! containers every period, compares with the previous relist and reports
//! which pods changed, so their workers sync without polling.
//!
//! The first relist reports every pod present, and is sent even when empty:
//! the pod workers wait for it before deciding that a runtime pod is an orphan.
//!
//! An event carries the pod's sandboxes and containers as the relist saw
//! them; a worker whose last observation shows the same ([`observed_objects`])
//! is not woken: it has seen the change already (mostly its own doing,
//! such as a container it just started).
//!
//! Where the runtime streams container events (`GetContainerEvents`, as
//! cri-shim does), each event triggers a relist at once, so a change is seen
//! in milliseconds rather than at the next tick; the periodic relist stays as
//! the safety net and is all there is with runtimes that have no events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri_api;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ErrorChain;
use crate::actions::{ContainerState, ObservedPod};
use crate::runtime::{CriError, PodRef, RuntimeManager, RuntimeService};

/// The least time between two relists that runtime events trigger.
pub const EVENT_RELIST_GAP: Duration = Duration::from_millis(200);

/// A pod whose runtime objects changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLifecycleEvent {
    /// The pod.
    pub pod: PodRef,
    /// Whether any sandbox or container of it is left.
    pub present: bool,
    /// Its sandboxes and containers as the relist saw them (none if gone).
    pub objects: PodObjects,
}

/// A pod's sandboxes and containers as a relist sees them:
/// `("sandbox:<id>" or "container:<id>", CRI state)`.
pub type PodObjects = BTreeSet<(String, i32)>;

/// The objects of a pod worker's observation, in a relist's terms: equal
/// to a relist's record when the relist shows nothing the worker has not
/// seen.
pub fn observed_objects(observed: &ObservedPod) -> PodObjects {
    let sandboxes = observed.sandboxes.iter().map(|s| {
        let state = match s.ready {
            true => cri_api::PodSandboxState::SandboxReady,
            false => cri_api::PodSandboxState::SandboxNotready,
        };
        (format!("sandbox:{}", s.id), state as i32)
    });
    let containers = observed.containers.iter().map(|c| {
        let state = match c.state {
            ContainerState::Created => cri_api::ContainerState::ContainerCreated,
            ContainerState::Running => cri_api::ContainerState::ContainerRunning,
            ContainerState::Exited => cri_api::ContainerState::ContainerExited,
            ContainerState::Unknown => cri_api::ContainerState::ContainerUnknown,
        };
        (format!("container:{}", c.id), state as i32)
    });
    sandboxes.chain(containers).collect()
}

/// Errors of one relist.
#[derive(Debug, thiserror::Error)]
pub enum PlegError {
    /// Listing sandboxes or containers failed.
    #[error("relisting the runtime")]
    Relist(#[source] CriError),
}

/// Runtime objects of one pod: `(sandbox or container id, state)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pod: PodRef,
    objects: PodObjects,
}

/// All pods in the runtime, keyed by UID.
pub type RuntimeSnapshot = BTreeMap<String, PodRecord>;

/// Lists every kubelet-labelled sandbox and container.
pub async fn relist<R: RuntimeService>(service: &R) -> Result<RuntimeSnapshot, PlegError> {
    let sandboxes = service
        .list_pod_sandbox(None)
        .await
        .map_err(PlegError::Relist)?;
    let containers = service
        .list_containers(None)
        .await
        .map_err(PlegError::Relist)?;
    let mut snapshot = RuntimeSnapshot::new();
    let objects = sandboxes
        .into_iter()
        .map(|s| (s.labels, format!("sandbox:{}", s.id), s.state))
        .chain(
            containers
                .into_iter()
                .map(|c| (c.labels, format!("container:{}", c.id), c.state)),
        );
    for (labels, id, state) in objects {
        let Some(pod) = PodRef::from_labels(&labels) else {
            continue;
        };
        snapshot
            .entry(pod.uid.clone())
            .or_insert_with(|| PodRecord {
                pod,
                objects: BTreeSet::new(),
            })
            .objects
            .insert((id, state));
    }
    Ok(snapshot)
}

/// Events for the pods that differ between two relists.
pub fn diff(old: &RuntimeSnapshot, new: &RuntimeSnapshot) -> Vec<PodLifecycleEvent> {
    let mut events = Vec::new();
    for (uid, record) in new {
        if old.get(uid) != Some(record) {
            events.push(PodLifecycleEvent {
                pod: record.pod.clone(),
                present: true,
                objects: record.objects.clone(),
            });
        }
    }
    for (uid, record) in old {
        if !new.contains_key(uid) {
            events.push(PodLifecycleEvent {
                pod: record.pod.clone(),
                present: false,
                objects: PodObjects::new(),
            });
        }
    }
    events
}

/// Relists on an interval and sends the changes in batches.
#[derive(Debug)]
pub struct GenericPleg<R> {
    runtime: Arc<RuntimeManager<R>>,
    relist_period: Duration,
}

impl<R: RuntimeService> GenericPleg<R> {
    /// A PLEG relisting every `relist_period`.
    pub fn new(runtime: Arc<RuntimeManager<R>>, relist_period: Duration) -> Self {
        Self {
            runtime,
            relist_period,
        }
    }

    /// Runs until cancelled or until the receiver is gone.
    pub async fn run(
        self,
        events: mpsc::Sender<Vec<PodLifecycleEvent>>,
        cancel: CancellationToken,
    ) {
        let mut interval = tokio::time::interval(self.relist_period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<RuntimeSnapshot> = None;
        let mut failing = false;
        let event_arrived = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch_container_events(
            Arc::clone(&self.runtime),
            Arc::clone(&event_arrived),
            self.relist_period,
            cancel.child_token(),
        ));
        let _stop_watcher = watcher_guard(watcher);
        let mut last_relist: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
                _ = event_arrived.notified() => {
                    // Events come in bursts (every start and stop makes
                    // some): they are taken together, at most one relist
                    // per gap, so a busy runtime is not listed in full for
                    // each of them. Workers observe their own pods after
                    // acting; the PLEG is for what nobody here caused.
                    if let Some(at) = last_relist {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep_until(at + EVENT_RELIST_GAP) => {}
                        }
                    }
                }
            }
            last_relist = Some(tokio::time::Instant::now());
            let snapshot = tokio::select! {
                _ = cancel.cancelled() => return,
                result = relist(self.runtime.service()) => result,
            };
            let snapshot = match snapshot {
                Ok(snapshot) => {
                    if failing {
                        tracing::info!("runtime relist works again");
                        failing = false;
                    }
                    snapshot
                }
                Err(error) => {
                    // Reported once per outage, not every second.
                    if !failing {
                        tracing::error!(error = %ErrorChain(&error), "PLEG relist failed");
                        failing = true;
                    }
                    continue;
                }
            };
            let batch = match &previous {
                Some(previous) => diff(previous, &snapshot),
                None => diff(&RuntimeSnapshot::new(), &snapshot),
            };
            let first = previous.is_none();
            previous = Some(snapshot);
            if (first || !batch.is_empty()) && events.send(batch).await.is_err() {
                return;
            }
        }
    }
}

/// Aborts the event watcher when the PLEG stops, however it stops.
fn watcher_guard(task: tokio::task::JoinHandle<()>) -> impl Drop {
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    Abort(task)
}

/// Follows the runtime's container events and wakes the relist for each.
/// Ends at once if the runtime has no events; reconnects (1 s doubling to
/// 30 s) when the stream breaks, e.g. because the runtime restarted.
async fn watch_container_events<R: RuntimeService>(
    runtime: Arc<RuntimeManager<R>>,
    event_arrived: Arc<tokio::sync::Notify>,
    relist_period: Duration,
    cancel: CancellationToken,
) {
    use futures::StreamExt;
    const MAX_RETRY: Duration = Duration::from_secs(30);
    let mut retry = Duration::from_secs(1);
    loop {
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            opened = runtime.service().container_events() => opened,
        };
        match opened {
            Ok(mut events) => {
                tracing::info!("following the runtime's container events");
                retry = Duration::from_secs(1);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        event = events.next() => match event {
                            Some(Ok(_)) => event_arrived.notify_one(),
                            Some(Err(error)) => {
                                tracing::debug!(error = %ErrorChain(&error), "container event stream broke");
                                break;
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(error) if error.is_unimplemented() => {
                tracing::info!(period = ?relist_period, "the runtime has no container events; relisting only");
                return;
            }
            Err(error) => {
                tracing::debug!(error = %ErrorChain(&error), "opening the container event stream");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1 as cri;

    fn record(uid: &str, objects: &[(&str, i32)]) -> (String, PodRecord) {
        let pod = PodRef {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("p-{uid}"),
        };
        let objects = objects
            .iter()
            .map(|(id, state)| ((*id).to_owned(), *state))
            .collect();
        (uid.to_owned(), PodRecord { pod, objects })
    }

    #[test]
    fn diff_reports_new_changed_and_gone_pods() {
        let old: RuntimeSnapshot = [
            record("same", &[("sandbox:s1", 0), ("container:c1", 1)]),
            record("changed", &[("sandbox:s2", 0), ("container:c2", 1)]),
            record("gone", &[("sandbox:s3", 0)]),
        ]
        .into();
        let new: RuntimeSnapshot = [
            record("same", &[("sandbox:s1", 0), ("container:c1", 1)]),
            record("changed", &[("sandbox:s2", 0), ("container:c2", 2)]),
            record("new", &[("sandbox:s4", 0)]),
        ]
        .into();
        let events = diff(&old, &new);
        let summary: Vec<_> = events
            .iter()
            .map(|e| (e.pod.uid.as_str(), e.present))
            .collect();
        assert_eq!(summary, [("changed", true), ("new", true), ("gone", false)]);
        assert_eq!(events[0].pod.name, "p-changed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_event_triggers_a_relist_before_the_next_tick() {
        use crate::fake_runtime::FakeRuntime;
        fn clock() -> std::time::SystemTime {
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
        }
        let fake = FakeRuntime::new(clock, &["busybox"]);
        let events = fake.offer_events();
        let dir = tempfile::tempdir().unwrap();
        let runtime = Arc::new(RuntimeManager::new(
            fake.clone(),
            dir.path().to_owned(),
            dir.path().join("resolv.conf"),
        ));
        let pleg = GenericPleg::new(runtime, Duration::from_secs(3600));
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(pleg.run(tx, cancel.clone()));
        assert!(
            rx.recv().await.unwrap().is_empty(),
            "first relist of an empty runtime"
        );

        // A sandbox appears and the runtime says so: the PLEG reports it long
        // before its hourly relist.
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            labels: [
                (crate::labels::POD_NAME.to_owned(), "p".to_owned()),
                (
                    crate::labels::POD_NAMESPACE.to_owned(),
                    "default".to_owned(),
                ),
                (crate::labels::POD_UID.to_owned(), "u1".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        fake.run_pod_sandbox(config).await.unwrap();
        events.send(cri::ContainerEventResponse::default()).unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("no relist within a minute of the event")
            .unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].pod.uid, "u1");
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_events_the_relist_alone_runs() {
        use crate::fake_runtime::FakeRuntime;
        fn clock() -> std::time::SystemTime {
            std::time::SystemTime::UNIX_EPOCH
        }
        let fake = FakeRuntime::new(clock, &[]);
        let dir = tempfile::tempdir().unwrap();
        let runtime = Arc::new(RuntimeManager::new(
            fake,
            dir.path().to_owned(),
            dir.path().join("resolv.conf"),
        ));
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task =
            tokio::spawn(GenericPleg::new(runtime, Duration::from_secs(1)).run(tx, cancel.clone()));
        assert!(rx.recv().await.unwrap().is_empty());
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn identical_relists_give_no_events() {
        let snapshot: RuntimeSnapshot = [record("a", &[("sandbox:s1", 0)])].into();
        assert!(diff(&snapshot, &snapshot.clone()).is_empty());
    }
}
