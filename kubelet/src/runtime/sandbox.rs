//! Builds the CRI `PodSandboxConfig` of a pod (upstream `generatePodSandboxConfig`).
//!
//! Pure functions of the pod, the attempt and the host resolver configuration:
//! the same inputs give the same config, which is passed again with every
//! `CreateContainer` of the sandbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;

use crate::labels;

/// Upstream limit of a hostname (a DNS label).
const MAX_HOSTNAME_LEN: usize = 63;

/// Labels that identify a pod's CRI objects: pod labels plus the
/// `io.kubernetes.pod.*` ones (upstream `newPodLabels`).
pub fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let meta = &pod.metadata;
    let mut out: HashMap<String, String> = meta
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    out.insert(
        labels::POD_NAME.to_owned(),
        meta.name.clone().unwrap_or_default(),
    );
    out.insert(
        labels::POD_NAMESPACE.to_owned(),
        meta.namespace.clone().unwrap_or_default(),
    );
    out.insert(
        labels::POD_UID.to_owned(),
        meta.uid.clone().unwrap_or_default(),
    );
    out
}

/// `<pod-logs-dir>/<namespace>_<name>_<uid>`.
pub fn pod_log_directory(pod_logs_dir: &Path, pod: &Pod) -> PathBuf {
    let meta = &pod.metadata;
    pod_logs_dir.join(format!(
        "{}_{}_{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default(),
    ))
}

/// Namespace modes of a pod, used for the sandbox and each of its containers.
pub fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    let flag = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| {
        spec.and_then(f).unwrap_or(false)
    };
    let pod_or_node = |node: bool| {
        if node {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        }
    };
    // The CRI default for PID is POD; a v1 pod has one PID namespace per
    // container unless it asks to share.
    let pid = if flag(|s| s.host_pid) {
        cri::NamespaceMode::Node
    } else if flag(|s| s.share_process_namespace) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: pod_or_node(flag(|s| s.host_network)) as i32,
        pid: pid as i32,
        ipc: pod_or_node(flag(|s| s.host_ipc)) as i32,
        ..Default::default()
    }
}

/// Whether the pod uses the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The pod's hostname: `spec.hostname` or the pod name, cut to 63 characters
/// without a trailing `-` or `.` (upstream `GeneratePodHostNameAndDomain`).
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if name.len() <= MAX_HOSTNAME_LEN {
        return name;
    }
    let mut end = MAX_HOSTNAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches(['-', '.']).to_owned()
}

/// Parses `nameserver`, `search`/`domain` and `options` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> cri::DnsConfig {
    let mut config = cri::DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => config.servers.extend(fields.next().map(str::to_owned)),
            // As glibc: the last search/domain line wins.
            Some("search") | Some("domain") => {
                config.searches = fields.map(str::to_owned).collect()
            }
            Some("options") => config.options.extend(fields.map(str::to_owned)),
            _ => {}
        }
    }
    config
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The cluster's DNS (`--cluster-dns`, `--cluster-domain`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterDns {
    /// DNS server IPs; empty when the cluster has none (standalone).
    pub servers: Vec<String>,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: Option<String>,
}

/// Upstream `ndots` for pods resolving through cluster DNS.
const CLUSTER_NDOTS: &str = "ndots:5";

/// DNS for the sandbox (upstream `GetPodDNS`): `ClusterFirst` (the default;
/// `ClusterFirstWithHostNet` for host-network pods) uses the cluster DNS
/// servers, the namespace/svc/domain searches before the host's, and
/// `ndots:5`; without cluster DNS, and for `Default`, the pod resolves like
/// the host; `None` uses only `spec.dnsConfig`, which is appended in every case.
pub fn pod_dns_config(pod: &Pod, host: &cri::DnsConfig, cluster: &ClusterDns) -> cri::DnsConfig {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirst" => !host_network,
        "ClusterFirstWithHostNet" => true,
        _ => false,
    } && !cluster.servers.is_empty();
    let mut config = match policy {
        "None" => cri::DnsConfig::default(),
        _ if cluster_first => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let mut searches = Vec::new();
            if let Some(domain) = cluster.domain.as_deref().filter(|d| !d.is_empty()) {
                searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_owned(),
                ];
            }
            push_unique(&mut searches, host.searches.clone());
            cri::DnsConfig {
                servers: cluster.servers.clone(),
                searches,
                options: vec![CLUSTER_NDOTS.to_owned()],
            }
        }
        _ => host.clone(),
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        push_unique(
            &mut config.servers,
            extra.nameservers.clone().unwrap_or_default(),
        );
        push_unique(
            &mut config.searches,
            extra.searches.clone().unwrap_or_default(),
        );
        let options = extra.options.iter().flatten().filter_map(|o| {
            let name = o.name.clone()?;
            Some(match &o.value {
                Some(value) => format!("{name}:{value}"),
                None => name,
            })
        });
        push_unique(&mut config.options, options);
    }
    config
}

/// Host port mappings of all containers (container ports without a host port
/// need no mapping).
pub fn port_mappings(pod: &Pod) -> Vec<cri::PortMapping> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: protocol(p.protocol.as_deref()) as i32,
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or_default(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

fn protocol(value: Option<&str>) -> cri::Protocol {
    match value {
        Some("UDP") => cri::Protocol::Udp,
        Some("SCTP") => cri::Protocol::Sctp,
        _ => cri::Protocol::Tcp,
    }
}

/// The sandbox config of `pod` for the given attempt.
pub fn pod_sandbox_config(
    pod: &Pod,
    attempt: u32,
    pod_logs_dir: &Path,
    dns: &cri::DnsConfig,
) -> cri::PodSandboxConfig {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let pod_security = spec.and_then(|s| s.security_context.as_ref());
    let privileged = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| {
                c.security_context
                    .as_ref()
                    .and_then(|sc| sc.privileged)
                    .unwrap_or(false)
            })
    });
    let security_context = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options(pod)),
        run_as_user: pod_security
            .and_then(|s| s.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: pod_security
            .and_then(|s| s.run_as_group)
            .map(|value| cri::Int64Value { value }),
        supplemental_groups: super::container::supplemental_groups(pod),
        selinux_options: super::container::pod_selinux_options(pod),
        privileged,
        ..Default::default()
    };
    let sysctls = pod_security
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        // A host-network pod keeps the node's hostname.
        hostname: if host_network(pod) {
            String::new()
        } else {
            pod_hostname(pod)
        },
        log_directory: pod_log_directory(pod_logs_dir, pod)
            .to_string_lossy()
            .into_owned(),
        dns_config: Some(dns.clone()),
        port_mappings: port_mappings(pod),
        labels: pod_labels(pod),
        annotations: meta
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(security_context),
            sysctls,
            overhead: None,
            resources: None,
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-node1
  namespace: default
  uid: 0123abcd
  labels: {app: web}
  annotations: {kubernetes.io/config.source: file}
spec:
  containers:
  - name: httpd
    image: busybox-httpd
    ports:
    - {containerPort: 80, hostPort: 8080}
    - {containerPort: 53, hostPort: 5353, protocol: UDP, hostIP: 127.0.0.1}
    - {containerPort: 9090}
"#;

    fn host_dns() -> cri::DnsConfig {
        parse_resolv_conf("nameserver 10.0.0.2\nsearch example.com\noptions ndots:2\n")
    }

    #[test]
    fn sandbox_config_of_a_plain_pod() {
        let config = pod_sandbox_config(&pod(WEB), 2, Path::new("/var/log/pods"), &host_dns());
        let meta = config.metadata.as_ref().unwrap();
        assert_eq!(
            (
                meta.name.as_str(),
                meta.namespace.as_str(),
                meta.uid.as_str(),
                meta.attempt
            ),
            ("web-node1", "default", "0123abcd", 2)
        );
        assert_eq!(config.hostname, "web-node1");
        assert_eq!(
            config.log_directory,
            "/var/log/pods/default_web-node1_0123abcd"
        );
        assert_eq!(config.labels["app"], "web");
        assert_eq!(config.labels[labels::POD_NAME], "web-node1");
        assert_eq!(config.labels[labels::POD_NAMESPACE], "default");
        assert_eq!(config.labels[labels::POD_UID], "0123abcd");
        assert_eq!(config.annotations[labels::CONFIG_SOURCE], "file");
        assert_eq!(config.dns_config.as_ref().unwrap().servers, ["10.0.0.2"]);
        assert_eq!(
            config.port_mappings,
            [
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new()
                },
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into()
                },
            ]
        );
        let ns = config
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        assert_eq!(ns.ipc, cri::NamespaceMode::Pod as i32);
    }

    #[test]
    fn host_namespaces_and_hostname() {
        let mut p = pod(WEB);
        let spec = p.spec.as_mut().unwrap();
        spec.host_network = Some(true);
        spec.host_pid = Some(true);
        spec.host_ipc = Some(true);
        let config = pod_sandbox_config(&p, 0, Path::new("/l"), &host_dns());
        assert_eq!(config.hostname, "");
        let ns = config
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!((ns.network, ns.pid, ns.ipc), (2, 2, 2));

        let mut p = pod(WEB);
        p.spec.as_mut().unwrap().share_process_namespace = Some(true);
        assert_eq!(namespace_options(&p).pid, cri::NamespaceMode::Pod as i32);
        p.spec.as_mut().unwrap().hostname = Some("custom".into());
        assert_eq!(pod_hostname(&p), "custom");
    }

    #[test]
    fn long_hostnames_are_truncated_without_trailing_separator() {
        let mut p = pod(WEB);
        p.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b".repeat(10)));
        assert_eq!(pod_hostname(&p), "a".repeat(62));
    }

    #[test]
    fn resolv_conf_parsing() {
        let dns = parse_resolv_conf(
            "# comment\nnameserver 1.1.1.1\nnameserver 8.8.8.8 # trailing\ndomain old.example\nsearch a.example b.example\noptions ndots:5 edns0\n",
        );
        assert_eq!(dns.servers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(dns.searches, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns() {
        let cluster = ClusterDns {
            servers: vec!["10.96.0.10".into()],
            domain: Some("cluster.local".into()),
        };
        let p = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {containers: []}\n",
        );
        let dns = pod_dns_config(&p, &host_dns(), &cluster);
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(
            dns.searches[..3],
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(&dns.searches[3..], &host_dns().searches[..]);
        assert_eq!(dns.options, ["ndots:5"]);

        let host_net = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true, containers: []}\n",
        );
        assert_eq!(pod_dns_config(&host_net, &host_dns(), &cluster), host_dns());
        let with_host_net = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true, dnsPolicy: ClusterFirstWithHostNet, containers: []}\n",
        );
        assert_eq!(
            pod_dns_config(&with_host_net, &host_dns(), &cluster).servers,
            ["10.96.0.10"]
        );
        let default = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {dnsPolicy: Default, containers: []}\n",
        );
        assert_eq!(pod_dns_config(&default, &host_dns(), &cluster), host_dns());
    }

    #[test]
    fn dns_policy_none_uses_only_the_pod_dns_config() {
        let mut p = pod(WEB);
        let spec = p.spec.as_mut().unwrap();
        spec.dns_policy = Some("None".into());
        spec.dns_config = Some(serde_yaml::from_str("{nameservers: [9.9.9.9], searches: [s.example], options: [{name: ndots, value: '1'}, {name: rotate}]}").unwrap());
        let dns = pod_dns_config(&p, &host_dns(), &ClusterDns::default());
        assert_eq!(dns.servers, ["9.9.9.9"]);
        assert_eq!(dns.searches, ["s.example"]);
        assert_eq!(dns.options, ["ndots:1", "rotate"]);

        // Other policies merge the pod's config into the host's.
        p.spec.as_mut().unwrap().dns_policy = None;
        let dns = pod_dns_config(&p, &host_dns(), &ClusterDns::default());
        assert_eq!(dns.servers, ["10.0.0.2", "9.9.9.9"]);
    }

    #[test]
    fn privileged_container_marks_the_sandbox_privileged() {
        let mut p = pod(WEB);
        p.spec.as_mut().unwrap().containers[0].security_context =
            Some(serde_yaml::from_str("{privileged: true}").unwrap());
        let config = pod_sandbox_config(&p, 0, Path::new("/l"), &host_dns());
        assert!(config.linux.unwrap().security_context.unwrap().privileged);
    }
}
