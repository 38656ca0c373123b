//! Path rules shared by the drivers: the upstream directory layout under the
//! kubelet root dir, and validation of every name or relative path that comes
//! from a pod spec before it is joined onto a host path.
//!
//! Invariant: nothing from a pod spec reaches `Path::join` without passing
//! one of the validators here, so a spec cannot name a path outside the pod's
//! own directories.

use std::path::{Component, Path, PathBuf};

/// Longest payload path the atomic writer accepts (as upstream).
pub const MAX_PATH_LENGTH: usize = 4096;
/// Longest single file name the atomic writer accepts (as upstream).
pub const MAX_FILE_NAME_LENGTH: usize = 255;

/// A path or name from a pod spec that may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid path: must not be empty")]
    Empty,
    #[error("invalid path: must be relative path: {0}")]
    Absolute(String),
    #[error("invalid path: must be less than or equal to {MAX_PATH_LENGTH} characters")]
    TooLong,
    #[error("invalid path: must not contain '..': {0}")]
    Backstep(String),
    #[error(
        "invalid path: filenames must be less than or equal to {MAX_FILE_NAME_LENGTH} characters"
    )]
    NameTooLong,
    #[error("invalid path: must not start with '..': {0}")]
    DotDotPrefix(String),
    #[error("invalid name {0:?}: must be a single path component")]
    NotAName(String),
}

/// Validates a file path inside an atomic-writer volume (an `items[].path`,
/// a key used as a file name, a downwardAPI or projected path), with
/// upstream's rules: relative, no `..` component, no leading `..name`
/// (reserved for the writer's own `..data` and timestamped dirs).
pub fn validate_payload_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    if path.len() > MAX_PATH_LENGTH {
        return Err(PathError::TooLong);
    }
    let items: Vec<&str> = path.split('/').collect();
    for item in &items {
        if *item == ".." {
            return Err(PathError::Backstep(path.to_owned()));
        }
        if item.len() > MAX_FILE_NAME_LENGTH {
            return Err(PathError::NameTooLong);
        }
    }
    if items[0].starts_with("..") && items[0].len() > 2 {
        return Err(PathError::DotDotPrefix(path.to_owned()));
    }
    Ok(())
}

/// Validates a `subPath` (after `subPathExpr` expansion): relative and
/// without `..` components. Symlinks inside the volume are checked later,
/// when the path is opened.
pub fn validate_sub_path(path: &str) -> Result<(), PathError> {
    if Path::new(path).is_absolute() {
        return Err(PathError::Absolute(path.to_owned()));
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(PathError::Backstep(path.to_owned()));
    }
    Ok(())
}

/// Validates a name used as one directory level (pod UID, volume name,
/// container name, plugin dir name).
pub fn validate_name(name: &str) -> Result<(), PathError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(PathError::NotAName(name.to_owned()));
    }
    Ok(())
}

/// `kubernetes.io/empty-dir` -> `kubernetes.io~empty-dir`, as upstream names
/// plugin directories on disk.
pub fn escape_plugin_name(name: &str) -> String {
    name.replace('/', "~")
}

/// The inverse of [`escape_plugin_name`].
pub fn unescape_plugin_name(dir: &str) -> String {
    dir.replace('~', "/")
}

/// The on-disk layout under the kubelet root dir (`--root-dir`), as upstream.
#[derive(Debug, Clone)]
pub struct PodDirs {
    root: PathBuf,
}

impl PodDirs {
    pub fn new(root_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: root_dir.into(),
        }
    }

    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// `<root>/pods`
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// `<root>/pods/<uid>`
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir().join(uid)
    }

    /// `<root>/pods/<uid>/volumes`
    pub fn pod_volumes_dir(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes")
    }

    /// `<root>/pods/<uid>/volumes/<escaped plugin>`
    pub fn plugin_dir(&self, uid: &str, plugin: &str) -> PathBuf {
        self.pod_volumes_dir(uid).join(escape_plugin_name(plugin))
    }

    /// `<root>/pods/<uid>/volumes/<escaped plugin>/<volume>`
    pub fn volume_dir(&self, uid: &str, plugin: &str, volume: &str) -> PathBuf {
        self.plugin_dir(uid, plugin).join(volume)
    }

    /// `<root>/pods/<uid>/containers/<container>/<instance>`: the host file
    /// mounted at a container instance's `terminationMessagePath`.
    pub fn container_termination_log(&self, uid: &str, container: &str, instance: &str) -> PathBuf {
        self.pod_dir(uid)
            .join("containers")
            .join(container)
            .join(instance)
    }

    /// `<root>/pods/<uid>/volume-subpaths`
    pub fn subpaths_dir(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("volume-subpaths")
    }

    /// `<root>/pods/<uid>/volume-subpaths/<volume>/<container>/<mount index>`
    pub fn subpath_target(
        &self,
        uid: &str,
        volume: &str,
        container: &str,
        index: usize,
    ) -> PathBuf {
        self.subpaths_dir(uid)
            .join(volume)
            .join(container)
            .join(index.to_string())
    }

    /// `<root>/plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<volume>`:
    /// where an attachable FlexVolume driver mounts the device.
    pub fn flex_device_mount_path(&self, driver: &str, volume: &str) -> PathBuf {
        self.root
            .join("plugins/kubernetes.io/flexvolume")
            .join(driver)
            .join("mounts")
            .join(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_paths() {
        for ok in ["a", "a/b/c", ".hidden", "..", "a..b", "a/..b"] {
            // ".." alone is a backstep; the rest are fine.
            if ok == ".." {
                assert_eq!(
                    validate_payload_path(ok),
                    Err(PathError::Backstep("..".into()))
                );
            } else {
                assert_eq!(validate_payload_path(ok), Ok(()), "{ok}");
            }
        }
        assert_eq!(validate_payload_path(""), Err(PathError::Empty));
        assert_eq!(
            validate_payload_path("/etc/passwd"),
            Err(PathError::Absolute("/etc/passwd".into()))
        );
        assert_eq!(
            validate_payload_path("a/../../b"),
            Err(PathError::Backstep("a/../../b".into()))
        );
        assert_eq!(
            validate_payload_path("..data"),
            Err(PathError::DotDotPrefix("..data".into()))
        );
        assert_eq!(
            validate_payload_path(&"x".repeat(256)),
            Err(PathError::NameTooLong)
        );
        assert_eq!(
            validate_payload_path(&"x/".repeat(2100)),
            Err(PathError::TooLong)
        );
        assert_eq!(
            validate_payload_path("/x").unwrap_err().to_string(),
            "invalid path: must be relative path: /x"
        );
    }

    #[test]
    fn sub_paths_and_names() {
        assert!(validate_sub_path("a/b").is_ok());
        assert!(validate_sub_path("a/./b").is_ok());
        assert!(validate_sub_path("..a").is_ok());
        assert!(matches!(
            validate_sub_path("/a"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            validate_sub_path("a/../../etc"),
            Err(PathError::Backstep(_))
        ));
        assert!(validate_name("vol-1").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layout_matches_upstream() {
        let d = PodDirs::new("/var/lib/kubelet");
        assert_eq!(
            d.volume_dir("u1", "kubernetes.io/empty-dir", "cache"),
            Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache")
        );
        assert_eq!(
            d.subpath_target("u1", "cache", "app", 2),
            Path::new("/var/lib/kubelet/pods/u1/volume-subpaths/cache/app/2")
        );
        assert_eq!(
            d.flex_device_mount_path("acme/nfs", "data"),
            Path::new("/var/lib/kubelet/plugins/kubernetes.io/flexvolume/acme/nfs/mounts/data")
        );
        assert_eq!(unescape_plugin_name("acme~nfs"), "acme/nfs");
    }
}
