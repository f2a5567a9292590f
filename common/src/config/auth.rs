//! Access-token authentication of a route: public paths, API keys,
//! client certificates, required permissions and the lookup services
//! (venue access, user details) asked before forwarding, with their checks.

use super::shared::default_true;
use crate::aggregation::route_params;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Access-token (JWT bearer) authentication of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a valid access token is required (default true).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Paths (as the client sends them, after normalisation) that need no
    /// token: `/exact`, `/prefix/*` (the prefix and anything below it),
    /// `/prefix/` (anything below it), or a glob where `*` matches within
    /// one segment and `**` across segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_paths: Vec<String>,
    /// Whether an API key (`X-API-Key`, created with `gwctl apikey
    /// create`) is accepted in place of a bearer token (default false).
    /// The key's tenant and scopes become the identity headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_keys: bool,
    /// Whether a client certificate, verified by the data plane's HTTPS
    /// listener against its client CA, is required on every request of
    /// the route, public paths included (default `off`). Independent of
    /// the token: `required: false` makes the certificate the only
    /// credential.
    #[serde(default, skip_serializing_if = "ClientCert::is_off")]
    pub client_cert: ClientCert,
    /// Permission (`resource:action`) the caller needs on every method of
    /// the route, granted by its role (or the token's `permissions` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// Permission per method (`GET: events:read`); a method named here
    /// needs this one instead of `permission`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub permissions: BTreeMap<String, String>,
    /// Path parameter naming the resource's owner: a caller holding only
    /// `resource:action-own` is allowed when its value is the caller's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_param: Option<String>,
    /// Path parameter naming the venue checked for venue-scoped roles
    /// (else the `x-venue-id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue_param: Option<String>,
    /// Where venue access is asked (routes with a permission).
    #[serde(
        default = "default_venue_access",
        skip_serializing_if = "is_default_venue_access"
    )]
    pub venue_access: LookupConfig,
    /// Load the caller's details (role, status) from the auth service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_details: bool,
    /// Where user details are asked (routes with `user_details: true`).
    #[serde(
        default = "default_user_lookup",
        skip_serializing_if = "is_default_user_lookup"
    )]
    pub user_lookup: LookupConfig,
}

/// A route's client-certificate requirement (`auth.client_cert`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    /// Not required (the default).
    #[default]
    Off,
    /// A verified client certificate is required: requests without one are
    /// refused with 403 `CLIENT_CERTIFICATE_REQUIRED`.
    Required,
}

impl ClientCert {
    /// Whether no certificate is required.
    pub fn is_off(&self) -> bool {
        *self == ClientCert::Off
    }
}

/// A service the gateway asks before forwarding (venue access, user
/// details): `GET path` on one of the service's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// Service name (one of `services`).
    pub service: String,
    /// Path template with `{venueId}` and/or `{userId}`.
    pub path: String,
}

/// Default venue-access lookup: `GET /api/v1/venues/{venueId}/access` on
/// `venue` (with `?userId=...&permission=...`).
pub fn default_venue_access() -> LookupConfig {
    LookupConfig {
        service: "venue".into(),
        path: "/api/v1/venues/{venueId}/access".into(),
    }
}

/// Default user-details lookup: `GET /api/v1/users/{userId}` on `auth`.
pub fn default_user_lookup() -> LookupConfig {
    LookupConfig {
        service: "auth".into(),
        path: "/api/v1/users/{userId}".into(),
    }
}

fn is_default_venue_access(l: &LookupConfig) -> bool {
    *l == default_venue_access()
}

fn is_default_user_lookup(l: &LookupConfig) -> bool {
    *l == default_user_lookup()
}

/// Checks a permission a route requires: `resource:action`, both
/// `[a-z][a-z0-9_-]*`; wildcards and `-own` are grants, not requirements.
pub fn check_route_permission(p: &str) -> Result<(), String> {
    let (resource, action) = p
        .split_once(':')
        .ok_or("must be resource:action (e.g. events:update)")?;
    let word = |w: &str| {
        w.len() <= 64
            && w.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if resource == "*" || action == "*" {
        return Err("wildcards are granted to roles, a route names one permission".into());
    }
    if !word(resource) || !word(action) {
        return Err("must be resource:action, each [a-z][a-z0-9_-]* (at most 64 bytes)".into());
    }
    if action.ends_with("-own") {
        return Err(format!(
            "-own is a grant: require {resource}:{} and set owner_param",
            action.trim_end_matches("-own")
        ));
    }
    Ok(())
}

/// Longest public path pattern.
pub const MAX_PUBLIC_PATH_LEN: usize = 1024;

impl AuthConfig {
    /// Whether any method of the route needs a permission.
    pub fn has_permission(&self) -> bool {
        self.permission.is_some() || !self.permissions.is_empty()
    }

    /// The lookup services the route uses, with the key naming them.
    pub fn lookups(&self) -> Vec<(&'static str, &LookupConfig)> {
        let mut used = Vec::new();
        if self.has_permission() {
            used.push(("venue_access", &self.venue_access));
        }
        if self.user_details {
            used.push(("user_lookup", &self.user_lookup));
        }
        used
    }

    pub(super) fn validate(
        &self,
        at: &str,
        params: &[&str],
        methods: &[String],
        errors: &mut Vec<String>,
    ) {
        if !self.required && !self.public_paths.is_empty() {
            errors.push(format!(
                "{at}.public_paths: only meaningful when required is true"
            ));
        }
        if !self.required && self.api_keys {
            errors.push(format!(
                "{at}.api_keys: only meaningful when required is true"
            ));
        }
        self.validate_authorization(at, params, methods, errors);
        for (i, p) in self.public_paths.iter().enumerate() {
            if let Err(e) = check_public_path(p) {
                errors.push(format!("{at}.public_paths[{i}]: {p:?} {e}"));
            }
        }
    }
}

impl AuthConfig {
    fn validate_authorization(
        &self,
        at: &str,
        params: &[&str],
        methods: &[String],
        errors: &mut Vec<String>,
    ) {
        let authorizes = self.has_permission() || self.user_details;
        if authorizes && !self.required {
            errors.push(format!(
                "{at}: permission and user_details need required: true (an authenticated caller)"
            ));
        }
        if let Some(p) = &self.permission {
            if let Err(e) = check_route_permission(p) {
                errors.push(format!("{at}.permission: {p:?} {e}"));
            }
        }
        for (method, p) in &self.permissions {
            if !is_method_name(method) {
                errors.push(format!(
                    "{at}.permissions.{method}: not an HTTP method (upper case, e.g. GET)"
                ));
            } else if !methods.is_empty() && !methods.iter().any(|m| m == method) {
                errors.push(format!(
                    "{at}.permissions.{method}: the route does not match {method}"
                ));
            }
            if let Err(e) = check_route_permission(p) {
                errors.push(format!("{at}.permissions.{method}: {p:?} {e}"));
            }
        }
        for (key, param) in [
            ("owner_param", &self.owner_param),
            ("venue_param", &self.venue_param),
        ] {
            let Some(param) = param else { continue };
            if !self.has_permission() {
                errors.push(format!("{at}.{key}: only meaningful with a permission"));
            }
            if !params.contains(&param.as_str()) {
                errors.push(format!(
                    "{at}.{key}: {param:?} is not a parameter of match.path (write it as {{{param}}})"
                ));
            }
        }
        for (key, lookup) in [
            ("venue_access", &self.venue_access),
            ("user_lookup", &self.user_lookup),
        ] {
            let needed: &[&str] = if key == "venue_access" {
                &["venueId"]
            } else {
                &["userId"]
            };
            if let Err(e) = check_lookup_path(&lookup.path, needed) {
                errors.push(format!("{at}.{key}.path: {:?} {e}", lookup.path));
            }
        }
    }
}

fn is_method_name(m: &str) -> bool {
    !m.is_empty() && m.len() <= 16 && m.bytes().all(|b| b.is_ascii_uppercase())
}

/// Checks a lookup path template: absolute, no query, placeholders only
/// from `{venueId}` and `{userId}`, each of `needed` present.
fn check_lookup_path(path: &str, needed: &[&str]) -> Result<(), String> {
    if !path.starts_with('/') || path.contains(['?', '#', ' ', '%']) {
        return Err("must be an absolute path without query, spaces or '%'".into());
    }
    let params = route_params(Some(path));
    if let Some(p) = params.iter().find(|p| !matches!(**p, "venueId" | "userId")) {
        return Err(format!(
            "unknown placeholder {{{p}}} (use {{venueId}}, {{userId}})"
        ));
    }
    if let Some(n) = needed.iter().find(|n| !params.contains(n)) {
        return Err(format!("must contain {{{n}}}"));
    }
    Ok(())
}

/// Checks one public path pattern: it must already be in normalised form,
/// so that it can match a normalised request path.
pub fn check_public_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if p.len() > MAX_PUBLIC_PATH_LEN {
        return Err(format!("must be at most {MAX_PUBLIC_PATH_LEN} bytes"));
    }
    if p.bytes()
        .any(|b| b <= 0x20 || b >= 0x7f || matches!(b, b'%' | b';' | b'\\' | b'?' | b'#'))
    {
        return Err(
            "must be a plain path: no spaces, controls, non-ASCII, '%', ';', '\\', '?' or '#'"
                .into(),
        );
    }
    if p.contains("//") {
        return Err("must not contain empty segments ('//')".into());
    }
    for segment in p.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err("must not contain '.' or '..' segments".into());
        }
        if segment.ends_with('.') {
            return Err("must not end a segment with '.'".into());
        }
        if segment.contains("**") && segment != "**" {
            return Err("'**' must be a whole segment".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::invalid;
    use crate::config::{ConfigError, GatewayConfig};

    #[test]
    fn authorization_keys_parse_and_round_trip() {
        let doc = r#"
version: 1
services: [ { name: api }, { name: auth }, { name: venue } ]
routes:
  - name: tickets
    match: { path: "/users/{userId}/venues/{venueId}/tickets", methods: [GET, POST] }
    service: api
    auth:
      permission: tickets:view
      permissions: { POST: tickets:sell }
      owner_param: userId
      venue_param: venueId
      user_details: true
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let auth = config.routes[0].auth.as_ref().unwrap();
        assert_eq!(auth.permission.as_deref(), Some("tickets:view"));
        assert_eq!(auth.permissions["POST"], "tickets:sell");
        assert_eq!(auth.venue_access, default_venue_access());
        assert_eq!(auth.user_lookup, default_user_lookup());
        let again = GatewayConfig::load(config.to_json().as_bytes()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn authorization_keys_are_validated_with_their_path() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: a
    match: { path: "/a/{id}", methods: [GET] }
    service: api
    auth:
      permission: "events"
      permissions: { POST: "events:*", get: "x:y", GET: "tickets:view-own" }
      owner_param: userId
      venue_access: { service: venue, path: "/venues/{venue}" }
      user_details: true
      user_lookup: { service: nowhere, path: "/users?id=1" }
  - name: b
    match: { path_prefix: /b }
    service: api
    auth: { required: false, permission: "Events:view", venue_param: v }
"#,
        );
        for expected in [
            r#"routes[0].auth.permission: "events" must be resource:action"#,
            "routes[0].auth.permissions.POST: the route does not match POST",
            r#"routes[0].auth.permissions.POST: "events:*" wildcards are granted to roles"#,
            "routes[0].auth.permissions.get: not an HTTP method",
            r#"routes[0].auth.permissions.GET: "tickets:view-own" -own is a grant: require tickets:view and set owner_param"#,
            r#"routes[0].auth.owner_param: "userId" is not a parameter of match.path"#,
            r#"routes[0].auth.venue_access.path: "/venues/{venue}" unknown placeholder {venue}"#,
            r#"routes[0].auth.user_lookup.path: "/users?id=1" must be an absolute path without query"#,
            r#"routes[0].auth.venue_access.service: unknown service "venue""#,
            r#"routes[0].auth.user_lookup.service: unknown service "nowhere""#,
            "routes[1].auth: permission and user_details need required: true",
            r#"routes[1].auth.permission: "Events:view" must be resource:action, each [a-z][a-z0-9_-]*"#,
            r#"routes[1].auth.venue_param: "v" is not a parameter of match.path"#,
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
    }

    #[test]
    fn auth_parses_and_round_trips() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: api
    auth: { public_paths: [/api/health, /api/docs/*, /api/public/, "/api/*/status", "/api/**/ping"] }
  - { name: open, match: { path_prefix: /open }, service: api, auth: { required: false } }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let auth = config.routes[0].auth.as_ref().unwrap();
        assert!(auth.required);
        assert_eq!(auth.public_paths.len(), 5);
        assert!(!config.routes[1].auth.as_ref().unwrap().required);
        assert!(!auth.api_keys);
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn api_keys_need_a_required_auth_policy() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - { name: partner, match: { path_prefix: /partner }, service: api, auth: { api_keys: true } }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        assert!(config.routes[0].auth.as_ref().unwrap().api_keys);
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - { name: b, match: { path_prefix: /b }, service: api, auth: { required: false, api_keys: true } }
"#,
        );
        assert!(
            errors.contains("routes[0].auth.api_keys: only meaningful when required is true"),
            "{errors}"
        );
    }

    #[test]
    fn client_cert_parses_round_trips_and_is_checked() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - { name: partner, match: { path_prefix: /partner }, service: api, auth: { required: false, client_cert: required } }
  - { name: both, match: { path_prefix: /both }, service: api, auth: { client_cert: required } }
  - { name: plain, match: { path_prefix: /plain }, service: api, auth: { client_cert: "off" } }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let auth = |i: usize| config.routes[i].auth.clone().unwrap();
        assert_eq!(auth(0).client_cert, ClientCert::Required);
        assert!(!auth(0).required);
        assert!(auth(1).required);
        assert_eq!(auth(2).client_cert, ClientCert::Off);
        let json = config.to_json();
        assert_eq!(json.matches("client_cert").count(), 2, "{json}");
        assert_eq!(GatewayConfig::from_json(&json).unwrap(), config);
        // A changed requirement is a changed route.
        let mut changed = config.clone();
        if let Some(auth) = changed.routes[2].auth.as_mut() {
            auth.client_cert = ClientCert::Required;
        }
        let diff: Vec<String> = config
            .diff(&changed)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(diff, vec!["route plain changed"]);
        let bad = GatewayConfig::load(
            b"version: 1\nservices: [{name: a}]\nroutes: [{name: r, match: {path_prefix: /r}, service: a, auth: {client_cert: optional}}]\n",
        );
        assert!(
            matches!(&bad, Err(ConfigError::Parse(e)) if e.contains("client_cert") || e.contains("optional")),
            "{bad:?}"
        );
    }

    #[test]
    fn invalid_auth_is_refused_with_paths() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: api
    auth:
      public_paths: [api/x, "/a//b", "/a/../b", "/a/%2e", "/a;x", "/a.", "/a/x**", "/a b"]
  - { name: b, match: { path_prefix: /b }, service: api, auth: { required: false, public_paths: [/b] } }
"#,
        );
        for expected in [
            r#"routes[0].auth.public_paths[0]: "api/x" must start with '/'"#,
            r#"routes[0].auth.public_paths[1]: "/a//b" must not contain empty segments"#,
            r#"routes[0].auth.public_paths[2]: "/a/../b" must not contain '.' or '..'"#,
            r#"routes[0].auth.public_paths[3]: "/a/%2e" must be a plain path"#,
            r#"routes[0].auth.public_paths[4]: "/a;x" must be a plain path"#,
            r#"routes[0].auth.public_paths[5]: "/a." must not end a segment with '.'"#,
            r#"routes[0].auth.public_paths[6]: "/a/x**" '**' must be a whole segment"#,
            r#"routes[0].auth.public_paths[7]: "/a b" must be a plain path"#,
            "routes[1].auth.public_paths: only meaningful when required is true",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in\n{errors}"
            );
        }
        let unknown = GatewayConfig::load(
            b"version: 1\nservices: [{name: a}]\nroutes: [{name: r, match: {path_prefix: /r}, service: a, auth: {requird: true}}]\n",
        );
        assert!(matches!(unknown, Err(ConfigError::Parse(e)) if e.contains("requird")));
    }
}
