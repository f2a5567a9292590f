//! `gwctl dev --tls`: a throwaway CA and a server certificate for the
//! loopback names (ECDSA P-256), written as PEM files that the embedded
//! data plane's HTTPS listener serves and that `curl --cacert` trusts.
//!
//! The files live in a fresh temporary directory removed when the
//! [`DevTls`] is dropped, or in a directory the user names, which is kept.

use anyhow::Context as _;
use data_plane::edge::tls::{
    CertPaths, TlsSettings, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_RELOAD_INTERVAL,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Default address of the HTTPS listener of `gwctl dev --tls`.
pub const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:3443";
/// File name of the CA certificate.
const CA_FILE: &str = "ca.pem";
/// File name of the server chain (server certificate, then the CA's).
const CHAIN_FILE: &str = "server.pem";
/// File name of the server's private key (PKCS#8).
const KEY_FILE: &str = "server-key.pem";
/// Names every dev certificate covers.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// How long the certificates are valid.
const VALIDITY: Duration = Duration::days(30);

/// The dev certificates on disk.
#[derive(Debug)]
pub struct DevTls {
    /// The PEM CA certificate clients trust.
    pub ca: PathBuf,
    /// The PEM server chain the listener serves.
    pub chain: PathBuf,
    /// The PEM private key of the server certificate.
    pub key: PathBuf,
    /// Where the files are; a temporary directory is removed on drop.
    dir: Dir,
}

/// The directory of the files.
#[derive(Debug)]
enum Dir {
    /// Created for this run and removed with it.
    Temporary(tempfile::TempDir),
    /// Named by the user and kept.
    Kept(PathBuf),
}

impl DevTls {
    /// Generates a CA and a server certificate for `localhost`,
    /// `127.0.0.1`, `::1` (and `listen`'s address when it is another
    /// specific one) and writes them to `dir` (created when missing,
    /// existing files replaced), or to a new temporary directory.
    pub fn create(dir: Option<&Path>, listen: SocketAddr) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(path) => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                Dir::Kept(path.to_path_buf())
            }
            None => Dir::Temporary(
                tempfile::Builder::new()
                    .prefix("gwctl-dev-tls.")
                    .tempdir()
                    .context("cannot create a temporary directory for the dev certificates")?,
            ),
        };
        let path = match &dir {
            Dir::Temporary(temp) => temp.path().to_path_buf(),
            Dir::Kept(path) => path.clone(),
        };
        let pem = generate(&subject_names(listen.ip()))?;
        let tls = Self {
            ca: path.join(CA_FILE),
            chain: path.join(CHAIN_FILE),
            key: path.join(KEY_FILE),
            dir,
        };
        write(&tls.ca, &pem.ca, 0o644)?;
        write(&tls.chain, &pem.chain, 0o644)?;
        write(&tls.key, &pem.key, 0o600)?;
        Ok(tls)
    }

    /// Whether the files go away when this is dropped.
    pub fn is_temporary(&self) -> bool {
        matches!(self.dir, Dir::Temporary(_))
    }

    /// The data plane's HTTPS listener on `listen`, serving these files.
    pub fn settings(&self, listen: SocketAddr) -> TlsSettings {
        TlsSettings {
            listen,
            certs: vec![CertPaths {
                cert: self.chain.clone(),
                key: self.key.clone(),
            }],
            client_ca: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

/// Fails with a clear reason when `listen` cannot be bound (checked
/// before anything starts; the data plane binds it again).
pub fn check_port(listen: SocketAddr) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(listen) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "cannot listen on {listen} (HTTPS of --tls): {e}; stop what uses it or choose another address with --tls-listen"
        ),
    }
}

/// The loopback names, plus `ip` when it is a specific address other than
/// those (so that a listener on, say, a LAN address verifies too).
fn subject_names(ip: IpAddr) -> Vec<String> {
    let mut names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names
}

/// The PEM texts of one run.
struct Pem {
    ca: String,
    chain: String,
    key: String,
}

/// A CA (`gwctl dev CA`) and a server certificate signed by it for `names`,
/// both ECDSA P-256, valid from an hour ago for [`VALIDITY`].
fn generate(names: &[String]) -> anyhow::Result<Pem> {
    let cannot = "cannot generate the dev certificates";
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::hours(1);
    let not_after = now + VALIDITY;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context(cannot)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context(cannot)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "gwctl dev CA (throwaway)");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).context(cannot)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context(cannot)?;
    let mut server = CertificateParams::new(names.to_vec()).context(cannot)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.not_before = not_before;
    server.not_after = not_after;
    let server_cert = server.signed_by(&key, &ca_cert, &ca_key).context(cannot)?;

    Ok(Pem {
        ca: ca_cert.pem(),
        chain: format!("{}{}", server_cert.pem(), ca_cert.pem()),
        key: key.serialize_pem(),
    })
}

/// Writes `text` to `path` with `mode` (Unix permissions).
fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        // An existing file keeps its old mode through open(): set it.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_directory_holds_the_files_until_dropped() {
        let tls = DevTls::create(None, DEFAULT_TLS_LISTEN.parse().unwrap()).unwrap();
        assert!(tls.is_temporary());
        let ca = std::fs::read_to_string(&tls.ca).unwrap();
        let chain = std::fs::read_to_string(&tls.chain).unwrap();
        let key = std::fs::read_to_string(&tls.key).unwrap();
        assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.ends_with(&ca), "the chain ends with the CA");
        assert!(key.contains("BEGIN PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&tls.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let dir = tls.ca.parent().unwrap().to_path_buf();
        drop(tls);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }

    #[test]
    fn a_given_directory_is_kept() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("certs");
        let tls = DevTls::create(Some(&dir), DEFAULT_TLS_LISTEN.parse().unwrap()).unwrap();
        assert!(!tls.is_temporary());
        assert_eq!(tls.ca, dir.join(CA_FILE));
        drop(tls);
        assert!(dir.join(CA_FILE).is_file());
        assert!(dir.join(KEY_FILE).is_file());
    }

    #[test]
    fn the_data_plane_loads_the_certificates() {
        let tls = DevTls::create(None, DEFAULT_TLS_LISTEN.parse().unwrap()).unwrap();
        let settings = tls.settings("127.0.0.1:0".parse().unwrap());
        let metrics = data_plane::ops::handles::TlsMetrics::default();
        data_plane::edge::tls::TlsEdge::load(settings, metrics).unwrap();
    }

    #[test]
    fn a_specific_listen_address_is_a_subject_name_too() {
        assert_eq!(
            subject_names("127.0.0.1".parse().unwrap()),
            vec!["localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(subject_names("0.0.0.0".parse().unwrap()).len(), 3);
        assert_eq!(
            subject_names("192.168.1.20".parse().unwrap())
                .last()
                .unwrap(),
            "192.168.1.20"
        );
    }
}
