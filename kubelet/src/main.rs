//! The `kubelet` binary: parses flags, sets up logging and runs the library.

use std::process::ExitCode;

use clap::Parser;
use kubelet::ErrorChain;
use kubelet::config::KubeletFlags;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// klog verbosity to a tracing level: 0-2 info, 3-4 debug, 5+ trace.
fn log_filter(verbosity: u8) -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        return filter;
    }
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    // Dependencies stay at info: their debug output drowns the kubelet's.
    EnvFilter::new(format!("info,kubelet={level},cri_shim={level}"))
}

fn main() -> ExitCode {
    // The embedded runtime re-executes this binary for its helper processes
    // when no cri-shim-helper is installed next to it.
    cri_shim::reexec::run_child_role_if_requested();
    cri_shim::tuning::limit_malloc_arenas();

    let flags = KubeletFlags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(flags.verbosity))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = match flags.into_config() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "invalid configuration");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = cri_shim::tuning::raise_thread_priority() {
        tracing::warn!(%error, nice = cri_shim::tuning::DAEMON_NICE, "running at the default CPU priority");
    }
    let runtime = match cri_shim::tuning::daemon_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "starting the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let (mut interrupt, mut terminate) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(error = %error, "installing signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            }
            on_signal.cancel();
        });
        match kubelet::run(config, cancel).await {
            Ok(()) => {
                tracing::info!("kubelet stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(error = %ErrorChain(&error), "kubelet failed");
                ExitCode::FAILURE
            }
        }
    })
}
