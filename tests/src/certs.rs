//! Test certificates made with rcgen: a certificate authority and the
//! server and client certificates it signs, as PEM text.

/// A certificate authority of a test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A self-signed CA named `CN=name`.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        self.cert.der()
    }

    /// Signs `params` with a new key: (PEM certificate, PEM key).
    pub fn sign(&self, params: rcgen::CertificateParams) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `names` (DNS names, or IP addresses as
    /// text), valid for `days` when given (rcgen's default, decades,
    /// otherwise).
    pub fn server(&self, names: &[&str], days: Option<i64>) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(owned(names)).expect("params");
        if let Some(days) = days {
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        self.sign(params)
    }

    /// A client certificate for `CN=cn,O=org` with the client-auth usage,
    /// naming `names` as subject alternative names.
    pub fn client(&self, cn: &str, org: &str, names: &[&str]) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(owned(names)).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !org.is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, org);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A rustls server config serving `pair` (PEM chain, PEM key) with ALPN
/// `http/1.1`; client certificates signed by `client_ca` are required when
/// it is given.
pub fn server_config(
    pair: &(String, String),
    client_ca: Option<&TestCa>,
) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.0.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM chain");
    let key = PrivateKeyDer::from_pem_slice(pair.1.as_bytes()).expect("PEM key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
