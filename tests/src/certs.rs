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
