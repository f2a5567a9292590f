//! Command line of the `control-plane` binary: every flag also reads the
//! environment variable named in its help.

use crate::settings::{default_replica_id, Settings};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use gateway_common::process::LogFormat;

/// Control plane of the gateway: stores config and instance registrations,
/// runs health checks and lease expiry, and streams versioned config to the
/// data planes.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version)]
pub struct Cli {
    /// Address of the gRPC server (Registry, Admin, Discovery, grpc.health.v1, reflection).
    #[arg(long, env = "CP_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (/health/live, /health/ready, /metrics).
    #[arg(long, env = "CP_HTTP_ADDR", default_value = "0.0.0.0:9091")]
    pub http_addr: SocketAddr,

    /// Redis URL (redis://[:PASSWORD@]HOST:PORT[/DB], or rediss://... for
    /// TLS). Unset: an in-memory store, not durable, for a single replica.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// TLS files of a rediss:// Redis.
    #[command(flatten)]
    pub redis_tls: gateway_common::redis_client::RedisTlsArgs,

    /// PEM certificate chain of the gRPC port; set (with --tls-key), the
    /// whole port (Registry, Admin, Discovery, health, reflection) speaks TLS.
    #[arg(long, env = "CP_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CP_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates of client certificates: set, every gRPC client
    /// (data planes, gwctl) must present a certificate signed by one, on top
    /// of its bearer token. Needs --tls-cert.
    #[arg(long, env = "CP_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Bearer token required on Admin calls (gwctl).
    #[arg(long, env = "GW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Bearer token required on Registry calls (backends).
    #[arg(long, env = "GW_REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,

    /// Bearer token required on Discovery streams (data planes); unset: none required.
    #[arg(long, env = "GW_DATAPLANE_TOKEN", hide_env_values = true)]
    pub dataplane_token: Option<String>,

    /// Start even when GW_ADMIN_TOKEN or GW_REGISTRATION_TOKEN is unset,
    /// leaving those calls open to anyone who reaches the port.
    #[arg(long, env = "CP_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Id of this replica, shown in topology and used for the leader lock
    /// [default: HOSTNAME-PID].
    #[arg(long, env = "CP_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Lifetime of the leader lock (renewed every third of it); another
    /// replica takes over within this time when the leader dies.
    #[arg(long, env = "CP_LEADER_TTL", default_value = "10s", value_parser = gateway_common::duration::parse)]
    pub leader_ttl: Duration,

    /// How often the leader removes instances whose lease lapsed.
    #[arg(long, env = "CP_LEASE_SWEEP_INTERVAL", default_value = "250ms", value_parser = gateway_common::duration::parse)]
    pub lease_sweep_interval: Duration,

    /// Recent deltas kept in memory: a data plane that reconnects at most
    /// this many versions behind is sent one merged delta, else a snapshot.
    #[arg(long, env = "CP_DELTA_RING", default_value_t = crate::view::RING_CAPACITY)]
    pub delta_ring: usize,

    /// Prefix of every Redis key, to share one Redis between gateways.
    #[arg(long, env = "CP_KEY_PREFIX", default_value = "gw:")]
    pub key_prefix: String,

    /// Log filter: error, warn, info, debug, trace, or a tracing filter
    /// such as `info,control_plane=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Cli {
    /// The settings the flags describe.
    pub fn settings(&self) -> Settings {
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Settings {
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            redis_url: non_empty(&self.redis_url),
            redis_tls: self.redis_tls.settings(),
            tls_cert: non_empty_path(&self.tls_cert),
            tls_key: non_empty_path(&self.tls_key),
            tls_client_ca: non_empty_path(&self.tls_client_ca),
            admin_token: non_empty(&self.admin_token),
            registration_token: non_empty(&self.registration_token),
            dataplane_token: non_empty(&self.dataplane_token),
            allow_unauthenticated: self.allow_unauthenticated,
            replica_id: non_empty(&self.replica_id).unwrap_or_else(default_replica_id),
            key_prefix: self.key_prefix.clone(),
            leader_ttl: self.leader_ttl,
            lease_sweep_interval: self.lease_sweep_interval,
            delta_ring: self.delta_ring,
        }
    }
}

/// A path setting, treating an empty value as unset.
fn non_empty_path(value: &Option<PathBuf>) -> Option<PathBuf> {
    value.clone().filter(|p| !p.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let cli = Cli::try_parse_from(["control-plane"]).unwrap();
        let s = cli.settings();
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(s.http_addr.to_string(), "0.0.0.0:9091");
        assert_eq!(s.leader_ttl, Duration::from_secs(10));
        assert_eq!(s.lease_sweep_interval, Duration::from_millis(250));
        assert_eq!(s.key_prefix, "gw:");
        assert_eq!(s.delta_ring, 10_000);
    }

    #[test]
    fn flags_parse_durations_and_addresses() {
        let cli = Cli::try_parse_from([
            "control-plane",
            "--leader-ttl",
            "3s",
            "--lease-sweep-interval",
            "100ms",
            "--grpc-addr",
            "127.0.0.1:0",
            "--replica-id",
            "r1",
            "--admin-token",
            "",
            "--delta-ring",
            "50",
        ])
        .unwrap();
        let s = cli.settings();
        assert_eq!(s.leader_ttl, Duration::from_secs(3));
        assert_eq!(s.lease_sweep_interval, Duration::from_millis(100));
        assert_eq!(s.replica_id, "r1");
        assert_eq!(s.admin_token, None, "empty means unset");
        assert_eq!(s.delta_ring, 50);
        assert_eq!(s.tls_cert, None);
        let tls = Cli::try_parse_from([
            "control-plane",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--redis-ca-file",
            "/ca.pem",
        ])
        .unwrap()
        .settings();
        assert_eq!(tls.tls_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.tls_key, Some(PathBuf::from("/k.pem")));
        assert_eq!(tls.tls_client_ca, None);
        assert_eq!(tls.redis_tls.ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(Cli::try_parse_from(["control-plane", "--leader-ttl", "soon"]).is_err());
    }
}
