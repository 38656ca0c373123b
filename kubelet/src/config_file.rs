//! The kubelet config file (`--config`): a `KubeletConfiguration` of
//! `kubelet.config.k8s.io/v1beta1` in YAML or JSON, with upstream's field
//! names. Flags given on the command line take precedence over it, as
//! upstream.
//!
//! Every top-level field is one of three kinds: supported (read into
//! [`KubeletConfiguration`]), an upstream field this kubelet does not
//! implement (reported back so the caller can warn), or unknown (an error,
//! as upstream's strict decoding).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The only API version read.
pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// The only kind read.
pub const KIND: &str = "KubeletConfiguration";

/// Fields of the upstream v1beta1 type this kubelet does not implement yet.
const UPSTREAM_UNSUPPORTED: &[&str] = &[
    "allowedUnsafeSysctls",
    "authentication",
    "authorization",
    "clusterTrustBundleProjection",
    "configMapAndSecretChangeDetectionStrategy",
    "containerLogMaxFiles",
    "containerLogMaxSize",
    "containerLogMaxWorkers",
    "containerLogMonitorInterval",
    "containerRuntimeEndpointTimeout",
    "contentType",
    "cpuCFSQuota",
    "cpuCFSQuotaPeriod",
    "cpuManagerPolicy",
    "cpuManagerPolicyOptions",
    "cpuManagerReconcilePeriod",
    "crashLoopBackOff",
    "enableControllerAttachDetach",
    "enableDebugFlagsHandler",
    "enableDebuggingHandlers",
    "enableProfilingHandler",
    "enableServer",
    "enableSystemLogHandler",
    "enableSystemLogQuery",
    "enforceNodeAllocatable",
    "eventBurst",
    "eventRecordQPS",
    "evictionHard",
    "evictionMaxPodGracePeriod",
    "evictionMinimumReclaim",
    "evictionPressureTransitionPeriod",
    "evictionSoft",
    "evictionSoftGracePeriod",
    "failCgroupV1",
    "failSwapOn",
    "featureGates",
    "hairpinMode",
    "healthzBindAddress",
    "healthzPort",
    "imageGCHighThresholdPercent",
    "imageGCLowThresholdPercent",
    "imageMaximumGCAge",
    "imageMinimumGCAge",
    "imagePullCredentialsVerificationPolicy",
    "imageServiceEndpoint",
    "iptablesDropBit",
    "iptablesMasqueradeBit",
    "kernelMemcgNotification",
    "kubeAPIBurst",
    "kubeAPIQPS",
    "kubeReservedCgroup",
    "kubeletCgroups",
    "localStorageCapacityIsolation",
    "logging",
    "makeIPTablesUtilChains",
    "maxOpenFiles",
    "maxParallelImagePulls",
    "maxPods",
    "memoryManagerPolicy",
    "memorySwap",
    "memoryThrottlingFactor",
    "mergeDefaultEvictionSettings",
    "nodeLeaseDurationSeconds",
    "nodeStatusMaxImages",
    "nodeStatusReportFrequency",
    "nodeStatusUpdateFrequency",
    "oomScoreAdj",
    "podCIDR",
    "podPidsLimit",
    "podsPerCore",
    "port",
    "preconfiguredImageCredentialProviders",
    "protectKernelDefaults",
    "providerID",
    "qosReserved",
    "registerNode",
    "registerWithTaints",
    "registryBurst",
    "registryPullQPS",
    "reservedMemory",
    "reservedSystemCPUs",
    "rotateCertificates",
    "runOnce",
    "seccompDefault",
    "serializeImagePulls",
    "serverTLSBootstrap",
    "shutdownGracePeriod",
    "shutdownGracePeriodByPodPriority",
    "shutdownGracePeriodCriticalPods",
    "singleProcessOOMKill",
    "staticPodURL",
    "staticPodURLHeader",
    "streamingConnectionIdleTimeout",
    "syncFrequency",
    "systemCgroups",
    "systemReservedCgroup",
    "tlsCertFile",
    "tlsCipherSuites",
    "tlsMinVersion",
    "tlsPrivateKeyFile",
    "topologyManagerPolicy",
    "topologyManagerPolicyOptions",
    "topologyManagerScope",
    "userNamespaces",
    "volumeStatsAggPeriod",
];

/// The supported fields of a `KubeletConfiguration` (upstream names).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    /// `staticPodPath`: the static pod manifest directory.
    pub static_pod_path: Option<PathBuf>,
    /// `fileCheckFrequency`: re-list interval of the manifest directory.
    pub file_check_frequency: Option<String>,
    /// `address`: IP the servers listen on.
    pub address: Option<IpAddr>,
    /// `readOnlyPort`: the read-only server's port; 0 disables it.
    pub read_only_port: Option<u16>,
    /// `containerRuntimeEndpoint`.
    pub container_runtime_endpoint: Option<String>,
    /// `runtimeRequestTimeout`.
    pub runtime_request_timeout: Option<String>,
    /// `volumePluginDir`: FlexVolume drivers.
    pub volume_plugin_dir: Option<PathBuf>,
    /// `podLogsDir`: root of the per-pod log directories.
    pub pod_logs_dir: Option<PathBuf>,
    /// `resolvConf`: resolver configuration for pods with `dnsPolicy: Default`.
    pub resolv_conf: Option<PathBuf>,
    /// `clusterDNS`: cluster DNS server IPs.
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<IpAddr>>,
    /// `clusterDomain`: the cluster's DNS domain.
    pub cluster_domain: Option<String>,
    /// `kubeReserved`: resources held back for Kubernetes daemons.
    pub kube_reserved: Option<BTreeMap<String, String>>,
    /// `systemReserved`: resources held back for the system.
    pub system_reserved: Option<BTreeMap<String, String>>,
    /// `cgroupDriver`: only `cgroupfs`.
    pub cgroup_driver: Option<String>,
    /// `cgroupRoot`: root of the pod cgroup hierarchy.
    pub cgroup_root: Option<String>,
    /// `cgroupsPerQOS`: the QoS cgroup hierarchy on or off.
    #[serde(rename = "cgroupsPerQOS")]
    pub cgroups_per_qos: Option<bool>,
}

/// Errors reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("reading kubelet config file {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML/JSON of the expected shape.
    #[error("kubelet config file {path}: {message}")]
    Decode {
        /// File.
        path: PathBuf,
        /// What is wrong, naming the field where known.
        message: String,
    },
    /// `apiVersion` or `kind` is not the supported one.
    #[error("kubelet config file {path}: {field} is {found:?}, want {want:?}")]
    TypeMeta {
        /// File.
        path: PathBuf,
        /// `apiVersion` or `kind`.
        field: &'static str,
        /// Value found.
        found: String,
        /// Value wanted.
        want: &'static str,
    },
    /// A field that is not part of `KubeletConfiguration`.
    #[error("kubelet config file {path}: unknown field {field:?}")]
    UnknownField {
        /// File.
        path: PathBuf,
        /// Field name.
        field: String,
    },
}

/// A loaded config file: the supported fields, and the upstream fields it
/// sets that this kubelet ignores (to be reported).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedConfig {
    /// Supported fields.
    pub config: KubeletConfiguration,
    /// Upstream fields present in the file but not implemented.
    pub unsupported: Vec<String>,
}

const SUPPORTED: &[&str] = &[
    "staticPodPath",
    "fileCheckFrequency",
    "address",
    "readOnlyPort",
    "containerRuntimeEndpoint",
    "runtimeRequestTimeout",
    "volumePluginDir",
    "podLogsDir",
    "resolvConf",
    "clusterDNS",
    "clusterDomain",
    "kubeReserved",
    "systemReserved",
    "cgroupDriver",
    "cgroupRoot",
    "cgroupsPerQOS",
];

/// Parses config file text (YAML, of which JSON is a subset).
pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, ConfigFileError> {
    let decode = |message: String| ConfigFileError::Decode {
        path: path.to_owned(),
        message,
    };
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| decode(e.to_string()))?;
    let serde_yaml::Value::Mapping(mut map) = value else {
        return Err(decode("not a mapping".to_owned()));
    };
    for (field, want) in [("apiVersion", API_VERSION), ("kind", KIND)] {
        let found = map
            .remove(field)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if found != want {
            return Err(ConfigFileError::TypeMeta {
                path: path.to_owned(),
                field,
                found,
                want,
            });
        }
    }
    let mut supported = serde_yaml::Mapping::new();
    let mut unsupported = Vec::new();
    for (key, value) in map {
        let name = key.as_str().unwrap_or_default().to_owned();
        if SUPPORTED.contains(&name.as_str()) {
            supported.insert(key, value);
        } else if UPSTREAM_UNSUPPORTED.contains(&name.as_str()) {
            unsupported.push(name);
        } else {
            return Err(ConfigFileError::UnknownField {
                path: path.to_owned(),
                field: name,
            });
        }
    }
    // Each field alone first, so an error names its field.
    for (key, value) in &supported {
        let single = serde_yaml::Mapping::from_iter([(key.clone(), value.clone())]);
        if let Err(e) =
            serde_yaml::from_value::<KubeletConfiguration>(serde_yaml::Value::Mapping(single))
        {
            return Err(decode(format!(
                "field {}: {e}",
                key.as_str().unwrap_or_default()
            )));
        }
    }
    let config = serde_yaml::from_value(serde_yaml::Value::Mapping(supported))
        .map_err(|e| decode(e.to_string()))?;
    unsupported.sort();
    Ok(LoadedConfig {
        config,
        unsupported,
    })
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<LoadedConfig, ConfigFileError> {
        parse(Path::new("/etc/kubelet.yaml"), text)
    }

    #[test]
    fn reads_supported_fields_and_reports_unsupported_ones() {
        let loaded = parse_text(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             staticPodPath: /etc/kubernetes/manifests\nfileCheckFrequency: 5s\nreadOnlyPort: 0\n\
             clusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\n\
             kubeReserved: {cpu: 100m, memory: 256Mi}\nfailSwapOn: false\nmaxPods: 110\n",
        )
        .unwrap();
        let config = loaded.config;
        assert_eq!(
            config.static_pod_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(config.file_check_frequency.as_deref(), Some("5s"));
        assert_eq!(config.read_only_port, Some(0));
        assert_eq!(
            config.cluster_dns,
            Some(vec!["10.96.0.10".parse().unwrap()])
        );
        assert_eq!(config.kube_reserved.unwrap()["memory"], "256Mi");
        assert_eq!(loaded.unsupported, ["failSwapOn", "maxPods"]);
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubelet-config.yaml");
        let loaded = load(&path).unwrap();
        assert!(loaded.unsupported.is_empty(), "{:?}", loaded.unsupported);
        assert_eq!(
            loaded.config.cluster_domain.as_deref(),
            Some("cluster.local")
        );
    }

    #[test]
    fn json_works_too() {
        let loaded = parse_text(
            r#"{"apiVersion":"kubelet.config.k8s.io/v1beta1","kind":"KubeletConfiguration","address":"0.0.0.0"}"#,
        )
        .unwrap();
        assert_eq!(loaded.config.address, Some("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let unknown = parse_text(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPth: /x\n",
        )
        .unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "kubelet config file /etc/kubelet.yaml: unknown field \"staticPodPth\""
        );
        let kind =
            parse_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: Pod\n").unwrap_err();
        assert_eq!(
            kind.to_string(),
            "kubelet config file /etc/kubelet.yaml: kind is \"Pod\", want \"KubeletConfiguration\""
        );
        let bad = parse_text(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPort: lots\n",
        )
        .unwrap_err();
        assert!(bad.to_string().contains("readOnlyPort"), "{bad}");
    }
}
