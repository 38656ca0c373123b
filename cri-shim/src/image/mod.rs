//! The image store: imports OCI image layouts, unpacks each layer once,
//! resolves image references, and hands out the layer directories a
//! container's overlayfs rootfs is built from.
//!
//! On disk under `<root>/images`:
//! - `blobs/sha256/<hex>`: manifests, configs and compressed layers, by digest;
//! - `layers/<diff id hex>/`: each layer unpacked once, whiteouts in overlayfs form;
//! - `images.json`: the image records, replaced atomically (write tmp + rename);
//! - `tmp/`: work in progress, emptied by [`ImageStore::open`].
//!
//! Images come in by [`ImageStore::import`] (OCI layouts) or by a registry
//! pull ([`pull::Puller`]). A pull downloads without holding the store's
//! mutation lock; it first *pins* the blobs and layers it needs, so that a
//! concurrent removal of another image sharing them keeps them.
//!
//! Invariants: a blob or layer directory appears under its final name only
//! when complete and verified against its digest; a record is written only
//! after all its files are in place, and before the files it no longer needs
//! are deleted, so a crash leaves at worst unreferenced files, which `open`
//! removes. Hence there must be one `ImageStore` per root directory.

mod layout;
pub mod pull;
mod reference;
pub mod registry;
pub mod service;
mod unpack;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

use layout::{HashingReader, Layout, io_err, sha256_hex, verify};
use reference::{Reference, is_lower_hex};

pub use pull::{PullError, Puller};
pub use reference::normalize_reference;
pub use registry::RegistryConfig;
pub use service::ImageService;
pub use unpack::{HostLayerFs, LayerFs, NodeKind, UnpackError};

/// Annotation containerd names an imported image by.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Standard OCI annotation; usually just a tag, sometimes a full reference.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const RECORDS_FILE: &str = "images.json";

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a valid image name, tag or digest.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An image ID prefix that matches more than one image.
    #[error("image reference {reference:?} matches more than one image")]
    AmbiguousReference {
        /// The prefix as given.
        reference: String,
    },
    /// No image in the store is known by this reference.
    #[error("image {reference:?} not found")]
    NotFound {
        /// The reference or ID looked up.
        reference: String,
    },
    /// The path has no `index.json`.
    #[error("{path} is not an OCI image layout: it has no index.json")]
    NotALayout {
        /// Directory or archive imported.
        path: PathBuf,
    },
    /// The layout holds no image manifest for this platform.
    #[error("{path} holds no image for linux/{architecture}")]
    NoImages {
        /// Directory or archive imported.
        path: PathBuf,
        /// This host's architecture.
        architecture: String,
    },
    /// A name was given for a layout holding several images.
    #[error("cannot give the name {name:?} to all {count} images of the layout")]
    NameForSeveralImages {
        /// The name given.
        name: String,
        /// How many images the layout holds.
        count: usize,
    },
    /// A filesystem operation in the store or on the imported layout failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The imported archive could not be read (corrupt or truncated).
    #[error("reading image archive {path}: {source}")]
    ReadArchive {
        /// The archive.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// An index, manifest, config or the records file is not valid JSON of its kind.
    #[error("parsing {what} in {path}: {source}")]
    InvalidJson {
        /// Which document.
        what: String,
        /// Where it was read from.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A blob the layout refers to is not in it.
    #[error("blob {digest} is missing from the layout ({path})")]
    MissingBlob {
        /// The blob's digest.
        digest: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A JSON blob too large to be a manifest or config.
    #[error("blob {digest} has {size} bytes, too many for an image manifest or config")]
    BlobTooLarge {
        /// The blob's digest.
        digest: String,
        /// Its declared size.
        size: u64,
    },
    /// A blob's size differs from its descriptor.
    #[error("blob {digest} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob's digest.
        digest: String,
        /// Size in the descriptor.
        expected: u64,
        /// Size read.
        actual: u64,
    },
    /// A blob's content does not match its digest.
    #[error("blob {digest} has content with digest {actual}")]
    DigestMismatch {
        /// The expected digest.
        digest: String,
        /// The digest of what was read.
        actual: String,
    },
    /// An unpacked layer does not match the diff ID in the image config.
    #[error("layer {layer} unpacks to {actual}, the image config says {diff_id}")]
    DiffIdMismatch {
        /// The layer blob's digest.
        layer: String,
        /// The diff ID in the config.
        diff_id: String,
        /// The digest of the uncompressed tar.
        actual: String,
    },
    /// A digest with an algorithm other than sha256.
    #[error("unsupported digest {digest:?}: only sha256 is supported")]
    UnsupportedDigest {
        /// The digest.
        digest: String,
    },
    /// A layer or manifest in a format this store does not read.
    #[error("blob {digest} has unsupported media type {media_type}")]
    UnsupportedMediaType {
        /// The blob's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A manifest whose layer count differs from its config's diff IDs.
    #[error("manifest {manifest} lists {layers} layers but its config {diff_ids} diff IDs")]
    LayerCount {
        /// The manifest's digest.
        manifest: String,
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
    /// A layer could not be unpacked.
    #[error("unpacking layer {layer}: {source}")]
    Unpack {
        /// The layer blob's digest.
        layer: String,
        /// Underlying error.
        #[source]
        source: UnpackError,
    },
    /// An image's unpacked layer directory has disappeared.
    #[error("unpacked layer {diff_id} is missing ({path})")]
    LayerMissing {
        /// The layer's diff ID.
        diff_id: String,
        /// Where it should be.
        path: PathBuf,
    },
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<hex of the config blob>`.
    pub id: String,
    /// Normalised tag references (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// `docker.io/library/busybox@sha256:<manifest digest>`.
    pub repo_digests: Vec<String>,
    /// Bytes of what the image's name resolves to, as containerd counts
    /// them: the index (if any), manifest, config and compressed layers.
    pub size: u64,
    /// Runtime defaults from the image config.
    pub config: ImageConfig,
}

/// The parts of an image config a container is created from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`; empty means `/`.
    pub working_dir: String,
    /// `User` (`uid`, `name`, `uid:gid`, `name:group`); empty means root.
    pub user: String,
    /// `StopSignal` (`SIGTERM`, `15`, ...).
    pub stop_signal: Option<String>,
}

impl From<&ImageConfiguration> for ImageConfig {
    fn from(image: &ImageConfiguration) -> Self {
        let config = image.config().clone().unwrap_or_default();
        Self {
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            env: config.env().clone().unwrap_or_default(),
            working_dir: config.working_dir().clone().unwrap_or_default(),
            user: config.user().clone().unwrap_or_default(),
            stop_signal: config.stop_signal().clone(),
        }
    }
}

/// Disk usage of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes allocated (blocks), each inode counted once.
    pub used_bytes: u64,
    /// Inodes, each counted once.
    pub inodes_used: u64,
}

/// What the store keeps about one image (the `images.json` entries).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    id: String,
    manifest_digest: String,
    /// Bottom-most first, as in the manifest.
    layers: Vec<LayerRecord>,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    config: ImageConfig,
    /// See [`Image::size`]; records written before it was kept count the
    /// layers only.
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    /// Digest of the compressed blob.
    digest: String,
    /// Digest of the uncompressed tar (names the unpacked directory).
    diff_id: String,
    /// Compressed size.
    size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordsFile {
    images: Vec<ImageRecord>,
}

impl ImageRecord {
    fn to_image(&self) -> Image {
        Image {
            id: self.id.clone(),
            repo_tags: self.repo_tags.clone(),
            repo_digests: self.repo_digests.clone(),
            size: self
                .size
                .unwrap_or_else(|| self.layers.iter().map(|l| l.size).sum()),
            config: self.config.clone(),
        }
    }

    /// Blob digests (hex) this image needs.
    fn blob_hexes(&self) -> impl Iterator<Item = &str> {
        [self.manifest_digest.as_str(), self.id.as_str()]
            .into_iter()
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
            .filter_map(|d| d.strip_prefix("sha256:"))
    }

    fn diff_id_hexes(&self) -> impl Iterator<Item = &str> {
        self.layers
            .iter()
            .filter_map(|l| l.diff_id.strip_prefix("sha256:"))
    }
}

/// The image store; cheap to clone, shared between threads.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `<root>/images`.
    dir: PathBuf,
    layer_fs: Arc<dyn LayerFs>,
    /// Serialises imports and removals, which decide from the set of records
    /// which files to write or delete; lookups only take `records`.
    mutation: Mutex<()>,
    records: RwLock<Vec<ImageRecord>>,
    /// Blobs and layers in-flight pulls need; removals keep them. Changed
    /// only under `mutation`, except that dropping a pin never needs it.
    pins: Mutex<Pins>,
    tmp_counter: AtomicU64,
}

/// Pin counts by blob hex and by diff ID hex.
#[derive(Debug, Default)]
struct Pins {
    blobs: HashMap<String, usize>,
    layers: HashMap<String, usize>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Records are replaced whole, after they are persisted, so a panic elsewhere
/// cannot leave them half-updated: a poisoned lock is safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ImageStore {
    /// Opens (creating if needed) the store under `<root>/images`, unpacking
    /// layers for overlayfs with [`HostLayerFs`] (needs root). Blobs are
    /// content-addressed under `<root>/images/blobs/sha256/<hex>`, unpacked
    /// layers live under `<root>/images/layers/<diffid hex>/`, and the image
    /// records in `<root>/images/images.json`, written atomically.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Self::open_with(root, Arc::new(HostLayerFs))
    }

    /// As [`ImageStore::open`], with the privileged unpack operations given.
    pub fn open_with(root: &Path, layer_fs: Arc<dyn LayerFs>) -> Result<Self, ImageError> {
        let dir = root.join("images");
        let store = Self {
            inner: Arc::new(Inner {
                dir,
                layer_fs,
                mutation: Mutex::new(()),
                records: RwLock::new(Vec::new()),
                pins: Mutex::new(Pins::default()),
                tmp_counter: AtomicU64::new(0),
            }),
        };
        let inner = &store.inner;
        for dir in [
            inner.dir.join("blobs/sha256"),
            inner.layers_dir(),
            inner.tmp_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        // Whatever is in tmp/ was being made when a previous process stopped.
        let tmp = inner.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_err("reading", &tmp))? {
            let path = entry.map_err(io_err("reading", &tmp))?.path();
            remove_path(&path)?;
        }
        let records = inner.load_records()?;
        *inner
            .records
            .write()
            .unwrap_or_else(PoisonError::into_inner) = records;
        inner.remove_unreferenced()?;
        Ok(store)
    }

    /// The store directory, `<root>/images`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Imports an OCI image layout, as a tar archive or a directory. The
    /// image is named `name` if given, else by the index annotations
    /// (`io.containerd.image.name`, else `org.opencontainers.image.ref.name`
    /// when it is a full reference); without either it is known by ID only.
    /// Layers are unpacked here, each stored once. Re-importing an image is
    /// idempotent; a tag that named another image is moved to this one.
    /// Blocking: call it from `spawn_blocking` in async code.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let name = name.map(parse_image_name).transpose()?;
        let _mutation = lock(&self.inner.mutation);
        let staging = TmpPath::new(self.inner.tmp_path("import"));
        let layout = Layout::open(path, staging.path())?;
        let manifests = layout.manifests()?;
        if manifests.is_empty() {
            return Err(ImageError::NoImages {
                path: path.to_path_buf(),
                architecture: oci_spec::image::Arch::default().to_string(),
            });
        }
        if let Some(name) = &name
            && manifests.len() > 1
        {
            return Err(ImageError::NameForSeveralImages {
                name: name.to_string(),
                count: manifests.len(),
            });
        }

        let mut records = self.inner.records_snapshot();
        let mut imported = Vec::new();
        for entry in &manifests {
            let tag = match &name {
                Some(name) => Some(name.clone()),
                None => name_from_annotations(&entry.annotations)?,
            };
            let manifest_digest = entry.descriptor.digest().to_string();
            let record = self
                .inner
                .import_manifest(&layout, &entry.descriptor, &records)?;
            imported.push(record.id.clone());
            let repo_digest = tag.as_ref().map(|t| t.with_digest(&manifest_digest));
            add_record(
                &mut records,
                record,
                tag.map(|t| t.to_string()),
                repo_digest,
            );
        }
        self.inner.commit(records)?;
        Ok(imported.iter().filter_map(|id| self.get(id)).collect())
    }

    /// Looks an image up by full ID (`sha256:<hex>`), tag reference
    /// (normalised: `busybox` is `docker.io/library/busybox:latest`), digest
    /// reference (`repo@sha256:<manifest digest>`), or unique ID prefix (with
    /// or without `sha256:`), in containerd's order.
    pub fn get(&self, reference: &str) -> Option<Image> {
        let id = self.inner.resolve(reference).ok().flatten()?;
        self.inner.with_record(&id, ImageRecord::to_image)
    }

    /// Every image, in import order.
    pub fn list(&self) -> Vec<Image> {
        self.inner
            .records_snapshot()
            .iter()
            .map(ImageRecord::to_image)
            .collect()
    }

    /// Unpacked layer directories of the image, top-most layer FIRST
    /// (overlayfs `lowerdir=` order). A layer that occurs twice is listed
    /// once, at its top-most place, which shows the same files.
    pub fn rootfs_layers(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        let diff_ids = self
            .inner
            .with_record(&image.id, |r| {
                r.layers
                    .iter()
                    .map(|l| l.diff_id.clone())
                    .collect::<Vec<_>>()
            })
            .ok_or_else(|| ImageError::NotFound {
                reference: image.id.clone(),
            })?;
        let mut seen = HashSet::new();
        let mut dirs = Vec::new();
        for diff_id in diff_ids.iter().rev() {
            if !seen.insert(diff_id) {
                continue;
            }
            let dir = self.inner.layer_dir(diff_id)?;
            if !dir.is_dir() {
                return Err(ImageError::LayerMissing {
                    diff_id: diff_id.clone(),
                    path: dir,
                });
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Removes the image (all its tags) and the layers and blobs no other
    /// image uses. Removing an absent image succeeds. Blocking.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let _mutation = lock(&self.inner.mutation);
        let Some(id) = self.inner.resolve(reference)? else {
            return Ok(());
        };
        let mut records = self.inner.records_snapshot();
        let Some(position) = records.iter().position(|r| r.id == id) else {
            return Ok(());
        };
        let removed = records.remove(position);
        self.inner.commit(records)?;
        self.inner.remove_unreferenced_of(&removed)
    }

    /// Bytes and inodes used under `<root>/images`. Blocking: it walks the tree.
    pub fn usage(&self) -> Result<StoreUsage, ImageError> {
        let mut usage = StoreUsage::default();
        let mut seen = HashSet::new();
        let mut pending = vec![self.inner.dir.clone()];
        while let Some(path) = pending.pop() {
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                // Removed while we walk: it no longer uses anything.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ImageError::Io {
                        op: "inspecting",
                        path,
                        source,
                    });
                }
            };
            if seen.insert((meta.dev(), meta.ino())) {
                usage.inodes_used += 1;
                usage.used_bytes += meta.blocks() * 512;
            }
            if meta.is_dir() {
                let entries = match fs::read_dir(&path) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(ImageError::Io {
                            op: "reading",
                            path,
                            source,
                        });
                    }
                };
                for entry in entries {
                    pending.push(entry.map_err(io_err("reading", &path))?.path());
                }
            }
        }
        Ok(usage)
    }
}

/// Parses a name for an imported image: a tag reference, never a digest.
fn parse_image_name(name: &str) -> Result<Reference, ImageError> {
    let reference = Reference::parse(name)?;
    if reference.digest.is_some() {
        return Err(ImageError::InvalidReference {
            reference: name.to_owned(),
            reason: "an imported image is named by a tag, not a digest",
        });
    }
    Ok(reference)
}

/// The name an index entry gives its image, as containerd reads it.
fn name_from_annotations(
    annotations: &HashMap<String, String>,
) -> Result<Option<Reference>, ImageError> {
    if let Some(name) = annotations.get(ANNOTATION_CONTAINERD_NAME) {
        return parse_image_name(name).map(Some);
    }
    // Mostly a bare tag ("latest"), which names nothing without a repository.
    match annotations.get(ANNOTATION_REF_NAME) {
        Some(name) if name.contains(['/', ':']) => parse_image_name(name).map(Some),
        _ => Ok(None),
    }
}

/// Adds (or merges) `record` into `records`, moving `tag` to it and adding
/// `repo_digest` (`repo@sha256:...`) to its digests.
fn add_record(
    records: &mut Vec<ImageRecord>,
    mut record: ImageRecord,
    tag: Option<String>,
    repo_digest: Option<String>,
) {
    if let Some(tag) = &tag {
        for other in records.iter_mut().filter(|r| r.id != record.id) {
            other.repo_tags.retain(|t| t != tag);
        }
    }
    let index = match records.iter().position(|r| r.id == record.id) {
        Some(index) => index,
        None => {
            record.repo_tags.clear();
            record.repo_digests.clear();
            records.push(record);
            records.len() - 1
        }
    };
    let target = &mut records[index];
    for (list, value) in [
        (&mut target.repo_tags, tag),
        (&mut target.repo_digests, repo_digest),
    ] {
        if let Some(value) = value
            && !list.contains(&value)
        {
            list.push(value);
        }
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn layer_compression(descriptor: &Descriptor) -> Result<Compression, ImageError> {
    match descriptor.media_type() {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Ok(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Ok(Compression::Gzip)
        }
        MediaType::Other(t) if t == DOCKER_LAYER_GZIP || t == DOCKER_FOREIGN_LAYER_GZIP => {
            Ok(Compression::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Ok(Compression::Zstd)
        }
        other => Err(ImageError::UnsupportedMediaType {
            digest: descriptor.digest().to_string(),
            media_type: other.to_string(),
        }),
    }
}

impl Inner {
    fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn records_path(&self) -> PathBuf {
        self.dir.join(RECORDS_FILE)
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex)
    }

    /// A fresh name under `tmp/`; unique within the process, and `tmp/` is
    /// emptied at open, so unique enough for the one store of this root.
    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// `layers/<hex>` of a diff ID, which must be a sha256 digest.
    fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        match diff_id.strip_prefix("sha256:") {
            Some(hex) if hex.len() == 64 && is_lower_hex(hex) => Ok(self.layers_dir().join(hex)),
            _ => Err(ImageError::UnsupportedDigest {
                digest: diff_id.to_owned(),
            }),
        }
    }

    fn records_snapshot(&self) -> Vec<ImageRecord> {
        self.records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn with_record<T>(&self, id: &str, f: impl FnOnce(&ImageRecord) -> T) -> Option<T> {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        records.iter().find(|r| r.id == id).map(f)
    }

    /// The ID `reference` names, following containerd's order: a full ID;
    /// else a tag or digest reference; else a unique ID prefix.
    fn resolve(&self, reference: &str) -> Result<Option<String>, ImageError> {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(hex) = reference.strip_prefix("sha256:")
            && hex.len() == 64
        {
            return Ok(records
                .iter()
                .find(|r| r.id == reference)
                .map(|r| r.id.clone()));
        }
        let parsed = Reference::parse(reference);
        if let Ok(parsed) = &parsed {
            let normalized = parsed.to_string();
            let found = records.iter().find(|r| {
                let names = if parsed.digest.is_some() {
                    &r.repo_digests
                } else {
                    &r.repo_tags
                };
                names.contains(&normalized)
            });
            if let Some(found) = found {
                return Ok(Some(found.id.clone()));
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !is_lower_hex(prefix) {
            // Neither an ID prefix nor (if it failed to parse) a reference.
            return parsed.map(|_| None);
        }
        let mut matches = records
            .iter()
            .filter(|r| r.id["sha256:".len()..].starts_with(prefix));
        match (matches.next(), matches.next()) {
            (Some(only), None) => Ok(Some(only.id.clone())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(ImageError::AmbiguousReference {
                reference: reference.to_owned(),
            }),
        }
    }

    fn load_records(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let path = self.records_path();
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ImageError::Io {
                    op: "reading",
                    path,
                    source,
                });
            }
        };
        let file: RecordsFile =
            serde_json::from_slice(&data).map_err(|source| ImageError::InvalidJson {
                what: "image records".into(),
                path: path.clone(),
                source,
            })?;
        Ok(file.images)
    }

    /// Persists `records` atomically, then makes them the current ones.
    fn commit(&self, records: Vec<ImageRecord>) -> Result<(), ImageError> {
        let path = self.records_path();
        let tmp = self.tmp_path("images.json");
        let file = RecordsFile { images: records };
        let data = serde_json::to_vec_pretty(&file).map_err(|source| ImageError::InvalidJson {
            what: "image records".into(),
            path: tmp.clone(),
            source,
        })?;
        write_synced(&tmp, &data)?;
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
        *self.records.write().unwrap_or_else(PoisonError::into_inner) = file.images;
        Ok(())
    }

    /// Brings one image's blobs and layers into the store and returns its
    /// record (without names). An image already in the store is not re-read.
    fn import_manifest(
        &self,
        layout: &Layout,
        descriptor: &Descriptor,
        records: &[ImageRecord],
    ) -> Result<ImageRecord, ImageError> {
        let manifest_digest = descriptor.digest().to_string();
        let manifest_bytes = layout.read_json_blob(descriptor)?;
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| ImageError::InvalidJson {
                what: format!("manifest {manifest_digest}"),
                path: layout.dir.clone(),
                source,
            })?;
        let config_descriptor = manifest.config();
        let id = config_descriptor.digest().to_string();
        if let Some(existing) = records.iter().find(|r| r.id == id) {
            return Ok(existing.clone());
        }
        let config_bytes = layout.read_json_blob(config_descriptor)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageError::InvalidJson {
                what: format!("image config {id}"),
                path: layout.dir.clone(),
                source,
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::LayerCount {
                manifest: manifest_digest,
                layers: manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }

        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            self.import_layer(layout, layer, diff_id)?;
            layers.push(LayerRecord {
                digest: layer.digest().to_string(),
                diff_id: diff_id.clone(),
                size: layer.size(),
            });
        }
        self.store_blob(sha256_hex(config_descriptor)?, &config_bytes)?;
        self.store_blob(sha256_hex(descriptor)?, &manifest_bytes)?;
        let size = descriptor.size()
            + config_descriptor.size()
            + layers.iter().map(|l| l.size).sum::<u64>();
        Ok(ImageRecord {
            id,
            manifest_digest,
            layers,
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            config: ImageConfig::from(&config),
            size: Some(size),
        })
    }

    /// Stores the layer blob and unpacks it, unless already done.
    fn import_layer(
        &self,
        layout: &Layout,
        layer: &Descriptor,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let compression = layer_compression(layer)?;
        let layer_dir = self.layer_dir(diff_id)?;
        let blob = self.blob_path(sha256_hex(layer)?);
        if !blob.exists() {
            self.ingest_blob(layout, layer, &blob)?;
        }
        if layer_dir.is_dir() {
            return Ok(());
        }
        self.unpack_blob(&blob, layer.digest().as_ref(), compression, diff_id)
    }

    /// Unpacks the layer blob at `blob` into `layers/<diff id hex>`, checking
    /// the uncompressed tar against `diff_id`. Another pull or import that
    /// put the same layer there first wins; ours is dropped.
    fn unpack_blob(
        &self,
        blob: &Path,
        layer_digest: &str,
        compression: Compression,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let layer_dir = self.layer_dir(diff_id)?;
        let layer_digest = layer_digest.to_owned();
        let work = TmpPath::new(self.tmp_path("layer"));
        fs::create_dir(work.path()).map_err(io_err("creating", work.path()))?;
        let file = BufReader::new(File::open(blob).map_err(io_err("opening", blob))?);
        let tar: Box<dyn Read> = match compression {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(
                |source| ImageError::Unpack {
                    layer: layer_digest.clone(),
                    source: UnpackError::Read(source),
                },
            )?),
        };
        let mut tar = HashingReader::new(tar);
        unpack::unpack_layer(&mut tar, work.path(), self.layer_fs.as_ref()).map_err(|source| {
            ImageError::Unpack {
                layer: layer_digest.clone(),
                source,
            }
        })?;
        let (_, hex) = tar.finish().map_err(|source| ImageError::Unpack {
            layer: layer_digest.clone(),
            source: UnpackError::Read(source),
        })?;
        let actual = format!("sha256:{hex}");
        if actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                layer: layer_digest,
                diff_id: diff_id.to_owned(),
                actual,
            });
        }
        match fs::rename(work.path(), &layer_dir) {
            Ok(()) => Ok(()),
            // ENOTEMPTY/EEXIST: someone else unpacked the same layer meanwhile.
            Err(_) if layer_dir.is_dir() => Ok(()),
            Err(e) => Err(io_err("renaming into place", &layer_dir)(e)),
        }
    }

    /// Brings a blob from the layout into the store, verified. Staged blobs
    /// are moved; blobs of a caller's directory are copied.
    fn ingest_blob(
        &self,
        layout: &Layout,
        descriptor: &Descriptor,
        dest: &Path,
    ) -> Result<(), ImageError> {
        let source = layout.blob_path(descriptor)?;
        let open = |path: &Path| {
            File::open(path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => ImageError::MissingBlob {
                    digest: descriptor.digest().to_string(),
                    path: path.to_path_buf(),
                },
                _ => ImageError::Io {
                    op: "opening",
                    path: path.to_path_buf(),
                    source: e,
                },
            })
        };
        if layout.staged {
            let (size, hex) = HashingReader::new(BufReader::new(open(&source)?))
                .finish()
                .map_err(io_err("reading", &source))?;
            verify(descriptor, size, &hex)?;
            return fs::rename(&source, dest).map_err(io_err("moving into place", dest));
        }
        let tmp = TmpPath::new(self.tmp_path("blob"));
        let mut reader = HashingReader::new(BufReader::new(open(&source)?));
        let mut out = File::create(tmp.path()).map_err(io_err("creating", tmp.path()))?;
        io::copy(&mut reader, &mut out).map_err(io_err("copying", &source))?;
        out.sync_all().map_err(io_err("writing", tmp.path()))?;
        let (size, hex) = reader.finish().map_err(io_err("reading", &source))?;
        verify(descriptor, size, &hex)?;
        fs::rename(tmp.path(), dest).map_err(io_err("moving into place", dest))
    }

    /// Writes an already verified blob, unless present.
    fn store_blob(&self, hex: &str, data: &[u8]) -> Result<(), ImageError> {
        let dest = self.blob_path(hex);
        if dest.exists() {
            return Ok(());
        }
        let tmp = TmpPath::new(self.tmp_path("blob"));
        write_synced(tmp.path(), data)?;
        fs::rename(tmp.path(), &dest).map_err(io_err("moving into place", &dest))
    }

    /// Blob hexes and diff ID hexes the current records need or a pull has
    /// pinned.
    fn referenced(&self) -> (HashSet<String>, HashSet<String>) {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        let pins = lock(&self.pins);
        let blobs = records
            .iter()
            .flat_map(|r| r.blob_hexes().map(str::to_owned))
            .chain(pins.blobs.keys().cloned())
            .collect();
        let layers = records
            .iter()
            .flat_map(|r| r.diff_id_hexes().map(str::to_owned))
            .chain(pins.layers.keys().cloned())
            .collect();
        (blobs, layers)
    }

    /// Deletes the files of `removed` that no current record needs. Keeps
    /// going past a failure so that one stuck file does not keep the rest;
    /// reports the first failure.
    fn remove_unreferenced_of(&self, removed: &ImageRecord) -> Result<(), ImageError> {
        let (blobs, layers) = self.referenced();
        let mut paths: Vec<PathBuf> = removed
            .blob_hexes()
            .filter(|hex| !blobs.contains(*hex))
            .map(|hex| self.blob_path(hex))
            .collect();
        paths.extend(
            removed
                .diff_id_hexes()
                .filter(|hex| !layers.contains(*hex))
                .map(|hex| self.layers_dir().join(hex)),
        );
        remove_all(paths)
    }

    /// Deletes blobs and layer directories no record needs (left by a crash
    /// between writing files and writing records, or the reverse).
    fn remove_unreferenced(&self) -> Result<(), ImageError> {
        let (blobs, layers) = self.referenced();
        let mut paths = Vec::new();
        for (dir, keep) in [
            (self.dir.join("blobs/sha256"), &blobs),
            (self.layers_dir(), &layers),
        ] {
            for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
                let entry = entry.map_err(io_err("reading", &dir))?;
                if !keep.contains(entry.file_name().to_string_lossy().as_ref()) {
                    paths.push(entry.path());
                }
            }
        }
        remove_all(paths)
    }
}

fn remove_all(paths: Vec<PathBuf>) -> Result<(), ImageError> {
    let mut first_error = None;
    for path in paths {
        if let Err(e) = remove_path(&path) {
            tracing::warn!(path = %path.display(), error = %e, "removing unused image data");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes a file or a directory tree; absent is fine.
fn remove_path(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => unpack::remove_tree(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_err("removing", path))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut file = File::create(path).map_err(io_err("creating", path))?;
    file.write_all(data).map_err(io_err("writing", path))?;
    file.sync_all().map_err(io_err("writing", path))
}

/// A path under `tmp/` removed on drop unless it was renamed away, so that a
/// failed import leaves nothing behind.
struct TmpPath(PathBuf);

impl TmpPath {
    fn new(path: PathBuf) -> Self {
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        if let Err(e) = remove_path(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "removing temporary image data");
        }
    }
}

#[cfg(test)]
mod tests;
