//! The one cgroup fact a monitor needs: whether the OOM killer struck.

use std::path::Path;

/// Where cgroupfs is mounted on the host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether the OOM killer killed something in the cgroup at `cgroup_path`
/// (relative to the hierarchy roots under `root`): `memory.events` on cgroup
/// v2, `memory.oom_control` in the memory hierarchy on v1.
pub fn cgroup_oom_killed(root: &Path, cgroup_path: &str) -> bool {
    let rel = cgroup_path.trim_start_matches('/');
    let counters = if root.join("cgroup.controllers").exists() {
        root.join(rel).join("memory.events")
    } else {
        root.join("memory").join(rel).join("memory.oom_control")
    };
    std::fs::read_to_string(counters).is_ok_and(|text| oom_kill_count(&text) > 0)
}

/// The `oom_kill N` counter of a `memory.events` or `memory.oom_control` file.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counter_from_v1_and_v2_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v1), 2);
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), 0);
    }

    #[test]
    fn oom_killed_reads_the_right_hierarchy() {
        let v1 = tempfile::tempdir().unwrap();
        let dir = v1.path().join("memory/kubepods/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.oom_control"), "under_oom 0\noom_kill 1\n").unwrap();
        assert!(cgroup_oom_killed(v1.path(), "/kubepods/c1"));
        assert!(!cgroup_oom_killed(v1.path(), "/kubepods/other"));

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let dir = v2.path().join("kubepods/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        assert!(!cgroup_oom_killed(v2.path(), "/kubepods/c1"));
    }
}
