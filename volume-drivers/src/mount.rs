//! The privileged seam: every mount and unmount the drivers do goes through
//! [`Mounter`], so the driver logic is unit-tested with [`FakeMounter`]
//! and only [`NixMounter`] touches the kernel.
//!
//! Invariant: a driver asks the mounter which paths are mount points instead
//! of guessing from `st_dev` (a bind mount of the same filesystem has the same
//! device), so the answer for a bind mount is right.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

/// A failed mount operation, with the paths it was about.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) of a tmpfs failed.
    #[error("mounting tmpfs (size {size:?}) at {target}")]
    Tmpfs {
        target: PathBuf,
        size: Option<u64>,
        #[source]
        source: std::io::Error,
    },
    /// A bind mount (or its read-only remount) failed.
    #[error("bind-mounting {source_path} at {target}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// umount(2) failed.
    #[error("unmounting {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The mount table could not be read.
    #[error("reading the mount table {path}")]
    MountTable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The mount operations the volume drivers need, and nothing more.
pub trait Mounter: Send + Sync + fmt::Debug {
    /// Mounts a new tmpfs at `target` (an existing directory), limited to
    /// `size_bytes` when given.
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), MountError>;
    /// Bind-mounts `source` (a path, or a `/proc/self/fd/N` link of a file
    /// descriptor the caller holds open) at `target`; read-only when asked.
    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError>;
    /// Unmounts the mount at `target` (the topmost one when stacked).
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// Every mount point of this mount namespace, in mount order.
    fn mount_points(&self) -> Result<Vec<PathBuf>, MountError>;

    /// Whether `path` is a mount point.
    fn is_mount_point(&self, path: &Path) -> Result<bool, MountError> {
        Ok(self.mount_points()?.iter().any(|m| m == path))
    }

    /// Mount points at or below `dir`, deepest first (the order to unmount them).
    fn mount_points_under(&self, dir: &Path) -> Result<Vec<PathBuf>, MountError> {
        let mut found: Vec<PathBuf> = self
            .mount_points()?
            .into_iter()
            .filter(|m| m.starts_with(dir))
            .collect();
        // Later mounts may sit on top of earlier ones at the same path: reverse
        // mount order first, then deepest path first (a stable sort keeps it).
        found.reverse();
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        Ok(found)
    }
}

impl<M: Mounter + ?Sized> Mounter for std::sync::Arc<M> {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), MountError> {
        (**self).mount_tmpfs(target, size_bytes)
    }
    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        (**self).bind_mount(source, target, read_only)
    }
    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        (**self).unmount(target)
    }
    fn mount_points(&self) -> Result<Vec<PathBuf>, MountError> {
        (**self).mount_points()
    }
}

/// The real mounter: mount(2)/umount(2) through `nix`, mount points from
/// `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct NixMounter {
    mountinfo: PathBuf,
}

impl Default for NixMounter {
    fn default() -> Self {
        Self {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

impl Mounter for NixMounter {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), MountError> {
        let data = size_bytes.map(|s| format!("size={s}"));
        nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            // No nosuid/nodev: upstream mounts memory-backed volumes with
            // only a size, and containers may rely on that.
            MsFlags::empty(),
            data.as_deref(),
        )
        .map_err(|e| MountError::Tmpfs {
            target: target.to_owned(),
            size: size_bytes,
            source: e.into(),
        })
    }

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let err = |e: nix::Error| MountError::Bind {
            source_path: source.to_owned(),
            target: target.to_owned(),
            source: e.into(),
        };
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err)?;
        if read_only {
            // MS_RDONLY is ignored on the first bind; it takes a remount.
            let remount = nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            if let Err(e) = remount {
                let _ = nix::mount::umount2(target, MntFlags::empty());
                return Err(err(e));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        nix::mount::umount2(target, MntFlags::empty()).map_err(|e| MountError::Unmount {
            target: target.to_owned(),
            source: e.into(),
        })
    }

    fn mount_points(&self) -> Result<Vec<PathBuf>, MountError> {
        let text =
            std::fs::read_to_string(&self.mountinfo).map_err(|source| MountError::MountTable {
                path: self.mountinfo.clone(),
                source,
            })?;
        Ok(parse_mountinfo(&text))
    }
}

/// The mount points (field 5) of a `/proc/<pid>/mountinfo` text, unescaped.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount paths as
/// `\ooo` octal escapes.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One operation seen by the [`FakeMounter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    Tmpfs {
        target: PathBuf,
        size: Option<u64>,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    Unmount {
        target: PathBuf,
    },
}

#[derive(Debug, Default)]
struct FakeState {
    mounted: Vec<PathBuf>,
    calls: Vec<MountCall>,
    fail_targets: Vec<PathBuf>,
}

/// A mounter that records calls and keeps a mount table in memory, for unit
/// tests without root. It mounts nothing: files written "into" a fake tmpfs
/// land in the plain directory.
#[derive(Debug, Default)]
pub struct FakeMounter {
    state: Mutex<FakeState>,
}

impl FakeMounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<MountCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Paths currently mounted, in mount order.
    pub fn mounted(&self) -> Vec<PathBuf> {
        self.state.lock().unwrap().mounted.clone()
    }

    /// Makes every later mount at `target` fail with EPERM.
    pub fn fail_mounts_at(&self, target: &Path) {
        self.state
            .lock()
            .unwrap()
            .fail_targets
            .push(target.to_owned());
    }

    fn mount(&self, call: MountCall, target: &Path) -> Result<(), std::io::Error> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(call);
        if s.fail_targets.iter().any(|t| t == target) {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        if !target.exists() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        }
        s.mounted.push(target.to_owned());
        Ok(())
    }
}

impl Mounter for FakeMounter {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), MountError> {
        let call = MountCall::Tmpfs {
            target: target.to_owned(),
            size: size_bytes,
        };
        self.mount(call, target)
            .map_err(|source| MountError::Tmpfs {
                target: target.to_owned(),
                size: size_bytes,
                source,
            })
    }

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let call = MountCall::Bind {
            source: source.to_owned(),
            target: target.to_owned(),
            read_only,
        };
        self.mount(call, target).map_err(|e| MountError::Bind {
            source_path: source.to_owned(),
            target: target.to_owned(),
            source: e,
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(MountCall::Unmount {
            target: target.to_owned(),
        });
        match s.mounted.iter().rposition(|m| m == target) {
            Some(i) => {
                s.mounted.remove(i);
                Ok(())
            }
            None => Err(MountError::Unmount {
                target: target.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            }),
        }
    }

    fn mount_points(&self) -> Result<Vec<PathBuf>, MountError> {
        Ok(self.state.lock().unwrap().mounted.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_and_escapes() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 22 0:50 / /var/lib/kubelet/pods/u/volumes/a\\040b rw - tmpfs tmpfs rw,size=1024k\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/var/lib/kubelet/pods/u/volumes/a b")
            ]
        );
    }

    #[test]
    fn fake_mounter_orders_mounts_under_a_dir_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let ab = a.join("b");
        std::fs::create_dir_all(&ab).unwrap();
        let m = FakeMounter::new();
        m.mount_tmpfs(&a, Some(1)).unwrap();
        m.bind_mount(Path::new("/x"), &ab, true).unwrap();
        m.mount_tmpfs(&a, None).unwrap();
        let under = m.mount_points_under(dir.path()).unwrap();
        assert_eq!(under, vec![ab.clone(), a.clone(), a.clone()]);
        for p in &under {
            m.unmount(p).unwrap();
        }
        assert!(m.mounted().is_empty());
        assert!(m.unmount(&a).is_err());
    }
}
