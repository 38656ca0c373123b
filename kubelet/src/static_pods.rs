//! The static pod source: Pod manifests in `--pod-manifest-path`.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file holds one Pod. Each pod is
//! defaulted as upstream `pkg/kubelet/config` does (name `<name>-<node>`,
//! content-hash UID, `kubernetes.io/config.*` annotations, node name, the
//! NoExecute toleration). A broken file is reported once per content and
//! skipped. The source publishes the whole desired set, keyed by UID, on a
//! watch channel whenever it changes; `None` there means "not listed yet", so
//! nobody mistakes an unread directory for "no pods".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};
use k8s_openapi::api::core::v1::{Pod, Toleration};
use md5::{Digest, Md5};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ErrorChain;
use crate::labels;

/// Desired pods keyed by UID.
pub type DesiredPods = BTreeMap<String, Arc<Pod>>;

/// What the source publishes: `None` until the directory was listed once.
pub type DesiredPodsReceiver = watch::Receiver<Option<Arc<DesiredPods>>>;

/// Value of `kubernetes.io/config.source` for manifest files.
pub const FILE_SOURCE: &str = "file";

/// A file written and closed, renamed in or out, or deleted: the directory
/// is re-listed at once (with whatever other events are already queued).
const COMPLETE_EVENTS: EventMask = EventMask::CLOSE_WRITE
    .union(EventMask::MOVED_TO)
    .union(EventMask::MOVED_FROM)
    .union(EventMask::DELETE);

/// After an event that may be followed by more (a file created or being
/// written), the re-list waits this long unless a complete event comes
/// first; a symlink or hard link made in the directory shows only as a
/// creation.
const INOTIFY_FALLBACK: Duration = Duration::from_millis(100);

/// Problems with the manifest directory or one manifest file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The directory could not be listed.
    #[error("could not list manifest directory {path}")]
    ReadDir {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest file could not be read.
    #[error("could not read {path}")]
    Read {
        /// Manifest file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A YAML manifest is not valid YAML or not a valid Pod.
    #[error("could not parse {path}")]
    ParseYaml {
        /// Manifest file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A JSON manifest is not valid JSON or not a valid Pod.
    #[error("could not parse {path}")]
    ParseJson {
        /// Manifest file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The object is not a `v1` `Pod`.
    #[error(
        "{path}: expected apiVersion v1, kind Pod, found apiVersion {api_version:?}, kind {kind:?}"
    )]
    NotAPod {
        /// Manifest file.
        path: PathBuf,
        /// `apiVersion` found.
        api_version: Option<String>,
        /// `kind` found.
        kind: Option<String>,
    },
    /// `metadata.name` is missing or empty.
    #[error("{path}: the pod has no metadata.name")]
    MissingName {
        /// Manifest file.
        path: PathBuf,
    },
    /// The pod has no containers.
    #[error("{path}: pod {name:?} has no containers")]
    NoContainers {
        /// Manifest file.
        path: PathBuf,
        /// Pod name from the manifest.
        name: String,
    },
    /// A container has no name, or shares its name with another container.
    #[error("{path}: pod {name:?} has an empty or duplicate container name {container:?}")]
    ContainerName {
        /// Manifest file.
        path: PathBuf,
        /// Pod name from the manifest.
        name: String,
        /// The offending container name.
        container: String,
    },
    /// A field holds a value the API does not allow.
    #[error(
        "{path}: pod {name:?}: {field}: unsupported value {value:?}: supported values: {supported}"
    )]
    UnsupportedValue {
        /// Manifest file.
        path: PathBuf,
        /// Pod name from the manifest.
        name: String,
        /// Field path, e.g. `spec.restartPolicy`.
        field: String,
        /// The value found.
        value: String,
        /// The values allowed, quoted and comma-separated.
        supported: &'static str,
    },
    /// A field a pod may not have when it is created (upstream validation's
    /// `Forbidden`), e.g. ephemeral containers, which only the API adds.
    #[error("{path}: pod {name:?}: {field}: Forbidden: {reason}")]
    Forbidden {
        /// Manifest file.
        path: PathBuf,
        /// Pod name from the manifest.
        name: String,
        /// Field path.
        field: String,
        /// Why.
        reason: &'static str,
    },
    /// A field that the Pod type does not have (a misspelling, usually).
    #[error("{path}: unknown field {field:?}")]
    UnknownField {
        /// Manifest file.
        path: PathBuf,
        /// Field path, e.g. `spec.containers[0].imagePullPolcy`.
        field: String,
    },
    /// A container has no image.
    #[error("{path}: container {container:?} of pod {name:?} has no image")]
    MissingImage {
        /// Manifest file.
        path: PathBuf,
        /// Pod name from the manifest.
        name: String,
        /// Container name.
        container: String,
    },
    /// Another manifest already defines a pod with this namespace and name.
    #[error("{path}: pod {namespace}/{name} is already defined by {other}")]
    DuplicatePod {
        /// Manifest file that is skipped.
        path: PathBuf,
        /// Namespace.
        namespace: String,
        /// Full static pod name.
        name: String,
        /// The manifest that defines it first (in file name order).
        other: PathBuf,
    },
}

/// The outcome of reading the manifest directory once.
#[derive(Debug, Default)]
pub struct ManifestListing {
    /// Valid pods, defaulted, without the `config.seen` annotation, in file name order.
    pub pods: Vec<(PathBuf, Pod)>,
    /// Broken files with an md5 of their content and the reason.
    pub errors: Vec<(PathBuf, [u8; 16], ManifestError)>,
}

fn is_manifest_file_name(name: &str) -> bool {
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// Valid manifests parsed before, by path and content digest: a re-list
/// parses only the files whose content changed (110 manifests written at
/// once would otherwise be parsed again at each of the re-lists they cause).
#[derive(Debug, Default)]
pub struct ManifestCache {
    parsed: HashMap<PathBuf, ([u8; 16], Pod)>,
}

/// Which manifests a listing reads.
#[derive(Debug, Clone, Copy)]
pub enum Reread<'a> {
    /// Every file (parsing only content the cache does not hold).
    All,
    /// Only the files of these names and those the cache does not hold:
    /// the others are as the cache has them. For a listing after inotify
    /// events, which name every file whose content changed.
    Named(&'a HashSet<OsString>),
}

/// Reads every manifest in `dir`. A missing directory lists as empty (as
/// upstream, so the source still counts as seen); other directory errors fail.
pub fn list_manifests(dir: &Path, node_name: &str) -> Result<ManifestListing, ManifestError> {
    list_manifests_cached(dir, node_name, &mut ManifestCache::default(), Reread::All)
}

/// [`list_manifests`], reading what `reread` says and parsing only what
/// `cache` does not hold; the cache is left holding exactly the valid
/// manifests of this listing.
pub fn list_manifests_cached(
    dir: &Path,
    node_name: &str,
    cache: &mut ManifestCache,
    reread: Reread<'_>,
) -> Result<ManifestListing, ManifestError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ManifestListing::default()),
        Err(source) => {
            return Err(ManifestError::ReadDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(is_manifest_file_name)
        })
        // A symlinked manifest counts (its target must be a file), a
        // subdirectory does not. The entry's type comes with the directory
        // listing, so only symlinks cost a `stat`.
        .filter(|entry| match entry.file_type() {
            Ok(kind) if kind.is_symlink() => {
                std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file())
            }
            Ok(kind) => kind.is_file(),
            Err(_) => false,
        })
        .map(|entry| entry.path())
        .collect();
    paths.sort();

    let mut listing = ManifestListing::default();
    let mut parsed = HashMap::with_capacity(paths.len());
    let mut full_names: HashMap<(String, String), PathBuf> = HashMap::new();
    for path in paths {
        let cached = cache.parsed.remove(&path);
        let unchanged = match reread {
            Reread::All => false,
            Reread::Named(changed) => path.file_name().is_some_and(|n| !changed.contains(n)),
        };
        let (digest, pod) = match cached {
            Some((digest, pod)) if unchanged => (digest, Ok(pod)),
            cached => {
                let data = match std::fs::read(&path) {
                    Ok(data) => data,
                    // Deleted between listing and reading: the next event re-lists.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        let error = ManifestError::Read {
                            path: path.clone(),
                            source,
                        };
                        listing.errors.push((path, [0; 16], error));
                        continue;
                    }
                };
                let digest: [u8; 16] = Md5::digest(&data).into();
                let pod = match cached {
                    Some((seen, pod)) if seen == digest => Ok(pod),
                    _ => static_pod_from_manifest(&path, &data, node_name),
                };
                (digest, pod)
            }
        };
        if let Ok(pod) = &pod {
            parsed.insert(path.clone(), (digest, pod.clone()));
        }
        let pod = pod.and_then(|pod| {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            match full_names.get(&(namespace.clone(), name.clone())) {
                Some(other) => Err(ManifestError::DuplicatePod {
                    path: path.clone(),
                    namespace,
                    name,
                    other: other.clone(),
                }),
                None => {
                    full_names.insert((namespace, name), path.clone());
                    Ok(pod)
                }
            }
        });
        match pod {
            Ok(pod) => listing.pods.push((path, pod)),
            Err(error) => listing.errors.push((path, digest, error)),
        }
    }
    cache.parsed = parsed;
    Ok(listing)
}

/// Parses one manifest, validates what the kubelet relies on and applies the
/// static pod defaults.
pub fn static_pod_from_manifest(
    path: &Path,
    data: &[u8],
    node_name: &str,
) -> Result<Pod, ManifestError> {
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    let parse_error_yaml = |source| ManifestError::ParseYaml {
        path: path.to_owned(),
        source,
    };
    let parse_error_json = |source| ManifestError::ParseJson {
        path: path.to_owned(),
        source,
    };
    // The document as read, for its kind and for the fields the Pod type
    // lacks (below).
    let raw: serde_json::Value = if is_json {
        serde_json::from_slice(data).map_err(parse_error_json)?
    } else {
        serde_yaml::from_slice(data).map_err(parse_error_yaml)?
    };
    let type_field = |key: &str| {
        raw.get(key).map(|value| match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    };
    let (api_version, kind) = (type_field("apiVersion"), type_field("kind"));
    if api_version.as_deref() != Some("v1") || kind.as_deref() != Some("Pod") {
        return Err(ManifestError::NotAPod {
            path: path.to_owned(),
            api_version,
            kind,
        });
    }
    let pod: Pod = if is_json {
        serde_json::from_slice(data).map_err(parse_error_json)?
    } else {
        serde_yaml::from_slice(data).map_err(parse_error_yaml)?
    };
    // Fields serde skipped are the ones the Pod type does not have.
    let typed = serde_json::to_value(&pod).unwrap_or_default();
    if let Some(field) = first_unknown_field(&raw, &typed, "") {
        return Err(ManifestError::UnknownField {
            path: path.to_owned(),
            field,
        });
    }
    validate(path, &pod)?;
    Ok(apply_static_pod_defaults(pod, path, node_name))
}

fn validate(path: &Path, pod: &Pod) -> Result<(), ManifestError> {
    let name = match pod.metadata.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => {
            return Err(ManifestError::MissingName {
                path: path.to_owned(),
            });
        }
    };
    let containers = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(ManifestError::NoContainers {
            path: path.to_owned(),
            name: name.to_owned(),
        });
    }
    let spec = pod.spec.as_ref();
    if spec
        .and_then(|s| s.ephemeral_containers.as_ref())
        .is_some_and(|e| !e.is_empty())
    {
        return Err(ManifestError::Forbidden {
            path: path.to_owned(),
            name: name.to_owned(),
            field: "spec.ephemeralContainers".to_owned(),
            reason: "cannot be set on create",
        });
    }
    let unsupported =
        |field: String, value: &str, supported: &'static str| ManifestError::UnsupportedValue {
            path: path.to_owned(),
            name: name.to_owned(),
            field,
            value: value.to_owned(),
            supported,
        };
    if let Some(policy) = spec.and_then(|s| s.restart_policy.as_deref())
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        return Err(unsupported(
            "spec.restartPolicy".to_owned(),
            policy,
            "\"Always\", \"OnFailure\", \"Never\"",
        ));
    }
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    for (list, entries) in [
        ("initContainers", init_containers),
        ("containers", containers),
    ] {
        for (index, container) in entries.iter().enumerate() {
            if let Some(policy) = container.image_pull_policy.as_deref()
                && !["Always", "IfNotPresent", "Never"].contains(&policy)
            {
                return Err(unsupported(
                    format!("spec.{list}[{index}].imagePullPolicy"),
                    policy,
                    "\"Always\", \"IfNotPresent\", \"Never\"",
                ));
            }
            if let Some(policy) = container.restart_policy.as_deref() {
                let allowed = list == "initContainers" && policy == "Always";
                if !allowed {
                    return Err(unsupported(
                        format!("spec.{list}[{index}].restartPolicy"),
                        policy,
                        if list == "initContainers" {
                            "\"Always\""
                        } else {
                            "none (only init containers may set it)"
                        },
                    ));
                }
            }
        }
    }
    // Names are unique across init and app containers.
    let mut seen = HashSet::new();
    for container in init_containers {
        if container.name.is_empty() || !seen.insert(container.name.as_str()) {
            return Err(ManifestError::ContainerName {
                path: path.to_owned(),
                name: name.to_owned(),
                container: container.name.clone(),
            });
        }
    }
    for container in containers {
        if container.name.is_empty() || !seen.insert(container.name.as_str()) {
            return Err(ManifestError::ContainerName {
                path: path.to_owned(),
                name: name.to_owned(),
                container: container.name.clone(),
            });
        }
        if container.image.as_deref().is_none_or(str::is_empty) {
            return Err(ManifestError::MissingImage {
                path: path.to_owned(),
                name: name.to_owned(),
                container: container.name.clone(),
            });
        }
    }
    Ok(())
}

/// The first key of `raw` (as read) that is missing in `typed` (the same
/// object after a trip through the Pod type), as a field path.
fn first_unknown_field(
    raw: &serde_json::Value,
    typed: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    match (raw, typed) {
        (Value::Object(raw), Value::Object(typed)) => raw.iter().find_map(|(key, value)| {
            let field = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            match typed.get(key) {
                Some(typed_value) => first_unknown_field(value, typed_value, &field),
                // An explicit null or empty value may be dropped on the way.
                None if value.is_null() || value == &Value::Object(Default::default()) => None,
                None if value.as_array().is_some_and(Vec::is_empty) => None,
                None => Some(field),
            }
        }),
        (Value::Array(raw), Value::Array(typed)) => raw
            .iter()
            .zip(typed)
            .enumerate()
            .find_map(|(index, (r, t))| first_unknown_field(r, t, &format!("{at}[{index}]"))),
        _ => None,
    }
}

/// Upstream `applyDefaults` for file sources. The UID is an md5 over the pod
/// as read, then `host:<node>` and `file:<path>`. Upstream hashes the pod with
/// Go's spew printer, which has no Rust equivalent, so the serialisation here
/// is the pod's canonical JSON: UIDs are stable for this kubelet but differ
/// from an upstream kubelet's for the same file.
fn apply_static_pod_defaults(mut pod: Pod, path: &Path, node_name: &str) -> Pod {
    let uid = match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_owned(),
        _ => {
            let mut hasher = Md5::new();
            hasher.update(serde_json::to_vec(&pod).unwrap_or_default());
            hasher.update(format!("host:{node_name}"));
            hasher.update(format!("file:{}", path.display()));
            hex::encode(hasher.finalize())
        }
    };
    let meta = &mut pod.metadata;
    meta.uid = Some(uid.clone());
    meta.name = Some(format!(
        "{}-{}",
        meta.name.as_deref().unwrap_or_default(),
        node_name
    ));
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_owned());
    }
    let annotations = meta.annotations.get_or_insert_default();
    annotations.insert(labels::CONFIG_HASH.to_owned(), uid);
    annotations.insert(labels::CONFIG_SOURCE.to_owned(), FILE_SOURCE.to_owned());

    let spec = pod.spec.get_or_insert_default();
    spec.node_name = Some(node_name.to_owned());
    // Static pods tolerate every NoExecute taint so node problems never evict them.
    let toleration = Toleration {
        operator: Some("Exists".to_owned()),
        effect: Some("NoExecute".to_owned()),
        ..Toleration::default()
    };
    let tolerations = spec.tolerations.get_or_insert_default();
    if !tolerations.iter().any(|t| same_toleration(t, &toleration)) {
        tolerations.push(toleration);
    }
    pod
}

/// Upstream `MatchToleration`: equal key, effect, operator and value.
fn same_toleration(a: &Toleration, b: &Toleration) -> bool {
    a.key == b.key && a.effect == b.effect && a.operator == b.operator && a.value == b.value
}

/// Go's `time.RFC3339Nano` for UTC: fractional seconds without trailing zeros.
fn rfc3339_nano(time: chrono::DateTime<chrono::Utc>) -> String {
    let text = time.format("%Y-%m-%dT%H:%M:%S%.9f").to_string();
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}Z")
}

/// State of the source between listings: first-seen times per UID and the
/// broken files already reported.
#[derive(Debug, Default)]
pub struct StaticPodState {
    first_seen: HashMap<String, String>,
    reported: HashMap<PathBuf, [u8; 16]>,
    current: Option<Arc<DesiredPods>>,
}

/// The pods a listing added to the desired set and removed from it, logged
/// once the new set is out ([`StaticPodState::fold`]).
#[derive(Debug, Default)]
#[must_use = "the changes are logged by `log`"]
pub struct SetChanges {
    /// (UID, name, manifest path).
    added: Vec<(String, String, PathBuf)>,
    /// (UID, name).
    removed: Vec<(String, String)>,
}

impl SetChanges {
    pub fn log(self) {
        for (uid, name, path) in self.added {
            tracing::info!(pod.uid = %uid, pod.name = name, path = %path.display(), "static pod added");
        }
        for (uid, name) in self.removed {
            tracing::info!(pod.uid = %uid, pod.name = name, "static pod removed");
        }
    }
}

impl StaticPodState {
    /// Folds a listing in; returns the new desired set if it differs from the
    /// last one. Logs each broken file once per content, and the pods added
    /// and removed.
    #[cfg(test)]
    pub fn apply(
        &mut self,
        listing: ManifestListing,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Arc<DesiredPods>> {
        let (desired, changes) = self.fold(listing, now);
        changes.log();
        desired
    }

    /// [`apply`](Self::apply), with the pods added and removed returned to
    /// be logged after the new set is published: a line per pod, written
    /// while a hundred manifests arrive at once, would hold every one of
    /// them back.
    pub fn fold(
        &mut self,
        listing: ManifestListing,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (Option<Arc<DesiredPods>>, SetChanges) {
        let mut changes = SetChanges::default();
        let mut still_broken = HashSet::new();
        for (path, digest, error) in &listing.errors {
            still_broken.insert(path.clone());
            if self.reported.get(path) != Some(digest) {
                tracing::error!(path = %path.display(), error = %ErrorChain(error), "skipping static pod manifest");
                self.reported.insert(path.clone(), *digest);
            }
        }
        self.reported.retain(|path, _| still_broken.contains(path));

        let mut desired = DesiredPods::new();
        for (path, mut pod) in listing.pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let seen = self
                .first_seen
                .entry(uid.clone())
                .or_insert_with(|| rfc3339_nano(now));
            pod.metadata
                .annotations
                .get_or_insert_default()
                .insert(labels::CONFIG_SEEN.to_owned(), seen.clone());
            if !self
                .current
                .as_ref()
                .is_some_and(|current| current.contains_key(&uid))
            {
                let name = pod.metadata.name.clone().unwrap_or_default();
                changes.added.push((uid.clone(), name, path));
            }
            desired.insert(uid, Arc::new(pod));
        }
        if let Some(current) = &self.current {
            for (uid, pod) in current
                .iter()
                .filter(|(uid, _)| !desired.contains_key(*uid))
            {
                let name = pod.metadata.name.clone().unwrap_or_default();
                changes.removed.push((uid.clone(), name));
            }
        }
        self.first_seen.retain(|uid, _| desired.contains_key(uid));

        if self.current.as_deref() == Some(&desired) {
            return (None, changes);
        }
        let desired = Arc::new(desired);
        self.current = Some(desired.clone());
        (Some(desired), changes)
    }
}

/// Watches the manifest directory and publishes the desired set.
#[derive(Debug)]
pub struct StaticPodSource {
    dir: PathBuf,
    node_name: String,
    file_check_frequency: Duration,
    state: StaticPodState,
    /// Manifests parsed before, reused while their content is unchanged.
    cache: ManifestCache,
}

impl StaticPodSource {
    /// A source for `dir`, re-listed at least every `file_check_frequency`.
    pub fn new(dir: PathBuf, node_name: String, file_check_frequency: Duration) -> Self {
        Self {
            dir,
            node_name,
            file_check_frequency,
            state: StaticPodState::default(),
            cache: ManifestCache::default(),
        }
    }

    fn watch_dir(&self) -> Option<Inotify> {
        let mask = WatchMask::CREATE
            | WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::DELETE
            | WatchMask::MOVE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        let result = Inotify::init().and_then(|inotify| {
            inotify.watches().add(&self.dir, mask)?;
            Ok(inotify)
        });
        match result {
            Ok(inotify) => Some(inotify),
            Err(error) => {
                // The periodic re-list still works; the watch is retried then.
                tracing::warn!(path = %self.dir.display(), error = %error, "cannot watch manifest directory");
                None
            }
        }
    }

    /// Lists, reading the files `changed` names (every file when `None`),
    /// and starts `changed` afresh.
    fn relist(
        &mut self,
        tx: &watch::Sender<Option<Arc<DesiredPods>>>,
        changed: &mut Option<HashSet<OsString>>,
    ) {
        let reread = match changed {
            Some(names) => Reread::Named(names),
            None => Reread::All,
        };
        let listed = list_manifests_cached(&self.dir, &self.node_name, &mut self.cache, reread);
        *changed = Some(HashSet::new());
        match listed {
            Ok(listing) => {
                let (desired, changes) = self.state.fold(listing, chrono::Utc::now());
                if let Some(desired) = desired {
                    tx.send_replace(Some(desired));
                }
                changes.log();
            }
            // Keep the last known set: an unreadable directory is not "no pods".
            Err(error) => tracing::error!(error = %ErrorChain(&error), "listing static pods"),
        }
    }

    /// Lists at once, then on every inotify event (debounced) and every
    /// `file_check_frequency`, until cancelled. A listing after events
    /// reads only the files they named (and any the cache lacks); the
    /// periodic one reads every file, as does one after the kernel dropped
    /// events.
    ///
    /// The source runs on a thread of its own, `static-pods`, at the
    /// daemon's priority: reading the directory and its manifests is file
    /// work, and between an event and the new desired set it makes no
    /// hand-off to or from the async workers, which are busy when many
    /// manifests arrive at once. Its name sets it apart in `top -H` and in
    /// each thread's scheduler figures (`/proc/<pid>/task/<tid>/schedstat`).
    pub async fn run(self, tx: watch::Sender<Option<Arc<DesiredPods>>>, cancel: CancellationToken) {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(SOURCE_THREAD.to_owned())
            .spawn(move || {
                // Refused without CAP_SYS_NICE, as for every other thread.
                let _ = cri_shim::tuning::raise_thread_priority();
                self.run_blocking(&tx, &cancel);
                let _ = done_tx.send(());
            });
        match spawned {
            // The sender is dropped without a send only if the thread panicked.
            Ok(_) => {
                if done.await.is_err() {
                    tracing::error!("static pod source ended abnormally");
                }
            }
            Err(error) => {
                tracing::error!(error = %error, "starting the static pod source's thread")
            }
        }
    }

    fn run_blocking(
        mut self,
        tx: &watch::Sender<Option<Arc<DesiredPods>>>,
        cancel: &CancellationToken,
    ) {
        let mut inotify = self.watch_dir();
        let mut buffer = [0u8; 4096];
        let mut periodic_at = Instant::now();
        let mut debounce_at: Option<Instant> = None;
        // The files events named since the last listing; `None` when events
        // were dropped, so every file is read.
        let mut changed: Option<HashSet<OsString>> = Some(HashSet::new());
        while !cancel.is_cancelled() {
            let now = Instant::now();
            if now >= periodic_at {
                if inotify.is_none() {
                    inotify = self.watch_dir();
                }
                debounce_at = None;
                changed = None;
                self.relist(tx, &mut changed);
                periodic_at = Instant::now() + self.file_check_frequency;
                continue;
            }
            if debounce_at.is_some_and(|at| now >= at) {
                debounce_at = None;
                self.relist(tx, &mut changed);
                continue;
            }
            let wake_at = debounce_at
                .map_or(periodic_at, |at| at.min(periodic_at))
                .min(now + CANCEL_CHECK);
            let Some(watch) = inotify.as_mut() else {
                std::thread::sleep(wake_at - now);
                continue;
            };
            if !readable_within(watch, wake_at - now) {
                continue;
            }
            // Every event queued so far.
            let mut complete = false;
            let mut lost = false;
            loop {
                match watch.read_events(&mut buffer) {
                    Ok(events) => {
                        let mut read = false;
                        for event in events {
                            read = true;
                            lost |= event.mask.intersects(
                                EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED,
                            );
                            complete |= event.mask.intersects(COMPLETE_EVENTS);
                            if event.mask.contains(EventMask::Q_OVERFLOW) {
                                // Events were dropped: which files changed
                                // is not known.
                                changed = None;
                                complete = true;
                            } else if let (Some(name), Some(names)) = (event.name, &mut changed) {
                                names.insert(name.to_owned());
                            }
                        }
                        if !read {
                            break;
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => {
                        tracing::warn!(error = %error, "reading inotify events");
                        lost = true;
                        break;
                    }
                }
            }
            if lost {
                inotify = None;
                changed = None;
            }
            if complete || lost {
                debounce_at = None;
                self.relist(tx, &mut changed);
            } else if debounce_at.is_none() {
                debounce_at = Some(Instant::now() + INOTIFY_FALLBACK);
            }
        }
    }
}

/// The name of the source's thread.
const SOURCE_THREAD: &str = "static-pods";

/// How often the source's thread looks at its cancellation while no event
/// comes.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Waits until the inotify descriptor has events, at most `timeout`.
fn readable_within(inotify: &Inotify, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    // EINTR: looked at again by the caller's loop.
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node1";

    const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: httpd
    image: docker.io/library/busybox-httpd:latest
    ports: [{containerPort: 80, hostPort: 8080}]
"#;

    fn parse(name: &str, data: &str) -> Result<Pod, ManifestError> {
        static_pod_from_manifest(
            &Path::new("/etc/kubernetes/manifests").join(name),
            data.as_bytes(),
            NODE,
        )
    }

    #[test]
    fn static_pod_gets_upstream_defaults() {
        let pod = parse("web.yaml", WEB).unwrap();
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-node1"));
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        let uid = meta.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert!(uid.chars().all(|c| c.is_ascii_hexdigit()));
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations[labels::CONFIG_HASH], uid);
        assert_eq!(annotations[labels::CONFIG_SOURCE], "file");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE));
        let tolerations = spec.tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoExecute"));
        assert_eq!(tolerations[0].key, None);
        assert_eq!(meta.labels.as_ref().unwrap()["app"], "web");
    }

    #[test]
    fn uid_depends_on_content_path_and_node() {
        let uid = |name: &str, data: &str, node: &str| {
            static_pod_from_manifest(Path::new(name), data.as_bytes(), node)
                .unwrap()
                .metadata
                .uid
                .unwrap()
        };
        let base = uid("/m/web.yaml", WEB, NODE);
        assert_eq!(base, uid("/m/web.yaml", WEB, NODE), "stable across reads");
        assert_ne!(base, uid("/m/web2.yaml", WEB, NODE));
        assert_ne!(base, uid("/m/web.yaml", WEB, "node2"));
        assert_ne!(base, uid("/m/web.yaml", &WEB.replace("8080", "8081"), NODE));
        // Formatting alone does not change the pod, so not the UID either.
        assert_eq!(base, uid("/m/web.yaml", &format!("# comment\n{WEB}"), NODE));
    }

    #[test]
    fn explicit_uid_and_namespace_are_kept() {
        let data = WEB.replace(
            "  name: web\n",
            "  name: web\n  namespace: kube-system\n  uid: abc\n",
        );
        let pod = parse("web.yaml", &data).unwrap();
        assert_eq!(pod.metadata.uid.as_deref(), Some("abc"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
    }

    #[test]
    fn existing_noexecute_toleration_is_not_duplicated() {
        let data = format!("{WEB}  tolerations: [{{operator: Exists, effect: NoExecute}}]\n");
        let pod = parse("web.yaml", &data).unwrap();
        assert_eq!(pod.spec.unwrap().tolerations.unwrap().len(), 1);
    }

    #[test]
    fn json_manifests_parse() {
        let data = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},
            "spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
        assert_eq!(
            parse("j.json", data).unwrap().metadata.name.as_deref(),
            Some("j-node1")
        );
    }

    fn message(error: &ManifestError) -> String {
        ErrorChain(error).to_string()
    }

    #[test]
    fn broken_manifests_name_the_file_and_the_reason() {
        let cases = [
            (
                "bad.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: [unclosed",
                "could not parse /etc/kubernetes/manifests/bad.yaml: ",
            ),
            (
                "svc.yaml",
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
                "kind Some(\"Service\")",
            ),
            (
                "list.yaml",
                "- apiVersion: v1\n  kind: Pod\n",
                "expected apiVersion v1, kind Pod, found apiVersion None, kind None",
            ),
            (
                "number.yaml",
                "apiVersion: 1\nkind: Pod\nmetadata: {name: n}\n",
                "found apiVersion Some(\"1\"), kind Some(\"Pod\")",
            ),
            (
                "noname.yaml",
                "apiVersion: v1\nkind: Pod\nspec: {containers: [{name: c, image: i}]}\n",
                "has no metadata.name",
            ),
            (
                "empty.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: e}\nspec: {containers: []}\n",
                "has no containers",
            ),
            (
                "noimage.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: n}\nspec: {containers: [{name: c}]}\n",
                "container \"c\" of pod \"n\" has no image",
            ),
            (
                "dup.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: d}\nspec: {containers: [{name: c, image: i}, {name: c, image: i}]}\n",
                "duplicate container name \"c\"",
            ),
            (
                "field.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: f}\nspec: {containers: [{name: c, image: i, ports: [{containerPort: eighty}]}]}\n",
                "could not parse /etc/kubernetes/manifests/field.yaml: ",
            ),
            (
                "typo.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: t}\nspec: {containers: [{name: c, image: i, imagePullPolcy: Always}]}\n",
                "unknown field \"spec.containers[0].imagePullPolcy\"",
            ),
            (
                "top.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: t, labelz: {}}\nspec: {containers: [{name: c, image: i}]}\nextra: 1\n",
                "unknown field \"extra\"",
            ),
            (
                "policy.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {restartPolicy: Sometimes, containers: [{name: c, image: i}]}\n",
                "spec.restartPolicy: unsupported value \"Sometimes\"",
            ),
            (
                "pull.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, imagePullPolicy: Maybe}]}\n",
                "spec.containers[0].imagePullPolicy: unsupported value \"Maybe\"",
            ),
            (
                "sidecar.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, restartPolicy: Always}]}\n",
                "spec.containers[0].restartPolicy",
            ),
            (
                "ephemeral.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: e}\nspec: {containers: [{name: c, image: i}], ephemeralContainers: [{name: debug, image: i}]}\n",
                "pod \"e\": spec.ephemeralContainers: Forbidden: cannot be set on create",
            ),
            (
                "initdup.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: d}\nspec: {initContainers: [{name: c, image: i}], containers: [{name: c, image: i}]}\n",
                "duplicate container name \"c\"",
            ),
        ];
        for (name, data, expected) in cases {
            let error = parse(name, data).unwrap_err();
            let text = message(&error);
            assert!(text.contains(name), "{text}");
            assert!(text.contains(expected), "{name}: {text}");
        }
    }

    fn write(dir: &Path, name: &str, data: &str) {
        std::fs::write(dir.join(name), data).unwrap();
    }

    #[test]
    fn listing_skips_other_files_and_reports_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", WEB);
        write(
            dir.path(),
            "other.yml",
            &WEB.replace("name: web", "name: other"),
        );
        write(
            dir.path(),
            ".hidden.yaml",
            &WEB.replace("name: web", "name: hidden"),
        );
        write(dir.path(), "notes.txt", "hello");
        write(dir.path(), "web.yaml.swp", "junk");
        write(dir.path(), "bad.yaml", "kind: [");
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        // Symlinks count by what they point at: a manifest, a directory,
        // nothing.
        let elsewhere = tempfile::tempdir().unwrap();
        write(
            elsewhere.path(),
            "linked.yaml",
            &WEB.replace("name: web", "name: linked"),
        );
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap();
        };
        link(&elsewhere.path().join("linked.yaml"), "linked.yaml");
        link(elsewhere.path(), "dir-link.yaml");
        link(&elsewhere.path().join("missing.yaml"), "dangling.yaml");

        let listing = list_manifests(dir.path(), NODE).unwrap();
        let names: Vec<_> = listing
            .pods
            .iter()
            .map(|(_, p)| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["linked-node1", "other-node1", "web-node1"]);
        assert_eq!(listing.errors.len(), 1);
        assert_eq!(listing.errors[0].0, dir.path().join("bad.yaml"));
    }

    /// A listing after events reads the files they name and those it has
    /// not read before; the others are taken from the cache, whatever is
    /// on disk now.
    #[test]
    fn a_listing_after_events_reads_only_the_named_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = ManifestCache::default();
        write(dir.path(), "web.yaml", WEB);
        write(dir.path(), "db.yaml", &WEB.replace("name: web", "name: db"));
        list_manifests_cached(dir.path(), NODE, &mut cache, Reread::All).unwrap();
        let edited = |name: &str| {
            WEB.replace("name: web", &format!("name: {name}"))
                .replace("busybox-httpd", "busybox-httpx")
        };
        write(dir.path(), "web.yaml", &edited("web"));
        write(dir.path(), "db.yaml", &edited("db"));
        write(dir.path(), "new.yaml", &edited("new"));
        let named: HashSet<OsString> = ["db.yaml".into()].into();
        let listing =
            list_manifests_cached(dir.path(), NODE, &mut cache, Reread::Named(&named)).unwrap();
        let images: Vec<(&str, &str)> = listing
            .pods
            .iter()
            .map(|(path, pod)| {
                let name = path.file_name().unwrap().to_str().unwrap();
                let image = pod.spec.as_ref().unwrap().containers[0].image.as_deref();
                (name, image.unwrap().rsplit('/').next().unwrap())
            })
            .collect();
        assert_eq!(
            images,
            [
                ("db.yaml", "busybox-httpx:latest"),
                ("new.yaml", "busybox-httpx:latest"),
                ("web.yaml", "busybox-httpd:latest"),
            ]
        );
        // A full listing reads every file.
        let listing = list_manifests_cached(dir.path(), NODE, &mut cache, Reread::All).unwrap();
        assert_eq!(listing.pods, list_manifests(dir.path(), NODE).unwrap().pods);
        let web = &listing.pods[2].1.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            web.image.as_deref(),
            Some("docker.io/library/busybox-httpx:latest")
        );
    }

    #[test]
    fn cached_listing_reparses_only_changed_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = ManifestCache::default();
        write(dir.path(), "web.yaml", WEB);
        let first = list_manifests_cached(dir.path(), NODE, &mut cache, Reread::All).unwrap();
        assert_eq!(cache.parsed.len(), 1);
        // Unchanged: the same pod as a fresh parse.
        let again = list_manifests_cached(dir.path(), NODE, &mut cache, Reread::All).unwrap();
        assert_eq!(again.pods, first.pods);
        assert_eq!(again.pods, list_manifests(dir.path(), NODE).unwrap().pods);
        // Changed content is parsed again.
        write(
            dir.path(),
            "web.yaml",
            &WEB.replace("busybox-httpd", "busybox"),
        );
        let changed = list_manifests_cached(dir.path(), NODE, &mut cache, Reread::All).unwrap();
        let image = |l: &ManifestListing| {
            l.pods[0].1.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
        };
        assert_eq!(
            image(&changed).as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        // A file that turns invalid, and one removed, leave the cache.
        write(dir.path(), "web.yaml", "kind: Pod\n");
        let broken = list_manifests_cached(dir.path(), NODE, &mut cache, Reread::All).unwrap();
        assert_eq!((broken.pods.len(), broken.errors.len()), (0, 1));
        assert!(cache.parsed.is_empty());
    }

    #[test]
    fn second_manifest_with_the_same_pod_name_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", WEB);
        write(dir.path(), "b.yaml", &WEB.replace("app: web", "app: web2"));
        let listing = list_manifests(dir.path(), NODE).unwrap();
        assert_eq!(listing.pods.len(), 1);
        assert!(matches!(
            listing.errors[0].2,
            ManifestError::DuplicatePod { .. }
        ));
        assert!(message(&listing.errors[0].2).contains("a.yaml"));
    }

    #[test]
    fn missing_directory_lists_empty() {
        let dir = tempfile::tempdir().unwrap();
        let listing = list_manifests(&dir.path().join("absent"), NODE).unwrap();
        assert!(listing.pods.is_empty() && listing.errors.is_empty());
    }

    #[test]
    fn state_publishes_only_changes_and_keeps_first_seen() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", WEB);
        let mut state = StaticPodState::default();
        let t0 = chrono::DateTime::from_timestamp(1_700_000_000, 120_000_000).unwrap();
        let t1 = t0 + chrono::Duration::seconds(5);

        let first = state
            .apply(list_manifests(dir.path(), NODE).unwrap(), t0)
            .unwrap();
        assert_eq!(first.len(), 1);
        let pod = first.values().next().unwrap();
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[labels::CONFIG_SEEN],
            "2023-11-14T22:13:20.12Z"
        );
        assert!(
            state
                .apply(list_manifests(dir.path(), NODE).unwrap(), t1)
                .is_none()
        );

        write(dir.path(), "web.yaml", &WEB.replace("8080", "9090"));
        let edited = state
            .apply(list_manifests(dir.path(), NODE).unwrap(), t1)
            .unwrap();
        assert_eq!(edited.len(), 1);
        assert_ne!(
            edited.keys().next(),
            first.keys().next(),
            "edit gives a new UID"
        );

        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        assert!(
            state
                .apply(list_manifests(dir.path(), NODE).unwrap(), t1)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_fold_returns_the_pods_added_and_removed_for_logging_later() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", WEB);
        let mut state = StaticPodState::default();
        let now = chrono::Utc::now();

        let (desired, changes) = state.fold(list_manifests(dir.path(), NODE).unwrap(), now);
        let uid = desired.unwrap().keys().next().unwrap().clone();
        assert_eq!(
            changes.added,
            vec![(
                uid.clone(),
                format!("web-{NODE}"),
                dir.path().join("web.yaml")
            )]
        );
        assert!(changes.removed.is_empty());

        // Listed again unchanged: no new set, nothing to log.
        let (desired, changes) = state.fold(list_manifests(dir.path(), NODE).unwrap(), now);
        assert!(desired.is_none());
        assert!(changes.added.is_empty() && changes.removed.is_empty());

        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        let (desired, changes) = state.fold(list_manifests(dir.path(), NODE).unwrap(), now);
        assert!(desired.unwrap().is_empty());
        assert!(changes.added.is_empty());
        assert_eq!(changes.removed, vec![(uid, format!("web-{NODE}"))]);
        changes.log();
    }

    #[test]
    fn rfc3339_nano_trims_zeros() {
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap();
        assert_eq!(rfc3339_nano(t), "1970-01-01T00:00:00Z");
        let t = chrono::DateTime::from_timestamp(0, 5).unwrap();
        assert_eq!(rfc3339_nano(t), "1970-01-01T00:00:00.000000005Z");
    }

    #[tokio::test]
    async fn inotify_picks_up_a_new_manifest_without_waiting_for_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let source = StaticPodSource::new(
            dir.path().to_owned(),
            NODE.into(),
            Duration::from_secs(3600),
        );
        let task = tokio::spawn(source.run(tx, cancel.clone()));

        rx.changed().await.unwrap();
        assert!(rx.borrow_and_update().as_ref().unwrap().is_empty());
        // The source runs on its own named thread of this process.
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect();
        assert!(names.iter().any(|n| n == SOURCE_THREAD), "{names:?}");
        write(dir.path(), "web.yaml", WEB);
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow_and_update().as_ref().unwrap().len(), 1);

        // A file renamed in (an atomic save) and a symlink (only a
        // creation event: the fallback re-list) are both picked up.
        write(
            dir.path(),
            ".db.yaml.tmp",
            &WEB.replace("name: web", "name: db"),
        );
        std::fs::rename(dir.path().join(".db.yaml.tmp"), dir.path().join("db.yaml")).unwrap();
        let other = tempfile::tempdir().unwrap();
        write(
            other.path(),
            "cache.yaml",
            &WEB.replace("name: web", "name: cache"),
        );
        std::os::unix::fs::symlink(
            other.path().join("cache.yaml"),
            dir.path().join("cache.yaml"),
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while rx.borrow_and_update().as_ref().unwrap().len() < 3 {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the renamed and the symlinked manifest are listed");
        // An edit in place, to content of the same length, is read again:
        // the listing after an event reads the files it names.
        let image = |rx: &mut DesiredPodsReceiver| {
            let desired = rx.borrow_and_update().clone().unwrap();
            let db = desired
                .values()
                .find(|p| p.metadata.name.as_deref() == Some("db-node1"));
            db.unwrap().spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        };
        assert_eq!(image(&mut rx), "docker.io/library/busybox-httpd:latest");
        let edited = WEB
            .replace("name: web", "name: db")
            .replace("busybox-httpd", "busybox-httpx");
        write(dir.path(), "db.yaml", &edited);
        tokio::time::timeout(Duration::from_secs(10), async {
            while image(&mut rx) != "docker.io/library/busybox-httpx:latest" {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the edited manifest is read again");
        // A deletion is seen too.
        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while rx.borrow_and_update().as_ref().unwrap().len() != 2 {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the deleted manifest is gone");

        cancel.cancel();
        task.await.unwrap();
    }
}
