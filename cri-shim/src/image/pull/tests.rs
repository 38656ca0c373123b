//! Pulls through the CRI ImageService from a fake registry on 127.0.0.1
//! into a store whose privileged unpack operations are recorded.

use std::fs;
use std::time::Duration;

use base64::Engine as _;
use k8s_cri::v1::image_service_server::ImageService as _;
use k8s_cri::v1::{ImageStatusRequest, PullImageRequest, RemoveImageRequest};
use serde_json::json;
use tonic::Request;

use super::super::registry::fake::{FakeAuth, FakeRegistry};
use super::super::tests::{
    Fixture, Options, TestImage, TestLayer, base_layer, busybox, httpd, image, spec, www_layer,
};
use super::super::{ImageService, RegistryConfig};
use super::*;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes the image's blobs and its manifest under `tag`; with `index`, the
/// tag names an index (another platform first) and that digest is returned,
/// else the manifest's.
fn publish(
    registry: &FakeRegistry,
    path: &str,
    tag: &str,
    source: &TestImage,
    index: bool,
) -> String {
    for (_, data) in &source.blobs {
        registry.put_blob(data);
    }
    let manifest = source.manifest();
    if !index {
        registry.put_manifest(path, Some(tag), OCI_MANIFEST, manifest);
        return source.manifest_digest.clone();
    }
    registry.put_manifest(path, None, OCI_MANIFEST, manifest);
    let arch = oci_spec::image::Arch::default().to_string();
    let other = if arch == "s390x" { "arm64" } else { "s390x" };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": super::super::registry::sha256_digest(b"x"), "size": 1,
             "platform": {"os": "linux", "architecture": other}},
            {"mediaType": OCI_MANIFEST, "digest": source.manifest_digest, "size": manifest.len(),
             "platform": {"os": "linux", "architecture": arch}},
        ],
    }))
    .unwrap();
    registry.put_manifest(path, Some(tag), OCI_INDEX, &index);
    super::super::registry::sha256_digest(&index)
}

fn service(fx: &Fixture) -> ImageService {
    ImageService::new(fx.store.clone(), fx.root(), RegistryConfig::default()).unwrap()
}

async fn pull(
    service: &ImageService,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    service
        .pull_image(Request::new(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        }))
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(service: &ImageService, image: &str) -> Option<k8s_cri::v1::Image> {
    service
        .image_status(Request::new(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .image
}

#[tokio::test]
async fn pull_by_tag_and_by_digest_records_names_as_containerd() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let source = httpd();
    let index_digest = publish(&registry, "web/httpd", "2.4", &source, true);
    let service = service(&fx);
    let repo = format!("{}/web/httpd", registry.host);

    let id = pull(&service, &format!("{repo}:2.4"), None).await.unwrap();
    assert_eq!(id, source.id, "PullImage answers the image ID");
    let cri = status(&service, &format!("{repo}:2.4")).await.unwrap();
    assert_eq!(cri.repo_tags, [format!("{repo}:2.4")]);
    assert_eq!(cri.repo_digests, [format!("{repo}@{index_digest}")]);
    assert_eq!((cri.uid, cri.username.as_str()), (None, "www"), "User kept");
    let index_len = registry
        .manifest_len("web/httpd", "2.4")
        .expect("the tag is published");
    assert_eq!(
        cri.size,
        index_len + source.total_size(),
        "index, manifest, config and layers, as containerd counts"
    );
    let image = fx.store.get(&id).unwrap();
    let layers = fx.store.rootfs_layers(&image).unwrap();
    assert_eq!(
        fs::read(layers[0].join("var/www/index.html")).unwrap(),
        b"hello"
    );
    assert_eq!(
        fs::read(layers[1].join("bin/busybox")).unwrap(),
        b"ELF busybox"
    );

    // By digest of the platform manifest: same image, one more RepoDigest,
    // and nothing downloaded again.
    let gets_before = registry.log().len();
    let by_digest = format!("{repo}@{}", source.manifest_digest);
    assert_eq!(pull(&service, &by_digest, None).await.unwrap(), id);
    let cri = status(&service, &by_digest).await.unwrap();
    assert_eq!(cri.repo_tags, [format!("{repo}:2.4")]);
    assert_eq!(
        cri.repo_digests,
        [
            format!("{repo}@{index_digest}"),
            format!("{repo}@{}", source.manifest_digest)
        ]
    );
    let new: Vec<_> = registry.log()[gets_before..].to_vec();
    assert!(
        new.iter().all(|r| r.target.contains("/manifests/")),
        "only the manifest is fetched again: {new:#?}"
    );
    assert_eq!(fx.count("tmp"), 0);
    assert_eq!(fx.count("blobs/sha256"), 4, "2 layers, config, manifest");

    // RemoveImage by digest reference removes the image and its files.
    service
        .remove_image(Request::new(RemoveImageRequest {
            image: spec(&by_digest),
        }))
        .await
        .unwrap();
    assert!(status(&service, &format!("{repo}:2.4")).await.is_none());
    assert_eq!((fx.count("blobs/sha256"), fx.count("layers")), (0, 0));
}

#[tokio::test]
async fn shared_layers_are_fetched_and_stored_once() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let (small, big) = (busybox(), httpd());
    publish(&registry, "library/busybox", "latest", &small, false);
    publish(&registry, "library/httpd", "latest", &big, true);
    let service = service(&fx);
    pull(
        &service,
        &format!("{}/library/busybox", registry.host),
        None,
    )
    .await
    .unwrap();
    pull(&service, &format!("{}/library/httpd", registry.host), None)
        .await
        .unwrap();
    let base = sha256(&base_layer().gz);
    assert_eq!(
        registry.blob_gets(&base),
        1,
        "the shared base layer is fetched once"
    );
    assert_eq!(registry.blob_gets(&sha256(&www_layer().gz)), 1);
    assert_eq!(fx.count("layers"), 2);
    assert_eq!(
        fx.count("blobs/sha256"),
        6,
        "2 layers, 2 configs, 2 manifests"
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_download_once() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let source = httpd();
    publish(&registry, "app", "v1", &source, true);
    registry.set_blob_delay_ms(300);
    let service = service(&fx);
    let reference = format!("{}/app:v1", registry.host);
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let service = service.clone();
            let reference = reference.clone();
            tokio::spawn(async move { pull(&service, &reference, None).await })
        })
        .collect();
    for pull in pulls {
        assert_eq!(pull.await.unwrap().unwrap(), source.id);
    }
    for (digest, _) in &source.blobs {
        if *digest != source.manifest_digest {
            assert_eq!(registry.blob_gets(digest), 1, "blob {digest}");
        }
    }
    let tag_gets = registry
        .log()
        .iter()
        .filter(|r| r.target.ends_with("/manifests/v1"))
        .count();
    assert_eq!(tag_gets, 1, "one resolve for all four callers");
    assert_eq!(fx.store.list().len(), 1);

    // Finished pulls are forgotten: the next one asks the registry again.
    pull(&service, &reference, None).await.unwrap();
    let tag_gets = registry
        .log()
        .iter()
        .filter(|r| r.target.ends_with("/manifests/v1"))
        .count();
    assert_eq!(tag_gets, 2);
}

#[tokio::test]
async fn a_pull_whose_callers_went_away_completes_and_is_forgotten() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let source = busybox();
    publish(&registry, "app", "v1", &source, false);
    registry.set_blob_delay_ms(300);
    let service = service(&fx);
    let reference = format!("{}/app:v1", registry.host);
    let abandoned =
        tokio::time::timeout(Duration::from_millis(50), pull(&service, &reference, None)).await;
    assert!(
        abandoned.is_err(),
        "the caller gave up before the pull ended"
    );
    // The pull goes on without its caller and records the image.
    for _ in 0..100 {
        if fx.store.get(&source.id).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fx.store.get(&source.id).is_some(), "the pull finished");
    // Give the task a moment to forget its entry after recording.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tag_gets = || {
        registry
            .log()
            .iter()
            .filter(|r| r.target.ends_with("/manifests/v1"))
            .count()
    };
    assert_eq!(tag_gets(), 1);
    pull(&service, &reference, None).await.unwrap();
    assert_eq!(tag_gets(), 2, "a new pull, not the finished one's result");
}

#[tokio::test]
async fn failed_pull_leaves_nothing_behind() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let (small, big) = (busybox(), httpd());
    publish(&registry, "busybox", "latest", &small, false);
    publish(&registry, "httpd", "latest", &big, false);
    let service = service(&fx);
    pull(&service, &format!("{}/busybox", registry.host), None)
        .await
        .unwrap();
    let before = (fx.count("blobs/sha256"), fx.count("layers"));

    // The top layer is missing: the base (shared with busybox) is kept, the
    // rest of what this pull placed is removed.
    let www = sha256(&www_layer().gz);
    registry.remove_blob(&www);
    let reference = format!("{}/httpd:latest", registry.host);
    let err = pull(&service, &reference, None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().starts_with(&format!(
            "failed to pull and unpack image \"{reference}\": "
        )),
        "{}",
        err.message()
    );
    assert!(err.message().contains(&www), "{}", err.message());
    assert_eq!((fx.count("blobs/sha256"), fx.count("layers")), before);
    assert_eq!(fx.count("tmp"), 0);
    assert!(status(&service, &reference).await.is_none());

    // Corrupt content: refused, and again nothing stays.
    registry.put_blob_as(&www, &vec![0u8; www_layer().gz.len()]);
    let err = pull(&service, &reference, None).await.unwrap_err();
    assert!(
        err.message().contains("content has digest"),
        "{}",
        err.message()
    );
    assert_eq!((fx.count("blobs/sha256"), fx.count("layers")), before);
    assert_eq!(fx.count("tmp"), 0);
    assert_eq!(fx.store.list().len(), 1);

    // Into an empty store: whatever of the base layer got in goes again.
    let empty = Fixture::new();
    let err = pull(&self::service(&empty), &reference, None)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("content has digest"),
        "{}",
        err.message()
    );
    for dir in ["blobs/sha256", "layers", "tmp"] {
        assert_eq!(empty.count(dir), 0, "{dir}");
    }
    assert!(empty.store.list().is_empty());
}

#[tokio::test]
async fn unknown_images_are_not_found_in_containerds_words() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let service = service(&fx);
    let reference = format!("{}/library/nope:latest", registry.host);
    let err = pull(&service, &format!("{}/library/nope", registry.host), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(
        err.message(),
        format!(
            "failed to pull and unpack image \"{reference}\": failed to resolve reference \
             \"{reference}\": {reference}: not found"
        )
    );
    let err = pull(&service, "Bad Ref", None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(fx.count("tmp"), 0);
}

#[tokio::test]
async fn credentials_from_auth_config_are_used_and_refusals_are_clear() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::Basic {
        username: "alice".into(),
        password: "pw".into(),
    })
    .await;
    let source = busybox();
    publish(&registry, "private/app", "1", &source, false);
    let service = service(&fx);
    let reference = format!("{}/private/app:1", registry.host);

    let err = pull(&service, &reference, None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert!(
        err.message()
            .contains("pull access denied, repository does not exist or may require authorization"),
        "{}",
        err.message()
    );
    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..AuthConfig::default()
    };
    let err = pull(&service, &reference, Some(wrong)).await.unwrap_err();
    assert!(
        err.message().contains("401 Unauthorized"),
        "{}",
        err.message()
    );
    assert!(fx.store.list().is_empty());

    let encoded = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:pw"),
        server_address: registry.host.clone(),
        ..AuthConfig::default()
    };
    assert_eq!(
        pull(&service, &reference, Some(encoded)).await.unwrap(),
        source.id
    );

    let bad = AuthConfig {
        auth: "%%%".into(),
        ..AuthConfig::default()
    };
    let err = pull(&service, &reference, Some(bad)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

fn zstd_image() -> (TestImage, TestLayer) {
    let zstd = base_layer().to_zstd();
    let image = image(
        &[&zstd],
        Options {
            name: Some("docker.io/library/zbox:latest"),
            cmd: &["sh"],
            ..Options::default()
        },
    );
    (image, zstd)
}

#[tokio::test]
async fn zstd_layers_are_pulled() {
    let fx = Fixture::new();
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let (source, zstd) = zstd_image();
    publish(&registry, "zbox", "latest", &source, true);
    let service = service(&fx);
    let id = pull(&service, &format!("{}/zbox", registry.host), None)
        .await
        .unwrap();
    let image = fx.store.get(&id).unwrap();
    assert_eq!(
        image.size,
        registry.manifest_len("zbox", "latest").unwrap() + source.total_size()
    );
    assert!(source.blobs.iter().any(|(_, b)| *b == zstd.gz));
    let layers = fx.store.rootfs_layers(&image).unwrap();
    assert_eq!(
        layers,
        [fx.root().join("images/layers").join(&zstd.diff_id[7..])],
        "the diff ID is that of the uncompressed tar, whatever the compression"
    );
    assert_eq!(
        fs::read(layers[0].join("bin/busybox")).unwrap(),
        b"ELF busybox"
    );
}

#[test]
fn zstd_layers_are_imported() {
    let fx = Fixture::new();
    let (source, _) = zstd_image();
    let imported = fx.import(&source, None).unwrap();
    let layers = fx.store.rootfs_layers(&imported[0]).unwrap();
    assert_eq!(fs::read(layers[0].join("etc/motd")).unwrap(), b"welcome");
}

fn sha256(data: &[u8]) -> String {
    super::super::registry::sha256_digest(data)
}
