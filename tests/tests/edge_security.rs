//! Edge security end to end: asymmetric access tokens through a JWKS URL
//! (selection by kid, rotation, confusion attacks, an endpoint down at
//! start, https with certificate checks), HMAC-signed partner callbacks, and which `X-Forwarded-For` a data
//! plane believes. Real `data-plane` processes in standalone mode; the JWKS
//! is served by a `test-upstream` (`/_control/respond`).

use base64::Engine;
use gateway_tests::cluster::{start_test, wait_until, write_temp_file, DataPlaneProc, Upstream};
use gateway_tests::free_port;
use gateway_tests::http::HttpResponse;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RSA_PEM: &str = include_str!("../fixtures/test-only-rsa-private.pem");
const RSA_PUBLIC_PEM: &str = include_str!("../fixtures/test-only-rsa-public.pem");
const RSA_JWK: &str = include_str!("../fixtures/test-only-rsa-public.jwk.json");
const PARTNER_SECRET: &str = "partner-x-shared-secret-of-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims() -> Value {
    json!({
        "sub": "user-1", "tenant_id": "tenant-1", "type": "access", "role": "customer",
        "iss": "idp", "exp": now() + 600, "iat": now(),
    })
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    encode(&header, &claims(), key).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap()
}

fn rsa_jwk(kid: &str) -> Value {
    let mut jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("RS256");
    jwk
}

/// A fresh P-256 key pair: the signing key and the public JWK.
fn ec_key(kid: &str) -> (EncodingKey, Value) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{url}"]
routes:
  - name: api
    match: {{ path_prefix: /api }}
    service: echo
    auth: {{}}
  - name: partner
    match: {{ path: /partner/callback, methods: [POST] }}
    service: echo
    max_body_bytes: 4096
    signature: {{ secret_env: PARTNER_X_SECRET, header: x-signature, timestamp_header: x-timestamp, window: 5m }}
  - name: unconfigured-partner
    match: {{ path: /partner/other, methods: [POST] }}
    service: echo
    signature: {{ secret_env: PARTNER_NOT_SET_SECRET }}
  - name: limited
    match: {{ path_prefix: /limited }}
    service: echo
    rate_limit: {{ requests: 2, window: 1h, key: ip }}
  - name: open
    match: {{ path_prefix: /open }}
    service: echo
"#,
        url = upstream.url()
    )
}

fn start_dp(name: &str, upstream: &Upstream, env: &[(&str, &str)]) -> DataPlaneProc {
    let file = write_temp_file(&format!("{name}.yaml"), &config(upstream));
    DataPlaneProc::standalone_with_env(name, &file, env)
}

fn bearer(dp: &DataPlaneProc, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    dp.send("GET", "/api/me", &[("authorization", &auth)], b"")
}

/// Waits until `dp` lets `token` through (200).
fn wait_accepted(what: &str, dp: &DataPlaneProc, token: &str) {
    wait_until(what, Duration::from_secs(10), || {
        let r = bearer(dp, token);
        (r.status == 200)
            .then_some(())
            .ok_or(format!("{} {}", r.status, r.text()))
    });
}

/// A JWKS endpoint: `test-upstream` answering `/jwks` with `keys`.
fn publish(idp: &Upstream, keys: &[Value]) {
    idp.respond("/jwks", &json!({ "keys": keys }));
}

fn jwks_env(idp: &Upstream) -> Vec<(&'static str, String)> {
    vec![
        ("JWT_JWKS_URL", format!("{}/jwks", idp.url())),
        ("JWT_JWKS_MIN_REFRESH", "1s".into()),
        ("JWT_ISSUER", "idp".into()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn jwks_tokens_are_selected_by_kid_rotated_and_never_confused() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let idp = Upstream::start("idp");
    let (ec1, ec1_jwk) = ec_key("ec-1");
    publish(&idp, &[rsa_jwk("rsa-1"), ec1_jwk.clone()]);
    let env = jwks_env(&idp);
    let dp = start_dp("jwks", &upstream, &env_refs(&env));

    let rs = wait_until("RS256 token accepted", Duration::from_secs(10), || {
        let r = bearer(&dp, &token(Algorithm::RS256, "rsa-1", &rsa_key()));
        match r.status {
            200 => Ok(r),
            status => Err(format!("{status}")),
        }
    });
    assert_eq!(rs.json()["headers"]["x-tenant-id"], "tenant-1");
    assert_eq!(rs.json()["headers"]["x-user-id"], "user-1");
    let es = bearer(&dp, &token(Algorithm::ES256, "ec-1", &ec1));
    assert_eq!(es.status, 200, "{}", es.text());

    // Classic confusion: HS256 "signed" with the public key.
    for secret in [
        RSA_PUBLIC_PEM.as_bytes(),
        rsa_jwk("rsa-1")["n"].as_str().unwrap().as_bytes(),
    ] {
        let forged = token(Algorithm::HS256, "rsa-1", &EncodingKey::from_secret(secret));
        let r = bearer(&dp, &forged);
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["code"], "AUTHENTICATION_ERROR");
    }
    // alg: none, with the kid of a real key.
    let good = token(Algorithm::RS256, "rsa-1", &rsa_key());
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})
            .to_string()
            .as_bytes()),
        parts[1]
    );
    assert_eq!(bearer(&dp, &none).status, 401);
    // Payload changed under a valid signature.
    let mut c = claims();
    c["tenant_id"] = json!("tenant-2");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(bearer(&dp, &tampered).status, 401);
    // An RS256 token under the kid of the EC key.
    assert_eq!(
        bearer(&dp, &token(Algorithm::RS256, "ec-1", &rsa_key())).status,
        401
    );

    // Rotation: a new key is published; its first token names an unknown
    // kid, which makes the data plane fetch the set again (rate-limited).
    let (ec2, ec2_jwk) = ec_key("ec-2");
    publish(&idp, &[rsa_jwk("rsa-1"), ec2_jwk]);
    let rotated = token(Algorithm::ES256, "ec-2", &ec2);
    wait_accepted("token of the new kid accepted", &dp, &rotated);
    // The retired key is gone with the set it left.
    assert_eq!(
        bearer(&dp, &token(Algorithm::ES256, "ec-1", &ec1)).status,
        401
    );
}

#[test]
fn a_jwks_endpoint_down_at_start_gives_503_until_it_answers() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let rs = token(Algorithm::RS256, "rsa-1", &rsa_key());

    // Nothing listens: the data plane still starts; token routes answer 503,
    // public routes keep working.
    let dead = format!("http://127.0.0.1:{}/jwks", free_port());
    let dp = start_dp(
        "jwks-dead",
        &upstream,
        &[
            ("JWT_JWKS_URL", dead.as_str()),
            ("JWT_JWKS_MIN_REFRESH", "1s"),
        ],
    );
    let r = bearer(&dp, &rs);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "AUTHENTICATION_UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    assert_eq!(dp.send("GET", "/open", &[], b"").status, 200);
    assert_eq!(dp.send("GET", "/api/x", &[], b"").status, 401);

    // An endpoint failing at start and recovering later.
    let idp = Upstream::start("idp");
    publish(&idp, &[rsa_jwk("rsa-1")]);
    idp.set_fail(503);
    let env = jwks_env(&idp);
    let dp = start_dp("jwks-recovering", &upstream, &env_refs(&env));
    assert_eq!(bearer(&dp, &rs).status, 503);
    idp.set_fail(0);
    wait_accepted("keys loaded after the endpoint recovered", &dp, &rs);
}

/// A test certificate authority.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// The CA certificate as a PEM file.
    fn pem_file(&self, name: &str) -> PathBuf {
        write_temp_file(&format!("{name}-ca.pem"), &self.cert.pem())
    }
}

/// An https endpoint with a certificate for `localhost` signed by `ca`,
/// answering every request with `document`; lives as long as the runtime.
fn https_idp(ca: &TestCa, document: &Value) -> (u16, tokio::runtime::Runtime) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca.cert, &ca.key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = document.to_string();
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, runtime)
}

#[test]
fn an_https_jwks_is_trusted_through_its_ca_and_for_its_name_only() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let (key, jwk) = ec_key("ec-tls");
    let ca = TestCa::new("jwks test CA");
    let (port, _idp) = https_idp(&ca, &json!({ "keys": [jwk] }));
    let ca_file = ca.pem_file("jwks-tls");
    let other_ca_file = TestCa::new("unrelated CA").pem_file("jwks-tls-other");
    let by_name = format!("https://localhost:{port}/jwks");
    let by_ip = format!("https://127.0.0.1:{port}/jwks");
    let start = |name: &str, url: &str, ca: &PathBuf| {
        start_dp(
            name,
            &upstream,
            &[
                ("JWT_JWKS_URL", url),
                ("JWT_JWKS_CA_FILE", ca.to_str().unwrap()),
                ("JWT_JWKS_MIN_REFRESH", "1s"),
                ("JWT_ISSUER", "idp"),
            ],
        )
    };
    let trusted = start("jwks-tls", &by_name, &ca_file);
    // A server certificate from a CA the data plane does not trust, and one
    // that does not name the host the URL asks for.
    let unknown_issuer = start("jwks-tls-unknown-ca", &by_name, &other_ca_file);
    let wrong_name = start("jwks-tls-wrong-name", &by_ip, &ca_file);

    let es = token(Algorithm::ES256, "ec-tls", &key);
    wait_accepted("token accepted through the https JWKS", &trusted, &es);
    for (dp, why) in [
        (&unknown_issuer, "UnknownIssuer"),
        (&wrong_name, "not valid for name"),
    ] {
        wait_until(
            "the refused certificate logged",
            Duration::from_secs(10),
            || {
                let log = dp.log();
                log.contains(why).then_some(()).ok_or(log)
            },
        );
        let r = bearer(dp, &es);
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["code"], "AUTHENTICATION_UNAVAILABLE");
    }
}

fn signature(secret: &str, ts: &str, method: &str, path: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{ts}.{method}.{path}.").into_bytes();
    message.extend_from_slice(body);
    ring::hmac::sign(&key, &message)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn signed_partner_callbacks() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let dp = start_dp("signed", &upstream, &[("PARTNER_X_SECRET", PARTNER_SECRET)]);
    let path = "/partner/callback";
    // Bytes a JSON round trip would change (spacing, key order, escapes).
    let body = b"{\"b\": 1,  \"a\":\"\\u00e9\"}\n";
    let sha = hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
    let post = |ts: &str, sig: Option<&str>, body: &[u8]| {
        let mut headers = vec![("x-timestamp", ts), ("content-type", "application/json")];
        if let Some(sig) = sig {
            headers.push(("x-signature", sig));
        }
        dp.send("POST", path, &headers, body)
    };

    let ts = now().to_string();
    let good = signature(PARTNER_SECRET, &ts, "POST", path, body);
    let r = post(&ts, Some(&good), body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_sha256"], sha.as_str());
    assert_eq!(r.json()["body_len"], body.len());
    assert_eq!(upstream.served(), 1);

    let refused = |r: HttpResponse, what: &str| {
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.json()["code"], "AUTHENTICATION_ERROR", "{what}");
        assert_eq!(r.json()["statusCode"], 401, "{what}");
    };
    // Wrong secret, body changed, stale and future timestamps, no headers.
    refused(
        post(
            &ts,
            Some(&signature(&"x".repeat(40), &ts, "POST", path, body)),
            body,
        ),
        "wrong secret",
    );
    refused(post(&ts, Some(&good), b"{\"b\": 2}"), "body changed");
    let stale = (now() - 360).to_string();
    refused(
        post(
            &stale,
            Some(&signature(PARTNER_SECRET, &stale, "POST", path, body)),
            body,
        ),
        "stale",
    );
    let future = (now() + 360).to_string();
    refused(
        post(
            &future,
            Some(&signature(PARTNER_SECRET, &future, "POST", path, body)),
            body,
        ),
        "future",
    );
    refused(post(&ts, None, body), "no signature");
    refused(
        dp.send("POST", path, &[("x-signature", good.as_str())], body),
        "no timestamp",
    );
    refused(post(&ts, Some("not-hex"), body), "not hex");
    assert_eq!(upstream.served(), 1, "a refused call reached the upstream");

    // Over the route's limit: 413 before any signature work reaches upstream.
    let big = vec![b'x'; 5000];
    let big_sig = signature(PARTNER_SECRET, &ts, "POST", path, &big);
    assert_eq!(post(&ts, Some(&big_sig), &big).status, 413);

    // A route whose secret this data plane lacks refuses everything (503).
    let other = signature(PARTNER_SECRET, &ts, "POST", "/partner/other", body);
    let r = dp.send(
        "POST",
        "/partner/other",
        &[
            ("x-timestamp", ts.as_str()),
            ("x-signature", other.as_str()),
        ],
        body,
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(upstream.served(), 1);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let trusting = start_dp(
        "xff-trusted",
        &upstream,
        &[("GW_TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    let untrusting = start_dp("xff-untrusted", &upstream, &[]);
    let seen = |dp: &DataPlaneProc, xff: &str| {
        let r = dp.send("GET", "/open", &[("x-forwarded-for", xff)], b"");
        assert_eq!(r.status, 200);
        let headers = r.json()["headers"].clone();
        (
            headers["x-forwarded-for"].as_str().unwrap().to_string(),
            headers["x-original-ip"].as_str().unwrap().to_string(),
        )
    };
    // Trusted peer: the right-most untrusted address is the client.
    assert_eq!(
        seen(&trusting, "6.6.6.6, 203.0.113.7"),
        (
            "6.6.6.6, 203.0.113.7, 127.0.0.1".into(),
            "203.0.113.7".into()
        )
    );
    // Untrusted peer: its chain is passed on but not believed.
    assert_eq!(
        seen(&untrusting, "203.0.113.7"),
        ("203.0.113.7, 127.0.0.1".into(), "127.0.0.1".into())
    );
    // A forged x-original-ip never survives.
    let r = untrusting.send("GET", "/open", &[("x-original-ip", "1.1.1.1")], b"");
    assert_eq!(r.json()["headers"]["x-original-ip"], "127.0.0.1");

    // Rate limits follow the believed client address.
    let hit = |dp: &DataPlaneProc, client: &str| {
        dp.send("GET", "/limited", &[("x-forwarded-for", client)], b"")
            .status
    };
    assert_eq!(hit(&trusting, "198.51.100.1"), 200);
    assert_eq!(hit(&trusting, "198.51.100.1"), 200);
    assert_eq!(hit(&trusting, "198.51.100.1"), 429);
    assert_eq!(hit(&trusting, "198.51.100.2"), 200);
    // Behind no trusted proxy, changing X-Forwarded-For buys nothing.
    assert_eq!(hit(&untrusting, "198.51.100.1"), 200);
    assert_eq!(hit(&untrusting, "198.51.100.2"), 200);
    assert_eq!(hit(&untrusting, "198.51.100.3"), 429);
}
