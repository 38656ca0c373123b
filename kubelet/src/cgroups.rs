//! The pod cgroup hierarchy of upstream's cgroupfs driver
//! (`cgroupsPerQOS`): `<cgroupRoot>/kubepods` sized to node allocatable,
//! `kubepods/burstable` and `kubepods/besteffort` below it, and one
//! `pod<uid>` cgroup per pod (directly under `kubepods` for Guaranteed pods)
//! with the pod's summed cpu and memory limits. The runtime puts each
//! container's cgroup below its pod's (the sandbox's `cgroup_parent`).
//!
//! Paths and limits are computed by pure functions; the file system work
//! goes through [`CgroupManager`]: [`CgroupFs`] writes cgroup v1 controller
//! dirs or the v2 unified tree; [`NoCgroups`] does nothing (tests, and
//! `--cgroups-per-qos=false`).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::qos::{QosClass, qos_class};
use crate::resources::{Side, container_resource};

/// Upstream `MinShares` / `SharesPerCPU`, and the CFS period.
const MIN_SHARES: u64 = 2;
const SHARES_PER_CPU: u64 = 1024;
const QUOTA_PERIOD: u64 = 100_000;
/// cgroup v1 controllers the kubelet creates pod cgroups in; runc creates
/// the others (cpuset needs its parent's cpus and mems copied, which runc does).
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];

/// Limits written into a cgroup; `None` leaves the kernel default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `cpu.shares` (v1) / converted to `cpu.weight` (v2).
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per period of 100 ms (100000 µs, as upstream).
    pub cpu_quota: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
}

/// Errors of cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup dir could not be created.
    #[error("creating cgroup {path}")]
    Create {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A limit could not be written.
    #[error("writing {value} to {path}")]
    Write {
        /// Control file.
        path: PathBuf,
        /// Value.
        value: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup dir could not be removed (it still has tasks or children).
    #[error("removing cgroup {path}")]
    Remove {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Creates, limits and removes cgroups by their path below the cgroup root
/// of every controller (e.g. `/kubepods/burstable/pod<uid>`).
pub trait CgroupManager: Send + Sync + std::fmt::Debug {
    /// Creates the cgroup (and its parents) and writes `limits`.
    fn ensure(&self, path: &str, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Removes the cgroup if it exists.
    fn remove(&self, path: &str) -> Result<(), CgroupError>;
    /// The child cgroup names of `path` (empty if it does not exist).
    fn children(&self, path: &str) -> Vec<String>;
}

/// No cgroup work at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCgroups;

impl CgroupManager for NoCgroups {
    fn ensure(&self, _: &str, _: &CgroupLimits) -> Result<(), CgroupError> {
        Ok(())
    }
    fn remove(&self, _: &str) -> Result<(), CgroupError> {
        Ok(())
    }
    fn children(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
}

/// cgroupfs under a mount root (`/sys/fs/cgroup`): v1 when per-controller
/// hierarchies are mounted there, else the v2 unified tree.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
    v2: bool,
}

fn write(path: PathBuf, value: String) -> Result<(), CgroupError> {
    std::fs::write(&path, &value).map_err(|source| CgroupError::Write {
        path,
        value,
        source,
    })
}

/// cgroup v2 `cpu.weight` for v1 shares (the conversion runc and the
/// kubelet use: [2, 262144] onto [1, 10000]).
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

impl CgroupFs {
    /// The cgroup mount at `root`, its version detected.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let v2 = root.join("cgroup.controllers").exists();
        Self { root, v2 }
    }

    fn dirs(&self, path: &str) -> Vec<PathBuf> {
        let relative = path.trim_start_matches('/');
        if self.v2 {
            vec![self.root.join(relative)]
        } else {
            // A controller not mounted on this host is skipped.
            V1_CONTROLLERS
                .iter()
                .map(|c| self.root.join(c))
                .filter(|mount| mount.is_dir())
                .map(|mount| mount.join(relative))
                .collect()
        }
    }

    fn controller_dir(&self, controller: &str, path: &str) -> PathBuf {
        let relative = path.trim_start_matches('/');
        if self.v2 {
            self.root.join(relative)
        } else {
            self.root.join(controller).join(relative)
        }
    }

    /// v2: lets the children of every level of `path` use cpu, memory and pids.
    fn enable_controllers(&self, path: &str) -> Result<(), CgroupError> {
        let mut dir = self.root.clone();
        for part in Path::new(path.trim_start_matches('/')).components() {
            let control = dir.join("cgroup.subtree_control");
            if control.exists() {
                write(control, "+cpu +memory +pids".to_owned())?;
            }
            dir.push(part);
        }
        Ok(())
    }
}

impl CgroupManager for CgroupFs {
    fn ensure(&self, path: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        for dir in self.dirs(path) {
            std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                path: dir.clone(),
                source,
            })?;
        }
        if self.v2 {
            self.enable_controllers(path)?;
        }
        if let Some(shares) = limits.cpu_shares {
            if self.v2 {
                write(
                    self.controller_dir("cpu", path).join("cpu.weight"),
                    shares_to_weight(shares).to_string(),
                )?;
            } else {
                write(
                    self.controller_dir("cpu", path).join("cpu.shares"),
                    shares.to_string(),
                )?;
            }
        }
        if let Some(quota) = limits.cpu_quota {
            if self.v2 {
                write(
                    self.controller_dir("cpu", path).join("cpu.max"),
                    format!("{quota} {QUOTA_PERIOD}"),
                )?;
            } else {
                let dir = self.controller_dir("cpu", path);
                write(dir.join("cpu.cfs_period_us"), QUOTA_PERIOD.to_string())?;
                write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        if let Some(memory) = limits.memory_limit {
            let file = if self.v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            write(
                self.controller_dir("memory", path).join(file),
                memory.to_string(),
            )?;
        }
        Ok(())
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        // The runtime may have created the pod's cgroup in controllers the
        // kubelet does not manage: remove it from every hierarchy.
        let relative = path.trim_start_matches('/');
        let dirs: Vec<PathBuf> = if self.v2 {
            vec![self.root.join(relative)]
        } else {
            std::fs::read_dir(&self.root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join(relative))
                .collect()
        };
        for dir in dirs {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CgroupError::Remove {
                        path: dir,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn children(&self, path: &str) -> Vec<String> {
        let dir = self.controller_dir("memory", path);
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// Where pod cgroups live: `<cgroup_root>/kubepods/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroups {
    kubepods: String,
}

impl PodCgroups {
    /// The hierarchy below `cgroup_root` (`--cgroup-root`, `/` by default).
    pub fn new(cgroup_root: &str) -> Self {
        let root = cgroup_root.trim_end_matches('/');
        Self {
            kubepods: format!("{root}/kubepods"),
        }
    }

    /// `<root>/kubepods`.
    pub fn kubepods(&self) -> &str {
        &self.kubepods
    }

    /// The QoS level cgroup of a class (`kubepods` itself for Guaranteed).
    pub fn qos(&self, class: QosClass) -> String {
        match class {
            QosClass::Guaranteed => self.kubepods.clone(),
            QosClass::Burstable => format!("{}/burstable", self.kubepods),
            QosClass::BestEffort => format!("{}/besteffort", self.kubepods),
        }
    }

    /// The pod's cgroup: `<qos>/pod<uid>`.
    pub fn pod(&self, pod: &Pod) -> String {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        format!("{}/pod{uid}", self.qos(qos_class(pod)))
    }

    /// Every place a pod cgroup of any class can be, with the UIDs found
    /// there (for removing those of vanished pods).
    pub fn existing_pods(&self, manager: &dyn CgroupManager) -> Vec<(String, String)> {
        [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ]
        .into_iter()
        .flat_map(|class| {
            let parent = self.qos(class);
            manager
                .children(&parent)
                .into_iter()
                .filter_map(move |name| {
                    let uid = name.strip_prefix("pod")?.to_owned();
                    Some((format!("{parent}/{name}"), uid))
                })
        })
        .collect()
    }

    /// Creates `kubepods` sized to the node's allocatable resources and the
    /// two QoS cgroups below it (best-effort pods get the minimum cpu share).
    pub fn ensure_hierarchy(
        &self,
        manager: &dyn CgroupManager,
        allocatable_millicores: u64,
        allocatable_memory: u64,
    ) -> Result<(), CgroupError> {
        manager.ensure(
            &self.kubepods,
            &CgroupLimits {
                cpu_shares: Some((allocatable_millicores * SHARES_PER_CPU / 1000).max(MIN_SHARES)),
                cpu_quota: None,
                memory_limit: Some(allocatable_memory).filter(|m| *m > 0),
            },
        )?;
        manager.ensure(&self.qos(QosClass::Burstable), &CgroupLimits::default())?;
        manager.ensure(
            &self.qos(QosClass::BestEffort),
            &CgroupLimits {
                cpu_shares: Some(MIN_SHARES),
                ..CgroupLimits::default()
            },
        )
    }
}

/// Upstream `ResourceConfigForPod`: shares from the summed cpu requests;
/// quota and memory limit only when every container sets that limit.
pub fn pod_limits(pod: &Pod) -> CgroupLimits {
    let containers: Vec<&k8s_openapi::api::core::v1::Container> =
        pod.spec.iter().flat_map(|s| s.containers.iter()).collect();
    let millis = |cores: f64| (cores * 1000.0).ceil() as u64;
    let request: u64 = containers
        .iter()
        .filter_map(|c| container_resource(c, Side::Requests, "cpu"))
        .map(millis)
        .sum();
    let all = |resource: &str| -> Option<f64> {
        containers
            .iter()
            .map(|c| container_resource(c, Side::Limits, resource))
            .sum::<Option<f64>>()
    };
    let best_effort = qos_class(pod) == QosClass::BestEffort;
    CgroupLimits {
        cpu_shares: Some(if best_effort {
            MIN_SHARES
        } else {
            (request * SHARES_PER_CPU / 1000).max(MIN_SHARES)
        }),
        cpu_quota: all("cpu")
            .filter(|_| !containers.is_empty())
            .map(|cores| (millis(cores) * QUOTA_PERIOD / 1000).max(1000)),
        memory_limit: all("memory")
            .filter(|_| !containers.is_empty())
            .map(|bytes| bytes as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, uid: u1}}\nspec:\n  containers:\n{containers}"
        ))
        .unwrap()
    }

    #[test]
    fn pods_land_under_their_qos_class() {
        let cgroups = PodCgroups::new("/");
        assert_eq!(cgroups.kubepods(), "/kubepods");
        assert_eq!(
            cgroups.pod(&pod("  - {name: a}\n")),
            "/kubepods/besteffort/podu1"
        );
        assert_eq!(
            cgroups.pod(&pod("  - {name: a, resources: {requests: {cpu: 100m}}}\n")),
            "/kubepods/burstable/podu1"
        );
        assert_eq!(
            cgroups.pod(&pod(
                "  - {name: a, resources: {limits: {cpu: 1, memory: 1Gi}}}\n"
            )),
            "/kubepods/podu1"
        );
        assert_eq!(PodCgroups::new("/e2e/").kubepods(), "/e2e/kubepods");
    }

    #[test]
    fn pod_limits_sum_the_containers() {
        let limits = pod_limits(&pod(
            "  - {name: a, resources: {requests: {cpu: 250m}, limits: {cpu: 500m, memory: 64Mi}}}\n  \
             - {name: b, resources: {limits: {cpu: 250m, memory: 32Mi}}}\n",
        ));
        assert_eq!(limits.cpu_shares, Some(512));
        assert_eq!(limits.cpu_quota, Some(75_000));
        assert_eq!(limits.memory_limit, Some(96 * 1024 * 1024));
        // One container without a memory limit: the pod has none.
        let partial = pod_limits(&pod(
            "  - {name: a, resources: {limits: {cpu: 1, memory: 64Mi}}}\n  - {name: b, resources: {requests: {cpu: 1}}}\n",
        ));
        assert_eq!(partial.memory_limit, None);
        assert_eq!(partial.cpu_quota, None);
        assert_eq!(pod_limits(&pod("  - {name: a}\n")).cpu_shares, Some(2));
    }

    #[test]
    fn v1_tree_in_a_temp_dir() {
        let root = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            std::fs::create_dir(root.path().join(c)).unwrap();
        }
        let fs = CgroupFs::new(root.path());
        let cgroups = PodCgroups::new("/");
        cgroups.ensure_hierarchy(&fs, 2000, 1 << 30).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cpu/kubepods/cpu.shares"), "2048");
        assert_eq!(
            read("memory/kubepods/memory.limit_in_bytes"),
            (1u64 << 30).to_string()
        );
        assert_eq!(read("cpu/kubepods/besteffort/cpu.shares"), "2");
        let p = pod("  - {name: a, resources: {limits: {cpu: 500m, memory: 64Mi}}}\n");
        let path = cgroups.pod(&p);
        fs.ensure(&path, &pod_limits(&p)).unwrap();
        assert_eq!(read("cpu/kubepods/podu1/cpu.cfs_quota_us"), "50000");
        assert_eq!(
            cgroups.existing_pods(&fs),
            vec![("/kubepods/podu1".to_owned(), "u1".to_owned())]
        );
        // Regular files are what a real cgroupfs would not have; remove them
        // so remove_dir works as on cgroupfs, where control files vanish with the dir.
        for c in V1_CONTROLLERS {
            let dir = root.path().join(c).join("kubepods/podu1");
            for f in std::fs::read_dir(&dir).unwrap().flatten() {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
        fs.remove(&path).unwrap();
        assert!(!root.path().join("memory/kubepods/podu1").exists());
        assert!(cgroups.existing_pods(&fs).is_empty());
    }

    #[test]
    fn weights_follow_the_shares() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
