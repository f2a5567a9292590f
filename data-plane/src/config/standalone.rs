//! Standalone mode: the config comes from a declarative file, the instances
//! from its static `instances:` (with the seed's `*_SERVICE_URL` variables
//! replacing those of their service), and no control plane is involved.

use crate::config::runtime::{Change, ConfigSource, Runtime, UpdateError};
use gateway_common::config::{parse_instance_url, ConfigError};
use gateway_common::registration::{static_instances, Instance, InstanceState};
use gateway_common::GatewayConfig;
use std::path::{Path, PathBuf};

/// Epoch reported for configs read from a file.
pub const STANDALONE_EPOCH: &str = "standalone";

/// Why a file config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid config.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ConfigError,
    },
    /// A `*_SERVICE_URL` value is not an `http://host:port` URL.
    #[error("{service} service URL: {reason}")]
    ServiceUrl {
        /// The service.
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// The config could not be applied.
    #[error(transparent)]
    Apply(#[from] UpdateError),
}

/// Reads and validates the file, then applies the service URL overrides.
pub fn load(
    path: &Path,
    service_urls: &[(String, String)],
) -> Result<GatewayConfig, StandaloneError> {
    let document = std::fs::read(path).map_err(|source| StandaloneError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = GatewayConfig::load(&document).map_err(|source| StandaloneError::Config {
        path: path.to_path_buf(),
        source,
    })?;
    apply_service_urls(&mut config, service_urls)?;
    Ok(config)
}

/// Replaces the static instances of each named service by its URL; a
/// service missing from the config is skipped with a warning.
pub fn apply_service_urls(
    config: &mut GatewayConfig,
    service_urls: &[(String, String)],
) -> Result<(), StandaloneError> {
    for (service, url) in service_urls {
        parse_instance_url(url).map_err(|reason| StandaloneError::ServiceUrl {
            service: service.clone(),
            reason,
        })?;
        match config.services.iter_mut().find(|s| &s.name == service) {
            Some(s) => {
                tracing::info!(service = %service, url = %url, "service URL overrides the file's instances");
                s.instances = vec![url.clone()];
            }
            None => tracing::warn!(
                service = %service,
                "a service URL is set for a service the config does not declare; ignored"
            ),
        }
    }
    Ok(())
}

/// The change that installs `config` with its static instances.
pub fn change(config: GatewayConfig, version: u64) -> Change {
    let upserts = static_instances(&config)
        .into_iter()
        .map(|spec| Instance {
            spec,
            state: InstanceState::default(),
        })
        .collect();
    Change {
        source: ConfigSource::File,
        epoch: STANDALONE_EPOCH.to_string(),
        version,
        replace_all: true,
        config: Some(config),
        upserts,
        removals: Vec::new(),
    }
}

/// Loads the file and applies it to `runtime` as the next version.
pub fn reload(
    runtime: &Runtime,
    path: &Path,
    service_urls: &[(String, String)],
) -> Result<u64, StandaloneError> {
    let config = load(path, service_urls)?;
    let version = runtime.version().1 + 1;
    runtime.apply(change(config, version))?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version: 1\nservices:\n  - name: auth\n    instances: ['http://127.0.0.1:1', 'http://127.0.0.1:2']\n  - name: venue\n";

    #[test]
    fn service_urls_replace_static_instances() {
        let mut config = GatewayConfig::load(DOC.as_bytes()).unwrap();
        apply_service_urls(
            &mut config,
            &[
                ("auth".into(), "http://10.0.0.9:3001".into()),
                ("ticket".into(), "http://10.0.0.9:3004".into()),
            ],
        )
        .unwrap();
        assert_eq!(config.services[0].instances, vec!["http://10.0.0.9:3001"]);
        assert!(config.services[1].instances.is_empty());
        let ids: Vec<_> = change(config, 1)
            .upserts
            .iter()
            .map(|i| i.spec.id.clone())
            .collect();
        assert_eq!(ids, vec!["static:auth:10.0.0.9:3001"]);
    }

    #[test]
    fn bad_service_url_is_refused() {
        let mut config = GatewayConfig::load(DOC.as_bytes()).unwrap();
        let err =
            apply_service_urls(&mut config, &[("auth".into(), "ftp://x".into())]).unwrap_err();
        assert!(err.to_string().contains("auth service URL"), "{err}");
    }

    #[test]
    fn missing_and_invalid_files_are_refused() {
        let err = load(Path::new("/nonexistent/gw.yaml"), &[]).unwrap_err();
        assert!(matches!(err, StandaloneError::Read { .. }));
        let dir = std::env::temp_dir().join(format!("dp-standalone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.yaml");
        std::fs::write(&file, "version: 2\n").unwrap();
        let err = load(&file, &[]).unwrap_err();
        assert!(err.to_string().contains("version: must be 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
