//! The gateway's own session endpoints: `POST /auth/refresh` (refresh-token
//! rotation with reuse detection) and `POST /auth/logout` (revocation of
//! the access token, and optionally of its refresh-token family).
//!
//! Refresh tokens are signed with `JWT_REFRESH_SECRET` (never the access
//! secret) and carry `type: refresh`, `jti` and `family`. Each family has
//! one Redis hash holding the jti of its newest token; one Lua script
//! compares and rotates it atomically, so of two concurrent uses of one
//! token exactly one wins and the other is reuse. Reuse (a token older than
//! the family's newest) revokes the whole family: its refresh tokens and
//! every access token issued from it, on every data plane, through the
//! revocation set. Nothing is accepted without Redis: reuse could not be
//! detected, so the answer is 503.

use crate::edge::errors::GatewayError;
use crate::policy::auth::credentials::{self, unix_now, Credentials, TokenRef};
use crate::policy::auth::{bearer_token, AuthError, Verifier, LEEWAY_SECS};
use crate::shared_state::SharedState;
use crate::upstream::h1::response::ProxyBody;
use gateway_common::credentials::{self as layout, Push, Revocation};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Default path of the refresh endpoint.
pub const DEFAULT_REFRESH_PATH: &str = "/auth/refresh";
/// Default path of the logout endpoint.
pub const DEFAULT_LOGOUT_PATH: &str = "/auth/logout";
/// Largest body accepted by either endpoint.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Time a client gets to send that body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Claims copied from a refresh token into the tokens it is rotated into.
const CARRIED_CLAIMS: [&str; 4] = ["role", "permissions", "tier", "venue_id"];

/// Rotation: compare the family's newest jti and move it on, or detect
/// reuse and revoke the family (sorted set + push), in one step.
const ROTATE: &str = r#"
local member = 'f:' .. ARGV[3]
if redis.call('ZSCORE', KEYS[2], member) then return 'revoked' end
local current = redis.call('HGET', KEYS[1], 'current')
if current and current ~= ARGV[1] then
  redis.call('ZADD', KEYS[2], 'GT', ARGV[6], member)
  redis.call('PUBLISH', ARGV[7], ARGV[8])
  redis.call('HSET', KEYS[1], 'reused', ARGV[1])
  return 'reuse'
end
redis.call('HSET', KEYS[1], 'current', ARGV[2], 'sub', ARGV[4], 'tenant', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return 'ok'
"#;

/// What the endpoints are configured with.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// `JWT_REFRESH_SECRET` (at least 32 bytes, not `JWT_SECRET`).
    pub refresh_secret: String,
    /// `JWT_EXPIRES_IN`: lifetime of issued access tokens.
    pub access_ttl: Duration,
    /// `JWT_REFRESH_EXPIRES_IN`: lifetime of issued refresh tokens.
    pub refresh_ttl: Duration,
    /// `GW_AUTH_REFRESH_PATH`.
    pub refresh_path: String,
    /// `GW_AUTH_LOGOUT_PATH`.
    pub logout_path: String,
}

impl std::fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSettings")
            .field("refresh_secret", &"<redacted>")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("refresh_path", &self.refresh_path)
            .field("logout_path", &self.logout_path)
            .finish()
    }
}

/// The endpoints, built once at startup.
pub struct Sessions {
    settings: SessionSettings,
    access: Arc<Verifier>,
    access_key: EncodingKey,
    refresh_key: EncodingKey,
    refresh_decoding: DecodingKey,
    refresh_validation: Validation,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
    shared: Option<Arc<SharedState>>,
    credentials: Arc<Credentials>,
    rotate: redis::Script,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A refresh token's claims the gateway reads; the others it carries on.
#[derive(Debug, Deserialize)]
struct RefreshClaims {
    sub: String,
    tenant_id: String,
    #[serde(rename = "type")]
    token_type: String,
    jti: String,
    #[serde(default)]
    family: Option<String>,
    exp: u64,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Why a refresh or logout was refused.
#[derive(Debug)]
enum Refusal {
    /// 401 with this message, logged with this reason and severity.
    Unauthorized(&'static str, &'static str, &'static str),
    /// 400 (unreadable body).
    BadRequest(&'static str),
    /// 503: Redis is needed and not there.
    Unavailable,
    /// An access token refused by the verifier.
    Access(AuthError),
}

impl Sessions {
    /// Builds keys and rules once. `access` verifies access tokens (logout)
    /// and `jwt` signs the new ones.
    pub fn new(
        settings: SessionSettings,
        jwt: &crate::policy::auth::JwtSettings,
        access: Arc<Verifier>,
        shared: Option<Arc<SharedState>>,
        credentials: Arc<Credentials>,
    ) -> Self {
        let mut validation = Validation::new(jwt.algorithm);
        validation.algorithms = vec![jwt.algorithm];
        validation.leeway = LEEWAY_SECS;
        let mut required = vec!["exp", "sub", "jti"];
        match &jwt.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &jwt.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self {
            access_key: EncodingKey::from_secret(jwt.secret.as_bytes()),
            refresh_key: EncodingKey::from_secret(settings.refresh_secret.as_bytes()),
            refresh_decoding: DecodingKey::from_secret(settings.refresh_secret.as_bytes()),
            refresh_validation: validation,
            algorithm: jwt.algorithm,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            settings,
            access,
            shared,
            credentials,
            rotate: redis::Script::new(ROTATE),
        }
    }

    /// Answers `req` if it is a call of one of the endpoints; `Err` gives
    /// the request back untouched.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        peer: &HeaderValue,
        request_id: Option<&HeaderValue>,
    ) -> Result<Response<ProxyBody>, Request<Incoming>> {
        let path = req.uri().path();
        let refresh = path == self.settings.refresh_path;
        if !(refresh || path == self.settings.logout_path) {
            return Err(req);
        }
        if req.method() != Method::POST {
            return Ok(GatewayError::MethodNotAllowed.response(
                &format!("Method {} is not allowed on {path}", req.method()),
                request_id,
            ));
        }
        let ip = peer.to_str().unwrap_or("");
        let outcome = if refresh {
            self.refresh(req, ip).await
        } else {
            self.logout(req).await
        };
        Ok(match outcome {
            Ok(response) => response,
            Err(refusal) => self.refusal(refusal, refresh, ip, request_id),
        })
    }

    fn refusal(
        &self,
        refusal: Refusal,
        refresh: bool,
        ip: &str,
        request_id: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        let endpoint = if refresh { "refresh" } else { "logout" };
        let log_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
        match refusal {
            Refusal::Unauthorized(message, reason, severity) => {
                crate::security_event!(
                    "token_refresh_failed",
                    severity,
                    reason,
                    endpoint,
                    ip,
                    request_id = log_id,
                    "session endpoint refused a token"
                );
                GatewayError::Unauthenticated.response(message, request_id)
            }
            Refusal::Access(error) => {
                crate::security_event!(
                    "authentication_failed",
                    error.severity(),
                    reason = error.reason(),
                    endpoint,
                    ip,
                    request_id = log_id,
                    "session endpoint refused an access token"
                );
                error.response(request_id)
            }
            Refusal::BadRequest(message) => GatewayError::BadRequest.response(message, request_id),
            Refusal::Unavailable => GatewayError::ServiceUnavailable.response(
                "Service unavailable: token store (Redis) is not reachable",
                request_id,
            ),
        }
    }

    fn redis(&self) -> Result<(&SharedState, redis::aio::ConnectionManager), Refusal> {
        let shared = self.shared.as_deref().ok_or(Refusal::Unavailable)?;
        let conn = shared.connection().ok_or(Refusal::Unavailable)?;
        Ok((shared, conn))
    }

    async fn refresh(
        &self,
        req: Request<Incoming>,
        ip: &str,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let (shared, mut conn) = self.redis()?;
        let body = read_json(req).await?;
        let token = body
            .get("refreshToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Unauthorized(
                "Refresh token required",
                "missing_refresh_token",
                "low",
            ))?;
        let claims = self.verify_refresh(token)?;
        let family = claims.family.clone().unwrap_or_else(|| claims.jti.clone());
        let now = unix_now();
        let new_jti = uuid::Uuid::new_v4().to_string();
        // The family outlives its newest token, whichever lifetime it has.
        let family_ttl = self
            .settings
            .refresh_ttl
            .as_secs()
            .max(claims.exp.saturating_sub(now))
            + LEEWAY_SECS;
        let revoked_until = now + family_ttl + self.settings.access_ttl.as_secs();
        let push = Push::Revoked {
            revocation: Revocation::Family(family.clone()),
            until: revoked_until,
        };
        let mut invocation = self.rotate.prepare_invoke();
        invocation
            .key(layout::family_key(shared.prefix(), &family))
            .key(layout::revoked_key(shared.prefix()))
            .arg(&claims.jti)
            .arg(&new_jti)
            .arg(&family)
            .arg(&claims.sub)
            .arg(&claims.tenant_id)
            .arg(revoked_until)
            .arg(layout::channel(shared.prefix()))
            .arg(push.encode())
            .arg(family_ttl * 1000);
        let outcome = tokio::time::timeout(
            shared.timeout(),
            invocation.invoke_async::<String>(&mut conn),
        )
        .await;
        let verdict = match outcome {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "token refresh: Redis call failed");
                shared.record(false);
                return Err(Refusal::Unavailable);
            }
            Err(_) => {
                shared.record(false);
                return Err(Refusal::Unavailable);
            }
        };
        shared.record(true);
        match verdict.as_str() {
            "ok" => {}
            "reuse" => {
                self.credentials
                    .revoke_locally(Revocation::Family(family.clone()), revoked_until);
                crate::security_event!(
                    "refresh_token_reuse",
                    "critical",
                    user_id = %claims.sub,
                    tenant_id = %claims.tenant_id,
                    family = %family,
                    jti = %claims.jti,
                    ip,
                    "a rotated refresh token was used again; the whole token family is revoked"
                );
                return Err(Refusal::Unauthorized(
                    "Invalid refresh token",
                    "refresh_token_reuse",
                    "critical",
                ));
            }
            _ => {
                return Err(Refusal::Unauthorized(
                    "Invalid refresh token",
                    "revoked_refresh_token",
                    "high",
                ))
            }
        }
        let (access, refresh) = self.issue(&claims, &family, &new_jti, now).map_err(|e| {
            tracing::error!(error = %e, "token refresh: cannot sign tokens");
            Refusal::Unavailable
        })?;
        tracing::info!(user_id = %claims.sub, tenant_id = %claims.tenant_id, family = %family, "token refreshed");
        Ok(json_response(
            StatusCode::OK,
            &json!({ "accessToken": access, "refreshToken": refresh }),
        ))
    }

    fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, Refusal> {
        let data = jsonwebtoken::decode::<RefreshClaims>(
            token,
            &self.refresh_decoding,
            &self.refresh_validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => {
                Refusal::Unauthorized("Refresh token has expired", "expired_refresh_token", "low")
            }
            _ => Refusal::Unauthorized("Invalid refresh token", "invalid_refresh_token", "high"),
        })?;
        let claims = data.claims;
        if claims.token_type != "refresh" {
            return Err(Refusal::Unauthorized(
                "Invalid token type",
                "wrong_token_type",
                "high",
            ));
        }
        if claims.sub.is_empty() || claims.tenant_id.is_empty() || claims.jti.is_empty() {
            return Err(Refusal::Unauthorized(
                "Invalid refresh token",
                "invalid_refresh_token",
                "high",
            ));
        }
        Ok(claims)
    }

    /// Signs the new access and refresh tokens of `family`.
    fn issue(
        &self,
        claims: &RefreshClaims,
        family: &str,
        new_jti: &str,
        now: u64,
    ) -> Result<(String, String), jsonwebtoken::errors::Error> {
        let mut base = Map::new();
        base.insert("sub".into(), json!(claims.sub));
        base.insert("tenant_id".into(), json!(claims.tenant_id));
        base.insert("family".into(), json!(family));
        base.insert("iat".into(), json!(now));
        for name in CARRIED_CLAIMS {
            if let Some(value) = claims.rest.get(name) {
                base.insert(name.into(), value.clone());
            }
        }
        if let Some(iss) = &self.issuer {
            base.insert("iss".into(), json!(iss));
        }
        if let Some(aud) = &self.audience {
            base.insert("aud".into(), json!(aud));
        }
        let mut access = base.clone();
        access.insert("type".into(), json!("access"));
        access.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        access.insert(
            "exp".into(),
            json!(now + self.settings.access_ttl.as_secs()),
        );
        let mut refresh = base;
        refresh.insert("type".into(), json!("refresh"));
        refresh.insert("jti".into(), json!(new_jti));
        refresh.insert(
            "exp".into(),
            json!(now + self.settings.refresh_ttl.as_secs()),
        );
        let header = Header::new(self.algorithm);
        Ok((
            jsonwebtoken::encode(&header, &access, &self.access_key)?,
            jsonwebtoken::encode(&header, &refresh, &self.refresh_key)?,
        ))
    }

    async fn logout(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Refusal> {
        let (shared, _) = self.redis()?;
        let token = bearer_token(req.headers())
            .ok_or(Refusal::Access(AuthError::Missing))?
            .to_string();
        self.access.verify(&token).map_err(Refusal::Access)?;
        let claims = TokenRef::of(&token).ok_or(Refusal::Access(AuthError::Invalid))?;
        let now = unix_now();
        let access_until = claims
            .exp
            .unwrap_or(now)
            .max(now + self.settings.access_ttl.as_secs())
            + LEEWAY_SECS;
        let mut revocations = Vec::with_capacity(2);
        if let Some(revocation) = claims.revocation(now) {
            revocations.push((revocation, access_until));
        }
        let body = read_json(req).await?;
        if let Some(refresh) = body.get("refreshToken").and_then(Value::as_str) {
            let refresh = self.verify_refresh(refresh)?;
            if Some(&refresh.sub) != claims.sub.as_ref() {
                return Err(Refusal::Unauthorized(
                    "Refresh token belongs to another subject",
                    "logout_subject_mismatch",
                    "high",
                ));
            }
            let family = refresh.family.unwrap_or(refresh.jti);
            let until = now
                + self
                    .settings
                    .refresh_ttl
                    .as_secs()
                    .max(refresh.exp.saturating_sub(now))
                + self.settings.access_ttl.as_secs()
                + LEEWAY_SECS;
            revocations.push((Revocation::Family(family), until));
        }
        credentials::revoke(shared, &self.credentials, &revocations)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "logout: cannot record the revocation");
                Refusal::Unavailable
            })?;
        tracing::info!(
            user_id = claims.sub.as_deref().unwrap_or(""),
            revoked = revocations.len(),
            "logged out"
        );
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

/// Reads a small JSON object body (an empty body is an empty object).
async fn read_json(req: Request<Incoming>) -> Result<Map<String, Value>, Refusal> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => return Err(Refusal::BadRequest("Request body could not be read")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::BadRequest("Request body must be a JSON object")),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
