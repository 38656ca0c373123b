//! The upstream `io.kubernetes.*` labels and annotations on CRI objects.
//!
//! They are the kubelet's only record of which pod and container a runtime
//! object belongs to, so a restarted kubelet (or an upstream one) adopts the
//! objects by reading them back.

/// Pod name label on sandboxes and containers.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// Pod namespace label on sandboxes and containers.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Pod UID label on sandboxes and containers.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// Container name label on containers.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Container annotation: hash of the container spec it was created from.
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
/// Container annotation: restart count of this instance.
pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Container annotation: termination message path.
pub const CONTAINER_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";
/// Container annotation: termination message policy.
pub const CONTAINER_TERMINATION_MESSAGE_POLICY: &str =
    "io.kubernetes.container.terminationMessagePolicy";
/// Container annotation: the pod's termination grace period in seconds, so an
/// orphaned container is stopped with the grace it was promised.
pub const POD_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";

/// Pod annotation: the static pod's content hash (equal to its UID).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Pod annotation: when the kubelet first saw the pod (RFC 3339).
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
/// Pod annotation: where the pod came from (`file`, `http`, `api`).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// Container annotation: the JSON of the container's `lifecycle.preStop`
/// handler (named ports resolved), so the hook runs even when the container
/// is stopped without its spec (an orphan).
pub const CONTAINER_PRE_STOP_HANDLER: &str = "io.kubernetes.container.preStopHandler";
/// Container annotation (ours, not upstream): `"true"` on sidecars (init
/// containers with `restartPolicy: Always`), which are stopped after the
/// app containers even when the pod's spec is gone.
pub const CONTAINER_SIDECAR: &str = "kubelet-rs.io/sidecar";
