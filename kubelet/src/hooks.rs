//! Container lifecycle hooks (upstream `pkg/kubelet/lifecycle`): `postStart`
//! right after a container starts, `preStop` before it is stopped, each an
//! exec command (through CRI `ExecSync`), an HTTP GET against the pod or a
//! sleep. The preStop time counts against the grace period.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::prober::{HttpGet, Scheme, exec_command, http_probe, resolve_port};
use crate::runtime::RuntimeService;

/// The preStop handler to record on a container: named ports resolved, so
/// it can run from the record alone. `None` without a preStop hook.
pub fn recorded_pre_stop(container: &Container) -> Option<String> {
    let mut handler = container.lifecycle.as_ref()?.pre_stop.clone()?;
    if let Some(http) = handler.http_get.as_mut()
        && let Ok(port) = resolve_port(container, &http.port)
    {
        http.port = IntOrString::Int(i32::from(port));
    }
    serde_json::to_string(&handler).ok()
}

/// Runs `handler` for the container `container_id`, giving up after
/// `timeout`; `Err` describes the failure. `container` resolves named ports.
pub async fn run_handler<R: RuntimeService>(
    service: &R,
    handler: &LifecycleHandler,
    container_id: &str,
    container: Option<&Container>,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        return exec_command(service, container_id, command, timeout).await;
    }
    let attempt = async {
        if let Some(sleep) = &handler.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
            Ok(())
        } else if let Some(http) = &handler.http_get {
            let port = match (&http.port, container) {
                (IntOrString::Int(n), _) => {
                    u16::try_from(*n).map_err(|_| format!("invalid port {n}"))?
                }
                (port, Some(container)) => resolve_port(container, port)?,
                (IntOrString::String(name), None) => {
                    return Err(format!("cannot resolve the named port {name:?}"));
                }
            };
            let scheme = Scheme::parse(http.scheme.as_deref())?;
            let host = match http.host.as_ref().filter(|h| !h.is_empty()) {
                Some(host) => host.clone(),
                None => pod_ip
                    .map(|ip| ip.to_string())
                    .ok_or_else(|| "the pod has no IP".to_owned())?,
            };
            let headers: Vec<(String, String)> = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            http_probe(&HttpGet {
                scheme,
                host: &host,
                port,
                path: http.path.as_deref().unwrap_or("/"),
                headers: &headers,
            })
            .await
        } else {
            Err("the handler has no action (tcpSocket is not supported for hooks)".to_owned())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        // A sleep that outlasts the grace period simply ends with it.
        Err(_) if handler.sleep.is_some() => Ok(()),
        Err(_) => Err(format!("timed out after {}s", timeout.as_secs())),
    }
}
