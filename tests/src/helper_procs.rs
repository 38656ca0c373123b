//! cri-shim's helper processes as `/proc` shows them: which run for an id,
//! and from which executable.

use std::path::PathBuf;

use anyhow::ensure;

use crate::harness;

/// Role argument of a container monitor.
pub const MONITOR: &str = "__cri-shim-monitor";
/// Role argument of a sandbox infra process.
pub const INFRA: &str = "__cri-shim-infra";

/// `(pid, /proc/<pid>/exe)` of the helper processes in `role` ([`MONITOR`],
/// [`INFRA`]) whose spec argument names `id`.
pub fn helper_processes(role: &str, id: &str) -> Vec<(u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_helper = args.get(1).is_some_and(|a| a == role)
                && args.get(2).is_some_and(|spec| spec.contains(id));
            is_helper.then(|| Some((pid, std::fs::read_link(e.path().join("exe")).ok()?)))?
        })
        .collect()
}

/// Fails unless `count` `role` processes name `id` and they run from the
/// `cri-shim-helper` executable built next to the other binaries (not from
/// cri-shim or the kubelet re-executed); returns their pids.
pub fn ensure_runs_from_helper(role: &str, id: &str, count: usize) -> anyhow::Result<Vec<u32>> {
    let helper = harness::binary("cri-shim-helper")?.canonicalize()?;
    let found = helper_processes(role, id);
    ensure!(found.len() == count, "{role} processes of {id}: {found:?}");
    for (pid, exe) in &found {
        ensure!(
            *exe == helper,
            "{role} {pid} of {id} runs {} instead of {}",
            exe.display(),
            helper.display()
        );
    }
    Ok(found.into_iter().map(|(pid, _)| pid).collect())
}
