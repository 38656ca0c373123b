//! A client for OCI distribution / Docker Registry HTTP API v2 registries:
//! resolves a tag or digest to the image manifest for this host's platform
//! and fetches blobs, every byte verified against its sha256 digest.
//!
//! Endpoints follow containerd: `docker.io` is served by
//! `registry-1.docker.io`; loopback registries (`localhost`, `127.0.0.1`,
//! `[::1]`, any port) and registries configured as insecure are spoken to in
//! plain HTTP, all others in HTTPS (rustls, the system trust store, which
//! `SSL_CERT_FILE`/`SSL_CERT_DIR` override).

pub mod auth;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::layout::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, platform_matches};
use super::reference::Reference;
use auth::{Challenge, Credentials, TokenResponse, parse_challenges, pull_scope};

/// Docker Hub's name in references, and the host that serves its API.
const DOCKER_HUB_DOMAIN: &str = "docker.io";
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// What a manifest GET accepts, as containerd sends it.
const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, */*";
const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_MANIFEST_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Upper bound of a manifest or config read into memory.
pub(crate) const MAX_DOCUMENT_SIZE: u64 = 8 << 20;
/// Nested indexes deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;
/// OAuth2 client id sent with refresh-token requests (containerd's).
const OAUTH_CLIENT_ID: &str = "containerd-client";

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference (tag or digest) does not exist in the registry.
    #[error("{reference}: not found")]
    NotFound {
        /// The normalised reference.
        reference: String,
    },
    /// The index has no manifest for this host's platform.
    #[error("no match for platform linux/{architecture} in manifest {digest}: not found")]
    NoMatchingPlatform {
        /// The index digest.
        digest: String,
        /// This host's architecture.
        architecture: String,
    },
    /// A blob the manifest refers to is not in the registry.
    #[error("blob {digest} of {repository} not found")]
    BlobNotFound {
        /// The repository.
        repository: String,
        /// The blob's digest.
        digest: String,
    },
    /// The registry refused access after authentication was attempted
    /// (or none could be), with its error message if it sent one.
    #[error(
        "pull access denied, repository does not exist or may require authorization: \
         {method} {url}: {status}{}", server_message(.message)
    )]
    AccessDenied {
        /// Request method.
        method: &'static str,
        /// The URL refused.
        url: String,
        /// `401 Unauthorized` or `403 Forbidden`.
        status: StatusCode,
        /// The registry's `errors[0]` (`code: message`), if any.
        message: Option<String>,
    },
    /// The token server refused the credentials or failed.
    #[error("failed to fetch {kind} token from {url}: {status}{}", server_message(.message))]
    Token {
        /// `anonymous` or `oauth`.
        kind: &'static str,
        /// Token server URL (without query).
        url: String,
        /// Its answer.
        status: StatusCode,
        /// Its error message, if any.
        message: Option<String>,
    },
    /// The token server answered without a token.
    #[error("token server {url} sent no token")]
    NoToken {
        /// Token server URL.
        url: String,
    },
    /// Any other non-success status.
    #[error("unexpected status from {method} request to {url}: {status}{}", server_message(.message))]
    UnexpectedStatus {
        /// Request method.
        method: &'static str,
        /// URL requested.
        url: String,
        /// The status.
        status: StatusCode,
        /// The registry's error message, if any.
        message: Option<String>,
    },
    /// The request could not be made or its body not read (DNS, connect,
    /// TLS, reset).
    #[error("failed to do request: {method} {url}: {}", cause_chain(.source))]
    Http {
        /// Request method.
        method: &'static str,
        /// URL requested.
        url: String,
        /// Underlying error (its chain is printed by `error_chain`).
        #[source]
        source: reqwest::Error,
    },
    /// The registry's URL could not be built from the reference.
    #[error("invalid registry URL {url:?}: {source}")]
    Url {
        /// What was parsed.
        url: String,
        /// Underlying error.
        #[source]
        source: url::ParseError,
    },
    /// A document larger than any manifest or config.
    #[error("{what} from {url} is larger than {MAX_DOCUMENT_SIZE} bytes")]
    TooLarge {
        /// Manifest or config.
        what: &'static str,
        /// URL fetched.
        url: String,
    },
    /// Content does not match the digest it was asked for by.
    #[error("{url}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// URL fetched.
        url: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// Content has another size than its descriptor says.
    #[error("{url}: content has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// URL fetched.
        url: String,
        /// Size in the descriptor.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// A digest with an algorithm other than sha256.
    #[error("unsupported digest {digest:?}: only sha256 is supported")]
    UnsupportedDigest {
        /// The digest.
        digest: String,
    },
    /// A manifest of a kind this client does not read (schema 1, artifacts).
    #[error("{digest}: unsupported manifest media type {media_type:?}")]
    UnsupportedManifest {
        /// Digest or reference of the manifest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A manifest or index that is not valid JSON of its kind.
    #[error("parsing {what} {digest}: {source}")]
    InvalidJson {
        /// Manifest or index.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing a downloaded blob failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The temporary file.
        path: std::path::PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be set up (TLS roots).
    #[error("setting up the registry HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The causes under a reqwest error (whose own text only repeats the URL),
/// joined as Go joins wrapped errors: `client error (Connect): tcp connect
/// error: Connection refused (os error 111)`.
fn cause_chain(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = std::error::Error::source(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

fn server_message(message: &Option<String>) -> String {
    message
        .as_deref()
        .map(|m| format!(": server message: {m}"))
        .unwrap_or_default()
}

impl RegistryError {
    /// Whether the thing asked for does not exist (gRPC `NotFound`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. } | Self::NoMatchingPlatform { .. } | Self::BlobNotFound { .. }
        )
    }
}

/// Which registries are spoken to in plain HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// `host[:port]` of registries to reach over plain HTTP (containerd's
    /// `http://` mirror endpoints, Docker's `insecure-registries`).
    pub insecure_registries: Vec<String>,
}

impl RegistryConfig {
    /// `http` for loopback and insecure registries, else `https`.
    pub fn scheme(&self, domain: &str) -> &'static str {
        let insecure = self
            .insecure_registries
            .iter()
            .any(|entry| normalize_registry_host(entry).eq_ignore_ascii_case(domain));
        if insecure || is_localhost(domain) {
            "http"
        } else {
            "https"
        }
    }

    /// `<scheme>://<api host>/v2/<path>/` of a repository.
    pub(crate) fn repository_url(&self, reference: &Reference) -> Result<Url, RegistryError> {
        let (domain, path) = reference
            .repository
            .split_once('/')
            .unwrap_or((reference.repository.as_str(), ""));
        let host = if domain == DOCKER_HUB_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            domain
        };
        let url = format!("{}://{host}/v2/{path}/", self.scheme(domain));
        Url::parse(&url).map_err(|source| RegistryError::Url { url, source })
    }
}

/// `http://host:5000/` -> `host:5000`: flags may be given as URLs.
pub fn normalize_registry_host(entry: &str) -> &str {
    entry
        .trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}

/// `localhost` or a loopback address, with or without a port (containerd's
/// `docker.IsLocalhost`).
pub fn is_localhost(domain: &str) -> bool {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match domain.rsplit_once(':') {
            Some((host, port))
                if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                host
            }
            _ => domain,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a manifest document is.
#[derive(Debug)]
pub enum ManifestDocument {
    /// An OCI index or Docker manifest list.
    Index(ImageIndex),
    /// An OCI image manifest or Docker schema 2 manifest.
    Manifest(ImageManifest),
}

/// Parses a manifest body by its media type (the `Content-Type`, or when
/// that is missing or generic, the document's own `mediaType`); returns the
/// media type with the document.
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
    digest: &str,
) -> Result<(String, ManifestDocument), RegistryError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion", default)]
        schema_version: u32,
    }
    let content_type = content_type
        .map(|t| t.split(';').next().unwrap_or(t).trim())
        .filter(|t| !t.is_empty() && *t != "application/json" && *t != "text/plain");
    let invalid = |what| {
        move |source| RegistryError::InvalidJson {
            what,
            digest: digest.to_owned(),
            source,
        }
    };
    let media_type = match content_type {
        Some(t) => t.to_owned(),
        None => {
            let probe: Probe = serde_json::from_slice(body).map_err(invalid("manifest"))?;
            match probe.media_type.as_str() {
                "" if probe.schema_version == 1 => DOCKER_MANIFEST_V1.to_owned(),
                "" if probe.manifests.is_some() => MediaType::ImageIndex.to_string(),
                "" => MediaType::ImageManifest.to_string(),
                t => t.to_owned(),
            }
        }
    };
    let document = match media_type.as_str() {
        t if t == MediaType::ImageIndex.to_string() || t == DOCKER_MANIFEST_LIST => {
            serde_json::from_slice(body)
                .map(ManifestDocument::Index)
                .map_err(invalid("index"))?
        }
        t if t == MediaType::ImageManifest.to_string() || t == DOCKER_MANIFEST => {
            serde_json::from_slice(body)
                .map(ManifestDocument::Manifest)
                .map_err(invalid("manifest"))?
        }
        t => {
            return Err(RegistryError::UnsupportedManifest {
                digest: digest.to_owned(),
                media_type: if t == DOCKER_MANIFEST_V1_SIGNED {
                    format!("{t} (Docker image manifest schema 1 is not supported)")
                } else {
                    t.to_owned()
                },
            });
        }
    };
    Ok((media_type, document))
}

/// The entry of an index for this host (linux and this architecture; an
/// entry without a platform fits too), as containerd picks it: the first one.
pub fn select_platform_manifest(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|d| {
        let manifest_or_index = matches!(
            d.media_type(),
            MediaType::ImageManifest | MediaType::ImageIndex
        ) || is_docker_manifest_type(d.media_type());
        manifest_or_index && platform_matches(d)
    })
}

fn is_docker_manifest_type(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::Other(t) if t == DOCKER_MANIFEST || t == DOCKER_MANIFEST_LIST)
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A reference resolved to the image manifest for this host.
#[derive(Debug)]
pub struct Resolved {
    /// Digest of what the tag names (an index or a manifest): the digest in
    /// `RepoDigests`, as containerd records it.
    pub digest: String,
    /// Descriptor of the platform's image manifest.
    pub manifest_descriptor: Descriptor,
    /// The manifest's bytes (verified against its digest).
    pub manifest_bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// Bytes of the index, when the reference named one.
    pub index_size: Option<u64>,
}

/// The HTTP client shared by all pulls.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    config: RegistryConfig,
}

impl RegistryClient {
    /// Builds the client (loads the TLS trust store).
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("cri-shim/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // A stalled transfer fails rather than hanging the pull forever.
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(RegistryError::Client)?;
        Ok(Self { http, config })
    }

    /// The registry configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// A session for one repository, with the credentials for it.
    pub(crate) fn session(
        &self,
        reference: &Reference,
        credentials: Credentials,
    ) -> Result<Session, RegistryError> {
        let base = self.config.repository_url(reference)?;
        let path = reference
            .repository
            .split_once('/')
            .map_or("", |(_, path)| path)
            .to_owned();
        let authorization = match &credentials {
            Credentials::RegistryToken(token) => Some(format!("Bearer {token}")),
            _ => None,
        };
        Ok(Session {
            http: self.http.clone(),
            base,
            repository: reference.repository.clone(),
            scope: pull_scope(&path),
            credentials,
            authorization: std::sync::Mutex::new(authorization),
            authenticating: tokio::sync::Mutex::new(()),
        })
    }
}

/// Requests to one repository with one set of credentials; remembers the
/// authorization a challenge led to, so later requests send it at once.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    /// `<scheme>://<host>/v2/<path>/`.
    base: Url,
    /// `registry/path`, for messages.
    repository: String,
    scope: String,
    credentials: Credentials,
    /// The `Authorization` header value to send.
    authorization: std::sync::Mutex<Option<String>>,
    /// Held while answering a challenge, so concurrent requests fetch one token.
    authenticating: tokio::sync::Mutex<()>,
}

impl Session {
    /// Resolves `reference` (tag or digest) to the image manifest for this
    /// host, following an index.
    pub(crate) async fn resolve(&self, reference: &Reference) -> Result<Resolved, RegistryError> {
        let tag_or_digest = reference
            .digest
            .as_deref()
            .or(reference.tag.as_deref())
            .unwrap_or("latest");
        let url = self.url(&format!("manifests/{tag_or_digest}"))?;
        let (content_type, body) = self
            .get_document(&url, "manifest", Some(MANIFEST_ACCEPT))
            .await
            .map_err(|e| match e {
                RegistryError::UnexpectedStatus {
                    status: StatusCode::NOT_FOUND,
                    ..
                } => RegistryError::NotFound {
                    reference: reference.to_string(),
                },
                other => other,
            })?;
        let digest = sha256_digest(&body);
        if let Some(expected) = &reference.digest
            && *expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                url: url.to_string(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        let (mut media_type, mut document) =
            parse_manifest(content_type.as_deref(), &body, &digest)?;
        let index_size =
            matches!(document, ManifestDocument::Index(_)).then_some(body.len() as u64);
        let mut current = (digest.clone(), body);
        for depth in 0.. {
            match document {
                ManifestDocument::Manifest(manifest) => {
                    let (manifest_digest, manifest_bytes) = current;
                    let manifest_descriptor = Descriptor::new(
                        MediaType::from(media_type.as_str()),
                        manifest_bytes.len() as u64,
                        manifest_digest
                            .parse::<oci_spec::image::Digest>()
                            .map_err(|_| RegistryError::UnsupportedDigest {
                                digest: manifest_digest.clone(),
                            })?,
                    );
                    return Ok(Resolved {
                        digest,
                        manifest_descriptor,
                        manifest_bytes,
                        manifest,
                        index_size,
                    });
                }
                ManifestDocument::Index(index) => {
                    if depth >= MAX_INDEX_DEPTH {
                        return Err(RegistryError::UnsupportedManifest {
                            digest: current.0,
                            media_type: "image index nested too deeply".into(),
                        });
                    }
                    let child = select_platform_manifest(&index).cloned().ok_or_else(|| {
                        RegistryError::NoMatchingPlatform {
                            digest: current.0.clone(),
                            architecture: oci_spec::image::Arch::default().to_string(),
                        }
                    })?;
                    let body = self.fetch_document(&child, "manifests", "manifest").await?;
                    let child_digest = child.digest().to_string();
                    (media_type, document) =
                        parse_manifest(Some(child.media_type().as_ref()), &body, &child_digest)?;
                    current = (child_digest, body);
                }
            }
        }
        unreachable!("the loop returns or fails")
    }

    /// Fetches a small blob (an image config) into memory, verified.
    pub async fn fetch_config(&self, descriptor: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        self.fetch_document(descriptor, "blobs", "config").await
    }

    /// Streams a blob into a new file at `dest`, hashing as it goes; fails
    /// unless size and digest match the descriptor. The caller removes
    /// `dest` on failure.
    pub async fn fetch_blob_to(
        &self,
        descriptor: &Descriptor,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        let digest = descriptor.digest().to_string();
        let url = self.url(&format!("blobs/{digest}"))?;
        let mut response = self
            .get(&url, None)
            .await
            .map_err(|e| self.blob_not_found(e, &digest))?;
        let write_err = |source| RegistryError::Write {
            path: dest.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| RegistryError::Http {
                method: "GET",
                url: url.to_string(),
                source,
            })?
        {
            size += chunk.len() as u64;
            if size > descriptor.size() {
                return Err(RegistryError::SizeMismatch {
                    url: url.to_string(),
                    expected: descriptor.size(),
                    actual: size,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_err)?;
        }
        file.sync_all().await.map_err(write_err)?;
        verify(&url, descriptor, size, &hasher.finalize())
    }

    /// GETs a manifest (`manifests/<digest>`) or config (`blobs/<digest>`) by
    /// descriptor, verified.
    async fn fetch_document(
        &self,
        descriptor: &Descriptor,
        kind: &str,
        what: &'static str,
    ) -> Result<Vec<u8>, RegistryError> {
        let digest = descriptor.digest().to_string();
        let url = self.url(&format!("{kind}/{digest}"))?;
        if descriptor.size() > MAX_DOCUMENT_SIZE {
            return Err(RegistryError::TooLarge {
                what,
                url: url.to_string(),
            });
        }
        let accept = (kind == "manifests").then_some(MANIFEST_ACCEPT);
        let (_, body) = self
            .get_document(&url, what, accept)
            .await
            .map_err(|e| self.blob_not_found(e, &digest))?;
        verify(&url, descriptor, body.len() as u64, &Sha256::digest(&body))?;
        Ok(body)
    }

    fn blob_not_found(&self, error: RegistryError, digest: &str) -> RegistryError {
        match error {
            RegistryError::UnexpectedStatus {
                status: StatusCode::NOT_FOUND,
                ..
            } => RegistryError::BlobNotFound {
                repository: self.repository.clone(),
                digest: digest.to_owned(),
            },
            other => other,
        }
    }

    fn url(&self, rest: &str) -> Result<Url, RegistryError> {
        self.base.join(rest).map_err(|source| RegistryError::Url {
            url: format!("{}{rest}", self.base),
            source,
        })
    }

    /// GETs a document of at most [`MAX_DOCUMENT_SIZE`] bytes; returns its
    /// `Content-Type` and body.
    async fn get_document(
        &self,
        url: &Url,
        what: &'static str,
        accept: Option<&str>,
    ) -> Result<(Option<String>, Vec<u8>), RegistryError> {
        let mut response = self.get(url, accept).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| RegistryError::Http {
                method: "GET",
                url: url.to_string(),
                source,
            })?
        {
            if (body.len() + chunk.len()) as u64 > MAX_DOCUMENT_SIZE {
                return Err(RegistryError::TooLarge {
                    what,
                    url: url.to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((content_type, body))
    }

    /// GET with the session's authorization; on `401` answers the challenge
    /// once and retries. Non-success statuses become errors.
    async fn get(
        &self,
        url: &Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let sent = self.current_authorization();
        let response = self.send(url, accept, sent.as_deref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return check_status("GET", url, response).await;
        }
        let challenges: Vec<Challenge> = parse_challenges(
            response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let authorization = {
            let _one_at_a_time = self.authenticating.lock().await;
            let current = self.current_authorization();
            if current != sent {
                // Another request answered the challenge meanwhile.
                current
            } else {
                let answer = self.answer(&challenges).await?;
                if answer.is_none() || answer == sent {
                    // Nothing (new) to try: the refusal stands.
                    return Err(access_denied("GET", url, response).await);
                }
                *self
                    .authorization
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = answer.clone();
                answer
            }
        };
        let retried = self.send(url, accept, authorization.as_deref()).await?;
        match retried.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(access_denied("GET", url, retried).await)
            }
            _ => check_status("GET", url, retried).await,
        }
    }

    fn current_authorization(&self) -> Option<String> {
        self.authorization
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn send(
        &self,
        url: &Url,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut request = self.http.get(url.clone());
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(value) = authorization.and_then(|v| HeaderValue::from_str(v).ok()) {
            let mut value = value;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        request.send().await.map_err(|source| RegistryError::Http {
            method: "GET",
            url: url.to_string(),
            source,
        })
    }

    /// The `Authorization` value answering the first challenge this client
    /// can meet with its credentials; `None` when it can meet none.
    async fn answer(&self, challenges: &[Challenge]) -> Result<Option<String>, RegistryError> {
        for challenge in challenges {
            match challenge {
                Challenge::Basic => {
                    if let Some(header) = self.credentials.basic_header() {
                        return Ok(Some(header));
                    }
                }
                Challenge::Bearer {
                    realm,
                    service,
                    scope,
                } => {
                    let scope = scope.as_deref().unwrap_or(&self.scope);
                    let token = self.fetch_token(realm, service.as_deref(), scope).await?;
                    return Ok(Some(format!("Bearer {token}")));
                }
            }
        }
        Ok(None)
    }

    /// Gets a bearer token from `realm`: the OAuth2 refresh-token POST for
    /// an identity token, else a GET (with Basic credentials when given).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let realm_url = Url::parse(realm).map_err(|source| RegistryError::Url {
            url: realm.to_owned(),
            source,
        })?;
        let (kind, request) = match &self.credentials {
            Credentials::IdentityToken(refresh_token) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token.as_str()),
                    ("client_id", OAUTH_CLIENT_ID),
                    ("scope", scope),
                ];
                if let Some(service) = service {
                    form.push(("service", service));
                }
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish();
                let request = self
                    .http
                    .post(realm_url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body);
                ("oauth", request)
            }
            credentials => {
                let mut url = realm_url.clone();
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", scope);
                }
                let mut request = self.http.get(url);
                let kind = match credentials.basic_header() {
                    Some(basic) => {
                        let mut value =
                            HeaderValue::from_str(&basic).map_err(|_| RegistryError::NoToken {
                                url: realm_url.to_string(),
                            })?;
                        value.set_sensitive(true);
                        request = request.header(AUTHORIZATION, value);
                        "oauth"
                    }
                    None => "anonymous",
                };
                (kind, request)
            }
        };
        let method = if matches!(self.credentials, Credentials::IdentityToken(_)) {
            "POST"
        } else {
            "GET"
        };
        let response = request.send().await.map_err(|source| RegistryError::Http {
            method,
            url: realm_url.to_string(),
            source,
        })?;
        let status = response.status();
        if !status.is_success() {
            let message = error_message(response).await;
            return Err(RegistryError::Token {
                kind,
                url: realm_url.to_string(),
                status,
                message,
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|source| RegistryError::Http {
                method,
                url: realm_url.to_string(),
                source,
            })?;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or(RegistryError::NoToken {
                url: realm_url.to_string(),
            })
    }
}

/// Checks size and sha256 of fetched content against its descriptor.
fn verify(url: &Url, descriptor: &Descriptor, size: u64, hash: &[u8]) -> Result<(), RegistryError> {
    if size != descriptor.size() {
        return Err(RegistryError::SizeMismatch {
            url: url.to_string(),
            expected: descriptor.size(),
            actual: size,
        });
    }
    let expected = descriptor.digest().to_string();
    let Some(expected_hex) = descriptor.as_digest_sha256() else {
        return Err(RegistryError::UnsupportedDigest { digest: expected });
    };
    let actual = hex::encode(hash);
    if actual != expected_hex {
        return Err(RegistryError::DigestMismatch {
            url: url.to_string(),
            expected,
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(())
}

async fn check_status(
    method: &'static str,
    url: &Url,
    response: reqwest::Response,
) -> Result<reqwest::Response, RegistryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == StatusCode::FORBIDDEN {
        return Err(access_denied(method, url, response).await);
    }
    Err(RegistryError::UnexpectedStatus {
        method,
        url: url.to_string(),
        status,
        message: error_message(response).await,
    })
}

async fn access_denied(
    method: &'static str,
    url: &Url,
    response: reqwest::Response,
) -> RegistryError {
    RegistryError::AccessDenied {
        method,
        url: url.to_string(),
        status: response.status(),
        message: error_message(response).await,
    }
}

/// `code: message` of the first entry of a registry error body
/// (`{"errors":[{"code":"...","message":"..."}]}`), or an OAuth2 error.
async fn error_message(response: reqwest::Response) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Entry>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        error_description: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let body = response.bytes().await.ok()?;
    let body: Body = serde_json::from_slice(&body).ok()?;
    if let Some(entry) = body.errors.first() {
        return Some(format!("{}: {}", entry.code.to_lowercase(), entry.message));
    }
    match (body.error, body.error_description) {
        (Some(e), Some(d)) => Some(format!("{e}: {d}")),
        (Some(e), None) => Some(e),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
