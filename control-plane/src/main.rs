//! The `control-plane` binary.

use clap::Parser;
use control_plane::cli::Cli;
use control_plane::ControlPlane;
use gateway_common::process::{init_logging_and_tracing, LogTarget};
use std::process::ExitCode;

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let control_plane = ControlPlane::start(cli.settings()).await?;
    let handle = control_plane.shutdown_handle();
    let stopped = control_plane.wait();
    tokio::pin!(stopped);
    tokio::select! {
        result = &mut stopped => return result,
        _ = terminated() => tracing::info!("signal received: shutting down"),
    }
    handle.shutdown();
    stopped.await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line: clap's own message without its usage hints.
            let text = e.to_string();
            let reason = text.lines().next().unwrap_or_default();
            eprintln!(
                "control-plane: {} (see --help)",
                reason.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let telemetry = match init_logging_and_tracing(
        &cli.log_level,
        cli.log_format,
        LogTarget::Stdout,
        "control-plane",
    ) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("control-plane: {e:#}");
            return ExitCode::from(2);
        }
    };
    let ran = run(cli).await;
    telemetry.shutdown().await;
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control-plane: {e:#}");
            ExitCode::FAILURE
        }
    }
}
