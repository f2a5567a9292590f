//! Tests of token verification: keys, algorithms, claims and the verified-token cache.

use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn settings() -> JwtSettings {
    JwtSettings {
        secret: SECRET.into(),
        algorithm: Algorithm::HS256,
        issuer: Some("tickettoken".into()),
        audience: Some("tickettoken-platform".into()),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    json!({
        "sub": "user-1", "tenant_id": "t-1", "type": "access", "role": "customer",
        "permissions": ["tickets:purchase", "tickets:view-own"],
        "iss": "tickettoken", "aud": "tickettoken-platform",
        "iat": now(), "exp": now() + 600,
    })
}

fn sign(claims: &serde_json::Value, alg: Algorithm, secret: &str) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn with(key: &str, value: serde_json::Value) -> String {
    let mut c = claims();
    if value.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = value;
    }
    sign(&c, Algorithm::HS256, SECRET)
}

#[test]
fn a_valid_access_token_gives_an_identity() {
    let v = Verifier::new(&settings());
    let id = v
        .verify(&sign(&claims(), Algorithm::HS256, SECRET))
        .unwrap();
    assert_eq!(id.user_id, "user-1");
    assert_eq!(id.tenant_id, "t-1");
    assert_eq!(id.role.unwrap(), "customer");
    assert_eq!(id.permissions.unwrap(), "tickets:purchase,tickets:view-own");
    assert_eq!(id.tier, None);
    let premium = v.verify(&with("tier", json!("premium"))).unwrap();
    assert_eq!(premium.tier.unwrap(), "premium");
    let unknown = v.verify(&with("tier", json!("platinum"))).unwrap();
    assert_eq!(unknown.tier, None);
}

#[test]
fn claims_are_checked() {
    let v = Verifier::new(&settings());
    let t = now();
    assert_eq!(
        v.verify(&with("exp", json!(t - 60))),
        Err(AuthError::Expired)
    );
    // Inside the leeway.
    assert!(v.verify(&with("exp", json!(t - 5))).is_ok());
    assert_eq!(
        v.verify(&with("nbf", json!(t + 120))),
        Err(AuthError::NotYetValid)
    );
    assert!(v.verify(&with("nbf", json!(t + 5))).is_ok());
    assert_eq!(v.verify(&with("exp", json!(null))), Err(AuthError::Invalid));
    assert_eq!(
        v.verify(&with("iss", json!("someone-else"))),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        v.verify(&with("iss", json!(null))),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(
        v.verify(&with("aud", json!("other"))),
        Err(AuthError::WrongAudience)
    );
    assert!(v
        .verify(&with("aud", json!(["other", "tickettoken-platform"])))
        .is_ok());
    assert_eq!(
        v.verify(&with("type", json!("refresh"))),
        Err(AuthError::WrongType)
    );
    assert_eq!(
        v.verify(&with("type", json!(null))),
        Err(AuthError::WrongType)
    );
    assert_eq!(
        v.verify(&with("tenant_id", json!(null))),
        Err(AuthError::MissingTenant)
    );
    assert_eq!(
        v.verify(&with("tenant_id", json!(""))),
        Err(AuthError::MissingTenant)
    );
    assert_eq!(
        v.verify(&with("sub", json!(null))),
        Err(AuthError::BadSubject)
    );
    assert_eq!(
        v.verify(&with("sub", json!("a\r\nx-admin: 1"))),
        Err(AuthError::BadSubject)
    );
}

#[test]
fn issuer_and_audience_are_optional() {
    let mut s = settings();
    s.issuer = None;
    s.audience = None;
    let v = Verifier::new(&s);
    assert!(v.verify(&with("iss", json!(null))).is_ok());
    assert!(v.verify(&with("aud", json!("anything"))).is_ok());
}

#[test]
fn forged_tokens_are_refused() {
    let v = Verifier::new(&settings());
    let good = sign(&claims(), Algorithm::HS256, SECRET);
    // Another secret.
    let other = sign(&claims(), Algorithm::HS256, &"z".repeat(32));
    assert_eq!(v.verify(&other), Err(AuthError::Invalid));
    // Another algorithm than the configured one, even with the secret.
    let hs512 = sign(&claims(), Algorithm::HS512, SECRET);
    assert_eq!(v.verify(&hs512), Err(AuthError::Invalid));
    // alg: none, with and without a signature.
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims())
    );
    assert_eq!(v.verify(&none), Err(AuthError::Invalid));
    let sig = good.rsplit('.').next().unwrap();
    let none_signed = format!("{}{sig}", none);
    assert_eq!(v.verify(&none_signed), Err(AuthError::Invalid));
    // Tampered payload under the original signature.
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut c = claims();
    c["tenant_id"] = json!("t-2");
    let forged = b64(c);
    parts[1] = &forged;
    assert_eq!(v.verify(&parts.join(".")), Err(AuthError::Invalid));
    assert_eq!(v.verify("not.a.jwt"), Err(AuthError::Invalid));
    assert_eq!(v.verify(""), Err(AuthError::Invalid));
}

#[test]
fn verified_tokens_are_kept_until_they_expire() {
    let v = Verifier::new(&settings());
    let token = sign(&claims(), Algorithm::HS256, SECRET);
    let first = v.verify(&token).unwrap();
    assert!(v.verified.contains_key(token.as_str()));
    assert_eq!(v.verify(&token).unwrap(), first);
    // Once its exp (plus leeway) has passed, the kept token is refused
    // and forgotten.
    let mut stale = Verifier::new(&settings()).verify_in_full(&token).unwrap();
    stale.expires = now() - LEEWAY_SECS - 1;
    v.verified.insert(token.as_str().into(), Arc::new(stale));
    assert_eq!(v.verify(&token), Err(AuthError::Expired));
    assert!(!v.verified.contains_key(token.as_str()));
    // Tokens that fail are never kept, so they fail every time.
    let other = sign(&claims(), Algorithm::HS256, &"z".repeat(32));
    for _ in 0..2 {
        assert_eq!(v.verify(&other), Err(AuthError::Invalid));
    }
    assert!(!v.verified.contains_key(other.as_str()));
    // A token differing in one character is another key, checked in full.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(v.verify(&tampered), Err(AuthError::Invalid));
}

#[test]
fn bearer_header_is_read() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer_token(&h), None);
    h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
    assert_eq!(bearer_token(&h), None);
    h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
    assert_eq!(bearer_token(&h), None);
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_static("bearer abc.def.ghi"),
    );
    assert_eq!(bearer_token(&h), Some("abc.def.ghi"));
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer   abc.def.ghi \t"),
    );
    assert_eq!(bearer_token(&h), Some("abc.def.ghi"));
    h.insert(AUTHORIZATION, HeaderValue::from_static("Bearerabc.def.ghi"));
    assert_eq!(bearer_token(&h), None);
    // Not UTF-8: no token (401 like a missing one).
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_bytes(b"Bearer abc\xff.def.ghi").unwrap(),
    );
    assert_eq!(bearer_token(&h), None);
}

#[test]
fn algorithms_are_limited_to_hmac() {
    assert_eq!(parse_algorithm("HS256").unwrap(), Algorithm::HS256);
    assert!(parse_algorithm("RS256").is_err());
    assert!(parse_algorithm("none").is_err());
}

mod asymmetric {
    use super::*;
    use crate::policy::auth::jwks::{JwksKeys, JwksSettings};
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    const RSA_PEM: &str = include_str!("../../../../tests/fixtures/test-only-rsa-private.pem");
    const RSA_PUBLIC_PEM: &str =
        include_str!("../../../../tests/fixtures/test-only-rsa-public.pem");
    const RSA_JWK: &str = include_str!("../../../../tests/fixtures/test-only-rsa-public.jwk.json");

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A fresh P-256 key: its signing key and its JWK.
    fn ec_key(kid: &str) -> (EncodingKey, serde_json::Value) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn rsa_jwk(kid: &str) -> serde_json::Value {
        let mut jwk: serde_json::Value = serde_json::from_str(RSA_JWK).unwrap();
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!("RS256");
        jwk
    }

    fn keys(jwks: &[serde_json::Value]) -> Arc<JwksKeys> {
        let set = JwksKeys::new(JwksSettings {
            url: "http://127.0.0.1:1/jwks".parse().unwrap(),
            tls: None,
            refresh: crate::policy::auth::jwks::DEFAULT_REFRESH,
            min_refresh: crate::policy::auth::jwks::DEFAULT_MIN_REFRESH,
            issuer: Some("tickettoken".into()),
            audience: Some("tickettoken-platform".into()),
        });
        set.install(json!({ "keys": jwks }).to_string().as_bytes())
            .unwrap();
        set
    }

    fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(String::from);
        encode(&header, &claims(), key).unwrap()
    }

    fn rsa() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap()
    }

    #[test]
    fn rs256_and_es256_tokens_are_verified_by_kid() {
        let (ec, ec_jwk) = ec_key("ec-1");
        let v = Verifier::build(None, Some(keys(&[rsa_jwk("rsa-1"), ec_jwk])));
        let id = v
            .verify(&signed(Algorithm::RS256, Some("rsa-1"), &rsa()))
            .unwrap();
        assert_eq!(id.tenant_id, "t-1");
        assert!(v
            .verify(&signed(Algorithm::ES256, Some("ec-1"), &ec))
            .is_ok());
        // The right key under the wrong kid, or the wrong algorithm.
        assert_eq!(
            v.verify(&signed(Algorithm::RS256, Some("ec-1"), &rsa())),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            v.verify(&signed(Algorithm::PS256, Some("rsa-1"), &rsa())),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            v.verify(&signed(Algorithm::RS256, None, &rsa())),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            v.verify(&signed(Algorithm::RS256, Some("rsa-2"), &rsa())),
            Err(AuthError::UnknownKey)
        );
        // Another EC key under a known kid.
        let (other, _) = ec_key("ec-1");
        assert_eq!(
            v.verify(&signed(Algorithm::ES256, Some("ec-1"), &other)),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn a_kept_token_is_only_trusted_while_its_key_is_in_the_set() {
        let set = keys(&[rsa_jwk("rsa-1")]);
        let v = Verifier::build(None, Some(set.clone()));
        let token = signed(Algorithm::RS256, Some("rsa-1"), &rsa());
        assert!(v.verify(&token).is_ok());
        assert!(v.verify(&token).is_ok());
        // The key rotated out: its kid now names another key.
        let (_, replacement) = ec_key("rsa-1");
        set.install(json!({ "keys": [replacement] }).to_string().as_bytes())
            .unwrap();
        assert_eq!(v.verify(&token), Err(AuthError::Invalid));
        // The key removed altogether.
        let (_, unrelated) = ec_key("ec-9");
        set.install(json!({ "keys": [unrelated] }).to_string().as_bytes())
            .unwrap();
        assert_eq!(v.verify(&token), Err(AuthError::UnknownKey));
        // The same key fetched again: verified in full once more, fine.
        set.install(json!({ "keys": [rsa_jwk("rsa-1")] }).to_string().as_bytes())
            .unwrap();
        assert!(v.verify(&token).is_ok());
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let set = keys(&[rsa_jwk("rsa-1")]);
        // HS256 with the public key as the HMAC secret, in every form.
        let forged = |secret: &[u8], kid: Option<&str>| {
            signed(Algorithm::HS256, kid, &EncodingKey::from_secret(secret))
        };
        let jwk_n = rsa_jwk("rsa-1")["n"].as_str().unwrap().to_string();
        let jwks_only = Verifier::build(None, Some(set.clone()));
        let mixed = Verifier::build(Some(&settings()), Some(set));
        for v in [&jwks_only, &mixed] {
            for secret in [RSA_PUBLIC_PEM.as_bytes(), jwk_n.as_bytes()] {
                for kid in [None, Some("rsa-1")] {
                    assert_eq!(v.verify(&forged(secret, kid)), Err(AuthError::Invalid));
                }
            }
        }
        // With JWKS only, no HS token at all, even one with the secret.
        assert_eq!(
            jwks_only.verify(&sign(&claims(), Algorithm::HS256, SECRET)),
            Err(AuthError::Invalid)
        );
        // Both configured: each algorithm keeps its own key source.
        assert!(mixed
            .verify(&sign(&claims(), Algorithm::HS256, SECRET))
            .is_ok());
        assert!(mixed
            .verify(&signed(Algorithm::RS256, Some("rsa-1"), &rsa()))
            .is_ok());
        // HMAC only: asymmetric tokens are refused.
        let hmac_only = Verifier::new(&settings());
        assert_eq!(
            hmac_only.verify(&signed(Algorithm::RS256, Some("rsa-1"), &rsa())),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn none_and_tampered_tokens_are_refused() {
        let v = Verifier::build(None, Some(keys(&[rsa_jwk("rsa-1")])));
        let good = signed(Algorithm::RS256, Some("rsa-1"), &rsa());
        let parts: Vec<&str> = good.split('.').collect();
        let none_header = b64(json!({"alg": "none", "kid": "rsa-1"})
            .to_string()
            .as_bytes());
        assert_eq!(
            v.verify(&format!("{none_header}.{}.", parts[1])),
            Err(AuthError::Invalid)
        );
        let mut c = claims();
        c["tenant_id"] = json!("t-2");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(v.verify(&tampered), Err(AuthError::Invalid));
    }

    #[test]
    fn tokens_wait_for_a_first_key_set() {
        let set = JwksKeys::new(JwksSettings {
            url: "http://127.0.0.1:1/jwks".parse().unwrap(),
            tls: None,
            refresh: crate::policy::auth::jwks::DEFAULT_REFRESH,
            min_refresh: crate::policy::auth::jwks::DEFAULT_MIN_REFRESH,
            issuer: None,
            audience: None,
        });
        let v = Verifier::build(None, Some(set));
        let token = signed(Algorithm::RS256, Some("rsa-1"), &rsa());
        assert_eq!(v.verify(&token), Err(AuthError::KeysUnavailable));
        let response = AuthError::KeysUnavailable.response(None);
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            AuthError::UnknownKey.response(None).status(),
            http::StatusCode::UNAUTHORIZED
        );
    }
}
