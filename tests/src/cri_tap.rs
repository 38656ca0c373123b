//! A recording proxy between a kubelet and its CRI runtime, for the
//! benchmarks: every gRPC call passes through unchanged (HTTP/2 frames,
//! streams and trailers), each method's calls are counted, and the
//! RunPodSandbox, CreateContainer and StartContainer calls are timed and
//! attributed to their pod. With these, a pod's start through the kubelet
//! splits into the runtime's own time for those three calls and the rest,
//! which is what the kubelet adds, measured within one run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1 as cri;
use prost::Message;
use tokio::net::{UnixListener, UnixStream};

type TapBody = BoxBody<Bytes, hyper::Error>;

/// The calls the tap times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimedMethod {
    /// `RunPodSandbox`.
    RunPodSandbox,
    /// `CreateContainer`.
    CreateContainer,
    /// `StartContainer`.
    StartContainer,
    /// `PodSandboxStatus` (of a sandbox the tap saw made).
    PodSandboxStatus,
    /// `ContainerStatus` (of a container the tap saw made).
    ContainerStatus,
}

impl TimedMethod {
    fn of_path(path: &str) -> Option<Self> {
        match path {
            "/runtime.v1.RuntimeService/RunPodSandbox" => Some(Self::RunPodSandbox),
            "/runtime.v1.RuntimeService/CreateContainer" => Some(Self::CreateContainer),
            "/runtime.v1.RuntimeService/StartContainer" => Some(Self::StartContainer),
            "/runtime.v1.RuntimeService/PodSandboxStatus" => Some(Self::PodSandboxStatus),
            "/runtime.v1.RuntimeService/ContainerStatus" => Some(Self::ContainerStatus),
            _ => None,
        }
    }

    /// Whether this is one of the three calls that make and start a pod.
    pub fn makes(self) -> bool {
        matches!(
            self,
            Self::RunPodSandbox | Self::CreateContainer | Self::StartContainer
        )
    }
}

/// One timed call, as the tap saw it: from the request's arrival to the end
/// of the runtime's response.
#[derive(Debug, Clone)]
pub struct TimedCall {
    /// Which call.
    pub method: TimedMethod,
    /// The pod sandbox's `metadata.name`.
    pub pod: String,
    /// When the request arrived.
    pub start: Instant,
    /// When the whole response (with its trailers) had arrived.
    pub end: Instant,
}

#[derive(Default)]
struct TapLog {
    /// Per gRPC method path, how long each call took (to the response's
    /// headers for calls passed through: for unary calls, when the runtime
    /// answered).
    calls: HashMap<String, Vec<Duration>>,
    timed: Vec<TimedCall>,
    sandbox_pod: HashMap<String, String>,
    container_pod: HashMap<String, String>,
}

/// A running tap: listens on [`CriTap::endpoint`], forwards to the runtime.
pub struct CriTap {
    /// `unix://` endpoint to give the kubelet.
    pub endpoint: String,
    socket: PathBuf,
    log: Arc<Mutex<TapLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for CriTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriTap")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl CriTap {
    /// Listens on `socket` and forwards every connection to the runtime at
    /// `upstream` (`unix://...`), one upstream connection per client one.
    pub fn start(socket: &Path, upstream: &str) -> anyhow::Result<Self> {
        let upstream = PathBuf::from(upstream.trim_start_matches("unix://"));
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("binding the CRI tap at {}", socket.display()))?;
        let log = Arc::new(Mutex::new(TapLog::default()));
        let task = tokio::spawn(accept_loop(listener, upstream, log.clone()));
        Ok(CriTap {
            endpoint: format!("unix://{}", socket.display()),
            socket: socket.to_owned(),
            log,
            task,
        })
    }

    /// The timed calls so far, and every call's duration per method path;
    /// both are cleared.
    pub fn take(&self) -> (Vec<TimedCall>, HashMap<String, Vec<Duration>>) {
        let mut log = self.log.lock().expect("tap log poisoned");
        (
            std::mem::take(&mut log.timed),
            std::mem::take(&mut log.calls),
        )
    }
}

impl Drop for CriTap {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept_loop(listener: UnixListener, upstream: PathBuf, log: Arc<Mutex<TapLog>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (upstream, log) = (upstream.clone(), log.clone());
        connections.spawn(async move {
            if let Err(e) = serve_connection(client, &upstream, log).await {
                eprintln!("CRI tap: connection ended: {e:#}");
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_connection(
    client: UnixStream,
    upstream: &Path,
    log: Arc<Mutex<TapLog>>,
) -> anyhow::Result<()> {
    let stream = UnixStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to the runtime at {}", upstream.display()))?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("HTTP/2 handshake with the runtime")?;
    let driver = tokio::spawn(connection);
    let service =
        hyper::service::service_fn(move |request| forward(sender.clone(), log.clone(), request));
    // No stream limit of the proxy's own (hyper's default is 200): the
    // kubelet may have more calls in flight, and the runtime sets its limit.
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(None)
        .serve_connection(TokioIo::new(client), service)
        .await;
    driver.abort();
    served.context("serving the kubelet's connection")
}

async fn forward(
    mut sender: SendRequest<TapBody>,
    log: Arc<Mutex<TapLog>>,
    request: Request<Incoming>,
) -> Result<Response<TapBody>, hyper::Error> {
    let path = request.uri().path().to_owned();
    let start = Instant::now();
    let took = |log: &Mutex<TapLog>| {
        log.lock()
            .expect("tap log poisoned")
            .calls
            .entry(path.clone())
            .or_default()
            .push(start.elapsed());
    };
    let Some(method) = TimedMethod::of_path(&path) else {
        let response = sender.send_request(request.map(BodyExt::boxed)).await?;
        took(&log);
        return Ok(response.map(BodyExt::boxed));
    };
    let (parts, body) = request.into_parts();
    let request_bytes = body.collect().await?.to_bytes();
    let upstream_request = Request::from_parts(parts, full(request_bytes.clone()));
    let (parts, body) = sender.send_request(upstream_request).await?.into_parts();
    let collected = body.collect().await?;
    let end = Instant::now();
    took(&log);
    let trailers = collected.trailers().cloned();
    let response_bytes = collected.to_bytes();
    record(&log, method, &request_bytes, &response_bytes, start, end);
    let body = Full::new(response_bytes)
        .map_err(|never| match never {})
        .with_trailers(async move { trailers.map(Ok) })
        .boxed();
    Ok(Response::from_parts(parts, body))
}

fn full(bytes: Bytes) -> TapBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The message of a gRPC frame (uncompressed), or `None` (an empty body:
/// the call failed with a trailers-only response).
fn grpc_message<M: Message + Default>(frame: &[u8]) -> Option<M> {
    let length = u32::from_be_bytes(frame.get(1..5)?.try_into().ok()?) as usize;
    M::decode(frame.get(5..5 + length)?).ok()
}

fn record(
    log: &Mutex<TapLog>,
    method: TimedMethod,
    request: &[u8],
    response: &[u8],
    start: Instant,
    end: Instant,
) {
    let mut log = log.lock().expect("tap log poisoned");
    let pod = match method {
        TimedMethod::RunPodSandbox => {
            let pod = grpc_message::<cri::RunPodSandboxRequest>(request)
                .and_then(|r| r.config?.metadata)
                .map(|m| m.name);
            if let (Some(pod), Some(response)) =
                (&pod, grpc_message::<cri::RunPodSandboxResponse>(response))
            {
                log.sandbox_pod.insert(response.pod_sandbox_id, pod.clone());
            }
            pod
        }
        TimedMethod::CreateContainer => {
            let pod = grpc_message::<cri::CreateContainerRequest>(request)
                .and_then(|r| log.sandbox_pod.get(&r.pod_sandbox_id).cloned());
            if let (Some(pod), Some(response)) =
                (&pod, grpc_message::<cri::CreateContainerResponse>(response))
            {
                log.container_pod.insert(response.container_id, pod.clone());
            }
            pod
        }
        TimedMethod::StartContainer => grpc_message::<cri::StartContainerRequest>(request)
            .and_then(|r| log.container_pod.get(&r.container_id).cloned()),
        TimedMethod::PodSandboxStatus => grpc_message::<cri::PodSandboxStatusRequest>(request)
            .and_then(|r| log.sandbox_pod.get(&r.pod_sandbox_id).cloned()),
        TimedMethod::ContainerStatus => grpc_message::<cri::ContainerStatusRequest>(request)
            .and_then(|r| log.container_pod.get(&r.container_id).cloned()),
    };
    if let Some(pod) = pod {
        log.timed.push(TimedCall {
            method,
            pod,
            start,
            end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn calls_are_attributed_to_their_pod_through_the_ids() {
        let log = Mutex::new(TapLog::default());
        let now = Instant::now();
        let run = cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ran = cri::RunPodSandboxResponse {
            pod_sandbox_id: "s1".into(),
        };
        record(
            &log,
            TimedMethod::RunPodSandbox,
            &frame(&run),
            &frame(&ran),
            now,
            now,
        );
        let create = cri::CreateContainerRequest {
            pod_sandbox_id: "s1".into(),
            ..Default::default()
        };
        let created = cri::CreateContainerResponse {
            container_id: "c1".into(),
        };
        record(
            &log,
            TimedMethod::CreateContainer,
            &frame(&create),
            &frame(&created),
            now,
            now,
        );
        let start = cri::StartContainerRequest {
            container_id: "c1".into(),
        };
        record(
            &log,
            TimedMethod::StartContainer,
            &frame(&start),
            &[],
            now,
            now,
        );
        let status = cri::ContainerStatusRequest {
            container_id: "c1".into(),
            verbose: false,
        };
        record(
            &log,
            TimedMethod::ContainerStatus,
            &frame(&status),
            &[],
            now,
            now,
        );
        // A container of a sandbox the tap never saw is not attributed.
        let stray = cri::StartContainerRequest {
            container_id: "c9".into(),
        };
        record(
            &log,
            TimedMethod::StartContainer,
            &frame(&stray),
            &[],
            now,
            now,
        );
        let log = log.into_inner().unwrap();
        let seen: Vec<(TimedMethod, &str)> = log
            .timed
            .iter()
            .map(|c| (c.method, c.pod.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (TimedMethod::RunPodSandbox, "web"),
                (TimedMethod::CreateContainer, "web"),
                (TimedMethod::StartContainer, "web"),
                (TimedMethod::ContainerStatus, "web"),
            ]
        );
    }
}
