//! Builds OCI image layouts for the tests, in memory and reproducibly.
//!
//! No registry is reachable from the test machines, so the images the tests
//! run (busybox, an httpd on busybox, a pause image for containerd) are made
//! here from Debian's static busybox. Invariants: every tar header has uid/gid
//! 0 and the same fixed mtime, entries are written in path order and gzip
//! headers carry no timestamp, so the same inputs always give the same blob
//! digests; a layer shared by several images is therefore stored once by any
//! content-addressed store (containerd, cri-shim).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Media type of the OCI image index (`index.json`).
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a gzip-compressed layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Index annotation containerd reads the full image name from on import.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Standard OCI annotation: the tag of the manifest inside the layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// mtime of every tar entry: fixed so that rebuilding gives identical blobs.
/// 2024-01-01T00:00:00Z rather than 0, because some tools treat 0 as "unset".
const FIXED_MTIME: u64 = 1_704_067_200;
/// The same instant for `created` fields in the config.
const FIXED_CREATED: &str = "2024-01-01T00:00:00Z";

/// `PATH` of every test image, the same as Docker's default.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The GOARCH-style name of the host architecture, as image configs and
/// platform matchers expect (`amd64`, `arm64`, ...).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One filesystem object of a layer. Owner is always root (uid/gid 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEntry {
    /// A directory with its permission bits (e.g. `0o1777` for `/tmp`).
    Dir { mode: u32 },
    /// A regular file.
    File { mode: u32, contents: Vec<u8> },
    /// A symbolic link to `target` (stored verbatim).
    Symlink { target: String },
}

/// Collects layer entries by path; adding a path twice keeps the last one.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: BTreeMap<String, LayerEntry>,
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (`path` absolute or relative to the layer root).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entries
            .insert(normalize_entry_path(path), LayerEntry::Dir { mode });
        self
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> &mut Self {
        let contents = contents.into();
        self.entries.insert(
            normalize_entry_path(path),
            LayerEntry::File { mode, contents },
        );
        self
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let target = target.to_owned();
        self.entries
            .insert(normalize_entry_path(path), LayerEntry::Symlink { target });
        self
    }

    /// The entries as they will be written: explicit ones plus every missing
    /// parent directory (mode 0755), in path order. A parent always sorts
    /// before its children because it is a prefix of their paths.
    pub fn entries(&self) -> BTreeMap<String, LayerEntry> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = Path::new(path).parent();
            while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
                all.entry(dir.to_string_lossy().into_owned())
                    .or_insert(LayerEntry::Dir { mode: 0o755 });
                parent = dir.parent();
            }
        }
        all
    }

    /// Writes the uncompressed tar and gzips it.
    pub fn build(&self) -> anyhow::Result<Layer> {
        let tar = self.tar().context("writing layer tar")?;
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&tar).context("compressing layer")?;
        let tar_gz = gz.finish().context("compressing layer")?;
        Ok(Layer {
            diff_id: sha256_digest(&tar),
            digest: sha256_digest(&tar_gz),
            tar_gz,
        })
    }

    fn tar(&self) -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in self.entries() {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(FIXED_MTIME);
            match entry {
                LayerEntry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(mode);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                LayerEntry::File { mode, contents } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(mode);
                    header.set_size(contents.len() as u64);
                    tar.append_data(&mut header, &path, contents.as_slice())?;
                }
                LayerEntry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, &path, &target)?;
                }
            }
        }
        tar.into_inner()
    }
}

/// Layer paths are stored relative (`bin/sh`), as Docker and containerd write them.
fn normalize_entry_path(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

/// A built layer blob.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The gzip-compressed tar (the blob).
    pub tar_gz: Vec<u8>,
    /// `sha256:` of the uncompressed tar (goes into `rootfs.diff_ids`).
    pub diff_id: String,
    /// `sha256:` of `tar_gz` (the blob digest in the manifest).
    pub digest: String,
}

/// The runtime defaults recorded in the image config.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Default arguments (or command, without an entrypoint).
    pub cmd: Vec<String>,
    /// Entrypoint; empty means none.
    pub entrypoint: Vec<String>,
    /// Working directory; empty means the runtime default (`/`).
    pub working_dir: String,
    /// `port/proto` entries, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// Default user; empty means root.
    pub user: String,
}

impl ImageConfig {
    /// The Docker-compatible `config` object. Empty fields are left out
    /// rather than written as `null`, which every consumer accepts.
    fn to_json(&self) -> Value {
        let mut config = serde_json::Map::new();
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.working_dir.is_empty() {
            config.insert("WorkingDir".into(), json!(self.working_dir));
        }
        if !self.user.is_empty() {
            config.insert("User".into(), json!(self.user));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            config.insert("ExposedPorts".into(), Value::Object(ports));
        }
        Value::Object(config)
    }
}

/// Assembles one image from layers and a config.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    reference: String,
    config: ImageConfig,
    layers: Vec<(Layer, String)>,
}

impl ImageBuilder {
    /// `reference` is the full name, e.g. `docker.io/library/busybox:latest`.
    pub fn new(reference: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            config: ImageConfig::default(),
            layers: Vec::new(),
        }
    }

    /// Sets the runtime defaults.
    pub fn config(mut self, config: ImageConfig) -> Self {
        self.config = config;
        self
    }

    /// Appends a layer on top of the previous ones; `created_by` goes into
    /// the config history, as `docker history` shows it.
    pub fn layer(mut self, layer: Layer, created_by: &str) -> Self {
        self.layers.push((layer, created_by.to_owned()));
        self
    }

    /// Produces config, manifest and index, and collects the blobs.
    pub fn build(self) -> anyhow::Result<OciImage> {
        let tag = reference_tag(&self.reference)
            .with_context(|| format!("image reference {:?} has no tag", self.reference))?
            .to_owned();
        let architecture = host_architecture();
        let mut blobs = BTreeMap::new();

        let config = json!({
            "created": FIXED_CREATED,
            "architecture": architecture,
            "os": "linux",
            "config": self.config.to_json(),
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|(l, _)| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|(_, created_by)| json!({
                "created": FIXED_CREATED,
                "created_by": created_by,
            })).collect::<Vec<_>>(),
        });
        let config = serde_json::to_vec(&config)?;
        let config_digest = sha256_digest(&config);
        let config_descriptor = json!({
            "mediaType": MEDIA_TYPE_CONFIG,
            "digest": config_digest,
            "size": config.len(),
        });
        blobs.insert(config_digest.clone(), config);

        let mut layer_descriptors = Vec::new();
        for (layer, _) in self.layers {
            layer_descriptors.push(json!({
                "mediaType": MEDIA_TYPE_LAYER_GZIP,
                "digest": layer.digest,
                "size": layer.tar_gz.len(),
            }));
            blobs.insert(layer.digest, layer.tar_gz);
        }

        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config_descriptor,
            "layers": layer_descriptors,
        }))?;
        let manifest_digest = sha256_digest(&manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [{
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": { "architecture": architecture, "os": "linux" },
                "annotations": {
                    ANNOTATION_CONTAINERD_NAME: self.reference,
                    ANNOTATION_REF_NAME: tag,
                },
            }],
        }))?;
        blobs.insert(manifest_digest.clone(), manifest);

        Ok(OciImage {
            reference: self.reference,
            manifest_digest,
            config_digest,
            blobs,
            index,
        })
    }
}

/// The tag of a reference (`latest` of `docker.io/library/busybox:latest`);
/// a `:` before the last `/` is a registry port, not a tag.
pub fn reference_tag(reference: &str) -> Option<&str> {
    let name = reference.split('@').next().unwrap_or(reference);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':')
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.is_empty())
}

/// A complete single-image OCI layout, held in memory.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// Full reference recorded in the index annotations.
    pub reference: String,
    /// `sha256:` of the manifest (what `ctr images ls` shows as DIGEST).
    pub manifest_digest: String,
    /// `sha256:` of the config: the image ID.
    pub config_digest: String,
    /// Every blob by digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The contents of `index.json`.
    pub index: Vec<u8>,
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl OciImage {
    /// A blob by `sha256:` digest.
    pub fn blob(&self, digest: &str) -> Option<&[u8]> {
        self.blobs.get(digest).map(Vec::as_slice)
    }

    /// The layout's files, relative path to contents, in the order written.
    fn files(&self) -> Vec<(String, &[u8])> {
        let mut files = vec![
            ("oci-layout".to_owned(), OCI_LAYOUT),
            ("index.json".into(), &self.index),
        ];
        for (digest, data) in &self.blobs {
            files.push((
                format!("blobs/{}", digest.replacen(':', "/", 1)),
                data.as_slice(),
            ));
        }
        files
    }

    /// The layout as an uncompressed tar archive (what `ctr images import` reads).
    pub fn to_tar(&self) -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = archive_header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut header, dir, std::io::empty())?;
        }
        for (path, data) in self.files() {
            let mut header = archive_header(tar::EntryType::Regular, 0o644, data.len() as u64);
            tar.append_data(&mut header, path, data)?;
        }
        tar.into_inner()
    }

    /// Writes the tar archive to `path`, through a temporary file so that a
    /// reader never sees half an archive.
    pub fn write_tar(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tar.tmp");
        fs::write(&tmp, self.to_tar()?).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Writes the layout as a directory (created if missing).
    pub fn write_dir(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        for (path, data) in self.files() {
            let path = dir.join(path);
            fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn archive_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(FIXED_MTIME);
    header
}

/// Reference of the busybox test image.
pub const BUSYBOX_REF: &str = "docker.io/library/busybox:latest";
/// Reference of the httpd-on-busybox test image.
pub const BUSYBOX_HTTPD_REF: &str = "docker.io/library/busybox-httpd:latest";
/// Reference of the pause image given to containerd as `sandbox_image`.
pub const PAUSE_REF: &str = "localhost/pause:latest";
/// The page `busybox-httpd` serves at `/`.
pub const HTTPD_INDEX_HTML: &str = "<html><body>hello from busybox-httpd</body></html>\n";

/// Parses `busybox --list-full` output (`usr/bin/wget` per line) into applet
/// paths, leaving out `bin/busybox` itself, which is the real binary.
pub fn parse_applet_list(list_full: &str) -> Vec<String> {
    list_full
        .lines()
        .map(|line| line.trim().trim_start_matches('/'))
        .filter(|path| !path.is_empty() && *path != "bin/busybox")
        .map(str::to_owned)
        .collect()
}

/// The busybox base layer: the binary, one symlink per applet, and the
/// minimal `/etc` and directories programs expect. `/etc/hosts` and
/// `/etc/resolv.conf` are left out on purpose: the runtime bind-mounts them.
pub fn busybox_base_layer(busybox: &[u8], applets: &[String]) -> anyhow::Result<Layer> {
    let mut layer = LayerBuilder::new();
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "var", "home"] {
        layer.dir(dir, 0o755);
    }
    layer.dir("root", 0o700).dir("tmp", 0o1777);
    layer.file("bin/busybox", 0o755, busybox);
    for applet in applets {
        layer.symlink(applet, "/bin/busybox");
    }
    layer.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    layer.file("etc/group", 0o644, "root:x:0:\nnobody:x:65534:\n");
    layer.build()
}

/// The test images, each with the file name it is written under.
pub fn test_images(busybox: &[u8], applets: &[String]) -> anyhow::Result<Vec<(String, OciImage)>> {
    let base = busybox_base_layer(busybox, applets)?;
    let base_created_by = "busybox-static from Debian, applet symlinks, /etc/passwd, /etc/group";
    let base_config = ImageConfig {
        env: vec![DEFAULT_PATH_ENV.to_owned()],
        cmd: vec!["sh".to_owned()],
        ..ImageConfig::default()
    };
    let strings = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let busybox_image = ImageBuilder::new(BUSYBOX_REF)
        .config(base_config.clone())
        .layer(base.clone(), base_created_by)
        .build()?;

    let mut www = LayerBuilder::new();
    www.file("var/www/index.html", 0o644, HTTPD_INDEX_HTML);
    let httpd_image = ImageBuilder::new(BUSYBOX_HTTPD_REF)
        .config(ImageConfig {
            cmd: strings(&["httpd", "-f", "-v", "-p", "80", "-h", "/var/www"]),
            exposed_ports: vec!["80/tcp".to_owned()],
            ..base_config.clone()
        })
        .layer(base.clone(), base_created_by)
        .layer(www.build()?, "/var/www/index.html")
        .build()?;

    let pause_image = ImageBuilder::new(PAUSE_REF)
        .config(ImageConfig {
            // `sleep & wait` rather than a bare sleep so that TERM is handled at once.
            cmd: strings(&[
                "sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done",
            ]),
            ..base_config
        })
        .layer(base, base_created_by)
        .build()?;

    Ok(vec![
        ("busybox.tar".to_owned(), busybox_image),
        ("busybox-httpd.tar".to_owned(), httpd_image),
        ("pause.tar".to_owned(), pause_image),
    ])
}

/// One image written by [`write_test_images`].
#[derive(Debug, Clone)]
pub struct WrittenImage {
    /// The OCI-layout tar archive.
    pub path: PathBuf,
    /// Full reference the archive is named with.
    pub reference: String,
    /// `sha256:` of the manifest.
    pub manifest_digest: String,
    /// `sha256:` of the config (the image ID).
    pub config_digest: String,
}

/// Builds the test images from the static busybox at `busybox_path` and
/// writes them as tar archives into `out` (and, with `layout_dirs`, also as
/// layout directories named after the archives without `.tar`).
pub fn write_test_images(
    busybox_path: &Path,
    out: &Path,
    layout_dirs: bool,
) -> anyhow::Result<Vec<WrittenImage>> {
    let busybox =
        fs::read(busybox_path).with_context(|| format!("reading {}", busybox_path.display()))?;
    let listing = Command::new(busybox_path)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {} --list-full", busybox_path.display()))?;
    if !listing.status.success() {
        bail!(
            "{} --list-full failed: {}",
            busybox_path.display(),
            listing.status
        );
    }
    let applets = parse_applet_list(&String::from_utf8_lossy(&listing.stdout));
    // A dynamically linked busybox lists applets too, but would not run in an
    // image without its libraries; the applet count alone cannot tell, so this
    // only guards against an empty or broken binary.
    ensure!(
        !applets.is_empty(),
        "{} lists no applets",
        busybox_path.display()
    );

    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (file_name, image) in test_images(&busybox, &applets)? {
        let path = out.join(&file_name);
        image.write_tar(&path)?;
        if layout_dirs {
            let dir = out.join(file_name.trim_end_matches(".tar"));
            image.write_dir(&dir)?;
        }
        written.push(WrittenImage {
            path,
            reference: image.reference,
            manifest_digest: image.manifest_digest,
            config_digest: image.config_digest,
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample_layer() -> LayerBuilder {
        let mut layer = LayerBuilder::new();
        layer
            .file("/bin/busybox", 0o755, b"not really busybox".to_vec())
            .symlink("usr/bin/wget", "/bin/busybox")
            .dir("tmp", 0o1777);
        layer
    }

    /// Unpacks a gzip tar into (path, type, mode, uid, gid, mtime, link target).
    fn list_layer(tar_gz: &[u8]) -> Vec<(String, tar::EntryType, u32, u64, u64, u64, String)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tar_gz));
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.entry_type(),
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                    header.mtime().unwrap(),
                    entry
                        .link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn identical_layers_give_identical_blobs() {
        let a = sample_layer().build().unwrap();
        let b = sample_layer().build().unwrap();
        assert_eq!(a.tar_gz, b.tar_gz);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(a.digest, sha256_digest(&a.tar_gz));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(a.tar_gz.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(a.diff_id, sha256_digest(&tar));
        assert_ne!(a.diff_id, a.digest);

        let mut changed = sample_layer();
        changed.file("etc/motd", 0o644, "hi");
        assert_ne!(changed.build().unwrap().digest, a.digest);
    }

    #[test]
    fn layer_has_parents_first_root_ownership_and_fixed_mtime() {
        let entries = list_layer(&sample_layer().build().unwrap().tar_gz);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin/",
                "bin/busybox",
                "tmp/",
                "usr/",
                "usr/bin/",
                "usr/bin/wget"
            ],
            "implicit parents are added and every parent precedes its children"
        );
        for (path, _, _, uid, gid, mtime, _) in &entries {
            assert_eq!((*uid, *gid, *mtime), (0, 0, FIXED_MTIME), "{path}");
        }
        let by_path = |p: &str| entries.iter().find(|e| e.0 == p).unwrap().clone();
        assert_eq!(by_path("bin/busybox").1, tar::EntryType::Regular);
        assert_eq!(by_path("bin/busybox").2, 0o755);
        assert_eq!(by_path("tmp/").2, 0o1777);
        let wget = by_path("usr/bin/wget");
        assert_eq!(
            (wget.1, wget.6.as_str()),
            (tar::EntryType::Symlink, "/bin/busybox")
        );
    }

    #[test]
    fn image_config_manifest_and_index_are_linked_by_digest() {
        let layer = sample_layer().build().unwrap();
        let image = ImageBuilder::new("docker.io/library/busybox:latest")
            .config(ImageConfig {
                env: vec![DEFAULT_PATH_ENV.into()],
                cmd: vec!["httpd".into(), "-f".into()],
                entrypoint: vec!["/bin/env".into()],
                working_dir: "/var/www".into(),
                exposed_ports: vec!["80/tcp".into()],
                user: String::new(),
            })
            .layer(layer.clone(), "base")
            .build()
            .unwrap();

        let index = parse(&image.index);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1);
        let descriptor = &manifests[0];
        assert_eq!(descriptor["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(descriptor["digest"], image.manifest_digest.as_str());
        assert_eq!(
            descriptor["annotations"][ANNOTATION_CONTAINERD_NAME],
            "docker.io/library/busybox:latest"
        );
        assert_eq!(descriptor["annotations"][ANNOTATION_REF_NAME], "latest");
        assert_eq!(descriptor["platform"]["architecture"], host_architecture());
        assert_eq!(descriptor["platform"]["os"], "linux");

        let manifest_bytes = image.blob(&image.manifest_digest).unwrap();
        assert_eq!(descriptor["size"], manifest_bytes.len());
        assert_eq!(sha256_digest(manifest_bytes), image.manifest_digest);
        let manifest = parse(manifest_bytes);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_TYPE_CONFIG);
        assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(manifest["layers"][0]["digest"], layer.digest.as_str());
        assert_eq!(manifest["layers"][0]["size"], layer.tar_gz.len());

        let config_bytes = image.blob(&image.config_digest).unwrap();
        assert_eq!(manifest["config"]["size"], config_bytes.len());
        let config = parse(config_bytes);
        assert_eq!(config["architecture"], host_architecture());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["rootfs"]["diff_ids"], json!([layer.diff_id]));
        assert_eq!(config["history"].as_array().unwrap().len(), 1);
        assert_eq!(config["config"]["Env"], json!([DEFAULT_PATH_ENV]));
        assert_eq!(config["config"]["Cmd"], json!(["httpd", "-f"]));
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/env"]));
        assert_eq!(config["config"]["WorkingDir"], "/var/www");
        assert_eq!(config["config"]["ExposedPorts"], json!({"80/tcp": {}}));
        assert!(config["config"].get("User").is_none());
        assert_eq!(image.blobs.len(), 3);
    }

    #[test]
    fn layout_tar_holds_exactly_the_layout_files() {
        let image = ImageBuilder::new("localhost/pause:latest")
            .layer(sample_layer().build().unwrap(), "base")
            .build()
            .unwrap();
        let tar = image.to_tar().unwrap();
        assert_eq!(tar, image.to_tar().unwrap(), "archives are reproducible");
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut files = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(path, data);
        }
        assert_eq!(files["oci-layout"], OCI_LAYOUT);
        assert_eq!(files["index.json"], image.index);
        for (digest, data) in &image.blobs {
            let path = format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap());
            assert_eq!(&files[&path], data);
        }
        assert_eq!(
            files.len(),
            2 + 2 + image.blobs.len(),
            "two dirs, two files, the blobs"
        );

        let dir = tempfile::tempdir().unwrap();
        image.write_dir(dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("index.json")).unwrap(),
            image.index
        );
    }

    #[test]
    fn test_images_share_the_base_layer_blob() {
        let applets = parse_applet_list("usr/bin/[\nbin/sh\nbin/busybox\n\nsbin/ifconfig\n");
        assert_eq!(applets, ["usr/bin/[", "bin/sh", "sbin/ifconfig"]);
        let images = test_images(b"fake busybox", &applets).unwrap();
        let names: Vec<_> = images
            .iter()
            .map(|(f, i)| (f.as_str(), i.reference.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("busybox.tar", BUSYBOX_REF),
                ("busybox-httpd.tar", BUSYBOX_HTTPD_REF),
                ("pause.tar", PAUSE_REF)
            ]
        );
        let layers_of = |image: &OciImage| -> Vec<String> {
            let manifest = parse(image.blob(&image.manifest_digest).unwrap());
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_owned())
                .collect()
        };
        let (busybox, httpd, pause) = (&images[0].1, &images[1].1, &images[2].1);
        assert_eq!(layers_of(busybox).len(), 1);
        assert_eq!(layers_of(httpd)[0], layers_of(busybox)[0]);
        assert_eq!(layers_of(httpd).len(), 2);
        assert_eq!(layers_of(pause), layers_of(busybox));
        assert_ne!(
            pause.config_digest, busybox.config_digest,
            "different Cmd, different image"
        );

        let base = list_layer(busybox.blob(&layers_of(busybox)[0]).unwrap());
        let find = |p: &str| base.iter().find(|e| e.0 == p).cloned();
        assert_eq!(find("bin/sh").unwrap().6, "/bin/busybox");
        assert_eq!(find("tmp/").unwrap().2, 0o1777);
        assert!(find("etc/passwd").is_some() && find("etc/group").is_some());
        assert!(
            find("etc/hosts").is_none(),
            "the runtime provides /etc/hosts"
        );

        let httpd_config = parse(httpd.blob(&httpd.config_digest).unwrap());
        assert_eq!(
            httpd_config["config"]["ExposedPorts"],
            json!({"80/tcp": {}})
        );
        assert_eq!(httpd_config["config"]["Env"], json!([DEFAULT_PATH_ENV]));
    }

    #[test]
    fn reference_tag_ignores_registry_port() {
        assert_eq!(
            reference_tag("docker.io/library/busybox:latest"),
            Some("latest")
        );
        assert_eq!(reference_tag("localhost:5000/pause:3.9"), Some("3.9"));
        assert_eq!(reference_tag("localhost:5000/pause"), None);
        assert_eq!(reference_tag("busybox@sha256:abc"), None);
    }
}
