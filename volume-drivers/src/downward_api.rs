//! The downwardAPI volume payload: `fieldRef` (pod metadata) and
//! `resourceFieldRef` (container limits and requests) rendered as upstream
//! renders them, so an application parsing `/etc/podinfo/labels` works the
//! same on this kubelet.
//!
//! Labels and annotations are one `key="value"` line per entry, sorted by
//! key, the value quoted like Go's `%q`, no trailing newline.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod, ResourceFieldSelector};

use crate::atomic_writer::{FileProjection, Payload};
use crate::quantity::{Amount, QuantityError, parse, parse_quantity};
use crate::resources::{NodeAllocatable, find_container, limit_or_allocatable, request_or_limit};

/// Default file mode of downwardAPI (and every atomic-writer) volume.
pub const DEFAULT_MODE: i32 = 0o644;

/// A downwardAPI item that cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum DownwardApiError {
    #[error("item {path:?}: unsupported fieldPath {field_path:?}")]
    UnsupportedField { path: String, field_path: String },
    #[error("item {path:?}: needs exactly one of fieldRef and resourceFieldRef")]
    NoSource { path: String },
    #[error("item {path:?}: resourceFieldRef must specify container name in volume")]
    NoContainerName { path: String },
    #[error("item {path:?}: container {container:?} not found")]
    ContainerNotFound { path: String, container: String },
    #[error("item {path:?}: unsupported container resource : {resource}")]
    UnsupportedResource { path: String, resource: String },
    #[error("item {path:?}: bad quantity")]
    Quantity {
        path: String,
        #[source]
        source: QuantityError,
    },
    #[error("item {path:?}: divisor must be positive")]
    ZeroDivisor { path: String },
    #[error("item {path:?}: invalid mode {mode:#o}: must be between 0 and 0777")]
    BadMode { path: String, mode: i32 },
}

/// Checks a `mode`/`defaultMode` value as API validation does.
pub(crate) fn file_mode(mode: Option<i32>, default: i32) -> Option<u32> {
    let m = mode.unwrap_or(default);
    (0..=0o777).contains(&m).then_some(m as u32)
}

/// Renders the items of a downwardAPI volume (or projected source).
pub fn payload(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    node: &NodeAllocatable,
) -> Result<Payload, DownwardApiError> {
    let default = default_mode.unwrap_or(DEFAULT_MODE);
    let mut out = Payload::new();
    for item in items {
        let path = item.path.clone();
        let mode = file_mode(item.mode, default).ok_or(DownwardApiError::BadMode {
            path: path.clone(),
            mode: item.mode.unwrap_or(default),
        })?;
        let data = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => field_ref_value(pod, &f.field_path).ok_or_else(|| {
                DownwardApiError::UnsupportedField {
                    path: path.clone(),
                    field_path: f.field_path.clone(),
                }
            })?,
            (None, Some(r)) => resource_field_value(pod, &path, r, node)?,
            _ => return Err(DownwardApiError::NoSource { path }),
        };
        out.insert(
            path,
            FileProjection {
                data: data.into_bytes(),
                mode,
            },
        );
    }
    Ok(out)
}

/// The value of a pod `fieldRef` allowed in volumes, `None` if unsupported.
pub fn field_ref_value(pod: &Pod, field_path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    match field_path {
        "metadata.name" => Some(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Some(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Some(meta.uid.clone().unwrap_or_default()),
        "metadata.labels" => Some(format_map(labels)),
        "metadata.annotations" => Some(format_map(annotations)),
        _ => {
            let (map, rest) = if let Some(r) = field_path.strip_prefix("metadata.labels[") {
                (labels, r)
            } else if let Some(r) = field_path.strip_prefix("metadata.annotations[") {
                (annotations, r)
            } else {
                return None;
            };
            let key = rest
                .strip_suffix(']')?
                .strip_prefix('\'')?
                .strip_suffix('\'')?;
            Some(map.get(key).cloned().unwrap_or_default())
        }
    }
}

fn resource_field_value(
    pod: &Pod,
    path: &str,
    r: &ResourceFieldSelector,
    node: &NodeAllocatable,
) -> Result<String, DownwardApiError> {
    let container_name = r
        .container_name
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| DownwardApiError::NoContainerName { path: path.into() })?;
    let container =
        find_container(pod, container_name).ok_or_else(|| DownwardApiError::ContainerNotFound {
            path: path.into(),
            container: container_name.into(),
        })?;
    let quantity = |source| DownwardApiError::Quantity {
        path: path.into(),
        source,
    };
    let divisor = match &r.divisor {
        Some(d) => parse_quantity(d).map_err(quantity)?,
        None => Amount::ZERO,
    };
    let divisor = if divisor.is_zero() {
        parse("1").map_err(quantity)?
    } else {
        divisor
    };
    let unsupported = || DownwardApiError::UnsupportedResource {
        path: path.into(),
        resource: r.resource.clone(),
    };
    let (kind, name) = r.resource.split_once('.').ok_or_else(unsupported)?;
    let supported =
        matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-");
    if !supported {
        return Err(unsupported());
    }
    let value = match kind {
        "limits" => limit_or_allocatable(container, name, node),
        "requests" => request_or_limit(container, name),
        _ => return Err(unsupported()),
    }
    .map_err(quantity)?;
    // CPU divides in thousandths, everything else in whole units; both round up.
    let (v, d) = if name == "cpu" {
        (value.milli_value(), divisor.milli_value())
    } else {
        (value.value(), divisor.value())
    };
    if d <= 0 {
        return Err(DownwardApiError::ZeroDivisor { path: path.into() });
    }
    Ok(div_ceil(v, d).to_string())
}

fn div_ceil(a: i128, b: i128) -> i128 {
    if a % b != 0 && a > 0 {
        a / b + 1
    } else {
        a / b
    }
}

/// `key="value"` lines sorted by key, joined by newlines, as upstream's
/// `fieldpath.FormatMap`.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Quotes `s` as Go's `strconv.Quote` (the `%q` verb) does: `"` and `\`
/// escaped, the usual C escapes, `\xNN` for other ASCII controls, `\uNNNN` /
/// `\UNNNNNNNN` for non-printable code points; printable Unicode kept as is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if go_is_print(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint` for the code points that matter in practice: Unicode
/// controls, format characters (Cf), separators other than ASCII space
/// (Zs/Zl/Zp) and private-use code points are not printable. (Unassigned code
/// points are treated as printable here; Go escapes them.)
fn go_is_print(c: char) -> bool {
    let u = c as u32;
    if c.is_control() {
        return false;
    }
    let not_print: &[(u32, u32)] = &[
        (0x00A0, 0x00A0),
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x1680, 0x1680),
        (0x180E, 0x180E),
        (0x2000, 0x200F),
        (0x2028, 0x202F),
        (0x205F, 0x2064),
        (0x2066, 0x206F),
        (0x3000, 0x3000),
        (0xD800, 0xF8FF),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
        (0xF0000, 0x10FFFF),
    ];
    !not_print.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ObjectFieldSelector, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const NODE: NodeAllocatable = NodeAllocatable {
        cpu_millicores: 2000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 100 << 30,
    };

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("1234-abcd".into()),
                labels: Some(BTreeMap::from([
                    ("tier".into(), "front".into()),
                    ("app".into(), "web".into()),
                ])),
                annotations: Some(BTreeMap::from([(
                    "note".into(),
                    "say \"hi\"\n\ttab\\ é \u{1} \u{200b}".into(),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some(BTreeMap::from([
                            ("cpu".into(), Quantity("500m".into())),
                            ("memory".into(), Quantity("128Mi".into())),
                        ])),
                        requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn field(path: &str, field_path: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn resource(path: &str, res: &str, divisor: Option<&str>) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some("app".into()),
                resource: res.into(),
                divisor: divisor.map(|d| Quantity(d.into())),
            }),
            ..Default::default()
        }
    }

    fn text(p: &Payload, k: &str) -> String {
        String::from_utf8(p[k].data.clone()).unwrap()
    }

    #[test]
    fn labels_and_annotations_format_like_upstream() {
        let p = payload(
            &pod(),
            &[
                field("labels", "metadata.labels"),
                field("annotations", "metadata.annotations"),
                field("name", "metadata.name"),
                field("ns", "metadata.namespace"),
                field("uid", "metadata.uid"),
                field("tier", "metadata.labels['tier']"),
            ],
            None,
            &NODE,
        )
        .unwrap();
        assert_eq!(text(&p, "labels"), "app=\"web\"\ntier=\"front\"");
        assert_eq!(
            text(&p, "annotations"),
            "note=\"say \\\"hi\\\"\\n\\ttab\\\\ é \\x01 \\u200b\""
        );
        assert_eq!(text(&p, "name"), "web");
        assert_eq!(text(&p, "ns"), "prod");
        assert_eq!(text(&p, "uid"), "1234-abcd");
        assert_eq!(text(&p, "tier"), "front");
        assert_eq!(p["labels"].mode, 0o644);
    }

    #[test]
    fn resource_fields_with_divisors_and_node_fallback() {
        let p = payload(
            &pod(),
            &[
                resource("cpu_limit", "limits.cpu", None),
                resource("cpu_limit_m", "limits.cpu", Some("1m")),
                resource("cpu_request_m", "requests.cpu", Some("1m")),
                resource("mem_limit_mi", "limits.memory", Some("1Mi")),
                resource("mem_request", "requests.memory", None),
                resource("storage_limit_gi", "limits.ephemeral-storage", Some("1Gi")),
            ],
            Some(0o400),
            &NODE,
        )
        .unwrap();
        assert_eq!(text(&p, "cpu_limit"), "1"); // 500m rounds up to 1 core
        assert_eq!(text(&p, "cpu_limit_m"), "500");
        assert_eq!(text(&p, "cpu_request_m"), "250");
        assert_eq!(text(&p, "mem_limit_mi"), "128");
        assert_eq!(text(&p, "mem_request"), (128u64 << 20).to_string());
        assert_eq!(text(&p, "storage_limit_gi"), "100");
        assert_eq!(p["cpu_limit"].mode, 0o400);
    }

    #[test]
    fn bad_items_are_errors() {
        let e = payload(&pod(), &[field("x", "spec.nodeName")], None, &NODE).unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported fieldPath \"spec.nodeName\""),
            "{e}"
        );
        let e = payload(&pod(), &[resource("x", "limits.gpu", None)], None, &NODE).unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported container resource : limits.gpu"),
            "{e}"
        );
        let mut r = resource("x", "limits.cpu", None);
        r.resource_field_ref.as_mut().unwrap().container_name = Some("nope".into());
        assert!(matches!(
            payload(&pod(), &[r], None, &NODE),
            Err(DownwardApiError::ContainerNotFound { .. })
        ));
        let mut m = field("x", "metadata.name");
        m.mode = Some(0o1777);
        assert!(matches!(
            payload(&pod(), &[m], None, &NODE),
            Err(DownwardApiError::BadMode { .. })
        ));
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(go_quote("\u{7f}\u{a0}日本"), "\"\\x7f\\u00a0日本\"");
        assert_eq!(go_quote("\u{f0000}"), "\"\\U000f0000\"");
    }
}
