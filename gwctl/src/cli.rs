//! Command-line surface of gwctl: global flags, verbs and their flags.

use crate::output::Format;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// gwctl: the operator CLI of the gateway.
///
/// Admin calls (apply, get, drain, undrain, topology, breaker) send
/// `authorization: Bearer $GW_ADMIN_TOKEN`; Registry calls (register,
/// deregister, keepalive) send `authorization: Bearer $GW_REGISTRATION_TOKEN`.
/// An https:// control plane is always reached over TLS (the platform's
/// roots plus --ca-file); a failed handshake is an error, never plaintext.
/// Exit code 0 on success; on failure a single `error: <reason>` line on
/// stderr and a non-zero exit code.
#[derive(Debug, Parser)]
#[command(name = "gwctl", version, propagate_version = true)]
pub struct Cli {
    /// URL of the control plane's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "GW_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub control_plane: String,

    /// PEM CA certificates trusted for an https:// control plane, besides the platform's roots.
    #[arg(long, global = true, env = "GW_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate chain presented to an https:// control plane that requires one (mTLS).
    #[arg(long, global = true, env = "GW_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "GW_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,

    /// Output format of get, topology and breaker verbs (and of other verbs' results).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a declarative config file and make it the current config (all or nothing).
    Apply(ApplyArgs),
    /// List services, routes, instances or data planes.
    Get(GetArgs),
    /// Register an instance of a service (optionally keeping its lease alive in the foreground).
    Register(RegisterArgs),
    /// Remove a registered instance and its lease.
    Deregister(DeregisterArgs),
    /// Stop sending new requests to an instance on every data plane.
    Drain(DrainArgs),
    /// Let an instance take new requests again after a drain.
    Undrain(UndrainArgs),
    /// Show services with their instances and the connected data planes.
    Topology(TopologyArgs),
    /// Show or change the circuit-breaker policy of a service.
    Breaker(BreakerArgs),
    /// Invalidate the shared response cache or show its statistics (needs a control plane with Redis).
    Cache(CacheArgs),
    /// Create, list and revoke API keys of partner routes (needs a control plane with Redis).
    Apikey(ApiKeyArgs),
    /// Development access tokens.
    Token(TokenArgs),
    /// Run a whole gateway in this process: control plane, echo upstream and one data plane.
    Dev(DevArgs),
    /// Show what `apply -f FILE` would change, as a unified diff against the control plane's
    /// config (exit code 0: no difference, 1: differences, 2: an error).
    Diff(DiffArgs),
    /// Print a shell completion script (e.g. `source <(gwctl completion bash)`).
    Completion(CompletionArgs),
}

/// Flags of `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The config document (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
}

/// Flags of `completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The config document (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Validate on the control plane and show the changes without writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Flags of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum)]
    pub kind: GetKind,
    /// Only instances of this service (for `get instances`).
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// The config a data plane holds: the version it last acknowledged, as
    /// the control plane sent it (for `get config`).
    #[arg(long, value_name = "NODE")]
    pub data_plane: Option<String>,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetKind {
    /// Services of the current config.
    Services,
    /// Routes of the current config.
    Routes,
    /// Instances (static and registered) with state, lease and last health check.
    Instances,
    /// Data planes with acked version, connection and in-flight requests.
    Dataplanes,
    /// The control plane's current config (or a data plane's, with --data-plane) as a document
    /// `gwctl apply` takes (YAML unless -o json).
    Config,
}

/// Flags of `register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Service the instance belongs to ([a-z0-9-]{1,63}).
    #[arg(long, value_name = "SERVICE")]
    pub service: String,
    /// Where data planes reach the instance: HOST:PORT (IPv6 as [ADDR]:PORT).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_address)]
    pub address: HostPort,
    /// Instance id (1-128 of [A-Za-z0-9._:-]); generated by the control plane when absent.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Lease time to live, whole seconds between 1s and 1h (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = gateway_common::duration::parse)]
    pub ttl: Duration,
    /// Path probed by health checks; the service's health-check path when absent.
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// Relative load-balancing weight, 1-1000.
    #[arg(long, value_name = "N")]
    pub weight: Option<u32>,
    /// Zone of the instance (free text).
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// Label KEY=VALUE; repeat the flag for several labels.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Stay in the foreground renewing the lease every TTL/3; deregister on Ctrl-C or SIGTERM.
    /// Re-registers when the lease was lost (e.g. after a control-plane outage).
    #[arg(long)]
    pub keepalive: bool,
}

/// Flags of `deregister`.
#[derive(Debug, Args)]
pub struct DeregisterArgs {
    /// Id of the instance to remove.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Flags of `drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Id of the instance to drain.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Wait until every connected data plane applied the drain and has no request in flight
    /// to the instance.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait (e.g. 60s, 2m); exceeding it fails with the data planes
    /// that are still busy.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = gateway_common::duration::parse)]
    pub timeout: Duration,
}

/// Flags of `undrain`.
#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// Id of the instance to put back into rotation.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Flags of `topology`.
#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Keep running and redraw whenever the topology changes (Ctrl-C to stop).
    #[arg(long)]
    pub watch: bool,
}

/// Flags of `cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,
}

/// `cache invalidate|stats`.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Remove the cached answers a pattern covers, on Redis and in every data plane's memory.
    Invalidate {
        /// `route:NAME`, a path glob such as `/api/v1/events/*` (`*` is any run of
        /// characters, `/` included), or both: `route:NAME /path/*` (one argument or two).
        #[arg(value_name = "PATTERN", required = true, num_args = 1..=2)]
        pattern: Vec<String>,
    },
    /// Live entries, hits and misses summed over every data plane, memory use.
    Stats,
}

/// Flags of `apikey`.
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ApiKeyAction,
}

/// `apikey create|list|revoke`.
#[derive(Debug, Subcommand)]
pub enum ApiKeyAction {
    /// Create a key; it is shown once (only its SHA-256 is stored).
    Create {
        /// Tenant the key acts for (x-tenant-id upstream).
        #[arg(long, value_name = "TENANT")]
        tenant: String,
        /// Scopes granted, comma-separated (x-api-key-scopes upstream).
        #[arg(long, value_name = "SCOPE,...", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A label for people.
        #[arg(long, value_name = "NAME", default_value = "")]
        name: String,
    },
    /// List the keys (ids, tenants, scopes; never a key).
    List,
    /// Revoke a key on every data plane.
    Revoke {
        /// The key's id (ak_...).
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// Flags of `breaker`.
#[derive(Debug, Args)]
pub struct BreakerArgs {
    /// Show or change.
    #[command(subcommand)]
    pub action: BreakerAction,
}

/// `breaker get|set`.
#[derive(Debug, Subcommand)]
pub enum BreakerAction {
    /// Show the circuit-breaker policy of a service.
    Get {
        /// Service name.
        #[arg(value_name = "SERVICE")]
        service: String,
    },
    /// Change the circuit-breaker policy of a service; fields not given keep their current
    /// value (the built-in defaults when the service has no policy yet).
    Set(BreakerSetArgs),
}

/// Flags of `breaker set`.
#[derive(Debug, Args)]
pub struct BreakerSetArgs {
    /// Service name.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Error percentage over the rolling window that opens the breaker (1-100).
    #[arg(long, value_name = "PERCENT")]
    pub error_threshold_percent: Option<u32>,
    /// Requests in the window before the error percentage counts.
    #[arg(long, value_name = "N")]
    pub volume_threshold: Option<u32>,
    /// How long an open breaker waits before letting probes through (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = gateway_common::duration::parse)]
    pub reset_timeout: Option<Duration>,
    /// A call slower than this counts as a failure (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = gateway_common::duration::parse)]
    pub call_timeout: Option<Duration>,
    /// Length of the rolling window (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = gateway_common::duration::parse)]
    pub rolling_window: Option<Duration>,
    /// Buckets the rolling window is divided into.
    #[arg(long, value_name = "N")]
    pub rolling_buckets: Option<u32>,
    /// Probes let through while half-open.
    #[arg(long, value_name = "N")]
    pub half_open_max_requests: Option<u32>,
    /// Turn the breaker on or off.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub enabled: Option<bool>,
}

/// Flags of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: TokenAction,
}

/// `token issue`.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Sign a development access token (HS256) with JWT_SECRET and print it.
    Issue(TokenIssueArgs),
}

/// Roles the gateway's RBAC knows.
pub const ROLES: [&str; 6] = [
    "venue-owner",
    "venue-manager",
    "box-office",
    "door-staff",
    "customer",
    "admin",
];

/// Flags of `token issue`.
#[derive(Debug, Args)]
pub struct TokenIssueArgs {
    /// Subject: the user id.
    #[arg(long, value_name = "USER_ID")]
    pub sub: String,
    /// Tenant id (claim `tenant_id`).
    #[arg(long, value_name = "TENANT_ID")]
    pub tenant: String,
    /// Role of the user.
    #[arg(long, value_name = "ROLE", value_parser = clap::builder::PossibleValuesParser::new(ROLES))]
    pub role: String,
    /// Rate-limit tier (claim `tier`); omitted: none.
    #[arg(long, value_name = "TIER", value_parser = clap::builder::PossibleValuesParser::new(gateway_common::config::RATE_LIMIT_TIERS))]
    pub tier: Option<String>,
    /// Lifetime of the token (e.g. 15m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = gateway_common::duration::parse)]
    pub ttl: Duration,
    /// Issuer (claim `iss`).
    #[arg(long, env = "JWT_ISSUER", default_value = "tickettoken")]
    pub issuer: String,
    /// Audience (claim `aud`).
    #[arg(long, env = "JWT_AUDIENCE", default_value = "tickettoken-platform")]
    pub audience: String,
    /// Signing secret, at least 32 bytes.
    #[arg(
        long,
        env = "JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,
}

/// Flags of `dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Public address of the data plane.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,
    /// Config to apply; when absent, deploy/examples/dev.yaml of the working directory,
    /// else the built-in copy of it.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Also serve HTTPS: generate a throwaway CA and a certificate for localhost, 127.0.0.1
    /// and ::1, listen on --tls-listen beside the plain listener, and print the CA's path and
    /// a `curl --cacert` line. The files are removed on exit (unless --tls-dir).
    #[arg(long)]
    pub tls: bool,
    /// Address of the HTTPS listener of --tls.
    #[arg(long, value_name = "ADDR", default_value = crate::dev::DEFAULT_TLS_LISTEN, requires = "tls")]
    pub tls_listen: SocketAddr,
    /// Write the --tls files (ca.pem, server.pem, server-key.pem) to DIR, created when
    /// missing, and keep them on exit; a new CA replaces the one of a previous run.
    #[arg(long, value_name = "DIR", requires = "tls")]
    pub tls_dir: Option<PathBuf>,
}

/// `HOST:PORT` of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port, 1-65535.
    pub port: u16,
}

/// Parses `HOST:PORT` or `[IPV6]:PORT`.
pub fn parse_address(text: &str) -> Result<HostPort, String> {
    let bad = || format!("{text:?} is not HOST:PORT (IPv6 as [ADDR]:PORT)");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(format!("{text:?}: the host is missing"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?}: the port must be a number between 1 and 65535"))?;
    if !gateway_common::registration::is_valid_host(host) {
        return Err(format!(
            "{text:?}: {host:?} is not a host name or IP address"
        ));
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Parses `KEY=VALUE`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("10.0.0.1:8080").unwrap(),
            HostPort {
                host: "10.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(parse_address("[::1]:81").unwrap().host, "::1");
        assert_eq!(parse_address("svc.local:1").unwrap().port, 1);
        for bad in [
            "nohost", ":80", "h:0", "h:70000", "h:x", "::1:80", "a b:80", "[::1]80",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert_eq!(parse_key_value("a=").unwrap().1, "");
        assert!(parse_key_value("ab").is_err());
        assert!(parse_key_value("=b").is_err());
    }
}
