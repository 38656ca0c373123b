//! Resource usage read from cgroupfs (v1 and v2), `/proc/<pid>/net/dev` and a
//! container's writable layer. Every reader takes its root path as a
//! parameter so it is tested on files written to a temp dir.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use cri_shim_helper::cgroup::{CGROUP_ROOT, cgroup_oom_killed};

/// What a container cgroup reports; `None` where the file is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory in use, page cache included.
    pub memory_usage: Option<u64>,
    /// Inactive file-backed memory (reclaimable first).
    pub inactive_file: Option<u64>,
    /// Anonymous memory (RSS).
    pub rss: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Tasks in the cgroup.
    pub pids: Option<u64>,
}

impl CgroupUsage {
    /// usage - inactive_file, as cAdvisor and the kubelet's eviction define it.
    pub fn working_set(&self) -> Option<u64> {
        self.memory_usage
            .map(|u| u.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat) as a map.
fn read_kv(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

/// Reads the cgroup at `cgroup_path` (as in the OCI spec) under the cgroupfs
/// mounted at `root`, on v2 (unified) or v1 (a hierarchy per controller).
pub fn read_cgroup(root: &Path, cgroup_path: &str) -> CgroupUsage {
    let rel = cgroup_path.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(rel);
        let cpu = read_kv(&dir.join("cpu.stat"));
        let mem = read_kv(&dir.join("memory.stat"));
        CgroupUsage {
            cpu_usage_ns: cpu.get("usage_usec").map(|us| us * 1000),
            memory_usage: read_u64(&dir.join("memory.current")),
            inactive_file: mem.get("inactive_file").copied(),
            rss: mem.get("anon").copied(),
            page_faults: mem.get("pgfault").copied(),
            major_page_faults: mem.get("pgmajfault").copied(),
            pids: read_u64(&dir.join("pids.current")),
        }
    } else {
        let memory = root.join("memory").join(rel);
        let mem = read_kv(&memory.join("memory.stat"));
        CgroupUsage {
            cpu_usage_ns: read_u64(&root.join("cpuacct").join(rel).join("cpuacct.usage")),
            memory_usage: read_u64(&memory.join("memory.usage_in_bytes")),
            inactive_file: mem.get("total_inactive_file").copied(),
            rss: mem.get("total_rss").copied(),
            page_faults: mem.get("total_pgfault").copied(),
            major_page_faults: mem.get("total_pgmajfault").copied(),
            pids: read_u64(&root.join("pids").join(rel).join("pids.current")),
        }
    }
}

/// Whether the cgroupfs mounted at `root` has the hugetlb controller (v2:
/// listed in `cgroup.controllers`; v1: a `hugetlb` hierarchy). Without it
/// runc cannot apply hugepage limits and fails the container.
pub fn has_hugetlb_controller(root: &Path) -> bool {
    match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(controllers) => controllers.split_whitespace().any(|c| c == "hugetlb"),
        Err(_) => root.join("hugetlb").is_dir(),
    }
}

/// Bytes and inodes used under `dir` (not following symlinks, not crossing
/// into other filesystems).
pub fn dir_usage(dir: &Path) -> (u64, u64) {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let device = top.dev();
    let mut stack = vec![dir.to_owned()];
    let (mut bytes, mut inodes) = (0u64, 0u64);
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != device {
                continue;
            }
            inodes += 1;
            // Allocated blocks, as `du` counts: sparse files count what they use.
            bytes += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// One interface of `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceUsage {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx(8 fields) tx(8)`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (n.len() >= 16).then(|| InterfaceUsage {
                name: name.trim().to_owned(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn hugetlb_controller_is_detected_on_v1_and_v2() {
        let v1 = tempfile::tempdir().unwrap();
        assert!(!has_hugetlb_controller(v1.path()));
        std::fs::create_dir(v1.path().join("hugetlb")).unwrap();
        assert!(has_hugetlb_controller(v1.path()));

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(
            v2.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert!(!has_hugetlb_controller(v2.path()));
        std::fs::write(
            v2.path().join("cgroup.controllers"),
            "cpu memory hugetlb pids\n",
        )
        .unwrap();
        assert!(has_hugetlb_controller(v2.path()));
    }

    #[test]
    fn cgroup_v1_hierarchies() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            &r.join("cpuacct/cri-shim/c1"),
            "cpuacct.usage",
            "123456789\n",
        );
        write(
            &r.join("memory/cri-shim/c1"),
            "memory.usage_in_bytes",
            "10000\n",
        );
        write(
            &r.join("memory/cri-shim/c1"),
            "memory.stat",
            "cache 1\nrss 2\ntotal_rss 3000\ntotal_inactive_file 4000\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        );
        write(&r.join("pids/cri-shim/c1"), "pids.current", "3\n");
        let u = read_cgroup(r, "/cri-shim/c1");
        assert_eq!(u.cpu_usage_ns, Some(123456789));
        assert_eq!(u.working_set(), Some(6000));
        assert_eq!(
            (u.rss, u.page_faults, u.major_page_faults, u.pids),
            (Some(3000), Some(7), Some(1), Some(3))
        );
    }

    #[test]
    fn cgroup_v2_unified() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "cgroup.controllers", "cpu memory pids\n");
        let dir = r.join("kubepods/c1");
        write(&dir, "cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
        write(&dir, "memory.current", "8192\n");
        write(
            &dir,
            "memory.stat",
            "anon 4096\ninactive_file 10000\npgfault 5\npgmajfault 0\n",
        );
        let u = read_cgroup(r, "kubepods/c1");
        assert_eq!(u.cpu_usage_ns, Some(1_500_000));
        // Inactive file above usage (racy reads) must not underflow.
        assert_eq!(u.working_set(), Some(0));
        assert_eq!(u.pids, None);
    }

    #[test]
    fn missing_cgroup_reads_as_unknown() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read_cgroup(root.path(), "/gone"), CgroupUsage::default());
    }

    #[test]
    fn directory_usage_counts_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![1u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("l")).unwrap();
        let (bytes, inodes) = dir_usage(dir.path());
        assert_eq!(inodes, 3);
        assert!(bytes >= 10_000, "{bytes}");
    }

    #[test]
    fn net_dev_lines() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0: 2000 20 3 0 0 0 0 0 4000 40 5 0 0 0 0 0\n";
        let ifs = parse_net_dev(text);
        assert_eq!(ifs.len(), 2);
        assert_eq!(
            ifs[1],
            InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 2000,
                rx_errors: 3,
                tx_bytes: 4000,
                tx_errors: 5
            }
        );
    }
}
