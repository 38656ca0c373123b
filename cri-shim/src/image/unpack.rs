//! Unpacks one layer tar into its own directory, in the form overlayfs reads
//! as a `lowerdir`.
//!
//! OCI whiteouts become overlayfs whiteouts: `.wh.<name>` turns into a 0/0
//! character device `<name>`, and `.wh..wh..opq` marks its directory opaque
//! (`trusted.overlay.opaque=y`). Those, device nodes and ownership need
//! privileges, so they go through [`LayerFs`]; everything else is plain file
//! I/O. Invariant: nothing is ever written outside the layer directory: paths
//! with `..` and paths that pass through a symlink are refused.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Prefix of OCI whiteout files.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Marks the directory it is in as opaque.
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// Prefix of AUFS metadata (`.wh..wh.plnk`, ...), which is not content.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// Errors unpacking a layer. The layer digest is added by the caller.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream could not be read (truncated or corrupt).
    #[error("reading layer tar: {0}")]
    Read(#[source] io::Error),
    /// An entry path leaves the layer root (`..`).
    #[error("entry {path:?} escapes the layer root")]
    UnsafePath {
        /// The path as stored in the tar.
        path: PathBuf,
    },
    /// An entry path goes through a symlink, which could point outside the layer.
    #[error("entry {path:?} goes through the symlink {symlink:?}")]
    SymlinkInPath {
        /// The path as stored in the tar.
        path: PathBuf,
        /// The symlink, relative to the layer root.
        symlink: PathBuf,
    },
    /// A hard link names a file that is not in this layer.
    #[error("hard link {path:?} points to {target:?}, which is not in this layer")]
    HardlinkTarget {
        /// The link, relative to the layer root.
        path: PathBuf,
        /// Its target, relative to the layer root.
        target: PathBuf,
    },
    /// Writing to the layer directory failed.
    #[error("{op} {path}: {source}")]
    Write {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// Kind of a special file created by [`LayerFs::mknod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// The privileged filesystem operations of unpacking, so that the unpack
/// logic runs without root against a recording double.
pub trait LayerFs: Send + Sync {
    /// Creates an overlayfs whiteout at `path` (which does not exist).
    fn whiteout(&self, path: &Path) -> io::Result<()>;
    /// Marks the existing directory `dir` opaque for overlayfs.
    fn set_opaque(&self, dir: &Path) -> io::Result<()>;
    /// Creates a device node or FIFO at `path` (which does not exist).
    fn mknod(
        &self,
        path: &Path,
        kind: NodeKind,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> io::Result<()>;
    /// Sets the owner of `path` without following a symlink.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
}

/// The real operations, for overlayfs mounted by root (hence `trusted.` xattrs).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLayerFs;

impl LayerFs for HostLayerFs {
    fn whiteout(&self, path: &Path) -> io::Result<()> {
        self.mknod(path, NodeKind::Char, 0, 0, 0)
    }

    fn set_opaque(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let name = c"trusted.overlay.opaque";
        let value = b"y";
        // SAFETY: `path` and `name` are NUL-terminated strings that outlive the
        // call, and `value` points to `value.len()` readable bytes.
        let rc = unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn mknod(
        &self,
        path: &Path,
        kind: NodeKind,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> io::Result<()> {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let kind = match kind {
            NodeKind::Char => SFlag::S_IFCHR,
            NodeKind::Block => SFlag::S_IFBLK,
            NodeKind::Fifo => SFlag::S_IFIFO,
        };
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        mknod(path, kind, perm, makedev(major, minor)).map_err(io::Error::from)
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }
}

/// A directory whose mode and mtime are applied after all its children
/// exist: a read-only mode would otherwise stop us creating them (without
/// root), and every child created would move the mtime.
struct DeferredDir {
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

/// Unpacks the (uncompressed) layer tar `tar` into `dest`, which must be an
/// empty, existing directory. The caller verifies the diff ID over the bytes read.
pub fn unpack_layer(
    tar: impl Read,
    dest: &Path,
    layer_fs: &dyn LayerFs,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(tar);
    let mut deferred: Vec<DeferredDir> = Vec::new();
    let mut seen_dirs: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw_path = entry.path().map_err(UnpackError::Read)?.into_owned();
        let Some(rel) = sanitize(&raw_path)? else {
            // The layer root itself ("./"): its directory is ours, not the image's.
            continue;
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        ensure_dirs(dest, parent_rel, &raw_path)?;
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dest.join(&rel);

        if file_name == WHITEOUT_OPAQUE {
            let dir = dest.join(parent_rel);
            layer_fs
                .set_opaque(&dir)
                .map_err(write_err("marking opaque", &dir))?;
            continue;
        }
        if file_name.starts_with(WHITEOUT_META_PREFIX) {
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let target = dest.join(parent_rel).join(hidden);
            remove_existing(&target)?;
            layer_fs
                .whiteout(&target)
                .map_err(write_err("creating whiteout", &target))?;
            continue;
        }

        let header = entry.header();
        let mode = header.mode().map_err(UnpackError::Read)? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(UnpackError::Read)?).unwrap_or(u32::MAX);
        let gid = u32::try_from(header.gid().map_err(UnpackError::Read)?).unwrap_or(u32::MAX);
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();

        if kind.is_dir() {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    remove_existing(&path)?;
                    create_dir(&path)?;
                }
                Err(_) => create_dir(&path)?,
            }
            layer_fs
                .lchown(&path, uid, gid)
                .map_err(write_err("changing owner of", &path))?;
            // A directory listed twice keeps the last header, as tar does.
            if seen_dirs.insert(rel.clone()) {
                deferred.push(DeferredDir { path, mode, mtime });
            } else if let Some(d) = deferred.iter_mut().find(|d| d.path == path) {
                d.mode = mode;
                d.mtime = mtime;
            }
            continue;
        }

        remove_existing(&path)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(write_err("creating", &path))?;
                io::copy(&mut entry, &mut file).map_err(|source| {
                    // A short read is the archive's fault, a failed write ours;
                    // both leave this layer unusable, so either way it is an error.
                    UnpackError::Write {
                        op: "writing",
                        path: path.clone(),
                        source,
                    }
                })?;
                layer_fs
                    .lchown(&path, uid, gid)
                    .map_err(write_err("changing owner of", &path))?;
                // After chown, which clears set-id bits.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(write_err("setting mode of", &path))?;
                set_mtime(&file, mtime).map_err(write_err("setting mtime of", &path))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(write_err("creating symlink", &path))?;
                layer_fs
                    .lchown(&path, uid, gid)
                    .map_err(write_err("changing owner of", &path))?;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_rel = sanitize(&raw_target)?.unwrap_or_default();
                if let Some(parent) = target_rel.parent() {
                    ensure_no_symlink(dest, parent, &raw_target)?;
                }
                let target = dest.join(&target_rel);
                let linkable = fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir());
                if !linkable {
                    return Err(UnpackError::HardlinkTarget {
                        path: rel,
                        target: target_rel,
                    });
                }
                fs::hard_link(&target, &path).map_err(write_err("creating hard link", &path))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let node = match kind {
                    tar::EntryType::Char => NodeKind::Char,
                    tar::EntryType::Block => NodeKind::Block,
                    _ => NodeKind::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                layer_fs
                    .mknod(&path, node, mode, u64::from(major), u64::from(minor))
                    .map_err(write_err("creating device node", &path))?;
                layer_fs
                    .lchown(&path, uid, gid)
                    .map_err(write_err("changing owner of", &path))?;
            }
            // Global pax headers and other metadata-only entries carry no file.
            _ => {}
        }
    }

    // Children before parents, so that a parent's mtime is the last one set.
    for dir in deferred.iter().rev() {
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))
            .map_err(write_err("setting mode of", &dir.path))?;
        let handle = File::open(&dir.path).map_err(write_err("opening", &dir.path))?;
        set_mtime(&handle, dir.mtime).map_err(write_err("setting mtime of", &dir.path))?;
    }
    Ok(())
}

fn write_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Write {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The entry path relative to the layer root, or `None` for the root itself.
fn sanitize(raw: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut rel = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::UnsafePath {
                    path: raw.to_path_buf(),
                });
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Creates the missing directories of `rel_dir` under `root` (layers may
/// leave parents out), refusing to pass through a symlink.
fn ensure_dirs(root: &Path, rel_dir: &Path, raw: &Path) -> Result<(), UnpackError> {
    let mut dir = root.to_path_buf();
    let mut rel = PathBuf::new();
    for component in rel_dir.components() {
        dir.push(component);
        rel.push(component);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(UnpackError::SymlinkInPath {
                    path: raw.to_path_buf(),
                    symlink: rel,
                });
            }
            // A file where a later entry needs a directory: the later entry wins.
            Ok(_) => {
                remove_existing(&dir)?;
                create_dir(&dir)?;
            }
            Err(_) => create_dir(&dir)?,
        }
    }
    Ok(())
}

fn ensure_no_symlink(root: &Path, rel_dir: &Path, raw: &Path) -> Result<(), UnpackError> {
    let mut dir = root.to_path_buf();
    let mut rel = PathBuf::new();
    for component in rel_dir.components() {
        dir.push(component);
        rel.push(component);
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(UnpackError::SymlinkInPath {
                path: raw.to_path_buf(),
                symlink: rel,
            });
        }
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), UnpackError> {
    fs::create_dir(path).map_err(write_err("creating directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(write_err("setting mode of", path))
}

/// Removes whatever is at `path` (a later entry replaces an earlier one).
fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_tree(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(write_err("removing", path))
}

/// `remove_dir_all` that also copes with read-only directories inside the
/// tree, which an unprivileged process cannot empty otherwise.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(path)? {
        make_dirs_writable(&entry?.path())?;
    }
    Ok(())
}

fn set_mtime(file: &File, mtime: u64) -> io::Result<()> {
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records privileged operations and stands in for them with ordinary
    /// files, so that tests run without root and can see what was asked.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingLayerFs {
        pub ops: Mutex<Vec<String>>,
    }

    impl RecordingLayerFs {
        pub fn ops(&self) -> Vec<String> {
            self.ops.lock().unwrap().clone()
        }

        fn record(&self, op: String) {
            self.ops.lock().unwrap().push(op);
        }
    }

    impl LayerFs for RecordingLayerFs {
        fn whiteout(&self, path: &Path) -> io::Result<()> {
            self.record(format!("whiteout {}", path.display()));
            // A placeholder, so that later steps see something at the path.
            fs::write(path, b"")
        }
        fn set_opaque(&self, dir: &Path) -> io::Result<()> {
            self.record(format!("opaque {}", dir.display()));
            Ok(())
        }
        fn mknod(
            &self,
            path: &Path,
            kind: NodeKind,
            mode: u32,
            major: u64,
            minor: u64,
        ) -> io::Result<()> {
            self.record(format!(
                "mknod {} {kind:?} {mode:o} {major}:{minor}",
                path.display()
            ));
            fs::write(path, b"")
        }
        fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
            if uid != 0 || gid != 0 {
                self.record(format!("chown {} {uid}:{gid}", path.display()));
            }
            Ok(())
        }
    }

    /// Kind, path, mode, contents, link target of one tar entry.
    pub(crate) type TestEntry<'a> = (tar::EntryType, &'a str, u32, &'a [u8], Option<&'a str>);

    /// Appends a raw tar entry (no path checks, unlike `tar::Builder`'s helpers).
    pub(crate) fn raw_entry(
        tar: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        mode: u32,
        data: &[u8],
        link: Option<&str>,
    ) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        {
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        if let Some(link) = link {
            let linkname = &mut header.as_old_mut().linkname;
            linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }

    fn unpack(
        entries: &[TestEntry<'_>],
    ) -> (tempfile::TempDir, RecordingLayerFs, Result<(), UnpackError>) {
        let mut tar = tar::Builder::new(Vec::new());
        for (kind, path, mode, data, link) in entries {
            raw_entry(&mut tar, *kind, path, *mode, data, *link);
        }
        let bytes = tar.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layer_fs = RecordingLayerFs::default();
        let result = unpack_layer(bytes.as_slice(), dir.path(), &layer_fs);
        (dir, layer_fs, result)
    }

    use tar::EntryType as T;

    #[test]
    fn unpacks_files_dirs_links_with_modes() {
        let (dir, _, result) = unpack(&[
            (T::Directory, "./etc/", 0o755, b"", None),
            (
                T::Regular,
                "./etc/passwd",
                0o644,
                b"root:x:0:0::/root:/bin/sh\n",
                None,
            ),
            (T::Regular, "bin/busybox", 0o4755, b"ELF", None),
            (T::Symlink, "bin/sh", 0o777, b"", Some("/bin/busybox")),
            (T::Link, "bin/busybox2", 0o755, b"", Some("bin/busybox")),
            (T::Directory, "ro/", 0o555, b"", None),
            (T::Regular, "ro/file", 0o444, b"x", None),
        ]);
        result.unwrap();
        let root = dir.path();
        assert_eq!(
            fs::read(root.join("etc/passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        let mode = |p: &str| {
            fs::symlink_metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/busybox"), 0o4755);
        assert_eq!(
            mode("ro"),
            0o555,
            "restrictive dir modes are applied after the children"
        );
        assert_eq!(mode("bin"), 0o755, "missing parents are created 0755");
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(fs::read(root.join("bin/busybox2")).unwrap(), b"ELF");
        let mtime = fs::metadata(root.join("etc/passwd"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            mtime,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        remove_tree(root).unwrap();
        assert!(!root.exists(), "read-only directories do not stop removal");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_opaque_dirs() {
        let (dir, layer_fs, result) = unpack(&[
            (T::Directory, "etc/", 0o755, b"", None),
            (T::Regular, "etc/.wh.motd", 0o644, b"", None),
            (T::Regular, "var/cache/.wh..wh..opq", 0o644, b"", None),
            (T::Regular, "var/cache/new", 0o644, b"n", None),
            (T::Regular, ".wh..wh.plnk", 0o644, b"", None),
        ]);
        result.unwrap();
        let root = dir.path();
        assert_eq!(
            layer_fs.ops(),
            [
                format!("whiteout {}", root.join("etc/motd").display()),
                format!("opaque {}", root.join("var/cache").display()),
            ]
        );
        assert!(
            !root.join("etc/.wh.motd").exists(),
            "whiteout markers are not content"
        );
        assert!(!root.join(".wh..wh.plnk").exists());
        assert_eq!(fs::read(root.join("var/cache/new")).unwrap(), b"n");
    }

    #[test]
    fn special_files_and_ownership_go_through_layer_fs() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(T::Char);
        header.set_mode(0o666);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        header.set_device_major(1).unwrap();
        header.set_device_minor(3).unwrap();
        tar.append_data(&mut header, "dev/null", io::empty())
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(T::Regular);
        header.set_mode(0o600);
        header.set_uid(65534);
        header.set_gid(65534);
        header.set_size(1);
        tar.append_data(&mut header, "home/nobody/f", &b"x"[..])
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layer_fs = RecordingLayerFs::default();
        unpack_layer(tar.into_inner().unwrap().as_slice(), dir.path(), &layer_fs).unwrap();
        assert_eq!(
            layer_fs.ops(),
            [
                format!(
                    "mknod {} Char 666 1:3",
                    dir.path().join("dev/null").display()
                ),
                format!(
                    "chown {} 65534:65534",
                    dir.path().join("home/nobody/f").display()
                ),
            ]
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let (dir, _, result) = unpack(&[
            (T::Regular, "a", 0o644, b"file", None),
            (T::Directory, "a/", 0o755, b"", None),
            (T::Regular, "a/b", 0o644, b"b", None),
            (T::Regular, "c", 0o644, b"old", None),
            (T::Regular, "c", 0o644, b"new", None),
        ]);
        result.unwrap();
        assert!(dir.path().join("a").is_dir());
        assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"new");
    }

    #[test]
    fn refuses_to_write_outside_the_layer() {
        let (_, _, result) = unpack(&[(T::Regular, "../escape", 0o644, b"x", None)]);
        assert!(
            matches!(result, Err(UnpackError::UnsafePath { .. })),
            "{result:?}"
        );

        let outside = tempfile::tempdir().unwrap();
        let outside_path = outside.path().to_str().unwrap().to_owned();
        let (_, _, result) = unpack(&[
            (T::Symlink, "evil", 0o777, b"", Some(outside_path.as_str())),
            (T::Regular, "evil/passwd", 0o644, b"x", None),
        ]);
        assert!(
            matches!(result, Err(UnpackError::SymlinkInPath { .. })),
            "{result:?}"
        );
        assert!(!outside.path().join("passwd").exists());

        let (_, _, result) = unpack(&[(T::Link, "hl", 0o644, b"", Some("etc/shadow"))]);
        assert!(
            matches!(result, Err(UnpackError::HardlinkTarget { .. })),
            "{result:?}"
        );
    }
}
