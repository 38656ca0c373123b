//! hostPath volumes: the host path itself is what the container gets (no
//! mount of ours), after the `type` check upstream does: `DirectoryOrCreate`
//! and `FileOrCreate` create what is missing (0755 dir, 0644 empty file; the
//! parent of a file is not created), the other types only check.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// `hostPath.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathType {
    /// `""` or unset: no check.
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

/// A hostPath that fails its type check (or cannot be created).
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error("invalid hostPath type {0:?}")]
    UnknownType(String),
    #[error("hostPath {0:?} must be an absolute path without '..'")]
    BadPath(String),
    #[error("hostPath type check failed: {path} is not {what}")]
    TypeMismatch { path: PathBuf, what: &'static str },
    #[error("hostPath type check failed: creating {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hostPath type check failed: inspecting {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HostPathType {
    pub fn parse(t: Option<&str>) -> Result<Self, HostPathError> {
        Ok(match t.unwrap_or("") {
            "" => Self::Unset,
            "DirectoryOrCreate" => Self::DirectoryOrCreate,
            "Directory" => Self::Directory,
            "FileOrCreate" => Self::FileOrCreate,
            "File" => Self::File,
            "Socket" => Self::Socket,
            "CharDevice" => Self::CharDevice,
            "BlockDevice" => Self::BlockDevice,
            other => return Err(HostPathError::UnknownType(other.to_owned())),
        })
    }
}

/// Checks (and for the `*OrCreate` types, creates) `path` for `ty`.
pub fn check_host_path(path: &str, ty: HostPathType) -> Result<PathBuf, HostPathError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(HostPathError::BadPath(path.to_owned()));
    }
    let p = p.to_owned();
    let mismatch = |what| HostPathError::TypeMismatch {
        path: p.clone(),
        what,
    };
    let stat = |p: &Path| match fs::metadata(p) {
        Ok(m) => Ok(Some(m.file_type())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostPathError::Stat {
            path: p.to_owned(),
            source,
        }),
    };
    let create_err = |source| HostPathError::Create {
        path: p.clone(),
        source,
    };
    match ty {
        HostPathType::Unset => {}
        HostPathType::DirectoryOrCreate => match stat(&p)? {
            Some(ft) if ft.is_dir() => {}
            Some(_) => return Err(mismatch("a directory")),
            None => {
                fs::create_dir_all(&p).map_err(create_err)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(create_err)?;
            }
        },
        HostPathType::Directory => match stat(&p)? {
            Some(ft) if ft.is_dir() => {}
            _ => return Err(mismatch("a directory")),
        },
        HostPathType::FileOrCreate => match stat(&p)? {
            Some(ft) if ft.is_file() => {}
            Some(_) => return Err(mismatch("a file")),
            None => {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(&p)
                    .map_err(create_err)?;
                f.set_permissions(fs::Permissions::from_mode(0o644))
                    .map_err(create_err)?;
            }
        },
        HostPathType::File => match stat(&p)? {
            Some(ft) if ft.is_file() => {}
            _ => return Err(mismatch("a file")),
        },
        HostPathType::Socket => match stat(&p)? {
            Some(ft) if ft.is_socket() => {}
            _ => return Err(mismatch("a socket file")),
        },
        HostPathType::CharDevice => match stat(&p)? {
            Some(ft) if ft.is_char_device() => {}
            _ => return Err(mismatch("a character device")),
        },
        HostPathType::BlockDevice => match stat(&p)? {
            Some(ft) if ft.is_block_device() => {}
            _ => return Err(mismatch("a block device")),
        },
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &Path, t: &str) -> Result<PathBuf, HostPathError> {
        check_host_path(p.to_str().unwrap(), HostPathType::parse(Some(t)).unwrap())
    }

    #[test]
    fn every_type_on_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let null = Path::new("/dev/null");

        assert!(check(dir.path(), "").is_ok());
        assert!(
            check(&dir.path().join("missing"), "").is_ok(),
            "unset does not check"
        );
        assert!(check(dir.path(), "Directory").is_ok());
        assert!(check(&file, "File").is_ok());
        assert!(check(&sock, "Socket").is_ok());
        assert!(check(null, "CharDevice").is_ok());

        let msg = |p: &Path, t| check(p, t).unwrap_err().to_string();
        assert_eq!(
            msg(&file, "Directory"),
            format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
        assert_eq!(
            msg(dir.path(), "File"),
            format!(
                "hostPath type check failed: {} is not a file",
                dir.path().display()
            )
        );
        assert!(msg(&file, "Socket").ends_with("is not a socket file"));
        assert!(msg(&file, "CharDevice").ends_with("is not a character device"));
        assert!(msg(null, "BlockDevice").ends_with("is not a block device"));
        assert!(msg(&dir.path().join("missing"), "Directory").ends_with("is not a directory"));
        assert!(msg(&file, "DirectoryOrCreate").ends_with("is not a directory"));
        assert!(msg(dir.path(), "FileOrCreate").ends_with("is not a file"));
    }

    #[test]
    fn or_create_types_create_with_upstream_modes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        check(&d, "DirectoryOrCreate").unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        let f = dir.path().join("a/file");
        check(&f, "FileOrCreate").unwrap();
        let m = fs::metadata(&f).unwrap();
        assert!(m.is_file() && m.len() == 0);
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        // An existing file is kept as it is.
        fs::write(&f, "keep").unwrap();
        check(&f, "FileOrCreate").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "keep");
        // The parent of a FileOrCreate is not created.
        assert!(matches!(
            check(&dir.path().join("no/such/file"), "FileOrCreate"),
            Err(HostPathError::Create { .. })
        ));
    }

    #[test]
    fn bad_paths_and_types() {
        assert!(matches!(
            check_host_path("relative/x", HostPathType::Unset),
            Err(HostPathError::BadPath(_))
        ));
        assert!(matches!(
            check_host_path("/a/../etc", HostPathType::Unset),
            Err(HostPathError::BadPath(_))
        ));
        assert!(matches!(
            HostPathType::parse(Some("Dir")),
            Err(HostPathError::UnknownType(_))
        ));
    }
}
