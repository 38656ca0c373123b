//! Network namespaces: opening one by path and running code inside it.
//!
//! Code runs in a namespace only on a dedicated thread that enters it and
//! then ends, so no thread of the plugin is ever left in the wrong
//! namespace, whatever the code does (returns early, fails, panics).
//! Netlink sockets opened there stay bound to that namespace and may be
//! used from any thread afterwards.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// Errors opening or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The path does not exist (the sandbox is gone).
    #[error("netns {path} does not exist")]
    NotFound {
        /// The netns path.
        path: PathBuf,
    },
    /// The path could not be opened.
    #[error("failed to open netns {path}")]
    Open {
        /// The netns path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The path is not a namespace file.
    #[error("{path} is not a network namespace")]
    NotANamespace {
        /// The path.
        path: PathBuf,
    },
    /// `setns` failed.
    #[error("failed to enter netns {path}")]
    Enter {
        /// The netns path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: nix::Error,
    },
    /// The thread running in the namespace panicked.
    #[error("thread in netns {path} panicked")]
    Panicked {
        /// The netns path.
        path: PathBuf,
    },
}

/// `NSFS_MAGIC` (bind-mounted `/run/netns/x`) and `PROC_SUPER_MAGIC`
/// (`/proc/<pid>/ns/net`): the two kinds of files a netns path can be.
const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetNsError> {
        let path = path.as_ref().to_owned();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(NetNsError::NotFound { path });
            }
            Err(source) => return Err(NetNsError::Open { path, source }),
        };
        let stat = nix::sys::statfs::fstatfs(&file).map_err(|errno| NetNsError::Open {
            path: path.clone(),
            source: errno.into(),
        })?;
        let magic = stat.filesystem_type().0 as i64;
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(NetNsError::NotANamespace { path });
        }
        Ok(Self { file, path })
    }

    /// The namespace this process runs in.
    pub fn current() -> Result<Self, NetNsError> {
        Self::open("/proc/self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread inside this namespace and returns what it
    /// returned. The thread ends afterwards, namespace and all.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(
                    |source| NetNsError::Enter {
                        path: self.path.clone(),
                        source,
                    },
                )?;
                Ok(f())
            });
            handle.join().unwrap_or_else(|_| {
                Err(NetNsError::Panicked {
                    path: self.path.clone(),
                })
            })
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Writes a sysctl under `/proc/sys` (`net/ipv4/conf/eth0/arp_notify`),
/// in the network namespace of the calling thread.
pub fn sysctl_write(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// Reads a sysctl, trimmed.
pub fn sysctl_read(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(Path::new("/proc/sys").join(key))?
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_not_found() {
        let err = NetNs::open("/nonexistent/netns").unwrap_err();
        assert!(matches!(err, NetNsError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn regular_file_is_not_a_namespace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = NetNs::open(file.path()).unwrap_err();
        assert!(matches!(err, NetNsError::NotANamespace { .. }), "{err:?}");
    }

    #[test]
    fn runs_in_own_namespace() {
        // Entering the namespace we are already in needs CAP_SYS_ADMIN too,
        // so without root only the error path is observable.
        let ns = NetNs::current().unwrap();
        let outcome = ns.run(|| 42);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(outcome.unwrap(), 42);
        } else {
            assert!(matches!(outcome, Err(NetNsError::Enter { .. })));
        }
    }
}
