//! Which certificate a handshake gets: chosen by the client's SNI among
//! the certificates served, the first one when the client sent no name or
//! one no certificate has. The set is swapped whole, atomically, when the
//! files are reloaded; a handshake in progress keeps the set it started
//! with, and open connections are not touched.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// One certificate of the set, with the names it answers for.
#[derive(Debug, Clone)]
pub struct Entry {
    /// DNS names, lower case; `*.example.com` answers one label under it.
    pub names: Vec<String>,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
}

/// The certificates served, in the configured order (the first is the
/// default).
#[derive(Debug, Clone)]
pub struct CertSet {
    entries: Vec<Entry>,
}

impl CertSet {
    /// A set of `entries`; `None` when empty.
    pub fn new(entries: Vec<Entry>) -> Option<Self> {
        (!entries.is_empty()).then_some(Self { entries })
    }

    /// The certificate for SNI `name`: an exact name first, then a
    /// wildcard, then the first certificate.
    pub fn pick(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let default = self.entries.first().map(|e| &e.key);
        let Some(name) = name else { return default };
        let name = name.trim_end_matches('.');
        let exact = self
            .entries
            .iter()
            .find(|e| e.names.iter().any(|n| n.eq_ignore_ascii_case(name)));
        if let Some(entry) = exact {
            return Some(&entry.key);
        }
        let wildcard = self
            .entries
            .iter()
            .find(|e| e.names.iter().any(|n| wildcard_matches(n, name)));
        wildcard.map(|e| &e.key).or(default)
    }
}

/// Whether the pattern `*.example.com` covers `name`: exactly one
/// non-empty label in place of the `*` (RFC 6125 section 6.4.3).
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

/// The resolver rustls asks on every handshake.
#[derive(Debug)]
pub struct SniResolver {
    current: ArcSwap<CertSet>,
}

impl SniResolver {
    /// A resolver serving `set`.
    pub fn new(set: CertSet) -> Self {
        Self {
            current: ArcSwap::from_pointee(set),
        }
    }

    /// Serves `set` from the next handshake on.
    pub fn replace(&self, set: CertSet) {
        self.current.store(Arc::new(set));
    }

    /// The set served now.
    #[cfg(test)]
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().pick(hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let pair = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(pair.key_pair.serialize_der().into());
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(CertifiedKey::from_der(vec![pair.cert.der().clone()], der, &provider).unwrap())
    }

    fn entry(names: &[&str]) -> Entry {
        Entry {
            names: names.iter().map(|n| n.to_string()).collect(),
            key: key(),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let set = CertSet::new(vec![
            entry(&["default.example.org"]),
            entry(&["*.example.com"]),
            entry(&["api.example.com", "other.test"]),
        ])
        .unwrap();
        let is = |name: Option<&str>, i: usize| {
            Arc::ptr_eq(set.pick(name).unwrap(), &set.entries[i].key)
        };
        assert!(is(None, 0));
        assert!(is(Some("unknown.test"), 0));
        assert!(is(Some("api.example.com"), 2));
        assert!(is(Some("API.Example.COM."), 2));
        assert!(is(Some("other.test"), 2));
        assert!(is(Some("www.example.com"), 1));
        // One label only, and not the bare domain.
        assert!(is(Some("a.b.example.com"), 0));
        assert!(is(Some("example.com"), 0));
        assert!(is(Some("default.example.org"), 0));
        assert!(CertSet::new(Vec::new()).is_none());
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(wildcard_matches("*.example.com", "a.example.com"));
        assert!(!wildcard_matches("*.example.com", ".example.com"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(!wildcard_matches("*.example.com", "a.b.example.com"));
        assert!(!wildcard_matches("a.example.com", "a.example.com"));
    }

    #[test]
    fn a_replaced_set_serves_from_then_on() {
        let first = CertSet::new(vec![entry(&["a.test"])]).unwrap();
        let second = CertSet::new(vec![entry(&["a.test"])]).unwrap();
        let resolver = SniResolver::new(first.clone());
        let held = resolver.current();
        resolver.replace(second.clone());
        assert!(Arc::ptr_eq(
            resolver.current().pick(None).unwrap(),
            second.pick(None).unwrap()
        ));
        // What was taken before the swap is unchanged.
        assert!(Arc::ptr_eq(
            held.pick(None).unwrap(),
            first.pick(None).unwrap()
        ));
    }
}
