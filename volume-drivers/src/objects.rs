//! Payloads of the API-object volumes (secret, configMap, projected) from
//! object data the kubelet supplies through [`ObjectStore`]. Fetching and
//! watching the objects is the kubelet's job; these functions only turn an
//! object plus a volume source into the files of the volume, with upstream's
//! `items`, `defaultMode` and `optional` rules.
//!
//! Static pods cannot reference Secrets, ConfigMaps or service account
//! tokens (upstream rejects their mirror pods, and a standalone kubelet has
//! no API to read them from): use [`NoApiObjects`] for them, which fails every
//! lookup with a message saying so.

use std::collections::BTreeMap;
use std::error::Error as StdError;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, KeyToPath, Pod, ProjectedVolumeSource, Secret,
    SecretVolumeSource, ServiceAccountTokenProjection,
};

use crate::atomic_writer::{FileProjection, Payload};
use crate::downward_api::{self, DEFAULT_MODE, DownwardApiError, file_mode};
use crate::resources::NodeAllocatable;

/// An error from the kubelet's object source.
pub type LookupError = Box<dyn StdError + Send + Sync>;

/// Where the drivers get Secrets, ConfigMaps and service account tokens.
/// The kubelet implements it over its API cache; `Ok(None)` means "not found".
pub trait ObjectStore: Send + Sync {
    fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, LookupError>;
    fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, LookupError>;
    /// A token for the pod's service account, as TokenRequest returns it
    /// (`audience` empty = the API server's; `expiration_seconds` defaults to 3600).
    fn service_account_token(
        &self,
        pod: &Pod,
        projection: &ServiceAccountTokenProjection,
    ) -> Result<String, LookupError>;
}

/// The object store for static pods and standalone mode: every lookup fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoApiObjects;

#[derive(Debug, thiserror::Error)]
#[error("static pods may not reference {kind} (no API server to read it from)")]
struct NoApiError {
    kind: &'static str,
}

impl ObjectStore for NoApiObjects {
    fn secret(&self, _: &str, _: &str) -> Result<Option<Secret>, LookupError> {
        Err(Box::new(NoApiError { kind: "secrets" }))
    }
    fn config_map(&self, _: &str, _: &str) -> Result<Option<ConfigMap>, LookupError> {
        Err(Box::new(NoApiError { kind: "configmaps" }))
    }
    fn service_account_token(
        &self,
        _: &Pod,
        _: &ServiceAccountTokenProjection,
    ) -> Result<String, LookupError> {
        Err(Box::new(NoApiError {
            kind: "service account tokens",
        }))
    }
}

/// An in-memory object store the kubelet (or a test) fills.
#[derive(Debug, Clone, Default)]
pub struct InMemoryObjects {
    /// Keyed by (namespace, name).
    pub secrets: BTreeMap<(String, String), Secret>,
    /// Keyed by (namespace, name).
    pub config_maps: BTreeMap<(String, String), ConfigMap>,
    /// Keyed by audience ("" for the default audience).
    pub tokens: BTreeMap<String, String>,
}

impl InMemoryObjects {
    pub fn insert_secret(&mut self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        let secret = Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), k8s_openapi::ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        self.secrets
            .insert((namespace.to_owned(), name.to_owned()), secret);
    }

    pub fn insert_config_map(&mut self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let cm = ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        self.config_maps
            .insert((namespace.to_owned(), name.to_owned()), cm);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no token for audience {0:?}")]
struct NoToken(String);

impl ObjectStore for InMemoryObjects {
    fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, LookupError> {
        Ok(self
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned())
    }
    fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, LookupError> {
        Ok(self
            .config_maps
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned())
    }
    fn service_account_token(
        &self,
        _: &Pod,
        projection: &ServiceAccountTokenProjection,
    ) -> Result<String, LookupError> {
        let audience = projection.audience.clone().unwrap_or_default();
        self.tokens
            .get(&audience)
            .cloned()
            .ok_or_else(|| Box::new(NoToken(audience)) as LookupError)
    }
}

/// Why an object volume has no payload.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("couldn't get secret {namespace}/{name}")]
    SecretLookup {
        namespace: String,
        name: String,
        #[source]
        source: LookupError,
    },
    #[error("couldn't get configMap {namespace}/{name}")]
    ConfigMapLookup {
        namespace: String,
        name: String,
        #[source]
        source: LookupError,
    },
    #[error("couldn't get service account token for path {path:?}")]
    Token {
        path: String,
        #[source]
        source: LookupError,
    },
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret volume without secretName")]
    NoSecretName,
    #[error("references non-existent secret key: {0}")]
    MissingSecretKey(String),
    #[error("configmap references non-existent config key: {0}")]
    MissingConfigKey(String),
    #[error("invalid mode {mode:#o} for {path:?}: must be between 0 and 0777")]
    BadMode { path: String, mode: i32 },
    #[error("conflicting duplicate paths: {0:?}")]
    DuplicatePath(String),
    #[error(
        "unsupported projected volume source {0} (only secret, configMap, downwardAPI and serviceAccountToken)"
    )]
    UnsupportedProjection(&'static str),
    #[error("projected downwardAPI")]
    DownwardApi(#[source] DownwardApiError),
}

/// Selects keys of `data` into a payload: every key with `default_mode`, or
/// exactly `items` when given; a missing key fails unless `optional`.
fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
    missing: impl Fn(String) -> ObjectError,
) -> Result<Payload, ObjectError> {
    let mut out = Payload::new();
    let mode = |m: Option<i32>, path: &str| {
        file_mode(m, default_mode).ok_or_else(|| ObjectError::BadMode {
            path: path.to_owned(),
            mode: m.unwrap_or(default_mode),
        })
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                let mode = mode(None, &k)?;
                out.insert(k, FileProjection { data: v, mode });
            }
        }
        Some(items) => {
            for item in items {
                let Some(v) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(missing(item.key.clone()));
                };
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: mode(item.mode, &item.path)?,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    // stringData is write-only in the API and merged over data; accept it
    // from callers that build objects by hand.
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

fn config_map_data(c: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = c
        .binary_data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in c.data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

fn get_secret(
    store: &dyn ObjectStore,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, ObjectError> {
    store
        .secret(namespace, name)
        .map_err(|source| ObjectError::SecretLookup {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })
}

fn get_config_map(
    store: &dyn ObjectStore,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigMap>, ObjectError> {
    store
        .config_map(namespace, name)
        .map_err(|source| ObjectError::ConfigMapLookup {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })
}

/// The payload of a `secret` volume.
pub fn secret_payload(
    namespace: &str,
    source: &SecretVolumeSource,
    store: &dyn ObjectStore,
) -> Result<Payload, ObjectError> {
    let name = source
        .secret_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or(ObjectError::NoSecretName)?;
    let optional = source.optional.unwrap_or(false);
    let default_mode = source.default_mode.unwrap_or(DEFAULT_MODE);
    match get_secret(store, namespace, name)? {
        Some(s) => select(
            secret_data(s),
            source.items.as_deref(),
            default_mode,
            optional,
            ObjectError::MissingSecretKey,
        ),
        None if optional => Ok(Payload::new()),
        None => Err(ObjectError::SecretNotFound(name.into())),
    }
}

/// The payload of a `configMap` volume.
pub fn config_map_payload(
    namespace: &str,
    source: &ConfigMapVolumeSource,
    store: &dyn ObjectStore,
) -> Result<Payload, ObjectError> {
    let optional = source.optional.unwrap_or(false);
    let default_mode = source.default_mode.unwrap_or(DEFAULT_MODE);
    match get_config_map(store, namespace, &source.name)? {
        Some(c) => select(
            config_map_data(c),
            source.items.as_deref(),
            default_mode,
            optional,
            ObjectError::MissingConfigKey,
        ),
        None if optional => Ok(Payload::new()),
        None => Err(ObjectError::ConfigMapNotFound(source.name.clone())),
    }
}

/// The payload of a `projected` volume: all sources merged, each file with
/// the item's mode or the volume's `defaultMode`; two sources naming the same
/// path are an error.
pub fn projected_payload(
    pod: &Pod,
    source: &ProjectedVolumeSource,
    store: &dyn ObjectStore,
    node: &NodeAllocatable,
) -> Result<Payload, ObjectError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let default_mode = source.default_mode.unwrap_or(DEFAULT_MODE);
    let mut out = Payload::new();
    let mut merge = |part: Payload| -> Result<(), ObjectError> {
        for (path, file) in part {
            if out.insert(path.clone(), file).is_some() {
                return Err(ObjectError::DuplicatePath(path));
            }
        }
        Ok(())
    };
    for projection in source.sources.iter().flatten() {
        if let Some(s) = &projection.secret {
            let optional = s.optional.unwrap_or(false);
            let part = match get_secret(store, namespace, &s.name)? {
                Some(secret) => select(
                    secret_data(secret),
                    s.items.as_deref(),
                    default_mode,
                    optional,
                    ObjectError::MissingSecretKey,
                )?,
                None if optional => Payload::new(),
                None => return Err(ObjectError::SecretNotFound(s.name.clone())),
            };
            merge(part)?;
        }
        if let Some(c) = &projection.config_map {
            let optional = c.optional.unwrap_or(false);
            let part = match get_config_map(store, namespace, &c.name)? {
                Some(cm) => select(
                    config_map_data(cm),
                    c.items.as_deref(),
                    default_mode,
                    optional,
                    ObjectError::MissingConfigKey,
                )?,
                None if optional => Payload::new(),
                None => return Err(ObjectError::ConfigMapNotFound(c.name.clone())),
            };
            merge(part)?;
        }
        if let Some(d) = &projection.downward_api {
            let items = d.items.as_deref().unwrap_or_default();
            merge(
                downward_api::payload(pod, items, Some(default_mode), node)
                    .map_err(ObjectError::DownwardApi)?,
            )?;
        }
        if let Some(t) = &projection.service_account_token {
            let token =
                store
                    .service_account_token(pod, t)
                    .map_err(|source| ObjectError::Token {
                        path: t.path.clone(),
                        source,
                    })?;
            let mode = file_mode(None, default_mode).ok_or(ObjectError::BadMode {
                path: t.path.clone(),
                mode: default_mode,
            })?;
            merge(Payload::from([(
                t.path.clone(),
                FileProjection {
                    data: token.into_bytes(),
                    mode,
                },
            )]))?;
        }
        if projection.cluster_trust_bundle.is_some() {
            return Err(ObjectError::UnsupportedProjection("clusterTrustBundle"));
        }
        if projection.pod_certificate.is_some() {
            return Err(ObjectError::UnsupportedProjection("podCertificate"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, ObjectFieldSelector,
        SecretProjection, VolumeProjection,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const NODE: NodeAllocatable = NodeAllocatable {
        cpu_millicores: 1000,
        memory_bytes: 1 << 30,
        ephemeral_storage_bytes: 1 << 30,
    };

    fn store() -> InMemoryObjects {
        let mut s = InMemoryObjects::default();
        s.insert_secret("ns", "creds", &[("user", b"admin"), ("pass", b"s3cret")]);
        s.insert_config_map("ns", "conf", &[("a.conf", "A"), ("b.conf", "B")]);
        s.tokens.insert("vault".into(), "tok-123".into());
        s
    }

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
            ..Default::default()
        }
    }

    #[test]
    fn secret_all_keys_with_default_mode() {
        let src = SecretVolumeSource {
            secret_name: Some("creds".into()),
            default_mode: Some(0o400),
            ..Default::default()
        };
        let p = secret_payload("ns", &src, &store()).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["pass", "user"]);
        assert_eq!(p["user"].data, b"admin");
        assert_eq!(p["user"].mode, 0o400);
    }

    #[test]
    fn items_select_paths_and_modes() {
        let src = SecretVolumeSource {
            secret_name: Some("creds".into()),
            items: Some(vec![item("user", "db/username", Some(0o440))]),
            ..Default::default()
        };
        let p = secret_payload("ns", &src, &store()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p["db/username"].mode, 0o440);

        let src = ConfigMapVolumeSource {
            name: "conf".into(),
            items: Some(vec![item("a.conf", "x", None), item("nope", "y", None)]),
            ..Default::default()
        };
        let e = config_map_payload("ns", &src, &store()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configmap references non-existent config key: nope"
        );
        let src = ConfigMapVolumeSource {
            optional: Some(true),
            ..src
        };
        let p = config_map_payload("ns", &src, &store()).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["x"]);
        assert_eq!(p["x"].mode, 0o644);
    }

    #[test]
    fn missing_objects_and_optional() {
        let src = SecretVolumeSource {
            secret_name: Some("absent".into()),
            ..Default::default()
        };
        let e = secret_payload("ns", &src, &store()).unwrap_err();
        assert_eq!(e.to_string(), "secret \"absent\" not found");
        let src = SecretVolumeSource {
            optional: Some(true),
            ..src
        };
        assert!(secret_payload("ns", &src, &store()).unwrap().is_empty());
        let e = secret_payload(
            "ns",
            &SecretVolumeSource {
                secret_name: Some("creds".into()),
                ..Default::default()
            },
            &NoApiObjects,
        )
        .unwrap_err();
        let chain = format!("{e}: {}", e.source().unwrap());
        assert!(
            chain.contains("static pods may not reference secrets"),
            "{chain}"
        );
    }

    #[test]
    fn projected_merges_sources_and_refuses_duplicates() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut src = ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    secret: Some(SecretProjection {
                        name: "creds".into(),
                        items: Some(vec![item("user", "user", None)]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "conf".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "podname".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.name".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("vault".into()),
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let p = projected_payload(&pod, &src, &store(), &NODE).unwrap();
        assert_eq!(
            p.keys().collect::<Vec<_>>(),
            ["a.conf", "b.conf", "podname", "token", "user"]
        );
        assert_eq!(p["token"].data, b"tok-123");
        assert_eq!(p["podname"].data, b"p");
        assert!(p.values().all(|f| f.mode == 0o440));

        src.sources.as_mut().unwrap().push(VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: "conf".into(),
                items: Some(vec![item("a.conf", "user", None)]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = projected_payload(&pod, &src, &store(), &NODE).unwrap_err();
        assert_eq!(e.to_string(), "conflicting duplicate paths: \"user\"");
    }
}
