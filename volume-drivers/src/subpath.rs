//! `subPath`/`subPathExpr` mounts, opened safely as upstream does since the
//! fix for CVE-2017-1002101: the path is resolved once, checked to lie inside
//! the volume, then opened component by component with `openat(O_PATH |
//! O_NOFOLLOW)` from the volume root, and the bind mount is made from the
//! opened descriptor (`/proc/self/fd/N`), never from the path. A symlink
//! swapped in between the check and the mount is therefore never followed.
//!
//! Also here: `$(VAR)` expansion of `subPathExpr` and the `mountPropagation`
//! mapping to CRI values.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

use crate::mount::{MountError, Mounter};
use crate::paths::{PathError, validate_sub_path};

/// A subPath that cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    #[error("subPath {0:?}")]
    Invalid(String, #[source] PathError),
    #[error("subpath {sub_path:?} not within volume path {volume:?}")]
    OutsideVolume { sub_path: PathBuf, volume: PathBuf },
    #[error("opening {path} without following symlinks")]
    SafeOpen {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is a symlink")]
    Symlink { path: PathBuf },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind-mounting subpath {sub_path} at {target}")]
    Mount {
        sub_path: PathBuf,
        target: PathBuf,
        #[source]
        source: MountError,
    },
    #[error(
        "subpath mount at {target} does not show the opened {sub_path} (swapped during the mount?)"
    )]
    Verify { sub_path: PathBuf, target: PathBuf },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SubPathError {
    let path = path.to_owned();
    move |source| SubPathError::Io { what, path, source }
}

/// Expands `$(VAR)` references from `env` as Kubernetes does: `$$` is a
/// literal `$`, an undefined `$(VAR)` stays as written.
pub fn expand(expr: &str, env: &HashMap<String, String>) -> String {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut checkpoint = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&expr[checkpoint..i]);
            let rest = &expr[i + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match env.get(name) {
                            Some(v) => out.push_str(v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    let c = rest.chars().next().unwrap_or_default();
                    out.push('$');
                    out.push(c);
                    c.len_utf8()
                }
            };
            i += 1 + advance;
            checkpoint = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&expr[checkpoint.min(expr.len())..]);
    out
}

/// `volumeMounts[].mountPropagation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountPropagation {
    /// `None` or unset: CRI `PROPAGATION_PRIVATE`.
    #[default]
    Private,
    /// `HostToContainer`: CRI `PROPAGATION_HOST_TO_CONTAINER` (rslave).
    HostToContainer,
    /// `Bidirectional`: CRI `PROPAGATION_BIDIRECTIONAL` (rshared); privileged
    /// containers only.
    Bidirectional,
}

impl MountPropagation {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("None") => Ok(Self::Private),
            Some("HostToContainer") => Ok(Self::HostToContainer),
            Some("Bidirectional") => Ok(Self::Bidirectional),
            Some(other) => Err(format!("invalid mount propagation mode {other:?}")),
        }
    }

    /// The `runtime.v1.MountPropagation` enum value.
    pub fn cri_value(self) -> i32 {
        match self {
            Self::Private => 0,
            Self::HostToContainer => 1,
            Self::Bidirectional => 2,
        }
    }
}

fn nofollow_open(dirfd: impl AsFd, name: &Path, full: &Path) -> Result<OwnedFd, SubPathError> {
    openat(
        dirfd,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| SubPathError::SafeOpen {
        path: full.to_owned(),
        source,
    })
}

/// Opens `path` (which must lie under `base`) one component at a time from
/// `base` without following any symlink. `base` itself must not be a symlink.
pub fn safe_open(base: &Path, path: &Path) -> Result<OwnedFd, SubPathError> {
    let rel = path
        .strip_prefix(base)
        .map_err(|_| SubPathError::OutsideVolume {
            sub_path: path.to_owned(),
            volume: base.to_owned(),
        })?;
    let mut fd = nix::fcntl::open(
        base,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| SubPathError::SafeOpen {
        path: base.to_owned(),
        source,
    })?;
    let mut current = base.to_owned();
    for c in rel.components() {
        match c {
            Component::Normal(seg) => {
                current.push(seg);
                fd = nofollow_open(&fd, Path::new(seg), &current)?;
            }
            Component::CurDir => {}
            _ => {
                return Err(SubPathError::OutsideVolume {
                    sub_path: path.to_owned(),
                    volume: base.to_owned(),
                });
            }
        }
    }
    let st = fstat(&fd).map_err(|source| SubPathError::SafeOpen {
        path: path.to_owned(),
        source,
    })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
        return Err(SubPathError::Symlink {
            path: path.to_owned(),
        });
    }
    Ok(fd)
}

/// Creates the missing directories of `base/sub_path` with `mode`, each by
/// `mkdirat` under a descriptor opened without following symlinks.
fn safe_make_dir(base: &Path, sub_path: &Path, mode: u32) -> Result<(), SubPathError> {
    let full = base.join(sub_path);
    // The longest prefix that exists already.
    let mut existing = full.clone();
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    while fs::symlink_metadata(&existing).is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name.to_owned());
                existing = parent.to_owned();
            }
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let resolved = fs::canonicalize(&existing).map_err(io("resolving", &existing))?;
    if !resolved.starts_with(base) {
        return Err(SubPathError::OutsideVolume {
            sub_path: full,
            volume: base.to_owned(),
        });
    }
    let mut fd = safe_open(base, &resolved)?;
    let mut current = resolved;
    for name in missing.iter().rev() {
        current.push(name);
        match mkdirat(&fd, name.as_os_str(), Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => {
                return Err(SubPathError::SafeOpen {
                    path: current,
                    source,
                });
            }
        }
        fd = nofollow_open(&fd, Path::new(name), &current)?;
    }
    Ok(())
}

/// Bind-mounts `sub_path` of the volume at `volume_path` onto `target`
/// (`<pod>/volume-subpaths/<volume>/<container>/<index>`), creating the
/// subpath as a directory (with the volume's mode) when it does not exist.
/// Returns `target`, the host path to give the CRI.
pub fn bind_sub_path(
    mounter: &dyn Mounter,
    volume_path: &Path,
    sub_path: &str,
    target: &Path,
) -> Result<PathBuf, SubPathError> {
    validate_sub_path(sub_path).map_err(|e| SubPathError::Invalid(sub_path.to_owned(), e))?;
    let base = fs::canonicalize(volume_path).map_err(io("resolving the volume", volume_path))?;
    let full = base.join(sub_path);
    if fs::symlink_metadata(&full).is_err() {
        let mode = fs::metadata(&base)
            .map_err(io("inspecting", &base))?
            .permissions()
            .mode()
            & 0o7777;
        safe_make_dir(&base, Path::new(sub_path), mode)?;
    }
    let resolved = fs::canonicalize(&full).map_err(io("resolving", &full))?;
    if !resolved.starts_with(&base) {
        return Err(SubPathError::OutsideVolume {
            sub_path: full,
            volume: base,
        });
    }
    let fd = safe_open(&base, &resolved)?;
    let st = fstat(&fd).map_err(|source| SubPathError::SafeOpen {
        path: resolved.clone(),
        source,
    })?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;

    let verify = |t: &Path| {
        fs::metadata(t)
            .map(|m| m.dev() == st.st_dev && m.ino() == st.st_ino)
            .unwrap_or(false)
    };
    if mounter
        .is_mount_point(target)
        .map_err(|source| SubPathError::Mount {
            sub_path: resolved.clone(),
            target: target.to_owned(),
            source,
        })?
    {
        if verify(target) {
            return Ok(target.to_owned());
        }
        // A stale bind from an earlier, different subpath: replace it.
        mounter
            .unmount(target)
            .map_err(|source| SubPathError::Mount {
                sub_path: resolved.clone(),
                target: target.to_owned(),
                source,
            })?;
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    if is_dir {
        match fs::create_dir(target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io("creating", target)(e));
            }
            _ => {}
        }
        fs::set_permissions(target, fs::Permissions::from_mode(0o750))
            .map_err(io("setting the mode of", target))?;
    } else if fs::symlink_metadata(target).is_err() {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map_err(io("creating", target))?;
    }
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    mounter
        .bind_mount(&proc_path, target, false)
        .map_err(|source| SubPathError::Mount {
            sub_path: resolved.clone(),
            target: target.to_owned(),
            source,
        })?;
    drop(fd);
    Ok(target.to_owned())
}

/// Checks that a real bind mount at `target` shows the object opened from
/// `sub_path` (device and inode). Used after [`bind_sub_path`] with a real
/// mounter; a fake one mounts nothing, so this is separate.
pub fn verify_bind(sub_path: &Path, target: &Path) -> Result<(), SubPathError> {
    let a = fs::metadata(sub_path).map_err(io("inspecting", sub_path))?;
    let b = fs::metadata(target).map_err(io("inspecting", target))?;
    if a.dev() == b.dev() && a.ino() == b.ino() {
        Ok(())
    } else {
        Err(SubPathError::Verify {
            sub_path: sub_path.to_owned(),
            target: target.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::{FakeMounter, MountCall};

    #[test]
    fn expansion_like_kubernetes() {
        let env = HashMap::from([
            ("POD_NAME".to_owned(), "web-0".to_owned()),
            ("NS".to_owned(), "prod".to_owned()),
        ]);
        assert_eq!(expand("logs/$(POD_NAME)", &env), "logs/web-0");
        assert_eq!(expand("$(NS)/$(POD_NAME)", &env), "prod/web-0");
        assert_eq!(expand("$(MISSING)/x", &env), "$(MISSING)/x");
        assert_eq!(expand("$$(POD_NAME)", &env), "$(POD_NAME)");
        assert_eq!(expand("a$b", &env), "a$b");
        assert_eq!(expand("tail$", &env), "tail$");
        assert_eq!(expand("open$(POD_NAME", &env), "open$(POD_NAME");
    }

    #[test]
    fn propagation_maps_to_cri() {
        assert_eq!(MountPropagation::parse(None).unwrap().cri_value(), 0);
        assert_eq!(
            MountPropagation::parse(Some("None")).unwrap().cri_value(),
            0
        );
        assert_eq!(
            MountPropagation::parse(Some("HostToContainer"))
                .unwrap()
                .cri_value(),
            1
        );
        assert_eq!(
            MountPropagation::parse(Some("Bidirectional"))
                .unwrap()
                .cri_value(),
            2
        );
        assert!(MountPropagation::parse(Some("Shared")).is_err());
    }

    #[test]
    fn safe_open_refuses_symlink_components() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(base.join("real/inner")).unwrap();
        std::os::unix::fs::symlink("real", base.join("link")).unwrap();
        assert!(safe_open(&base, &base.join("real/inner")).is_ok());
        // Through a symlink component: ENOTDIR/ELOOP, not a follow.
        assert!(safe_open(&base, &base.join("link/inner")).is_err());
        // The final component a symlink: refused too.
        assert!(matches!(
            safe_open(&base, &base.join("link")),
            Err(SubPathError::Symlink { .. })
        ));
        assert!(safe_open(&base, Path::new("/etc")).is_err());
    }

    #[test]
    fn bind_sub_path_escape_and_create() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir(&vol).unwrap();
        fs::set_permissions(&vol, fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("escape")).unwrap();
        std::os::unix::fs::symlink("../..", vol.join("up")).unwrap();
        let m = FakeMounter::new();
        let target = dir.path().join("subpaths/vol/app/0");

        for bad in ["escape", "up", "up/etc", "escape/passwd"] {
            let e = bind_sub_path(&m, &vol, bad, &target).unwrap_err();
            assert!(
                matches!(e, SubPathError::OutsideVolume { .. }),
                "{bad}: {e}"
            );
        }
        assert!(matches!(
            bind_sub_path(&m, &vol, "../x", &target),
            Err(SubPathError::Invalid(..))
        ));
        assert!(matches!(
            bind_sub_path(&m, &vol, "/etc", &target),
            Err(SubPathError::Invalid(..))
        ));
        assert!(m.calls().is_empty(), "nothing mounted for refused subpaths");

        // A missing subpath is created with the volume's mode, then bound.
        let t = bind_sub_path(&m, &vol, "data/logs", &target).unwrap();
        assert_eq!(t, target);
        let created = vol.join("data/logs");
        assert!(created.is_dir());
        assert_eq!(
            fs::metadata(&created).unwrap().permissions().mode() & 0o777,
            0o777 & !current_umask()
        );
        match &m.calls()[..] {
            [
                MountCall::Bind {
                    source,
                    target: t,
                    read_only: false,
                },
            ] => {
                assert!(source.starts_with("/proc/self/fd/"), "{source:?}");
                assert_eq!(t, &target);
            }
            other => panic!("{other:?}"),
        }

        // A file subpath gets a file target.
        fs::write(vol.join("app.conf"), "x").unwrap();
        let ft = dir.path().join("subpaths/vol/app/1");
        bind_sub_path(&m, &vol, "app.conf", &ft).unwrap();
        assert!(ft.is_file());
    }

    fn current_umask() -> u32 {
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(old);
        old.bits()
    }
}
