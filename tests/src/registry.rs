//! A real image registry for the pull tests: Debian's `docker-registry`
//! (distribution 2.8) with its own storage under the test's temp dir, on a
//! free port, optionally with htpasswd Basic auth and TLS; a pusher that
//! uploads OCI images into it the way `docker push` does (blob HEAD, then a
//! monolithic POST + PUT upload, then the manifest PUT); and its access log,
//! parsed, so tests can count what clients fetched.
//!
//! Also here: a network interface holding an address that is not
//! loopback (registries on loopback are always plain HTTP), and a cri-shim
//! started with extra flags and environment (`--insecure-registry`,
//! `SSL_CERT_FILE`).
//!
//! Invariant: the registry process, the interface and the cri-shim are gone
//! when their values are dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::harness::{self, CriClient, binary, tail};
use crate::image::{
    MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, OciImage, host_architecture, sha256_digest,
};

/// How to run the registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Address to listen on (a free port is picked).
    pub ip: IpAddr,
    /// Users of htpasswd Basic auth; none means anonymous access.
    pub users: Vec<(String, String)>,
    /// PEM CA certificate (trusted by the pusher), server certificate and
    /// key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Bearer token auth from this token server (`auth.token`) instead of
    /// htpasswd. The pusher has no token client: push before, with a
    /// registry on the same dir without it.
    pub token: Option<TokenAuth>,
}

/// The `auth.token` settings of a registry.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// Where clients get tokens.
    pub realm: String,
    /// The registry's service name (the tokens' audience).
    pub service: String,
    /// The tokens' issuer.
    pub issuer: String,
    /// PEM certificates the tokens' signatures must chain to.
    pub root_bundle: PathBuf,
}

impl From<&crate::token_server::TokenServer> for TokenAuth {
    fn from(server: &crate::token_server::TokenServer) -> Self {
        Self {
            realm: server.realm.clone(),
            service: server.service.clone(),
            issuer: server.issuer.clone(),
            root_bundle: server.certificate.clone(),
        }
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            users: Vec::new(),
            tls: None,
            token: None,
        }
    }
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Response status.
    pub status: u16,
}

/// What a push put into the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `host:port/repository:tag`.
    pub reference: String,
    /// `host:port/repository`.
    pub repository: String,
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Digest of the index the tag names, when pushed with one.
    pub index_digest: Option<String>,
    /// Digest the tag resolves to: the index's if any, else the manifest's.
    pub tag_digest: String,
    /// The config digest: the image ID.
    pub image_id: String,
    /// Digests of the layer blobs.
    pub layers: Vec<String>,
}

/// A running `docker-registry serve`.
#[derive(Debug)]
pub struct Registry {
    /// `ip:port`, the registry part of references.
    pub host: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The registry's stdout and stderr (holds the access log).
    pub log_path: PathBuf,
    users: Vec<(String, String)>,
    http: reqwest::Client,
    child: Child,
}

/// A free TCP port on `ip` (bound, read, released; the registry binds it next).
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

impl Registry {
    /// Writes the config (storage under `dir`), starts `docker-registry serve`
    /// and waits until `/v2/` answers.
    pub async fn start(dir: &Path, options: RegistryOptions) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let storage = dir.join("storage");
        let port = free_port(options.ip)?;
        let host = match options.ip {
            IpAddr::V4(ip) => format!("{ip}:{port}"),
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        };
        let mut config = json!({
            "version": 0.1,
            "log": { "level": "info", "accesslog": { "disabled": false } },
            "storage": {
                "filesystem": { "rootdirectory": storage },
                "delete": { "enabled": true },
            },
            "http": { "addr": host },
        });
        if !options.users.is_empty() {
            let htpasswd = dir.join("htpasswd");
            let mut lines = String::new();
            for (user, password) in &options.users {
                let output = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .context("running htpasswd (Debian's apache2-utils)")?;
                ensure!(output.status.success(), "htpasswd failed");
                lines.push_str(String::from_utf8_lossy(&output.stdout).trim());
                lines.push('\n');
            }
            fs::write(&htpasswd, lines)?;
            config["auth"] = json!({ "htpasswd": { "realm": "registry-e2e", "path": htpasswd } });
        }
        if let Some(token) = &options.token {
            config["auth"] = json!({ "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": token.root_bundle,
            } });
        }
        let mut http = reqwest::Client::builder();
        if let Some((ca, cert, key)) = &options.tls {
            config["http"]["tls"] = json!({ "certificate": cert, "key": key });
            let pem = fs::read(ca)?;
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        // YAML is a superset of JSON: the registry reads this as is.
        let config_path = dir.join("config.yml");
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (Debian's docker-registry)")?;
        let mut registry = Self {
            host,
            scheme: if options.tls.is_some() {
                "https"
            } else {
                "http"
            },
            log_path,
            users: options.users,
            http: http.build()?,
            child,
        };
        registry.wait_ready().await?;
        Ok(registry)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}://{}/v2/", self.scheme, self.host);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "docker-registry exited with {status}: {}",
                    tail(&self.log_path, 20)
                );
            }
            if let Ok(response) = self.http.get(&url).send().await
                && matches!(response.status().as_u16(), 200 | 401)
            {
                return Ok(());
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not answer at {url}: {}",
                tail(&self.log_path, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.users.first() {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}/v2/{path}", self.scheme, self.host)
    }

    /// Uploads one blob unless the repository has it: `HEAD`, then
    /// `POST /blobs/uploads/` and a single `PUT <location>?digest=`.
    async fn push_blob(&self, repository: &str, digest: &str, data: &[u8]) -> anyhow::Result<()> {
        let head = self
            .authorize(
                self.http
                    .head(self.url(&format!("{repository}/blobs/{digest}"))),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(());
        }
        let start = self
            .authorize(
                self.http
                    .post(self.url(&format!("{repository}/blobs/uploads/"))),
            )
            .send()
            .await?;
        ensure!(
            start.status().as_u16() == 202,
            "starting the upload of {digest}: {}",
            start.status()
        );
        let location = start
            .headers()
            .get(reqwest::header::LOCATION)
            .context("upload has no Location")?
            .to_str()?
            .to_owned();
        let mut location = reqwest::Url::parse(&self.url(""))?.join(&location)?;
        location.query_pairs_mut().append_pair("digest", digest);
        let put = self
            .authorize(self.http.put(location))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        ensure!(
            put.status().as_u16() == 201,
            "uploading {digest}: {} {}",
            put.status(),
            put.text().await.unwrap_or_default()
        );
        Ok(())
    }

    async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let put = self
            .authorize(
                self.http
                    .put(self.url(&format!("{repository}/manifests/{reference}"))),
            )
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(body.to_vec())
            .send()
            .await?;
        ensure!(
            put.status().as_u16() == 201,
            "pushing manifest {repository}:{reference}: {} {}",
            put.status(),
            put.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// Pushes `image` as `repository:tag`. With `with_index`, the tag names
    /// an OCI index holding the manifest for this host's platform (what
    /// multi-platform images look like); else the manifest itself.
    pub async fn push(
        &self,
        image: &OciImage,
        repository: &str,
        tag: &str,
        with_index: bool,
    ) -> anyhow::Result<Pushed> {
        let manifest = image
            .blob(&image.manifest_digest)
            .context("image has no manifest blob")?;
        let parsed: Value = serde_json::from_slice(manifest)?;
        let mut blobs = vec![image.config_digest.clone()];
        let layers: Vec<String> = parsed["layers"]
            .as_array()
            .context("manifest has no layers")?
            .iter()
            .filter_map(|l| l["digest"].as_str().map(str::to_owned))
            .collect();
        blobs.extend(layers.iter().cloned());
        for digest in &blobs {
            let data = image
                .blob(digest)
                .with_context(|| format!("image lacks blob {digest}"))?;
            self.push_blob(repository, digest, data).await?;
        }
        let media_type = parsed["mediaType"].as_str().unwrap_or(MEDIA_TYPE_MANIFEST);
        let index_digest = if with_index {
            self.push_manifest(repository, &image.manifest_digest, media_type, manifest)
                .await?;
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_INDEX,
                "manifests": [{
                    "mediaType": media_type,
                    "digest": image.manifest_digest,
                    "size": manifest.len(),
                    "platform": { "architecture": host_architecture(), "os": "linux" },
                }],
            }))?;
            self.push_manifest(repository, tag, MEDIA_TYPE_INDEX, &index)
                .await?;
            Some(sha256_digest(&index))
        } else {
            self.push_manifest(repository, tag, media_type, manifest)
                .await?;
            None
        };
        Ok(Pushed {
            reference: format!("{}/{repository}:{tag}", self.host),
            repository: format!("{}/{repository}", self.host),
            manifest_digest: image.manifest_digest.clone(),
            tag_digest: index_digest
                .clone()
                .unwrap_or_else(|| image.manifest_digest.clone()),
            index_digest,
            image_id: image.config_digest.clone(),
            layers,
        })
    }

    /// The access log so far.
    pub fn access_log(&self) -> anyhow::Result<Vec<AccessLine>> {
        let text = fs::read_to_string(&self.log_path)?;
        Ok(text.lines().filter_map(parse_access_line).collect())
    }

    /// Successful GETs of a blob, by any client.
    pub fn blob_gets(&self, digest: &str) -> anyhow::Result<usize> {
        let suffix = format!("/blobs/{digest}");
        Ok(self
            .access_log()?
            .iter()
            .filter(|l| l.method == "GET" && l.path.ends_with(&suffix) && l.status < 400)
            .count())
    }

    /// GETs of `/v2/<repository>/manifests/<reference>`.
    pub fn manifest_gets(&self, repository: &str, reference: &str) -> anyhow::Result<usize> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        Ok(self
            .access_log()?
            .iter()
            .filter(|l| l.method == "GET" && l.path == path)
            .count())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `... "GET /v2/x/blobs/sha256:... HTTP/1.1" 200 ...` (the combined log
/// format distribution writes).
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let (method, path, protocol) = (parts.next()?, parts.next()?, parts.next()?);
    if !protocol.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessLine {
        method: method.to_owned(),
        path: path.to_owned(),
        status,
    })
}

/// Reads an OCI-layout tar (as `build-test-images` writes them) back into
/// an [`OciImage`], for pushing. Takes the first manifest of `index.json`.
pub fn read_layout_tar(path: &Path) -> anyhow::Result<OciImage> {
    let mut archive = tar::Archive::new(
        fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let mut files = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(name, data);
    }
    let index_bytes = files
        .get("index.json")
        .context("layout has no index.json")?;
    let index: Value = serde_json::from_slice(index_bytes)?;
    let descriptor = &index["manifests"][0];
    let manifest_digest = descriptor["digest"]
        .as_str()
        .context("index has no manifest")?
        .to_owned();
    let reference = descriptor["annotations"][crate::image::ANNOTATION_CONTAINERD_NAME]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut blobs = BTreeMap::new();
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            blobs.insert(format!("sha256:{hex}"), data.clone());
        }
    }
    let manifest: Value = serde_json::from_slice(
        blobs
            .get(&manifest_digest)
            .context("layout lacks its manifest blob")?,
    )?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest has no config")?
        .to_owned();
    Ok(OciImage {
        reference,
        manifest_digest,
        config_digest,
        blobs,
        index: index_bytes.clone(),
    })
}

/// A veth pair whose first end holds `address/32`: a local address that is
/// not loopback, for registries that must not count as localhost. (A veth
/// rather than a `dummy` link: the dummy module is not on every host, veth
/// is, since the CNI bridge plugin needs it.)
#[derive(Debug)]
pub struct LocalAddress {
    /// The interface holding the address (its peer is `<link>p`).
    pub link: String,
    /// The address.
    pub ip: Ipv4Addr,
}

impl LocalAddress {
    /// Creates the pair `link`/`<link>p` (`link` at most 14 characters) and
    /// puts `ip` on `link`.
    pub fn add(link: &str, ip: Ipv4Addr) -> anyhow::Result<Self> {
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let output = Command::new("ip").args(args).output()?;
            ensure!(
                output.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            Ok(())
        };
        if Path::new("/sys/class/net").join(link).exists() {
            // Left over by a killed run of the same test.
            run(&["link", "del", link])?;
        }
        let peer = format!("{link}p");
        run(&["link", "add", link, "type", "veth", "peer", "name", &peer])?;
        let address = Self {
            link: link.to_owned(),
            ip,
        };
        run(&["addr", "add", &format!("{ip}/32"), "dev", link])?;
        run(&["link", "set", link, "up"])?;
        run(&["link", "set", &peer, "up"])?;
        Ok(address)
    }
}

impl Drop for LocalAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
    }
}

/// A test CA and a server certificate it signed for `ip`
/// (subjectAltName), made by `openssl`; returns (CA certificate, server
/// certificate, server key) PEM paths under `dir`. (A lone self-signed
/// certificate will not do: webpki refuses a CA certificate as a server's.)
pub fn test_certificates(dir: &Path, ip: IpAddr) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_cert = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let cert = dir.join("registry.crt");
    let key = dir.join("registry.key");
    let csr = dir.join("registry.csr");
    let extensions = dir.join("registry.ext");
    fs::write(
        &extensions,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:{ip}\n"
        ),
    )?;
    let openssl = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .output()
            .context("running openssl")?;
        ensure!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    let s = |v: &str| std::ffi::OsString::from(v);
    openssl(&[
        &s("req"),
        &s("-x509"),
        &s("-newkey"),
        &s("rsa:2048"),
        &s("-nodes"),
        &s("-days"),
        &s("1"),
        &s("-subj"),
        &s("/CN=registry e2e test CA"),
        &s("-keyout"),
        ca_key.as_os_str(),
        &s("-out"),
        ca_cert.as_os_str(),
    ])?;
    openssl(&[
        &s("req"),
        &s("-newkey"),
        &s("rsa:2048"),
        &s("-nodes"),
        &s("-subj"),
        &s(&format!("/CN={ip}")),
        &s("-keyout"),
        key.as_os_str(),
        &s("-out"),
        csr.as_os_str(),
    ])?;
    openssl(&[
        &s("x509"),
        &s("-req"),
        &s("-in"),
        csr.as_os_str(),
        &s("-days"),
        &s("1"),
        &s("-CA"),
        ca_cert.as_os_str(),
        &s("-CAkey"),
        ca_key.as_os_str(),
        &s("-CAcreateserial"),
        &s("-extfile"),
        extensions.as_os_str(),
        &s("-out"),
        cert.as_os_str(),
    ])?;
    Ok((ca_cert, cert, key))
}

/// A cri-shim started with extra flags and environment, on a fresh root
/// without images (pull tests start from nothing).
#[derive(Debug)]
pub struct PullingCriShim {
    /// `--root`.
    pub root: PathBuf,
    /// `unix://<dir>/cri.sock`.
    pub endpoint: String,
    log: PathBuf,
    child: Child,
}

impl PullingCriShim {
    /// Starts `cri-shim` under `dir` with `args` added and `envs` set.
    pub fn start(
        dir: &Path,
        cni_conf_dir: &Path,
        args: &[&str],
        envs: &[(&str, &Path)],
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = dir.join("root");
        let socket = dir.join("cri.sock");
        let log = dir.join("cri-shim.log");
        let mut command = Command::new(binary("cri-shim")?);
        command
            .arg("--root")
            .arg(&root)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--cni-conf-dir")
            .arg(cni_conf_dir)
            .arg("--cni-bin-dir")
            .arg("/usr/lib/cni")
            .args(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                bail!("cri-shim exited with {status}: {}", tail(&log, 20));
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "cri-shim socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            root,
            endpoint: format!("unix://{}", socket.display()),
            log,
            child,
        })
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 30)
    }
}

impl Drop for PullingCriShim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image client for a CRI endpoint.
pub type ImageClient =
    k8s_cri::v1::image_service_client::ImageServiceClient<tonic::transport::Channel>;

/// Connects an image client to a `unix://` CRI endpoint.
pub async fn image_client(endpoint: &str) -> anyhow::Result<ImageClient> {
    let channel = cri_shim::client::connect(endpoint).await?;
    Ok(ImageClient::new(channel))
}

/// A runtime client for the same endpoint (re-exported for symmetry).
pub async fn runtime_client(endpoint: &str) -> anyhow::Result<CriClient> {
    harness::cri_client(endpoint).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines_are_parsed() {
        let line = r#"127.0.0.1 - - [27/Nov/2026:01:24:11 +0000] "GET /v2/library/busybox/blobs/sha256:abc HTTP/1.1" 200 1234 "" "cri-shim/0.1.0""#;
        assert_eq!(
            parse_access_line(line),
            Some(AccessLine {
                method: "GET".into(),
                path: "/v2/library/busybox/blobs/sha256:abc".into(),
                status: 200,
            })
        );
        assert_eq!(
            parse_access_line(r#"time="2026-11-27" level=info msg="listening on 127.0.0.1:5000""#),
            None
        );
    }
}
