//! Cost of verifying one access token, as the proxy does per request:
//! HS256 with `JWT_SECRET`, RS256 and ES256 with a JWKS key selected by kid;
//! each on its first sight (signature and claims checked in full) and
//! repeated (found in the cache of verified tokens).
//!
//! `cargo bench -p data-plane --bench jwt`

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use data_plane::auth::{JwtSettings, Verifier};
use data_plane::jwks::{JwksKeys, JwksSettings};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;
use std::hint::black_box;
use std::time::Duration;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_PEM: &str = include_str!("../../tests/fixtures/test-only-rsa-private.pem");
const RSA_JWK: &str = include_str!("../../tests/fixtures/test-only-rsa-public.jwk.json");

fn claims() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "sub": "user-1", "tenant_id": "tenant-1", "type": "access", "role": "customer",
        "permissions": ["tickets:purchase", "tickets:view-own"],
        "iss": "tickettoken", "aud": "tickettoken-platform",
        "iat": now, "exp": now + 3600,
    })
}

fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    encode(&header, &claims(), key).expect("signing a benchmark token")
}

fn verification(c: &mut Criterion) {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("generating a P-256 key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("reading the P-256 key");
    let point = pair.public_key().as_ref();
    let mut rsa_jwk: serde_json::Value = serde_json::from_str(RSA_JWK).expect("RSA JWK");
    rsa_jwk["kid"] = json!("rsa-1");
    rsa_jwk["alg"] = json!("RS256");
    let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])});

    let settings = JwtSettings {
        secret: SECRET.into(),
        algorithm: Algorithm::HS256,
        issuer: Some("tickettoken".into()),
        audience: Some("tickettoken-platform".into()),
    };
    let keys = JwksKeys::new(JwksSettings {
        url: "http://127.0.0.1:1/jwks".parse().expect("URL"),
        tls: None,
        refresh: Duration::from_secs(300),
        min_refresh: Duration::from_secs(30),
        issuer: settings.issuer.clone(),
        audience: settings.audience.clone(),
    });
    keys.install(json!({"keys": [rsa_jwk, ec_jwk]}).to_string().as_bytes())
        .expect("installing the key set");
    let verifier = Verifier::build(Some(&settings), Some(keys));

    let hs = token(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    let rs = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("RSA key"),
    );
    let es = token(
        Algorithm::ES256,
        Some("ec-1"),
        &EncodingKey::from_ec_der(pkcs8.as_ref()),
    );
    let mut group = c.benchmark_group("jwt_verify");
    for (name, token) in [("HS256", &hs), ("RS256", &rs), ("ES256", &es)] {
        assert!(verifier.verify(token).is_ok(), "{name} token refused");
        group.bench_function(format!("{name}/first"), |b| {
            b.iter(|| verifier.verify_uncached(black_box(token)))
        });
        group.bench_function(format!("{name}/repeat"), |b| {
            b.iter(|| verifier.verify(black_box(token)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verification
}
criterion_main!(benches);
