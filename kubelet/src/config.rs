//! Command-line flags (upstream kubelet names) and the resolved [`KubeletConfig`].
//!
//! Flags are parsed in `main`; everything the library needs arrives here as
//! plain values, with host paths as parameters so tests can point them elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Upstream default of `--root-dir`.
pub const DEFAULT_ROOT_DIR: &str = "/var/lib/kubelet";
/// Upstream location of container logs (`podLogsDir` in the kubelet config).
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";
/// Host resolver configuration copied into pods with the `Default` DNS policy.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Upstream default of `--read-only-port`.
pub const DEFAULT_READ_ONLY_PORT: u16 = 10255;
/// Address the servers listen on in standalone mode unless `--address` says
/// otherwise: a node without an API server has no clients elsewhere.
pub const STANDALONE_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// File name of the embedded runtime's socket inside `--root-dir`.
pub const EMBEDDED_RUNTIME_SOCKET: &str = "cri-shim.sock";

/// Errors turning flags into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A duration flag is not in Go `time.ParseDuration` syntax.
    #[error("invalid duration {value:?} for --{flag}: expected e.g. 20s, 1m30s, 500ms")]
    Duration {
        /// Flag name without dashes.
        flag: &'static str,
        /// Value as given.
        value: String,
    },
    /// The config file could not be used.
    #[error(transparent)]
    File(#[from] crate::config_file::ConfigFileError),
    /// Neither `--pod-manifest-path` nor `staticPodPath` is given.
    #[error("no static pod directory: pass --pod-manifest-path or set staticPodPath in --config")]
    NoStaticPodPath,
    /// A cgroup driver other than cgroupfs was asked for.
    #[error("cgroup driver {driver:?} is not supported; use cgroupfs")]
    CgroupDriver {
        /// The driver asked for.
        driver: String,
    },
    /// A reserved resource quantity does not parse.
    #[error("invalid quantity {value:?} for {field}")]
    Quantity {
        /// e.g. `kubeReserved.memory`.
        field: String,
        /// Value as given.
        value: String,
    },
    /// No `--hostname-override` and the system hostname could not be read.
    #[error("reading the system hostname (pass --hostname-override)")]
    Hostname(#[source] nix::Error),
    /// The node name is empty after trimming.
    #[error("the node name is empty")]
    EmptyNodeName,
}

/// Flags of the `kubelet` binary, named as upstream.
#[derive(Debug, Clone, Parser)]
#[command(name = "kubelet", version, about = "Kubernetes node agent")]
pub struct KubeletFlags {
    /// Kubelet config file (`KubeletConfiguration`, kubelet.config.k8s.io/v1beta1);
    /// flags given on the command line override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory with static pod manifests (`*.yaml`, `*.yml`, `*.json`)
    /// (`staticPodPath`).
    #[arg(long, value_name = "DIR")]
    pub pod_manifest_path: Option<PathBuf>,
    /// CRI endpoint, e.g. unix:///run/containerd/containerd.sock. Without it the
    /// embedded cri-shim runtime is started on a private socket.
    #[arg(long, value_name = "ENDPOINT")]
    pub container_runtime_endpoint: Option<String>,
    /// Directory for the kubelet's files.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT_DIR)]
    pub root_dir: PathBuf,
    /// Node name to use instead of the system hostname.
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// How often the manifest directory is re-listed besides inotify [default: 20s].
    #[arg(long, value_name = "DURATION")]
    pub file_check_frequency: Option<String>,
    /// CNI network configuration directory (embedded runtime only).
    #[arg(long, value_name = "DIR", default_value = cri_shim::config::DEFAULT_CNI_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories, comma-separated (embedded runtime only).
    #[arg(
        long,
        value_name = "DIRS",
        value_delimiter = ',',
        default_value = "/opt/cni/bin,/usr/lib/cni"
    )]
    pub cni_bin_dir: Vec<PathBuf>,
    /// State root of the embedded runtime.
    #[arg(long, value_name = "DIR", default_value = cri_shim::config::DEFAULT_ROOT)]
    pub cri_shim_root: PathBuf,
    /// The cri-shim-helper executable of the embedded runtime (its container
    /// monitors and pod infra processes) [default: cri-shim-helper next to
    /// this binary; without one, this binary re-executed].
    #[arg(long, value_name = "PATH")]
    pub cri_shim_helper_path: Option<PathBuf>,
    /// A registry the embedded runtime may reach over plain HTTP (or HTTPS
    /// without verifying its certificate), as `host[:port]`; repeatable.
    /// Loopback registries always may.
    #[arg(long = "cri-shim-insecure-registry", value_name = "HOST[:PORT]")]
    pub cri_shim_insecure_registries: Vec<String>,
    /// Timeout of every CRI request except image pulls [default: 2m].
    #[arg(long, value_name = "DURATION")]
    pub runtime_request_timeout: Option<String>,
    /// Directory of FlexVolume drivers (`<vendor>~<driver>/<driver>`)
    /// [default: /usr/libexec/kubernetes/kubelet-plugins/volume/exec/].
    #[arg(long, value_name = "DIR")]
    pub volume_plugin_dir: Option<PathBuf>,
    /// Put pods in the upstream QoS cgroup hierarchy (`kubepods`,
    /// `kubepods/burstable`, `kubepods/besteffort`, `pod<uid>`) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub cgroups_per_qos: Option<bool>,
    /// Root cgroup of the pod hierarchy [default: /].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<String>,
    /// Cgroup driver: only `cgroupfs` [default: cgroupfs].
    #[arg(long, value_name = "DRIVER")]
    pub cgroup_driver: Option<String>,
    /// Cluster DNS server IPs, comma-separated (pods with `dnsPolicy: ClusterFirst`).
    #[arg(long, value_name = "IPS", value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain; pods search `<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`.
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Resolver configuration for pods with `dnsPolicy: Default` [default: /etc/resolv.conf].
    #[arg(long, value_name = "FILE")]
    pub resolv_conf: Option<PathBuf>,
    /// IP address the kubelet's servers listen on (standalone default: 127.0.0.1).
    #[arg(long, value_name = "IP")]
    pub address: Option<IpAddr>,
    /// Port of the unauthenticated read-only server (`/healthz`, `/pods`); 0
    /// disables it [default: 10255].
    #[arg(long, value_name = "PORT")]
    pub read_only_port: Option<u16>,
    /// IP address of the node (reported as the pods' hostIP); default: the
    /// address of the interface with the default route.
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,
    /// Log verbosity (klog levels: 0-2 info, 3-4 debug, 5+ trace).
    #[arg(short = 'v', long = "v", value_name = "N", default_value_t = 0)]
    pub verbosity: u8,
}

/// Where the kubelet finds its container runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEndpoint {
    /// A CRI server run by someone else (containerd, CRI-O, a standalone cri-shim).
    Remote(String),
    /// cri-shim started inside this process.
    Embedded(EmbeddedRuntimeConfig),
}

/// Settings of the in-process cri-shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedRuntimeConfig {
    /// Private socket path (`<root-dir>/cri-shim.sock`).
    pub socket: PathBuf,
    /// cri-shim state root.
    pub root: PathBuf,
    /// CNI network configuration directory.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories in search order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The helper executable (`--cri-shim-helper-path`); `None`: cri-shim's
    /// default lookup next to this executable.
    pub helper_path: Option<PathBuf>,
    /// Registries pulled from without TLS verification
    /// (`--cri-shim-insecure-registry`).
    pub insecure_registries: Vec<String>,
}

/// Everything the kubelet library needs, resolved from flags.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Lowercased node name.
    pub node_name: String,
    /// Static pod manifest directory.
    pub pod_manifest_path: PathBuf,
    /// Periodic re-list interval of the manifest directory.
    pub file_check_frequency: Duration,
    /// The kubelet's own directory.
    pub root_dir: PathBuf,
    /// Container runtime to use.
    pub runtime: RuntimeEndpoint,
    /// Timeout of CRI requests (image pulls excepted).
    pub runtime_request_timeout: Duration,
    /// Root of the per-pod log directories.
    pub pod_logs_dir: PathBuf,
    /// Resolver configuration given to pods.
    pub resolv_conf: PathBuf,
    /// How often PLEG relists the runtime.
    pub pleg_relist_period: Duration,
    /// Where the read-only server listens; `None` disables it.
    pub read_only_address: Option<SocketAddr>,
    /// The node IP given by `--node-ip`, if any.
    pub node_ip: Option<IpAddr>,
    /// Cluster DNS servers; empty: pods resolve like the host.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster DNS domain.
    pub cluster_domain: Option<String>,
    /// Cpu cores held back from pods (`kubeReserved` + `systemReserved`).
    pub reserved_cpu: f64,
    /// Memory bytes held back from pods (`kubeReserved` + `systemReserved`).
    pub reserved_memory: f64,
    /// The pod cgroup hierarchy's root (`None`: `cgroupsPerQOS` is off).
    pub cgroup_root: Option<String>,
    /// FlexVolume driver directory.
    pub volume_plugin_dir: PathBuf,
}

impl KubeletFlags {
    /// Resolves the flags; reads the system hostname when not overridden.
    pub fn into_config(self) -> Result<KubeletConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let loaded = crate::config_file::load(path)?;
                for field in &loaded.unsupported {
                    tracing::warn!(
                        file = %path.display(),
                        field,
                        "kubelet config field is not supported by this kubelet; ignored"
                    );
                }
                loaded.config
            }
            None => crate::config_file::KubeletConfiguration::default(),
        };
        let hostname = match self.hostname_override {
            Some(name) => name,
            None => nix::unistd::gethostname()
                .map_err(ConfigError::Hostname)?
                .to_string_lossy()
                .into_owned(),
        };
        let node_name = node_name(&hostname).ok_or(ConfigError::EmptyNodeName)?;
        let endpoint = self
            .container_runtime_endpoint
            .or(file.container_runtime_endpoint.clone());
        let runtime = match endpoint {
            Some(endpoint) => RuntimeEndpoint::Remote(endpoint),
            None => RuntimeEndpoint::Embedded(EmbeddedRuntimeConfig {
                socket: self.root_dir.join(EMBEDDED_RUNTIME_SOCKET),
                root: self.cri_shim_root,
                cni_conf_dir: self.cni_conf_dir,
                cni_bin_dirs: self.cni_bin_dir,
                helper_path: self.cri_shim_helper_path,
                insecure_registries: self.cri_shim_insecure_registries,
            }),
        };
        let pod_manifest_path = self
            .pod_manifest_path
            .or(file.static_pod_path.clone())
            .ok_or(ConfigError::NoStaticPodPath)?;
        let file_check_frequency = self
            .file_check_frequency
            .or(file.file_check_frequency.clone())
            .unwrap_or_else(|| "20s".to_owned());
        let runtime_request_timeout = self
            .runtime_request_timeout
            .or(file.runtime_request_timeout.clone())
            .unwrap_or_else(|| "2m".to_owned());
        let read_only_port = self
            .read_only_port
            .or(file.read_only_port)
            .unwrap_or(DEFAULT_READ_ONLY_PORT);
        let address = self.address.or(file.address).unwrap_or(STANDALONE_ADDRESS);
        let (reserved_cpu, reserved_memory) = reserved(&file)?;
        let driver = self
            .cgroup_driver
            .or(file.cgroup_driver.clone())
            .unwrap_or_else(|| "cgroupfs".to_owned());
        if driver != "cgroupfs" {
            return Err(ConfigError::CgroupDriver { driver });
        }
        let per_qos = self
            .cgroups_per_qos
            .or(file.cgroups_per_qos)
            .unwrap_or(true);
        let cgroup_root = per_qos.then(|| {
            self.cgroup_root
                .or(file.cgroup_root.clone())
                .unwrap_or_else(|| "/".to_owned())
        });
        Ok(KubeletConfig {
            node_name,
            pod_manifest_path,
            file_check_frequency: duration_flag("file-check-frequency", &file_check_frequency)?,
            root_dir: self.root_dir,
            runtime,
            runtime_request_timeout: duration_flag(
                "runtime-request-timeout",
                &runtime_request_timeout,
            )?,
            pod_logs_dir: file
                .pod_logs_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_POD_LOGS_DIR)),
            resolv_conf: self
                .resolv_conf
                .or(file.resolv_conf.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RESOLV_CONF)),
            pleg_relist_period: Duration::from_secs(1),
            read_only_address: (read_only_port != 0)
                .then(|| SocketAddr::new(address, read_only_port)),
            node_ip: self.node_ip,
            volume_plugin_dir: self
                .volume_plugin_dir
                .or(file.volume_plugin_dir.clone())
                .unwrap_or_else(|| PathBuf::from(volume_drivers::flexvolume::DEFAULT_PLUGIN_DIR)),
            cluster_dns: if self.cluster_dns.is_empty() {
                file.cluster_dns.clone().unwrap_or_default()
            } else {
                self.cluster_dns
            },
            cluster_domain: self.cluster_domain.or(file.cluster_domain.clone()),
            reserved_cpu,
            reserved_memory,
            cgroup_root,
        })
    }
}

/// `kubeReserved` + `systemReserved` cpu (cores) and memory (bytes).
fn reserved(file: &crate::config_file::KubeletConfiguration) -> Result<(f64, f64), ConfigError> {
    let mut cpu = 0.0;
    let mut memory = 0.0;
    for (name, list) in [
        ("kubeReserved", &file.kube_reserved),
        ("systemReserved", &file.system_reserved),
    ] {
        for (resource, value) in list.iter().flatten() {
            let parsed =
                crate::resources::parse_quantity(value).ok_or_else(|| ConfigError::Quantity {
                    field: format!("{name}.{resource}"),
                    value: value.clone(),
                })?;
            match resource.as_str() {
                "cpu" => cpu += parsed,
                "memory" => memory += parsed,
                _ => {}
            }
        }
    }
    Ok((cpu, memory))
}

/// The node's IP: `--node-ip`, else the local address the kernel picks for
/// the default route (no packet is sent), else loopback.
pub fn node_ip(flag: Option<IpAddr>) -> IpAddr {
    if let Some(ip) = flag {
        return ip;
    }
    let routed = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|socket| {
        socket.connect("192.0.2.1:9")?;
        socket.local_addr()
    });
    match routed {
        Ok(address) if !address.ip().is_unspecified() => address.ip(),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// Node names are the trimmed, lowercased hostname, as upstream `GetHostname`.
pub fn node_name(hostname: &str) -> Option<String> {
    let name = hostname.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

fn duration_flag(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).ok_or_else(|| ConfigError::Duration {
        flag,
        value: value.to_owned(),
    })
}

/// Parses a Go `time.ParseDuration` string without sign: `300ms`, `1.5h`, `2h45m`, `0`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "20", "s", "1x", "-1s", "1m30"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn node_name_is_lowercased_and_trimmed() {
        assert_eq!(node_name(" KLTest\n").as_deref(), Some("kltest"));
        assert_eq!(node_name("  "), None);
    }

    #[test]
    fn embedded_runtime_when_no_endpoint() {
        let flags = KubeletFlags::parse_from([
            "kubelet",
            "--pod-manifest-path",
            "/m",
            "--root-dir",
            "/r",
            "--hostname-override",
            "Node1",
            "--cni-bin-dir",
            "/a,/b",
            "--cri-shim-insecure-registry",
            "registry.lan:5000",
            "--cri-shim-insecure-registry=10.0.0.7",
        ]);
        let config = flags.into_config().unwrap();
        assert_eq!(config.node_name, "node1");
        assert_eq!(config.file_check_frequency, Duration::from_secs(20));
        assert_eq!(config.runtime_request_timeout, Duration::from_secs(120));
        assert_eq!(
            config.read_only_address,
            Some("127.0.0.1:10255".parse().unwrap())
        );
        assert_eq!(
            config.runtime,
            RuntimeEndpoint::Embedded(EmbeddedRuntimeConfig {
                socket: PathBuf::from("/r/cri-shim.sock"),
                root: PathBuf::from("/var/lib/cri-shim"),
                cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
                cni_bin_dirs: vec![PathBuf::from("/a"), PathBuf::from("/b")],
                helper_path: None,
                insecure_registries: vec!["registry.lan:5000".into(), "10.0.0.7".into()],
            })
        );
    }

    #[test]
    fn remote_runtime_and_verbosity() {
        let flags = KubeletFlags::parse_from([
            "kubelet",
            "--pod-manifest-path=/m",
            "--container-runtime-endpoint=unix:///run/c.sock",
            "--hostname-override=n",
            "--file-check-frequency=5s",
            "--read-only-port=0",
            "-v",
            "4",
        ]);
        assert_eq!(flags.verbosity, 4);
        for style in ["-v=3", "--v=3", "-v3"] {
            let flags = KubeletFlags::parse_from(["kubelet", "--pod-manifest-path=/m", style]);
            assert_eq!(flags.verbosity, 3, "{style}");
        }
        let config = flags.into_config().unwrap();
        assert_eq!(
            config.runtime,
            RuntimeEndpoint::Remote("unix:///run/c.sock".into())
        );
        assert_eq!(config.file_check_frequency, Duration::from_secs(5));
        assert_eq!(config.read_only_address, None);
    }
}
