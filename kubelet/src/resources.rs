//! Resource quantities (`500m`, `64Mi`, `1e3`) and what the kubelet derives
//! from a container's requests and limits.

use k8s_openapi::api::core::v1::Container;

/// The value of a Kubernetes quantity (`500m`, `64Mi`, `1e3`), exact to the
/// milli-unit; `None` if it does not parse. One parser serves the kubelet and
/// the volume drivers.
pub fn parse_quantity(text: &str) -> Option<f64> {
    volume_drivers::quantity::parse(text)
        .ok()
        .map(|amount| amount.milli_value() as f64 / 1000.0)
}

/// Which side of a container's resources to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `resources.requests` (a limit stands in for a missing request, as the
    /// API server defaults it).
    Requests,
    /// `resources.limits`.
    Limits,
}

/// The value of resource `name` of a container, if set.
pub fn container_resource(container: &Container, side: Side, name: &str) -> Option<f64> {
    let resources = container.resources.as_ref()?;
    let lookup = |list: Option<&std::collections::BTreeMap<String, _>>| {
        list.and_then(|l| l.get(name)).and_then(
            |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| parse_quantity(&q.0),
        )
    };
    match side {
        Side::Limits => lookup(resources.limits.as_ref()),
        Side::Requests => {
            lookup(resources.requests.as_ref()).or_else(|| lookup(resources.limits.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_the_api() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("64Mi"), Some(67_108_864.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("0.5"), Some(0.5));
        assert_eq!(parse_quantity("12Qi"), None);
        assert_eq!(parse_quantity("Mi"), None);
    }
}
