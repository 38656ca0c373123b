//! Container probes (upstream `pkg/kubelet/prober`): startup, liveness and
//! readiness, each run by its own task per container instance with the
//! probe's delay, period, timeout and thresholds.
//!
//! - Until a startup probe succeeds, liveness and readiness do not run and
//!   the container is not `started`; `failureThreshold` startup failures
//!   make it unhealthy, as liveness failures do. Unhealthy containers are
//!   killed and restarted by the pod worker.
//! - Readiness starts false and flips after `successThreshold` successes or
//!   `failureThreshold` failures; a container without a readiness probe is
//!   ready once running (and started).
//!
//! Every result change wakes the pod's worker through a channel of pod UIDs.
//! The threshold logic ([`ProbeCounter`]) is pure and unit-tested; probes
//! run through [`ProbeTarget`] (exec through CRI `ExecSync`, HTTP, TCP, gRPC).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::actions::{ContainerState, ObservedPod};
use crate::runtime::{RuntimeManager, RuntimeService, find_container};
use crate::status::ProbeStatus;

/// Upstream defaults of the probe fields.
const DEFAULT_PERIOD: i32 = 10;
const DEFAULT_TIMEOUT: i32 = 1;
const DEFAULT_THRESHOLD_FAILURE: i32 = 3;
const DEFAULT_THRESHOLD_SUCCESS: i32 = 1;
/// An HTTP probe reads at most this much of the answer (upstream `maxRespBodyLength`).
const MAX_HTTP_RESPONSE: usize = 10 * 1024;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

impl ProbeKind {
    fn name(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }

    fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Self::Startup => container.startup_probe.as_ref(),
            Self::Liveness => container.liveness_probe.as_ref(),
            Self::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// Consecutive results against the thresholds: the result only changes after
/// `success_threshold` successes or `failure_threshold` failures in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounter {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    result: bool,
}

impl ProbeCounter {
    /// A counter starting at `initial`.
    pub fn new(success_threshold: u32, failure_threshold: u32, initial: bool) -> Self {
        Self {
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            successes: 0,
            failures: 0,
            result: initial,
        }
    }

    /// Records one probe outcome; returns the new result if it changed.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let flipped = if success && !self.result && self.successes >= self.success_threshold {
            Some(true)
        } else if !success && self.result && self.failures >= self.failure_threshold {
            Some(false)
        } else {
            None
        };
        if let Some(result) = flipped {
            self.result = result;
        }
        flipped
    }

    /// The current result.
    pub fn result(&self) -> bool {
        self.result
    }
}

/// What the prober knows of one container instance.
#[derive(Debug, Clone, Copy)]
struct ContainerResults {
    has_startup: bool,
    has_readiness: bool,
    started: bool,
    ready: bool,
    /// Liveness or startup failed for good.
    unhealthy: bool,
    /// The failed probe's `terminationGracePeriodSeconds`, which replaces
    /// the pod's for the kill that follows.
    kill_grace: Option<i64>,
}

#[derive(Debug, Default)]
struct State {
    /// By container id.
    results: HashMap<String, ContainerResults>,
    /// Probe tasks by container id, with the pod they belong to.
    tasks: HashMap<String, (String, CancellationToken)>,
}

/// Where to send a probe: the container (for exec) and the pod's address.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Container id.
    pub container_id: String,
    /// The pod IP (the host IP for host-network pods).
    pub pod_ip: Option<IpAddr>,
}

/// Runs probes for the containers of every pod and reports their results.
pub struct Prober<R> {
    runtime: Arc<RuntimeManager<R>>,
    state: Mutex<State>,
    wake: mpsc::UnboundedSender<String>,
    cancel: CancellationToken,
}

impl<R> std::fmt::Debug for Prober<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(value.unwrap_or(default).max(0) as u64)
}

impl<R: RuntimeService> Prober<R> {
    /// A prober whose result changes are sent as pod UIDs to `wake`.
    pub fn new(
        runtime: Arc<RuntimeManager<R>>,
        wake: mpsc::UnboundedSender<String>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            state: Mutex::new(State::default()),
            wake,
            cancel,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts probing the running containers of `pod` that have probes and
    /// stops probing instances that no longer run.
    pub fn sync_pod(self: &Arc<Self>, pod: &Pod, observed: &ObservedPod, pod_ip: Option<IpAddr>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let running: Vec<(&str, &Container)> = observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter_map(|c| Some((c.id.as_str(), find_container(pod, &c.name)?)))
            .filter(|(_, spec)| {
                [
                    ProbeKind::Startup,
                    ProbeKind::Liveness,
                    ProbeKind::Readiness,
                ]
                .iter()
                .any(|kind| kind.of(spec).is_some())
            })
            .collect();
        let mut state = self.lock();
        let stale: Vec<String> = state
            .tasks
            .iter()
            .filter(|(id, (owner, _))| {
                *owner == uid && !running.iter().any(|(running_id, _)| running_id == id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((_, token)) = state.tasks.remove(&id) {
                token.cancel();
            }
            state.results.remove(&id);
        }
        for (id, spec) in running {
            if state.tasks.contains_key(id) {
                continue;
            }
            let token = self.cancel.child_token();
            state
                .tasks
                .insert(id.to_owned(), (uid.clone(), token.clone()));
            let has_startup = spec.startup_probe.is_some();
            state.results.insert(
                id.to_owned(),
                ContainerResults {
                    has_startup,
                    has_readiness: spec.readiness_probe.is_some(),
                    started: !has_startup,
                    ready: false,
                    unhealthy: false,
                    kill_grace: None,
                },
            );
            let target = ProbeTarget {
                container_id: id.to_owned(),
                pod_ip,
            };
            for kind in [
                ProbeKind::Startup,
                ProbeKind::Liveness,
                ProbeKind::Readiness,
            ] {
                if let Some(probe) = kind.of(spec) {
                    let worker = ProbeWorker {
                        prober: self.clone(),
                        pod_uid: uid.clone(),
                        container: spec.clone(),
                        probe: probe.clone(),
                        kind,
                        target: target.clone(),
                    };
                    tokio::spawn(worker.run(token.clone()));
                }
            }
        }
    }

    /// Stops probing every container of pod `uid`.
    pub fn remove_pod(&self, uid: &str) {
        let mut state = self.lock();
        let ids: Vec<String> = state
            .tasks
            .iter()
            .filter(|(_, (owner, _))| owner == uid)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some((_, token)) = state.tasks.remove(&id) {
                token.cancel();
            }
            state.results.remove(&id);
        }
    }

    /// Probe results of the containers of `observed` that have probes.
    pub fn statuses(&self, observed: &ObservedPod) -> HashMap<String, ProbeStatus> {
        let state = self.lock();
        observed
            .containers
            .iter()
            .filter_map(|c| {
                let r = state.results.get(&c.id)?;
                Some((
                    c.id.clone(),
                    ProbeStatus {
                        ready: if r.has_readiness { r.ready } else { true },
                        started: r.started || !r.has_startup,
                    },
                ))
            })
            .collect()
    }

    /// Ids of containers of `observed` whose liveness or startup probe failed.
    pub fn unhealthy(&self, observed: &ObservedPod) -> HashMap<String, Option<i64>> {
        let state = self.lock();
        observed
            .containers
            .iter()
            .filter_map(|c| {
                let r = state.results.get(&c.id).filter(|r| r.unhealthy)?;
                Some((c.id.clone(), r.kill_grace))
            })
            .collect()
    }

    /// Applies a result change of `probe` and wakes the pod's worker.
    fn update(
        &self,
        pod_uid: &str,
        container_id: &str,
        kind: ProbeKind,
        probe: &Probe,
        result: bool,
    ) {
        {
            let mut state = self.lock();
            let Some(r) = state.results.get_mut(container_id) else {
                return;
            };
            match kind {
                ProbeKind::Startup if result => r.started = true,
                ProbeKind::Startup | ProbeKind::Liveness => {
                    if !result && !r.unhealthy {
                        r.unhealthy = true;
                        r.kill_grace = probe.termination_grace_period_seconds;
                    }
                }
                ProbeKind::Readiness => r.ready = result,
            }
        }
        // The receiver lives as long as the pod workers.
        let _ = self.wake.send(pod_uid.to_owned());
    }

    fn is_started(&self, container_id: &str) -> bool {
        self.lock()
            .results
            .get(container_id)
            .is_some_and(|r| r.started)
    }
}

/// One probe of one container instance.
struct ProbeWorker<R> {
    prober: Arc<Prober<R>>,
    pod_uid: String,
    container: Container,
    probe: Probe,
    kind: ProbeKind,
    target: ProbeTarget,
}

impl<R: RuntimeService> ProbeWorker<R> {
    async fn run(self, cancel: CancellationToken) {
        let probe = &self.probe;
        let period = seconds(probe.period_seconds, DEFAULT_PERIOD).max(Duration::from_secs(1));
        let timeout = seconds(probe.timeout_seconds, DEFAULT_TIMEOUT).max(Duration::from_secs(1));
        let success_threshold = probe
            .success_threshold
            .unwrap_or(DEFAULT_THRESHOLD_SUCCESS)
            .max(1) as u32;
        let failure_threshold = probe
            .failure_threshold
            .unwrap_or(DEFAULT_THRESHOLD_FAILURE)
            .max(1) as u32;
        // Liveness starts healthy; readiness and startup start unconfirmed.
        let initial = self.kind == ProbeKind::Liveness;
        let mut counter = ProbeCounter::new(success_threshold, failure_threshold, initial);
        let initial_delay = seconds(probe.initial_delay_seconds, 0);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(initial_delay) => {}
        }
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.kind != ProbeKind::Startup && !self.prober.is_started(&self.target.container_id)
            {
                continue;
            }
            let outcome = run_probe(
                &self.prober.runtime,
                &self.container,
                probe,
                &self.target,
                timeout,
            )
            .await;
            if let Err(reason) = &outcome {
                tracing::info!(
                    pod.uid = self.pod_uid,
                    container.name = self.container.name,
                    container.id = self.target.container_id,
                    event = "Unhealthy",
                    "{} probe failed: {reason}",
                    self.kind.name()
                );
            }
            if let Some(result) = counter.record(outcome.is_ok()) {
                self.prober.update(
                    &self.pod_uid,
                    &self.target.container_id,
                    self.kind,
                    probe,
                    result,
                );
                let done = match self.kind {
                    // Started for good, or failed for good: the container is killed.
                    ProbeKind::Startup => true,
                    ProbeKind::Liveness => !result,
                    ProbeKind::Readiness => false,
                };
                if done {
                    return;
                }
            }
        }
    }
}

/// Runs one probe; `Err` carries the failure's description.
async fn run_probe<R: RuntimeService>(
    runtime: &RuntimeManager<R>,
    container: &Container,
    probe: &Probe,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return exec_command(runtime.service(), &target.container_id, command, timeout).await;
    }
    let address = |host: Option<&String>, port: &IntOrString| -> Result<(String, u16), String> {
        let port = resolve_port(container, port)?;
        let host = match host.filter(|h| !h.is_empty()) {
            Some(host) => host.clone(),
            None => target
                .pod_ip
                .map(|ip| ip.to_string())
                .ok_or_else(|| "the pod has no IP yet".to_owned())?,
        };
        Ok((host, port))
    };
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let (host, port) = address(http.host.as_ref(), &http.port)?;
            let headers: Vec<(String, String)> = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            http_probe(&HttpGet {
                scheme: Scheme::parse(http.scheme.as_deref())?,
                host: &host,
                port,
                path: http.path.as_deref().unwrap_or("/"),
                headers: &headers,
            })
            .await
        } else if let Some(tcp) = &probe.tcp_socket {
            let (host, port) = address(tcp.host.as_ref(), &tcp.port)?;
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        } else if let Some(grpc) = &probe.grpc {
            let (host, _) = address(None, &IntOrString::Int(grpc.port))?;
            grpc_probe(&host, grpc.port, grpc.service.clone().unwrap_or_default()).await
        } else {
            Err("the probe has no handler".to_owned())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {}s", timeout.as_secs())),
    }
}

/// Runs `command` in the container through `ExecSync`; success is exit code 0.
pub(crate) async fn exec_command<R: RuntimeService>(
    service: &R,
    container_id: &str,
    command: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    let response = service
        .exec_sync(container_id, command, timeout)
        .await
        .map_err(|e| crate::ErrorChain(&e).to_string())?;
    if response.exit_code == 0 {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&response.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&response.stderr));
    Err(format!(
        "command exited with {}: {}",
        response.exit_code,
        output.trim()
    ))
}

/// A port by number or by the name of one of the container's ports.
pub(crate) fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("no port named {name:?} in container {}", container.name))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port {number}"))
}

/// `httpGet.scheme`: `HTTP` (the default) or `HTTPS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    /// TLS without certificate verification, as upstream probes and hooks.
    Https,
}

impl Scheme {
    /// The scheme of an `httpGet` handler.
    pub(crate) fn parse(scheme: Option<&str>) -> Result<Self, String> {
        match scheme.unwrap_or("HTTP") {
            s if s.eq_ignore_ascii_case("HTTP") => Ok(Self::Http),
            s if s.eq_ignore_ascii_case("HTTPS") => Ok(Self::Https),
            other => Err(format!("unsupported scheme {other:?}")),
        }
    }

    fn as_url(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// An `httpGet` request: `GET path` on `host:port`.
pub(crate) struct HttpGet<'a> {
    pub scheme: Scheme,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
}

/// `GET path` with the upstream user agent; 200-399 is success.
pub(crate) async fn http_probe(get: &HttpGet<'_>) -> Result<(), String> {
    let HttpGet {
        scheme,
        host,
        port,
        path,
        ..
    } = *get;
    let url = format!("{}://{host}:{port}{path}", scheme.as_url());
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    match scheme {
        Scheme::Http => http_exchange(stream, get).await,
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("Get \"{url}\": invalid host: {e}"))?;
            let stream = tls_connector()?
                .connect(name, stream)
                .await
                .map_err(|e| format!("Get \"{url}\": TLS handshake: {e}"))?;
            http_exchange(stream, get).await
        }
    }
}

/// One request and the status line of its answer.
async fn http_exchange<S>(mut stream: S, get: &HttpGet<'_>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let HttpGet {
        host,
        port,
        path,
        headers,
        ..
    } = *get;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("Host") {
        request.push_str(&format!("Host: {host_header}\r\n"));
    }
    if !has("User-Agent") {
        request.push_str("User-Agent: kube-probe/1.35\r\n");
    }
    if !has("Accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < MAX_HTTP_RESPONSE {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    let status_line = String::from_utf8_lossy(&answer);
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "malformed HTTP answer".to_owned())?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// A TLS client that takes any server certificate (upstream probes set
/// `InsecureSkipVerify`), but still checks the handshake signatures.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONNECTOR: std::sync::OnceLock<Result<tokio_rustls::TlsConnector, String>> =
        std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS configuration: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        })
        .clone()
}

/// Accepts every certificate chain; signatures are verified as usual.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The gRPC health checking protocol: `grpc.health.v1.Health/Check` must
/// answer `SERVING`.
async fn grpc_probe(host: &str, port: i32, service: String) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let uri = if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    };
    let channel = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("invalid address {uri}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {uri}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
        .map_err(|status| format!("health rpc failed: {}", status.message()))?;
    let status = response.into_inner().status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with {:?})",
            ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_flips_after_the_thresholds() {
        let mut counter = ProbeCounter::new(2, 3, false);
        assert_eq!(counter.record(true), None);
        assert_eq!(counter.record(true), Some(true));
        assert_eq!(counter.record(false), None);
        assert_eq!(counter.record(true), None);
        assert_eq!(counter.record(false), None);
        assert_eq!(counter.record(false), None);
        assert_eq!(counter.record(false), Some(false));
        assert!(!counter.result());
    }

    #[test]
    fn liveness_starts_healthy_and_fails_after_the_threshold() {
        let mut counter = ProbeCounter::new(1, 2, true);
        assert_eq!(counter.record(true), None);
        assert_eq!(counter.record(false), None);
        assert_eq!(counter.record(false), Some(false));
    }

    #[test]
    fn ports_resolve_by_number_and_name() {
        let container: Container =
            serde_yaml::from_str("{name: c, ports: [{name: http, containerPort: 8080}]}").unwrap();
        assert_eq!(resolve_port(&container, &IntOrString::Int(80)), Ok(80));
        assert_eq!(
            resolve_port(&container, &IntOrString::String("http".into())),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&container, &IntOrString::String("9090".into())),
            Ok(9090)
        );
        assert!(resolve_port(&container, &IntOrString::String("grpc".into())).is_err());
        assert!(resolve_port(&container, &IntOrString::Int(0)).is_err());
    }

    /// A self-signed certificate and its key (DER), made by `openssl`.
    fn self_signed() -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("running openssl (scripts/install-deps.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=probe.invalid",
        ]);
        run(&[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ]);
        run(&[
            "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
        ]);
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        (read("cert.der"), read("key.der"))
    }

    #[tokio::test]
    async fn https_probe_takes_any_certificate_and_http_does_not_speak_tls() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio::net::TcpListener;
        let (cert, key) = self_signed();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for status in [204, 503] {
                let (socket, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(socket).await.unwrap();
                let mut request = vec![0u8; 4096];
                let n = tls.read(&mut request).await.unwrap();
                requests.push(String::from_utf8_lossy(&request[..n]).into_owned());
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                tls.write_all(answer.as_bytes()).await.unwrap();
                tls.shutdown().await.unwrap();
            }
            // A plain HTTP request to a TLS port gets no HTTP answer.
            let (socket, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(socket).await;
            requests
        });
        let get = |path| HttpGet {
            scheme: Scheme::Https,
            host: "127.0.0.1",
            port,
            path,
            headers: &[],
        };
        assert_eq!(http_probe(&get("/ready")).await, Ok(()));
        assert_eq!(
            http_probe(&get("/live")).await,
            Err("HTTP probe failed with statuscode: 503".to_owned())
        );
        let plain = http_probe(&HttpGet {
            scheme: Scheme::Http,
            ..get("/")
        })
        .await;
        assert!(plain.is_err(), "{plain:?}");
        let requests = server.await.unwrap();
        assert!(
            requests[0].starts_with("GET /ready HTTP/1.1\r\n"),
            "{requests:?}"
        );
        assert!(
            requests[1].starts_with("GET /live HTTP/1.1\r\n"),
            "{requests:?}"
        );
    }

    #[test]
    fn schemes_are_http_or_https_in_any_case() {
        assert_eq!(Scheme::parse(None), Ok(Scheme::Http));
        assert_eq!(Scheme::parse(Some("https")), Ok(Scheme::Https));
        assert_eq!(Scheme::parse(Some("HTTPS")), Ok(Scheme::Https));
        assert!(Scheme::parse(Some("ftp")).is_err());
    }

    #[tokio::test]
    async fn http_probe_accepts_2xx_and_3xx_only() {
        use tokio::net::TcpListener;
        for (status, ok) in [(200, true), (302, true), (404, false), (500, false)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.unwrap();
                let request = String::from_utf8_lossy(&request[..n]).into_owned();
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                socket.write_all(answer.as_bytes()).await.unwrap();
                request
            });
            let headers = vec![("X-Probe".to_owned(), "yes".to_owned())];
            let result = http_probe(&HttpGet {
                scheme: Scheme::Http,
                host: "127.0.0.1",
                port,
                path: "/healthz",
                headers: &headers,
            })
            .await;
            assert_eq!(result.is_ok(), ok, "{status}: {result:?}");
            let request = server.await.unwrap();
            assert!(
                request.starts_with("GET /healthz HTTP/1.1\r\n"),
                "{request}"
            );
            assert!(request.contains("User-Agent: kube-probe/"), "{request}");
            assert!(request.contains("X-Probe: yes\r\n"), "{request}");
        }
    }
}
