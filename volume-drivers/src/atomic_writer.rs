//! The atomic writer of secret, configMap, downwardAPI and projected volumes,
//! with upstream's on-disk protocol so containers (and tools written for
//! upstream kubelets) see the same thing:
//!
//! ```text
//! <volume>/..2024_05_01_10_00_00.123456/   the payload, one timestamped dir per version
//! <volume>/..data -> ..2024_05_01_10_00_00.123456
//! <volume>/<name> -> ..data/<name>           one symlink per top-level payload name
//! ```
//!
//! A new version is written completely into a fresh timestamped dir, then
//! `..data` is swapped to it with one `rename(2)` of a `..data_tmp` symlink,
//! so a reader inside the container sees either the old or the new payload,
//! never a mix. Names that left the payload lose their symlink, and the old
//! dir is removed. When the payload (paths, bytes and modes) is unchanged
//! nothing is rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::paths::{PathError, validate_payload_path};

/// The symlink that points at the current payload dir.
pub const DATA_DIR_NAME: &str = "..data";
/// The symlink renamed over [`DATA_DIR_NAME`] to swap versions.
pub const NEW_DATA_DIR_NAME: &str = "..data_tmp";

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (e.g. `0o644`).
    pub mode: u32,
}

/// The whole content of a volume: relative path -> file.
pub type Payload = BTreeMap<String, FileProjection>;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The payload equals what is on disk; nothing was written.
    Unchanged,
    /// A new version was written and `..data` swapped to it.
    Written,
}

/// A failed atomic write.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriterError {
    /// A payload path is not allowed.
    #[error("payload path {path:?}")]
    InvalidPath {
        path: String,
        #[source]
        source: PathError,
    },
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AtomicWriterError {
    let path = path.to_owned();
    move |source| AtomicWriterError::Io { op, path, source }
}

/// Writes payloads into one volume directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    target_dir: PathBuf,
}

impl AtomicWriter {
    /// A writer for `target_dir`, which must exist.
    pub fn new(target_dir: impl Into<PathBuf>) -> Self {
        Self {
            target_dir: target_dir.into(),
        }
    }

    pub fn target_dir(&self) -> &Path {
        &self.target_dir
    }

    /// Makes the volume hold exactly `payload`.
    pub fn write(&self, payload: &Payload) -> Result<WriteOutcome, AtomicWriterError> {
        let payload = clean_payload(payload)?;
        let data_link = self.target_dir.join(DATA_DIR_NAME);
        let old_ts = match fs::read_link(&data_link) {
            Ok(p) => Some(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading the symlink", &data_link)(e)),
        };
        let old_ts_dir = old_ts.as_ref().map(|p| self.target_dir.join(p));
        let old_paths = match &old_ts_dir {
            Some(dir) => list_files(dir)?,
            None => BTreeSet::new(),
        };

        let unchanged = match &old_ts_dir {
            Some(dir) => payload_matches(dir, &payload, &old_paths)?,
            None => false,
        };
        if unchanged {
            // The data is current; the user-visible links may still be missing
            // (e.g. a crash between swap and link creation).
            self.create_user_visible_links(&payload)?;
            return Ok(WriteOutcome::Unchanged);
        }

        let ts_dir = self.new_timestamped_dir()?;
        if let Err(e) = write_payload(&ts_dir, &payload) {
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(e);
        }
        self.create_user_visible_links(&payload)?;

        let ts_name = ts_dir
            .file_name()
            .expect("mkdtemp returns a named dir")
            .to_owned();
        let tmp_link = self.target_dir.join(NEW_DATA_DIR_NAME);
        match fs::remove_file(&tmp_link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing the stale symlink", &tmp_link)(e)),
        }
        std::os::unix::fs::symlink(&ts_name, &tmp_link)
            .map_err(io("creating the symlink", &tmp_link))?;
        fs::rename(&tmp_link, &data_link).map_err(io("renaming the symlink onto", &data_link))?;

        let new_top: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
        let old_top: BTreeSet<&str> = old_paths.iter().map(|p| top_level(p)).collect();
        for stale in old_top.difference(&new_top) {
            let link = self.target_dir.join(stale);
            match fs::symlink_metadata(&link) {
                Ok(m) if m.file_type().is_symlink() => {
                    fs::remove_file(&link).map_err(io("removing the stale name", &link))?;
                }
                _ => {}
            }
        }
        if let Some(old) = old_ts_dir {
            fs::remove_dir_all(&old).map_err(io("removing the old data dir", &old))?;
        }
        tracing::debug!(dir = %self.target_dir.display(), files = payload.len(), "atomic writer swapped ..data");
        Ok(WriteOutcome::Written)
    }

    /// `..<UTC timestamp>.<random>` like upstream's, made with mkdtemp(3)
    /// and opened up to 0755 so non-root container users can traverse it.
    fn new_timestamped_dir(&self) -> Result<PathBuf, AtomicWriterError> {
        let stamp = chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S");
        let template = self.target_dir.join(format!("..{stamp}.XXXXXX"));
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| io("creating a timestamped dir in", &self.target_dir)(e.into()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(io("setting the mode of", &dir))?;
        Ok(dir)
    }

    fn create_user_visible_links(&self, payload: &Payload) -> Result<(), AtomicWriterError> {
        let tops: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
        for top in tops {
            let link = self.target_dir.join(top);
            if fs::symlink_metadata(&link).is_err() {
                let target = Path::new(DATA_DIR_NAME).join(top);
                std::os::unix::fs::symlink(&target, &link)
                    .map_err(io("creating the user-visible symlink", &link))?;
            }
        }
        Ok(())
    }
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Validates every path and normalises `a//b` and `./a` as upstream's
/// `path.Clean` would.
fn clean_payload(payload: &Payload) -> Result<Payload, AtomicWriterError> {
    let mut out = Payload::new();
    for (path, file) in payload {
        let invalid = |source| AtomicWriterError::InvalidPath {
            path: path.clone(),
            source,
        };
        validate_payload_path(path).map_err(invalid)?;
        let clean: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        if clean.is_empty() {
            return Err(invalid(PathError::Empty));
        }
        let clean = clean.join("/");
        validate_payload_path(&clean).map_err(invalid)?;
        out.insert(clean, file.clone());
    }
    Ok(out)
}

fn write_payload(dir: &Path, payload: &Payload) -> Result<(), AtomicWriterError> {
    for (rel, file) in payload {
        let path = dir.join(rel);
        if let Some(parent) = path.parent()
            && parent != dir
        {
            fs::create_dir_all(parent).map_err(io("creating the dir", parent))?;
            // Every level below the timestamped dir, regardless of umask.
            let mut p = parent;
            while p != dir {
                fs::set_permissions(p, fs::Permissions::from_mode(0o755))
                    .map_err(io("setting the mode of", p))?;
                p = p.parent().unwrap_or(dir);
            }
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode & 0o7777)
            .open(&path)
            .map_err(io("creating the file", &path))?;
        f.write_all(&file.data)
            .map_err(io("writing the file", &path))?;
        // The umask may have cleared bits given at creation.
        f.set_permissions(fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io("setting the mode of", &path))?;
    }
    Ok(())
}

/// Regular files below `dir`, as `/`-joined relative paths.
fn list_files(dir: &Path) -> Result<BTreeSet<String>, AtomicWriterError> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == dir => return Ok(out),
            Err(e) => return Err(io("listing", &d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("listing", &d))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry.file_type().map_err(io("inspecting", &entry.path()))?;
            if ft.is_dir() {
                stack.push((entry.path(), rel));
            } else {
                out.insert(rel);
            }
        }
    }
    Ok(out)
}

fn payload_matches(
    dir: &Path,
    payload: &Payload,
    old_paths: &BTreeSet<String>,
) -> Result<bool, AtomicWriterError> {
    if old_paths.len() != payload.len() || !payload.keys().all(|k| old_paths.contains(k)) {
        return Ok(false);
    }
    for (rel, file) in payload {
        let path = dir.join(rel);
        let meta = fs::symlink_metadata(&path).map_err(io("inspecting", &path))?;
        if meta.permissions().mode() & 0o7777 != file.mode & 0o7777
            || meta.len() != file.data.len() as u64
        {
            return Ok(false);
        }
        if fs::read(&path).map_err(io("reading", &path))? != file.data {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn data_dir(dir: &Path) -> PathBuf {
        fs::read_link(dir.join(DATA_DIR_NAME)).unwrap()
    }

    fn hidden_dirs(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn first_write_creates_data_dir_and_user_visible_links() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        let payload = Payload::from([
            ("user".to_owned(), file("admin", 0o644)),
            ("conf/app.ini".to_owned(), file("[x]\n", 0o600)),
        ]);
        assert_eq!(w.write(&payload).unwrap(), WriteOutcome::Written);

        let ts = data_dir(dir.path());
        let ts = ts.to_str().unwrap();
        assert!(
            ts.starts_with("..") && ts.len() > "..2024_01_01_00_00_00.".len(),
            "{ts}"
        );
        assert_eq!(
            fs::read_link(dir.path().join("user")).unwrap(),
            Path::new("..data/user")
        );
        assert_eq!(
            fs::read_link(dir.path().join("conf")).unwrap(),
            Path::new("..data/conf")
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("user")).unwrap(),
            "admin"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("conf/app.ini")).unwrap(),
            "[x]\n"
        );
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("user"), 0o644);
        assert_eq!(mode("conf/app.ini"), 0o600);
        assert_eq!(mode(ts), 0o755);
        assert_eq!(mode("conf"), 0o755);
        assert_eq!(
            hidden_dirs(dir.path()),
            vec![ts.to_owned(), "..data".to_owned()]
        );
    }

    #[test]
    fn unchanged_payload_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        let payload = Payload::from([("a".to_owned(), file("1", 0o644))]);
        w.write(&payload).unwrap();
        let before = data_dir(dir.path());
        assert_eq!(w.write(&payload).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(data_dir(dir.path()), before);

        // A mode change alone is a change.
        let chmod = Payload::from([("a".to_owned(), file("1", 0o400))]);
        assert_eq!(w.write(&chmod).unwrap(), WriteOutcome::Written);
        assert_ne!(data_dir(dir.path()), before);
        assert_eq!(
            fs::metadata(dir.path().join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o400
        );
    }

    #[test]
    fn update_swaps_content_removes_stale_names_and_old_dir() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        w.write(&Payload::from([
            ("keep".to_owned(), file("old", 0o644)),
            ("gone".to_owned(), file("x", 0o644)),
            ("sub/gone".to_owned(), file("y", 0o644)),
        ]))
        .unwrap();
        let old = data_dir(dir.path());

        // Hold the old file open, as a container reading it would.
        let open_old = fs::File::open(dir.path().join("keep")).unwrap();
        let outcome = w
            .write(&Payload::from([
                ("keep".to_owned(), file("new", 0o644)),
                ("added".to_owned(), file("z", 0o644)),
            ]))
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Written);
        drop(open_old);

        assert_eq!(fs::read_to_string(dir.path().join("keep")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dir.path().join("added")).unwrap(), "z");
        assert!(fs::symlink_metadata(dir.path().join("gone")).is_err());
        assert!(fs::symlink_metadata(dir.path().join("sub")).is_err());
        assert!(!dir.path().join(&old).exists(), "old data dir removed");
        let new = data_dir(dir.path());
        assert_eq!(
            hidden_dirs(dir.path()),
            vec![new.to_string_lossy().into_owned(), "..data".to_owned()]
        );
    }

    #[test]
    fn empty_payload_leaves_only_the_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        w.write(&Payload::from([("a".to_owned(), file("1", 0o644))]))
            .unwrap();
        w.write(&Payload::new()).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "..data and its dir");
        assert!(fs::symlink_metadata(dir.path().join("a")).is_err());
    }

    #[test]
    fn invalid_paths_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        for bad in ["/etc/passwd", "../x", "a/../../x", "..data/x", ""] {
            let err = w
                .write(&Payload::from([
                    ("ok".to_owned(), file("1", 0o644)),
                    (bad.to_owned(), file("1", 0o644)),
                ]))
                .unwrap_err();
            assert!(
                matches!(err, AtomicWriterError::InvalidPath { ref path, .. } if path == bad),
                "{bad}: {err}"
            );
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn normalises_redundant_separators() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        w.write(&Payload::from([("./a//b".to_owned(), file("1", 0o644))]))
            .unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("a/b")).unwrap(), "1");
    }
}
