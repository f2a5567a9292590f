//! Access-token authentication: HS256/384/512 JWTs signed with
//! `JWT_SECRET`, and/or RS*/PS*/ES256/ES384 JWTs whose public keys come from
//! a JWKS URL (`jwks`), checked for signature, `exp`/`nbf` (with a small
//! leeway), `iss` and `aud` when configured, `type == "access"` and a
//! `tenant_id`.
//!
//! Key selection is by the token's `alg`, and each algorithm has exactly
//! one possible key source: the HMAC algorithm configured with
//! `JWT_SECRET`, or an asymmetric one with the JWKS key of the token's
//! `kid` whose type (and `alg`, when the key names one) fits. An HS token
//! is never checked against a public key (the classic confusion attack),
//! nor an RS/ES token against the secret; `alg: none` is not an algorithm.
//!
//! The keys and the validation rules are built once at startup; verifying a
//! token costs one signature check, two base64 decodes and two JSON parses.
//!
//! Clients send the same token with every request until it expires, so a
//! verified token's identity is kept ([`VERIFIED_CACHE_BYTES`] in all, at
//! most [`VERIFIED_TTL`] each), keyed by the token's exact text: a repeat
//! costs one hash lookup and an `exp` comparison instead of the signature
//! check (what Envoy's `jwt_cache_config` does). Any change to a token is a
//! different key and is verified from scratch; tokens that fail are never
//! kept; a token signed with a JWKS key is taken from the cache only while
//! that very key is still in the key set; revocation is checked by the
//! caller on every request, cached or not.

pub mod credentials;
pub mod jwks;
pub mod session;

use crate::edge::errors::GatewayError;
use crate::policy::auth::jwks::{JwksKeys, KeyError, PublicKey};
use crate::upstream::h1::response::ProxyBody;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Room for verified tokens, in bytes (each entry weighs its token's length
/// plus a fixed share for its identity).
pub const VERIFIED_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Longest a verified token is kept before being verified again.
pub const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Tokens longer than this are verified every time rather than kept.
const LONGEST_CACHED_TOKEN: usize = 4096;

pub use crate::headers::{
    IDENTITY_HEADERS, X_TENANT_ID, X_TENANT_SOURCE, X_USER_ID, X_USER_PERMISSIONS, X_USER_ROLE,
    X_USER_TIER,
};

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// What the data plane verifies tokens with.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The shared HMAC secret (at least 32 bytes).
    pub secret: String,
    /// The accepted algorithm (`HS256`, `HS384` or `HS512`).
    pub algorithm: Algorithm,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("secret", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Reads `JWT_ALGORITHM`: only the HMAC family is supported with a shared
/// secret.
pub fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    match text.trim() {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        other => Err(format!(
            "JWT_ALGORITHM {other:?} is not supported: use HS256, HS384 or HS512"
        )),
    }
}

/// Verifies access tokens; built once from [`JwtSettings`] and/or a JWKS
/// key set.
pub struct Verifier {
    /// The `JWT_SECRET` key and its one algorithm, when set.
    hmac: Option<(Algorithm, DecodingKey)>,
    /// Public keys from the JWKS URL, when set.
    jwks: Option<Arc<JwksKeys>>,
    /// The rules, one per accepted algorithm (jsonwebtoken wants the
    /// algorithm list to fit the key).
    validations: Vec<(Algorithm, Validation)>,
    /// Tokens verified lately, by their text.
    verified: moka::sync::Cache<Arc<str>, Arc<Verified>, ahash::RandomState>,
}

/// The weight of one kept token: its text plus a share for its identity.
fn weigh_verified(token: &Arc<str>, _: &Arc<Verified>) -> u32 {
    u32::try_from(token.len() + 512).unwrap_or(u32::MAX)
}

/// What a successful verification found out, kept for the token's repeats.
struct Verified {
    identity: Identity,
    /// `exp`, in seconds since the epoch.
    expires: u64,
    /// The JWKS key that checked the signature (`None`: `JWT_SECRET`).
    key: Option<Arc<PublicKey>>,
    /// The token's `alg` and `kid`, to look that key up again.
    alg: Algorithm,
    kid: Option<Box<str>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.validations.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

/// The claims the gateway reads.
#[derive(Debug, Deserialize)]
struct Claims {
    /// Required by the validation rules, so always there once verified.
    #[serde(default)]
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, rename = "type")]
    token_type: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    tier: Option<String>,
}

/// A verified caller, as header values ready to go upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub user_id: HeaderValue,
    /// `tenant_id`.
    pub tenant_id: HeaderValue,
    /// `role`, when the token has one.
    pub role: Option<HeaderValue>,
    /// `permissions` joined with `,`, when the token has them.
    pub permissions: Option<HeaderValue>,
    /// `tier`, when the token names one of the known tiers (rate limits).
    pub tier: Option<HeaderValue>,
}

impl Identity {
    /// Sets the identity headers (the client's were removed before).
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.insert(X_USER_ID, self.user_id);
        headers.insert(X_TENANT_ID, self.tenant_id);
        headers.insert(X_TENANT_SOURCE, HeaderValue::from_static("jwt"));
        if let Some(role) = self.role {
            headers.insert(X_USER_ROLE, role);
        }
        if let Some(permissions) = self.permissions {
            headers.insert(X_USER_PERMISSIONS, permissions);
        }
        if let Some(tier) = self.tier {
            headers.insert(X_USER_TIER, tier);
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a well-formed JWT, bad signature, or a refused algorithm.
    Invalid,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not name the configured audience.
    WrongAudience,
    /// `type` is not `access` (e.g. a refresh token).
    WrongType,
    /// No `tenant_id` claim.
    MissingTenant,
    /// No `sub` claim, or a claim that cannot be a header value.
    BadSubject,
    /// The route requires a token but the data plane has no `JWT_SECRET`.
    NotConfigured,
    /// The token was revoked (logout, refresh-token reuse).
    Revoked,
    /// An `X-API-Key` that is unknown or revoked.
    InvalidApiKey,
    /// The token names a `kid` the key set does not have (yet).
    UnknownKey,
    /// The token needs the JWKS keys and none could be fetched yet (503).
    KeysUnavailable,
}

impl AuthError {
    /// For people (also the `error_description`).
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "Missing or invalid authorization header",
            Self::Invalid => "Invalid token",
            Self::Expired => "Token has expired",
            Self::NotYetValid => "Token is not yet valid",
            Self::WrongIssuer => "Invalid token issuer",
            Self::WrongAudience => "Invalid token audience",
            Self::WrongType => "Invalid token type",
            Self::MissingTenant => "Invalid token - missing tenant context",
            Self::BadSubject => "Invalid token subject",
            Self::NotConfigured => "Authentication is not configured on this gateway",
            Self::Revoked => "Token has been revoked",
            Self::InvalidApiKey => "Invalid API key",
            Self::UnknownKey => "Invalid token - unknown signing key",
            Self::KeysUnavailable => "Token signing keys are not available; try again later",
        }
    }

    /// Short name for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Invalid => "invalid_token",
            Self::Expired => "expired_token",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::WrongType => "wrong_token_type",
            Self::MissingTenant => "token_missing_tenant",
            Self::BadSubject => "bad_subject",
            Self::NotConfigured => "auth_not_configured",
            Self::Revoked => "revoked_token",
            Self::InvalidApiKey => "invalid_api_key",
            Self::UnknownKey => "unknown_signing_key",
            Self::KeysUnavailable => "signing_keys_unavailable",
        }
    }

    /// Severity of the security event, as the seed grades them.
    pub fn severity(self) -> &'static str {
        match self {
            Self::Missing | Self::Expired | Self::NotYetValid => "low",
            Self::NotConfigured | Self::KeysUnavailable => "critical",
            Self::UnknownKey => "medium",
            Self::WrongType
            | Self::MissingTenant
            | Self::Invalid
            | Self::Revoked
            | Self::InvalidApiKey => "high",
            Self::WrongIssuer | Self::WrongAudience | Self::BadSubject => "medium",
        }
    }

    /// The 401 answer: the seed's JSON body (`AUTHENTICATION_ERROR`) and a
    /// `WWW-Authenticate: Bearer` challenge (RFC 6750: without an error
    /// code when no token was sent).
    pub fn response(self, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
        if self == Self::KeysUnavailable {
            // The gateway's problem, not the client's: 503, retry soon.
            let mut response = GatewayError::AuthUnavailable.response(self.message(), request_id);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        }
        let mut response = GatewayError::Unauthenticated.response(self.message(), request_id);
        let challenge = match self {
            Self::Missing => HeaderValue::from_static("Bearer realm=\"gateway\""),
            _ => {
                let text = format!(
                    "Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"{}\"",
                    self.message()
                );
                HeaderValue::from_str(&text)
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
            }
        };
        response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        response
    }
}

impl Verifier {
    /// Builds the HMAC key and the rules once.
    pub fn new(settings: &JwtSettings) -> Self {
        Self::build(Some(settings), None)
    }

    /// A verifier of HMAC tokens (`hmac`, when given) and of asymmetric
    /// tokens with the keys of `jwks` (when given). `iss`/`aud` come from
    /// `hmac`, else from the JWKS settings.
    pub fn build(hmac: Option<&JwtSettings>, jwks: Option<Arc<JwksKeys>>) -> Self {
        let (issuer, audience) = match (hmac, &jwks) {
            (Some(s), _) => (s.issuer.clone(), s.audience.clone()),
            (None, Some(j)) => (j.settings().issuer.clone(), j.settings().audience.clone()),
            (None, None) => (None, None),
        };
        let mut algorithms: Vec<Algorithm> = hmac.iter().map(|s| s.algorithm).collect();
        if jwks.is_some() {
            algorithms.extend(crate::policy::auth::jwks::ALGORITHMS);
        }
        let validations = algorithms
            .into_iter()
            .map(|alg| (alg, validation(alg, issuer.as_deref(), audience.as_deref())))
            .collect();
        let verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_CACHE_BYTES)
            .weigher(weigh_verified)
            .time_to_live(VERIFIED_TTL)
            // Keyed randomly per process; about five times cheaper than
            // SipHash on a token's couple of hundred bytes.
            .build_with_hasher(ahash::RandomState::new());
        Self {
            hmac: hmac.map(|s| (s.algorithm, DecodingKey::from_secret(s.secret.as_bytes()))),
            jwks,
            validations,
            verified,
        }
    }

    /// The key and rules for a token signed with `alg` and naming `kid`.
    fn select(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<(KeyRef<'_>, &Validation), AuthError> {
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::Invalid)?;
        if let Some((hmac_alg, key)) = &self.hmac {
            if *hmac_alg == alg {
                return Ok((KeyRef::Borrowed(key), validation));
            }
        }
        let jwks = self.jwks.as_ref().ok_or(AuthError::Invalid)?;
        match jwks.select(kid, alg) {
            Ok(key) => Ok((KeyRef::Shared(key), validation)),
            Err(KeyError::Unavailable) => Err(AuthError::KeysUnavailable),
            Err(KeyError::UnknownKeyId) => Err(AuthError::UnknownKey),
            Err(KeyError::NoKeyId | KeyError::WrongAlgorithm) => Err(AuthError::Invalid),
        }
    }

    /// Verifies the bearer token of `headers`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let token = bearer_token(headers).ok_or(AuthError::Missing)?;
        self.verify(token)
    }

    /// Verifies one compact JWT: from the cache of verified tokens when it
    /// was verified lately (its `exp` checked again), else in full.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some(verified) = self.verified.get(token) {
            match self.still_valid(&verified) {
                Some(Ok(identity)) => return Ok(identity),
                Some(Err(expired)) => {
                    self.verified.invalidate(token);
                    return Err(expired);
                }
                None => self.verified.invalidate(token),
            }
        }
        let verified = self.verify_in_full(token)?;
        let identity = verified.identity.clone();
        if token.len() <= LONGEST_CACHED_TOKEN {
            self.verified.insert(token.into(), Arc::new(verified));
        }
        Ok(identity)
    }

    /// Verifies one compact JWT in full, as on its first sight, neither
    /// reading nor filling the cache of verified tokens.
    pub fn verify_uncached(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_in_full(token).map(|verified| verified.identity)
    }

    /// The identity of a token verified before, if that verification still
    /// holds: `Some(Err(Expired))` once `exp` (plus leeway) has passed,
    /// `None` when its JWKS key is no longer the one of its `kid`.
    fn still_valid(&self, verified: &Verified) -> Option<Result<Identity, AuthError>> {
        if let Some(used) = &verified.key {
            let jwks = self.jwks.as_ref()?;
            let current = jwks.select(verified.kid.as_deref(), verified.alg).ok()?;
            if !Arc::ptr_eq(used, &current) {
                return None;
            }
        }
        if verified.expires + LEEWAY_SECS < jsonwebtoken::get_current_timestamp() {
            return Some(Err(AuthError::Expired));
        }
        Some(Ok(verified.identity.clone()))
    }

    /// Verifies one compact JWT from scratch.
    fn verify_in_full(&self, token: &str) -> Result<Verified, AuthError> {
        // The header is read first only to pick the key; decode reads and
        // checks it again against the key's rules.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let (key, validation) = self.select(header.alg, header.kid.as_deref())?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key.get(), validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                        AuthError::WrongIssuer
                    }
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                        AuthError::WrongAudience
                    }
                    _ => AuthError::Invalid,
                }
            })?;
        let claims = data.claims;
        if claims.token_type.as_deref() != Some("access") {
            return Err(AuthError::WrongType);
        }
        let tenant = claims
            .tenant_id
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingTenant)?;
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::BadSubject)?;
        let value = |text: &str| {
            HeaderValue::from_str(text)
                .ok()
                .filter(|_| text.bytes().all(|b| (0x20..0x7f).contains(&b)))
        };
        let user_id = value(&sub).ok_or(AuthError::BadSubject)?;
        let tenant_id = value(&tenant).ok_or(AuthError::MissingTenant)?;
        let role = match claims.role.as_deref() {
            Some(role) => Some(value(role).ok_or(AuthError::BadSubject)?),
            None => None,
        };
        let permissions = match claims.permissions {
            Some(list) if !list.is_empty() => {
                Some(value(&list.join(",")).ok_or(AuthError::BadSubject)?)
            }
            _ => None,
        };
        // An unknown tier is ignored (the untiered limit applies), not refused.
        let tier = claims
            .tier
            .as_deref()
            .and_then(|t| {
                gateway_common::config::RATE_LIMIT_TIERS
                    .iter()
                    .find(|k| **k == t)
            })
            .map(|t| HeaderValue::from_static(t));
        let identity = Identity {
            user_id,
            tenant_id,
            role,
            permissions,
            tier,
        };
        Ok(Verified {
            identity,
            expires: claims.exp,
            key: match key {
                KeyRef::Borrowed(_) => None,
                KeyRef::Shared(public) => Some(public),
            },
            alg: header.alg,
            kid: header.kid.map(String::into_boxed_str),
        })
    }
}

/// A key owned by the verifier, or one of the current JWKS set.
enum KeyRef<'a> {
    Borrowed(&'a DecodingKey),
    Shared(Arc<PublicKey>),
}

impl KeyRef<'_> {
    fn get(&self) -> &DecodingKey {
        match self {
            KeyRef::Borrowed(key) => key,
            KeyRef::Shared(public) => &public.key,
        }
    }
}

/// The rules of tokens signed with `alg`.
fn validation(alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    match issuer {
        Some(iss) => {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    match audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme in any case).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    // Bytes rather than `HeaderValue::to_str`, which checks a long token one
    // byte at a time; a token that is not ASCII fails verification anyway.
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&value[..space], value[space + 1..].trim_ascii());
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return None;
    }
    std::str::from_utf8(token).ok()
}

#[cfg(test)]
mod tests;
