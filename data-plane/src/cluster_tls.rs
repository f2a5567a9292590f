//! The data plane's TLS inside the cluster: to an `https://` control plane
//! (`GW_CP_CA_FILE`, `GW_CP_CLIENT_CERT`, `GW_CP_CLIENT_KEY`) and to a
//! `rediss://` Redis (`REDIS_CA_FILE`, `REDIS_CLIENT_CERT`,
//! `REDIS_CLIENT_KEY`): the flags, and the settings they make.

use crate::settings::SettingsError;
use gateway_common::grpc_tls::{ClientTls, ClientTlsFiles, ClientTlsNames};
use gateway_common::redis_client::RedisTls;
use gateway_common::tls::PairSettings;
use std::path::{Path, PathBuf};

/// Names of the control-plane TLS settings, for messages.
pub const CONTROL_PLANE_TLS: ClientTlsNames = ClientTlsNames {
    url: "CONTROL_PLANE_URL",
    ca_file: "GW_CP_CA_FILE",
    identity: PairSettings {
        cert: "GW_CP_CLIENT_CERT",
        key: "GW_CP_CLIENT_KEY",
    },
};

/// Flags of the data plane's TLS to the control plane and to Redis.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterTlsArgs {
    /// PEM CA certificates trusted for an https:// control plane, besides
    /// the platform's roots.
    #[arg(long, env = "GW_CP_CA_FILE", value_name = "FILE")]
    pub cp_ca_file: Option<PathBuf>,

    /// PEM client certificate chain presented to an https:// control plane
    /// that requires one (mTLS).
    #[arg(long, env = "GW_CP_CLIENT_CERT", value_name = "FILE")]
    pub cp_client_cert: Option<PathBuf>,

    /// PEM private key of --cp-client-cert.
    #[arg(long, env = "GW_CP_CLIENT_KEY", value_name = "FILE")]
    pub cp_client_key: Option<PathBuf>,

    /// TLS files of a rediss:// Redis.
    #[command(flatten)]
    pub redis_tls: gateway_common::redis_client::RedisTlsArgs,
}

fn given(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

impl ClusterTlsArgs {
    /// The TLS settings of the control plane at `url`, read and checked:
    /// `Some` for `https://`, `None` for `http://` (where files are refused).
    pub fn control_plane(&self, url: &str) -> Result<Option<ClientTls>, SettingsError> {
        let files = ClientTlsFiles {
            ca_file: given(&self.cp_ca_file),
            client_cert: given(&self.cp_client_cert),
            client_key: given(&self.cp_client_key),
        };
        ClientTls::for_url(url, CONTROL_PLANE_TLS, files)
            .map_err(|e| SettingsError::ClusterTls(e.to_string()))
    }

    /// The TLS files of a `rediss://` Redis (checked when the client is made).
    pub fn redis(&self) -> RedisTls {
        self.redis_tls.settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_refused_with_a_plaintext_control_plane() {
        let args = ClusterTlsArgs {
            cp_client_cert: Some(PathBuf::from("/etc/hostname")),
            ..ClusterTlsArgs::default()
        };
        let err = args.control_plane("http://cp:50051").unwrap_err();
        assert!(
            err.to_string()
                .contains("GW_CP_CLIENT_CERT is set but CONTROL_PLANE_URL"),
            "{err}"
        );
        let args = ClusterTlsArgs {
            cp_ca_file: Some(PathBuf::new()),
            redis_tls: gateway_common::redis_client::RedisTlsArgs {
                redis_ca_file: Some(PathBuf::new()),
                ..Default::default()
            },
            ..ClusterTlsArgs::default()
        };
        assert!(
            args.control_plane("http://cp:50051").unwrap().is_none(),
            "empty means unset"
        );
        assert!(args.redis().is_empty());
    }
}
