//! The declarative config model shared by `gwctl apply` and
//! `data-plane --config`: services, routes and their policies.
//!
//! A document is parsed ([`GatewayConfig::parse`]), then validated as a
//! whole ([`GatewayConfig::validate`]): every problem is reported with its
//! path, and a config with any problem is rejected whole.
//!
//! Each section lives in its own module with its defaults and checks; this
//! one composes them and runs the checks that span sections (service names
//! that routes refer to, the route table as a whole).

mod auth;
mod breaker;
mod cache;
mod cors;
mod diff;
mod endpoint;
mod fallback;
mod health_check;
mod instance;
mod load_balancer;
mod outlier;
mod rate_limit;
mod retry;
mod route;
mod service;
mod shared;
mod signature;
mod upstream_tls;
mod webhook;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use crate::aggregation::{AggregateConfig, SourceConfig, SplitByTime, TimeSide};
pub use auth::{
    check_public_path, check_route_permission, default_user_lookup, default_venue_access,
    AuthConfig, ClientCert, LookupConfig, MAX_PUBLIC_PATH_LEN,
};
pub use breaker::BreakerConfig;
pub use cache::{
    CacheConfig, DEFAULT_CACHE_BODY_LIMIT, MAX_CACHE_BODY_LIMIT, MAX_CACHE_TTL, MAX_VARY_BY_QUERY,
    MIN_CACHE_TTL,
};
pub use cors::CorsConfig;
pub use diff::Change;
pub use endpoint::{EndpointPattern, EndpointSegment};
pub use fallback::{FallbackResponse, MAX_FALLBACK_BODY};
pub use health_check::HealthCheckConfig;
pub use instance::{parse_instance_url, InstanceAddr};
pub use load_balancer::{LoadBalancerConfig, Strategy};
pub use outlier::OutlierConfig;
pub use rate_limit::{
    RateLimitConfig, RateLimitKey, MAX_RATE_LIMIT_REQUESTS, MAX_RATE_LIMIT_WINDOW,
    MIN_RATE_LIMIT_WINDOW, RATE_LIMIT_TIERS,
};
pub use retry::{RetryConfig, RetryOn, MAX_RETRY_BODY, RETRY_CONDITIONS};
pub use route::{RouteConfig, RouteMatch, DEFAULT_BODY_LIMIT, MAX_BODY_LIMIT};
pub use service::{is_valid_service_name, ServiceConfig};
pub use signature::{
    SignatureConfig, DEFAULT_SIGNATURE_HEADER, DEFAULT_SIGNATURE_TIMESTAMP_HEADER,
    DEFAULT_SIGNATURE_WINDOW, MAX_SIGNATURE_WINDOW, RESERVED_SECRET_ENV,
};
pub use upstream_tls::UpstreamTlsConfig;
pub use webhook::{WebhookConfig, WebhookProvider, DEFAULT_WEBHOOK_BODY_LIMIT};

use crate::aggregation::route_params;
use crate::routing::{RouteSpec, RouteTable};
use diff::diff_named;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The only config format version understood.
pub const CONFIG_VERSION: u32 = 1;

/// A whole gateway config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// Upstream services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Routes from public paths to services.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            services: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// Why a config was refused: every problem found, each with its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid YAML/JSON or does not fit the model.
    #[error("cannot parse config: {0}")]
    Parse(String),
    /// The document parsed but breaks one or more rules.
    #[error("invalid config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl GatewayConfig {
    /// Parses a YAML or JSON document (no validation beyond the model's shape).
    pub fn parse(document: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(document)
            .map_err(|_| ConfigError::Parse("document is not UTF-8".into()))?;
        if text.trim().is_empty() {
            return Err(ConfigError::Parse("document is empty".into()));
        }
        serde_norway::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Parses then validates a document: what `gwctl apply` and `--config` accept.
    pub fn load(document: &[u8]) -> Result<Self, ConfigError> {
        let config = Self::parse(document)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the canonical JSON form (as streamed to data planes) and validates it.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The canonical JSON form.
    pub fn to_json(&self) -> String {
        // Serializing plain structs, strings and numbers to JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Looks a service up by name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Checks every rule and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.version != CONFIG_VERSION {
            errors.push(format!(
                "version: must be {CONFIG_VERSION}, got {}",
                self.version
            ));
        }
        let names = self.validate_services(&mut errors);
        self.validate_routes(&names, &mut errors);
        if errors.is_empty() {
            if let Err(e) =
                RouteTable::build(self.routes.iter().map(RouteSpec::from_route).zip(0..))
            {
                errors.push(format!("routes: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Checks every service, and that no two share a name; returns the names.
    fn validate_services(&self, errors: &mut Vec<String>) -> BTreeSet<&str> {
        let mut names = BTreeSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if !names.insert(service.name.as_str()) {
                errors.push(format!("{at}.name: duplicate service {:?}", service.name));
            }
            service.validate(&at, errors);
        }
        names
    }

    /// Checks every route, that no two share a name and that the services
    /// they name (`names`) exist.
    fn validate_routes(&self, names: &BTreeSet<&str>, errors: &mut Vec<String>) {
        let mut route_names = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !route_names.insert(route.name.as_str()) {
                errors.push(format!("{at}.name: duplicate route {:?}", route.name));
            }
            validate_route_services(route, &at, names, errors);
            route.validate(&at, errors);
            self.validate_hashed_header(route, &at, errors);
        }
    }

    /// A service hashing on a header with a '_' needs the routes to it to
    /// pass such headers on.
    fn validate_hashed_header(&self, route: &RouteConfig, at: &str, errors: &mut Vec<String>) {
        if let Some(name) = self
            .service(&route.service)
            .and_then(|s| s.load_balancer.hash_on.as_deref())
            .and_then(|key| key.strip_prefix("header:"))
            .filter(|name| name.contains('_') && !route.allow_underscore_headers)
        {
            errors.push(format!(
                "{at}: service {:?} hashes on header {name:?}, which this route drops (names with '_'); set allow_underscore_headers: true",
                route.service
            ));
        }
    }

    /// What changes when `self` is replaced by `next`.
    pub fn diff(&self, next: &GatewayConfig) -> Vec<Change> {
        let mut changes = diff_named(
            "service",
            self.services.iter().map(|s| (s.name.as_str(), s)),
            next.services.iter().map(|s| (s.name.as_str(), s)),
        );
        changes.extend(diff_named(
            "route",
            self.routes.iter().map(|r| (r.name.as_str(), r)),
            next.routes.iter().map(|r| (r.name.as_str(), r)),
        ));
        changes
    }
}

/// Checks that the services a route names (its target, its aggregate's
/// sources, its auth lookups) are among `names`.
fn validate_route_services(
    route: &RouteConfig,
    at: &str,
    names: &BTreeSet<&str>,
    errors: &mut Vec<String>,
) {
    match &route.aggregate {
        Some(aggregate) => aggregate.validate(
            &format!("{at}.aggregate"),
            &route_params(route.matcher.path.as_deref()),
            names,
            errors,
        ),
        None if route.service.is_empty() => {
            errors.push(format!("{at}: needs a service (or an aggregate)"));
        }
        None if !names.contains(route.service.as_str()) => {
            errors.push(format!("{at}.service: unknown service {:?}", route.service));
        }
        None => {}
    }
    for (key, lookup) in route.auth.iter().flat_map(|a| a.lookups()) {
        if !names.contains(lookup.service.as_str()) {
            errors.push(format!(
                "{at}.auth.{key}.service: unknown service {:?}",
                lookup.service
            ));
        }
    }
}
