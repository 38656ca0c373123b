//! The pod's `/etc/hosts`, as the upstream kubelet manages it: written to
//! `<pod dir>/etc-hosts` and bind-mounted into every container at
//! `/etc/hosts` (unless the container mounts a volume there), once the pod
//! has IPs.
//!
//! - A pod on the pod network gets the managed file: the localhost lines,
//!   one line per pod IP naming the pod's hostname (its FQDN first when
//!   `spec.subdomain` gives it a domain), then `spec.hostAliases`.
//! - A host-network pod gets the node's `/etc/hosts`, under its own header,
//!   then `spec.hostAliases`.
//!
//! Pure: the caller reads the node's file and writes the result.

use k8s_openapi::api::core::v1::Pod;

/// Header of the file of a pod on the pod network (upstream's text).
const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.\n";
/// Header of the file of a host-network pod (upstream's text).
const MANAGED_HEADER_HOST_NETWORK: &str = "# Kubernetes-managed hosts file (host network).\n";
/// Where the file is mounted in containers.
pub const CONTAINER_PATH: &str = "/etc/hosts";
/// File name in the pod directory (upstream `getEtcHostsPath`).
pub const FILE_NAME: &str = "etc-hosts";

/// The pod's DNS domain: `<subdomain>.<namespace>.svc.<cluster domain>` when
/// `spec.subdomain` is set, else `None` (upstream `GeneratePodHostNameAndDomain`).
pub fn pod_domain(pod: &Pod, cluster_domain: Option<&str>) -> Option<String> {
    let subdomain = pod
        .spec
        .as_ref()?
        .subdomain
        .as_deref()
        .filter(|s| !s.is_empty())?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!(
        "{subdomain}.{namespace}.svc.{}",
        cluster_domain.unwrap_or_default()
    ))
}

/// Whether `container` gets the managed file: the pod has IPs (or will:
/// `ips_pending`, a new sandbox's not asked for yet), and the container
/// mounts nothing of its own at `/etc/hosts`.
pub fn is_mounted(
    container: &k8s_openapi::api::core::v1::Container,
    pod_ips: &[String],
    ips_pending: bool,
) -> bool {
    (!pod_ips.is_empty() || ips_pending)
        && !container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == CONTAINER_PATH)
}

/// What to write as the pod's hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// The whole content (a pod on the pod network).
    Managed(String),
    /// A host-network pod's: the node's `/etc/hosts` under the header, then
    /// these alias lines (see [`host_network_content`]).
    HostNetwork {
        /// The `hostAliases` part.
        aliases: String,
    },
}

/// The pod's hosts file but for the node's file a host-network pod's
/// includes. `hostname` is the pod's hostname (see
/// [`super::sandbox::pod_hostname`]), `pod_ips` its IPs.
pub fn plan(pod: &Pod, hostname: &str, domain: Option<&str>, pod_ips: &[String]) -> Planned {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    if host_network {
        return Planned::HostNetwork {
            aliases: alias_lines(pod),
        };
    }
    let mut text = String::from(MANAGED_HEADER);
    text.push_str("127.0.0.1\tlocalhost\n");
    text.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    text.push_str("fe00::0\tip6-localnet\n");
    text.push_str("fe00::0\tip6-mcastprefix\n");
    text.push_str("fe00::1\tip6-allnodes\n");
    text.push_str("fe00::2\tip6-allrouters\n");
    for ip in pod_ips {
        match domain {
            Some(domain) => text.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n")),
            None => text.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    text.push_str(&alias_lines(pod));
    Planned::Managed(text)
}

/// A host-network pod's file: the header, the node's file, the aliases.
pub fn host_network_content(node_hosts: &str, aliases: &str) -> String {
    format!("{MANAGED_HEADER_HOST_NETWORK}{node_hosts}{aliases}")
}

/// The `hostAliases` part (empty without aliases).
fn alias_lines(pod: &Pod) -> String {
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if aliases.is_empty() {
        return String::new();
    }
    let mut text = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
        text.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("test pod")
    }

    const BOILERPLATE: &str = "# Kubernetes-managed hosts file.\n\
        127.0.0.1\tlocalhost\n\
        ::1\tlocalhost ip6-localhost ip6-loopback\n\
        fe00::0\tip6-localnet\n\
        fe00::0\tip6-mcastprefix\n\
        fe00::1\tip6-allnodes\n\
        fe00::2\tip6-allrouters\n";

    #[test]
    fn pod_network_file_names_the_pod_on_each_ip() {
        let p = pod("metadata: {name: web}\nspec: {containers: []}");
        let text = plan(&p, "web", None, &["10.1.0.7".into(), "fd00::7".into()]);
        assert_eq!(
            text,
            Planned::Managed(format!("{BOILERPLATE}10.1.0.7\tweb\nfd00::7\tweb\n"))
        );
    }

    #[test]
    fn subdomain_gives_the_fqdn_and_aliases_follow() {
        let p = pod(r#"
metadata: {name: web, namespace: shop}
spec:
  containers: []
  hostname: db-0
  subdomain: db
  hostAliases:
  - ip: 127.0.0.1
    hostnames: [foo.local, bar.local]
  - ip: 10.1.2.3
    hostnames: [foo.remote]
"#);
        let domain = pod_domain(&p, Some("cluster.local"));
        assert_eq!(domain.as_deref(), Some("db.shop.svc.cluster.local"));
        let text = plan(&p, "db-0", domain.as_deref(), &["10.1.0.7".into()]);
        assert_eq!(
            text,
            Planned::Managed(format!(
                "{BOILERPLATE}10.1.0.7\tdb-0.db.shop.svc.cluster.local\tdb-0\n\
                 \n# Entries added by HostAliases.\n\
                 127.0.0.1\tfoo.local\tbar.local\n\
                 10.1.2.3\tfoo.remote\n"
            ))
        );
    }

    #[test]
    fn host_network_file_is_the_nodes_with_aliases() {
        let p = pod(r#"
metadata: {name: agent}
spec:
  containers: []
  hostNetwork: true
  hostAliases: [{ip: 10.9.9.9, hostnames: [registry.internal]}]
"#);
        let node = "127.0.0.1\tlocalhost\n192.0.2.2\tnode-1\n";
        let Planned::HostNetwork { aliases } = plan(&p, "node-1", None, &["192.0.2.2".into()])
        else {
            panic!("a host-network pod's file includes the node's");
        };
        assert_eq!(
            host_network_content(node, &aliases),
            "# Kubernetes-managed hosts file (host network).\n\
             127.0.0.1\tlocalhost\n192.0.2.2\tnode-1\n\
             \n# Entries added by HostAliases.\n10.9.9.9\tregistry.internal\n"
        );
    }

    #[test]
    fn mounted_only_with_ips_and_without_a_volume_there() {
        let p = pod(r#"
metadata: {name: web}
spec:
  containers:
  - name: plain
  - name: own-hosts
    volumeMounts: [{name: h, mountPath: /etc/hosts}]
"#);
        let containers = &p.spec.as_ref().unwrap().containers;
        let ips = ["10.1.0.7".to_owned()];
        assert!(is_mounted(&containers[0], &ips, false));
        assert!(!is_mounted(&containers[0], &[], false), "no IPs");
        assert!(
            is_mounted(&containers[0], &[], true),
            "IPs asked for while the container is created"
        );
        assert!(
            !is_mounted(&containers[1], &ips, false),
            "the container mounts its own"
        );
        assert_eq!(pod_domain(&p, Some("cluster.local")), None);
    }
}
