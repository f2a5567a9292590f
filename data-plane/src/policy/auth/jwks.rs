//! Public keys of asymmetric access tokens (RS*, PS*, ES256, ES384), read
//! from a JWKS URL (`JWT_JWKS_URL`) and selected by the token's `kid`.
//!
//! The set is fetched at start, refreshed every `JWT_JWKS_REFRESH` (shorter
//! when the answer's `Cache-Control: max-age` says so, never below
//! `JWT_JWKS_MIN_REFRESH`), and again when a token names an unknown `kid`
//! (at most once per `JWT_JWKS_MIN_REFRESH`, so that made-up kids cannot
//! make the gateway hammer the endpoint). A failed refresh keeps the keys
//! already known. Until a first fetch succeeds, tokens that need these keys
//! are answered 503.
//!
//! `https` URLs are fetched over TLS (rustls), the server's certificate
//! checked against the platform's trust store plus the certificates of
//! `JWT_JWKS_CA_FILE` (an internal identity provider's own CA).
//! Symmetric (`oct`) keys in the set are ignored: an HMAC key published
//! next to public keys is the algorithm-confusion attack waiting to happen.

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use gateway_common::http_client::{self, Client};
use http::header::{ACCEPT, CACHE_CONTROL};
use http::{StatusCode, Uri};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Default period between two fetches.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Default shortest period between two fetches.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Bound on one fetch (connect, request, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Where and how often the keys are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSettings {
    /// The JWKS URL (`http[s]://HOST[:PORT]/PATH`).
    pub url: Uri,
    /// How an `https` URL's server is verified; `None` for `http`.
    pub tls: Option<JwksTls>,
    /// Period between two fetches (upper bound; `max-age` may shorten it).
    pub refresh: Duration,
    /// Shortest period between two fetches, also the retry delay after a
    /// failure and the rate limit of fetches for an unknown `kid`.
    pub min_refresh: Duration,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

/// Reads a JWKS URL: `http` or `https`, with a host.
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|e| format!("JWT_JWKS_URL {text:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(format!(
            "JWT_JWKS_URL {text:?} must be http[s]://HOST[:PORT]/PATH"
        )),
    }
}

/// The TLS client settings of an `https` JWKS URL: the trusted roots, made
/// once at start.
#[derive(Clone)]
pub struct JwksTls {
    config: Arc<rustls::ClientConfig>,
    roots: usize,
}

impl std::fmt::Debug for JwksTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksTls")
            .field("roots", &self.roots)
            .finish()
    }
}

/// The same settings: made by the same call.
impl PartialEq for JwksTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for JwksTls {}

impl JwksTls {
    /// Trusts the platform's root certificates (the system store, or
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR` when set) and those of the PEM file
    /// `ca_file`. Refused: an unreadable `ca_file`, one without a
    /// certificate, or no trusted root at all.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable entries of the platform store are skipped: one bad file
        // in /etc/ssl/certs must not stop the gateway.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_file {
            let added = add_pem_file(&mut roots, path)?;
            tracing::debug!(file = %path.display(), certificates = added, "JWKS CA file read");
        }
        if roots.is_empty() {
            return Err(
                "JWT_JWKS_URL is https but no trusted root certificate was found: \
                 install the platform's CA certificates or set JWT_JWKS_CA_FILE"
                    .to_string(),
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let count = roots.len();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings of the JWKS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            roots: count,
        })
    }
}

/// Adds the certificates of the PEM file `path` to `roots`; how many.
fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("JWT_JWKS_CA_FILE {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("JWT_JWKS_CA_FILE {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("JWT_JWKS_CA_FILE {shown} holds no PEM certificate"));
    }
    let count = certs.len();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("JWT_JWKS_CA_FILE {shown}: {e}"))?;
    }
    Ok(count)
}

/// The kind of public key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

/// The key kind of an asymmetric algorithm this module verifies; `None`
/// for every other algorithm (HMAC, EdDSA).
fn kind_of(alg: Algorithm) -> Option<KeyKind> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(KeyKind::Rsa),
        ES256 => Some(KeyKind::P256),
        ES384 => Some(KeyKind::P384),
        _ => None,
    }
}

/// The asymmetric algorithms tokens may be signed with.
pub const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// One usable public key of the set.
pub struct PublicKey {
    kind: KeyKind,
    /// The key's `alg`, when it names one: then only that one is accepted.
    alg: Option<Algorithm>,
    /// The key, ready for the signature check.
    pub key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No key set was ever fetched.
    Unavailable,
    /// The token names no `kid`.
    NoKeyId,
    /// No key has the token's `kid` (a refresh was asked for).
    UnknownKeyId,
    /// The key of that `kid` is not for the token's algorithm.
    WrongAlgorithm,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Connecting or talking HTTP failed.
    #[error("fetching the key set: {0}")]
    Fetch(String),
    /// The endpoint answered something else than 200.
    #[error("the key set endpoint answered {0}")]
    Status(StatusCode),
    /// Too slow.
    #[error("fetching the key set took longer than {}s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    /// Not a JWKS document, or too large.
    #[error("the key set is unreadable: {0}")]
    Document(String),
    /// A readable set without one usable key.
    #[error("the key set has no usable signing key")]
    NoUsableKey,
}

/// The key set, shared by every request; refreshed in the background.
pub struct JwksKeys {
    settings: JwksSettings,
    keys: ArcSwapOption<HashMap<String, Arc<PublicKey>>>,
    /// Milliseconds since the Unix epoch of the last fetch started.
    last_fetch_ms: AtomicU64,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for JwksKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksKeys")
            .field("url", &self.settings.url)
            .field("keys", &self.keys.load().as_ref().map(|k| k.len()))
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// One JWK, as far as it is read.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl JwksKeys {
    /// An empty set for `settings`; nothing is fetched until
    /// [`JwksKeys::start`] (or keys are given with [`JwksKeys::install`]).
    pub fn new(settings: JwksSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            keys: ArcSwapOption::empty(),
            last_fetch_ms: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
        })
    }

    /// A set fetched now and then in the background, for as long as it is
    /// referenced. Must be called in a tokio runtime.
    pub fn start(settings: JwksSettings) -> Arc<Self> {
        let keys = Self::new(settings);
        tokio::spawn(refresh_loop(Arc::downgrade(&keys), keys.wake.clone()));
        keys
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &JwksSettings {
        &self.settings
    }

    /// Whether a key set was loaded.
    pub fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The key that verifies a token with header `kid` and `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<PublicKey>, KeyError> {
        let kind = kind_of(alg).ok_or(KeyError::WrongAlgorithm)?;
        let guard = self.keys.load();
        let Some(keys) = guard.as_ref() else {
            self.request_refresh();
            return Err(KeyError::Unavailable);
        };
        let kid = kid.ok_or(KeyError::NoKeyId)?;
        let Some(key) = keys.get(kid) else {
            self.request_refresh();
            return Err(KeyError::UnknownKeyId);
        };
        if key.kind != kind || key.alg.is_some_and(|a| a != alg) {
            return Err(KeyError::WrongAlgorithm);
        }
        Ok(key.clone())
    }

    /// Asks the background task for a fetch now, unless one started less
    /// than `min_refresh` ago.
    fn request_refresh(&self) {
        let now = now_ms();
        let last = self.last_fetch_ms.load(Ordering::Relaxed);
        let min = self.settings.min_refresh.as_millis() as u64;
        if now.saturating_sub(last) >= min
            && self
                .last_fetch_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// Replaces the keys by those of the JWKS `document`; the number of
    /// usable keys. On error the keys already known stay.
    pub fn install(&self, document: &[u8]) -> Result<usize, JwksError> {
        let keys = parse_document(document)?;
        let count = keys.len();
        self.keys.store(Some(Arc::new(keys)));
        Ok(count)
    }

    /// Fetches and installs the set once; the `max-age` of the answer.
    /// The HTTP client is made by the first call and reused by the next.
    async fn refresh(&self, client: &mut Option<Client>) -> Result<Option<Duration>, JwksError> {
        let client = match client {
            Some(client) => client,
            None => client.insert(http_client(self.settings.tls.as_ref())?),
        };
        let (body, max_age) =
            tokio::time::timeout(FETCH_TIMEOUT, fetch(client, &self.settings.url))
                .await
                .map_err(|_| JwksError::Timeout)??;
        let count = self.install(&body)?;
        tracing::info!(url = %self.settings.url, keys = count, "signing keys loaded");
        Ok(max_age)
    }

    /// Time until the next fetch after one that succeeded with `max_age`.
    fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        let s = &self.settings;
        max_age
            .unwrap_or(s.refresh)
            .min(s.refresh)
            .max(s.min_refresh)
    }
}

async fn refresh_loop(keys: Weak<JwksKeys>, wake: Arc<Notify>) {
    let mut client = None;
    loop {
        let Some(set) = keys.upgrade() else { return };
        set.last_fetch_ms.store(now_ms(), Ordering::Relaxed);
        let wait = match set.refresh(&mut client).await {
            Ok(max_age) => set.next_refresh(max_age),
            Err(e) => {
                tracing::warn!(
                    url = %set.settings.url,
                    error = %e,
                    keys_loaded = set.is_loaded(),
                    "cannot refresh the signing keys; keeping those known"
                );
                set.settings.min_refresh
            }
        };
        drop(set);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
        }
    }
}

/// The client of the fetches: plain HTTP, or TLS with the roots of `tls`.
fn http_client(tls: Option<&JwksTls>) -> Result<Client, JwksError> {
    let fail = |e: &dyn std::fmt::Display| JwksError::Fetch(e.to_string());
    http_client::builder(tls.map(|t| t.config.as_ref()))
        .map_err(|e| fail(&e))?
        .build()
        .map_err(|e| fail(&gateway_common::error_chain(&e)))
}

/// GET `url`: the body (at most [`MAX_DOCUMENT_BYTES`]) and its `max-age`.
async fn fetch(client: &Client, url: &Uri) -> Result<(Bytes, Option<Duration>), JwksError> {
    let fail = |e: &dyn std::fmt::Display| JwksError::Fetch(e.to_string());
    let response = client
        .get(url.to_string())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(&gateway_common::error_chain(&e)))?;
    if response.status() != StatusCode::OK {
        return Err(JwksError::Status(response.status()));
    }
    let max_age = response
        .headers()
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = http_client::read_limited(response, MAX_DOCUMENT_BYTES)
        .await
        .map_err(|e| JwksError::Document(e.to_string()))?;
    Ok((body, max_age))
}

/// The `max-age` of a `Cache-Control` value (`no-store`/`no-cache`: zero).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        let (name, secs) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| secs.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

fn parse_document(document: &[u8]) -> Result<HashMap<String, Arc<PublicKey>>, JwksError> {
    let doc: Document =
        serde_json::from_slice(document).map_err(|e| JwksError::Document(e.to_string()))?;
    let mut keys = HashMap::new();
    for value in doc.keys {
        match parse_key(value) {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(reason) => tracing::warn!(reason, "signing key ignored"),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

fn parse_key(value: serde_json::Value) -> Result<(String, PublicKey), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let kid = jwk.kid.filter(|k| !k.is_empty()).ok_or("no kid")?;
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return Err(format!("key {kid}: use is not sig"));
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(name) => Some(
            name.parse::<Algorithm>()
                .ok()
                .filter(|a| ALGORITHMS.contains(a))
                .ok_or_else(|| format!("key {kid}: alg {name} is not accepted"))?,
        ),
    };
    let missing = |field: &str| format!("key {kid}: no {field}");
    let (kind, key) = match jwk.kty.as_str() {
        "RSA" => {
            let n = jwk.n.as_deref().ok_or_else(|| missing("n"))?;
            let e = jwk.e.as_deref().ok_or_else(|| missing("e"))?;
            let key =
                DecodingKey::from_rsa_components(n, e).map_err(|e| format!("key {kid}: {e}"))?;
            (KeyKind::Rsa, key)
        }
        "EC" => {
            let kind = match jwk.crv.as_deref() {
                Some("P-256") => KeyKind::P256,
                Some("P-384") => KeyKind::P384,
                other => return Err(format!("key {kid}: curve {other:?} is not accepted")),
            };
            let x = jwk.x.as_deref().ok_or_else(|| missing("x"))?;
            let y = jwk.y.as_deref().ok_or_else(|| missing("y"))?;
            let key =
                DecodingKey::from_ec_components(x, y).map_err(|e| format!("key {kid}: {e}"))?;
            (kind, key)
        }
        other => return Err(format!("key {kid}: key type {other} is not accepted")),
    };
    if alg.is_some_and(|a| kind_of(a) != Some(kind)) {
        return Err(format!("key {kid}: alg does not fit the key type"));
    }
    Ok((kid, PublicKey { kind, alg, key }))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> JwksSettings {
        JwksSettings {
            url: "http://127.0.0.1:1/jwks".parse().unwrap(),
            tls: None,
            refresh: DEFAULT_REFRESH,
            min_refresh: DEFAULT_MIN_REFRESH,
            issuer: None,
            audience: None,
        }
    }

    // A P-256 point (the generator): valid components, test-only.
    const X: &str = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
    const Y: &str = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";

    fn ec(kid: &str, alg: Option<&str>) -> serde_json::Value {
        let mut k = json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": X, "y": Y, "use": "sig"});
        if let Some(alg) = alg {
            k["alg"] = json!(alg);
        }
        k
    }

    #[test]
    fn urls_must_be_http_or_https() {
        assert!(parse_url("http://idp:8080/.well-known/jwks.json").is_ok());
        assert!(parse_url("https://idp/jwks").is_ok());
        assert!(parse_url("idp/jwks").is_err());
        assert!(parse_url("ftp://idp/jwks").is_err());
        assert!(parse_url("https:///jwks").is_err());
    }

    #[test]
    fn a_ca_file_must_be_readable_and_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("jwks-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = JwksTls::new(Some(&missing)).unwrap_err();
        assert!(err.contains("JWT_JWKS_CA_FILE"), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = JwksTls::new(Some(&empty)).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(JwksTls::new(Some(&broken)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_selected_by_kid_and_algorithm() {
        let set = JwksKeys::new(settings());
        assert_eq!(
            set.select(Some("a"), Algorithm::ES256).unwrap_err(),
            KeyError::Unavailable
        );
        let doc = json!({"keys": [ec("a", Some("ES256")), ec("b", None),
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"}]});
        assert_eq!(set.install(doc.to_string().as_bytes()).unwrap(), 2);
        assert!(set.select(Some("a"), Algorithm::ES256).is_ok());
        assert!(set.select(Some("b"), Algorithm::ES256).is_ok());
        assert_eq!(
            set.select(Some("a"), Algorithm::RS256).unwrap_err(),
            KeyError::WrongAlgorithm
        );
        assert_eq!(
            set.select(Some("a"), Algorithm::ES384).unwrap_err(),
            KeyError::WrongAlgorithm
        );
        assert_eq!(
            set.select(Some("h"), Algorithm::HS256).unwrap_err(),
            KeyError::WrongAlgorithm
        );
        assert_eq!(
            set.select(Some("zz"), Algorithm::ES256).unwrap_err(),
            KeyError::UnknownKeyId
        );
        assert_eq!(
            set.select(None, Algorithm::ES256).unwrap_err(),
            KeyError::NoKeyId
        );
    }

    #[test]
    fn unusable_sets_keep_the_known_keys() {
        let set = JwksKeys::new(settings());
        set.install(json!({"keys": [ec("a", None)]}).to_string().as_bytes())
            .unwrap();
        for bad in [
            json!({"keys": []}),
            json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}),
            json!({"keys": [ec("e", Some("HS256"))]}),
            json!({"keys": [ec("e", Some("RS256"))]}),
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": X, "y": Y}]}),
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e", "x": X, "y": Y, "use": "enc"}]}),
            json!({"keys": [{"kty": "EC", "crv": "secp256k1", "kid": "e", "x": X, "y": Y}]}),
            json!({"nokeys": 1}),
        ] {
            assert!(set.install(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
        assert!(set.install(b"not json").is_err());
        assert!(set.select(Some("a"), Algorithm::ES256).is_ok());
    }

    #[test]
    fn max_age_bounds_the_refresh() {
        assert_eq!(max_age("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        let set = JwksKeys::new(settings());
        assert_eq!(set.next_refresh(None), DEFAULT_REFRESH);
        assert_eq!(
            set.next_refresh(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(set.next_refresh(Some(Duration::ZERO)), DEFAULT_MIN_REFRESH);
        assert_eq!(
            set.next_refresh(Some(Duration::from_secs(86_400))),
            DEFAULT_REFRESH
        );
    }

    #[test]
    fn refresh_requests_are_rate_limited() {
        let set = JwksKeys::new(settings());
        set.request_refresh();
        let first = set.last_fetch_ms.load(Ordering::Relaxed);
        assert!(first > 0);
        set.last_fetch_ms.store(first - 1_000, Ordering::Relaxed);
        set.request_refresh();
        // Less than min_refresh since: not asked again.
        assert_eq!(set.last_fetch_ms.load(Ordering::Relaxed), first - 1_000);
    }
}
