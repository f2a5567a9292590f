//! `data-plane`: the gateway's data plane process.

use clap::Parser;
use data_plane::cli::Cli;
use data_plane::{settings, shutdown, DataPlane, Settings};
use gateway_common::process::{init_logging_and_tracing, LogTarget};
use std::process::ExitCode;

mod allocator;

/// mimalloc's per-thread free lists serve the proxy's many short-lived
/// allocations (header maps, buffers, futures) faster than the system
/// allocator.
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first}");
            return ExitCode::from(2);
        }
    };
    // After a snapshot, what decoding and applying it allocated for a moment
    // goes back to the OS now rather than after mimalloc's purge delay.
    data_plane::runtime::set_memory_release(|| {
        // SAFETY: mi_collect only walks mimalloc's own heaps; it has no
        // preconditions.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    let runtime = match build_runtime(cli.worker_threads.map(usize::from)) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's gRPC channel runs on this runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        init_logging_and_tracing(
            &cli.log_level,
            cli.log_format,
            LogTarget::Stdout,
            "data-plane",
        )
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = match cli.into_settings(settings::service_urls_from_env()) {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!(error = %e, "refusing to start");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ran = runtime.block_on(async {
        let ran = run(settings).await;
        telemetry.shutdown().await;
        ran
    });
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "data plane failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One worker (one usable CPU, e.g. under `taskset`) runs the cheaper
/// single-threaded scheduler; more use the work-stealing one.
fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let plane = DataPlane::start(settings).await?;
    let handle = plane.shutdown_handle();
    tokio::spawn(async move {
        shutdown::signal().await;
        handle.trigger();
    });
    plane.wait().await
}
