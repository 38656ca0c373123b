//! Image pulls from a real registry (Debian's `docker-registry` on a free
//! port) through the CRI socket of a real cri-shim: by tag and by digest,
//! `RepoTags`/`RepoDigests`, a container run from the pulled image,
//! RemoveImage, Basic auth and Bearer tokens from a token server with right
//! and wrong credentials, one download for
//! concurrent pulls, zstd layers, plain HTTP only for loopback and
//! `--insecure-registry`, HTTPS with a trusted certificate, and containerd
//! pulling the same images reporting the same names and IDs.
//!
//! Needs root; when not root every trial is reported as ignored, by name.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use e2e::harness::{self, CniNetwork, Containerd, CriClient, CriShim, TestImages, read_cri_log};
use e2e::image::{ImageBuilder, ImageConfig, Layer, LayerBuilder, OciImage, sha256_digest};
use e2e::registry::{
    ImageClient, LocalAddress, PullingCriShim, Registry, RegistryOptions, TokenAuth, image_client,
    read_layout_tar, test_certificates,
};
use e2e::token_server::TokenServer;
use k8s_cri::v1 as cri;
use libtest_mimic::{Arguments, Trial};
use serde_json::Value;

const MARKER_PATH: &str = "etc/registry-e2e";

/// The busybox test image, read back from its layout tar.
fn busybox_image() -> anyhow::Result<OciImage> {
    read_layout_tar(&TestImages::get()?.busybox())
}

/// The busybox base layer of the test images.
fn base_layer(busybox: &OciImage) -> anyhow::Result<Layer> {
    let manifest: Value = serde_json::from_slice(
        busybox
            .blob(&busybox.manifest_digest)
            .context("no manifest")?,
    )?;
    let config: Value =
        serde_json::from_slice(busybox.blob(&busybox.config_digest).context("no config")?)?;
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .context("no layer")?
        .to_owned();
    Ok(Layer {
        tar_gz: busybox.blob(&digest).context("no layer blob")?.to_vec(),
        diff_id: config["rootfs"]["diff_ids"][0]
            .as_str()
            .context("no diff id")?
            .to_owned(),
        digest,
    })
}

/// An image neither runtime has: busybox plus a layer with a marker file
/// holding `marker`.
fn fresh_image(busybox: &OciImage, name: &str, marker: &str) -> anyhow::Result<OciImage> {
    let mut extra = LayerBuilder::new();
    extra.file(MARKER_PATH, 0o644, format!("{marker}\n"));
    ImageBuilder::new(name)
        .config(ImageConfig {
            env: vec![e2e::image::DEFAULT_PATH_ENV.to_owned()],
            cmd: vec!["sh".to_owned()],
            ..ImageConfig::default()
        })
        .layer(base_layer(busybox)?, "busybox")
        .layer(extra.build()?, MARKER_PATH)
        .build()
}

/// `image` with every gzip layer recompressed with zstd (same diff IDs, new
/// blob digests, media type `tar+zstd`) and the manifest rewritten.
fn recompress_zstd(mut image: OciImage) -> anyhow::Result<OciImage> {
    let mut manifest: Value =
        serde_json::from_slice(image.blob(&image.manifest_digest).context("no manifest")?)?;
    for layer in manifest["layers"].as_array_mut().context("no layers")? {
        let digest = layer["digest"].as_str().context("no digest")?.to_owned();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(image.blob(&digest).context("no blob")?)
            .read_to_end(&mut tar)?;
        let compressed = zstd::encode_all(tar.as_slice(), 3)?;
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
        layer["digest"] = sha256_digest(&compressed).into();
        layer["size"] = compressed.len().into();
        image.blobs.insert(sha256_digest(&compressed), compressed);
    }
    let bytes = serde_json::to_vec(&manifest)?;
    image.manifest_digest = sha256_digest(&bytes);
    image.blobs.insert(image.manifest_digest.clone(), bytes);
    Ok(image)
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

async fn pull(
    images: &mut ImageClient,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    images
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn image_status(images: &mut ImageClient, image: &str) -> anyhow::Result<Option<cri::Image>> {
    Ok(images
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

async fn remove_image(images: &mut ImageClient, image: &str) -> anyhow::Result<()> {
    images
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .with_context(|| format!("RemoveImage {image}"))?;
    Ok(())
}

async fn list_images(images: &mut ImageClient) -> anyhow::Result<Vec<cri::Image>> {
    Ok(images
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images)
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Runs `sh -c script` in a new pod from `image`, waits for it to exit and
/// returns its exit code and stdout lines; removes the pod.
async fn run_once(
    cri: &mut CriClient,
    name: &str,
    image: &str,
    script: &str,
    log_dir: &Path,
) -> anyhow::Result<(i32, Vec<String>)> {
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "registry-e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_owned(), name.to_owned())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(harness::pod_namespaces(cri::NamespaceMode::Container)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = harness::run_sandbox(cri, &sandbox_config).await?;
    let result = async {
        let container = harness::create_and_start(
            cri,
            &sandbox,
            &sandbox_config,
            cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: spec(image),
                command: vec!["sh".into(), "-c".into(), script.into()],
                log_path: "main/0.log".into(),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        namespace_options: Some(harness::pod_namespaces(
                            cri::NamespaceMode::Container,
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
        let status = harness::wait_until(
            "the container exited",
            harness::DEADLINE,
            Duration::from_millis(50),
            async || {
                let status = harness::container_status(cri, &container).await?;
                Ok((status.state == cri::ContainerState::ContainerExited as i32).then_some(status))
            },
        )
        .await?;
        let lines = read_cri_log(&log_dir.join("main/0.log"))?
            .into_iter()
            .map(|l| l.content)
            .collect();
        cri.remove_container(cri::RemoveContainerRequest {
            container_id: container,
        })
        .await?;
        anyhow::Ok((status.exit_code, lines))
    }
    .await;
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await?;
    harness::remove_sandbox(cri, &sandbox).await?;
    result
}

/// Pull by tag (manifest, and index), by digest; names as containerd
/// records them; a shared layer fetched once; a container from the pulled
/// image; RemoveImage by tag and by digest leaves an empty store; an unknown
/// tag is NotFound in containerd's words.
async fn pull_tag_digest_run_remove() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("registry-e2e-").tempdir()?;
    let net = CniNetwork::create(dir.path(), 230)?;
    let shim = CriShim::start(dir.path(), &net)?;
    let result = pull_tag_digest_run_remove_body(&shim, dir.path()).await;
    let cleanup = shim.remove_everything().await;
    result.and(cleanup)
}

async fn pull_tag_digest_run_remove_body(shim: &CriShim, dir: &Path) -> anyhow::Result<()> {
    let registry = Registry::start(&dir.join("registry"), RegistryOptions::default()).await?;
    let busybox = busybox_image()?;
    let app = fresh_image(&busybox, "e2e/app:1.0", "pulled from the registry")?;
    let pushed_busybox = registry
        .push(&busybox, "library/busybox", "1.36", false)
        .await?;
    let pushed_app = registry.push(&app, "e2e/app", "1.0", true).await?;
    let mut images = image_client(&shim.endpoint).await?;
    let mut cri = shim.client().await?;

    // Start from an empty store: CriShim::start imported busybox.
    remove_image(&mut images, "busybox").await?;
    ensure!(
        list_images(&mut images).await?.is_empty(),
        "store not empty"
    );

    let id = pull(&mut images, &pushed_busybox.reference, None).await?;
    ensure!(id == pushed_busybox.image_id, "PullImage answered {id}");
    let status = image_status(&mut images, &pushed_busybox.reference)
        .await?
        .context("no ImageStatus after the pull")?;
    ensure!(
        status.repo_tags == [pushed_busybox.reference.clone()]
            && status.repo_digests
                == [format!(
                    "{}@{}",
                    pushed_busybox.repository, pushed_busybox.manifest_digest
                )],
        "busybox names: {:?} {:?}",
        status.repo_tags,
        status.repo_digests
    );

    // The app's tag names an index: RepoDigests carry the index digest.
    let app_id = pull(&mut images, &pushed_app.reference, None).await?;
    ensure!(app_id == pushed_app.image_id);
    let status = image_status(&mut images, &pushed_app.reference)
        .await?
        .context("no app status")?;
    let index_ref = format!(
        "{}@{}",
        pushed_app.repository,
        pushed_app.index_digest.as_deref().unwrap_or_default()
    );
    ensure!(
        status.repo_tags == [pushed_app.reference.clone()]
            && status.repo_digests == [index_ref.clone()],
        "app names: {:?} {:?}",
        status.repo_tags,
        status.repo_digests
    );
    let base = &pushed_busybox.layers[0];
    ensure!(
        pushed_app.layers[0] == *base && registry.blob_gets(base)? == 1,
        "the shared base layer was fetched {} times",
        registry.blob_gets(base)?
    );

    // By digest: same image, one more RepoDigest, no blob fetched again.
    let by_digest = format!("{}@{}", pushed_app.repository, pushed_app.manifest_digest);
    ensure!(pull(&mut images, &by_digest, None).await? == app_id);
    let status = image_status(&mut images, &by_digest)
        .await?
        .context("no status by digest")?;
    ensure!(
        status.repo_digests == [index_ref, by_digest.clone()]
            && status.repo_tags == [pushed_app.reference.clone()],
        "names after the digest pull: {:?} {:?}",
        status.repo_tags,
        status.repo_digests
    );
    ensure!(registry.blob_gets(&pushed_app.layers[1])? == 1);
    ensure!(
        registry.blob_gets(&pushed_app.image_id)? == 1,
        "config fetched again"
    );

    let (code, lines) = run_once(
        &mut cri,
        "pulled",
        &pushed_app.reference,
        &format!("cat /{MARKER_PATH}"),
        &dir.join("logs"),
    )
    .await?;
    ensure!(
        code == 0 && lines == ["pulled from the registry"],
        "container from the pulled image: exit {code}, output {lines:?}"
    );

    let err = pull(&mut images, &format!("{}/e2e/nope", registry.host), None)
        .await
        .expect_err("an unknown image pulls");
    let nope = format!("{}/e2e/nope:latest", registry.host);
    ensure!(
        err.code() == tonic::Code::NotFound
            && err.message()
                == format!(
                    "failed to pull and unpack image \"{nope}\": failed to resolve reference \
                     \"{nope}\": {nope}: not found"
                ),
        "unknown image: {err:?}"
    );

    remove_image(&mut images, &pushed_app.reference).await?;
    ensure!(image_status(&mut images, &by_digest).await?.is_none());
    remove_image(
        &mut images,
        &format!(
            "{}@{}",
            pushed_busybox.repository, pushed_busybox.manifest_digest
        ),
    )
    .await?;
    ensure!(list_images(&mut images).await?.is_empty());
    let store = shim.root.join("images");
    for sub in ["blobs/sha256", "layers", "tmp"] {
        ensure!(
            entries(&store.join(sub)) == 0,
            "{sub} not empty after removing every image"
        );
    }
    Ok(())
}

/// A registry with htpasswd Basic auth: refused without or with wrong
/// credentials (clearly, leaving nothing), pulled with username/password and
/// with `auth`.
async fn basic_auth() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("registry-e2e-").tempdir()?;
    let net = CniNetwork::create(dir.path(), 231)?;
    let shim = CriShim::start(dir.path(), &net)?;
    let registry = Registry::start(
        &dir.path().join("registry"),
        RegistryOptions {
            users: vec![("e2e".into(), "s3cret".into())],
            ..RegistryOptions::default()
        },
    )
    .await?;
    let busybox = busybox_image()?;
    let pushed = registry
        .push(&busybox, "private/busybox", "1", false)
        .await?;
    let mut images = image_client(&shim.endpoint).await?;
    remove_image(&mut images, "busybox").await?;

    let err = pull(&mut images, &pushed.reference, None)
        .await
        .expect_err("anonymous pull of a private image");
    ensure!(
        err.message().starts_with(&format!(
            "failed to pull and unpack image \"{}\": failed to resolve reference",
            pushed.reference
        )) && err
            .message()
            .contains("pull access denied, repository does not exist or may require authorization")
            && err.message().contains("401 Unauthorized"),
        "anonymous: {err:?}"
    );
    let wrong = cri::AuthConfig {
        username: "e2e".into(),
        password: "guess".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &pushed.reference, Some(wrong))
        .await
        .expect_err("wrong password");
    ensure!(
        err.message().contains("401 Unauthorized"),
        "wrong password: {err:?}"
    );
    let store = shim.root.join("images");
    ensure!(list_images(&mut images).await?.is_empty());
    for sub in ["blobs/sha256", "layers", "tmp"] {
        ensure!(
            entries(&store.join(sub)) == 0,
            "{sub} not empty after refusals"
        );
    }

    let right = cri::AuthConfig {
        username: "e2e".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    ensure!(pull(&mut images, &pushed.reference, Some(right)).await? == pushed.image_id);
    remove_image(&mut images, &pushed.reference).await?;
    use base64::Engine as _;
    let encoded = cri::AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("e2e:s3cret"),
        server_address: registry.host.clone(),
        ..Default::default()
    };
    ensure!(pull(&mut images, &pushed.reference, Some(encoded)).await? == pushed.image_id);
    Ok(())
}

/// Four concurrent PullImage calls (separate connections) of an image with a
/// large layer: one resolve, one download of each blob, one image. Then a
/// zstd-compressed image is pulled and run.
async fn concurrent_pulls_and_zstd() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("registry-e2e-").tempdir()?;
    let net = CniNetwork::create(dir.path(), 232)?;
    let shim = CriShim::start(dir.path(), &net)?;
    let result = concurrent_pulls_and_zstd_body(&shim, dir.path()).await;
    let cleanup = shim.remove_everything().await;
    result.and(cleanup)
}

/// Bytes that do not compress (xorshift), so the layer stays large.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn concurrent_pulls_and_zstd_body(shim: &CriShim, dir: &Path) -> anyhow::Result<()> {
    let registry = Registry::start(&dir.join("registry"), RegistryOptions::default()).await?;
    let busybox = busybox_image()?;
    let mut big = LayerBuilder::new();
    big.file("var/big.bin", 0o644, noise(48 << 20));
    let big_image = ImageBuilder::new("e2e/big:1")
        .config(ImageConfig {
            cmd: vec!["sh".into()],
            ..ImageConfig::default()
        })
        .layer(base_layer(&busybox)?, "busybox")
        .layer(big.build()?, "48 MiB of noise")
        .build()?;
    let pushed = registry.push(&big_image, "e2e/big", "1", false).await?;

    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut images = image_client(&shim.endpoint).await?;
        let reference = pushed.reference.clone();
        calls.push(tokio::spawn(async move {
            pull(&mut images, &reference, None).await
        }));
    }
    for call in calls {
        let id = call.await??;
        ensure!(id == pushed.image_id, "a concurrent pull answered {id}");
    }
    let resolves = registry.manifest_gets("e2e/big", "1")?;
    let big_gets = registry.blob_gets(&pushed.layers[1])?;
    ensure!(
        resolves == 1 && big_gets == 1 && registry.blob_gets(&pushed.image_id)? == 1,
        "four concurrent pulls: {resolves} resolves, {big_gets} downloads of the big layer"
    );
    // The base layer came with the imported busybox already.
    ensure!(registry.blob_gets(&pushed.layers[0])? == 0);

    let zstd = recompress_zstd(fresh_image(&busybox, "e2e/zstd:1", "zstd layers")?)?;
    let pushed = registry.push(&zstd, "e2e/zstd", "1", true).await?;
    let mut images = image_client(&shim.endpoint).await?;
    ensure!(pull(&mut images, &pushed.reference, None).await? == pushed.image_id);
    let mut cri = shim.client().await?;
    let (code, lines) = run_once(
        &mut cri,
        "zstd",
        &pushed.reference,
        &format!("cat /{MARKER_PATH}; ls /bin/busybox"),
        &dir.join("logs"),
    )
    .await?;
    ensure!(
        code == 0 && lines == ["zstd layers", "/bin/busybox"],
        "container from the zstd image: exit {code}, output {lines:?}"
    );
    Ok(())
}

/// Registries on an address that is not loopback: plain HTTP only with
/// `--insecure-registry`, HTTPS with a certificate the trust store
/// (`SSL_CERT_FILE`) holds; refused otherwise, saying why.
async fn insecure_flag_and_https() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("registry-e2e-").tempdir()?;
    // Leases 10.91.233.0/24 for this trial; no pod is made, so no bridge.
    let net = CniNetwork::create(dir.path(), 233)?;
    let ip = Ipv4Addr::new(10, 91, 233, 254);
    let _address = LocalAddress::add("kre2ereg233", ip)?;
    let plain = Registry::start(
        &dir.path().join("plain"),
        RegistryOptions {
            ip: IpAddr::V4(ip),
            ..RegistryOptions::default()
        },
    )
    .await?;
    let (ca, cert, key) = test_certificates(dir.path(), IpAddr::V4(ip))?;
    let tls = Registry::start(
        &dir.path().join("tls"),
        RegistryOptions {
            ip: IpAddr::V4(ip),
            tls: Some((ca.clone(), cert, key)),
            ..RegistryOptions::default()
        },
    )
    .await?;
    let busybox = busybox_image()?;
    let over_http = plain.push(&busybox, "library/busybox", "1", false).await?;
    let over_https = tls.push(&busybox, "library/busybox", "1", true).await?;

    let strict = PullingCriShim::start(&dir.path().join("strict"), &net.conf_dir, &[], &[])?;
    let mut images = image_client(&strict.endpoint).await?;
    let err = pull(&mut images, &over_http.reference, None)
        .await
        .expect_err("plain HTTP without --insecure-registry");
    ensure!(
        err.message().contains(&format!(
            "failed to do request: GET https://{}/v2/library/busybox/manifests/1",
            plain.host
        )),
        "plain registry over https: {err:?}"
    );
    let err = pull(&mut images, &over_https.reference, None)
        .await
        .expect_err("an untrusted certificate");
    ensure!(
        err.message().to_lowercase().contains("certificate"),
        "untrusted certificate: {err:?}"
    );

    let insecure_flag = plain.host.clone();
    let trusting = PullingCriShim::start(
        &dir.path().join("trusting"),
        &net.conf_dir,
        &["--insecure-registry", &insecure_flag],
        &[("SSL_CERT_FILE", &ca)],
    )?;
    let mut images = image_client(&trusting.endpoint).await?;
    let id = pull(&mut images, &over_http.reference, None)
        .await
        .with_context(|| trusting.log_tail())?;
    ensure!(id == over_http.image_id);
    let id = pull(&mut images, &over_https.reference, None)
        .await
        .with_context(|| trusting.log_tail())?;
    ensure!(id == over_https.image_id);
    let status = image_status(&mut images, &id).await?.context("no status")?;
    let mut tags = status.repo_tags.clone();
    tags.sort();
    let mut want = vec![over_http.reference.clone(), over_https.reference.clone()];
    want.sort();
    ensure!(tags == want, "one image, two names: {tags:?}");
    Ok(())
}

/// containerd and cri-shim pull the same images from the same registry and
/// report the same image ID, RepoTags and RepoDigests (tag naming an index,
/// tag naming a manifest, digest), and the same error for an unknown tag.
async fn side_by_side_with_containerd() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("registry-e2e-").tempdir()?;
    let net = CniNetwork::create(dir.path(), 234)?;
    let images_dir = TestImages::get()?;
    let containerd = Containerd::start(dir.path(), &net, images_dir).await?;
    let shim = CriShim::start(&dir.path().join("shim"), &net)?;
    let registry =
        Registry::start(&dir.path().join("registry"), RegistryOptions::default()).await?;
    let busybox = busybox_image()?;
    let indexed = registry
        .push(
            &fresh_image(&busybox, "e2e/indexed:2", "indexed")?,
            "e2e/indexed",
            "2",
            true,
        )
        .await?;
    let plain = registry
        .push(
            &fresh_image(&busybox, "e2e/plain:3", "plain")?,
            "e2e/plain",
            "3",
            false,
        )
        .await?;
    let by_digest = format!("{}@{}", plain.repository, plain.manifest_digest);
    let mut ours = image_client(&shim.endpoint).await?;
    let mut theirs = image_client(&containerd.endpoint).await?;
    for reference in [&indexed.reference, &plain.reference, &by_digest] {
        let our_id = pull(&mut ours, reference, None)
            .await
            .with_context(|| format!("cri-shim pulling {reference}"))?;
        let their_id = pull(&mut theirs, reference, None).await.with_context(|| {
            format!(
                "containerd pulling {reference}: {}",
                harness::tail(&containerd.log_path, 20)
            )
        })?;
        ensure!(
            our_id == their_id,
            "{reference}: image id {our_id} vs {their_id}"
        );
        let our = image_status(&mut ours, reference)
            .await?
            .context("cri-shim status")?;
        let their = image_status(&mut theirs, reference)
            .await?
            .context("containerd status")?;
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        ensure!(
            sorted(our.repo_tags.clone()) == sorted(their.repo_tags.clone())
                && sorted(our.repo_digests.clone()) == sorted(their.repo_digests.clone())
                && our.size == their.size,
            "{reference}:\n cri-shim   {:?} {:?} {}\n containerd {:?} {:?} {}",
            our.repo_tags,
            our.repo_digests,
            our.size,
            their.repo_tags,
            their.repo_digests,
            their.size
        );
    }
    let nope = format!("{}/e2e/nope:1", registry.host);
    let our_err = pull(&mut ours, &nope, None)
        .await
        .expect_err("cri-shim pulled nothing");
    let their_err = pull(&mut theirs, &nope, None)
        .await
        .expect_err("containerd pulled nothing");
    ensure!(
        our_err.code() == their_err.code() && our_err.message() == their_err.message(),
        "unknown image:\n cri-shim   {our_err:?}\n containerd {their_err:?}"
    );
    Ok(())
}

/// Bearer token auth against a registry that trusts a token server: the
/// token server sees the CRI `AuthConfig` credentials and the repository
/// scope, the registry takes its signed token; without credentials, or with
/// wrong ones, the token server refuses and the pull fails, leaving nothing.
async fn token_auth() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("registry-e2e-").tempdir()?;
    let net = CniNetwork::create_unique(dir.path())?;
    let shim = CriShim::start(dir.path(), &net)?;
    let registry_dir = dir.path().join("registry");
    let busybox = busybox_image()?;
    // The pusher has no token client: push anonymously first, then serve the
    // same storage behind token auth.
    let pushed = {
        let open = Registry::start(&registry_dir, RegistryOptions::default()).await?;
        open.push(&busybox, "private/busybox", "1", false).await?
    };
    let tokens = TokenServer::start(
        &dir.path().join("token"),
        vec![("e2e".into(), "s3cret".into())],
    )
    .await?;
    let registry = Registry::start(
        &registry_dir,
        RegistryOptions {
            token: Some(TokenAuth::from(&tokens)),
            ..RegistryOptions::default()
        },
    )
    .await?;
    let reference = format!("{}/private/busybox:1", registry.host);
    let mut images = image_client(&shim.endpoint).await?;
    remove_image(&mut images, "busybox").await?;

    let err = pull(&mut images, &reference, None)
        .await
        .expect_err("anonymous pull behind token auth");
    ensure!(
        err.message().contains("401 Unauthorized"),
        "anonymous: {err:?}"
    );
    let wrong = cri::AuthConfig {
        username: "e2e".into(),
        password: "guess".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &reference, Some(wrong))
        .await
        .expect_err("wrong password");
    ensure!(
        err.message().contains("401 Unauthorized"),
        "wrong password: {err:?}"
    );
    ensure!(list_images(&mut images).await?.is_empty());

    let right = cri::AuthConfig {
        username: "e2e".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let id = pull(&mut images, &reference, Some(right)).await?;
    ensure!(
        id == pushed.image_id,
        "pulled {id}, pushed {}",
        pushed.image_id
    );
    let requests = tokens.requests();
    let granted: Vec<_> = requests.iter().filter(|r| r.granted).collect();
    ensure!(
        granted
            .iter()
            .any(|r| r.user.as_deref() == Some("e2e")
                && r.scope == "repository:private/busybox:pull"),
        "no token for the repository scope was issued: {requests:?}"
    );
    ensure!(
        requests.iter().any(|r| !r.granted && r.user.is_none()),
        "the anonymous attempt never reached the token server: {requests:?}"
    );
    // The registry served the manifest to the bearer of the token.
    ensure!(
        registry
            .access_log()?
            .iter()
            .any(|l| l.path.contains("/private/busybox/manifests/") && l.status == 200),
        "the registry did not serve the manifest"
    );
    Ok(())
}

/// A trial body: a boxed future so trials fit in one list.
type TrialFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

fn trial(name: &'static str, f: TrialFn) -> Trial {
    let root = harness::is_root();
    Trial::test(name, move || {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        rt.block_on(f()).map_err(|e| format!("{e:#}").into())
    })
    .with_ignored_flag(!root)
    .with_kind(if root { "" } else { "needs root" })
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        trial("registry_pull_by_tag_and_digest_run_and_remove", || {
            Box::pin(pull_tag_digest_run_remove())
        }),
        trial("registry_pull_with_basic_auth", || Box::pin(basic_auth())),
        trial("registry_pull_with_token_auth", || Box::pin(token_auth())),
        trial("registry_concurrent_pulls_download_once_and_zstd", || {
            Box::pin(concurrent_pulls_and_zstd())
        }),
        trial("registry_insecure_flag_and_https", || {
            Box::pin(insecure_flag_and_https())
        }),
        trial("registry_pull_side_by_side_with_containerd", || {
            Box::pin(side_by_side_with_containerd())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}
