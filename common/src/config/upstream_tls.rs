//! A service's `tls` section: how the data planes (and the control plane's
//! health checks) speak TLS to its `https://` instances.
//!
//! The model checks only the shape of the settings (a client certificate
//! needs its key, a `server_name` must be a DNS name or an IP address): it
//! reads no file, because the control plane that validates a config may run
//! on another host than the data planes that use it. The files are read
//! where they are used (see `crate::tls::upstream_client_config`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// TLS to a service's instances. Every key is optional; verification of the
/// instance's certificate is always on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of CA certificates trusted besides the platform's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the instance's certificate; absent:
    /// the instance's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM certificate chain presented to instances that ask for one (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

impl UpstreamTlsConfig {
    /// Checks the shape of the settings; problems are pushed with `at` as
    /// their path.
    pub(super) fn validate(&self, at: &str, errors: &mut Vec<String>) {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => errors.push(format!(
                "{at}.client_cert is set without {at}.client_key: both or neither"
            )),
            (None, Some(_)) => errors.push(format!(
                "{at}.client_key is set without {at}.client_cert: both or neither"
            )),
            _ => {}
        }
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                errors.push(format!("{at}.{key}: must not be empty"));
            }
        }
        if let Some(name) = &self.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                errors.push(format!(
                    "{at}.server_name: {name:?} is not a DNS name or an IP address"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::invalid;
    use crate::config::GatewayConfig;

    #[test]
    fn tls_settings_parse_and_shapes_are_checked() {
        let doc = r#"
version: 1
services:
  - name: pay
    tls: { ca_file: /etc/ca.pem, server_name: pay.internal, client_cert: /c.pem, client_key: /k.pem }
    instances: [ "https://10.0.0.1:8443", "https://pay" ]
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let tls = config.services[0].tls.as_ref().unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("pay.internal"));
        let again = GatewayConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(again, config);
        let plain = GatewayConfig::load(b"version: 1\nservices: [ {name: a} ]\n").unwrap();
        assert!(!plain.to_json().contains("tls"));

        let all = invalid(
            r#"
version: 1
services:
  - name: a
    tls: { client_cert: /c.pem, server_name: "not a name" }
  - name: b
    tls: { client_key: /k.pem, ca_file: "" }
"#,
        );
        for needle in [
            "services[0].tls.client_cert is set without services[0].tls.client_key",
            "services[0].tls.server_name: \"not a name\"",
            "services[1].tls.client_key is set without services[1].tls.client_cert",
            "services[1].tls.ca_file: must not be empty",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }
}
