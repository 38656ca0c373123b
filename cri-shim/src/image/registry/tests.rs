//! Registry client tests: pure parsing and mapping, then the HTTP flows
//! against [`fake::FakeRegistry`] on 127.0.0.1.

use oci_spec::image::Arch;
use serde_json::json;

use super::fake::{FakeAuth, FakeRegistry};
use super::*;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn host_arch() -> String {
    Arch::default().to_string()
}

fn other_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

#[test]
fn references_map_to_registry_urls() {
    let config = RegistryConfig {
        insecure_registries: vec!["http://10.0.0.5:5000/".into(), "plain.example".into()],
    };
    for (image, url) in [
        (
            "busybox",
            "https://registry-1.docker.io/v2/library/busybox/",
        ),
        (
            "docker.io/foo/bar:1",
            "https://registry-1.docker.io/v2/foo/bar/",
        ),
        (
            "quay.io/a/b/c@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "https://quay.io/v2/a/b/c/",
        ),
        ("localhost/pause", "http://localhost/v2/pause/"),
        ("localhost:5000/a/b:v1", "http://localhost:5000/v2/a/b/"),
        (
            "127.0.0.1:40000/busybox",
            "http://127.0.0.1:40000/v2/busybox/",
        ),
        (
            "127.0.0.2:40000/busybox",
            "http://127.0.0.2:40000/v2/busybox/",
        ),
        ("[::1]:5000/busybox", "http://[::1]:5000/v2/busybox/"),
        ("10.0.0.5:5000/busybox", "http://10.0.0.5:5000/v2/busybox/"),
        ("10.0.0.5:5001/busybox", "https://10.0.0.5:5001/v2/busybox/"),
        ("plain.example/x", "http://plain.example/v2/x/"),
        (
            "registry.k8s.io/pause:3.9",
            "https://registry.k8s.io/v2/pause/",
        ),
    ] {
        assert_eq!(
            config.repository_url(&reference(image)).unwrap().as_str(),
            url,
            "{image}"
        );
    }
}

#[test]
fn localhost_is_loopback_with_or_without_port() {
    for yes in [
        "localhost",
        "LOCALHOST:80",
        "127.0.0.1",
        "127.1.2.3:5000",
        "[::1]",
        "[::1]:443",
        "::1",
    ] {
        assert!(is_localhost(yes), "{yes}");
    }
    for no in [
        "localhost.example",
        "10.0.0.1:5000",
        "docker.io",
        "[::2]:5000",
        "mylocalhost",
    ] {
        assert!(!is_localhost(no), "{no}");
    }
}

fn index(entries: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap()
}

fn entry(media_type: &str, digest_seed: &str, os: &str, arch: &str) -> serde_json::Value {
    json!({
        "mediaType": media_type,
        "digest": sha256_digest(digest_seed.as_bytes()),
        "size": 100,
        "platform": {"os": os, "architecture": arch},
    })
}

#[test]
fn parses_manifests_by_media_type() {
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha256_digest(b"c"), "size": 1},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": sha256_digest(b"l"), "size": 1}],
    }))
    .unwrap();
    let (media_type, doc) = parse_manifest(Some(DOCKER_MANIFEST), &manifest, "d").unwrap();
    assert_eq!(media_type, DOCKER_MANIFEST);
    let ManifestDocument::Manifest(m) = doc else {
        panic!("a Docker schema 2 manifest is a manifest")
    };
    assert_eq!(m.layers().len(), 1);

    let list = index(json!([entry(DOCKER_MANIFEST, "a", "linux", "amd64")]));
    for content_type in [
        Some(DOCKER_MANIFEST_LIST),
        Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
        Some(OCI_INDEX),
        // No or a generic Content-Type: the document's own mediaType decides.
        None,
        Some("application/json"),
    ] {
        let (_, doc) = parse_manifest(content_type, &list, "d").unwrap();
        assert!(
            matches!(doc, ManifestDocument::Index(_)),
            "{content_type:?}"
        );
    }
    let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
    assert!(matches!(
        parse_manifest(None, bare_index, "d").unwrap().1,
        ManifestDocument::Index(_)
    ));

    let schema1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
    for content_type in [None, Some(DOCKER_MANIFEST_V1_SIGNED)] {
        let err = parse_manifest(content_type, schema1, "d").unwrap_err();
        assert!(
            matches!(err, RegistryError::UnsupportedManifest { .. }),
            "{err}"
        );
    }
    let err = parse_manifest(Some(OCI_MANIFEST), b"{not json", "sha256:x").unwrap_err();
    assert!(matches!(err, RegistryError::InvalidJson { .. }), "{err}");
}

#[test]
fn index_selection_takes_this_hosts_platform() {
    let list: ImageIndex = serde_json::from_slice(&index(json!([
        entry(OCI_MANIFEST, "other", "linux", other_arch()),
        entry(OCI_MANIFEST, "windows", "windows", &host_arch()),
        // BuildKit attestations carry an unknown platform.
        entry(OCI_MANIFEST, "attestation", "unknown", "unknown"),
        entry(OCI_MANIFEST, "mine", "linux", &host_arch()),
        entry(DOCKER_MANIFEST, "mine too", "linux", &host_arch()),
    ])))
    .unwrap();
    let chosen = select_platform_manifest(&list).unwrap();
    assert_eq!(chosen.digest().to_string(), sha256_digest(b"mine"));

    let foreign: ImageIndex = serde_json::from_slice(&index(json!([entry(
        OCI_MANIFEST,
        "other",
        "linux",
        other_arch()
    ),])))
    .unwrap();
    assert!(select_platform_manifest(&foreign).is_none());

    let docker_list: ImageIndex = serde_json::from_slice(&index(json!([entry(
        DOCKER_MANIFEST,
        "d",
        "linux",
        &host_arch()
    ),])))
    .unwrap();
    assert_eq!(
        select_platform_manifest(&docker_list)
            .unwrap()
            .digest()
            .to_string(),
        sha256_digest(b"d")
    );
}

/// An image in the fake: config + one layer, its manifest, and an index.
struct Published {
    index_digest: String,
    manifest_digest: String,
    config: Vec<u8>,
    layer: Vec<u8>,
}

fn publish(registry: &FakeRegistry, path: &str, tag: &str) -> Published {
    let layer = b"pretend this is a gzip tar".to_vec();
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"uncompressed")]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": registry.put_blob(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": registry.put_blob(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = sha256_digest(&manifest);
    registry.put_manifest(path, None, OCI_MANIFEST, &manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256_digest(b"nope"), "size": 1, "platform": {"os": "linux", "architecture": other_arch()}},
            {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(), "platform": {"os": "linux", "architecture": host_arch()}},
        ],
    }))
    .unwrap();
    registry.put_manifest(path, Some(tag), OCI_INDEX, &index);
    Published {
        index_digest: sha256_digest(&index),
        manifest_digest,
        config,
        layer,
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig::default()).unwrap()
}

#[tokio::test]
async fn resolves_tag_through_index_and_fetches_verified_blobs() {
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let published = publish(&registry, "team/app", "v1");
    let reference = reference(&format!("{}/team/app:v1", registry.host));
    let session = client()
        .session(&reference, Credentials::Anonymous)
        .unwrap();
    let resolved = session.resolve(&reference).await.unwrap();
    assert_eq!(
        resolved.digest, published.index_digest,
        "RepoDigests use the index digest"
    );
    assert_eq!(
        resolved.manifest_descriptor.digest().to_string(),
        published.manifest_digest
    );
    let config = session
        .fetch_config(resolved.manifest.config())
        .await
        .unwrap();
    assert_eq!(config, published.config);

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("layer");
    session
        .fetch_blob_to(&resolved.manifest.layers()[0], &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), published.layer);

    let accept = registry
        .log()
        .iter()
        .filter(|r| r.target.contains("/manifests/"))
        .count();
    assert_eq!(accept, 2, "tag, then the platform manifest by digest");

    // By digest: the same manifest, checked against the digest asked for.
    let by_digest = self::reference(&format!(
        "{}/team/app@{}",
        registry.host, published.manifest_digest
    ));
    let resolved = session.resolve(&by_digest).await.unwrap();
    assert_eq!(resolved.digest, published.manifest_digest);
}

#[tokio::test]
async fn corrupt_and_missing_content_is_refused() {
    let registry = FakeRegistry::start(FakeAuth::None).await;
    let published = publish(&registry, "app", "latest");
    let reference = reference(&format!("{}/app", registry.host));
    let session = client()
        .session(&reference, Credentials::Anonymous)
        .unwrap();
    let resolved = session.resolve(&reference).await.unwrap();
    let layer = &resolved.manifest.layers()[0];
    registry.put_blob_as(layer.digest().as_ref(), &vec![b'x'; published.layer.len()]);
    let dir = tempfile::tempdir().unwrap();
    let err = session
        .fetch_blob_to(layer, &dir.path().join("l"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    registry.put_blob_as(layer.digest().as_ref(), b"short");
    let err = session
        .fetch_blob_to(layer, &dir.path().join("l"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
    registry.remove_blob(layer.digest().as_ref());
    let err = session
        .fetch_blob_to(layer, &dir.path().join("l"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::BlobNotFound { .. }), "{err}");
    assert!(err.is_not_found());

    let missing = self::reference(&format!("{}/app:nope", registry.host));
    let err = session.resolve(&missing).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}/app:nope: not found", registry.host)
    );
    assert!(err.is_not_found());

    let wrong_digest = self::reference(&format!(
        "{}/app@{}",
        registry.host, published.manifest_digest
    ));
    // Serve other bytes under that digest.
    registry.put_manifest("app", Some(&published.manifest_digest), OCI_MANIFEST, b"{}");
    let err = session.resolve(&wrong_digest).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn bearer_challenge_is_met_with_a_token() {
    let registry = FakeRegistry::start(FakeAuth::Bearer {
        credentials: None,
        refresh_token: None,
    })
    .await;
    publish(&registry, "library/app", "latest");
    let reference = reference(&format!("{}/library/app", registry.host));
    let session = client()
        .session(&reference, Credentials::Anonymous)
        .unwrap();
    let resolved = session.resolve(&reference).await.unwrap();
    session
        .fetch_config(resolved.manifest.config())
        .await
        .unwrap();
    let log = registry.log();
    let tokens: Vec<_> = log
        .iter()
        .filter(|r| r.target.starts_with("/token"))
        .collect();
    assert_eq!(tokens.len(), 1, "one token for the session: {log:#?}");
    assert!(
        tokens[0]
            .target
            .contains("scope=repository%3Alibrary%2Fapp%3Apull"),
        "{}",
        tokens[0].target
    );
    assert!(tokens[0].authorization.is_none(), "anonymous token");
    let unauthorized = log
        .iter()
        .filter(|r| r.target.starts_with("/v2/") && r.authorization.is_none())
        .count();
    assert_eq!(
        unauthorized, 1,
        "only the first request goes without a token"
    );
}

#[tokio::test]
async fn bearer_with_credentials_and_identity_token() {
    let registry = FakeRegistry::start(FakeAuth::Bearer {
        credentials: Some(("alice".into(), "pw".into())),
        refresh_token: Some("refresh-1".into()),
    })
    .await;
    publish(&registry, "app", "latest");
    let reference = reference(&format!("{}/app", registry.host));
    let basic = Credentials::Basic {
        username: "alice".into(),
        password: "pw".into(),
    };
    let session = client().session(&reference, basic.clone()).unwrap();
    session.resolve(&reference).await.unwrap();
    let token_request = registry
        .log()
        .into_iter()
        .find(|r| r.target.starts_with("/token"))
        .unwrap();
    assert_eq!(token_request.method, "GET");
    assert_eq!(token_request.authorization, basic.basic_header());

    let identity = client()
        .session(&reference, Credentials::IdentityToken("refresh-1".into()))
        .unwrap();
    identity.resolve(&reference).await.unwrap();
    assert!(
        registry
            .log()
            .iter()
            .any(|r| r.method == "POST" && r.target == "/token"),
        "identity tokens use the OAuth2 POST"
    );

    for wrong in [
        Credentials::Basic {
            username: "alice".into(),
            password: "wrong".into(),
        },
        Credentials::Anonymous,
    ] {
        let session = client().session(&reference, wrong).unwrap();
        let err = session.resolve(&reference).await.unwrap_err();
        assert!(matches!(err, RegistryError::Token { .. }), "{err}");
        assert!(err.to_string().contains("401 Unauthorized"), "{err}");
    }
}

#[tokio::test]
async fn basic_challenge_is_met_with_credentials() {
    let registry = FakeRegistry::start(FakeAuth::Basic {
        username: "bob".into(),
        password: "hunter2".into(),
    })
    .await;
    publish(&registry, "app", "latest");
    let reference = reference(&format!("{}/app", registry.host));
    let session = client()
        .session(
            &reference,
            Credentials::Basic {
                username: "bob".into(),
                password: "hunter2".into(),
            },
        )
        .unwrap();
    session.resolve(&reference).await.unwrap();

    let wrong = client()
        .session(
            &reference,
            Credentials::Basic {
                username: "bob".into(),
                password: "nope".into(),
            },
        )
        .unwrap();
    let err = wrong.resolve(&reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::AccessDenied { .. }), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("pull access denied"), "{text}");
    assert!(text.contains("401 Unauthorized"), "{text}");
    assert!(
        text.contains("unauthorized: authentication required"),
        "{text}"
    );

    let anonymous = client()
        .session(&reference, Credentials::Anonymous)
        .unwrap();
    let err = anonymous.resolve(&reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::AccessDenied { .. }), "{err}");
}

#[tokio::test]
async fn registry_token_is_sent_as_is() {
    let registry = FakeRegistry::start(FakeAuth::Bearer {
        credentials: Some(("x".into(), "y".into())),
        refresh_token: None,
    })
    .await;
    publish(&registry, "app", "latest");
    let reference = reference(&format!("{}/app", registry.host));
    let session = client()
        .session(
            &reference,
            Credentials::RegistryToken("fake-token-1".into()),
        )
        .unwrap();
    session.resolve(&reference).await.unwrap();
    assert!(
        registry
            .log()
            .iter()
            .all(|r| !r.target.starts_with("/token")),
        "no token fetched"
    );
}

#[tokio::test]
async fn connection_errors_name_the_url_and_cause() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reference = reference(&format!("127.0.0.1:{port}/app"));
    let session = client()
        .session(&reference, Credentials::Anonymous)
        .unwrap();
    let err = session.resolve(&reference).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "failed to do request: GET http://127.0.0.1:{port}/v2/app/manifests/latest"
        )),
        "{text}"
    );
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
}
