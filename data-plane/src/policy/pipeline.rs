//! A route's policies, compiled section by section from its config when a
//! snapshot is built: the pipeline the proxy runs for that route. A policy
//! the route does not have is `None` and costs the proxy one check.

use crate::edge::security::PublicPaths;
use crate::policy::aggregate::Aggregate;
use crate::policy::authorization::RouteAuthz;
use crate::policy::cache::{CacheCounters, RouteCache};
use crate::policy::client_cert::ClientCertRequired;
use crate::policy::cors::Cors;
use crate::policy::ratelimit::RouteLimit;
use crate::policy::signature::RouteSignature;
use crate::policy::validation::RouteValidation;
use crate::policy::webhook::Webhook;
use gateway_common::config::RouteConfig;
use std::sync::Arc;
use std::time::Duration;

/// The compiled policies of one route.
#[derive(Debug)]
pub struct Pipeline {
    /// Access-token policy, when the route has one that requires a token.
    pub auth: Option<RouteAuth>,
    /// Client-certificate requirement, when the route has one.
    pub client_cert: Option<ClientCertRequired>,
    /// CORS policy answered by the gateway, when the route has one.
    pub cors: Option<Cors>,
    /// The sources of an aggregate route (answered by the gateway, never
    /// forwarded to its service).
    pub aggregate: Option<Arc<Aggregate>>,
    /// Webhook policy, when the route is a provider's webhook.
    pub webhook: Option<Webhook>,
    /// Request validation (JSON Schemas compiled), when the route has it.
    pub validation: Option<RouteValidation>,
    /// Response-cache policy, when the route has one.
    pub cache: Option<RouteCache>,
    /// Rate limit of the route.
    pub rate_limit: RouteLimit,
    /// HMAC request signatures, when the route requires them.
    pub signature: Option<RouteSignature>,
}

/// A route's authentication policy, compiled.
#[derive(Debug)]
pub struct RouteAuth {
    /// Paths that need no token.
    pub public_paths: PublicPaths,
    /// Whether an `X-API-Key` is accepted in place of a token.
    pub api_keys: bool,
    /// Permission, venue scoping and user details, when the route has any.
    pub authz: Option<Arc<RouteAuthz>>,
}

impl Pipeline {
    /// Compiles the policies of `route`, whose aggregate (compiled first:
    /// it decides the route's service) is `aggregate` and whose requests
    /// may take `timeout`; `cache_counters` gives its cache's counters.
    /// The error says why a validation schema does not compile.
    pub fn compile(
        route: &RouteConfig,
        aggregate: Option<Arc<Aggregate>>,
        timeout: Duration,
        cache_counters: impl FnOnce() -> CacheCounters,
    ) -> Result<Self, String> {
        Ok(Pipeline {
            auth: route
                .auth
                .as_ref()
                .filter(|a| a.required)
                .map(|a| RouteAuth {
                    public_paths: PublicPaths::new(&a.public_paths),
                    api_keys: a.api_keys,
                    authz: RouteAuthz::from_config(route, a),
                }),
            client_cert: ClientCertRequired::of(route),
            cors: route.cors.as_ref().map(Cors::from_config),
            aggregate,
            webhook: route.webhook.as_ref().map(Webhook::from_config),
            validation: RouteValidation::compile(route)?,
            cache: route
                .cache
                .as_ref()
                .map(|c| RouteCache::new(c, timeout, cache_counters())),
            rate_limit: RouteLimit::of(route),
            signature: route
                .signature
                .as_ref()
                .map(|config| RouteSignature::compile(&route.name, config)),
        })
    }
}
