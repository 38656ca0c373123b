//! host-local's on-disk store, byte for byte the reference plugin's:
//! `<dataDir>/<network>/` holds one file per reserved address, named by the
//! address and containing `<containerID>\r\n<ifname>` (older versions wrote
//! the container id alone, which is still matched), `last_reserved_ip.<N>`
//! per range set for round-robin, and a `lock` file that every reader and
//! writer holds an exclusive `flock` on. Our plugin and the reference can
//! therefore share a data dir, even concurrently.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Prefix of the round-robin cursor files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Separator between container id and interface name in a reservation.
pub const LINE_BREAK: &str = "\r\n";

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("host-local store: {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// The store of one network, locked for as long as it lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// One reservation found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The address (the file name).
    pub ip: IpAddr,
    /// Container id.
    pub container_id: String,
    /// Interface name; `None` in the old one-line format.
    pub ifname: Option<String>,
}

impl Store {
    /// Opens (creating) `<data_dir>/<network>` and takes its lock, waiting
    /// for whoever holds it.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, StoreError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StoreError::Io {
                op: "locking",
                path: lock_path.clone(),
                source: errno.into(),
            })?;
        Ok(Self { dir, _lock: lock })
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reserves `ip` for the attachment; `false` if someone holds it.
    pub fn reserve(
        &self,
        container_id: &str,
        ifname: &str,
        ip: IpAddr,
        range_id: usize,
    ) -> Result<bool, StoreError> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(err) => return Err(io_err("creating", &path)(err)),
        };
        let content = format!("{}{LINE_BREAK}{ifname}", container_id.trim());
        if let Err(err) = file.write_all(content.as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(io_err("writing", &path)(err));
        }
        let cursor = self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_id}"));
        fs::write(&cursor, ip.to_string()).map_err(io_err("writing", &cursor))?;
        Ok(true)
    }

    /// The round-robin cursor of range set `range_id`.
    pub fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_id}"));
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Every reservation in the store.
    pub fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let Ok(content) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let content = content.trim();
            let (container_id, ifname) = match content.split_once(LINE_BREAK) {
                Some((id, ifname)) => (id.to_owned(), Some(ifname.to_owned())),
                None => (content.to_owned(), None),
            };
            out.push(Reservation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    /// Addresses held by the attachment: the exact `id\r\nifname` match,
    /// or, when there is none, old-format files of that id.
    pub fn get_by_id(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        let id = container_id.trim();
        let all = self.reservations()?;
        let exact: Vec<IpAddr> = all
            .iter()
            .filter(|r| r.container_id == id && r.ifname.as_deref() == Some(ifname))
            .map(|r| r.ip)
            .collect();
        if !exact.is_empty() {
            return Ok(exact);
        }
        Ok(all
            .iter()
            .filter(|r| r.container_id == id && r.ifname.is_none())
            .map(|r| r.ip)
            .collect())
    }

    /// Releases one address.
    pub fn release(&self, ip: IpAddr) -> Result<(), StoreError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(io_err("removing", &path)(err))
            }
            _ => Ok(()),
        }
    }

    /// Releases what the attachment holds; returns the addresses released.
    pub fn release_by_id(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<IpAddr>, StoreError> {
        let ips = self.get_by_id(container_id, ifname)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn reserve_writes_the_reference_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        assert!(store.reserve(" abc ", "eth0", ip("10.240.0.2"), 0).unwrap());
        assert!(!store.reserve("other", "eth0", ip("10.240.0.2"), 0).unwrap());
        let net = dir.path().join("net");
        assert_eq!(fs::read(net.join("10.240.0.2")).unwrap(), b"abc\r\neth0");
        assert_eq!(
            fs::read(net.join("last_reserved_ip.0")).unwrap(),
            b"10.240.0.2"
        );
        assert!(net.join("lock").is_file());
        assert_eq!(store.last_reserved(0), Some(ip("10.240.0.2")));
        assert_eq!(store.last_reserved(1), None);
    }

    #[test]
    fn release_matches_id_and_ifname_then_old_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        store.reserve("abc", "eth0", ip("10.240.0.2"), 0).unwrap();
        store.reserve("abc", "eth1", ip("10.240.0.3"), 0).unwrap();
        store.reserve("abc", "eth0", ip("fd00:240::2"), 1).unwrap();
        fs::write(dir.path().join("net/10.240.0.9"), "old\n").unwrap();
        assert_eq!(
            store.get_by_id("abc", "eth0").unwrap(),
            [ip("10.240.0.2"), ip("fd00:240::2")]
        );
        assert_eq!(store.release_by_id("abc", "eth0").unwrap().len(), 2);
        assert_eq!(store.get_by_id("abc", "eth1").unwrap(), [ip("10.240.0.3")]);
        assert_eq!(
            store.release_by_id("old", "eth0").unwrap(),
            [ip("10.240.0.9")]
        );
        assert_eq!(store.reservations().unwrap().len(), 1);
        // Releasing again finds nothing and is no error.
        assert!(store.release_by_id("abc", "eth0").unwrap().is_empty());
    }
}
