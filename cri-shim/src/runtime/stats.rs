//! ContainerStats and PodSandboxStats from the containers' cgroups, the
//! writable layers and the pod network namespace.

use std::path::Path;

use k8s_cri::v1 as cri;

use super::{Runtime, RuntimeError, container::ContainerRecord, sandbox::SandboxRecord};
use crate::monitor::now_ns;
use crate::stats::{self, CgroupUsage};

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

impl Runtime {
    /// ContainerStats of one container.
    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, RuntimeError> {
        let (_, entry) = self.container_entry(id)?;
        Ok(self.stats_of(&entry.get()).0)
    }

    /// ListContainerStats.
    pub fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, RuntimeError> {
        let filter = filter.unwrap_or_default();
        Ok(self
            .containers_matching(&filter.id, &filter.pod_sandbox_id, &filter.label_selector)
            .iter()
            .map(|r| self.stats_of(r).0)
            .collect())
    }

    /// PodSandboxStats of one sandbox.
    pub fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats, RuntimeError> {
        let (_, entry) = self.sandbox_entry(id)?;
        Ok(self.sandbox_stats(&entry.get()))
    }

    /// ListPodSandboxStats.
    pub fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, RuntimeError> {
        let filter = filter.unwrap_or_default();
        Ok(self
            .sandboxes_matching(&filter.id, &filter.label_selector)
            .iter()
            .map(|r| self.sandbox_stats(r))
            .collect())
    }

    /// The container's stats and the raw cgroup reading they came from.
    fn stats_of(&self, r: &ContainerRecord) -> (cri::ContainerStats, CgroupUsage) {
        let now = now_ns();
        let usage = r
            .cgroup_path
            .as_deref()
            .map(|p| stats::read_cgroup(Path::new(stats::CGROUP_ROOT), p))
            .unwrap_or_default();
        let nano_cores = usage.cpu_usage_ns.and_then(|cpu| {
            let mut samples = self
                .inner
                .cpu_samples
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let previous = samples.insert(r.id.clone(), (now, cpu));
            let (then, cpu_then) = previous?;
            let elapsed = now.checked_sub(then).filter(|e| *e > 0)? as u128;
            // CPU-ns per wall-ns, in billionths of a core.
            Some((cpu.saturating_sub(cpu_then) as u128 * 1_000_000_000 / elapsed) as u64)
        });
        let (used_bytes, inodes_used) = stats::dir_usage(&self.container_dir(&r.id).join("upper"));
        let stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: r.id.clone(),
                metadata: r.config.metadata.clone(),
                labels: r.config.labels.clone(),
                annotations: r.config.annotations.clone(),
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: value(usage.cpu_usage_ns),
                usage_nano_cores: value(nano_cores),
            }),
            memory: Some(memory_usage(now, &usage)),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.inner.config.root.display().to_string(),
                }),
                used_bytes: value(Some(used_bytes)),
                inodes_used: value(Some(inodes_used)),
            }),
            swap: None,
        };
        (stats, usage)
    }

    fn sandbox_stats(&self, r: &SandboxRecord) -> cri::PodSandboxStats {
        let now = now_ns();
        let mut containers = Vec::new();
        let mut total = CgroupUsage::default();
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        for id in self.container_ids_of_sandbox(&r.id) {
            let Ok((_, entry)) = self.container_entry(&id) else {
                continue;
            };
            let (stats, usage) = self.stats_of(&entry.get());
            total = CgroupUsage {
                cpu_usage_ns: add(total.cpu_usage_ns, usage.cpu_usage_ns),
                memory_usage: add(total.memory_usage, usage.memory_usage),
                inactive_file: add(total.inactive_file, usage.inactive_file),
                rss: add(total.rss, usage.rss),
                page_faults: add(total.page_faults, usage.page_faults),
                major_page_faults: add(total.major_page_faults, usage.major_page_faults),
                pids: add(total.pids, usage.pids),
            };
            containers.push(stats);
        }
        let nano_cores = containers
            .iter()
            .filter_map(|c| c.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value))
            .reduce(|a, b| a + b);
        let interfaces: Vec<cri::NetworkInterfaceUsage> = r
            .netns
            .as_deref()
            .and_then(net_dev_in)
            .map(|text| stats::parse_net_dev(&text))
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.name != "lo")
            .map(|i| cri::NetworkInterfaceUsage {
                name: i.name,
                rx_bytes: value(Some(i.rx_bytes)),
                rx_errors: value(Some(i.rx_errors)),
                tx_bytes: value(Some(i.tx_bytes)),
                tx_errors: value(Some(i.tx_errors)),
            })
            .collect();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: r.id.clone(),
                metadata: r.config.metadata.clone(),
                labels: r.config.labels.clone(),
                annotations: r.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: value(total.cpu_usage_ns),
                    usage_nano_cores: value(nano_cores),
                }),
                memory: Some(memory_usage(now, &total)),
                network: Some(cri::NetworkUsage {
                    timestamp: now,
                    default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
                    interfaces,
                }),
                process: Some(cri::ProcessUsage {
                    timestamp: now,
                    process_count: value(total.pids),
                }),
                containers,
            }),
            windows: None,
        }
    }
}

/// `/proc/net/dev` as seen in the network namespace pinned at `netns`: read
/// by a short-lived thread that joins it (no process lives in a pinned
/// namespace to read `/proc/<pid>/net/dev` of). The namespace switch ends
/// with the thread.
fn net_dev_in(netns: &std::path::Path) -> Option<String> {
    cni_plugins::netns::NetNs::open(netns)
        .ok()?
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").ok())
        .ok()
        .flatten()
}

fn memory_usage(timestamp: i64, u: &CgroupUsage) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp,
        working_set_bytes: value(u.working_set()),
        available_bytes: None,
        usage_bytes: value(u.memory_usage),
        rss_bytes: value(u.rss),
        page_faults: value(u.page_faults),
        major_page_faults: value(u.major_page_faults),
    }
}
