//! Store and service tests against OCI layouts written by hand, with the
//! privileged unpack operations recorded instead of performed.

use std::io::{Read as _, Write};

use flate2::write::GzEncoder;
use k8s_cri::v1::image_service_server::ImageService as _;
use k8s_cri::v1::{
    ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tar::EntryType as T;
use tonic::Request;

use super::unpack::tests::{RecordingLayerFs, TestEntry, raw_entry};
use super::*;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub(super) struct TestLayer {
    pub(super) diff_id: String,
    /// The blob: the compressed tar.
    pub(super) gz: Vec<u8>,
    pub(super) media_type: &'static str,
}

pub(super) const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

impl TestLayer {
    /// The same layer compressed with zstd instead.
    pub(super) fn to_zstd(&self) -> TestLayer {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(self.gz.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        TestLayer {
            diff_id: self.diff_id.clone(),
            gz: zstd::encode_all(tar.as_slice(), 3).unwrap(),
            media_type: LAYER_ZSTD,
        }
    }
}

pub(super) fn layer(entries: &[TestEntry<'_>]) -> TestLayer {
    let mut tar = tar::Builder::new(Vec::new());
    for (kind, path, mode, data, link) in entries {
        raw_entry(&mut tar, *kind, path, *mode, data, *link);
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    TestLayer {
        diff_id: sha256(&tar),
        gz: gz.finish().unwrap(),
        media_type: LAYER_GZIP,
    }
}

pub(super) fn base_layer() -> TestLayer {
    layer(&[
        (T::Directory, "bin/", 0o755, b"", None),
        (T::Regular, "bin/busybox", 0o755, b"ELF busybox", None),
        (T::Symlink, "bin/sh", 0o777, b"", Some("/bin/busybox")),
        (T::Directory, "etc/", 0o755, b"", None),
        (T::Regular, "etc/motd", 0o644, b"welcome", None),
        (T::Directory, "var/cache/", 0o755, b"", None),
        (T::Regular, "var/cache/old", 0o644, b"old", None),
    ])
}

pub(super) fn www_layer() -> TestLayer {
    layer(&[
        (T::Regular, "var/www/index.html", 0o644, b"hello", None),
        (T::Regular, "etc/.wh.motd", 0o644, b"", None),
        (T::Regular, "var/cache/.wh..wh..opq", 0o644, b"", None),
    ])
}

/// A single-image layout in memory.
pub(super) struct TestImage {
    pub(super) index: Vec<u8>,
    pub(super) blobs: Vec<(String, Vec<u8>)>,
    pub(super) id: String,
    pub(super) manifest_digest: String,
}

#[derive(Default)]
pub(super) struct Options<'a> {
    /// `io.containerd.image.name`.
    pub(super) name: Option<&'a str>,
    /// `org.opencontainers.image.ref.name`.
    pub(super) ref_name: Option<&'a str>,
    pub(super) cmd: &'a [&'a str],
    pub(super) user: &'a str,
}

pub(super) fn image(layers: &[&TestLayer], options: Options<'_>) -> TestImage {
    let config = serde_json::to_vec(&json!({
        "architecture": oci_spec::image::Arch::default().to_string(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin"],
            "Cmd": options.cmd,
            "User": options.user,
            "WorkingDir": "/var/www",
            "StopSignal": "SIGQUIT",
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>() },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": sha256(&l.gz),
            "size": l.gz.len(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut annotations = serde_json::Map::new();
    if let Some(name) = options.name {
        annotations.insert(ANNOTATION_CONTAINERD_NAME.into(), json!(name));
    }
    if let Some(ref_name) = options.ref_name {
        annotations.insert(ANNOTATION_REF_NAME.into(), json!(ref_name));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": annotations,
        }],
    }))
    .unwrap();
    let id = sha256(&config);
    let manifest_digest = sha256(&manifest);
    let mut blobs = vec![(id.clone(), config), (manifest_digest.clone(), manifest)];
    blobs.extend(layers.iter().map(|l| (sha256(&l.gz), l.gz.clone())));
    TestImage {
        index,
        blobs,
        id,
        manifest_digest,
    }
}

impl TestImage {
    /// Bytes of manifest, config and layers.
    pub(super) fn total_size(&self) -> u64 {
        self.blobs.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// The manifest's bytes.
    pub(super) fn manifest(&self) -> &[u8] {
        &self
            .blobs
            .iter()
            .find(|(d, _)| *d == self.manifest_digest)
            .unwrap()
            .1
    }

    fn write_dir(&self, dir: &Path) {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(dir.join("index.json"), &self.index).unwrap();
        for (digest, data) in &self.blobs {
            fs::write(
                dir.join("blobs/sha256").join(&digest["sha256:".len()..]),
                data,
            )
            .unwrap();
        }
    }

    fn write_tar(&self, path: &Path) {
        let mut tar = tar::Builder::new(File::create(path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            tar.append_data(&mut header, name, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &self.index);
        for (digest, data) in &self.blobs {
            add(
                &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
                data,
            );
        }
        tar.into_inner().unwrap().flush().unwrap();
    }
}

pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) store: ImageStore,
    layer_fs: Arc<RecordingLayerFs>,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layer_fs = Arc::new(RecordingLayerFs::default());
        let store = ImageStore::open_with(&dir.path().join("root"), layer_fs.clone()).unwrap();
        Self {
            dir,
            store,
            layer_fs,
        }
    }

    pub(super) fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Writes `image` as a tar archive and imports it.
    pub(super) fn import(
        &self,
        image: &TestImage,
        name: Option<&str>,
    ) -> Result<Vec<Image>, ImageError> {
        let path = self.dir.path().join(format!("{}.tar", &image.id[7..19]));
        image.write_tar(&path);
        self.store.import(&path, name)
    }

    pub(super) fn count(&self, sub: &str) -> usize {
        fs::read_dir(self.root().join("images").join(sub))
            .unwrap()
            .count()
    }
}

pub(super) fn busybox() -> TestImage {
    image(
        &[&base_layer()],
        Options {
            name: Some("docker.io/library/busybox:latest"),
            cmd: &["sh"],
            ..Options::default()
        },
    )
}

pub(super) fn httpd() -> TestImage {
    image(
        &[&base_layer(), &www_layer()],
        Options {
            name: Some("docker.io/library/busybox-httpd:latest"),
            ref_name: Some("latest"),
            cmd: &["httpd", "-f"],
            user: "www:www",
        },
    )
}

#[test]
fn import_of_an_archive_names_unpacks_and_persists() {
    let fx = Fixture::new();
    let source = busybox();
    let imported = fx.import(&source, None).unwrap();
    assert_eq!(imported.len(), 1);
    let image = &imported[0];
    assert_eq!(image.id, source.id);
    assert_eq!(image.repo_tags, ["docker.io/library/busybox:latest"]);
    assert_eq!(
        image.repo_digests,
        [format!(
            "docker.io/library/busybox@{}",
            source.manifest_digest
        )]
    );
    assert_eq!(
        image.size,
        source.total_size(),
        "manifest, config and layer"
    );
    assert_eq!(
        image.config,
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            working_dir: "/var/www".into(),
            user: String::new(),
            stop_signal: Some("SIGQUIT".into()),
        }
    );

    let layers = fx.store.rootfs_layers(image).unwrap();
    assert_eq!(
        layers,
        [fx.root()
            .join("images/layers")
            .join(&base_layer().diff_id[7..])]
    );
    assert_eq!(
        fs::read(layers[0].join("bin/busybox")).unwrap(),
        b"ELF busybox"
    );
    assert_eq!(
        fs::read_link(layers[0].join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    for (digest, data) in &source.blobs {
        let stored = fx.root().join("images/blobs/sha256").join(&digest[7..]);
        assert_eq!(&fs::read(stored).unwrap(), data, "blob {digest}");
    }
    assert_eq!(fx.count("tmp"), 0, "staging is cleaned up");

    let reopened = ImageStore::open_with(&fx.root(), fx.layer_fs.clone()).unwrap();
    let listed = reopened.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo_tags, image.repo_tags);
    assert_eq!(reopened.rootfs_layers(&listed[0]).unwrap(), layers);
}

#[test]
fn import_of_a_directory_copies_and_takes_an_explicit_name() {
    let fx = Fixture::new();
    let source = image(
        &[&base_layer()],
        Options {
            ref_name: Some("latest"),
            ..Options::default()
        },
    );
    let layout = fx.dir.path().join("layout");
    source.write_dir(&layout);

    let unnamed = fx.store.import(&layout, None).unwrap();
    assert!(
        unnamed[0].repo_tags.is_empty(),
        "a bare ref.name tag names nothing"
    );

    let named = fx.store.import(&layout, Some("foo/bar:1")).unwrap();
    assert_eq!(named[0].repo_tags, ["docker.io/foo/bar:1"]);
    assert_eq!(
        named[0].repo_digests,
        [format!("docker.io/foo/bar@{}", source.manifest_digest)]
    );
    assert_eq!(fx.store.list().len(), 1);
    assert!(
        layout.join("blobs/sha256").join(&source.id[7..]).exists(),
        "source left intact"
    );

    let err = fx
        .store
        .import(&layout, Some(&format!("foo@{}", source.id)))
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
}

#[test]
fn ref_name_annotation_names_the_image_when_it_is_a_full_reference() {
    let fx = Fixture::new();
    let source = image(
        &[&base_layer()],
        Options {
            ref_name: Some("localhost/pause"),
            ..Options::default()
        },
    );
    let imported = fx.import(&source, None).unwrap();
    assert_eq!(imported[0].repo_tags, ["localhost/pause:latest"]);
}

#[test]
fn reimport_is_idempotent_and_shared_layers_are_stored_once() {
    let fx = Fixture::new();
    let first = fx.import(&busybox(), None).unwrap();
    let again = fx.import(&busybox(), None).unwrap();
    assert_eq!(first[0].id, again[0].id);
    assert_eq!(again[0].repo_tags, first[0].repo_tags);
    assert_eq!(again[0].repo_digests, first[0].repo_digests);
    fx.import(&httpd(), None).unwrap();
    assert_eq!(fx.store.list().len(), 2);
    assert_eq!(fx.count("layers"), 2, "base layer unpacked once");
    // busybox: config, manifest, base; httpd adds config, manifest, www.
    assert_eq!(fx.count("blobs/sha256"), 6);
}

#[test]
fn a_tag_moves_to_the_newly_imported_image() {
    let fx = Fixture::new();
    let old = fx.import(&busybox(), None).unwrap().remove(0);
    let newer = image(
        &[&base_layer()],
        Options {
            name: Some("busybox"),
            cmd: &["echo", "new"],
            ..Options::default()
        },
    );
    let new = fx.import(&newer, None).unwrap().remove(0);
    assert_ne!(old.id, new.id);
    assert_eq!(fx.store.get("busybox").unwrap().id, new.id);
    let old_now = fx.store.get(&old.id).unwrap();
    assert!(
        old_now.repo_tags.is_empty(),
        "the old image keeps no tag: {old_now:?}"
    );
}

#[test]
fn whiteouts_and_opaque_dirs_reach_the_layer_fs() {
    let fx = Fixture::new();
    let image = fx.import(&httpd(), None).unwrap().remove(0);
    let layers = fx.store.rootfs_layers(&image).unwrap();
    assert_eq!(layers.len(), 2);
    let (top, base) = (&layers[0], &layers[1]);
    assert!(
        top.ends_with(&www_layer().diff_id[7..]),
        "top-most layer first"
    );
    assert!(base.ends_with(&base_layer().diff_id[7..]));
    let ops = fx.layer_fs.ops();
    assert_eq!(ops.len(), 2, "{ops:?}");
    // Unpacked in a work directory and renamed, so check the relative paths.
    assert!(
        ops[0].starts_with("whiteout ") && ops[0].ends_with("/etc/motd"),
        "{ops:?}"
    );
    assert!(
        ops[1].starts_with("opaque ") && ops[1].ends_with("/var/cache"),
        "{ops:?}"
    );
    assert!(!top.join("etc/.wh.motd").exists());
    assert_eq!(fs::read(top.join("var/www/index.html")).unwrap(), b"hello");
    assert_eq!(
        fs::read(base.join("etc/motd")).unwrap(),
        b"welcome",
        "lower layer untouched"
    );
}

#[test]
fn lookup_by_id_prefix_tag_short_name_and_digest() {
    let fx = Fixture::new();
    let source = busybox();
    fx.import(&source, None).unwrap();
    fx.import(&httpd(), None).unwrap();
    let hex = &source.id[7..];
    for reference in [
        source.id.clone(),
        hex[..12].to_owned(),
        format!("sha256:{}", &hex[..12]),
        hex.to_owned(),
        "busybox".to_owned(),
        "busybox:latest".to_owned(),
        "docker.io/library/busybox".to_owned(),
        "docker.io/library/busybox:latest".to_owned(),
        format!("busybox@{}", source.manifest_digest),
        format!("docker.io/library/busybox@{}", source.manifest_digest),
    ] {
        let found = fx
            .store
            .get(&reference)
            .unwrap_or_else(|| panic!("{reference} not found"));
        assert_eq!(found.id, source.id, "{reference}");
    }
    for missing in [
        "busybox:1.36",
        "nginx",
        "ffffffffffff",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "Not A Reference",
        "",
    ] {
        assert!(fx.store.get(missing).is_none(), "{missing}");
    }
    assert_eq!(
        fx.store.get("busybox-httpd").unwrap().repo_tags,
        ["docker.io/library/busybox-httpd:latest"]
    );
}

#[test]
fn an_ambiguous_id_prefix_finds_nothing_and_is_not_removed() {
    let fx = Fixture::new();
    let base = base_layer();
    let mut first_chars: HashMap<char, String> = HashMap::new();
    // 17 distinct IDs over 16 hex digits: two must share their first digit.
    let prefix = (0..17)
        .find_map(|i| {
            let arg = i.to_string();
            let source = image(
                &[&base],
                Options {
                    cmd: &["sleep", &arg],
                    ..Options::default()
                },
            );
            fx.import(&source, None).unwrap();
            let first = source.id.chars().nth(7).unwrap();
            first_chars
                .insert(first, source.id.clone())
                .map(|_| first.to_string())
        })
        .unwrap();
    assert!(fx.store.get(&prefix).is_none());
    let err = fx.store.remove(&prefix).unwrap_err();
    assert!(
        matches!(err, ImageError::AmbiguousReference { .. }),
        "{err}"
    );
}

#[test]
fn remove_keeps_what_other_images_share() {
    let fx = Fixture::new();
    let busybox_image = fx.import(&busybox(), None).unwrap().remove(0);
    let httpd_image = fx.import(&httpd(), None).unwrap().remove(0);
    let base_dir = fx.store.rootfs_layers(&busybox_image).unwrap().remove(0);
    let www_dir = fx.store.rootfs_layers(&httpd_image).unwrap().remove(0);

    fx.store.remove("busybox-httpd").unwrap();
    assert!(fx.store.get(&httpd_image.id).is_none());
    assert!(!www_dir.exists(), "the layer only httpd used is gone");
    assert!(
        base_dir.join("bin/busybox").exists(),
        "the shared base layer stays"
    );
    assert_eq!(
        fx.count("blobs/sha256"),
        3,
        "busybox's config, manifest and layer stay"
    );
    assert!(fx.store.get("busybox").is_some());

    fx.store.remove(&busybox_image.id).unwrap();
    assert!(fx.store.list().is_empty());
    assert_eq!((fx.count("layers"), fx.count("blobs/sha256")), (0, 0));
    fx.store.remove(&busybox_image.id).unwrap();
    fx.store.remove("never-imported").unwrap();

    let reopened = ImageStore::open_with(&fx.root(), fx.layer_fs.clone()).unwrap();
    assert!(reopened.list().is_empty(), "removal is persisted");
}

#[test]
fn corrupt_layouts_are_refused_and_leave_nothing_behind() {
    let fx = Fixture::new();
    let source = busybox();
    let layout = fx.dir.path().join("corrupt");
    source.write_dir(&layout);
    let layer_path = layout
        .join("blobs/sha256")
        .join(&sha256(&base_layer().gz)[7..]);
    let mut data = fs::read(&layer_path).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&layer_path, &data).unwrap();
    let err = fx.store.import(&layout, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");

    // A layer whose content does not match the config's diff ID.
    let mut lying = base_layer();
    lying.diff_id = sha256(b"something else");
    let err = fx
        .import(&image(&[&lying], Options::default()), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");

    let not_layout = fx.dir.path().join("empty");
    fs::create_dir(&not_layout).unwrap();
    let err = fx.store.import(&not_layout, None).unwrap_err();
    assert!(matches!(err, ImageError::NotALayout { .. }), "{err}");

    assert!(fx.store.list().is_empty());
    assert_eq!(fx.count("tmp"), 0);
    assert_eq!(fx.count("layers"), 0);
}

#[test]
fn open_removes_half_made_and_unreferenced_data() {
    let fx = Fixture::new();
    fx.import(&busybox(), None).unwrap();
    let images = fx.root().join("images");
    fs::create_dir_all(images.join("tmp/layer-1-1/bin")).unwrap();
    fs::write(images.join("blobs/sha256").join("ab".repeat(32)), b"orphan").unwrap();
    fs::create_dir(images.join("layers").join("cd".repeat(32))).unwrap();

    let reopened = ImageStore::open_with(&fx.root(), fx.layer_fs.clone()).unwrap();
    assert_eq!(reopened.list().len(), 1);
    assert_eq!(
        (
            fx.count("tmp"),
            fx.count("layers"),
            fx.count("blobs/sha256")
        ),
        (0, 1, 3)
    );
    let usage = reopened.usage().unwrap();
    assert!(usage.used_bytes > 0 && usage.inodes_used > 5, "{usage:?}");
}

pub(super) fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..ImageSpec::default()
    })
}

#[tokio::test]
async fn image_service_answers_from_the_store() {
    // Pulls always go to the registry; see `pull_tests` for them.
    let fx = Fixture::new();
    let busybox_image = fx.import(&busybox(), None).unwrap().remove(0);
    let httpd_image = fx.import(&httpd(), None).unwrap().remove(0);
    let service =
        ImageService::new(fx.store.clone(), fx.root(), RegistryConfig::default()).unwrap();

    let all = service
        .list_images(Request::new(ListImagesRequest::default()))
        .await
        .unwrap();
    assert_eq!(all.into_inner().images.len(), 2);
    let filtered = service
        .list_images(Request::new(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec("busybox"),
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, busybox_image.id);
    assert_eq!(filtered[0].repo_tags, busybox_image.repo_tags);
    assert_eq!(filtered[0].size, busybox_image.size);
    assert_eq!(filtered[0].uid, None, "no User: no uid");

    let status = service
        .image_status(Request::new(ImageStatusRequest {
            image: spec("busybox-httpd"),
            verbose: true,
        }))
        .await
        .unwrap()
        .into_inner();
    let cri = status.image.unwrap();
    assert_eq!(cri.id, httpd_image.id);
    assert_eq!((cri.uid, cri.username.as_str()), (None, "www"));
    assert!(status.info["info"].contains("httpd"));

    let absent = service
        .image_status(Request::new(ImageStatusRequest {
            image: spec("nginx"),
            verbose: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        absent.image.is_none(),
        "absent image: empty response, not an error"
    );

    let err = service
        .pull_image(Request::new(PullImageRequest {
            image: spec("Bad Ref"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let fs_info = service
        .image_fs_info(Request::new(ImageFsInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    let usage = &fs_info.image_filesystems[0];
    assert!(usage.timestamp > 0);
    assert_eq!(
        usage.fs_id.as_ref().unwrap().mountpoint,
        fx.root().join("images").to_string_lossy()
    );
    assert!(usage.used_bytes.as_ref().unwrap().value > 0);
    assert!(usage.inodes_used.as_ref().unwrap().value > 0);

    for _ in 0..2 {
        service
            .remove_image(Request::new(RemoveImageRequest {
                image: spec("busybox-httpd"),
            }))
            .await
            .unwrap();
    }
    assert!(fx.store.get(&httpd_image.id).is_none());
}

#[test]
fn numeric_user_becomes_uid() {
    let image = Image {
        id: "sha256:x".into(),
        repo_tags: vec![],
        repo_digests: vec![],
        size: 1,
        config: ImageConfig {
            user: "1000:1000".into(),
            ..ImageConfig::default()
        },
    };
    let cri = service::to_cri_image(&image);
    assert_eq!(
        (cri.uid.map(|u| u.value), cri.username.as_str()),
        (Some(1000), "")
    );
}
