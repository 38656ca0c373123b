//! Resource arithmetic the drivers need from a pod spec: the pod's memory
//! limit (for memory-backed volume sizes) and container limits/requests for
//! downwardAPI `resourceFieldRef`, with the node's allocatable amounts as the
//! fallback for unset limits, as upstream.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity::{Amount, QuantityError, parse_quantity};

/// What the node can give pods; the kubelet reads it from the host (or its
/// config) and passes it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAllocatable {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

impl NodeAllocatable {
    /// Reads CPU count and memory of this host (`sysconf`, `/proc/meminfo`)
    /// and the size of the file system holding `root_dir`.
    pub fn from_host(root_dir: &std::path::Path) -> std::io::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let mem_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other("MemTotal missing in /proc/meminfo"))?;
        let fs = nix::sys::statvfs::statvfs(root_dir)?;
        Ok(Self {
            cpu_millicores: cpus * 1000,
            memory_bytes: mem_kib * 1024,
            ephemeral_storage_bytes: fs.blocks() * fs.fragment_size(),
        })
    }
}

fn limit(c: &Container, resource: &str) -> Result<Option<Amount>, QuantityError> {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(resource))
        .map(parse_quantity)
        .transpose()
}

fn request(c: &Container, resource: &str) -> Result<Option<Amount>, QuantityError> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|l| l.get(resource))
        .map(parse_quantity)
        .transpose()
}

/// The pod's effective memory limit: the larger of the sum over app
/// containers and the largest init container, plus the pod overhead; `None`
/// when any container has no memory limit (the pod is then unbounded).
pub fn pod_memory_limit(pod: &Pod) -> Result<Option<Amount>, QuantityError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    let mut sum = Amount::ZERO;
    for c in &spec.containers {
        match limit(c, "memory")? {
            Some(l) => sum = sum.checked_add(l),
            None => return Ok(None),
        }
    }
    let mut max_init = Amount::ZERO;
    for c in spec.init_containers.iter().flatten() {
        match limit(c, "memory")? {
            Some(l) => max_init = max_init.max(l),
            None => return Ok(None),
        }
    }
    let mut total = sum.max(max_init);
    if let Some(o) = spec.overhead.as_ref().and_then(|o| o.get("memory")) {
        total = total.checked_add(parse_quantity(o)?);
    }
    Ok((!total.is_zero()).then_some(total))
}

/// A container by name among the app and init containers.
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// A container's limit for `resource`, or the node's allocatable amount when
/// unset (what upstream's downward API reports).
pub fn limit_or_allocatable(
    c: &Container,
    resource: &str,
    node: &NodeAllocatable,
) -> Result<Amount, QuantityError> {
    if let Some(l) = limit(c, resource)? {
        return Ok(l);
    }
    Ok(match resource {
        "cpu" => Amount::from_millis(node.cpu_millicores as i128),
        "memory" => Amount::from_units(node.memory_bytes as i128),
        "ephemeral-storage" => Amount::from_units(node.ephemeral_storage_bytes as i128),
        _ => Amount::ZERO,
    })
}

/// A container's request for `resource`; an unset request defaults to the
/// limit (as API defaulting does), else zero.
pub fn request_or_limit(c: &Container, resource: &str) -> Result<Amount, QuantityError> {
    Ok(match request(c, resource)? {
        Some(r) => r,
        None => limit(c, resource)?.unwrap_or(Amount::ZERO),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    fn container(name: &str, mem: Option<&str>) -> Container {
        Container {
            name: name.into(),
            resources: mem.map(|m| ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".into(), Quantity(m.into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_memory_limit_needs_every_container_limited() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("a", Some("64Mi")), container("b", Some("32Mi"))],
                init_containers: Some(vec![container("i", Some("128Mi"))]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_memory_limit(&pod).unwrap().unwrap().value(), 128 << 20);
        pod.spec.as_mut().unwrap().init_containers = None;
        assert_eq!(pod_memory_limit(&pod).unwrap().unwrap().value(), 96 << 20);
        pod.spec
            .as_mut()
            .unwrap()
            .containers
            .push(container("c", None));
        assert_eq!(pod_memory_limit(&pod).unwrap(), None);
    }
}
