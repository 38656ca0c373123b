//! CRI container config + image config → OCI runtime spec (`config.json`).
//!
//! Pure: everything the spec depends on (resolved user, namespace paths,
//! per-sandbox files, the caller's oom_score_adj) comes in as parameters, so
//! the mapping is unit-tested without root.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::image::ImageConfig;

/// Errors building a spec from CRI input.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The merged command line is empty: neither CRI nor image gives a command.
    #[error(
        "container {container:?}: no command specified (neither the container config nor the image has a command or entrypoint)"
    )]
    NoCommand {
        /// Container name.
        container: String,
    },
    /// A capability name is not a Linux capability.
    #[error("container {container:?}: unknown capability {name:?}")]
    UnknownCapability {
        /// Container name.
        container: String,
        /// The capability as given.
        name: String,
    },
    /// A mount's host path does not exist.
    #[error("container {container:?}: mounts[{index}].host_path {path:?} does not exist")]
    MountSource {
        /// Container name.
        container: String,
        /// Index in `ContainerConfig.mounts`.
        index: usize,
        /// The host path.
        path: String,
    },
    /// A device's host path is missing or not a device node.
    #[error("container {container:?}: devices[{index}].host_path {path:?}: {reason}")]
    Device {
        /// Container name.
        container: String,
        /// Index in `ContainerConfig.devices`.
        index: usize,
        /// The host path.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The seccomp profile cannot be used.
    #[error("container {container:?}: {source}")]
    Seccomp {
        /// Container name.
        container: String,
        /// Why.
        #[source]
        source: crate::seccomp::SeccompError,
    },
    /// The user cannot be resolved in the image.
    #[error("container {container:?}: {reason}")]
    User {
        /// Container name.
        container: String,
        /// What could not be resolved.
        reason: String,
    },
    /// The builder rejected a value (should not happen with valid input).
    #[error("building OCI spec for container {container:?}: {source}")]
    Build {
        /// Container name.
        container: String,
        /// Builder error.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// Where the sandbox's namespaces and files are, as seen from the host.
#[derive(Debug, Clone, Default)]
pub struct SandboxPaths {
    /// Network namespace to join; `None` = host network.
    pub netns: Option<PathBuf>,
    /// IPC namespace to join; `None` = host IPC.
    pub ipcns: Option<PathBuf>,
    /// UTS namespace to join; `None` = host UTS.
    pub utsns: Option<PathBuf>,
    /// `/etc/hosts` of the sandbox.
    pub hosts: Option<PathBuf>,
    /// `/etc/resolv.conf` of the sandbox.
    pub resolv_conf: Option<PathBuf>,
    /// `/etc/hostname` of the sandbox.
    pub hostname_file: Option<PathBuf>,
    /// Hostname of the sandbox.
    pub hostname: String,
    /// cgroup parent of the sandbox (CRI `cgroup_parent`).
    pub cgroup_parent: String,
    /// The pod's pid namespace, when its containers share one (pid mode POD).
    pub pidns: Option<PathBuf>,
    /// The pod's `/dev/shm` (a tmpfs per sandbox, or the host's with host
    /// IPC); `None` gives the container a private one.
    pub shm: Option<PathBuf>,
    /// Namespaced sysctls of the pod (CRI `LinuxPodSandboxConfig.sysctls`).
    pub sysctls: HashMap<String, String>,
}

/// The numeric identity the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids (image groups of the user, then CRI supplemental groups).
    pub additional_gids: Vec<u32>,
}

/// The capabilities containerd grants a non-privileged container by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Merges CRI command/args with the image entrypoint/cmd as containerd does:
/// a CRI command replaces the entrypoint (and drops the image cmd); CRI args
/// replace the image cmd.
pub fn merge_args(config: &cri::ContainerConfig, image: &ImageConfig) -> Vec<String> {
    let (entrypoint, cmd) = if !config.command.is_empty() {
        (config.command.clone(), config.args.clone())
    } else if !config.args.is_empty() {
        (image.entrypoint.clone(), config.args.clone())
    } else {
        (image.entrypoint.clone(), image.cmd.clone())
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// `HOSTNAME` (the pod's, as containerd sets it), then the image env, then
/// the CRI env, later ones overriding by key; order of first appearance kept.
pub fn merge_env(
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    hostname: &str,
) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let image_env = image.env.iter().map(|kv| match kv.split_once('=') {
        Some((k, v)) => (k.to_owned(), v.to_owned()),
        None => (kv.clone(), String::new()),
    });
    let cri_env = config
        .envs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()));
    let host = (!hostname.is_empty()).then(|| ("HOSTNAME".to_owned(), hostname.to_owned()));
    for (k, v) in host.into_iter().chain(image_env).chain(cri_env) {
        if values.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect()
}

/// Resolves the user from the CRI security context, else the image `User`,
/// looking names up in the image's passwd/group contents.
pub fn resolve_user(
    container: &str,
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    passwd: &str,
    group: &str,
) -> Result<ResolvedUser, OciError> {
    let err = |reason: String| OciError::User {
        container: container.to_owned(),
        reason,
    };
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let cri_uid = sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value);
    let cri_name = sc
        .map(|s| s.run_as_username.clone())
        .filter(|s| !s.is_empty());
    let cri_gid = sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value);
    let (user_part, group_part) = match (cri_uid, cri_name) {
        (Some(uid), _) => (uid.to_string(), None),
        (None, Some(name)) => (name, None),
        (None, None) => match image.user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image.user.clone(), None),
        },
    };
    let user_part = if user_part.is_empty() {
        "0".to_owned()
    } else {
        user_part
    };
    let passwd_entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == user_part || f[2] == user_part));
    let (uid, mut gid, name) = match (user_part.parse::<u32>(), &passwd_entry) {
        (Ok(uid), Some(f)) => (uid, f[3].parse().unwrap_or(0), Some(f[0].to_owned())),
        (Ok(uid), None) => (uid, 0, None),
        (Err(_), Some(f)) => (
            f[2].parse()
                .map_err(|_| err(format!("bad uid for user {user_part:?} in /etc/passwd")))?,
            f[3].parse().unwrap_or(0),
            Some(f[0].to_owned()),
        ),
        (Err(_), None) => {
            return Err(err(format!(
                "user {user_part:?} not found in the image's /etc/passwd"
            )));
        }
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| err(format!("group {g:?} not found in the image's /etc/group")))?,
        };
    }
    if let Some(g) = cri_gid {
        gid = g as u32;
    }
    let mut additional_gids: Vec<u32> = Vec::new();
    if let Some(name) = name {
        for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse()
            {
                additional_gids.push(g);
            }
        }
    }
    if let Some(sc) = sc {
        additional_gids.extend(sc.supplemental_groups.iter().map(|g| *g as u32));
    }
    // The primary group is a supplementary group too, as containerd sets it.
    additional_gids.push(gid);
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Which pid namespace a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PidNamespace {
    /// Its own (CRI pid mode CONTAINER).
    #[default]
    Private,
    /// An existing one: the pod's (POD) or another container's (TARGET).
    Join(PathBuf),
    /// The host's (NODE).
    Host,
}

/// Everything [`build_spec`] needs besides the CRI config.
#[derive(Debug, Clone)]
pub struct SpecInputs<'a> {
    /// Container id (names the cgroup).
    pub id: &'a str,
    /// Mounted rootfs (overlay).
    pub rootfs: &'a Path,
    /// Image config of the container's image.
    pub image: &'a ImageConfig,
    /// The resolved user.
    pub user: ResolvedUser,
    /// Sandbox namespaces and files.
    pub sandbox: &'a SandboxPaths,
    /// The container's pid namespace.
    pub pid_namespace: PidNamespace,
    /// oom_score_adj of the runtime itself: a lower value would need
    /// CAP_SYS_RESOURCE, so requests below it are clamped to it.
    pub current_oom_score_adj: i32,
    /// The runtime's own bounding set: "all capabilities" (privileged, or
    /// add ALL) means these, since a process cannot grant more than it has.
    pub runtime_capabilities: &'a HashSet<Capability>,
    /// Whether the host has the hugetlb cgroup controller.
    pub hugetlb_controller: bool,
}

/// Builds the OCI spec.
pub fn build_spec(config: &cri::ContainerConfig, inp: &SpecInputs<'_>) -> Result<Spec, OciError> {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let build = |source| OciError::Build {
        container: name.clone(),
        source,
    };
    let args = merge_args(config, inp.image);
    if args.is_empty() {
        return Err(OciError::NoCommand { container: name });
    }
    let linux_cfg = config.linux.clone().unwrap_or_default();
    let sc = linux_cfg.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged;

    let cwd = [config.working_dir.as_str(), inp.image.working_dir.as_str()]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or("/");
    let user = UserBuilder::default()
        .uid(inp.user.uid)
        .gid(inp.user.gid)
        .additional_gids(inp.user.additional_gids.clone())
        .build()
        .map_err(build)?;

    let caps = capabilities(&name, &sc, inp.runtime_capabilities)?;
    let oom = linux_cfg
        .resources
        .as_ref()
        .map(|r| r.oom_score_adj as i32)
        .map(|v| v.max(inp.current_oom_score_adj));
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .args(args)
        .env(merge_env(config, inp.image, &inp.sandbox.hostname))
        .cwd(cwd)
        .user(user)
        .no_new_privileges(sc.no_new_privs)
        .build()
        .map_err(build)?;
    process.set_oom_score_adj(oom);
    // No rlimits of our own: the container inherits the runtime's, as with
    // containerd (the builder's default would cap open files at 1024).
    process.set_rlimits(None);
    let mut capabilities = oci_spec::runtime::LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps.clone()));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    process.set_capabilities(Some(capabilities));

    for (index, m) in config.mounts.iter().enumerate() {
        // Checked here so the error names the field; runc would only say
        // that some mount failed.
        if !Path::new(&m.host_path).exists() {
            return Err(OciError::MountSource {
                container: name.clone(),
                index,
                path: m.host_path.clone(),
            });
        }
    }
    // sysfs shows the network devices of the namespace it was mounted in, so
    // only a privileged container on the host network gets it writable (as
    // containerd does).
    let writable_sysfs = privileged && inp.sandbox.netns.is_none();
    let mut mounts = default_mounts(writable_sysfs).map_err(build)?;
    if inp.sandbox.shm.is_some() {
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
    }
    let bind = |dst: &str, src: &Path, ro: bool| {
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        options.push(if ro { "ro" } else { "rw" }.to_owned());
        MountBuilder::default()
            .destination(dst)
            .typ("bind")
            .source(src)
            .options(options)
            .build()
    };
    let file_mounts = [
        ("/dev/shm", &inp.sandbox.shm),
        ("/etc/hosts", &inp.sandbox.hosts),
        ("/etc/resolv.conf", &inp.sandbox.resolv_conf),
        ("/etc/hostname", &inp.sandbox.hostname_file),
    ];
    for (dst, src) in file_mounts {
        if let Some(src) = src {
            let user_mounts_it = config.mounts.iter().any(|m| m.container_path == dst);
            if !user_mounts_it {
                mounts.push(bind(dst, src, false).map_err(build)?);
            }
        }
    }
    for m in &config.mounts {
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        };
        let mut options = vec![
            "rbind".to_owned(),
            propagation.to_owned(),
            if m.readonly { "ro" } else { "rw" }.to_owned(),
        ];
        options.dedup();
        mounts.push(
            MountBuilder::default()
                .destination(&m.container_path)
                .typ("bind")
                .source(&m.host_path)
                .options(options)
                .build()
                .map_err(build)?,
        );
    }

    let ns = |typ, path: &Option<PathBuf>| {
        let mut b = LinuxNamespaceBuilder::default();
        b = b.typ(typ);
        if let Some(p) = path {
            b = b.path(p.clone());
        }
        b.build()
    };
    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, &None).map_err(build)?];
    match &inp.pid_namespace {
        PidNamespace::Private => {
            namespaces.push(ns(LinuxNamespaceType::Pid, &None).map_err(build)?)
        }
        PidNamespace::Join(path) => {
            namespaces.push(ns(LinuxNamespaceType::Pid, &Some(path.clone())).map_err(build)?)
        }
        PidNamespace::Host => {}
    }
    // A namespace path of None with the type present would create a new
    // namespace; host namespaces are expressed by leaving the type out.
    if inp.sandbox.netns.is_some() {
        namespaces.push(ns(LinuxNamespaceType::Network, &inp.sandbox.netns).map_err(build)?);
    }
    if inp.sandbox.ipcns.is_some() {
        namespaces.push(ns(LinuxNamespaceType::Ipc, &inp.sandbox.ipcns).map_err(build)?);
    }
    if inp.sandbox.utsns.is_some() {
        namespaces.push(ns(LinuxNamespaceType::Uts, &inp.sandbox.utsns).map_err(build)?);
    }

    let mut resources =
        linux_resources(linux_cfg.resources.as_ref(), inp.hugetlb_controller).map_err(build)?;
    // Device access: all for privileged containers, else only what runc
    // allows every container (null, zero, tty, ...) plus the requested devices.
    let (mut devices, device_rules) = host_devices(&name, &config.devices)?;
    if privileged {
        // Every device node of the host, as containerd gives privileged
        // containers (the cgroup rule below already allows them all).
        let requested: HashSet<PathBuf> = devices.iter().map(|d| d.path().clone()).collect();
        devices.extend(
            all_host_devices(Path::new("/dev"))
                .into_iter()
                .filter(|d| !requested.contains(d.path())),
        );
    }
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(build)?,
    ];
    rules.extend(device_rules);
    resources.set_devices(Some(rules));
    let cgroup_parent = if inp.sandbox.cgroup_parent.is_empty() {
        "/cri-shim"
    } else {
        inp.sandbox.cgroup_parent.as_str()
    };
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(format!(
            "/{}/{}",
            cgroup_parent.trim_matches('/'),
            inp.id
        )));
    // Exactly the lists the caller sends, as containerd does (the kubelet
    // fills in its defaults unless the pod asks for an unmasked /proc), and
    // none for privileged containers. Always set: left unset, the builder
    // would fill in its own defaults.
    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (sc.masked_paths.clone(), sc.readonly_paths.clone())
    };
    linux = linux.masked_paths(masked).readonly_paths(readonly);
    let seccomp = crate::seccomp::profile_for(&sc, &caps).map_err(|source| OciError::Seccomp {
        container: name.clone(),
        source,
    })?;
    if let Some(profile) = seccomp {
        linux = linux.seccomp(profile);
    }
    if !inp.sandbox.sysctls.is_empty() {
        linux = linux.sysctl(inp.sandbox.sysctls.clone());
    }
    if !devices.is_empty() {
        linux = linux.devices(devices);
    }
    let root = RootBuilder::default()
        .path(inp.rootfs)
        .readonly(sc.readonly_rootfs)
        .build()
        .map_err(build)?;
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(root)
        .mounts(mounts)
        .linux(linux.build().map_err(build)?)
        .build()
        .map_err(build)?;
    spec.set_hostname(
        (!inp.sandbox.hostname.is_empty() && inp.sandbox.utsns.is_some())
            .then(|| inp.sandbox.hostname.clone()),
    );
    Ok(spec)
}

/// CPU, memory and hugepage settings of a CRI container as OCI resources
/// (used at create and by UpdateContainerResources). Unset CRI values (0)
/// stay unset. Hugepage limits need the hugetlb cgroup controller: without
/// it (`hugetlb_controller` false) they are left out, as containerd does
/// (`disable_hugetlb_controller`), since runc would fail the container. The
/// kubelet sends a limit for every page size the host has, also for pods
/// that ask for no hugepages.
pub fn linux_resources(
    r: Option<&cri::LinuxContainerResources>,
    hugetlb_controller: bool,
) -> Result<LinuxResources, oci_spec::OciSpecError> {
    let mut resources = LinuxResourcesBuilder::default();
    let Some(r) = r else {
        return resources.build();
    };
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
    }
    if r.cpu_quota > 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    resources = resources.cpu(cpu.build()?);
    let mut memory = LinuxMemoryBuilder::default();
    if r.memory_limit_in_bytes > 0 {
        memory = memory.limit(r.memory_limit_in_bytes);
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory = memory.swap(r.memory_swap_limit_in_bytes);
    }
    resources = resources.memory(memory.build()?);
    if hugetlb_controller && !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|h| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(h.limit as i64)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        resources = resources.hugepage_limits(limits);
    }
    resources.build()
}

/// The device nodes for CRI `devices`, each looked up on the host, and the
/// cgroup rules that allow them with the requested permissions.
fn host_devices(
    container: &str,
    devices: &[cri::Device],
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), OciError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for (index, d) in devices.iter().enumerate() {
        let err = |reason: String| OciError::Device {
            container: container.to_owned(),
            index,
            path: d.host_path.clone(),
            reason,
        };
        let meta = std::fs::metadata(&d.host_path).map_err(|e| err(e.to_string()))?;
        let typ = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(err("not a device node".into()));
        };
        let rdev = meta.rdev();
        let (major, minor) = (
            nix::sys::stat::major(rdev) as i64,
            nix::sys::stat::minor(rdev) as i64,
        );
        let path = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !access.chars().all(|c| "rwm".contains(c)) {
            return Err(err(format!(
                "permissions {access:?}: only r, w and m are allowed"
            )));
        }
        let build = |e: oci_spec::OciSpecError| err(e.to_string());
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(build)?,
        );
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access(access)
                .build()
                .map_err(build)?,
        );
    }
    Ok((nodes, rules))
}

fn capabilities(
    container: &str,
    sc: &cri::LinuxContainerSecurityContext,
    runtime_capabilities: &HashSet<Capability>,
) -> Result<HashSet<Capability>, OciError> {
    let parse = |name: &str| -> Result<Capability, OciError> {
        let full = if name.starts_with("CAP_") {
            name.to_owned()
        } else {
            format!("CAP_{name}")
        };
        serde_json::from_value(serde_json::Value::String(full.to_uppercase())).map_err(|_| {
            OciError::UnknownCapability {
                container: container.to_owned(),
                name: name.to_owned(),
            }
        })
    };
    let all = || runtime_capabilities.clone();
    if sc.privileged {
        return Ok(all());
    }
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| parse(c))
        .collect::<Result<_, _>>()?;
    if let Some(c) = &sc.capabilities {
        if c.add_capabilities
            .iter()
            .any(|a| a.eq_ignore_ascii_case("ALL"))
        {
            caps = all();
        } else {
            for a in &c.add_capabilities {
                caps.insert(parse(a)?);
            }
        }
        if c.drop_capabilities
            .iter()
            .any(|d| d.eq_ignore_ascii_case("ALL"))
        {
            caps.clear();
            // Explicit adds survive a drop of ALL, as in containerd.
            for a in c
                .add_capabilities
                .iter()
                .filter(|a| !a.eq_ignore_ascii_case("ALL"))
            {
                caps.insert(parse(a)?);
            }
        } else {
            for d in &c.drop_capabilities {
                caps.remove(&parse(d)?);
            }
        }
    }
    Ok(caps)
}

/// Directories under /dev that hold no device nodes of the host's own (or
/// that the runtime mounts itself).
const SKIPPED_DEV_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue"];

/// Every character and block device under `dev`, as device entries for the
/// same paths in the container; runc creates its default devices itself.
pub fn all_host_devices(dev: &Path) -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    const RUNC_DEFAULTS: &[&str] = &[
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "console",
    ];
    let mut found = Vec::new();
    let mut stack = vec![dev.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let relative = entry
                .path()
                .strip_prefix(dev)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if meta.is_dir() {
                let skipped = name.starts_with('.')
                    || (dir == dev && SKIPPED_DEV_DIRS.contains(&name.as_str()));
                if !skipped {
                    stack.push(entry.path());
                }
                continue;
            }
            let typ = if meta.file_type().is_char_device() {
                LinuxDeviceType::C
            } else if meta.file_type().is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            if dir == dev && RUNC_DEFAULTS.contains(&name.as_str()) {
                continue;
            }
            let rdev = meta.rdev();
            if let Ok(device) = LinuxDeviceBuilder::default()
                .path(Path::new("/dev").join(relative))
                .typ(typ)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
            {
                found.push(device);
            }
        }
    }
    found.sort_by(|a, b| a.path().cmp(b.path()));
    found
}

/// The capabilities in a `/proc/<pid>/status` mask line (`CapBnd:` etc.).
pub fn capabilities_from_mask(hex: &str) -> HashSet<Capability> {
    let mask = u64::from_str_radix(hex.trim(), 16).unwrap_or(0);
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .filter_map(cap_name)
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.to_owned())).ok())
        .collect()
}

/// The bounding set of this process.
pub fn current_bounding_set() -> HashSet<Capability> {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(capabilities_from_mask)
        .unwrap_or_default()
}

/// Linux capability names by number (linux/capability.h).
fn cap_name(n: u32) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES.get(n as usize).copied()
}

fn default_mounts(writable_sysfs: bool) -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    let m = |dst: &str, typ: &str, src: &str, opts: &[&str]| {
        MountBuilder::default()
            .destination(dst)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
    };
    let ro = if writable_sysfs { "rw" } else { "ro" };
    Ok(vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        m("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro])?,
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    static ALL_TEST_CAPS: std::sync::LazyLock<HashSet<Capability>> =
        std::sync::LazyLock::new(full_set);

    /// Spec inputs of container "x" with a private pid namespace.
    fn inputs<'a>(img: &'a ImageConfig, sandbox: &'a SandboxPaths) -> SpecInputs<'a> {
        SpecInputs {
            id: "x",
            rootfs: Path::new("/r"),
            image: img,
            user: ResolvedUser::default(),
            sandbox,
            pid_namespace: PidNamespace::Private,
            current_oom_score_adj: 0,
            runtime_capabilities: &ALL_TEST_CAPS,
            hugetlb_controller: true,
        }
    }

    fn full_set() -> HashSet<Capability> {
        capabilities_from_mask("000001ffffffffff")
    }

    #[test]
    fn hugepage_limits_need_the_hugetlb_controller() {
        let resources = cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        };
        let with = linux_resources(Some(&resources), true).unwrap();
        let limits = with.hugepage_limits().as_ref().unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].page_size(), "2MB");
        let without = linux_resources(Some(&resources), false).unwrap();
        assert!(without.hugepage_limits().is_none());
    }

    #[test]
    fn capability_masks() {
        let caps = capabilities_from_mask("00000000a80425fb");
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(caps.contains(&Capability::NetBindService));
        assert!(!caps.contains(&Capability::SysAdmin));
    }

    #[test]
    fn privileged_gets_exactly_the_runtime_set() {
        let sc = cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        };
        let limited = capabilities_from_mask("00000000a80425fb");
        assert_eq!(capabilities("c", &sc, &limited).unwrap(), limited);
    }

    fn cfg(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn args_merge_like_containerd() {
        let img = image(&["/entry"], &["default"]);
        assert_eq!(merge_args(&cfg(&[], &[]), &img), ["/entry", "default"]);
        assert_eq!(merge_args(&cfg(&[], &["x"]), &img), ["/entry", "x"]);
        assert_eq!(merge_args(&cfg(&["/bin/sh"], &[]), &img), ["/bin/sh"]);
        assert_eq!(
            merge_args(&cfg(&["/bin/sh"], &["-c", "true"]), &img),
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn env_overrides_by_key_keeping_order() {
        let mut c = cfg(&[], &[]);
        c.envs = vec![
            cri::KeyValue {
                key: "A".into(),
                value: "cri".into(),
            },
            cri::KeyValue {
                key: "B".into(),
                value: "b".into(),
            },
        ];
        assert_eq!(
            merge_env(&c, &image(&[], &["sh"]), "pod"),
            ["HOSTNAME=pod", "PATH=/bin", "A=cri", "B=b"]
        );
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nweb:x:100:101::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnobody:x:65534:\nwww:x:101:\nextra:x:300:web,other\n";

    #[test]
    fn user_from_image_name_and_groups() {
        let mut img = image(&[], &["sh"]);
        img.user = "web".into();
        let u = resolve_user("c", &cfg(&[], &[]), &img, PASSWD, GROUP).unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 100,
                gid: 101,
                additional_gids: vec![101, 300]
            }
        );
        img.user = "nobody:www".into();
        let u = resolve_user("c", &cfg(&[], &[]), &img, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 101));
        img.user = "ghost".into();
        assert!(resolve_user("c", &cfg(&[], &[]), &img, PASSWD, GROUP).is_err());
    }

    #[test]
    fn user_from_security_context_wins() {
        let mut c = cfg(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1234 }),
                run_as_group: Some(cri::Int64Value { value: 55 }),
                supplemental_groups: vec![7],
                ..Default::default()
            }),
            ..Default::default()
        });
        let u = resolve_user("c", &c, &image(&[], &["sh"]), PASSWD, GROUP).unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 1234,
                gid: 55,
                additional_gids: vec![7, 55]
            }
        );
    }

    #[test]
    fn capabilities_add_drop_all() {
        let mut sc = cri::LinuxContainerSecurityContext::default();
        let caps = capabilities("c", &sc, &full_set()).unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        sc.capabilities = Some(cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        let caps = capabilities("c", &sc, &full_set()).unwrap();
        assert_eq!(caps.len(), 1);
        assert!(caps.contains(&Capability::NetAdmin));
        sc.capabilities = Some(cri::Capability {
            add_capabilities: vec!["NOT_A_CAP".into()],
            ..Default::default()
        });
        assert!(matches!(
            capabilities("c", &sc, &full_set()),
            Err(OciError::UnknownCapability { .. })
        ));
    }

    #[test]
    fn spec_joins_sandbox_namespaces_and_clamps_oom() {
        let mut c = cfg(&["sh"], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                oom_score_adj: -999,
                memory_limit_in_bytes: 1 << 26,
                ..Default::default()
            }),
            ..Default::default()
        });
        let sandbox = SandboxPaths {
            netns: Some("/run/netns/x".into()),
            ipcns: Some("/proc/1/ns/ipc".into()),
            utsns: Some("/proc/1/ns/uts".into()),
            hostname: "pod".into(),
            ..Default::default()
        };
        let img = image(&[], &[]);
        let inp = SpecInputs {
            id: "abc",
            rootfs: Path::new("/r"),
            image: &img,
            user: ResolvedUser::default(),
            sandbox: &sandbox,
            pid_namespace: PidNamespace::Private,
            current_oom_score_adj: 0,
            runtime_capabilities: &ALL_TEST_CAPS,
            hugetlb_controller: true,
        };
        let spec = build_spec(&c, &inp).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["oomScoreAdj"], 0);
        assert_eq!(json["hostname"], "pod");
        assert_eq!(json["linux"]["cgroupsPath"], "/cri-shim/abc");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 1 << 26);
        let nets: Vec<_> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "network")
            .collect();
        assert_eq!(nets[0]["path"], "/run/netns/x");
    }

    #[test]
    fn missing_mount_source_names_the_field() {
        let img = image(&[], &[]);
        let sandbox = SandboxPaths::default();
        let inp = inputs(&img, &sandbox);
        let mut c = cfg(&["sh"], &[]);
        c.mounts = vec![
            cri::Mount {
                container_path: "/a".into(),
                host_path: "/".into(),
                ..Default::default()
            },
            cri::Mount {
                container_path: "/b".into(),
                host_path: "/no/such/dir".into(),
                ..Default::default()
            },
        ];
        let err = build_spec(&c, &inp).unwrap_err();
        assert!(
            matches!(err, OciError::MountSource { index: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("mounts[1].host_path"));
    }

    #[test]
    fn sandbox_shm_and_sysctls() {
        let img = image(&[], &[]);
        let sandbox = SandboxPaths {
            shm: Some("/var/lib/cri-shim/sandboxes/s/shm".into()),
            sysctls: HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]),
            ..Default::default()
        };
        let inp = inputs(&img, &sandbox);
        let json = serde_json::to_value(build_spec(&cfg(&["sh"], &[]), &inp).unwrap()).unwrap();
        let shm: Vec<_> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0]["source"], "/var/lib/cri-shim/sandboxes/s/shm");
        assert_eq!(
            json["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
            "80"
        );
    }

    #[test]
    fn devices_become_nodes_and_cgroup_rules() {
        let img = image(&[], &[]);
        let sandbox = SandboxPaths::default();
        let inp = inputs(&img, &sandbox);
        let mut c = cfg(&["sh"], &[]);
        c.devices = vec![cri::Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let json = serde_json::to_value(build_spec(&c, &inp).unwrap()).unwrap();
        let dev = &json["linux"]["devices"][0];
        assert_eq!(
            (dev["path"].as_str(), dev["type"].as_str()),
            (Some("/dev/xnull"), Some("c"))
        );
        assert_eq!(
            (dev["major"].as_i64(), dev["minor"].as_i64()),
            (Some(1), Some(3))
        );
        let rule = &json["linux"]["resources"]["devices"][1];
        assert_eq!(
            (rule["allow"].as_bool(), rule["access"].as_str()),
            (Some(true), Some("rw"))
        );

        c.devices[0].host_path = "/etc/hostname".into();
        let err = build_spec(&c, &inp).unwrap_err();
        assert!(err.to_string().contains("devices[0].host_path"), "{err}");
    }

    #[test]
    fn privileged_has_no_masks_and_pod_network_keeps_sysfs_read_only() {
        let img = image(&[], &[]);
        let sandbox = SandboxPaths {
            netns: Some("/run/netns/x".into()),
            ..Default::default()
        };
        let inp = inputs(&img, &sandbox);
        let mut c = cfg(&["sh"], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                masked_paths: vec!["/proc/kcore".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let json = serde_json::to_value(build_spec(&c, &inp).unwrap()).unwrap();
        assert_eq!(json["linux"]["maskedPaths"], serde_json::json!([]));
        assert_eq!(json["linux"]["readonlyPaths"], serde_json::json!([]));
        let sys = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(
            sys["options"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("ro"))
        );
    }

    #[test]
    fn empty_command_is_an_error() {
        let img = image(&[], &[]);
        let sandbox = SandboxPaths::default();
        let inp = inputs(&img, &sandbox);
        assert!(matches!(
            build_spec(&cfg(&[], &[]), &inp),
            Err(OciError::NoCommand { .. })
        ));
    }
}
