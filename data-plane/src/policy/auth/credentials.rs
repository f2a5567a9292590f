//! Revoked tokens and API keys, held in memory and kept current by Redis
//! pub/sub, so that checking a request against them is a map lookup and
//! never a Redis call.
//!
//! On every (re)connection the data plane subscribes to the push channel
//! first, then loads the whole revocation set (`ZRANGEBYSCORE revoked now
//! +inf`) and every API key (`HGETALL apikeys`), and only then applies the
//! messages that arrived meanwhile: nothing published while it was away or
//! loading is missed. Between connections it keeps what it knew. The
//! layout is `gateway_common::credentials`'.

use crate::shared_state::SharedState;
use base64::Engine as _;
use gateway_common::credentials::{self as layout, ApiKeyRecord, Push, Revocation};
use http::{HeaderMap, HeaderValue};
use parking_lot::RwLock;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt as _;

/// Pause before subscribing again after the channel was lost.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(200);
/// How often expired revocations are dropped from memory.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a starting data plane reports not ready while it has not
/// loaded the revocations yet: long enough for a reachable Redis, short
/// enough that a Redis outage does not keep new data planes out of service.
pub const LOAD_GRACE: Duration = Duration::from_secs(5);

pub use crate::headers::{
    API_KEY_HEADER, API_KEY_IDENTITY_HEADERS, X_API_KEY_ID, X_API_KEY_SCOPES,
};

/// Unix time, seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The claims of a verified token that revocation looks at.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct TokenRef {
    /// `jti`.
    #[serde(default)]
    pub jti: Option<String>,
    /// `family`: the refresh-token family the token was issued from.
    #[serde(default)]
    pub family: Option<String>,
    /// `sub`.
    #[serde(default)]
    pub sub: Option<String>,
    /// `iat`.
    #[serde(default)]
    pub iat: Option<u64>,
    /// `exp`.
    #[serde(default)]
    pub exp: Option<u64>,
}

impl TokenRef {
    /// Reads the payload of a compact JWT whose signature was already
    /// verified (`None` if it cannot be read).
    pub fn of(token: &str) -> Option<Self> {
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// What logging this token out revokes: its `jti`, or without one
    /// every jti-less token of its subject issued until `now`.
    pub fn revocation(&self, now: u64) -> Option<Revocation> {
        match (&self.jti, &self.sub) {
            (Some(jti), _) if !jti.is_empty() => Some(Revocation::Jti(jti.clone())),
            (_, Some(sub)) if !sub.is_empty() => Some(Revocation::Subject {
                sub: sub.clone(),
                cutoff: now,
            }),
            _ => None,
        }
    }
}

/// An API key as the data plane holds it: header values ready to go.
#[derive(Debug, Clone)]
pub struct ApiKeyIdentity {
    /// Key id.
    pub id: HeaderValue,
    /// Tenant.
    pub tenant: HeaderValue,
    /// Scopes, comma-separated (absent when none).
    pub scopes: Option<HeaderValue>,
}

impl ApiKeyIdentity {
    fn of(record: &ApiKeyRecord) -> Option<Self> {
        let value = |text: &str| {
            HeaderValue::from_str(text)
                .ok()
                .filter(|_| !text.is_empty() && text.bytes().all(|b| (0x20..0x7f).contains(&b)))
        };
        Some(Self {
            id: value(&record.id)?,
            tenant: value(&record.tenant)?,
            scopes: match record.scopes.is_empty() {
                true => None,
                false => Some(value(&record.scopes.join(","))?),
            },
        })
    }

    /// Sets the identity headers (tenant from the key) and removes the key
    /// itself, which the upstream has no use for.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(API_KEY_HEADER);
        headers.insert(crate::policy::auth::X_TENANT_ID, self.tenant.clone());
        headers.insert(
            crate::policy::auth::X_TENANT_SOURCE,
            HeaderValue::from_static("api-key"),
        );
        headers.insert(X_API_KEY_ID, self.id.clone());
        if let Some(scopes) = &self.scopes {
            headers.insert(X_API_KEY_SCOPES, scopes.clone());
        }
    }
}

/// Who a request was authenticated as.
#[derive(Debug)]
pub enum Caller {
    /// A verified, unrevoked access token.
    Token(crate::policy::auth::Identity),
    /// A live API key.
    ApiKey(Arc<ApiKeyIdentity>),
}

impl Caller {
    /// Sets the identity headers (the client's were removed before).
    pub fn apply(self, headers: &mut HeaderMap) {
        match self {
            Self::Token(identity) => identity.apply(headers),
            Self::ApiKey(key) => key.apply(headers),
        }
    }
}

/// Authenticates a request on a route that requires it: by `X-API-Key` when
/// the route accepts keys and one is sent (no fall-back to the token), else
/// by bearer token, refused when revoked. Without `credentials` (no Redis)
/// nothing is revoked and no key exists.
pub fn identify(
    verifier: Option<&crate::policy::auth::Verifier>,
    credentials: Option<&Credentials>,
    api_keys: bool,
    headers: &HeaderMap,
) -> Result<Caller, crate::policy::auth::AuthError> {
    use crate::policy::auth::AuthError;
    if api_keys {
        if let Some(key) = headers.get(API_KEY_HEADER) {
            let key = key.to_str().map_err(|_| AuthError::InvalidApiKey)?;
            return credentials
                .and_then(|c| c.api_key(key.trim()))
                .map(Caller::ApiKey)
                .ok_or(AuthError::InvalidApiKey);
        }
    }
    let verifier = verifier.ok_or(AuthError::NotConfigured)?;
    let token = crate::policy::auth::bearer_token(headers).ok_or(AuthError::Missing)?;
    let identity = verifier.verify(token)?;
    if credentials.is_some_and(|c| c.is_revoked(token)) {
        return Err(AuthError::Revoked);
    }
    Ok(Caller::Token(identity))
}

#[derive(Debug, Default)]
struct Revoked {
    jtis: HashMap<String, u64>,
    families: HashMap<String, u64>,
    /// sub -> (latest iat covered, until).
    subjects: HashMap<String, (u64, u64)>,
}

impl Revoked {
    fn insert(&mut self, revocation: Revocation, until: u64) {
        match revocation {
            Revocation::Jti(jti) => {
                let e = self.jtis.entry(jti).or_default();
                *e = (*e).max(until);
            }
            Revocation::Family(family) => {
                let e = self.families.entry(family).or_default();
                *e = (*e).max(until);
            }
            Revocation::Subject { sub, cutoff } => {
                let e = self.subjects.entry(sub).or_default();
                *e = (e.0.max(cutoff), e.1.max(until));
            }
        }
    }

    fn covers(&self, token: &TokenRef) -> bool {
        if let Some(jti) = &token.jti {
            if self.jtis.contains_key(jti) {
                return true;
            }
        }
        if let Some(family) = &token.family {
            if self.families.contains_key(family) {
                return true;
            }
        }
        if token.jti.is_none() {
            if let Some((cutoff, _)) = token.sub.as_ref().and_then(|s| self.subjects.get(s)) {
                return token.iat.unwrap_or(0) <= *cutoff;
            }
        }
        false
    }

    fn prune(&mut self, now: u64) {
        self.jtis.retain(|_, until| *until >= now);
        self.families.retain(|_, until| *until >= now);
        self.subjects.retain(|_, (_, until)| *until >= now);
    }

    fn len(&self) -> usize {
        self.jtis.len() + self.families.len() + self.subjects.len()
    }
}

/// Revoked tokens and API keys, in memory.
#[derive(Debug)]
pub struct Credentials {
    revoked: RwLock<Revoked>,
    /// SHA-256 (hex) of a key -> its identity.
    keys: RwLock<HashMap<String, Arc<ApiKeyIdentity>>>,
    synced: AtomicBool,
    created: Instant,
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            revoked: RwLock::default(),
            keys: RwLock::default(),
            synced: AtomicBool::new(false),
            created: Instant::now(),
        }
    }
}

impl Credentials {
    /// Empty sets, fed by nothing (no Redis).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether the data plane may take traffic as far as credentials go:
    /// loaded once, or not loaded within [`LOAD_GRACE`] (Redis away: serve
    /// without known revocations rather than not at all).
    pub fn ready_for_traffic(&self) -> bool {
        self.is_synced() || self.created.elapsed() >= LOAD_GRACE
    }

    /// Empty sets fed from `shared`: starts the subscriber. Must be called
    /// in a tokio runtime.
    pub fn start(shared: Arc<SharedState>) -> Arc<Self> {
        let credentials = Self::new();
        tokio::spawn(sync(shared, Arc::downgrade(&credentials)));
        tokio::spawn(prune(Arc::downgrade(&credentials)));
        credentials
    }

    /// Whether the sets were loaded from Redis at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Whether the verified `token` is revoked.
    pub fn is_revoked(&self, token: &str) -> bool {
        match TokenRef::of(token) {
            Some(claims) => self.revoked.read().covers(&claims),
            // Verified tokens always have a readable payload.
            None => true,
        }
    }

    /// Records a revocation in this data plane at once (the push reaches
    /// the others).
    pub fn revoke_locally(&self, revocation: Revocation, until: u64) {
        self.revoked.write().insert(revocation, until);
    }

    /// The identity of the API key `key`, if it is a live one.
    pub fn api_key(&self, key: &str) -> Option<Arc<ApiKeyIdentity>> {
        let hash = layout::hash_api_key(key);
        self.keys.read().get(&hash).cloned()
    }

    fn apply(&self, push: Push) {
        match push {
            Push::Revoked { revocation, until } => self.revoke_locally(revocation, until),
            Push::KeyAdded { hash, record } => match ApiKeyIdentity::of(&record) {
                Some(identity) => {
                    self.keys.write().insert(hash, Arc::new(identity));
                }
                None => {
                    tracing::warn!(id = %record.id, "API key with an unusable id, tenant or scope; ignored")
                }
            },
            Push::KeyRevoked { hash } => {
                self.keys.write().remove(&hash);
            }
        }
    }

    fn replace(&self, revoked: Revoked, keys: HashMap<String, Arc<ApiKeyIdentity>>) {
        *self.revoked.write() = revoked;
        *self.keys.write() = keys;
        self.synced.store(true, Ordering::Relaxed);
    }
}

/// Reads the whole revocation set and every API key.
async fn load(
    shared: &SharedState,
) -> redis::RedisResult<(Revoked, HashMap<String, Arc<ApiKeyIdentity>>)> {
    let mut conn = shared.client().get_multiplexed_async_connection().await?;
    let prefix = shared.prefix();
    let (members, records): (Vec<(String, f64)>, HashMap<String, String>) = redis::pipe()
        .cmd("ZRANGEBYSCORE")
        .arg(layout::revoked_key(prefix))
        .arg(unix_now())
        .arg("+inf")
        .arg("WITHSCORES")
        .cmd("HGETALL")
        .arg(layout::apikeys_key(prefix))
        .query_async(&mut conn)
        .await?;
    let mut revoked = Revoked::default();
    for (member, until) in members {
        if let Some(revocation) = Revocation::parse(&member) {
            revoked.insert(revocation, until as u64);
        }
    }
    let keys = records
        .into_iter()
        .filter_map(|(hash, json)| {
            let record: ApiKeyRecord = serde_json::from_str(&json).ok()?;
            Some((hash, Arc::new(ApiKeyIdentity::of(&record)?)))
        })
        .collect();
    Ok((revoked, keys))
}

/// Subscribes, loads, then applies pushed changes; again after any loss.
async fn sync(shared: Arc<SharedState>, credentials: std::sync::Weak<Credentials>) {
    let channel = layout::channel(shared.prefix());
    let mut warned = false;
    loop {
        let result: redis::RedisResult<()> = async {
            let mut pubsub = shared.client().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let (revoked, keys) = load(&shared).await?;
            let Some(target) = credentials.upgrade() else {
                return Ok(());
            };
            // Logged before taking effect, so that the line is there once
            // readiness reports it.
            tracing::info!(
                revocations = revoked.len(),
                api_keys = keys.len(),
                "credentials: revocations and API keys loaded; listening for changes"
            );
            target.replace(revoked, keys);
            drop(target);
            warned = false;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Some(target) = credentials.upgrade() else {
                    return Ok(());
                };
                let Ok(text) = message.get_payload::<String>() else {
                    continue;
                };
                match Push::parse(&text) {
                    Some(push) => target.apply(push),
                    None => tracing::warn!(message = %text, "credentials: unreadable push message"),
                }
            }
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "push channel closed",
            )))
        }
        .await;
        if credentials.strong_count() == 0 {
            return;
        }
        if let Err(e) = result {
            if !warned {
                tracing::warn!(error = %e, "credentials: cannot follow revocations and API keys; keeping the last known sets and retrying");
                warned = true;
            }
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

async fn prune(credentials: std::sync::Weak<Credentials>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let Some(target) = credentials.upgrade() else {
            return;
        };
        target.revoked.write().prune(unix_now());
    }
}

/// Why a revocation could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Redis is not configured or not connected.
    #[error("Redis is not available")]
    Unavailable,
    /// The write failed or timed out.
    #[error("Redis write failed: {0}")]
    Failed(String),
}

/// Adds revocations to the shared set and pushes them to every data plane
/// (one `MULTI`: expired members trimmed, members added, messages
/// published), and records them here at once.
pub async fn revoke(
    shared: &SharedState,
    credentials: &Credentials,
    revocations: &[(Revocation, u64)],
) -> Result<(), RevokeError> {
    let mut conn = shared.connection().ok_or(RevokeError::Unavailable)?;
    let prefix = shared.prefix();
    let key = layout::revoked_key(prefix);
    let channel = layout::channel(prefix);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(format!("({}", unix_now()))
        .ignore();
    for (revocation, until) in revocations {
        pipe.cmd("ZADD")
            .arg(&key)
            .arg("GT")
            .arg(*until)
            .arg(revocation.member())
            .ignore();
        let push = Push::Revoked {
            revocation: revocation.clone(),
            until: *until,
        };
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(push.encode())
            .ignore();
    }
    let outcome = tokio::time::timeout(shared.timeout(), pipe.query_async::<()>(&mut conn)).await;
    let result = match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RevokeError::Failed(e.to_string())),
        Err(_) => Err(RevokeError::Failed("timed out".into())),
    };
    shared.record(result.is_ok());
    for (revocation, until) in revocations {
        credentials.revoke_locally(revocation.clone(), *until);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(jti: Option<&str>, family: Option<&str>, iat: u64) -> TokenRef {
        TokenRef {
            jti: jti.map(String::from),
            family: family.map(String::from),
            sub: Some("u1".into()),
            iat: Some(iat),
            exp: Some(iat + 900),
        }
    }

    #[test]
    fn revocations_cover_jti_family_and_subject() {
        let mut r = Revoked::default();
        assert!(!r.covers(&token(Some("a"), None, 10)));
        r.insert(Revocation::Jti("a".into()), 100);
        assert!(r.covers(&token(Some("a"), None, 10)));
        assert!(!r.covers(&token(Some("b"), None, 10)));
        r.insert(Revocation::Family("f".into()), 100);
        assert!(r.covers(&token(Some("b"), Some("f"), 10)));
        r.insert(
            Revocation::Subject {
                sub: "u1".into(),
                cutoff: 50,
            },
            100,
        );
        // Only tokens without jti, issued up to the cutoff.
        assert!(r.covers(&token(None, None, 50)));
        assert!(!r.covers(&token(None, None, 51)));
        assert!(!r.covers(&token(Some("c"), None, 10)));
        r.prune(101);
        assert_eq!(r.len(), 0);
        assert!(!r.covers(&token(Some("a"), None, 10)));
    }

    #[test]
    fn a_logout_revokes_the_jti_or_else_the_subject() {
        let t = token(Some("a"), None, 1);
        assert_eq!(t.revocation(9), Some(Revocation::Jti("a".into())));
        let t = token(None, None, 1);
        assert_eq!(
            t.revocation(9),
            Some(Revocation::Subject {
                sub: "u1".into(),
                cutoff: 9
            })
        );
        assert_eq!(TokenRef::default().revocation(9), None);
    }

    #[test]
    fn token_payload_is_read() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"jti":"j","family":"f","sub":"s","iat":1,"exp":2}"#);
        let t = TokenRef::of(&format!("h.{payload}.sig")).unwrap();
        assert_eq!(t.jti.as_deref(), Some("j"));
        assert_eq!(t.family.as_deref(), Some("f"));
        assert_eq!(TokenRef::of("nope"), None);
    }

    #[test]
    fn ready_once_loaded() {
        let c = Credentials::default();
        assert!(!c.ready_for_traffic());
        c.replace(Revoked::default(), HashMap::new());
        assert!(c.is_synced());
        assert!(c.ready_for_traffic());
    }

    #[test]
    fn api_keys_are_found_by_hash_and_pushed_changes_apply() {
        let c = Credentials::default();
        let record = ApiKeyRecord {
            id: "k1".into(),
            tenant: "t1".into(),
            scopes: vec!["a".into(), "b".into()],
            name: String::new(),
            created_at_ms: 0,
        };
        let hash = layout::hash_api_key("gwk_secret");
        c.apply(Push::KeyAdded {
            hash: hash.clone(),
            record,
        });
        let id = c.api_key("gwk_secret").unwrap();
        assert_eq!(id.tenant, "t1");
        assert_eq!(id.scopes.as_ref().unwrap(), "a,b");
        assert!(c.api_key("gwk_other").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(API_KEY_HEADER, HeaderValue::from_static("gwk_secret"));
        id.apply(&mut headers);
        assert!(headers.get(API_KEY_HEADER).is_none());
        assert_eq!(headers["x-tenant-source"], "api-key");
        assert_eq!(headers["x-api-key-id"], "k1");
        c.apply(Push::KeyRevoked { hash });
        assert!(c.api_key("gwk_secret").is_none());
    }
}
