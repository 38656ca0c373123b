//! Builds the CRI `ContainerConfig` of one container instance (upstream
//! `generateContainerConfig`), and the `$(VAR)` expansion of env, command and args.
//!
//! Pure: what cannot be honoured yet (env from sources, volume mounts,
//! resources) is returned as [`Unsupported`] for the caller to warn about.

use std::collections::HashMap;

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

/// A field of the container spec this kubelet does not apply yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// `env[].valueFrom` (ConfigMap, Secret, fieldRef, resourceFieldRef).
    EnvValueFrom {
        /// Variable name.
        name: String,
    },
    /// `envFrom`.
    EnvFrom,
    /// `volumeMounts`.
    VolumeMounts,
    /// `resources`.
    Resources,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EnvValueFrom { name } => {
                write!(f, "env {name} with valueFrom is not supported yet")
            }
            Self::EnvFrom => f.write_str("envFrom is not supported yet"),
            Self::VolumeMounts => f.write_str("volumeMounts are not supported yet"),
            Self::Resources => f.write_str("resources are not applied yet"),
        }
    }
}

/// `<container name>/<restart count>.log`, relative to the pod log directory.
pub fn container_log_path(container: &str, restart_count: u32) -> String {
    format!("{container}/{restart_count}.log")
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

/// Plain `value` env vars in order, each expanded against those before it
/// (as upstream `makeEnvironmentVariables`); others are reported unsupported.
fn environment(container: &Container, unsupported: &mut Vec<Unsupported>) -> Vec<cri::KeyValue> {
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        unsupported.push(Unsupported::EnvFrom);
    }
    let mut defined: HashMap<String, String> = HashMap::new();
    let mut envs: Vec<cri::KeyValue> = Vec::new();
    for var in container.env.iter().flatten() {
        if var.value_from.is_some() {
            unsupported.push(Unsupported::EnvValueFrom {
                name: var.name.clone(),
            });
            continue;
        }
        let value = expand(var.value.as_deref().unwrap_or_default(), |n| {
            defined.get(n).cloned()
        });
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
    envs
}

fn security_context(pod: &Pod, container: &Container) -> cri::LinuxContainerSecurityContext {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let strings = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default();
    let capabilities = sc
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| cri::Capability {
            add_capabilities: strings(c.add.as_ref()),
            drop_capabilities: strings(c.drop.as_ref()),
            add_ambient_capabilities: Vec::new(),
        });
    let paths = |list: &[&str]| {
        if privileged {
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
        supplemental_groups: pod_sc
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        ..Default::default()
    }
}

/// The config of instance `restart_count` of `container` in `pod`.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    restart_count: u32,
) -> (cri::ContainerConfig, Vec<Unsupported>) {
    let meta = &pod.metadata;
    let mut unsupported = Vec::new();
    let envs = environment(container, &mut unsupported);
    if container
        .volume_mounts
        .as_ref()
        .is_some_and(|m| !m.is_empty())
    {
        unsupported.push(Unsupported::VolumeMounts);
    }
    let has_resources = container.resources.as_ref().is_some_and(|r| {
        r.limits.as_ref().is_some_and(|l| !l.is_empty())
            || r.requests.as_ref().is_some_and(|l| !l.is_empty())
    });
    if has_resources {
        unsupported.push(Unsupported::Resources);
    }
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
            resources: None,
            security_context: Some(security_context(pod, container)),
        }),
        ..Default::default()
    };
    (config, unsupported)
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
metadata: {name: app-node1, namespace: ns, uid: u1}
spec:
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
"#;

    #[test]
    fn container_config_of_a_restarted_instance() {
        let pod: Pod = serde_yaml::from_str(POD).unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let (config, unsupported) = container_config(&pod, container, 3);
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
        assert_eq!(envs, [("NAME", "world"), ("GREETING", "hello world")]);
        assert_eq!(
            unsupported,
            [Unsupported::EnvValueFrom {
                name: "POD_IP".into()
            }]
        );
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
    fn security_context_user_falls_back_to_the_pod() {
        let mut pod: Pod = serde_yaml::from_str(POD).unwrap();
        pod.spec.as_mut().unwrap().security_context =
            Some(serde_yaml::from_str("{runAsUser: 1000, runAsGroup: 1000}").unwrap());
        pod.spec.as_mut().unwrap().containers[0].security_context =
            Some(serde_yaml::from_str("{runAsUser: 0, privileged: true}").unwrap());
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        let (config, _) = container_config(&pod, &container, 0);
        let sc = config.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_user, Some(cri::Int64Value { value: 0 }));
        assert_eq!(sc.run_as_group, Some(cri::Int64Value { value: 1000 }));
        assert!(sc.privileged);
        assert!(sc.masked_paths.is_empty());
    }
}
