//! `gwctl register ... [--keepalive]` and `gwctl deregister ID`.

use super::context::{emit, Context};
use crate::cli::{DeregisterArgs, RegisterArgs};
use crate::client::{Api, CallError, ControlPlane};
use crate::output::{human_duration, structured, Format};
use crate::signal::shutdown_signal;
use gateway_common::registration::{validate_registration, MAX_LEASE_TTL, MIN_LEASE_TTL};
use gateway_proto::v1 as pb;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Shortest pause between two attempts to register again.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest pause between two attempts to register again.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Time allowed to deregister on the way out.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize)]
struct RegisteredView {
    instance_id: String,
    lease_id: String,
    lease_ttl_seconds: u32,
    version: u64,
}

/// Registers the instance; with `--keepalive`, keeps its lease until a signal.
pub async fn run(ctx: &Context, args: RegisterArgs) -> anyhow::Result<()> {
    let keepalive = args.keepalive;
    let mut request = build_request(args)?;
    let cp = ctx.connect().await?;
    let answer = register(&cp, &request).await?;
    let view = RegisteredView {
        instance_id: answer.instance_id.clone(),
        lease_id: answer.lease_id.clone(),
        lease_ttl_seconds: answer.lease_ttl_seconds,
        version: answer.version,
    };
    match ctx.format {
        Format::Table => emit(&format!(
            "registered {} (service {} at {}), lease {} ttl {}, version {}\n",
            view.instance_id,
            request.service,
            authority(&request),
            view.lease_id,
            human_duration(Duration::from_secs(u64::from(view.lease_ttl_seconds))),
            view.version
        ))?,
        format => emit(&structured(format, &view)?)?,
    }
    if !keepalive {
        return Ok(());
    }
    // Re-registrations must keep the id the control plane chose.
    request.instance_id = answer.instance_id.clone();
    keep_alive(&cp, &request, answer).await
}

/// Checks the flags with the control plane's own rules and builds the request.
fn build_request(args: RegisterArgs) -> anyhow::Result<pb::RegisterRequest> {
    if args.ttl < MIN_LEASE_TTL || args.ttl > MAX_LEASE_TTL || args.ttl.subsec_nanos() != 0 {
        anyhow::bail!(
            "--ttl must be whole seconds between 1s and 1h, got {}",
            human_duration(args.ttl)
        );
    }
    let request = pb::RegisterRequest {
        service: args.service,
        instance_id: args.id.unwrap_or_default(),
        address: args.address.host,
        port: u32::from(args.address.port),
        health_path: args.health_path.unwrap_or_default(),
        weight: args.weight.unwrap_or(0),
        zone: args.zone.unwrap_or_default(),
        metadata: args.metadata.into_iter().collect(),
        lease_ttl_seconds: args.ttl.as_secs() as u32,
        scheme: String::new(),
    };
    if args.weight == Some(0) {
        anyhow::bail!("invalid registration: weight: must be between 1 and 1000");
    }
    validate_registration(&request)
        .map_err(|errors| anyhow::anyhow!("invalid registration: {}", errors.join("; ")))?;
    Ok(request)
}

fn authority(request: &pb::RegisterRequest) -> String {
    if request.address.contains(':') {
        format!("[{}]:{}", request.address, request.port)
    } else {
        format!("{}:{}", request.address, request.port)
    }
}

async fn register(
    cp: &ControlPlane,
    request: &pb::RegisterRequest,
) -> Result<pb::RegisterResponse, CallError> {
    cp.registry()
        .register(request.clone())
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| cp.explain(Api::Registry, s))
}

/// Why a keep-alive session ended.
enum SessionEnd {
    /// The control plane no longer knows the lease.
    LeaseLost,
    /// The stream broke; `fatal` when retrying cannot help.
    Failed { reason: String, fatal: bool },
}

/// Renews the lease until a signal, then deregisters.
async fn keep_alive(
    cp: &ControlPlane,
    request: &pb::RegisterRequest,
    first: pb::RegisterResponse,
) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(u64::from(first.lease_ttl_seconds.max(1)));
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut lease = first.lease_id;
    eprintln!(
        "keeping lease {lease} alive every {} (Ctrl-C to deregister and exit)",
        human_duration(period)
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let end = tokio::select! {
            end = session(cp, &lease, ttl, period) => end,
            () = &mut shutdown => break,
        };
        match end {
            SessionEnd::LeaseLost => eprintln!("lease {lease} was lost; registering again"),
            SessionEnd::Failed {
                reason,
                fatal: true,
            } => anyhow::bail!("keepalive: {reason}"),
            SessionEnd::Failed { reason, .. } => {
                eprintln!("keepalive interrupted ({reason}); registering again")
            }
        }
        let renewed = tokio::select! {
            answer = register_until_ok(cp, request) => answer?,
            () = &mut shutdown => break,
        };
        lease = renewed.lease_id;
        eprintln!("registered {} again, lease {lease}", renewed.instance_id);
    }
    deregister_on_exit(cp, &request.instance_id).await
}

/// One KeepAlive stream: sends the lease every `period` until it breaks.
async fn session(cp: &ControlPlane, lease: &str, ttl: Duration, period: Duration) -> SessionEnd {
    let (tx, rx) = mpsc::channel(4);
    let keepalive = pb::KeepAliveRequest {
        lease_id: lease.to_string(),
    };
    if tx.send(keepalive.clone()).await.is_err() {
        return failed("the request stream closed", false);
    }
    let mut answers = match cp.registry().keep_alive(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return failed_status(cp, status),
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last_answer = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_answer.elapsed() > ttl {
                    return failed("no answer within the lease TTL", false);
                }
                if tx.send(keepalive.clone()).await.is_err() {
                    return failed("the request stream closed", false);
                }
            }
            answer = answers.message() => match answer {
                Ok(Some(answer)) if !answer.found => return SessionEnd::LeaseLost,
                Ok(Some(_)) => last_answer = Instant::now(),
                Ok(None) => return failed("the control plane closed the stream", false),
                Err(status) => return failed_status(cp, status),
            },
        }
    }
}

fn failed(reason: &str, fatal: bool) -> SessionEnd {
    SessionEnd::Failed {
        reason: reason.to_string(),
        fatal,
    }
}

fn failed_status(cp: &ControlPlane, status: tonic::Status) -> SessionEnd {
    let fatal = !retryable(status.code());
    SessionEnd::Failed {
        reason: cp.explain(Api::Registry, status).to_string(),
        fatal,
    }
}

/// Codes worth retrying: the control plane (or its store) is away or overloaded.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Registers again with growing pauses until it works or fails for good.
async fn register_until_ok(
    cp: &ControlPlane,
    request: &pb::RegisterRequest,
) -> anyhow::Result<pb::RegisterResponse> {
    let mut pause = RETRY_MIN;
    loop {
        match cp.registry().register(request.clone()).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status) if retryable(status.code()) => {
                eprintln!(
                    "cannot register yet ({}); retrying in {}",
                    cp.explain(Api::Registry, status),
                    human_duration(pause)
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(status) => return Err(cp.explain(Api::Registry, status).into()),
        }
    }
}

async fn deregister_on_exit(cp: &ControlPlane, id: &str) -> anyhow::Result<()> {
    let mut registry = cp.registry();
    let call = registry.deregister(pb::DeregisterRequest {
        instance_id: id.to_string(),
    });
    match tokio::time::timeout(DEREGISTER_TIMEOUT, call).await {
        Ok(Ok(_)) => emit(&format!("deregistered {id}\n")),
        Ok(Err(status)) => Err(anyhow::anyhow!(
            "could not deregister {id} on exit: {}",
            cp.explain(Api::Registry, status)
        )),
        Err(_) => anyhow::bail!(
            "could not deregister {id} on exit: no answer within {}",
            human_duration(DEREGISTER_TIMEOUT)
        ),
    }
}

#[derive(Serialize)]
struct DeregisteredView {
    instance_id: String,
    removed: bool,
    version: u64,
}

/// `gwctl deregister ID`.
pub async fn deregister(ctx: &Context, args: DeregisterArgs) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let answer = cp
        .registry()
        .deregister(pb::DeregisterRequest {
            instance_id: args.id.clone(),
        })
        .await
        .map_err(|s| cp.explain(Api::Registry, s))?
        .into_inner();
    let view = DeregisteredView {
        instance_id: args.id,
        removed: answer.removed,
        version: answer.version,
    };
    match ctx.format {
        Format::Table if view.removed => emit(&format!(
            "deregistered {} (version {})\n",
            view.instance_id, view.version
        )),
        Format::Table => emit(&format!(
            "{} was not registered (nothing to do)\n",
            view.instance_id
        )),
        format => emit(&structured(format, &view)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::HostPort;

    fn args() -> RegisterArgs {
        RegisterArgs {
            service: "echo".into(),
            address: HostPort {
                host: "127.0.0.1".into(),
                port: 8081,
            },
            id: None,
            ttl: Duration::from_secs(30),
            health_path: None,
            weight: None,
            zone: None,
            metadata: vec![("v".into(), "1".into())],
            keepalive: false,
        }
    }

    #[test]
    fn builds_a_valid_request() {
        let request = build_request(args()).unwrap();
        assert_eq!(request.lease_ttl_seconds, 30);
        assert_eq!(request.port, 8081);
        assert_eq!(request.metadata.get("v").map(String::as_str), Some("1"));
    }

    #[test]
    fn refuses_what_the_control_plane_would_refuse() {
        let mut a = args();
        a.ttl = Duration::from_millis(1500);
        assert!(build_request(a).unwrap_err().to_string().contains("--ttl"));
        let mut a = args();
        a.service = "Bad Name".into();
        assert!(build_request(a)
            .unwrap_err()
            .to_string()
            .contains("service:"));
        let mut a = args();
        a.weight = Some(0);
        assert!(build_request(a).unwrap_err().to_string().contains("weight"));
        let mut a = args();
        a.health_path = Some("no-slash".into());
        assert!(build_request(a)
            .unwrap_err()
            .to_string()
            .contains("health_path"));
    }
}
