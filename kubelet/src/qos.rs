//! Pod QoS class (upstream `GetPodQOS`): only cpu and memory count.
//!
//! - `Guaranteed`: every container (init and app) has cpu and memory limits,
//!   and its requests, where given, equal them.
//! - `BestEffort`: no container requests or limits cpu or memory.
//! - `Burstable`: everything else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The QoS class of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Limits equal requests for cpu and memory in every container.
    Guaranteed,
    /// Some requests or limits, not guaranteed.
    Burstable,
    /// No cpu or memory requests or limits at all.
    BestEffort,
}

impl QosClass {
    /// The API value of `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

const COMPUTE: [&str; 2] = ["cpu", "memory"];

fn is_zero(quantity: &Quantity) -> bool {
    crate::resources::parse_quantity(&quantity.0) == Some(0.0)
}

fn compute_entries(list: Option<&BTreeMap<String, Quantity>>) -> BTreeMap<&str, &Quantity> {
    list.into_iter()
        .flatten()
        .filter(|(name, quantity)| COMPUTE.contains(&name.as_str()) && !is_zero(quantity))
        .map(|(name, quantity)| (name.as_str(), quantity))
        .collect()
}

/// The pod's QoS class.
pub fn qos_class(pod: &Pod) -> QosClass {
    let Some(spec) = pod.spec.as_ref() else {
        return QosClass::BestEffort;
    };
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any_set = false;
    let mut guaranteed = true;
    for container in containers {
        let resources = container.resources.as_ref();
        let requests = compute_entries(resources.and_then(|r| r.requests.as_ref()));
        let limits = compute_entries(resources.and_then(|r| r.limits.as_ref()));
        any_set |= !requests.is_empty() || !limits.is_empty();
        let all_limited = COMPUTE.iter().all(|name| limits.contains_key(name));
        let requests_match = requests
            .iter()
            .all(|(name, request)| limits.get(name).is_some_and(|limit| same(limit, request)));
        guaranteed &= all_limited && requests_match;
    }
    match (any_set, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
    }
}

/// Compares two quantities by value where both parse, else by text.
fn same(a: &Quantity, b: &Quantity) -> bool {
    match (
        crate::resources::parse_quantity(&a.0),
        crate::resources::parse_quantity(&b.0),
    ) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-9,
        _ => a.0 == b.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n{containers}"
        ))
        .unwrap()
    }

    #[test]
    fn classes_follow_upstream_rules() {
        assert_eq!(qos_class(&pod("  - {name: a}\n")), QosClass::BestEffort);
        assert_eq!(
            qos_class(&pod(
                "  - {name: a, resources: {limits: {cpu: 500m, memory: 64Mi}}}\n"
            )),
            QosClass::Guaranteed
        );
        assert_eq!(
            qos_class(&pod(
                "  - {name: a, resources: {requests: {cpu: '0.5', memory: 64Mi}, limits: {cpu: 500m, memory: 64Mi}}}\n"
            )),
            QosClass::Guaranteed
        );
        assert_eq!(
            qos_class(&pod(
                "  - {name: a, resources: {requests: {cpu: 100m}, limits: {cpu: 500m, memory: 64Mi}}}\n"
            )),
            QosClass::Burstable
        );
        assert_eq!(
            qos_class(&pod(
                "  - {name: a, resources: {limits: {cpu: 500m, memory: 64Mi}}}\n  - {name: b}\n"
            )),
            QosClass::Burstable
        );
        assert_eq!(
            qos_class(&pod("  - {name: a, resources: {requests: {cpu: '0'}}}\n")),
            QosClass::BestEffort
        );
    }
}
