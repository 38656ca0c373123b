//! emptyDir volumes: a directory under the pod dir, or with `medium:
//! Memory` a tmpfs sized min(`sizeLimit`, pod memory limit, node allocatable
//! memory) as upstream sizes memory-backed volumes. The same sizing applies
//! to the tmpfs under secret and projected volumes.
//!
//! [`disk_usage`] measures what a volume holds (what `du` would report), for
//! eviction against `sizeLimit`.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{QuantityError, parse_quantity};
use crate::resources::{NodeAllocatable, pod_memory_limit};

/// Directory mode of an emptyDir (any container user may write), as upstream.
pub const EMPTY_DIR_MODE: u32 = 0o777;

/// `emptyDir.medium`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMedium {
    /// `""`: the node's disk (the kubelet root dir's file system).
    Default,
    /// `Memory`: tmpfs.
    Memory,
}

/// An emptyDir that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmptyDirError {
    #[error("unsupported emptyDir medium {0:?}")]
    UnsupportedMedium(String),
    #[error("invalid sizeLimit")]
    SizeLimit(#[source] QuantityError),
    #[error("invalid pod memory limit")]
    PodLimit(#[source] QuantityError),
}

impl StorageMedium {
    pub fn parse(medium: Option<&str>) -> Result<Self, EmptyDirError> {
        match medium.unwrap_or("") {
            "" => Ok(Self::Default),
            "Memory" => Ok(Self::Memory),
            other => Err(EmptyDirError::UnsupportedMedium(other.to_owned())),
        }
    }
}

/// The size of a memory-backed volume: node allocatable memory, lowered to
/// the pod's memory limit and to `sizeLimit` when those are set and smaller.
pub fn memory_volume_size(
    size_limit: Option<&Quantity>,
    pod: &Pod,
    node: &NodeAllocatable,
) -> Result<u64, EmptyDirError> {
    let mut size = node.memory_bytes as i128;
    if let Some(pod_limit) = pod_memory_limit(pod).map_err(EmptyDirError::PodLimit)? {
        size = size.min(pod_limit.value());
    }
    if let Some(limit) = size_limit {
        let l = parse_quantity(limit)
            .map_err(EmptyDirError::SizeLimit)?
            .value();
        if l > 0 {
            size = size.min(l);
        }
    }
    Ok(size.max(0) as u64)
}

/// `sizeLimit` in bytes, when set.
pub fn size_limit_bytes(size_limit: Option<&Quantity>) -> Result<Option<u64>, EmptyDirError> {
    size_limit
        .map(|q| {
            parse_quantity(q)
                .map(|a| a.value().max(0) as u64)
                .map_err(EmptyDirError::SizeLimit)
        })
        .transpose()
}

/// Bytes allocated below `path` on its file system (512-byte blocks, each
/// hard-linked inode counted once, other mounts not entered), like `du -sx`.
pub fn disk_usage(path: &Path) -> std::io::Result<u64> {
    let root = fs::symlink_metadata(path)?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut total = root.blocks() * 512;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // Removed while walking: nothing to count.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use std::collections::BTreeMap;

    const NODE: NodeAllocatable = NodeAllocatable {
        cpu_millicores: 1000,
        memory_bytes: 1 << 30,
        ephemeral_storage_bytes: 1 << 40,
    };

    fn pod(limit: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: limit.map(|l| ResourceRequirements {
                        limits: Some(BTreeMap::from([("memory".into(), Quantity(l.into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn memory_size_is_the_smallest_bound() {
        let q = |s: &str| Quantity(s.into());
        assert_eq!(
            memory_volume_size(None, &pod(None), &NODE).unwrap(),
            1 << 30
        );
        assert_eq!(
            memory_volume_size(None, &pod(Some("256Mi")), &NODE).unwrap(),
            256 << 20
        );
        assert_eq!(
            memory_volume_size(Some(&q("64Mi")), &pod(Some("256Mi")), &NODE).unwrap(),
            64 << 20
        );
        assert_eq!(
            memory_volume_size(Some(&q("4Gi")), &pod(None), &NODE).unwrap(),
            1 << 30
        );
        assert!(StorageMedium::parse(Some("HugePages")).is_err());
    }

    #[test]
    fn disk_usage_counts_blocks_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        let before = disk_usage(dir.path()).unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("sub/b")).unwrap();
        let after = disk_usage(dir.path()).unwrap();
        let grew = after - before;
        // One 64 KiB file (hard-linked twice) plus a directory.
        assert!((64 * 1024..2 * 64 * 1024).contains(&grew), "{grew}");
    }
}
