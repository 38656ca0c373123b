//! A registry in memory behind a real HTTP/1.1 socket on 127.0.0.1, for unit
//! tests of the client and of pulls: the distribution API's manifest and blob
//! GETs, Basic or Bearer auth with its token endpoint at `/token`, and a log
//! of every request so tests can count downloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake registry wants to be authenticated.
#[derive(Debug, Clone, Default)]
pub enum FakeAuth {
    /// Everything is public.
    #[default]
    None,
    /// `Basic` with these credentials on every request.
    Basic { username: String, password: String },
    /// `Bearer` tokens from `/token`; with `Some` credentials the token
    /// endpoint demands them (Basic, or a refresh token by POST).
    Bearer {
        credentials: Option<(String, String)>,
        refresh_token: Option<String>,
    },
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// `(repository path, tag or digest)` -> (media type, bytes).
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    /// Blobs by digest (shared by all repositories, as a real registry's store).
    blobs: HashMap<String, Vec<u8>>,
    auth: FakeAuth,
    log: Vec<Logged>,
    /// Delay before answering blob GETs, to let concurrent pulls overlap.
    blob_delay_ms: u64,
    /// The listening address, for the token realm.
    host: String,
}

/// The running fake; stops when dropped.
#[derive(Debug, Clone)]
pub struct FakeRegistry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

const TOKEN: &str = "fake-token-1";

impl FakeRegistry {
    /// Starts serving on a free port.
    pub async fn start(auth: FakeAuth) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State {
            auth,
            host: host.clone(),
            ..State::default()
        }));
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let _ = serve(stream, state).await;
                });
            }
        });
        Self {
            host,
            state,
            task: Arc::new(task),
        }
    }

    /// Adds a manifest under a tag (and always under its digest).
    pub fn put_manifest(&self, path: &str, tag: Option<&str>, media_type: &str, body: &[u8]) {
        let digest = super::sha256_digest(body);
        let mut state = self.state.lock().unwrap();
        let entry = (media_type.to_owned(), body.to_vec());
        if let Some(tag) = tag {
            state
                .manifests
                .insert((path.to_owned(), tag.to_owned()), entry.clone());
        }
        state.manifests.insert((path.to_owned(), digest), entry);
    }

    /// Adds a blob under its digest.
    pub fn put_blob(&self, body: &[u8]) -> String {
        let digest = super::sha256_digest(body);
        self.put_blob_as(&digest, body);
        digest
    }

    /// Adds content under a digest that may not be its own (to test verification).
    pub fn put_blob_as(&self, digest: &str, body: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.to_owned(), body.to_vec());
    }

    /// Removes a blob (to make a pull fail halfway).
    pub fn remove_blob(&self, digest: &str) {
        self.state.lock().unwrap().blobs.remove(digest);
    }

    /// Delays blob answers.
    pub fn set_blob_delay_ms(&self, ms: u64) {
        self.state.lock().unwrap().blob_delay_ms = ms;
    }

    /// Length of the manifest (or index) a tag names.
    pub fn manifest_len(&self, path: &str, tag: &str) -> Option<u64> {
        let state = self.state.lock().unwrap();
        state
            .manifests
            .get(&(path.to_owned(), tag.to_owned()))
            .map(|(_, bytes)| bytes.len() as u64)
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many GETs of `/v2/.../blobs/<digest>` were made.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .iter()
            .filter(|r| r.method == "GET" && r.target.ends_with(&format!("/blobs/{digest}")))
            .count()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

struct Reply {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let authorization = headers.get("authorization").cloned();
    let delay = {
        let mut state = state.lock().unwrap();
        state.log.push(Logged {
            method: method.clone(),
            target: target.clone(),
            authorization: authorization.clone(),
        });
        state.blob_delay_ms
    };
    if target.contains("/blobs/") && delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let reply = respond(&state, &method, &target, authorization.as_deref(), &body);
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(&reply.body).await?;
    }
    stream.shutdown().await
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errors": [{"code": code, "message": message}]})
        .to_string()
        .into_bytes()
}

fn respond(
    state: &Mutex<State>,
    method: &str,
    target: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Reply {
    let state = state.lock().unwrap();
    let basic = |username: &str, password: &str| {
        format!("Basic {}", BASE64.encode(format!("{username}:{password}")))
    };
    if let Some(query) = target.strip_prefix("/token") {
        let FakeAuth::Bearer {
            credentials,
            refresh_token,
        } = &state.auth
        else {
            return Reply::new("404 Not Found", "");
        };
        let ok = match (method, credentials, refresh_token) {
            ("POST", _, Some(expected)) => {
                let form = String::from_utf8_lossy(body);
                form.contains("grant_type=refresh_token")
                    && form.contains(&format!("refresh_token={expected}"))
                    && form.contains("scope=repository%3A")
            }
            ("GET", Some((u, p)), _) => authorization == Some(basic(u, p).as_str()),
            ("GET", None, None) => true,
            _ => false,
        };
        if !ok || !query.contains("service=fake") && method == "GET" {
            return Reply::new(
                "401 Unauthorized",
                serde_json::json!({"details": "incorrect username or password"}).to_string(),
            );
        }
        return Reply::new(
            "200 OK",
            serde_json::json!({"token": TOKEN, "expires_in": 300}).to_string(),
        )
        .header("Content-Type", "application/json");
    }
    let Some(rest) = target.strip_prefix("/v2/") else {
        return Reply::new("404 Not Found", "");
    };
    let authorized = match &state.auth {
        FakeAuth::None => true,
        FakeAuth::Basic { username, password } => {
            authorization == Some(basic(username, password).as_str())
        }
        FakeAuth::Bearer { .. } => authorization == Some(format!("Bearer {TOKEN}").as_str()),
    };
    if !authorized {
        let challenge = match &state.auth {
            FakeAuth::Basic { .. } => "Basic realm=\"fake\"".to_owned(),
            _ => {
                let path = rest.split("/manifests/").next().unwrap_or_default();
                let path = path.split("/blobs/").next().unwrap_or_default();
                format!(
                    "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:{path}:pull\"",
                    state.host
                )
            }
        };
        return Reply::new(
            "401 Unauthorized",
            error_body("UNAUTHORIZED", "authentication required"),
        )
        .header("WWW-Authenticate", challenge)
        .header("Content-Type", "application/json");
    }
    if method != "GET" && method != "HEAD" {
        return Reply::new("405 Method Not Allowed", "");
    }
    if let Some((path, reference)) = rest.rsplit_once("/manifests/") {
        return match state
            .manifests
            .get(&(path.to_owned(), reference.to_owned()))
        {
            Some((media_type, bytes)) => Reply::new("200 OK", bytes.clone())
                .header("Content-Type", media_type.clone())
                .header("Docker-Content-Digest", super::sha256_digest(bytes)),
            None => Reply::new(
                "404 Not Found",
                error_body("MANIFEST_UNKNOWN", "manifest unknown"),
            )
            .header("Content-Type", "application/json"),
        };
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        return match state.blobs.get(digest) {
            Some(bytes) => Reply::new("200 OK", bytes.clone())
                .header("Content-Type", "application/octet-stream"),
            None => Reply::new("404 Not Found", error_body("BLOB_UNKNOWN", "blob unknown")),
        };
    }
    Reply::new("404 Not Found", "")
}
