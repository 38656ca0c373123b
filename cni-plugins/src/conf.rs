//! Network configuration: parsing `.conflist` and single-plugin `.conf`
//! files, and listing a conf dir in the order libcni reads it.
//!
//! A [`NetworkConfigList`] always holds at least one plugin, each a JSON
//! object with a `type`, and a `name` that is safe to use in a file name
//! (the result cache is keyed by it).

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// File extensions libcni treats as network configuration.
pub const CONF_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// Why a configuration file or blob is not a usable network configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// Not JSON.
    #[error("not valid JSON")]
    Json(#[source] serde_json::Error),
    /// The top level is not a JSON object.
    #[error("configuration is not a JSON object")]
    NotAnObject,
    /// A required string field is missing or not a string.
    #[error("missing or non-string field {field:?}")]
    MissingField {
        /// The field name.
        field: &'static str,
    },
    /// The network name could not be used as part of a cache file name.
    #[error("invalid network name {name:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// `plugins` is missing, not an array, or empty.
    #[error("no plugins in the list")]
    NoPlugins,
    /// A `plugins` entry is not an object.
    #[error("plugin {index} is not a JSON object")]
    PluginNotAnObject {
        /// Position in `plugins`.
        index: usize,
    },
    /// A plugin has no `type`, so there is no binary to run.
    #[error("plugin {index} has no \"type\"")]
    PluginMissingType {
        /// Position in `plugins`.
        index: usize,
    },
}

/// A network: an ordered chain of plugin configurations sharing one name
/// and spec version.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// Network name, injected into every plugin's config.
    pub name: String,
    /// Spec version of the list, injected into every plugin's config.
    pub cni_version: String,
    /// Plugin configurations in ADD order, as written in the file.
    pub plugins: Vec<Value>,
    /// The list as JSON bytes: the file itself for a `.conflist`, the
    /// wrapping list for a `.conf`. This is what the result cache stores
    /// and DEL after a restart runs with, so it must match the other
    /// fields; [`NetworkConfigList::new`] builds it for lists made in code.
    pub bytes: Vec<u8>,
}

impl NetworkConfigList {
    /// A list made in code (say a runtime's built-in loopback network),
    /// checked like a file would be.
    pub fn new(
        name: impl Into<String>,
        cni_version: impl Into<String>,
        plugins: Vec<Value>,
    ) -> Result<Self, ConfError> {
        let mut list = Map::new();
        list.insert("cniVersion".into(), Value::String(cni_version.into()));
        list.insert("name".into(), Value::String(name.into()));
        list.insert("plugins".into(), Value::Array(plugins));
        Self::from_conflist(Value::Object(list).to_string().as_bytes())
    }

    /// Parses a `.conflist`.
    pub fn from_conflist(bytes: &[u8]) -> Result<Self, ConfError> {
        let value: Value = serde_json::from_slice(bytes).map_err(ConfError::Json)?;
        let object = value.as_object().ok_or(ConfError::NotAnObject)?;
        let name = required_string(object, "name")?;
        let cni_version = required_string(object, "cniVersion")?;
        let plugins = object
            .get("plugins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let list = Self {
            name,
            cni_version,
            plugins,
            bytes: bytes.to_vec(),
        };
        list.validate()?;
        Ok(list)
    }

    /// Checks what the invoker relies on. Lists from the parsers always
    /// pass; this is for lists built by hand, since the fields are public.
    pub fn validate(&self) -> Result<(), ConfError> {
        if !is_valid_identifier(&self.name) {
            return Err(ConfError::InvalidName {
                name: self.name.clone(),
            });
        }
        if self.plugins.is_empty() {
            return Err(ConfError::NoPlugins);
        }
        for (index, plugin) in self.plugins.iter().enumerate() {
            let plugin = plugin
                .as_object()
                .ok_or(ConfError::PluginNotAnObject { index })?;
            match plugin.get("type").and_then(Value::as_str) {
                Some(kind) if !kind.is_empty() => {}
                _ => return Err(ConfError::PluginMissingType { index }),
            }
        }
        Ok(())
    }

    /// The list's `disableCheck`: CHECK is skipped for this network.
    pub fn disable_check(&self) -> bool {
        self.list_flag("disableCheck")
    }

    /// The list's `disableGC` (spec 1.1): GC is skipped for this network,
    /// e.g. when several runtimes share its state.
    pub fn disable_gc(&self) -> bool {
        self.list_flag("disableGC")
    }

    /// A boolean list-level field; libcni also takes the strings `"true"`
    /// and `"false"` here.
    fn list_flag(&self, field: &str) -> bool {
        let Ok(value) = serde_json::from_slice::<Value>(&self.bytes) else {
            return false;
        };
        match value.get(field) {
            Some(Value::Bool(flag)) => *flag,
            Some(Value::String(text)) => text.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    /// Parses a single-plugin `.conf` and wraps it into a one-plugin list,
    /// as libcni's `ConfListFromConf` does.
    pub fn from_conf(bytes: &[u8]) -> Result<Self, ConfError> {
        let value: Value = serde_json::from_slice(bytes).map_err(ConfError::Json)?;
        let object = value.as_object().ok_or(ConfError::NotAnObject)?;
        let name = required_string(object, "name")?;
        let cni_version = required_string(object, "cniVersion")?;
        Self::new(name, cni_version, vec![value])
    }

    /// Parses bytes that are either a list or a single plugin config, told
    /// apart by the presence of `plugins`. Cached configs need this because
    /// other runtimes cache single configs too.
    pub fn from_either(bytes: &[u8]) -> Result<Self, ConfError> {
        let value: Value = serde_json::from_slice(bytes).map_err(ConfError::Json)?;
        if value.get("plugins").is_some() {
            Self::from_conflist(bytes)
        } else {
            Self::from_conf(bytes)
        }
    }

    /// Reads a file, choosing the parser by extension as libcni does:
    /// `.conflist` is a list, anything else a single plugin config.
    pub fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<Self, ConfError> {
        if path.extension().is_some_and(|ext| ext == "conflist") {
            Self::from_conflist(bytes)
        } else {
            Self::from_conf(bytes)
        }
    }
}

fn required_string(object: &Map<String, Value>, field: &'static str) -> Result<String, ConfError> {
    object
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or(ConfError::MissingField { field })
}

/// libcni's rule for network names and container ids; both end up in
/// cache file names, so nothing that could walk out of the cache dir.
pub(crate) fn is_valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Lists the configuration files of `dir` sorted by file name. A missing
/// dir is an empty one: the network plugin may simply not be installed yet.
pub fn conf_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in dir_entries(dir)? {
        // Follows symlinks, as installers often link their conf into place.
        if entry.path().is_dir() {
            continue;
        }
        let path = entry.path();
        let wanted = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| CONF_EXTENSIONS.contains(&ext));
        if wanted {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The entries of `dir`, in no order; a missing dir has none.
pub(crate) fn dir_entries(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.collect(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_conflist() {
        let bytes = br#"{"cniVersion":"1.0.0","name":"k8s-pod-network",
            "plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let list = NetworkConfigList::from_conflist(bytes).unwrap();
        assert_eq!(list.name, "k8s-pod-network");
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(list.plugins[1]["type"], "portmap");
        assert_eq!(list.bytes, bytes);
    }

    #[test]
    fn list_flags() {
        let bytes = br#"{"cniVersion":"1.1.0","name":"n","disableCheck":true,
            "disableGC":"true","plugins":[{"type":"x"}]}"#;
        let list = NetworkConfigList::from_conflist(bytes).unwrap();
        assert!(list.disable_check() && list.disable_gc());
        let list = NetworkConfigList::new("n", "1.1.0", vec![json!({"type": "x"})]).unwrap();
        assert!(!list.disable_check() && !list.disable_gc());
    }

    #[test]
    fn wraps_single_conf() {
        let conf =
            json!({"cniVersion": "0.3.1", "name": "mynet", "type": "bridge", "bridge": "cni0"});
        let list = NetworkConfigList::from_conf(&serde_json::to_vec(&conf).unwrap()).unwrap();
        assert_eq!(list.name, "mynet");
        assert_eq!(list.cni_version, "0.3.1");
        assert_eq!(list.plugins, vec![conf.clone()]);
        let reparsed = NetworkConfigList::from_either(&list.bytes).unwrap();
        assert_eq!(reparsed, list);
    }

    #[test]
    fn new_builds_matching_bytes() {
        let list =
            NetworkConfigList::new("lo", "1.0.0", vec![json!({"type": "loopback"})]).unwrap();
        assert_eq!(NetworkConfigList::from_conflist(&list.bytes).unwrap(), list);
        assert!(matches!(
            NetworkConfigList::new("lo", "1.0.0", Vec::new()),
            Err(ConfError::NoPlugins)
        ));
    }

    #[test]
    fn rejects_invalid_lists() {
        type Expect = fn(&ConfError) -> bool;
        let cases: &[(&[u8], Expect)] = &[
            (b"{", |e| matches!(e, ConfError::Json(_))),
            (b"[]", |e| matches!(e, ConfError::NotAnObject)),
            (br#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#, |e| {
                matches!(e, ConfError::MissingField { field: "name" })
            }),
            (br#"{"name":"n","plugins":[{"type":"x"}]}"#, |e| {
                matches!(
                    e,
                    ConfError::MissingField {
                        field: "cniVersion"
                    }
                )
            }),
            (br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, |e| {
                matches!(e, ConfError::NoPlugins)
            }),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"},{}]}"#,
                |e| matches!(e, ConfError::PluginMissingType { index: 1 }),
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":["bridge"]}"#,
                |e| matches!(e, ConfError::PluginNotAnObject { index: 0 }),
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"../etc","plugins":[{"type":"x"}]}"#,
                |e| matches!(e, ConfError::InvalidName { .. }),
            ),
        ];
        for (bytes, expected) in cases {
            let err = NetworkConfigList::from_conflist(bytes).unwrap_err();
            assert!(
                expected(&err),
                "{}: got {err:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let no_type = br#"{"cniVersion":"1.0.0","name":"n"}"#;
        assert!(matches!(
            NetworkConfigList::from_conf(no_type),
            Err(ConfError::PluginMissingType { index: 0 })
        ));
    }

    #[test]
    fn identifiers() {
        for ok in ["a", "k8s-pod-network", "0abc_def.1", "ABC-"] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in ["", "-a", ".hidden", "a/b", "a b", "..", "é"] {
            assert!(!is_valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn lists_conf_files_sorted_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "20-b.conf",
            "10-a.conflist",
            "30-c.json",
            "05-skip.txt",
            "00-noext",
        ] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        std::fs::create_dir(dir.path().join("01-dir.conf")).unwrap();
        let names: Vec<String> = conf_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-a.conflist", "20-b.conf", "30-c.json"]);
        assert!(conf_files(&dir.path().join("missing")).unwrap().is_empty());
    }
}
