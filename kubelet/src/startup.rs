//! Pod startup latency, as upstream's pod startup latency tracker reports
//! it: once per pod the kubelet started, when its published status first
//! shows every app container running, the kubelet logs `Observed pod
//! startup duration` with the time from the pod's creation (for a static
//! pod without a `creationTimestamp`, from `kubernetes.io/config.seen`, when
//! the kubelet first saw it) to then, with and without the image pulls.
//!
//! Upstream logs it when the pod is seen running on the API watch; with no
//! API (standalone) the status the kubelet publishes is what readers see,
//! so it is logged when that status is published.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;

use crate::labels;

/// Per pod UID, when its first image pull began and its last one ended.
#[derive(Debug, Default)]
pub struct PullSpans {
    pods: Mutex<HashMap<String, PullSpan>>,
}

/// When a pod's image pulls ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullSpan {
    /// The first pull began.
    pub first_started: SystemTime,
    /// The last pull ended (`None` while the first is under way).
    pub last_finished: Option<SystemTime>,
}

impl PullSpans {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PullSpan>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pull for pod `uid` begins at `at`.
    pub fn started(&self, uid: &str, at: SystemTime) {
        self.lock().entry(uid.to_owned()).or_insert(PullSpan {
            first_started: at,
            last_finished: None,
        });
    }

    /// A pull for pod `uid` ended at `at`.
    pub fn finished(&self, uid: &str, at: SystemTime) {
        if let Some(span) = self.lock().get_mut(uid) {
            span.last_finished = Some(span.last_finished.map_or(at, |last| last.max(at)));
        }
    }

    /// The pulls of pod `uid` so far.
    pub fn get(&self, uid: &str) -> Option<PullSpan> {
        self.lock().get(uid).copied()
    }

    /// Forgets pod `uid`.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

/// When the kubelet first saw `pod` (its `kubernetes.io/config.seen`).
pub fn config_seen(pod: &Pod) -> Option<SystemTime> {
    let seen = pod
        .metadata
        .annotations
        .as_ref()?
        .get(labels::CONFIG_SEEN)?;
    chrono::DateTime::parse_from_rfc3339(seen)
        .ok()
        .map(SystemTime::from)
}

/// Upstream `hasPodStartedSLO`: every app container in the status is
/// running and has a start time.
pub fn has_started(pod: &Pod) -> bool {
    let Some(statuses) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
    else {
        return false;
    };
    !statuses.is_empty()
        && statuses.iter().all(|status| {
            status
                .state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .is_some_and(|running| running.started_at.is_some())
        })
}

/// One pod's start, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupRecord {
    /// `namespace/name`.
    pub pod: String,
    /// What the start is counted from: the pod's `creationTimestamp`, else
    /// its `kubernetes.io/config.seen`.
    pub since: Since,
    /// From then to `observed_running`.
    pub e2e: Duration,
    /// `e2e` less the time between the first pull's start and the last
    /// one's end (upstream's SLI excludes image pulls).
    pub slo: Duration,
    /// The pulls, if any.
    pub pulls: Option<PullSpan>,
    /// When the published status first showed every container running.
    pub observed_running: SystemTime,
}

/// Which time a start is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `metadata.creationTimestamp`.
    Created(SystemTime),
    /// `kubernetes.io/config.seen`, for a pod without a creation time.
    Seen(SystemTime),
}

impl Since {
    fn time(self) -> SystemTime {
        match self {
            Self::Created(at) | Self::Seen(at) => at,
        }
    }
}

/// The record of `pod`'s start, its status first showing every container
/// running at `observed_running`; `None` if the pod has neither a creation
/// time nor a `config.seen`.
pub fn startup_record(
    pod: &Pod,
    pulls: Option<PullSpan>,
    observed_running: SystemTime,
) -> Option<StartupRecord> {
    let metadata = &pod.metadata;
    let since = match &metadata.creation_timestamp {
        Some(created) => {
            let nanos = u64::try_from(created.0.as_nanosecond()).ok()?;
            Since::Created(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
        }
        None => Since::Seen(config_seen(pod)?),
    };
    let e2e = observed_running
        .duration_since(since.time())
        .unwrap_or_default();
    let pulling = pulls
        .and_then(|p| p.last_finished?.duration_since(p.first_started).ok())
        .unwrap_or_default();
    Some(StartupRecord {
        pod: format!(
            "{}/{}",
            metadata.namespace.as_deref().unwrap_or("default"),
            metadata.name.as_deref().unwrap_or_default()
        ),
        since,
        e2e,
        slo: e2e.saturating_sub(pulling),
        pulls,
        observed_running,
    })
}

/// RFC 3339 in UTC, with as many fractional digits (3, 6 or 9) as needed.
fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

impl StartupRecord {
    /// Logs the record under upstream's message and field names.
    pub fn log(&self) {
        let started = self.pulls.map(|p| rfc3339(p.first_started));
        let finished = self.pulls.and_then(|p| p.last_finished).map(rfc3339);
        let (created, seen) = match self.since {
            Since::Created(at) => (Some(rfc3339(at)), None),
            Since::Seen(at) => (None, Some(rfc3339(at))),
        };
        // A `None` field is left out of the line.
        tracing::info!(
            pod = self.pod,
            podStartSLOduration = self.slo.as_secs_f64(),
            podStartE2EDuration = ?self.e2e,
            podCreationTimestamp = created,
            configSeen = seen,
            firstStartedPulling = started,
            lastFinishedPulling = finished,
            observedRunningTime = rfc3339(self.observed_running),
            "Observed pod startup duration"
        );
    }
}

/// Where a pod worker is in reporting its pod's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Startup {
    /// Not decided: the worker has not looked at the runtime yet.
    #[default]
    Unknown,
    /// The pod had no container when its worker first looked: its start is
    /// reported once its status shows every container running.
    Waiting,
    /// Reported, or not this kubelet's to report (its containers were
    /// there before the worker, as after a kubelet restart).
    Done,
}

impl Startup {
    /// Decides at the worker's first look at the runtime.
    pub fn first_look(&mut self, pod_has_containers: bool) {
        if *self == Self::Unknown {
            *self = if pod_has_containers {
                Self::Done
            } else {
                Self::Waiting
            };
        }
    }

    /// The status `pod` is published at `now`: its start's record, the
    /// first time it shows every container running (`pulls` is asked only
    /// then).
    pub fn published(
        &mut self,
        pod: &Pod,
        pulls: impl FnOnce() -> Option<PullSpan>,
        now: SystemTime,
    ) -> Option<StartupRecord> {
        if *self != Self::Waiting || !has_started(pod) {
            return None;
        }
        *self = Self::Done;
        startup_record(pod, pulls(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn at(s: &str) -> SystemTime {
        SystemTime::from(chrono::DateTime::parse_from_rfc3339(s).unwrap())
    }

    const RUNNING: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-node\n  namespace: kube-system\n  annotations: {kubernetes.io/config.seen: \"2026-11-28T10:00:00.25Z\"}\nspec: {containers: [{name: a}, {name: b}]}\nstatus:\n  containerStatuses:\n  - {name: a, state: {running: {startedAt: \"2026-11-28T10:00:01Z\"}}}\n  - {name: b, state: {running: {startedAt: \"2026-11-28T10:00:01Z\"}}}\n";

    #[test]
    fn a_pod_has_started_once_every_app_container_runs() {
        assert!(has_started(&pod(RUNNING)));
        let one_waiting = RUNNING.replace(
            "{name: b, state: {running: {startedAt: \"2026-11-28T10:00:01Z\"}}}",
            "{name: b, state: {waiting: {reason: ContainerCreating}}}",
        );
        assert!(!has_started(&pod(&one_waiting)));
        let no_statuses =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {phase: Pending}\n";
        assert!(!has_started(&pod(no_statuses)));
    }

    #[test]
    fn a_static_pods_start_counts_from_config_seen_less_the_pulls() {
        let pulls = PullSpans::default();
        pulls.started("u", at("2026-11-28T10:00:00.5Z"));
        // A second pull's start does not move the first.
        pulls.started("u", at("2026-11-28T10:00:00.7Z"));
        pulls.finished("u", at("2026-11-28T10:00:00.9Z"));
        pulls.finished("u", at("2026-11-28T10:00:00.8Z"));
        let record =
            startup_record(&pod(RUNNING), pulls.get("u"), at("2026-11-28T10:00:01.25Z")).unwrap();
        assert_eq!(record.pod, "kube-system/web-node");
        assert_eq!(record.since, Since::Seen(at("2026-11-28T10:00:00.25Z")));
        assert_eq!(record.e2e, Duration::from_secs(1));
        assert_eq!(record.slo, Duration::from_millis(600));
        pulls.forget("u");
        assert_eq!(pulls.get("u"), None);
    }

    #[test]
    fn a_creation_timestamp_comes_before_config_seen() {
        let created = RUNNING.replace(
            "  namespace: kube-system\n",
            "  namespace: kube-system\n  creationTimestamp: \"2026-11-28T09:59:59Z\"\n",
        );
        let record = startup_record(&pod(&created), None, at("2026-11-28T10:00:01Z")).unwrap();
        assert_eq!(record.since, Since::Created(at("2026-11-28T09:59:59Z")));
        assert_eq!(record.e2e, Duration::from_secs(2));
        assert_eq!(record.slo, record.e2e);
    }

    #[test]
    fn a_start_is_reported_once_and_only_for_pods_started_here() {
        let now = at("2026-11-28T10:00:02Z");
        let mut started_here = Startup::default();
        started_here.first_look(false);
        // A later look that sees containers does not change the decision.
        started_here.first_look(true);
        let pending = RUNNING.replace(
            "running: {startedAt: \"2026-11-28T10:00:01Z\"}}}\n  - {name: b",
            "waiting: {}}}\n  - {name: b",
        );
        assert_eq!(started_here.published(&pod(&pending), || None, now), None);
        assert!(
            started_here
                .published(&pod(RUNNING), || None, now)
                .is_some()
        );
        assert_eq!(started_here.published(&pod(RUNNING), || None, now), None);

        let mut adopted = Startup::default();
        adopted.first_look(true);
        assert_eq!(adopted.published(&pod(RUNNING), || None, now), None);
    }

    #[test]
    fn the_record_is_logged_under_upstreams_message_and_field_names() {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let pulls = PullSpans::default();
        pulls.started("u", at("2026-11-28T10:00:00.5Z"));
        pulls.finished("u", at("2026-11-28T10:00:00.75Z"));
        let record =
            startup_record(&pod(RUNNING), pulls.get("u"), at("2026-11-28T10:00:01.25Z")).unwrap();
        tracing::subscriber::with_default(subscriber, || record.log());
        let line = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        for part in [
            "Observed pod startup duration",
            "pod=\"kube-system/web-node\"",
            "podStartSLOduration=0.75",
            "podStartE2EDuration=1s",
            "configSeen=\"2026-11-28T10:00:00.250Z\"",
            "firstStartedPulling=\"2026-11-28T10:00:00.500Z\"",
            "lastFinishedPulling=\"2026-11-28T10:00:00.750Z\"",
            "observedRunningTime=\"2026-11-28T10:00:01.250Z\"",
        ] {
            assert!(line.contains(part), "no {part} in {line:?}");
        }
        assert!(
            !line.contains("podCreationTimestamp"),
            "a field without a value is left out: {line:?}"
        );
    }
}
