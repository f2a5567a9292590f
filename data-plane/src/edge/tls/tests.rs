use super::*;
use crate::edge::transport::Handshake;
use prometheus_client::registry::Registry;
use std::path::Path;

/// A CA and the server certificates it signs, written to a temp dir.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("gw-tls-unit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "unit CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Self { dir, ca, ca_key }
    }

    /// A certificate for `names`, written as `file.crt` and `file.key`.
    fn issue(&self, file: &str, names: &[&str]) -> CertPaths {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let paths = CertPaths {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&paths.cert, cert.pem()).unwrap();
        std::fs::write(&paths.key, key.serialize_pem()).unwrap();
        paths
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn settings(certs: Vec<CertPaths>) -> TlsSettings {
    TlsSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        certs,
        client_ca: None,
        handshake_timeout: Duration::from_millis(300),
        reload_interval: DEFAULT_RELOAD_INTERVAL,
    }
}

fn metrics() -> TlsMetrics {
    TlsMetrics::register(&mut Registry::default())
}

fn load(certs: Vec<CertPaths>) -> Result<TlsEdge, TlsError> {
    TlsEdge::load(settings(certs), metrics())
}

#[test]
fn unusable_files_are_refused_with_the_file_named() {
    let pki = Pki::new();
    let good = pki.issue("good", &["a.test"]);
    let other = pki.issue("other", &["b.test"]);
    let missing = CertPaths {
        cert: pki.dir.join("missing.crt"),
        key: good.key.clone(),
    };
    let not_pem = CertPaths {
        cert: pki.write("junk.crt", "hello"),
        key: good.key.clone(),
    };
    let no_key = CertPaths {
        cert: good.cert.clone(),
        key: good.cert.clone(),
    };
    let mismatched = CertPaths {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    for (paths, needle) in [
        (missing, "missing.crt"),
        (not_pem, "junk.crt"),
        (no_key, "good.crt: no PEM private key"),
        (mismatched, "does not hold the private key"),
    ] {
        let err = load(vec![paths]).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    assert!(load(vec![good]).is_ok());
}

#[test]
fn a_bad_client_ca_is_refused() {
    let pki = Pki::new();
    let good = pki.issue("good", &["a.test"]);
    let mut s = settings(vec![good.clone()]);
    s.client_ca = Some(pki.write("ca.pem", "not a certificate"));
    let err = TlsEdge::load(s, metrics()).unwrap_err().to_string();
    assert!(err.contains("client CA"), "{err}");
    let mut s = settings(vec![good]);
    s.client_ca = Some(pki.write("ca-ok.pem", &pki.ca.pem()));
    assert!(TlsEdge::load(s, metrics()).is_ok());
}

#[test]
fn names_and_expiry_are_read_from_the_certificate() {
    let pki = Pki::new();
    let named = pki.issue("named", &["API.example.com", "*.example.com"]);
    let nameless = pki.issue("nameless", &[]);
    let m = metrics();
    let edge = TlsEdge::load(settings(vec![named, nameless]), m.clone()).unwrap();
    let served = edge.reloader.served();
    assert_eq!(served[0].name, "api.example.com");
    assert_eq!(
        served[0].dns_names,
        vec!["api.example.com", "*.example.com"]
    );
    assert_eq!(served[1].name, "nameless.crt");
    // rcgen's default validity ends in 4096.
    assert!(served[0].not_after > SystemTimeExt::years_from_now(100));
    let published = m.served();
    assert_eq!(published.len(), 2);
    assert!(m.enabled());
}

struct SystemTimeExt;
impl SystemTimeExt {
    fn years_from_now(years: u64) -> std::time::SystemTime {
        std::time::SystemTime::now() + Duration::from_secs(years * 365 * 86_400)
    }
}

fn rewrite(from: &CertPaths, to: &CertPaths) {
    std::fs::copy(&from.cert, &to.cert).unwrap();
    std::fs::copy(&from.key, &to.key).unwrap();
}

#[test]
fn changed_files_are_swapped_in_and_broken_ones_ignored() {
    let pki = Pki::new();
    let served = pki.issue("served", &["a.test"]);
    let edge = load(vec![served.clone()]).unwrap();
    let (mut reloader, _) = edge.into_reloader();
    let first = reloader.resolver.current();
    assert!(!reloader.check(false), "nothing changed");

    // Half a rotation: the new certificate, the old key.
    let next = pki.issue("next", &["b.test"]);
    std::fs::copy(&next.cert, &served.cert).unwrap();
    assert!(!reloader.check(false));
    assert!(Arc::ptr_eq(&reloader.resolver.current(), &first));
    assert!(reloader.pairs[0].problem.is_some());
    // The rest of it.
    std::fs::copy(&next.key, &served.key).unwrap();
    assert!(reloader.check(false));
    assert_eq!(reloader.served()[0].name, "b.test");
    assert_eq!(reloader.metrics().served()[0].name, "b.test");
    let second = reloader.resolver.current();
    assert!(!Arc::ptr_eq(&second, &first));

    // A broken file, then a missing one: the certificate stays.
    std::fs::write(&served.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    assert!(!reloader.check(true));
    std::fs::remove_file(&served.cert).unwrap();
    assert!(!reloader.check(false));
    assert!(Arc::ptr_eq(&reloader.resolver.current(), &second));
    assert_eq!(reloader.served()[0].name, "b.test");

    let third = pki.issue("third", &["c.test"]);
    rewrite(&third, &served);
    assert!(reloader.check(false));
    assert_eq!(reloader.served()[0].name, "c.test");
    assert!(reloader.pairs[0].problem.is_none());
}

async fn client_handshake(
    addr: std::net::SocketAddr,
    ca: &rcgen::Certificate,
    name: &str,
) -> std::io::Result<Vec<u8>> {
    client_handshake_offering(addr, ca, name, &[]).await
}

async fn client_handshake_offering(
    addr: std::net::SocketAddr,
    ca: &rcgen::Certificate,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let stream = connector.connect(name, tcp).await?;
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok(leaf.as_ref().to_vec())
}

#[tokio::test]
async fn handshakes_pick_by_sni_and_silent_clients_time_out() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["*.b.test"]);
    let m = metrics();
    let edge = TlsEdge::load(settings(vec![a.clone(), b.clone()]), m.clone()).unwrap();
    let handshake = edge.handshake(8443);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut facts = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Some((_stream, f, _)) = handshake.handshake(tcp).await {
                facts.push(f);
            }
            if facts.len() == 2 {
                return facts;
            }
        }
        facts
    });
    let der_of = |paths: &CertPaths| {
        let pem = std::fs::read(&paths.cert).unwrap();
        let der: rustls::pki_types::CertificateDer =
            rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
        der.as_ref().to_vec()
    };
    // A client that sends nothing is dropped after the timeout.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m.failures(handshake::TIMEOUT), 1);
    drop(silent);
    let got = client_handshake(addr, &pki.ca, "x.b.test").await.unwrap();
    assert_eq!(got, der_of(&b));
    let got = client_handshake(addr, &pki.ca, "a.test").await.unwrap();
    assert_eq!(got, der_of(&a));
    let facts = server.await.unwrap();
    assert_eq!(facts[0].port(), "8443");
    assert!(facts[0].client_subject().is_none());
    assert_eq!(m.handshakes.get(), 2);
}

#[tokio::test]
async fn alpn_chooses_h2_when_offered_and_http1_otherwise() {
    use crate::edge::transport::Protocol;
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let edge = TlsEdge::load(settings(vec![a]), metrics()).unwrap();
    let handshake = edge.handshake(8443);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut protocols = Vec::new();
        while protocols.len() < 4 {
            let (tcp, _) = listener.accept().await.unwrap();
            let (_stream, _, protocol) = handshake.handshake(tcp).await.unwrap();
            protocols.push(protocol);
        }
        protocols
    });
    for offer in [
        &[&b"h2"[..], b"http/1.1"][..],
        &[b"http/1.1", b"h2"],
        &[b"http/1.1"],
        &[],
    ] {
        client_handshake_offering(addr, &pki.ca, "a.test", offer)
            .await
            .unwrap();
    }
    use Protocol::{Http1, H2};
    assert_eq!(server.await.unwrap(), [H2, H2, Http1, Http1]);
}

#[test]
fn the_default_is_the_first_pair() {
    let pki = Pki::new();
    let first = pki.issue("first", &["first.test"]);
    let edge = load(vec![first]).unwrap();
    assert_eq!(edge.settings().certs.len(), 1);
    let set = edge.reloader.resolver.current();
    assert!(set.pick(Some("elsewhere.test")).is_some());
    assert!(Path::new(&edge.settings().certs[0].cert).exists());
}
