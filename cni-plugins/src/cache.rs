//! The on-disk result cache: one file per attachment (network, container,
//! interface) at `<cache_dir>/results/<network>-<container id>-<ifname>`,
//! in libcni's `cniCacheV1` format, so DEL after a runtime restart has the
//! ADD result and the exact config the attachment was made with.
//!
//! Files are replaced atomically (write to a temp file, then rename), so a
//! reader never sees half an entry. The names are built only from values
//! checked by `conf::is_valid_identifier` and the ifname rules, so they stay
//! inside the cache dir.

use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `kind` libcni writes; entries of another kind are not ours to read.
pub const CACHE_KIND: &str = "cniCacheV1";

/// Errors reading or writing one cache entry.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// File system access failed.
    #[error("file system")]
    Io(#[source] io::Error),
    /// The entry could not be encoded or decoded.
    #[error("entry is not valid cache JSON")]
    Json(#[source] serde_json::Error),
}

/// One cached attachment, field for field what libcni stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheEntry {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// Container (sandbox) id.
    pub container_id: String,
    /// The network config list bytes; base64 in JSON as Go encodes `[]byte`.
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub config: Option<Vec<u8>>,
    /// Interface name inside the container.
    pub if_name: String,
    /// Network name.
    pub network_name: String,
    /// The sandbox's netns path at ADD, for a DEL issued by GC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `CNI_ARGS` as key/value pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments given at ADD.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub capability_args: Map<String, Value>,
    /// The final ADD result as the last plugin printed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => STANDARD
                .decode(text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// A cache entry found on disk, possibly unreadable.
#[derive(Debug)]
pub(crate) struct FoundEntry {
    /// Where it lives.
    pub path: PathBuf,
    /// The entry, or why it could not be read.
    pub entry: Result<CacheEntry, CacheError>,
}

/// The `results` directory of a cache dir.
#[derive(Debug, Clone)]
pub(crate) struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// The cache under `cache_dir` (libcni's `/var/lib/cni` layout).
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            dir: cache_dir.join("results"),
        }
    }

    /// Where the entry of one attachment lives.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes `entry` atomically, replacing any previous one.
    pub async fn write(&self, entry: &CacheEntry) -> Result<PathBuf, (PathBuf, CacheError)> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let bytes = match serde_json::to_vec(entry) {
            Ok(bytes) => bytes,
            Err(e) => return Err((path, CacheError::Json(e))),
        };
        let (dir, target) = (self.dir.clone(), path.clone());
        match on_bulk(move || write_entry(&dir, &target, &bytes)).await {
            Ok(()) => Ok(path),
            Err(e) => Err((path, CacheError::Io(e))),
        }
    }

    /// Every entry for `container_id`/`ifname`, whatever network it was
    /// made with, so DEL finds it even after the network was renamed.
    /// Unreadable files are returned only under `exact_network`'s name,
    /// since for any other file the name alone cannot say whose it is.
    pub async fn find(
        &self,
        container_id: &str,
        ifname: &str,
        exact_network: Option<&str>,
    ) -> Result<Vec<FoundEntry>, (PathBuf, CacheError)> {
        let suffix = format!("-{container_id}-{ifname}");
        let exact = exact_network.map(|network| self.path(network, container_id, ifname));
        let (container_id, ifname) = (container_id.to_owned(), ifname.to_owned());
        let wanted = move |name: &str| {
            !name.starts_with('.') && name.len() > suffix.len() && name.ends_with(&suffix)
        };
        self.scan(wanted, move |path, bytes| {
            let parsed = bytes.map_err(CacheError::Io).and_then(|bytes| {
                serde_json::from_slice::<CacheEntry>(&bytes).map_err(CacheError::Json)
            });
            let ours = match &parsed {
                Ok(e) => {
                    e.kind == CACHE_KIND && e.container_id == container_id && e.if_name == ifname
                }
                Err(_) => exact.as_deref() == Some(path),
            };
            ours.then_some(parsed)
        })
        .await
    }

    /// Every readable entry of `network`, whatever the container: what GC
    /// compares with the attachments that still exist. Unreadable files
    /// are skipped, since nothing says which attachment they are.
    pub async fn list(&self, network: &str) -> Result<Vec<FoundEntry>, (PathBuf, CacheError)> {
        let prefix = format!("{network}-");
        let network = network.to_owned();
        let wanted = move |name: &str| name.starts_with(&prefix);
        self.scan(wanted, move |_, bytes| {
            let parsed = serde_json::from_slice::<CacheEntry>(&bytes.ok()?).ok()?;
            // The name prefix is only a hint ("a-b" is a prefix of "a-b-c"'s
            // files too); the entry itself says whose it is.
            (parsed.kind == CACHE_KIND && parsed.network_name == network).then_some(Ok(parsed))
        })
        .await
    }

    /// Reads the cache dir on a bulk-work thread: each file whose name is
    /// `wanted` is read, and `pick` says from its path and contents what to
    /// return for it, if anything. Sorted by path; a missing dir is an
    /// empty cache; a file removed between listing and reading (a
    /// concurrent DEL) is skipped.
    async fn scan(
        &self,
        wanted: impl Fn(&str) -> bool + Send + 'static,
        pick: impl Fn(&Path, io::Result<Vec<u8>>) -> Option<Result<CacheEntry, CacheError>>
        + Send
        + 'static,
    ) -> Result<Vec<FoundEntry>, (PathBuf, CacheError)> {
        let dir = self.dir.clone();
        let scanned = on_bulk(move || {
            let mut found = Vec::new();
            for entry in crate::conf::dir_entries(&dir)? {
                if !wanted(&entry.file_name().to_string_lossy()) {
                    continue;
                }
                let path = entry.path();
                let bytes = match std::fs::read(&path) {
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    read => read,
                };
                if let Some(entry) = pick(&path, bytes) {
                    found.push(FoundEntry { path, entry });
                }
            }
            found.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(found)
        })
        .await;
        scanned.map_err(|err| (self.dir.clone(), CacheError::Io(err)))
    }

    /// Removes an entry; one already gone is fine.
    pub async fn remove(&self, path: &Path) -> Result<(), CacheError> {
        let path = path.to_owned();
        on_bulk(move || match std::fs::remove_file(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            removed => removed,
        })
        .await
        .map_err(CacheError::Io)
    }
}

/// Runs file work on a [`BULK`](crate::work::BULK) thread.
async fn on_bulk<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    crate::work::BULK.run(f).await.map_err(io::Error::other)?
}

/// Writes `bytes` to `path` in `dir` through a temp file, flushed before
/// the rename so a crash leaves the old entry or the new one, never an
/// empty file under the real name.
fn write_entry(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut dirs = std::fs::DirBuilder::new();
    // Entries may hold capability args such as pod annotations.
    dirs.recursive(true).mode(0o700);
    dirs.create(dir)?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{file_name}.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn entry(network: &str, container_id: &str) -> CacheEntry {
        CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: container_id.into(),
            config: Some(br#"{"name":"n"}"#.to_vec()),
            if_name: "eth0".into(),
            network_name: network.into(),
            netns: Some("/run/netns/x".into()),
            cni_args: vec![("K8S_POD_NAME".into(), "p".into())],
            capability_args: Map::new(),
            result: Some(json!({"cniVersion": "1.0.0"})),
        }
    }

    #[tokio::test]
    async fn writes_libcni_format() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let path = cache.write(&entry("net", "abc")).await.unwrap();
        assert_eq!(path, dir.path().join("results/net-abc-eth0"));
        let json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["kind"], "cniCacheV1");
        assert_eq!(json["containerId"], "abc");
        assert_eq!(json["ifName"], "eth0");
        assert_eq!(json["networkName"], "net");
        // base64 of {"name":"n"}, as Go marshals a []byte.
        assert_eq!(json["config"], "eyJuYW1lIjoibiJ9");
        assert_eq!(json["cniArgs"], json!([["K8S_POD_NAME", "p"]]));
        assert_eq!(json["netns"], "/run/netns/x");
        assert!(json.get("capabilityArgs").is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("results"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    }

    #[tokio::test]
    async fn finds_only_matching_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        cache.write(&entry("old-net", "abc")).await.unwrap();
        cache.write(&entry("net", "xabc")).await.unwrap();
        // A container id that ends like ours, under a network named "net".
        cache.write(&entry("net", "z-abc")).await.unwrap();
        std::fs::write(cache.path("net", "abc", "eth0"), "garbage").unwrap();
        std::fs::write(cache.path("other", "abc", "eth0"), "garbage").unwrap();

        let found = cache.find("abc", "eth0", Some("net")).await.unwrap();
        let paths: Vec<_> = found.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            paths,
            [
                cache.path("net", "abc", "eth0"),
                cache.path("old-net", "abc", "eth0")
            ]
        );
        assert!(found[0].entry.is_err());
        assert_eq!(found[1].entry.as_ref().unwrap().network_name, "old-net");

        let found = cache.find("abc", "eth0", None).await.unwrap();
        assert_eq!(found.len(), 1);
        cache.remove(&found[0].path).await.unwrap();
        cache.remove(&found[0].path).await.unwrap();
        assert!(cache.find("abc", "eth0", None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reads_entries_without_config() {
        // libcni's single-network AddNetwork may leave out fields we write.
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        std::fs::write(
            cache.path("net", "abc", "eth0"),
            r#"{"kind":"cniCacheV1","containerId":"abc","ifName":"eth0","networkName":"net"}"#,
        )
        .unwrap();
        let found = cache.find("abc", "eth0", None).await.unwrap();
        let entry = found[0].entry.as_ref().unwrap();
        assert_eq!(entry.config, None);
        assert_eq!(entry.result, None);
    }

    #[tokio::test]
    async fn lists_the_entries_of_one_network() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        cache.write(&entry("net", "a")).await.unwrap();
        cache.write(&entry("net", "b")).await.unwrap();
        // Its file name starts with "net-" too.
        cache.write(&entry("net-2", "c")).await.unwrap();
        std::fs::write(cache.path("net", "broken", "eth0"), "garbage").unwrap();
        let ids: Vec<String> = cache
            .list("net")
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.entry.unwrap().container_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(cache.list("net-2").await.unwrap().len(), 1);
        assert!(cache.list("other").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_dir_has_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(&dir.path().join("nope"));
        assert!(cache.find("abc", "eth0", None).await.unwrap().is_empty());
    }
}
