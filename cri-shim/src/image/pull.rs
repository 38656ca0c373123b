//! Registry pulls into the image store.
//!
//! A pull resolves the reference to this host's image manifest, fetches the
//! config, then fetches (up to [`MAX_CONCURRENT_DOWNLOADS`] at a time) and
//! unpacks every layer the store lacks, and finally records the image under
//! its tag (`RepoTags`) and `repo@<digest the reference resolved to>`
//! (`RepoDigests`), as containerd does.
//!
//! Invariants: the blobs and layers a pull needs are pinned (see
//! [`super::ImageStore`]) before it looks at what the store has, so a
//! concurrent removal cannot take them away; downloads go to `tmp/` and are
//! renamed into `blobs/` only once verified; a failed pull removes whatever
//! it placed that no image uses, so it leaves no trace. Concurrent pulls of
//! the same reference with the same credentials share one download: the
//! pull runs as its own task and every caller gets its result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use k8s_cri::v1::AuthConfig;
use oci_spec::image::{Descriptor, ImageConfiguration};
use sha2::{Digest as _, Sha256};

use super::layout::sha256_hex;
use super::reference::Reference;
use super::registry::auth::{Credentials, InvalidAuthError};
use super::registry::{RegistryClient, RegistryConfig, RegistryError, Session};
use super::{
    Compression, Image, ImageConfig, ImageError, ImageRecord, ImageStore, Inner, LayerRecord,
    TmpPath, add_record, layer_compression, lock, remove_all,
};

/// Layers downloaded at the same time by one pull (containerd's default).
pub const MAX_CONCURRENT_DOWNLOADS: usize = 3;

/// Errors of a pull. The messages follow containerd's
/// (`failed to pull and unpack image "<ref>": ...`), which users and tools
/// grep for.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image reference is malformed.
    #[error(transparent)]
    InvalidReference(ImageError),
    /// The CRI `AuthConfig` cannot be used.
    #[error(transparent)]
    InvalidAuth(#[from] InvalidAuthError),
    /// The reference could not be resolved to a manifest.
    #[error(
        "failed to pull and unpack image {reference:?}: failed to resolve reference \
         {reference:?}: {source}"
    )]
    Resolve {
        /// The normalised reference.
        reference: String,
        /// What went wrong.
        #[source]
        source: RegistryError,
    },
    /// The manifest, config or a layer could not be fetched.
    #[error("failed to pull and unpack image {reference:?}: {source}")]
    Fetch {
        /// The normalised reference.
        reference: String,
        /// What went wrong.
        #[source]
        source: RegistryError,
    },
    /// The image config is not valid JSON of its kind.
    #[error(
        "failed to pull and unpack image {reference:?}: parsing image config {digest}: {source}"
    )]
    InvalidConfig {
        /// The normalised reference.
        reference: String,
        /// The config digest.
        digest: String,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Storing or unpacking failed, or the image is malformed.
    #[error("failed to pull and unpack image {reference:?}: {source}")]
    Store {
        /// The normalised reference.
        reference: String,
        /// What went wrong.
        #[source]
        source: ImageError,
    },
    /// The pull task panicked or was cancelled (runtime shutdown).
    #[error("failed to pull and unpack image {reference:?}: pull task ended: {reason}")]
    Aborted {
        /// The normalised reference.
        reference: String,
        /// The join error.
        reason: String,
    },
}

impl PullError {
    /// Whether the image (or its platform manifest, or a blob) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Resolve { source, .. } | Self::Fetch { source, .. } => source.is_not_found(),
            _ => false,
        }
    }

    /// Whether the request itself was malformed.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Self::InvalidReference(_) | Self::InvalidAuth(_))
    }
}

type PullResult = Result<Image, Arc<PullError>>;
type SharedPull = Shared<BoxFuture<'static, PullResult>>;

/// Pulls images from registries into an [`ImageStore`]; cheap to clone.
#[derive(Clone)]
pub struct Puller {
    store: ImageStore,
    client: RegistryClient,
    /// In-flight pulls by reference and credentials, with a generation id
    /// so a finished pull's entry is removed only by its own callers.
    in_flight: Arc<Mutex<HashMap<String, (u64, SharedPull)>>>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store)
            .field("registries", self.client.config())
            .finish_non_exhaustive()
    }
}

impl Puller {
    /// A puller into `store` with the registry settings `config`.
    pub fn new(store: ImageStore, config: RegistryConfig) -> Result<Self, RegistryError> {
        Ok(Self {
            store,
            client: RegistryClient::new(config)?,
            in_flight: Arc::default(),
            next_id: Arc::default(),
        })
    }

    /// Pulls `image` with the CRI credentials `auth`, or joins a pull of the
    /// same reference with the same credentials already under way.
    pub async fn pull(&self, image: &str, auth: Option<&AuthConfig>) -> PullResult {
        let reference =
            Reference::parse(image).map_err(|e| Arc::new(PullError::InvalidReference(e)))?;
        let domain = reference
            .repository
            .split_once('/')
            .map_or(reference.repository.as_str(), |(domain, _)| domain);
        let credentials = Credentials::from_auth_config(auth, domain)
            .map_err(|e| Arc::new(PullError::from(e)))?;
        let key = format!("{reference}\n{}", fingerprint(&credentials));
        let pull = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(&key) {
                Some((_, pull)) => {
                    tracing::debug!(image = %reference, "joining a pull under way");
                    pull.clone()
                }
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let name = reference.to_string();
                    // The task forgets its entry when it ends, however it
                    // ends, so no later caller joins a finished pull, even
                    // when every caller of this one has gone away.
                    let forget = ForgetOnDrop {
                        in_flight: Arc::clone(&self.in_flight),
                        key: key.clone(),
                        id,
                    };
                    let task = tokio::spawn(
                        pull_image(
                            self.store.clone(),
                            self.client.clone(),
                            reference,
                            credentials,
                        )
                        .inspect(move |_| drop(forget)),
                    );
                    let pull = async move {
                        match task.await {
                            Ok(result) => result.map_err(Arc::new),
                            Err(e) => Err(Arc::new(PullError::Aborted {
                                reference: name,
                                reason: e.to_string(),
                            })),
                        }
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(key, (id, pull.clone()));
                    pull
                }
            }
        };
        pull.await
    }
}

/// Removes a pull's entry from the in-flight map when dropped, if the entry
/// is still that pull's.
struct ForgetOnDrop {
    in_flight: Arc<Mutex<HashMap<String, (u64, SharedPull)>>>,
    key: String,
    id: u64,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.in_flight);
        if in_flight
            .get(&self.key)
            .is_some_and(|(current, _)| *current == self.id)
        {
            in_flight.remove(&self.key);
        }
    }
}

/// Tells credentials apart without keeping them: pulls with different
/// credentials must not share a result (one may be refused, the other not).
fn fingerprint(credentials: &Credentials) -> String {
    let material = match credentials {
        Credentials::Anonymous => return "anonymous".to_owned(),
        Credentials::Basic { username, password } => format!("basic\0{username}\0{password}"),
        Credentials::IdentityToken(token) => format!("identity\0{token}"),
        Credentials::RegistryToken(token) => format!("registry\0{token}"),
    };
    hex::encode(Sha256::digest(material.as_bytes()))
}

/// One layer to bring in.
#[derive(Debug, Clone)]
struct PlannedLayer {
    descriptor: Descriptor,
    diff_id: String,
    compression: Compression,
}

/// The whole pull of one image; runs as its own task.
async fn pull_image(
    store: ImageStore,
    client: RegistryClient,
    reference: Reference,
    credentials: Credentials,
) -> Result<Image, PullError> {
    let started = Instant::now();
    let name = reference.to_string();
    let fetch_err = |source| PullError::Fetch {
        reference: name.clone(),
        source,
    };
    let store_err = |source| PullError::Store {
        reference: name.clone(),
        source,
    };
    let session = client.session(&reference, credentials).map_err(fetch_err)?;
    let resolved = session
        .resolve(&reference)
        .await
        .map_err(|source| PullError::Resolve {
            reference: name.clone(),
            source,
        })?;
    let manifest = &resolved.manifest;
    let config_descriptor = manifest.config();
    // The config is read from the store when there (an image pulled again).
    let local_config = {
        let path = sha256_hex(config_descriptor)
            .ok()
            .map(|hex| store.inner.blob_path(hex));
        let read = path.and_then(|p| std::fs::read(p).ok());
        read.filter(|data| {
            data.len() as u64 == config_descriptor.size()
                && Some(hex::encode(Sha256::digest(data)).as_str())
                    == config_descriptor.as_digest_sha256()
        })
    };
    let config_bytes = match local_config {
        Some(data) => data,
        None => session
            .fetch_config(config_descriptor)
            .await
            .map_err(fetch_err)?,
    };
    let id = config_descriptor.digest().to_string();
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|source| PullError::InvalidConfig {
            reference: name.clone(),
            digest: id.clone(),
            source,
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(store_err(ImageError::LayerCount {
            manifest: resolved.manifest_descriptor.digest().to_string(),
            layers: manifest.layers().len(),
            diff_ids: diff_ids.len(),
        }));
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(descriptor, diff_id)| {
            sha256_hex(descriptor)?;
            store.inner.layer_dir(diff_id)?;
            Ok(PlannedLayer {
                descriptor: descriptor.clone(),
                diff_id: diff_id.clone(),
                compression: layer_compression(descriptor)?,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()
        .map_err(store_err)?;
    let manifest_hex = sha256_hex(&resolved.manifest_descriptor)
        .map_err(store_err)?
        .to_owned();
    let config_hex = sha256_hex(config_descriptor).map_err(store_err)?.to_owned();

    let mut blobs = vec![manifest_hex.clone(), config_hex.clone()];
    blobs.extend(
        layers
            .iter()
            .filter_map(|l| l.descriptor.as_digest_sha256().map(str::to_owned)),
    );
    let diff_id_hexes: Vec<String> = layers
        .iter()
        .filter_map(|l| l.diff_id.strip_prefix("sha256:").map(str::to_owned))
        .collect();
    let pins = blocking(&store, move |store| Ok(store.pin(blobs, diff_id_hexes)))
        .await
        .map_err(store_err)?;

    // Collected first: a lazily mapped iterator here trips the compiler's
    // `Send` inference for the spawned task.
    // After the first failure no layer starts, but those under way are
    // drained rather than dropped: an unpack runs on a blocking thread that
    // dropping its future would not stop, and it would write into the store
    // after the cleanup below.
    let failed = AtomicBool::new(false);
    let downloads: Vec<_> = layers
        .iter()
        .map(|layer| {
            let failed = &failed;
            let (store, session, name) = (&store, &session, &name);
            async move {
                if failed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let result = fetch_layer(store, session, layer, name, failed).await;
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                result
            }
        })
        .collect();
    let fetched = futures::stream::iter(downloads)
        .buffer_unordered(MAX_CONCURRENT_DOWNLOADS)
        .collect::<Vec<Result<(), PullError>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, PullError>>();
    let record = match fetched {
        Ok(_) => Some(PulledImage {
            record: ImageRecord {
                id: id.clone(),
                manifest_digest: resolved.manifest_descriptor.digest().to_string(),
                layers: layers
                    .iter()
                    .map(|l| LayerRecord {
                        digest: l.descriptor.digest().to_string(),
                        diff_id: l.diff_id.clone(),
                        size: l.descriptor.size(),
                    })
                    .collect(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                config: ImageConfig::from(&config),
                size: Some(
                    resolved.index_size.unwrap_or_default()
                        + resolved.manifest_bytes.len() as u64
                        + config_descriptor.size()
                        + layers.iter().map(|l| l.descriptor.size()).sum::<u64>(),
                ),
            },
            documents: [
                (manifest_hex, resolved.manifest_bytes),
                (config_hex, config_bytes),
            ],
            tag: reference.tag.is_some().then(|| reference.to_string()),
            repo_digest: reference.with_digest(&resolved.digest),
        }),
        Err(_) => None,
    };
    let committed = blocking(&store, move |_| pins.finish(record)).await;
    fetched?;
    committed.map_err(store_err)?;
    let image = store.get(&id).ok_or_else(|| {
        store_err(ImageError::NotFound {
            reference: id.clone(),
        })
    })?;
    tracing::info!(
        image = %name,
        image.id = %image.id,
        digest = %resolved.digest,
        layers = layers.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pulled image"
    );
    Ok(image)
}

/// Downloads the layer blob unless the store has it, then unpacks it unless
/// the store has the layer.
async fn fetch_layer(
    store: &ImageStore,
    session: &Session,
    layer: &PlannedLayer,
    name: &str,
    failed: &AtomicBool,
) -> Result<(), PullError> {
    let reference_err = |source| PullError::Store {
        reference: name.to_owned(),
        source,
    };
    let hex = sha256_hex(&layer.descriptor)
        .map_err(reference_err)?
        .to_owned();
    let blob = store.inner.blob_path(&hex);
    let digest = layer.descriptor.digest().to_string();
    if !blob.is_file() {
        let tmp = TmpPath::new(store.inner.tmp_path("pull"));
        session
            .fetch_blob_to(&layer.descriptor, tmp.path())
            .await
            .map_err(|source| PullError::Fetch {
                reference: name.to_owned(),
                source,
            })?;
        std::fs::rename(tmp.path(), &blob)
            .map_err(super::layout::io_err("moving into place", &blob))
            .map_err(reference_err)?;
        tracing::debug!(layer = %digest, size = layer.descriptor.size(), "fetched layer");
    }
    let layer_dir = store
        .inner
        .layer_dir(&layer.diff_id)
        .map_err(reference_err)?;
    // Another layer failed while this one downloaded: the pull is lost, so
    // its unpack would only be undone again.
    if !layer_dir.is_dir() && !failed.load(Ordering::SeqCst) {
        let (compression, diff_id) = (layer.compression, layer.diff_id.clone());
        blocking(store, move |store| {
            store
                .inner
                .unpack_blob(&blob, &digest, compression, &diff_id)
        })
        .await
        .map_err(reference_err)?;
    }
    Ok(())
}

/// What a successful pull records.
struct PulledImage {
    record: ImageRecord,
    /// `(hex, bytes)` of the manifest and the config, stored with the record.
    documents: [(String, Vec<u8>); 2],
    tag: Option<String>,
    repo_digest: String,
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    store: &ImageStore,
    f: impl FnOnce(ImageStore) -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store))
        .await
        .map_err(|e| ImageError::Io {
            op: "running",
            path: "image store task".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Blobs and layers pinned for one pull. Dropped without
/// [`PinGuard::finish`] (a cancelled pull), it only unpins; what the pull
/// placed is then removed by the next removal or the next start.
struct PinGuard {
    inner: Arc<Inner>,
    blobs: Vec<String>,
    layers: Vec<String>,
    released: bool,
}

impl ImageStore {
    /// Pins blob and diff ID hexes, under the mutation lock so that no
    /// removal is halfway through deciding what to delete.
    fn pin(&self, blobs: Vec<String>, layers: Vec<String>) -> PinGuard {
        let _mutation = lock(&self.inner.mutation);
        let mut pins = lock(&self.inner.pins);
        for hex in &blobs {
            *pins.blobs.entry(hex.clone()).or_default() += 1;
        }
        for hex in &layers {
            *pins.layers.entry(hex.clone()).or_default() += 1;
        }
        PinGuard {
            inner: Arc::clone(&self.inner),
            blobs,
            layers,
            released: false,
        }
    }
}

impl PinGuard {
    /// Records the pulled image (if the pull succeeded), unpins, and removes
    /// whatever this pull placed that no image and no other pull needs.
    fn finish(mut self, pulled: Option<PulledImage>) -> Result<(), ImageError> {
        let inner = Arc::clone(&self.inner);
        let _mutation = lock(&inner.mutation);
        let committed = match pulled {
            Some(pulled) => (|| {
                for (hex, data) in &pulled.documents {
                    inner.store_blob(hex, data)?;
                }
                let mut records = inner.records_snapshot();
                add_record(
                    &mut records,
                    pulled.record,
                    pulled.tag,
                    Some(pulled.repo_digest),
                );
                inner.commit(records)
            })(),
            None => Ok(()),
        };
        self.unpin();
        let (blobs, layers) = inner.referenced();
        let mut leftovers: Vec<_> = self
            .blobs
            .iter()
            .filter(|hex| !blobs.contains(*hex))
            .map(|hex| inner.blob_path(hex))
            .collect();
        leftovers.extend(
            self.layers
                .iter()
                .filter(|hex| !layers.contains(*hex))
                .map(|hex| inner.layers_dir().join(hex)),
        );
        let cleaned = remove_all(leftovers);
        committed.and(cleaned)
    }

    fn unpin(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut guard = lock(&self.inner.pins);
        let pins = &mut *guard;
        for (map, hexes) in [
            (&mut pins.blobs, &self.blobs),
            (&mut pins.layers, &self.layers),
        ] {
            for hex in hexes {
                if let Some(count) = map.get_mut(hex) {
                    *count -= 1;
                    if *count == 0 {
                        map.remove(hex);
                    }
                }
            }
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.unpin();
    }
}

#[cfg(test)]
mod tests;
