//! Authorisation of an authenticated caller, right after its token is
//! verified: the route's permission (role table or the token's
//! `permissions` claim, with `*`, `resource:*` and `-own`), venue scoping
//! of venue-scoped roles (asked of the venue service), and the caller's
//! current details from the auth service when the route wants them.
//!
//! Every doubt fails closed: a lookup that cannot be answered is a 503,
//! never an allow.

pub mod rbac;
pub mod user_details;
pub mod venue_access;

use crate::edge::errors::GatewayError;
use crate::policy::auth::credentials::{ApiKeyIdentity, Caller};
use crate::policy::auth::Identity;
use crate::policy::authorization::rbac::{Requirement, Role};
use crate::policy::authorization::user_details::{UserDetailsError, UserDirectory};
use crate::policy::authorization::venue_access::VenueAccess;
use crate::shared_state::SharedState;
use crate::upstream::h1::response::ProxyBody;
use crate::upstream::service::CurrentServices;
use gateway_common::aggregation::route_params;
use gateway_common::config::{AuthConfig, LookupConfig, RouteConfig};
use http::{HeaderName, HeaderValue, Request, Response};
use std::sync::Arc;

/// `x-venue-id`: the venue a request acts on, when the path does not say.
pub const X_VENUE_ID: HeaderName = HeaderName::from_static("x-venue-id");

/// A route's authorisation policy, compiled once per config.
#[derive(Debug)]
pub struct RouteAuthz {
    requirement: Option<Requirement>,
    /// Index of each path parameter among the path's segments.
    params: Vec<(String, usize)>,
    user_details: bool,
    venue_access: LookupConfig,
    user_lookup: LookupConfig,
}

impl RouteAuthz {
    /// The policy of `route`, `None` when it has nothing to authorise.
    pub fn from_config(route: &RouteConfig, auth: &AuthConfig) -> Option<Arc<Self>> {
        let requirement = Requirement::from_config(auth);
        if requirement.is_none() && !auth.user_details {
            return None;
        }
        let params = route.matcher.path.as_deref().map_or_else(Vec::new, |path| {
            let named = route_params(Some(path));
            path.split('/')
                .skip(1)
                .enumerate()
                .filter_map(|(i, s)| {
                    let name = s.strip_prefix('{')?.strip_suffix('}')?;
                    named.contains(&name).then(|| (name.to_owned(), i))
                })
                .collect()
        });
        Some(Arc::new(Self {
            requirement,
            params,
            user_details: auth.user_details,
            venue_access: auth.venue_access.clone(),
            user_lookup: auth.user_lookup.clone(),
        }))
    }

    /// The value of path parameter `name` in `path` (which the route matched).
    fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let (_, index) = self.params.iter().find(|(n, _)| n == name)?;
        path.split('/')
            .skip(1)
            .nth(*index)
            .filter(|v| !v.is_empty())
    }
}

/// Decides whether authenticated callers may go on; holds the caches.
#[derive(Debug, Clone)]
pub struct Authorizer {
    venues: VenueAccess,
    users: UserDirectory,
}

/// The facts about one request the decision needs.
struct Ask<'a> {
    route: &'a str,
    method: &'a str,
    path: &'a str,
    peer: &'a HeaderValue,
    request_id: Option<&'a HeaderValue>,
}

impl Authorizer {
    /// An authoriser sharing user details through `shared` (when given).
    pub fn new(shared: Option<Arc<SharedState>>) -> Self {
        Self {
            venues: VenueAccess::default(),
            users: UserDirectory::new(shared),
        }
    }

    /// [`Self::authorize`] for either kind of caller. An API key has no
    /// user: its scopes are its grants, and a route that needs user details
    /// refuses it.
    #[allow(clippy::too_many_arguments)]
    pub async fn authorize_caller<B>(
        &self,
        services: &dyn CurrentServices,
        policy: &RouteAuthz,
        route: &str,
        caller: Caller,
        req: &Request<B>,
        peer: &HeaderValue,
        request_id: Option<&HeaderValue>,
    ) -> Result<Caller, Response<ProxyBody>> {
        match caller {
            Caller::Token(identity) => self
                .authorize(services, policy, route, identity, req, peer, request_id)
                .await
                .map(Caller::Token),
            Caller::ApiKey(key) => {
                let refused =
                    refuse_key(policy, route, &key, req.method().as_str(), peer, request_id);
                match refused {
                    Some(refused) => Err(refused),
                    None => Ok(Caller::ApiKey(key)),
                }
            }
        }
    }

    /// Lets `identity` through on route `route` under `policy` (with its
    /// role updated from the user's details), or the refusal to answer;
    /// lookups go to the services in force when they are made.
    #[allow(clippy::too_many_arguments)]
    pub async fn authorize<B>(
        &self,
        services: &dyn CurrentServices,
        policy: &RouteAuthz,
        route: &str,
        identity: Identity,
        req: &Request<B>,
        peer: &HeaderValue,
        request_id: Option<&HeaderValue>,
    ) -> Result<Identity, Response<ProxyBody>> {
        let ask = Ask {
            route,
            method: req.method().as_str(),
            path: req.uri().path(),
            peer,
            request_id,
        };
        let venue_header = req.headers().get(X_VENUE_ID).and_then(|v| v.to_str().ok());
        self.decide(services, policy, identity, &ask, venue_header)
            .await
    }

    async fn decide(
        &self,
        services: &dyn CurrentServices,
        policy: &RouteAuthz,
        mut identity: Identity,
        ask: &Ask<'_>,
        venue_header: Option<&str>,
    ) -> Result<Identity, Response<ProxyBody>> {
        let sub = identity.user_id.to_str().unwrap_or("").to_owned();
        if policy.user_details {
            identity = self
                .with_details(services, policy, identity, &sub, ask)
                .await?;
        }
        let Some(requirement) = &policy.requirement else {
            return Ok(identity);
        };
        let Some(permission) = requirement.for_method(ask.method) else {
            return Ok(identity);
        };
        let role_name = identity
            .role
            .as_ref()
            .and_then(|r| r.to_str().ok())
            .unwrap_or("");
        let role = Role::parse(role_name);
        // The seed's rule: the token's permissions claim, else the role's.
        let claimed: Vec<&str> = identity
            .permissions
            .as_ref()
            .and_then(|p| p.to_str().ok())
            .map(|p| p.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let granted: &[&str] = if claimed.is_empty() {
            role.map_or(&[], Role::permissions)
        } else {
            &claimed
        };
        let owns = requirement
            .owner_param
            .as_deref()
            .and_then(|p| policy.param(ask.path, p))
            .is_some_and(|owner| owner == sub);
        if !rbac::allows(granted, permission, owns) {
            crate::security_event!(
                "unauthorized_access_attempt",
                "medium",
                user_id = %sub,
                role = role_name,
                permission,
                route = %ask.route,
                path = ask.path,
                ip = ask.peer.to_str().unwrap_or(""),
                request_id = request_id_str(ask.request_id),
                "authorization failed: insufficient permissions"
            );
            return Err(GatewayError::Forbidden.response(
                &format!("Insufficient permissions: {permission} required"),
                ask.request_id,
            ));
        }
        let venue = match &requirement.venue_param {
            Some(param) => policy.param(ask.path, param),
            None => venue_header,
        };
        if let (Some(venue), Some(true)) = (venue, role.map(Role::venue_scoped)) {
            self.check_venue(services, policy, &sub, venue, permission, ask)
                .await?;
        }
        Ok(identity)
    }

    async fn check_venue(
        &self,
        services: &dyn CurrentServices,
        policy: &RouteAuthz,
        sub: &str,
        venue: &str,
        permission: &str,
        ask: &Ask<'_>,
    ) -> Result<(), Response<ProxyBody>> {
        let snapshot = services.current();
        match self
            .venues
            .check(&*snapshot, &policy.venue_access, sub, venue, permission)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                crate::security_event!(
                    "venue_access_denied",
                    "medium",
                    user_id = sub,
                    venue_id = venue,
                    permission,
                    route = %ask.route,
                    path = ask.path,
                    ip = ask.peer.to_str().unwrap_or(""),
                    request_id = request_id_str(ask.request_id),
                    "authorization failed: venue access denied"
                );
                Err(GatewayError::Forbidden.response("Access denied to this venue", ask.request_id))
            }
            Err(e) => {
                tracing::warn!(error = %e, route = %ask.route, request_id = request_id_str(ask.request_id), "venue access could not be checked; refusing");
                Err(unavailable(&policy.venue_access.service, ask.request_id))
            }
        }
    }

    /// Loads the caller's details: an unknown user is not authenticated,
    /// a disabled one is refused, and its current role replaces the token's.
    async fn with_details(
        &self,
        services: &dyn CurrentServices,
        policy: &RouteAuthz,
        mut identity: Identity,
        sub: &str,
        ask: &Ask<'_>,
    ) -> Result<Identity, Response<ProxyBody>> {
        let snapshot = services.current();
        let details = match self.users.get(&*snapshot, &policy.user_lookup, sub).await {
            Ok(details) => details,
            Err(UserDetailsError::Unknown) => {
                crate::security_event!(
                    "unknown_user",
                    "high",
                    user_id = sub,
                    route = %ask.route,
                    ip = ask.peer.to_str().unwrap_or(""),
                    request_id = request_id_str(ask.request_id),
                    "valid token of a user the auth service does not know"
                );
                return Err(
                    GatewayError::Unauthenticated.response("User not found", ask.request_id)
                );
            }
            Err(UserDetailsError::Unavailable(reason)) => {
                tracing::warn!(error = %reason, route = %ask.route, request_id = request_id_str(ask.request_id), "user details unavailable; refusing");
                return Err(unavailable(&policy.user_lookup.service, ask.request_id));
            }
        };
        if !details.enabled() {
            crate::security_event!(
                "disabled_user_access",
                "high",
                user_id = sub,
                route = %ask.route,
                ip = ask.peer.to_str().unwrap_or(""),
                request_id = request_id_str(ask.request_id),
                "request of a disabled account"
            );
            return Err(
                GatewayError::Forbidden.response("User account is disabled", ask.request_id)
            );
        }
        if let Some(role) = details
            .role
            .as_deref()
            .and_then(|r| HeaderValue::from_str(r).ok())
        {
            identity.role = Some(role);
        }
        Ok(identity)
    }
}

fn unavailable(service: &str, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
    GatewayError::AuthorizationUnavailable
        .response(&format!("Service unavailable: {service}"), request_id)
}

fn request_id_str(id: Option<&HeaderValue>) -> &str {
    id.and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Checks an API key against the route's policy (`None`: allowed): the
/// permission the method needs must be granted by one of the key's scopes
/// (ownership never applies: a key is no user), and routes needing user
/// details refuse keys.
fn refuse_key(
    policy: &RouteAuthz,
    route: &str,
    key: &ApiKeyIdentity,
    method: &str,
    peer: &HeaderValue,
    request_id: Option<&HeaderValue>,
) -> Option<Response<ProxyBody>> {
    let scopes: Vec<&str> = key
        .scopes
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let needed = policy
        .requirement
        .as_ref()
        .and_then(|r| r.for_method(method));
    let refused = if policy.user_details {
        Some("This route needs a user; an API key cannot be used".to_string())
    } else {
        needed
            .filter(|p| !rbac::allows(&scopes, p, false))
            .map(|p| format!("Insufficient permissions: {p} required"))
    };
    let message = refused?;
    crate::security_event!(
        "unauthorized_access_attempt",
        "medium",
        api_key_id = key.id.to_str().unwrap_or(""),
        route,
        ip = peer.to_str().unwrap_or(""),
        request_id = request_id_str(request_id),
        "authorization failed: API key without the scope the route needs"
    );
    Some(GatewayError::Forbidden.response(&message, request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml_auth: serde_json::Value, path: &str) -> Option<Arc<RouteAuthz>> {
        let route: RouteConfig = serde_json::from_value(serde_json::json!({
            "name": "r", "service": "s", "match": { "path": path }, "auth": yaml_auth,
        }))
        .unwrap();
        RouteAuthz::from_config(&route, route.auth.as_ref().unwrap())
    }

    #[test]
    fn only_routes_with_something_to_authorise_get_a_policy() {
        assert!(route(serde_json::json!({}), "/a").is_none());
        assert!(route(serde_json::json!({ "user_details": true }), "/a").is_some());
        assert!(route(serde_json::json!({ "permission": "a:b" }), "/a").is_some());
    }

    #[test]
    fn path_parameters_are_read_from_the_matched_path() {
        let policy = route(
            serde_json::json!({ "permission": "tickets:view", "owner_param": "userId" }),
            "/api/v1/users/{userId}/venues/{venueId}/tickets",
        )
        .unwrap();
        let path = "/api/v1/users/u-1/venues/v-9/tickets";
        assert_eq!(policy.param(path, "userId"), Some("u-1"));
        assert_eq!(policy.param(path, "venueId"), Some("v-9"));
        assert_eq!(policy.param(path, "eventId"), None);
        assert_eq!(
            policy.param("/api/v1/users//venues/v/tickets", "userId"),
            None
        );
    }

    fn key(scopes: Option<&str>) -> ApiKeyIdentity {
        ApiKeyIdentity {
            id: HeaderValue::from_static("k-1"),
            tenant: HeaderValue::from_static("t-1"),
            scopes: scopes.map(|s| HeaderValue::from_str(s).unwrap()),
        }
    }

    #[test]
    fn api_keys_are_authorised_by_their_scopes() {
        let peer = HeaderValue::from_static("127.0.0.1");
        let policy = route(
            serde_json::json!({ "permissions": { "GET": "events:view", "POST": "events:create" } }),
            "/e",
        )
        .unwrap();
        let allowed =
            |scopes, method| refuse_key(&policy, "r", &key(scopes), method, &peer, None).is_none();
        assert!(allowed(Some("events:view"), "GET"));
        assert!(allowed(Some("tickets:view, events:*"), "POST"));
        assert!(!allowed(Some("events:view"), "POST"));
        assert!(!allowed(None, "GET"));
        let refused = refuse_key(&policy, "r", &key(Some("x:y")), "GET", &peer, None).unwrap();
        assert_eq!(refused.status(), http::StatusCode::FORBIDDEN);
        let details = route(serde_json::json!({ "user_details": true }), "/u").unwrap();
        assert!(refuse_key(&details, "r", &key(Some("*")), "GET", &peer, None).is_some());
    }
}
