//! What a control plane is started with.

use gateway_common::redis_client::RedisTls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of one control-plane replica.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Registry, Admin, Discovery, grpc.health.v1 and reflection (port 0 allowed).
    pub grpc_addr: SocketAddr,
    /// `/health/live`, `/health/ready`, `/metrics` (port 0 allowed).
    pub http_addr: SocketAddr,
    /// Redis URL; `None` for the in-memory store (one replica, not durable).
    pub redis_url: Option<String>,
    /// TLS files of a `rediss://` URL (`REDIS_CA_FILE`, `REDIS_CLIENT_*`).
    pub redis_tls: RedisTls,
    /// PEM certificate chain of the gRPC port (`CP_TLS_CERT`); set, the
    /// whole port speaks TLS.
    pub tls_cert: Option<PathBuf>,
    /// Its PEM private key (`CP_TLS_KEY`).
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates of client certificates (`CP_TLS_CLIENT_CA`);
    /// set, every gRPC client must present a certificate signed by one.
    pub tls_client_ca: Option<PathBuf>,
    /// Token of Admin calls.
    pub admin_token: Option<String>,
    /// Token of Registry calls.
    pub registration_token: Option<String>,
    /// Token of Discovery streams; `None`: data planes need none.
    pub dataplane_token: Option<String>,
    /// Start even when the Admin or Registry token is missing.
    pub allow_unauthenticated: bool,
    /// This replica's id (topology, leader lock).
    pub replica_id: String,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Lifetime of the leader lock; renewed every third of it.
    pub leader_ttl: Duration,
    /// How often the leader removes instances whose lease lapsed.
    pub lease_sweep_interval: Duration,
    /// Recent deltas kept in memory: a data plane that reconnects at most
    /// this many versions behind gets one merged delta, else a snapshot.
    pub delta_ring: usize,
}

/// `hostname-pid`, the default replica id.
pub fn default_replica_id() -> String {
    gateway_common::process::hostname_pid("control-plane")
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 9091)),
            redis_url: None,
            redis_tls: RedisTls::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            admin_token: None,
            registration_token: None,
            dataplane_token: None,
            allow_unauthenticated: false,
            replica_id: default_replica_id(),
            key_prefix: "gw:".to_string(),
            leader_ttl: Duration::from_secs(10),
            lease_sweep_interval: Duration::from_millis(250),
            delta_ring: crate::view::RING_CAPACITY,
        }
    }
}

/// Why settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// Tokens are missing and unauthenticated access was not allowed.
    #[error(
        "{0} not set (required unless --allow-unauthenticated / CP_ALLOW_UNAUTHENTICATED=true)"
    )]
    MissingTokens(String),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Checks the settings before anything starts.
    pub fn check(&self) -> Result<(), SettingsError> {
        let missing: Vec<&str> = [
            ("GW_ADMIN_TOKEN", &self.admin_token),
            ("GW_REGISTRATION_TOKEN", &self.registration_token),
        ]
        .into_iter()
        .filter(|(_, token)| token.as_deref().is_none_or(str::is_empty))
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() && !self.allow_unauthenticated {
            return Err(SettingsError::MissingTokens(missing.join(" and ")));
        }
        if self.replica_id.is_empty() || self.replica_id.len() > 253 {
            return Err(SettingsError::Invalid(
                "replica id must be 1-253 characters".into(),
            ));
        }
        if self.leader_ttl < Duration::from_millis(300) {
            return Err(SettingsError::Invalid(
                "leader TTL must be at least 300ms".into(),
            ));
        }
        if self.lease_sweep_interval < Duration::from_millis(10) {
            return Err(SettingsError::Invalid(
                "lease sweep interval must be at least 10ms".into(),
            ));
        }
        if self.delta_ring == 0 {
            return Err(SettingsError::Invalid(
                "the delta ring must hold at least one delta".into(),
            ));
        }
        Ok(())
    }

    /// The token of a kind of call, treating an empty string as unset.
    pub(crate) fn token(value: &Option<String>) -> Option<&str> {
        value.as_deref().filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tokens_are_named() {
        let settings = Settings::default();
        let err = settings.check().unwrap_err().to_string();
        assert!(
            err.contains("GW_ADMIN_TOKEN and GW_REGISTRATION_TOKEN"),
            "{err}"
        );
        let settings = Settings {
            admin_token: Some("a".into()),
            registration_token: Some(String::new()),
            ..Settings::default()
        };
        let err = settings.check().unwrap_err().to_string();
        assert!(err.starts_with("GW_REGISTRATION_TOKEN not set"), "{err}");
    }

    #[test]
    fn unauthenticated_must_be_asked_for() {
        let settings = Settings {
            allow_unauthenticated: true,
            ..Settings::default()
        };
        assert_eq!(settings.check(), Ok(()));
    }

    #[test]
    fn intervals_are_bounded() {
        let settings = Settings {
            allow_unauthenticated: true,
            leader_ttl: Duration::from_millis(10),
            ..Settings::default()
        };
        assert!(settings.check().is_err());
    }

    #[test]
    fn default_replica_id_ends_with_the_pid() {
        assert!(default_replica_id().ends_with(&format!("-{}", std::process::id())));
    }
}
