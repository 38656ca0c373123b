//! The generic PLEG (pod lifecycle event generator): relists all sandboxes and
//! containers every period, compares with the previous relist and reports
//! which pods changed, so their workers sync without polling.
//!
//! The first relist reports every pod present, and is sent even when empty:
//! the pod workers wait for it before deciding that a runtime pod is an orphan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ErrorChain;
use crate::runtime::{CriError, PodRef, RuntimeManager, RuntimeService};

/// A pod whose runtime objects changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLifecycleEvent {
    /// The pod.
    pub pod: PodRef,
    /// Whether any sandbox or container of it is left.
    pub present: bool,
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
    objects: BTreeSet<(String, i32)>,
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
            });
        }
    }
    for (uid, record) in old {
        if !new.contains_key(uid) {
            events.push(PodLifecycleEvent {
                pod: record.pod.clone(),
                present: false,
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
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn identical_relists_give_no_events() {
        let snapshot: RuntimeSnapshot = [record("a", &[("sandbox:s1", 0)])].into();
        assert!(diff(&snapshot, &snapshot.clone()).is_empty());
    }
}
