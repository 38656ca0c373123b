//! What a sandbox hands the CNI invoker, built from its CRI config as
//! containerd does: `CNI_ARGS` with the pod's identity, and the capability
//! arguments plugins may declare (`portMappings`, `bandwidth`, `dns`,
//! `ipRanges`).
//!
//! Pure functions of the sandbox config (and the pod CIDRs the kubelet
//! pushed with UpdateRuntimeConfig), so DEL rebuilds exactly what ADD got.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use serde_json::{Map, Value, json};

/// The pod annotation limiting traffic into the pod, in bits per second.
pub const INGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// The pod annotation limiting traffic out of the pod, in bits per second.
pub const EGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// The burst runtimes give annotation limits: the kubelet's `MaxUint32`
/// bits, in effect no burst limit of its own.
const ANNOTATION_BURST: u64 = u32::MAX as u64;

/// The interface name pods get.
pub const POD_IFNAME: &str = "eth0";

/// A bandwidth annotation that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BandwidthError {
    /// Not a Kubernetes quantity.
    #[error(
        "reading pod bandwidth annotations: {annotation}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {value:?}"
    )]
    Syntax {
        /// The annotation key.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
    /// Below 1 kbit/s.
    #[error(
        "reading pod bandwidth annotations: {annotation}: resource is unreasonably small (< 1kbit)"
    )]
    TooSmall {
        /// The annotation key.
        annotation: &'static str,
    },
    /// Above 1 Pbit/s.
    #[error(
        "reading pod bandwidth annotations: {annotation}: resource is unreasonably large (> 1Pbit)"
    )]
    TooLarge {
        /// The annotation key.
        annotation: &'static str,
    },
}

/// A Kubernetes quantity's `Value()`: the amount rounded up to a whole
/// number (the kubelet's parser, so both read quantities alike).
fn quantity_value(text: &str) -> Option<i128> {
    volume_drivers::quantity::parse(text)
        .ok()
        .map(volume_drivers::quantity::Amount::value)
}

/// The `bandwidth` capability from the pod annotations, as containerd
/// builds it: the rate is the annotation's value in bits per second, the
/// burst `MaxUint32`; `None` without either annotation. Values outside
/// 1k..1P are refused, as the kubelet's annotation check does.
pub fn bandwidth_from_annotations(
    annotations: &HashMap<String, String>,
) -> Result<Option<Value>, BandwidthError> {
    let read = |annotation: &'static str| -> Result<Option<u64>, BandwidthError> {
        let Some(text) = annotations.get(annotation) else {
            return Ok(None);
        };
        let value = quantity_value(text.trim()).ok_or_else(|| BandwidthError::Syntax {
            annotation,
            value: text.clone(),
        })?;
        if value < 1_000 {
            return Err(BandwidthError::TooSmall { annotation });
        }
        if value > 1_000_000_000_000_000 {
            return Err(BandwidthError::TooLarge { annotation });
        }
        Ok(Some(value as u64))
    };
    let ingress = read(INGRESS_BANDWIDTH_ANNOTATION)?;
    let egress = read(EGRESS_BANDWIDTH_ANNOTATION)?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let mut bandwidth = Map::new();
    if let Some(rate) = ingress {
        bandwidth.insert("ingressRate".into(), json!(rate));
        bandwidth.insert("ingressBurst".into(), json!(ANNOTATION_BURST));
    }
    if let Some(rate) = egress {
        bandwidth.insert("egressRate".into(), json!(rate));
        bandwidth.insert("egressBurst".into(), json!(ANNOTATION_BURST));
    }
    Ok(Some(Value::Object(bandwidth)))
}

/// `portMappings`: the sandbox's mappings with a host port, protocol in
/// lower case, as containerd's `toCNIPortMappings`.
fn port_mappings(config: &cri::PodSandboxConfig) -> Vec<Value> {
    config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
                "hostIP": p.host_ip,
            })
        })
        .collect()
}

/// The capability arguments of a sandbox. A bad bandwidth annotation is an
/// error; callers that only tear down may drop it (see [`runtime_conf`]).
pub fn capability_args(
    config: &cri::PodSandboxConfig,
    pod_cidrs: &[String],
) -> Result<Map<String, Value>, BandwidthError> {
    let mut args = Map::new();
    let mappings = port_mappings(config);
    if !mappings.is_empty() {
        args.insert("portMappings".into(), Value::Array(mappings));
    }
    if let Some(bandwidth) = bandwidth_from_annotations(&config.annotations)? {
        args.insert("bandwidth".into(), bandwidth);
    }
    if let Some(dns) = &config.dns_config {
        args.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    // One range set per pod CIDR (one per family when dual-stack), as the
    // kubelet's own CNI driver passed the node's pod CIDR.
    let ranges: Vec<Value> = pod_cidrs
        .iter()
        .map(|cidr| json!([{ "subnet": cidr }]))
        .collect();
    if !ranges.is_empty() {
        args.insert("ipRanges".into(), Value::Array(ranges));
    }
    Ok(args)
}

/// The invoker's arguments for sandbox `id`: `CNI_ARGS` as containerd's
/// `toCNILabels` and the capability arguments. On a bad bandwidth
/// annotation the bandwidth is left out (RunPodSandbox refuses such a
/// sandbox before it gets here; teardown must still work).
pub fn runtime_conf(
    id: &str,
    config: &cri::PodSandboxConfig,
    netns: &Path,
    pod_cidrs: &[String],
) -> cni_plugins::RuntimeConf {
    let meta = config.metadata.clone().unwrap_or_default();
    let capability_args = capability_args(config, pod_cidrs).unwrap_or_else(|_| {
        let mut without = config.clone();
        without.annotations.remove(INGRESS_BANDWIDTH_ANNOTATION);
        without.annotations.remove(EGRESS_BANDWIDTH_ANNOTATION);
        capability_args(&without, pod_cidrs).unwrap_or_default()
    });
    cni_plugins::RuntimeConf {
        container_id: id.to_owned(),
        netns: netns.to_owned(),
        ifname: POD_IFNAME.into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), meta.namespace),
            ("K8S_POD_NAME".into(), meta.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_owned()),
            ("K8S_POD_UID".into(), meta.uid),
        ],
        capability_args,
    }
}

/// The pod CIDRs in an UpdateRuntimeConfig's `pod_cidr` (comma-separated
/// when dual-stack).
pub fn parse_pod_cidrs(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_value("10M"), Some(10_000_000));
        assert_eq!(quantity_value("1Mi"), Some(1 << 20));
        assert_eq!(quantity_value("1.5k"), Some(1500));
        assert_eq!(quantity_value("1e6"), Some(1_000_000));
        assert_eq!(quantity_value("1500m"), Some(2));
        assert_eq!(quantity_value("100"), Some(100));
        for bad in ["", "M", "10X", "1.2.3", "1-2", "ten"] {
            assert_eq!(quantity_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bandwidth_as_containerd_builds_it() {
        let bw = bandwidth_from_annotations(&annotations(&[
            (INGRESS_BANDWIDTH_ANNOTATION, "10M"),
            (EGRESS_BANDWIDTH_ANNOTATION, "1Gi"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            bw,
            json!({
                "ingressRate": 10_000_000u64, "ingressBurst": 4_294_967_295u64,
                "egressRate": 1u64 << 30, "egressBurst": 4_294_967_295u64,
            })
        );
        let only_egress =
            bandwidth_from_annotations(&annotations(&[(EGRESS_BANDWIDTH_ANNOTATION, "1k")]))
                .unwrap()
                .unwrap();
        assert!(only_egress.get("ingressRate").is_none());
        assert_eq!(bandwidth_from_annotations(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn unreasonable_bandwidth_is_refused() {
        let small = annotations(&[(INGRESS_BANDWIDTH_ANNOTATION, "999")]);
        assert!(matches!(
            bandwidth_from_annotations(&small),
            Err(BandwidthError::TooSmall { .. })
        ));
        let large = annotations(&[(EGRESS_BANDWIDTH_ANNOTATION, "2P")]);
        assert!(matches!(
            bandwidth_from_annotations(&large),
            Err(BandwidthError::TooLarge { .. })
        ));
        let bad = annotations(&[(EGRESS_BANDWIDTH_ANNOTATION, "fast")]);
        let err = bandwidth_from_annotations(&bad).unwrap_err();
        assert!(err.to_string().contains("kubernetes.io/egress-bandwidth"));
    }

    fn sandbox() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u-1".into(),
                namespace: "prod".into(),
                attempt: 0,
            }),
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                // No host port: not a mapping CNI hears about.
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["prod.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            annotations: annotations(&[(INGRESS_BANDWIDTH_ANNOTATION, "1M")]),
            ..Default::default()
        }
    }

    #[test]
    fn runtime_conf_carries_identity_and_capabilities() {
        let cidrs = parse_pod_cidrs("10.244.1.0/24, fd00:1::/64");
        let rt = runtime_conf("abc", &sandbox(), Path::new("/run/netns/x"), &cidrs);
        assert_eq!(rt.container_id, "abc");
        assert_eq!(rt.ifname, "eth0");
        let args: Vec<String> = rt.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            args,
            [
                "IgnoreUnknown=1",
                "K8S_POD_NAMESPACE=prod",
                "K8S_POD_NAME=web",
                "K8S_POD_INFRA_CONTAINER_ID=abc",
                "K8S_POD_UID=u-1"
            ]
        );
        let caps = Value::Object(rt.capability_args);
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(caps["bandwidth"]["ingressRate"], 1_000_000);
        assert_eq!(
            caps["dns"],
            json!({"servers": ["10.96.0.10"], "searches": ["prod.svc.cluster.local"], "options": ["ndots:5"]})
        );
        assert_eq!(
            caps["ipRanges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]])
        );
    }

    #[test]
    fn teardown_survives_a_bad_annotation() {
        let mut config = sandbox();
        config
            .annotations
            .insert(EGRESS_BANDWIDTH_ANNOTATION.into(), "lots".into());
        assert!(capability_args(&config, &[]).is_err());
        let rt = runtime_conf("abc", &config, Path::new("/run/netns/x"), &[]);
        assert!(rt.capability_args.get("bandwidth").is_none());
        assert!(rt.capability_args.get("portMappings").is_some());
    }
}
