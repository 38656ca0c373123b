//! A registry token server for tests: the `auth.token` scheme of
//! Distribution (Debian's `docker-registry`), so a registry asks clients for
//! Bearer tokens from it.
//!
//! `GET /token?service=..&scope=..` with known Basic credentials gets an
//! RS256 JWT granting the requested actions. The JWT carries the server's
//! self-signed certificate in `x5c`, and the registry trusts that
//! certificate as its root bundle. `openssl` makes the key and certificate
//! and signs the tokens. Requests without credentials, or with wrong ones,
//! get 401. Every request is recorded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use base64::Engine as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One token request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The Basic auth user, if any.
    pub user: Option<String>,
    /// The `scope` parameter (empty when absent).
    pub scope: String,
    /// Whether a token was issued.
    pub granted: bool,
}

/// A running token server; stops when dropped.
#[derive(Debug)]
pub struct TokenServer {
    /// `http://127.0.0.1:<port>/token`.
    pub realm: String,
    /// The `service` the registry names and the tokens' audience.
    pub service: String,
    /// The tokens' issuer.
    pub issuer: String,
    /// The PEM certificate the registry must trust (`rootcertbundle`).
    pub certificate: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    ensure!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// What the server needs to answer a request.
struct Signer {
    dir: PathBuf,
    certificate_der: Vec<u8>,
    service: String,
    issuer: String,
    users: Vec<(String, String)>,
}

impl Signer {
    /// An RS256 JWT granting `scope` (`repository:<name>:<actions>`) to `user`.
    fn token(&self, user: &str, scope: &str) -> anyhow::Result<String> {
        let access: Vec<serde_json::Value> = scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = json!({
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.certificate_der)],
        });
        let claims = json!({
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header)?),
            b64url(&serde_json::to_vec(&claims)?)
        );
        let input_file = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(input_file.path(), &input)?;
        let input_path = input_file.path().display().to_string();
        let signature = openssl(
            &self.dir,
            &[
                "dgst",
                "-sha256",
                "-sign",
                "token.key",
                "-binary",
                &input_path,
            ],
        )?;
        Ok(format!("{input}.{}", b64url(&signature)))
    }

    /// Whether `credentials` are a known user's.
    fn check(&self, credentials: Option<&(String, String)>) -> bool {
        credentials.is_some_and(|c| self.users.contains(c))
    }
}

/// `(user, password)` of an `Authorization: Basic` header value.
fn basic_credentials(authorization: Option<&str>) -> Option<(String, String)> {
    let encoded = authorization?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Token ids are unique within the test process.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

impl TokenServer {
    /// Makes a key and certificate under `dir` and serves on 127.0.0.1.
    pub async fn start(dir: &Path, users: Vec<(String, String)>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.pem",
                "-days",
                "1",
                "-subj",
                "/CN=token-e2e",
            ],
        )?;
        let certificate_der = openssl(dir, &["x509", "-in", "token.pem", "-outform", "DER"])?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (service, issuer) = ("registry-e2e".to_owned(), "token-e2e".to_owned());
        let signer = Arc::new(Signer {
            dir: dir.to_owned(),
            certificate_der,
            service: service.clone(),
            issuer: issuer.clone(),
            users,
        });
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (signer, recorded) = (signer.clone(), recorded.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, &signer, &recorded).await;
                });
            }
        });
        Ok(Self {
            realm: format!("http://127.0.0.1:{port}/token"),
            service,
            issuer,
            certificate: dir.join("token.pem"),
            requests,
            task,
        })
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Answers one HTTP/1.1 request on `socket`.
async fn serve(
    mut socket: tokio::net::TcpStream,
    signer: &Signer,
    recorded: &Mutex<Vec<TokenRequest>>,
) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buffer).await?;
        ensure!(n > 0, "connection closed before the request ended");
        head.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    let url = reqwest::Url::parse(&format!("http://token{target}"))?;
    let scope = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let credentials = basic_credentials(authorization.as_deref());
    let granted = signer.check(credentials.as_ref());
    let user = credentials.map(|(user, _)| user);
    let response = match (&user, granted) {
        (Some(user), true) => {
            let token = signer.token(user, &scope)?;
            let body =
                json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        _ => {
            let body =
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Basic realm=\"token-e2e\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
    };
    recorded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(TokenRequest {
            user,
            scope,
            granted,
        });
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await?;
    Ok(())
}
