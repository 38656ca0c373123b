//! Volume plugins used by the kubelet's volume manager: emptyDir, hostPath,
//! secret, configMap, downwardAPI, projected and FlexVolume, plus safe
//! `subPath` mounts, with upstream's on-disk layout
//! (`<root-dir>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`, FlexVolume
//! as `<vendor>~<driver>`).
//!
//! # Using it from the kubelet
//!
//! ```no_run
//! use std::collections::{HashMap, HashSet};
//! use std::sync::Arc;
//! use volume_drivers::{NixMounter, NoApiObjects, NodeAllocatable, VolumeManager, VolumeManagerConfig};
//! # fn demo(pod: k8s_openapi::api::core::v1::Pod) -> anyhow::Result<()> {
//! let root = std::path::PathBuf::from("/var/lib/kubelet");
//! let vm = VolumeManager::new(
//!     VolumeManagerConfig {
//!         root_dir: root.clone(),
//!         flex_plugin_dir: volume_drivers::flexvolume::DEFAULT_PLUGIN_DIR.into(),
//!         node_name: "node-1".into(),
//!         node_allocatable: NodeAllocatable::from_host(&root)?,
//!     },
//!     Arc::new(NixMounter::default()),
//! );
//!
//! // At kubelet start: pods that vanished while it was down.
//! let active: HashSet<String> = HashSet::new();
//! let (_cleaned, _errors) = vm.cleanup_orphaned_pod_dirs(&active);
//!
//! // Before the pod's containers start (and again on every sync: it is
//! // idempotent and rewrites secret/configMap/downwardAPI/projected content
//! // only when it changed, which the running containers then see).
//! volume_drivers::check_static_pod_volumes(&pod)?; // static pods only
//! let volumes = vm.setup_pod_volumes(&pod, &NoApiObjects)
//!     .map_err(|e| anyhow::anyhow!(e.event_message()))?; // a FailedMount event
//!
//! // Per container: CRI mounts (subPath binds made here).
//! let container = &pod.spec.as_ref().unwrap().containers[0];
//! let env: HashMap<String, String> = HashMap::new(); // the container's resolved env
//! for m in vm.container_mounts(&pod, container, &volumes, &env, false)? {
//!     // cri::Mount { container_path: m.container_path, host_path: m.host_path,
//!     //   readonly: m.read_only, propagation: m.propagation.cri_value(),
//!     //   selinux_relabel: m.selinux_relabel, .. }
//!     let _ = m;
//! }
//!
//! // After the pod's containers and sandbox are gone.
//! vm.teardown_pod(pod.metadata.uid.as_deref().unwrap())?;
//! # Ok(()) }
//! ```
//!
//! Contract:
//! - `pod.metadata.uid` must be set (it names the pod dir); the namespace
//!   defaults to `default`.
//! - All calls block (mount syscalls, driver executables): run them in
//!   `tokio::task::spawn_blocking`.
//! - Object data is an input: the kubelet implements [`ObjectStore`] over its
//!   API cache (or fills [`InMemoryObjects`]). Static pods may not reference
//!   Secrets, ConfigMaps or service account tokens (as upstream): check them
//!   with [`check_static_pod_volumes`] and pass [`NoApiObjects`].
//! - A failed setup returns a [`VolumeError`] naming the volume; its
//!   [`VolumeError::event_message`] is the upstream `FailedMount` text, and
//!   nothing this call mounted is left mounted.
//! - [`MountedVolume::read_only`] is true for API-data volumes (upstream
//!   mounts them read-only); [`ContainerMount::read_only`] already combines
//!   it with `volumeMounts[].readOnly`.
//! - `mountPropagation: Bidirectional` needs a privileged container and the
//!   root dir on a shared mount (as upstream); `HostToContainer` needs it
//!   rslave-capable. The kubelet passes `privileged` from the container's
//!   security context.
//! - [`VolumeManager::teardown_pod`] needs no pod spec; it removes the whole
//!   `<root-dir>/pods/<uid>` dir once nothing below it is mounted.
//! - emptyDir `sizeLimit` eviction: compare [`MountedVolume::size_limit`]
//!   with [`VolumeManager::volume_disk_usage`].
//!
//! Privileged operations go through the [`Mounter`] trait: [`NixMounter`]
//! for real, [`FakeMounter`] to unit-test kubelet code without root.

pub mod atomic_writer;
pub mod downward_api;
pub mod emptydir;
pub mod flexvolume;
pub mod hostpath;
pub mod manager;
pub mod mount;
pub mod objects;
pub mod paths;
pub mod quantity;
pub mod resources;
pub mod subpath;

pub use manager::{
    ContainerMount, ContainerMountError, MountFailure, MountedVolume, PodVolumes, SetupFailure,
    TeardownError, TeardownFailure, VolumeError, VolumeKind, VolumeManager, VolumeManagerConfig,
    check_static_pod_volumes,
};
pub use mount::{FakeMounter, MountCall, MountError, Mounter, NixMounter};
pub use objects::{InMemoryObjects, NoApiObjects, ObjectStore};
pub use resources::NodeAllocatable;
pub use subpath::MountPropagation;
