//! Builds the CRI `ContainerConfig` of one container instance (upstream
//! `generateContainerConfig`), and the `$(VAR)` expansion of env, command and args.
//!
//! Pure: volume mounts are added by the caller (they need the mounted
//! volumes); a spec that cannot be honoured is a [`ContainerConfigError`].

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::actions::{container_hash, termination_grace_period};
use crate::labels;
use crate::runtime::sandbox::namespace_options;

/// Upstream default of `terminationMessagePath`.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Upstream default of `terminationMessagePolicy`.
pub const DEFAULT_TERMINATION_MESSAGE_POLICY: &str = "File";

/// Paths masked in unprivileged containers (upstream `defaultMaskedPaths`).
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths read-only in unprivileged containers (upstream `defaultReadonlyPaths`).
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A container spec that cannot be turned into a config (upstream
/// `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerConfigError {
    /// `env[].valueFrom.fieldRef` names a field the kubelet does not provide.
    #[error("env {variable}: unsupported fieldRef fieldPath {field_path:?}")]
    UnsupportedFieldPath {
        /// Variable name.
        variable: String,
        /// The field path as given.
        field_path: String,
    },
    /// `env[].valueFrom.resourceFieldRef` names an unknown resource.
    #[error("env {variable}: unsupported resourceFieldRef resource {resource:?}")]
    UnsupportedResource {
        /// Variable name.
        variable: String,
        /// The resource as given.
        resource: String,
    },
    /// A `Localhost` seccomp profile without `localhostProfile`.
    #[error("{field}: localhostProfile must be set if seccomp profile type is Localhost")]
    SeccompLocalhostProfile {
        /// `spec.securityContext.seccompProfile` or the container's.
        field: &'static str,
    },
    /// An unknown seccomp profile type.
    #[error("{field}: unsupported seccomp profile type {value:?}")]
    SeccompProfileType {
        /// `spec.securityContext.seccompProfile.type` or the container's.
        field: &'static str,
        /// The type as given.
        value: String,
    },
    /// `runAsNonRoot` cannot hold (upstream `verifyRunAsNonRoot`'s texts).
    #[error("{0}")]
    RunAsNonRoot(String),
    /// A ConfigMap or Secret is referenced, which this pod cannot use (static
    /// pods may not reference API objects; API mode resolves them).
    #[error("{field}: {kind} {object:?} cannot be referenced: static pods may not use API objects")]
    ObjectReference {
        /// The field, e.g. `env[FOO].valueFrom.secretKeyRef`.
        field: String,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Object name.
        object: String,
    },
}

/// `<container name>/<restart count>.log`, relative to the pod log directory.
pub fn container_log_path(container: &str, restart_count: u32) -> String {
    format!("{container}/{restart_count}.log")
}

/// The log file a runtime writes for a container: the sandbox's log
/// directory joined with the container's log path, none unless both are
/// set (as containerd's).
pub fn runtime_log_path(log_directory: &str, log_path: &str) -> String {
    match (log_directory, log_path) {
        ("", _) | (_, "") => String::new(),
        (dir, path) => Path::new(dir).join(path).to_string_lossy().into_owned(),
    }
}

/// Whether starting `container` needs the pod's IPs: its env refers to
/// them, or its postStart hook reaches the pod over the network.
pub fn needs_pod_ips(container: &Container) -> bool {
    let env_refers = container.env.iter().flatten().any(|var| {
        var.value_from
            .as_ref()
            .and_then(|from| from.field_ref.as_ref())
            .is_some_and(|field| field.field_path.starts_with("status.podIP"))
    });
    let hook_reaches = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .is_some_and(|h| h.http_get.is_some() || h.tcp_socket.is_some());
    env_refers || hook_reaches
}

/// Upstream `expansion.Expand`: `$(NAME)` becomes the variable's value if it
/// is defined and stays as written otherwise; `$$` is a literal `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(') {
            match reference.find(')') {
                Some(end) => {
                    let name = &reference[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &reference[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = reference;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the environment of a container may refer to besides its spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvContext {
    /// The pod's IPs, primary first (`status.podIP`, `status.podIPs`).
    pub pod_ips: Vec<String>,
    /// The node's IPs, primary first (`status.hostIP`, `status.hostIPs`).
    pub host_ips: Vec<String>,
    /// Node allocatable cpu cores, for `resourceFieldRef` without a limit.
    pub node_cpu: f64,
    /// Node allocatable memory bytes, for `resourceFieldRef` without a limit.
    pub node_memory: f64,
}

/// Upstream `GetObjectFieldPathValue` plus the fields the kubelet fills in.
fn field_value(
    pod: &Pod,
    variable: &str,
    field_path: &str,
    context: &EnvContext,
) -> Result<String, ContainerConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| {
        field_path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
    };
    let value = match field_path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => context.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => context.pod_ips.join(","),
        "status.hostIP" => context.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => context.host_ips.join(","),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(ContainerConfigError::UnsupportedFieldPath {
                    variable: variable.to_owned(),
                    field_path: field_path.to_owned(),
                });
            }
        }
    };
    Ok(value)
}

/// Upstream `ExtractContainerResourceValue`: the value in units of the
/// divisor, rounded up; a missing limit is the node's allocatable amount.
fn resource_value(
    pod: &Pod,
    own: &Container,
    variable: &str,
    selector: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    context: &EnvContext,
) -> Result<String, ContainerConfigError> {
    use crate::resources::{Side, container_resource, parse_quantity};
    let container = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => crate::runtime::find_container(pod, name).unwrap_or(own),
        None => own,
    };
    let unsupported = || ContainerConfigError::UnsupportedResource {
        variable: variable.to_owned(),
        resource: selector.resource.clone(),
    };
    let (side, name) = selector.resource.split_once('.').ok_or_else(unsupported)?;
    let side = match side {
        "limits" => Side::Limits,
        "requests" => Side::Requests,
        _ => return Err(unsupported()),
    };
    let node_value = match name {
        "cpu" => context.node_cpu,
        "memory" => context.node_memory,
        "ephemeral-storage" => 0.0,
        _ => return Err(unsupported()),
    };
    let value = container_resource(container, side, name).unwrap_or(match side {
        Side::Limits => node_value,
        Side::Requests => 0.0,
    });
    let divisor = selector
        .divisor
        .as_ref()
        .and_then(|d| parse_quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    // Rounding guards against 0.1 + 0.2 style noise before the ceiling.
    let units = ((value / divisor) * 1e9).round() / 1e9;
    Ok(format!("{}", units.ceil() as i64))
}

/// The env vars in order, each `value` expanded against those before it (as
/// upstream `makeEnvironmentVariables`), `valueFrom` resolved from the pod.
/// ConfigMap and Secret references cannot be resolved here (static pods may
/// not use API objects): optional ones are skipped, others are an error.
fn environment(
    pod: &Pod,
    container: &Container,
    context: &EnvContext,
) -> Result<Vec<cri::KeyValue>, ContainerConfigError> {
    for source in container.env_from.iter().flatten() {
        let (kind, name, optional) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(c), _) => ("ConfigMap", c.name.clone(), c.optional),
            (None, Some(s)) => ("Secret", s.name.clone(), s.optional),
            (None, None) => continue,
        };
        if optional != Some(true) {
            return Err(ContainerConfigError::ObjectReference {
                field: "envFrom".to_owned(),
                kind,
                object: name,
            });
        }
    }
    let mut defined: HashMap<String, String> = HashMap::new();
    let mut envs: Vec<cri::KeyValue> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), |n| {
                defined.get(n).cloned()
            }),
            Some(source) => {
                if let Some(field) = &source.field_ref {
                    field_value(pod, &var.name, &field.field_path, context)?
                } else if let Some(resource) = &source.resource_field_ref {
                    resource_value(pod, container, &var.name, resource, context)?
                } else {
                    let (kind, name, optional, what) =
                        match (&source.config_map_key_ref, &source.secret_key_ref) {
                            (Some(c), _) => {
                                ("ConfigMap", c.name.clone(), c.optional, "configMapKeyRef")
                            }
                            (None, Some(s)) => {
                                ("Secret", s.name.clone(), s.optional, "secretKeyRef")
                            }
                            (None, None) => continue,
                        };
                    if optional == Some(true) {
                        continue;
                    }
                    return Err(ContainerConfigError::ObjectReference {
                        field: format!("env[{}].valueFrom.{what}", var.name),
                        kind,
                        object: name,
                    });
                }
            }
        };
        defined.insert(var.name.clone(), value.clone());
        // A later definition of the same name replaces the earlier one.
        match envs.iter_mut().find(|kv| kv.key == var.name) {
            Some(kv) => kv.value = value,
            None => envs.push(cri::KeyValue {
                key: var.name.clone(),
                value,
            }),
        }
    }
    Ok(envs)
}

/// The CRI seccomp profile of a container (upstream `getSeccompProfile`):
/// the container's `seccompProfile`, else the pod's, else `Unconfined`;
/// a `Localhost` profile is a file under `root` (`<root-dir>/seccomp`).
/// For the sandbox, pass no container profile.
pub fn seccomp_profile(
    pod: &Pod,
    container: Option<&Container>,
    root: &Path,
) -> Result<cri::SecurityProfile, ContainerConfigError> {
    use cri::security_profile::ProfileType;
    let from_container = container
        .and_then(|c| c.security_context.as_ref())
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| (p, "securityContext.seccompProfile"));
    let from_pod = || {
        pod.spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| (p, "spec.securityContext.seccompProfile"))
    };
    let Some((profile, field)) = from_container.or_else(from_pod) else {
        return Ok(cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        });
    };
    let profile_type = match profile.type_.as_str() {
        "Unconfined" => ProfileType::Unconfined,
        "RuntimeDefault" => ProfileType::RuntimeDefault,
        "Localhost" => ProfileType::Localhost,
        other => {
            return Err(ContainerConfigError::SeccompProfileType {
                field,
                value: other.to_owned(),
            });
        }
    };
    let localhost_ref = match profile_type {
        ProfileType::Localhost => match profile.localhost_profile.as_deref() {
            Some(name) if !name.is_empty() => root.join(name).display().to_string(),
            _ => return Err(ContainerConfigError::SeccompLocalhostProfile { field }),
        },
        _ => String::new(),
    };
    Ok(cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref,
    })
}

/// Upstream `verifyRunAsNonRoot`: with an effective `runAsNonRoot: true`,
/// the container must not run as uid 0, by its `runAsUser` or else the
/// image's user: its uid, or a non-numeric user name that cannot be
/// checked; an image with neither (or none found) counts as root, as
/// upstream's `getImageUser` has it. The image matters only when
/// [`needs_image_user`].
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    image: Option<&cri::Image>,
) -> Result<(), ContainerConfigError> {
    let (image_uid, image_user) = match image {
        Some(i) if i.uid.is_some() => (i.uid.as_ref().map(|u| u.value), ""),
        Some(i) if !i.username.is_empty() => (None, i.username.as_str()),
        _ => (Some(0), ""),
    };
    let (non_root, run_as_user) = run_as_non_root(pod, container);
    if !non_root {
        return Ok(());
    }
    let meta = &pod.metadata;
    let pod_text = format!(
        "{}_{}({})",
        meta.name.as_deref().unwrap_or_default(),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    );
    let name = &container.name;
    let message = match (run_as_user, image_uid) {
        (Some(0), _) => format!(
            "container's runAsUser breaks non-root policy (pod: {pod_text:?}, container: {name})"
        ),
        (Some(_), _) => return Ok(()),
        (None, Some(0)) => format!(
            "container has runAsNonRoot and image will run as root (pod: {pod_text:?}, container: {name})"
        ),
        (None, None) => format!(
            "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root (pod: {pod_text:?}, container: {name})"
        ),
        (None, Some(_)) => return Ok(()),
    };
    Err(ContainerConfigError::RunAsNonRoot(message))
}

/// Whether [`verify_run_as_non_root`] needs the image's user: `runAsNonRoot`
/// is in effect and no `runAsUser` decides it.
pub fn needs_image_user(pod: &Pod, container: &Container) -> bool {
    matches!(run_as_non_root(pod, container), (true, None))
}

/// The effective `(runAsNonRoot, runAsUser)`: the container's, else the pod's.
fn run_as_non_root(pod: &Pod, container: &Container) -> (bool, Option<i64>) {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let user = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    (non_root, user)
}

/// The pod's supplemental groups, with `fsGroup` added (upstream
/// `DetermineEffectiveSecurityContext` and the sandbox config do so).
pub fn supplemental_groups(pod: &Pod) -> Vec<i64> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let mut groups = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        groups.push(fs_group);
    }
    groups
}

/// The CRI SELinux options of a container: its own, else the pod's.
fn selinux_options(pod: &Pod, container: Option<&Container>) -> Option<cri::SeLinuxOption> {
    let options = container
        .and_then(|c| c.security_context.as_ref())
        .and_then(|s| s.se_linux_options.as_ref())
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.se_linux_options.as_ref())
        })?;
    Some(cri::SeLinuxOption {
        user: options.user.clone().unwrap_or_default(),
        role: options.role.clone().unwrap_or_default(),
        r#type: options.type_.clone().unwrap_or_default(),
        level: options.level.clone().unwrap_or_default(),
    })
}

/// The pod-level SELinux options, for the sandbox.
pub fn pod_selinux_options(pod: &Pod) -> Option<cri::SeLinuxOption> {
    selinux_options(pod, None)
}

fn security_context(pod: &Pod, container: &Container) -> cri::LinuxContainerSecurityContext {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    // `procMount: Unmasked` leaves /proc as is (upstream sends no paths).
    let unmasked = sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
    let strings = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default();
    let capabilities = sc
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| cri::Capability {
            add_capabilities: strings(c.add.as_ref()),
            drop_capabilities: strings(c.drop.as_ref()),
            add_ambient_capabilities: Vec::new(),
        });
    let paths = |list: &[&str]| {
        if privileged || unmasked {
            Vec::new()
        } else {
            list.iter().map(|p| (*p).to_owned()).collect()
        }
    };
    cri::LinuxContainerSecurityContext {
        capabilities,
        privileged,
        namespace_options: Some(namespace_options(pod)),
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user))
            .map(|value| cri::Int64Value { value }),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group))
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups: supplemental_groups(pod),
        selinux_options: selinux_options(pod, Some(container)),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        ..Default::default()
    }
}

/// Upstream `MinShares`, `SharesPerCPU`, `MilliCPUToCPU`, `QuotaPeriod`, `MinQuotaPeriod`.
const MIN_SHARES: i64 = 2;
const SHARES_PER_CPU: i64 = 1024;
const QUOTA_PERIOD: i64 = 100_000;
const MIN_QUOTA: i64 = 1000;
/// Upstream OOM score adjustments by QoS class.
const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;

/// Upstream `generateLinuxContainerResources`: cpu shares from the request,
/// CFS quota from the limit, the memory limit, and the OOM score adjustment
/// of the pod's QoS class (upstream `GetContainerOOMScoreAdjust`).
fn linux_resources(
    pod: &Pod,
    container: &Container,
    node_memory: f64,
) -> cri::LinuxContainerResources {
    use crate::qos::{QosClass, qos_class};
    use crate::resources::{Side, container_resource};
    let millis = |cores: f64| (cores * 1000.0).ceil() as i64;
    let cpu_request = container_resource(container, Side::Requests, "cpu").map(millis);
    let cpu_limit = container_resource(container, Side::Limits, "cpu").map(millis);
    let cpu_shares = match cpu_request {
        Some(m) if m > 0 => (m * SHARES_PER_CPU / 1000).max(MIN_SHARES),
        _ => MIN_SHARES,
    };
    let (cpu_quota, cpu_period) = match cpu_limit {
        Some(m) if m > 0 => ((m * QUOTA_PERIOD / 1000).max(MIN_QUOTA), QUOTA_PERIOD),
        _ => (0, 0),
    };
    let memory_limit =
        container_resource(container, Side::Limits, "memory").map_or(0, |b| b as i64);
    let oom_score_adj = match qos_class(pod) {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let request = container_resource(container, Side::Requests, "memory").unwrap_or(0.0);
            let adj = if node_memory > 0.0 {
                1000 - (1000.0 * request / node_memory) as i64
            } else {
                1000
            };
            // Above the guaranteed pods, below the best-effort ones.
            adj.clamp(2, 999)
        }
    };
    cri::LinuxContainerResources {
        cpu_shares,
        cpu_quota,
        cpu_period,
        memory_limit_in_bytes: memory_limit,
        oom_score_adj,
        ..Default::default()
    }
}

/// The config of instance `restart_count` of `container` in `pod`.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    restart_count: u32,
    context: &EnvContext,
) -> Result<cri::ContainerConfig, ContainerConfigError> {
    let meta = &pod.metadata;
    let envs = environment(pod, container, context)?;
    let lookup = |name: &str| {
        envs.iter()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.clone())
    };
    let expand_all = |list: Option<&Vec<String>>| -> Vec<String> {
        list.into_iter()
            .flatten()
            .map(|s| expand(s, lookup))
            .collect()
    };

    let image = container.image.clone().unwrap_or_default();
    let labels = HashMap::from([
        (
            labels::POD_NAME.to_owned(),
            meta.name.clone().unwrap_or_default(),
        ),
        (
            labels::POD_NAMESPACE.to_owned(),
            meta.namespace.clone().unwrap_or_default(),
        ),
        (
            labels::POD_UID.to_owned(),
            meta.uid.clone().unwrap_or_default(),
        ),
        (labels::CONTAINER_NAME.to_owned(), container.name.clone()),
    ]);
    let annotations = HashMap::from([
        (labels::CONTAINER_HASH.to_owned(), container_hash(container)),
        (
            labels::CONTAINER_RESTART_COUNT.to_owned(),
            restart_count.to_string(),
        ),
        (
            labels::CONTAINER_TERMINATION_MESSAGE_PATH.to_owned(),
            container
                .termination_message_path
                .clone()
                .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_owned()),
        ),
        (
            labels::CONTAINER_TERMINATION_MESSAGE_POLICY.to_owned(),
            container
                .termination_message_policy
                .clone()
                .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_POLICY.to_owned()),
        ),
        (
            labels::POD_TERMINATION_GRACE_PERIOD.to_owned(),
            termination_grace_period(pod).to_string(),
        ),
    ]);
    let mut annotations = annotations;
    if let Some(handler) = crate::hooks::recorded_pre_stop(container) {
        annotations.insert(labels::CONTAINER_PRE_STOP_HANDLER.to_owned(), handler);
    }
    if container.restart_policy.as_deref() == Some("Always") {
        annotations.insert(labels::CONTAINER_SIDECAR.to_owned(), "true".to_owned());
    }
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: image.clone(),
            user_specified_image: image,
            ..Default::default()
        }),
        command: expand_all(container.command.as_ref()),
        args: expand_all(container.args.as_ref()),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: envs.clone(),
        labels,
        annotations,
        log_path: container_log_path(&container.name, restart_count),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(pod, container, context.node_memory)),
            security_context: Some(security_context(pod, container)),
        }),
        ..Default::default()
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_upstream_rules() {
        assert_eq!(expand("x $(A) y", lookup), "x alpha y");
        assert_eq!(expand("$(A)$(A)", lookup), "alphaalpha");
        assert_eq!(expand("$(MISSING)", lookup), "$(MISSING)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$$$(A)", lookup), "$alpha");
        assert_eq!(expand("cost $5", lookup), "cost $5");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("end $", lookup), "end $");
        assert_eq!(expand("[$(EMPTY)]", lookup), "[]");
        assert_eq!(expand("ünï $(A) ¢", lookup), "ünï alpha ¢");
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: app-node1
  namespace: ns
  uid: u1
  labels: {tier: web}
  annotations: {note: hi}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: docker.io/library/busybox:latest
    command: [sh, -c]
    args: ["echo $(GREETING) $(UNSET); sleep 1"]
    workingDir: /tmp
    env:
    - {name: NAME, value: world}
    - {name: GREETING, value: "hello $(NAME)"}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: POD_IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}
    - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: TIER, valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}}
    - {name: NOTE, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['note']"}}}
    - {name: CPU_LIMIT, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: MEM_LIMIT_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU_REQUEST_M, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    - {name: NODE_MEMORY_GI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Gi, containerName: other}}}
    resources:
      requests: {cpu: 250m}
      limits: {cpu: 500m, memory: 64Mi}
  - name: other
    image: docker.io/library/busybox:latest
"#;

    #[test]
    fn only_some_containers_need_the_pod_ips_to_start() {
        let pod: Pod = serde_yaml::from_str(POD).unwrap();
        let containers = &pod.spec.as_ref().unwrap().containers;
        assert!(needs_pod_ips(&containers[0]), "env refers to status.podIP");
        assert!(!needs_pod_ips(&containers[1]));
        let hooked: Container = serde_yaml::from_str(
            "{name: h, lifecycle: {postStart: {httpGet: {port: 80, path: /}}}}",
        )
        .unwrap();
        assert!(needs_pod_ips(&hooked), "postStart reaches the pod");
        let exec_hook: Container =
            serde_yaml::from_str("{name: h, lifecycle: {postStart: {exec: {command: [true]}}}}")
                .unwrap();
        assert!(!needs_pod_ips(&exec_hook));
    }

    #[test]
    fn container_config_of_a_restarted_instance() {
        let pod: Pod = serde_yaml::from_str(POD).unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let context = EnvContext {
            pod_ips: vec!["10.1.0.7".into(), "fd00::7".into()],
            host_ips: vec!["192.0.2.2".into()],
            node_cpu: 2.0,
            node_memory: 4.0 * 1024.0 * 1024.0 * 1024.0,
        };
        let config = container_config(&pod, container, 3, &context).unwrap();
        assert_eq!(config.metadata.as_ref().unwrap().name, "main");
        assert_eq!(config.metadata.as_ref().unwrap().attempt, 3);
        assert_eq!(
            config.image.as_ref().unwrap().image,
            "docker.io/library/busybox:latest"
        );
        assert_eq!(config.command, ["sh", "-c"]);
        assert_eq!(config.args, ["echo hello world $(UNSET); sleep 1"]);
        assert_eq!(config.working_dir, "/tmp");
        let envs: Vec<_> = config
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(
            envs,
            [
                ("NAME", "world"),
                ("GREETING", "hello world"),
                ("POD_IP", "10.1.0.7"),
                ("POD_IPS", "10.1.0.7,fd00::7"),
                ("HOST_IP", "192.0.2.2"),
                ("POD_NAME", "app-node1"),
                ("POD_NAMESPACE", "ns"),
                ("POD_UID", "u1"),
                ("NODE", "node1"),
                ("TIER", "web"),
                ("NOTE", "hi"),
                ("CPU_LIMIT", "1"),
                ("MEM_LIMIT_MI", "64"),
                ("CPU_REQUEST_M", "250"),
                ("NODE_MEMORY_GI", "4"),
            ]
        );
        let resources = config.linux.as_ref().unwrap().resources.clone().unwrap();
        assert_eq!(resources.cpu_shares, 256);
        assert_eq!(
            (resources.cpu_quota, resources.cpu_period),
            (50_000, 100_000)
        );
        assert_eq!(resources.memory_limit_in_bytes, 64 * 1024 * 1024);
        // Burstable: 1000 - 1000 * 64Mi / 4Gi.
        assert_eq!(resources.oom_score_adj, 985);
        assert_eq!(config.log_path, "main/3.log");
        assert_eq!(config.labels[labels::POD_NAME], "app-node1");
        assert_eq!(config.labels[labels::POD_NAMESPACE], "ns");
        assert_eq!(config.labels[labels::POD_UID], "u1");
        assert_eq!(config.labels[labels::CONTAINER_NAME], "main");
        assert_eq!(config.annotations[labels::CONTAINER_RESTART_COUNT], "3");
        assert_eq!(
            config.annotations[labels::CONTAINER_HASH],
            container_hash(container)
        );
        assert_eq!(
            config.annotations[labels::CONTAINER_TERMINATION_MESSAGE_PATH],
            "/dev/termination-log"
        );
        assert_eq!(
            config.annotations[labels::POD_TERMINATION_GRACE_PERIOD],
            "5"
        );
        let sc = config.linux.unwrap().security_context.unwrap();
        assert_eq!(
            sc.namespace_options.unwrap().pid,
            cri::NamespaceMode::Container as i32
        );
        assert!(!sc.privileged);
        assert!(sc.masked_paths.contains(&"/proc/kcore".to_owned()));
    }

    #[test]
    fn unresolvable_references_are_config_errors() {
        let mut pod: Pod = serde_yaml::from_str(POD).unwrap();
        let container = &mut pod.spec.as_mut().unwrap().containers[1];
        container.env = Some(vec![
            serde_yaml::from_str(
                "{name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: pw}}}",
            )
            .unwrap(),
        ]);
        let container = container.clone();
        let error = container_config(&pod, &container, 0, &EnvContext::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "env[PASSWORD].valueFrom.secretKeyRef: Secret \"db\" cannot be referenced: static pods may not use API objects"
        );

        let mut optional = container.clone();
        optional.env =
            Some(vec![serde_yaml::from_str(
            "{name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: pw, optional: true}}}",
        )
        .unwrap()]);
        let config = container_config(&pod, &optional, 0, &EnvContext::default()).unwrap();
        assert!(config.envs.is_empty());

        let mut bad_field = container.clone();
        bad_field.env = Some(vec![
            serde_yaml::from_str("{name: X, valueFrom: {fieldRef: {fieldPath: spec.nope}}}")
                .unwrap(),
        ]);
        assert_eq!(
            container_config(&pod, &bad_field, 0, &EnvContext::default()).unwrap_err(),
            ContainerConfigError::UnsupportedFieldPath {
                variable: "X".into(),
                field_path: "spec.nope".into()
            }
        );
    }

    #[test]
    fn security_context_user_falls_back_to_the_pod() {
        let mut pod: Pod = serde_yaml::from_str(POD).unwrap();
        pod.spec.as_mut().unwrap().security_context =
            Some(serde_yaml::from_str("{runAsUser: 1000, runAsGroup: 1000}").unwrap());
        pod.spec.as_mut().unwrap().containers[0].security_context =
            Some(serde_yaml::from_str("{runAsUser: 0, privileged: true}").unwrap());
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        let config = container_config(&pod, &container, 0, &EnvContext::default()).unwrap();
        let sc = config.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_user, Some(cri::Int64Value { value: 0 }));
        assert_eq!(sc.run_as_group, Some(cri::Int64Value { value: 1000 }));
        assert!(sc.privileged);
        assert!(sc.masked_paths.is_empty());
    }

    fn pod_with(pod_sc: &str, container_sc: &str) -> (Pod, Container) {
        let mut pod: Pod = serde_yaml::from_str(POD).unwrap();
        pod.spec.as_mut().unwrap().security_context = Some(serde_yaml::from_str(pod_sc).unwrap());
        pod.spec.as_mut().unwrap().containers[0].security_context =
            Some(serde_yaml::from_str(container_sc).unwrap());
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, container)
    }

    #[test]
    fn seccomp_profile_from_the_container_else_the_pod() {
        use cri::security_profile::ProfileType;
        let root = Path::new("/var/lib/kubelet/seccomp");
        let (pod, container) = pod_with(
            "{seccompProfile: {type: RuntimeDefault}}",
            "{seccompProfile: {type: Localhost, localhostProfile: profiles/audit.json}}",
        );
        let own = seccomp_profile(&pod, Some(&container), root).unwrap();
        assert_eq!(own.profile_type, ProfileType::Localhost as i32);
        assert_eq!(
            own.localhost_ref,
            "/var/lib/kubelet/seccomp/profiles/audit.json"
        );
        let sandbox = seccomp_profile(&pod, None, root).unwrap();
        assert_eq!(sandbox.profile_type, ProfileType::RuntimeDefault as i32);

        let (pod, container) = pod_with("{}", "{}");
        let unset = seccomp_profile(&pod, Some(&container), root).unwrap();
        assert_eq!(unset.profile_type, ProfileType::Unconfined as i32);

        let (pod, container) = pod_with("{}", "{seccompProfile: {type: Localhost}}");
        let error = seccomp_profile(&pod, Some(&container), root).unwrap_err();
        assert_eq!(
            error.to_string(),
            "securityContext.seccompProfile: localhostProfile must be set if seccomp profile type is Localhost"
        );
        let (pod, container) = pod_with("{seccompProfile: {type: Strict}}", "{}");
        assert!(matches!(
            seccomp_profile(&pod, Some(&container), root),
            Err(ContainerConfigError::SeccompProfileType {
                field: "spec.securityContext.seccompProfile",
                ..
            })
        ));
    }

    #[test]
    fn run_as_non_root_follows_upstream() {
        let image = |uid: Option<i64>, username: &str| cri::Image {
            uid: uid.map(|value| cri::Int64Value { value }),
            username: username.into(),
            ..Default::default()
        };
        // Not asked for: anything goes, and the image is not needed.
        let (pod, c) = pod_with("{}", "{}");
        assert!(!needs_image_user(&pod, &c));
        assert!(verify_run_as_non_root(&pod, &c, None).is_ok());
        // runAsUser decides without the image.
        let (pod, c) = pod_with("{runAsNonRoot: true}", "{runAsUser: 1000}");
        assert!(!needs_image_user(&pod, &c));
        assert!(verify_run_as_non_root(&pod, &c, Some(&image(Some(0), ""))).is_ok());
        let (pod, c) = pod_with("{runAsNonRoot: true, runAsUser: 0}", "{}");
        let error = verify_run_as_non_root(&pod, &c, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("container's runAsUser breaks non-root policy (pod: "),
            "{error}"
        );
        // Else the image's user.
        let (pod, c) = pod_with("{}", "{runAsNonRoot: true}");
        assert!(needs_image_user(&pod, &c));
        assert!(verify_run_as_non_root(&pod, &c, Some(&image(Some(65534), ""))).is_ok());
        let root = verify_run_as_non_root(&pod, &c, Some(&image(Some(0), ""))).unwrap_err();
        assert!(
            root.to_string()
                .starts_with("container has runAsNonRoot and image will run as root")
        );
        // An image with no user at all counts as root, as upstream.
        assert!(verify_run_as_non_root(&pod, &c, Some(&image(None, ""))).is_err());
        let named = verify_run_as_non_root(&pod, &c, Some(&image(None, "nobody"))).unwrap_err();
        assert!(
            named.to_string().starts_with(
                "container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root"
            ),
            "{named}"
        );
    }

    #[test]
    fn fs_group_selinux_and_unmasked_proc_reach_the_cri() {
        let (pod, c) = pod_with(
            "{supplementalGroups: [5, 6], fsGroup: 2000, seLinuxOptions: {level: \"s0:c1,c2\"}}",
            "{procMount: Unmasked, seLinuxOptions: {type: spc_t}}",
        );
        let config = container_config(&pod, &c, 0, &EnvContext::default()).unwrap();
        let sc = config.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.supplemental_groups, [5, 6, 2000]);
        assert_eq!(sc.selinux_options.unwrap().r#type, "spc_t");
        assert!(sc.masked_paths.is_empty() && sc.readonly_paths.is_empty());
        assert_eq!(pod_selinux_options(&pod).unwrap().level, "s0:c1,c2");
    }
}
