//! Node identity: which node ids a data plane may say Hello as, from its
//! client certificate.
//!
//! When the gRPC port requires client certificates (`--tls-client-ca`), a
//! data plane's certificate may name its node in a URI subject alternative
//! name `spiffe://gateway/node/NODE_ID`. A certificate naming one or more
//! nodes lets its holder say Hello only as one of them; any other node id
//! gets `PERMISSION_DENIED`. A certificate naming no node (one certificate
//! shared by a fleet) and a connection without a certificate (TLS without
//! client certificates, or plaintext) leave the node id to the Hello.

use rustls::pki_types::CertificateDer;
use tonic::Status;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The prefix of a URI SAN naming a node: `spiffe://gateway/node/NODE_ID`.
pub const NODE_URI_PREFIX: &str = "spiffe://gateway/node/";

/// The node ids a connection may say Hello as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdentity {
    /// Any: no client certificate, or one that names no node.
    Any,
    /// Only these (the certificate's node URI SANs).
    Only(Vec<String>),
    /// The certificate could not be read: no node id is allowed.
    Unreadable(String),
}

impl NodeIdentity {
    /// The identity of a connection whose peer presented `certs` (leaf
    /// first), as tonic hands them over (`Request::peer_certs`).
    pub fn of_peer(certs: Option<&[CertificateDer<'static>]>) -> Self {
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return NodeIdentity::Any;
        };
        match node_ids(leaf) {
            Ok(ids) if ids.is_empty() => NodeIdentity::Any,
            Ok(ids) => NodeIdentity::Only(ids),
            Err(reason) => NodeIdentity::Unreadable(reason),
        }
    }

    /// `Ok` when a Hello as `node_id` is allowed, else `PERMISSION_DENIED`.
    pub fn check(&self, node_id: &str) -> Result<(), Status> {
        match self {
            NodeIdentity::Any => Ok(()),
            NodeIdentity::Only(ids) if ids.iter().any(|id| id == node_id) => Ok(()),
            NodeIdentity::Only(ids) => Err(Status::permission_denied(format!(
                "the client certificate names node {}; it may not say Hello as node {node_id}",
                ids.join(", ")
            ))),
            NodeIdentity::Unreadable(reason) => Err(Status::permission_denied(format!(
                "the client certificate cannot be read ({reason})"
            ))),
        }
    }
}

/// The node ids named by the URI SANs of the DER certificate `cert`.
pub fn node_ids(cert: &[u8]) -> Result<Vec<String>, String> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX),
            _ => None,
        })
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect())
}

/// Whether `id` can be a node id: 1-253 printable characters, no spaces.
pub(crate) fn valid_node_id(id: &str) -> bool {
    (1..=253).contains(&id.len()) && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_node_without_a_naming_certificate() {
        assert_eq!(NodeIdentity::of_peer(None), NodeIdentity::Any);
        assert_eq!(NodeIdentity::of_peer(Some(&[])), NodeIdentity::Any);
        assert!(NodeIdentity::Any.check("dp-1").is_ok());
    }

    #[test]
    fn a_naming_certificate_allows_only_its_nodes() {
        let only = NodeIdentity::Only(vec!["dp-a".into()]);
        assert!(only.check("dp-a").is_ok());
        let err = only.check("dp-b").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("dp-a"), "{}", err.message());
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let unreadable = NodeIdentity::of_peer(Some(std::slice::from_ref(&garbage)));
        assert!(matches!(unreadable, NodeIdentity::Unreadable(_)));
        assert!(unreadable.check("dp-a").is_err());
    }
}
